//! Reliability, measured: a long AdamW run on the GPU against the CPU reference (drift), and
//! host and GPU memory over many steps (flatness). Prints the tables of the README's
//! "Reliability, measured".
//!
//!     cargo run --release --example reliability -- [--steps 100000] [--memory-steps 10000] [--backend vulkan|gl|auto]
//!     cargo run --release --example reliability -- --quick     # 2,000 and 1,000 steps, as the test suite runs
//!
//! The gradients are computed on the GPU by a kernel of this example and reproduced bit for
//! bit on the CPU (checked first), so the drift is the optimizer's own. See `measure.rs`.

mod measure;

use std::process::ExitCode;

use clap::Parser;
use measure::CountingAllocator;
use wgpu_optim::BackendChoice;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(Parser)]
#[command(about = "Drift against the CPU reference over a long run, and memory over many steps")]
struct Args {
    /// AdamW steps of the drift run (GPU and CPU reference).
    #[arg(long, default_value_t = 100_000)]
    steps: u64,
    /// Steps of the memory run (sampled after step 100 and at the end).
    #[arg(long, default_value_t = 10_000)]
    memory_steps: u64,
    /// 2,000 drift steps and 1,000 memory steps (what the test suite runs).
    #[arg(long)]
    quick: bool,
    /// vulkan, gl, metal, dx12 or auto.
    #[arg(long, default_value = "auto")]
    backend: String,
}

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    env_logger::init();
    // libwayland complains on a machine without a session; the library's command line does the same.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", "/tmp");
    }
    let mut args = Args::parse();
    if args.quick {
        (args.steps, args.memory_steps) = (2_000, 1_000);
    }
    let backend: BackendChoice = args.backend.parse()?;
    let (instance, gpu) = measure::open(backend)?;
    let elements: usize = measure::MODEL.iter().map(|(_, shape, _)| shape.iter().product::<usize>()).sum();
    println!("adapter: {}", gpu.adapter());
    println!("host CPU: {}", host_cpu());
    let [r0, r1] = measure::rules();
    println!(
        "model: {} tensors, {elements} elements; AdamW lr {} wd {} (weights), AdamW lr {} wd {} amsgrad (biases)",
        measure::MODEL.len(),
        r0.lr,
        r0.weight_decay,
        r1.lr,
        r1.weight_decay
    );
    println!("gradients: 0.5*(p - target) + 0.25*noise(step, element), computed on the GPU");
    let mut ok = true;
    match measure::check_gradients(&gpu)? {
        Ok(()) => println!("GPU gradients equal the CPU's bit for bit (steps 1, 2, 99,999, 100,000, 2^32-1)"),
        Err(mismatch) => {
            println!("GPU gradients differ from the CPU's: {mismatch}");
            ok = false;
        }
    }

    let mut checkpoints: Vec<u64> = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000].into_iter().filter(|&c| c < args.steps).collect();
    checkpoints.push(args.steps);
    let drift = measure::drift(&gpu, &checkpoints)?;
    println!(
        "\n## Drift: {} steps, GPU {:.1} s, CPU reference {:.1} s\n",
        args.steps,
        drift.gpu_time.as_secs_f64(),
        drift.cpu_time.as_secs_f64()
    );
    println!("normwise relative difference max|gpu - cpu| / max|cpu| (largest over tensors), max ulps, bit-identical elements\n");
    let kinds: Vec<&str> = drift.rows[0].tensors.iter().map(|(k, _)| k.as_str()).collect();
    println!("| step | {} |", kinds.join(" | "));
    println!("|---:|{}", "---|".repeat(kinds.len()));
    for row in &drift.rows {
        let cells: Vec<String> = row
            .tensors
            .iter()
            .map(|(_, d)| {
                format!("{:.1e}, {} ulp, {:.1}%", d.normwise, d.max_ulps, 100.0 * d.identical as f64 / d.elements as f64)
            })
            .collect();
        println!("| {} | {} |", thousands(row.step), cells.join(" | "));
    }

    let mut samples: Vec<u64> = [100, 1_000].into_iter().filter(|&s| s < args.memory_steps).collect();
    samples.push(args.memory_steps);
    let memory = measure::memory(&gpu, Some(&instance), &samples)?;
    println!("\n## Memory: {} steps ({:.1} s), sampled with the device idle\n", args.memory_steps, memory.time.as_secs_f64());
    println!("| after step | host live bytes | host allocations | GPU allocations (bytes) | buffers, bind groups, encoders, command buffers | RSS |");
    println!("|---:|---:|---:|---|---|---:|");
    for s in &memory.samples {
        let allocator = s.gpu.allocator.map_or("n/a".into(), |(n, bytes, _, _)| format!("{n} ({})", thousands(bytes)));
        let objects = s.gpu.objects.map_or("n/a".into(), |(b, g, e, c)| format!("{b}, {g}, {e}, {c}"));
        let rss = s.rss_bytes.map_or("n/a".into(), |r| format!("{:.1} MiB", r as f64 / (1 << 20) as f64));
        println!(
            "| {} | {} | {} | {allocator} | {objects} | {rss} |",
            thousands(s.step),
            thousands(s.host.live_bytes),
            thousands(s.host.allocations)
        );
    }
    let (first, last) = (&memory.samples[0], memory.samples.last().expect("a sample"));
    let (per_step, gradient_part) = memory.allocations_per_step(0, memory.samples.len() - 1);
    let gained = last.host.live_bytes - first.host.live_bytes;
    println!(
        "\nsteps {}..{}: {per_step:.2} host allocations per step ({gradient_part:.2} of them this example's gradient pass, \
         {:.2} the optimizer's step and submission); live bytes {gained:+} (this thread), {:+} (process)",
        thousands(first.step),
        thousands(last.step),
        per_step - gradient_part,
        last.process.live_bytes - first.process.live_bytes,
    );
    let gpu_flat = memory.samples.iter().all(|s| s.gpu == first.gpu);
    println!("GPU allocations and wgpu objects: {}", if gpu_flat { "the same at every sample" } else { "CHANGED" });
    // A one-time settling of wgpu's containers after step 100 stays well below this.
    let host_flat = gained <= 4096;
    println!("host live bytes: {}", if host_flat { "flat" } else { "GREW" });
    let worst = drift.rows.iter().map(measure::DriftRow::worst).fold(0.0, f64::max);
    println!("largest normwise difference over the run: {worst:.1e}");
    if !measure::counting_is_active() {
        println!("host allocations were not counted");
        ok = false;
    }
    ok &= gpu_flat && host_flat;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn host_cpu() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {threads} threads available")
}

fn thousands(n: impl Into<i128>) -> String {
    let n: i128 = n.into();
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}
