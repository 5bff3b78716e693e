//! `cargo bench --bench optimizer -- [options]`: how close an optimizer step comes to the
//! adapter's copy bandwidth, how recording and dispatch scale with the number of tensors, the
//! composed-op and CPU baselines, and the kernel-tuning variants. Prints markdown tables and
//! writes every sample as JSON. BENCHMARKS.md records the results and explains the method.
//!
//! Run without `--bench` (as `cargo test --benches` does) it only checks, on small tensors, that
//! the baseline and every tuning variant compute what the CPU reference computes.

mod gpu;
mod layouts;
mod naive;
mod precision;
mod report;
mod second_order;
mod structured;
mod variants;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use serde::Serialize;
use serde_json::json;
use wgpu_optim::rules::{from_config, AdamW};
use wgpu_optim::{BackendChoice, CpuOptimizer, Optimizer, OptimizerOptions, UpdateRule};

use gpu::{measure, median, time_recording, Bench, Copy, Plan, Step, Timing, Workload};
use layouts::{format_count, parse_count, Gpt2Dims, Layout};
use naive::NaiveAdamW;
use report::{print_bandwidth, print_layouts, print_naive, print_state, print_structured_steps, print_tuning};
use structured::BF16_CHECK_TOLERANCE;
use variants::{AdamBuffers, CopyKernel, Variant, VariantStep};

/// Counts heap allocations, to see whether recording a step allocates.
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicU64, Ordering};

    static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

    pub struct Counting;

    // SAFETY: forwards every call to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            System.alloc(layout)
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            System.alloc_zeroed(layout)
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            System.realloc(ptr, layout, new_size)
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
    }

    /// Allocations (including reallocations) made so far by this process, all threads.
    pub fn allocations() -> u64 {
        ALLOCATIONS.load(Ordering::Relaxed)
    }
}

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

#[derive(Parser, Debug, Serialize)]
#[command(about = "wgpu-optim benchmarks: bandwidth ratio, tensor-count scaling, baselines, kernel tuning")]
struct Args {
    /// Adapter: auto, vulkan, gl, metal, dx12.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Arena sizes of the per-rule bandwidth table (1M = 2^20 elements).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<String>>,
    /// Rules of the bandwidth table (torch names).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "SGD,Adagrad,RMSprop,Adadelta,Adam,AdamW,NAdam"
    )]
    rules: Vec<String>,
    /// Tensor counts of the scaling table.
    #[arg(long, value_delimiter = ',')]
    tensor_counts: Option<Vec<usize>>,
    /// Total elements split into those tensors.
    #[arg(long)]
    scaling_elements: Option<String>,
    /// Sizes of the tuning table (each must fit one storage binding).
    #[arg(long, value_delimiter = ',')]
    tuning_sizes: Option<Vec<String>>,
    /// Sections to run: bandwidth, scaling, tuning, gpt2, structured, second-order (L-BFGS against AdamW).
    #[arg(long, value_delimiter = ',', default_value = "bandwidth,scaling,tuning")]
    sections: Vec<String>,
    /// Adds the GPT-2-small layout (148 tensors, 124 M parameters) section.
    #[arg(long)]
    gpt2: bool,
    /// Adds the structured-rules section: Muon on GPT-2's hidden matrices + AdamW against
    /// AdamW alone, and optimizer-state bytes per parameter (AdamW, Adafactor, Muon + AdamW).
    #[arg(long)]
    structured: bool,
    /// Transformer blocks of the model the structured section times (default 12, GPT-2 small's).
    /// The state table always counts GPT-2 small (the tiny model with --quick).
    #[arg(long)]
    structured_blocks: Option<usize>,
    /// Width of the model the structured section times (default 768, GPT-2 small's; MLP 4×,
    /// vocabulary and context as GPT-2's).
    #[arg(long)]
    structured_width: Option<usize>,
    /// Muon's Newton–Schulz iterations in the structured section's timed steps, one Muon row
    /// per value and precision (torch's default: 5; 0 times everything but the iterations).
    #[arg(long, value_delimiter = ',', default_value = "5")]
    ns_steps: Vec<u32>,
    /// Muon precisions timed in the structured section: bfloat16, float32.
    #[arg(long, value_delimiter = ',', default_value = "bfloat16,float32")]
    ns_precision: Vec<String>,
    /// Small sizes and few repetitions: a smoke run.
    #[arg(long)]
    quick: bool,
    /// Skips the composed-op and CPU baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Builds every optimizer with gradient presence tracked (`OptimizerOptions::gradient_presence`),
    /// every gradient present: what the tracking costs.
    #[arg(long)]
    gradient_presence: bool,
    /// Timed batches per workload (default 7, 3 with --quick).
    #[arg(long)]
    reps: Option<u32>,
    /// Wall time a batch should last, in seconds.
    #[arg(long, default_value_t = 0.1)]
    batch_seconds: f64,
    /// Most steps per batch.
    #[arg(long, default_value_t = 32)]
    max_batch: u32,
    /// Where to write the JSON (default: <target dir>/bench/optimizer.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passed by `cargo bench`; without it only the correctness checks run.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A measured workload summarised: medians in seconds and the samples behind them.
#[derive(Clone, Debug, Serialize)]
struct Measured {
    /// Median GPU time per unit from timestamps, if the device has them for this workload.
    gpu_s: Option<f64>,
    /// Median wall time per unit (submit to completion of a batch, divided by its size).
    wall_s: f64,
    /// Median CPU time of this process per unit (all threads; on a software adapter, the
    /// work itself), Linux only.
    process_cpu_s: Option<f64>,
    /// Median 1-minute load average of the machine while measuring.
    load_average: Option<f64>,
    samples: Timing,
}

/// The copy, the library's step and (if given) the composed-op baseline, measured side by side.
fn measure_step(
    bench: &Bench,
    plan: &Plan,
    copy: &mut Copy,
    opt: &mut Optimizer,
    naive: Option<&mut NaiveAdamW<'_>>,
    touched_rows: f64,
) -> (Measured, Measured, Option<Measured>) {
    let masks = sparse_masks(bench, opt, touched_rows);
    let mut step = Step { opt, masks };
    let mut workloads: Vec<&mut dyn Workload> = vec![copy, &mut step];
    if let Some(naive) = naive {
        workloads.push(naive);
    }
    let mut timings = measure(bench, plan, &mut workloads).into_iter().map(Measured::new);
    let (copy_m, step_m) = (timings.next().expect("copy"), timings.next().expect("step"));
    (copy_m, step_m, timings.next())
}

impl Measured {
    fn new(samples: Timing) -> Self {
        Measured {
            gpu_s: samples.gpu_median(),
            wall_s: samples.wall_median(),
            process_cpu_s: samples.process_cpu_median(),
            load_average: (!samples.load_average.is_empty()).then(|| median(&samples.load_average)),
            samples,
        }
    }
}

/// Seconds per unit of two workloads by the same clock: GPU timestamps when both have them,
/// else wall time.
fn same_clock(a: &Measured, b: &Measured) -> (f64, f64, &'static str) {
    match (a.gpu_s, b.gpu_s) {
        (Some(x), Some(y)) => (x, y, "timestamps"),
        _ => (a.wall_s, b.wall_s, "wall"),
    }
}

/// A step's bandwidth relative to a copy: (step bytes / step time) / (copy bytes / copy time).
#[derive(Clone, Debug, Serialize)]
struct Ratio {
    /// By GPU timestamps (wall time where either workload has none): the headline figure.
    value: f64,
    clock: &'static str,
    step_gbps: f64,
    copy_gbps: f64,
    /// By wall time.
    wall: f64,
    /// By this process's CPU time: on a software adapter, bytes per unit of CPU work,
    /// whatever share of the cores the machine's other load left.
    process_cpu: Option<f64>,
}

impl Ratio {
    fn new(step: &Measured, step_bytes: u64, copy: &Measured, copy_bytes: u64) -> Self {
        let of = |step_s: f64, copy_s: f64| (step_bytes as f64 / step_s) / (copy_bytes as f64 / copy_s);
        let (step_s, copy_s, clock) = same_clock(step, copy);
        Ratio {
            value: of(step_s, copy_s),
            clock,
            step_gbps: step_bytes as f64 / step_s / 1e9,
            copy_gbps: copy_bytes as f64 / copy_s / 1e9,
            wall: of(step.wall_s, copy.wall_s),
            process_cpu: step.process_cpu_s.zip(copy.process_cpu_s).map(|(s, c)| of(s, c)),
        }
    }
}

/// Bytes a step of `rule` moves per element: param, grad and each state tensor read; param and
/// each state tensor written (a state read twice counts once).
fn bytes_per_element(rule: &dyn UpdateRule) -> u64 {
    let states = rule.state_slots().len() as u64;
    4 * ((2 + states) + (1 + states))
}

/// Row length of the embedding a rule with sparse gradients is measured on (GPT-2's width).
const SPARSE_ROW: usize = 768;

/// Bytes a step moves on `elements` elements: for sparse gradients, the touched rows' share of
/// [`bytes_per_element`] plus the row mask, read by the update and cleared after it.
fn step_bytes(rule: &dyn UpdateRule, elements: usize, touched_rows: f64) -> u64 {
    if rule.kernel().sparse_rows {
        let rows = (elements / SPARSE_ROW) as f64;
        (rows * touched_rows).round() as u64 * SPARSE_ROW as u64 * bytes_per_element(rule) + 2 * 4 * rows as u64
    } else {
        elements as u64 * bytes_per_element(rule)
    }
}

/// For an optimizer with sparse gradients: each tensor's row mask and a buffer holding the
/// mask of a step touching `touched_rows` of its rows (every k-th row), to copy in before each step.
fn sparse_masks(bench: &Bench, opt: &Optimizer, touched_rows: f64) -> Vec<(wgpu::Buffer, wgpu_optim::TensorView)> {
    use wgpu::util::DeviceExt;
    let every = (1.0 / touched_rows).round().max(1.0) as usize;
    opt.tensor_ids()
        .filter_map(|id| opt.grad_rows(id).ok())
        .map(|mask| {
            let values: Vec<u32> = (0..mask.len).map(|r| u32::from(r % every == 0)).collect();
            let source = bench.gpu.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("bench row mask"),
                contents: bytemuck::cast_slice(&values),
                usage: wgpu::BufferUsages::COPY_SRC,
            });
            (source, mask)
        })
        .collect()
}

/// `CpuOptimizer::step` (single-threaded scalar Rust), median of a few steps.
#[derive(Clone, Debug, Serialize)]
struct CpuBaseline {
    wall_s: f64,
    process_cpu_s: Option<f64>,
}

#[derive(Serialize)]
struct RuleRow {
    rule: String,
    elements: usize,
    /// Bytes moved per element (a fraction for sparse gradients touching few rows).
    bytes_per_element: f64,
    dispatches: usize,
    step: Measured,
    copy: Measured,
    copy_bytes: u64,
    ratio: Ratio,
    cpu: Option<CpuBaseline>,
}

#[derive(Clone, Serialize)]
struct NaiveRow {
    /// The table it was measured for: bandwidth, scaling or gpt2.
    section: &'static str,
    layout: String,
    tensors: usize,
    elements: usize,
    dispatches: usize,
    /// Recording one step (encoder created and finished), where measured.
    record_s: Option<f64>,
    step: Measured,
    /// Its time relative to the fused step's, same clock (> 1: slower).
    slowdown: f64,
    /// Copy-bandwidth ratio counting the fused step's bytes (what the update needs).
    ratio_at_fused_bytes: Ratio,
}

#[derive(Serialize)]
struct LayoutRow {
    layout: String,
    tensors: usize,
    elements: usize,
    arenas: usize,
    dispatches: usize,
    /// Creating an encoder, recording one step in a compute pass, finishing the encoder.
    record_s: f64,
    /// `Optimizer::step_in_pass` alone.
    step_in_pass_s: f64,
    /// Heap allocations while recording one step (encoder included).
    allocations_per_record: u64,
    /// Heap allocations inside `Optimizer::step_in_pass`.
    allocations_in_step_in_pass: u64,
    step: Measured,
    copy: Measured,
    ratio: Ratio,
    cpu: Option<CpuBaseline>,
    naive: Option<NaiveRow>,
}

#[derive(Serialize)]
struct TuningRow {
    kernel: String,
    variant: Option<Variant>,
    elements: usize,
    step: Measured,
    ratio: Ratio,
    /// Library kernel's time / this kernel's time, same clock (> 1: faster than the library).
    speedup_vs_library: f64,
}

#[derive(Serialize)]
struct CheckRow {
    kernel: String,
    max_error: f64,
    passed: bool,
}

const CHECK_TOLERANCE: f64 = 2e-6;

fn main() {
    let args = Args::parse();
    if let Err(message) = run(&args) {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let choice: BackendChoice = args.backend.parse().map_err(|e: wgpu_optim::Error| e.to_string())?;
    let counts = |list: &Option<Vec<String>>, default: &[&str]| -> Result<Vec<usize>, String> {
        match list {
            Some(list) => list.iter().map(|s| parse_count(s)).collect(),
            None => default.iter().map(|s| parse_count(s)).collect(),
        }
    };
    let (sizes, scaling_elements, tensor_counts, tuning_sizes) = if args.quick {
        (
            counts(&args.sizes, &["256K", "1M"])?,
            "1M",
            vec![1, 100, 1000],
            counts(&args.tuning_sizes, &["1M"])?,
        )
    } else {
        (
            counts(&args.sizes, &["1M", "16M", "64M"])?,
            "16M",
            vec![1, 100, 1000, 10000],
            counts(&args.tuning_sizes, &["1M", "16M"])?,
        )
    };
    let scaling_elements = parse_count(args.scaling_elements.as_deref().unwrap_or(scaling_elements))?;
    let tensor_counts = args.tensor_counts.clone().unwrap_or(tensor_counts);
    let plan = Plan {
        reps: args.reps.unwrap_or(if args.quick { 3 } else { 7 }),
        batch_seconds: args.batch_seconds,
        max_batch: args.max_batch.clamp(1, 256),
    };
    let mut sections: Vec<String> = args.sections.iter().map(|s| s.trim().to_ascii_lowercase()).collect();
    if args.gpt2 {
        sections.push("gpt2".into());
    }
    if args.structured {
        sections.push("structured".into());
    }
    for section in &sections {
        if !["bandwidth", "scaling", "tuning", "gpt2", "structured", "second-order", "precision"].contains(&section.as_str()) {
            return Err(format!(
                "unknown section {section:?}; sections are bandwidth, scaling, tuning, gpt2, structured, second-order, precision"
            ));
        }
    }
    let structured_config = structured_config(args)?;
    let rules = rule_configs(&args.rules)?;

    let bench = Bench::open(choice, plan.max_batch)?;
    let limits = bench.limits();
    println!(
        "adapter: {} ({:?}, {:?}, driver {} {})",
        bench.info.name, bench.info.backend, bench.info.device_type, bench.info.driver, bench.info.driver_info
    );
    println!(
        "timestamps: compute passes {}, between encoder commands {}; max storage binding {} MiB; max buffer {} MiB",
        yes_no(bench.timer.is_some()),
        yes_no(bench.encoder_timestamps),
        limits.max_storage_buffer_binding_size >> 20,
        limits.max_buffer_size >> 20,
    );

    let checks = run_checks(&bench, args.bench || args.quick)?;
    if !args.bench {
        println!("correctness checks passed (run through `cargo bench` to measure)");
        return Ok(());
    }
    println!(
        "plan: {} timed batches per workload, batches of about {} s (at most {} steps), workloads interleaved\n",
        plan.reps, plan.batch_seconds, plan.max_batch
    );

    let software = bench.info.device_type == wgpu::DeviceType::Cpu;
    let options = OptimizerOptions {
        steps_in_flight: Some(u64::from(plan.max_batch).max(64)),
        gradient_presence: args.gradient_presence,
        ..OptimizerOptions::default()
    };
    let baselines = !args.no_baselines;
    let mut report = json!({
        "adapter": {
            "name": bench.info.name, "backend": format!("{:?}", bench.info.backend),
            "device_type": format!("{:?}", bench.info.device_type), "driver": bench.info.driver,
            "driver_info": bench.info.driver_info, "timestamps": bench.timer.is_some(),
            "encoder_timestamps": bench.encoder_timestamps,
            "max_storage_buffer_binding_size": limits.max_storage_buffer_binding_size,
            "max_buffer_size": limits.max_buffer_size,
        },
        "arguments": args,
        "command_line": std::env::args().collect::<Vec<_>>(),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "plan": plan,
        "load_average_at_start": gpu::load_average(),
        "checks": checks,
    });

    let mut naive_rows = Vec::new();
    if sections.iter().any(|s| s == "bandwidth") {
        let (rows, naive) = bandwidth_section(&bench, &plan, &options, &sizes, &rules, baselines)?;
        print_bandwidth(&rows, software);
        report["bandwidth"] = serde_json::to_value(&rows).expect("plain data");
        naive_rows.extend(naive);
    }
    if sections.iter().any(|s| s == "scaling") {
        let layouts: Vec<Layout> = tensor_counts
            .iter()
            .map(|&n| Layout::split(scaling_elements, n))
            .collect();
        let rows = layout_section(&bench, &plan, &options, &layouts, baselines, false)?;
        print_layouts(
            &format!(
                "Tensor-count scaling: AdamW, {} elements",
                format_count(scaling_elements)
            ),
            &rows,
            software,
        );
        naive_rows.extend(rows.iter().filter_map(|r| r.naive.as_ref()).cloned());
        report["scaling"] = serde_json::to_value(&rows).expect("plain data");
    }
    if sections.iter().any(|s| s == "gpt2") {
        let rows = layout_section(&bench, &plan, &options, &[Layout::gpt2_small()], baselines, true)?;
        print_layouts(
            "GPT-2 small (124,439,808 parameters, 148 tensors): AdamW, 2 parameter groups",
            &rows,
            software,
        );
        naive_rows.extend(rows.iter().filter_map(|r| r.naive.as_ref()).cloned());
        report["gpt2"] = serde_json::to_value(&rows).expect("plain data");
    }
    if !naive_rows.is_empty() {
        print_naive(&naive_rows, software);
        report["composed_op_baseline"] = serde_json::to_value(&naive_rows).expect("plain data");
    }
    if sections.iter().any(|s| s == "tuning") {
        let rows = tuning_section(&bench, &plan, &options, &tuning_sizes)?;
        print_tuning(&rows, &tuning_sizes, software);
        report["tuning"] = serde_json::to_value(&rows).expect("plain data");
    }
    if sections.iter().any(|s| s == "second-order") {
        let dims = if args.quick { vec![1 << 12] } else { vec![1 << 14, 1 << 16] };
        let rows = second_order::second_order_section(&bench, &dims, if args.quick { 1 } else { 3 })?;
        second_order::print_second_order(&rows);
        report["second_order"] = serde_json::to_value(&rows).expect("plain data");
    }
    if sections.iter().any(|s| s == "precision") {
        let layout = if args.quick { Layout::split(1 << 20, 8) } else { Layout::gpt2_small() };
        println!("Storage types: AdamW on {} ({} parameters), one group", layout.name, format_count(layout.elements()));
        let rows = precision::precision_section(&bench, &layout, if args.quick { 2 } else { 3 })?;
        report["precision"] = serde_json::to_value(&rows).expect("plain data");
    }
    if sections.iter().any(|s| s == "structured") {
        let config = &structured_config;
        let steps = structured::step_section(&bench, &plan, &options, config)?;
        print_structured_steps(&steps, software);
        let state = structured::state_section(&bench, config)?;
        print_state(&state);
        report["structured"] = json!({
            "config": config,
            "steps": serde_json::to_value(&steps).expect("plain data"),
            "state": serde_json::to_value(&state).expect("plain data"),
        });
    }

    let out = args.out.clone().unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        target.join("bench").join("optimizer.json")
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    report["load_average_at_end"] = json!(gpu::load_average());
    std::fs::write(&out, serde_json::to_string_pretty(&report).expect("plain data"))
        .map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// The structured section's models: GPT-2 small (or its first `--structured-blocks` blocks)
/// timed and GPT-2 small counted; with `--quick`, a tiny model for both.
fn structured_config(args: &Args) -> Result<structured::Config, String> {
    let precisions = args
        .ns_precision
        .iter()
        .map(|p| structured::parse_precision(p))
        .collect::<Result<Vec<_>, _>>()?;
    let (counted, counted_name) = if args.quick {
        (structured::Config::TINY, "tiny GPT-2 (width 64, 2 blocks)".to_string())
    } else {
        (Gpt2Dims::SMALL, "GPT-2 small".to_string())
    };
    let layers = args.structured_blocks.unwrap_or(counted.layers);
    let width = args.structured_width.unwrap_or(counted.width);
    if layers == 0 || width == 0 || !width.is_multiple_of(4) {
        return Err("--structured-blocks must be at least 1 and --structured-width a positive multiple of 4".into());
    }
    if let Some(n) = args.ns_steps.iter().find(|&&n| n >= 100) {
        return Err(format!("--ns-steps {n}: Muon takes fewer than 100"));
    }
    let (timed, timed_name) = if (layers, width) == (counted.layers, counted.width) {
        (counted, counted_name.clone())
    } else {
        let timed = Gpt2Dims { layers, width, ..counted };
        (timed, format!("GPT-2-shaped, width {width}, {layers} block{}", if layers == 1 { "" } else { "s" }))
    };
    Ok(structured::Config {
        timed,
        timed_name,
        counted,
        counted_name,
        ns_steps: args.ns_steps.clone(),
        precisions,
    })
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// The rule configurations of the bandwidth table: torch defaults, SGD with momentum.
/// A rule of the bandwidth table with its label.
type RuleConfig = (String, Box<dyn UpdateRule>);

fn rule_configs(names: &[String]) -> Result<Vec<RuleConfig>, String> {
    names
        .iter()
        .map(|name| {
            let name = name.trim();
            let (label, hyperparameters) = match name.to_ascii_lowercase().as_str() {
                "sgd" => ("SGD(momentum=0.9)", json!({"momentum": 0.9})),
                _ => (name, json!({})),
            };
            let canonical = wgpu_optim::rules::OPTIMIZER_NAMES
                .iter()
                .find(|n| n.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    format!(
                        "unknown rule {name:?}; rules are {}",
                        wgpu_optim::rules::OPTIMIZER_NAMES.join(", ")
                    )
                })?;
            let rule = from_config(canonical, &hyperparameters).map_err(|e| e.to_string())?;
            let label = if label == name {
                canonical.to_string()
            } else {
                label.to_string()
            };
            Ok((label, rule))
        })
        .collect()
}

fn build_optimizer(
    bench: &Bench,
    layout: &Layout,
    rules: &[Box<dyn UpdateRule>],
    options: &OptimizerOptions,
) -> Result<Optimizer, String> {
    let (params, groups) = layout.build(rules);
    let opt = Optimizer::with_options(&bench.gpu, params, groups, options.clone()).map_err(|e| e.to_string())?;
    for (t, id) in opt.tensor_ids().enumerate() {
        match opt.grad_rows(id) {
            // Sparse gradients: values in every row; each step's mask says which are touched.
            Ok(mask) => opt.write_sparse_grad(id, &(0..mask.len as u32).collect::<Vec<_>>(), &layout.grad(t)),
            Err(_) => opt.write_grad(id, &layout.grad(t)),
        }
        .map_err(|e| e.to_string())?;
    }
    Ok(opt)
}

/// `CpuOptimizer::step` on the layout: one warm-up step, then the median of `reps` steps.
fn cpu_baseline(layout: &Layout, rules: &[Box<dyn UpdateRule>], reps: u32) -> Result<CpuBaseline, String> {
    let (params, groups) = layout.build(rules);
    let mut cpu = CpuOptimizer::new(params, groups).map_err(|e| e.to_string())?;
    for (t, (name, _, _)) in layout.tensors.iter().enumerate() {
        let id = cpu.tensor_id(name).expect("registered by the layout");
        cpu.write_grad(id, &layout.grad(t)).map_err(|e| e.to_string())?;
    }
    cpu.step();
    let mut wall = Vec::new();
    let mut process_cpu = Vec::new();
    for _ in 0..reps.max(1) {
        let cpu_start = gpu::process_cpu_seconds();
        let start = Instant::now();
        cpu.step();
        wall.push(start.elapsed().as_secs_f64());
        process_cpu.extend(cpu_start.zip(gpu::process_cpu_seconds()).map(|(a, b)| b - a));
    }
    Ok(CpuBaseline {
        wall_s: median(&wall),
        process_cpu_s: (!process_cpu.is_empty()).then(|| median(&process_cpu)),
    })
}

type BandwidthResult = (Vec<RuleRow>, Vec<NaiveRow>);

fn bandwidth_section(
    bench: &Bench,
    plan: &Plan,
    options: &OptimizerOptions,
    sizes: &[usize],
    rules: &[RuleConfig],
    baselines: bool,
) -> Result<BandwidthResult, String> {
    let mut rows = Vec::new();
    let mut naive_rows = Vec::new();
    for &elements in sizes {
        let runs = rules.iter().flat_map(|(label, rule)| {
            // Sparse gradients: an embedding with every row touched, then 1 % of its rows.
            let fractions: &[f64] = if rule.kernel().sparse_rows { &[1.0, 0.01] } else { &[1.0] };
            fractions.iter().map(move |&touched| (label, rule, touched))
        });
        for (label, rule, touched) in runs {
            let sparse = rule.kernel().sparse_rows;
            let layout = if sparse { Layout::embedding(elements, SPARSE_ROW) } else { Layout::single(elements) };
            let label = if sparse { format!("{label} ({} % of rows)", touched * 100.0) } else { label.clone() };
            eprintln!(
                "bandwidth: {label}, {} (load average {:?})",
                format_count(elements),
                gpu::load_average()
            );
            let rule_set = [rule.clone()];
            let mut opt = build_optimizer(bench, &layout, &rule_set, options)?;
            let bytes = step_bytes(rule.as_ref(), elements, touched);
            let mut copy = Copy::new(bench, bytes);
            let mut naive =
                (baselines && rule.name() == "AdamW").then(|| NaiveAdamW::new(bench, &opt, u64::from(plan.max_batch)));
            let dispatches = opt.dispatches_per_step();
            let (copy_m, step_m, naive_m) = measure_step(bench, plan, &mut copy, &mut opt, naive.as_mut(), touched);
            if let (Some(naive_m), Some(naive)) = (naive_m, naive.as_ref()) {
                naive_rows.push(naive_row(
                    "bandwidth",
                    &layout,
                    naive.dispatches_per_step(),
                    None,
                    naive_m,
                    &step_m,
                    bytes,
                    &copy_m,
                    copy.traffic_bytes,
                ));
            }
            let ratio = Ratio::new(&step_m, bytes, &copy_m, copy.traffic_bytes);
            let copy_bytes = copy.traffic_bytes;
            drop((naive, opt, copy));
            let cpu = if baselines {
                Some(cpu_baseline(&layout, &rule_set, plan.reps.min(5))?)
            } else {
                None
            };
            rows.push(RuleRow {
                rule: label.clone(),
                elements,
                bytes_per_element: bytes as f64 / elements as f64,
                dispatches,
                step: step_m,
                copy: copy_m,
                copy_bytes,
                ratio,
                cpu,
            });
        }
    }
    Ok((rows, naive_rows))
}

#[allow(clippy::too_many_arguments)]
fn naive_row(
    section: &'static str,
    layout: &Layout,
    dispatches: usize,
    record_s: Option<f64>,
    naive: Measured,
    fused: &Measured,
    fused_bytes: u64,
    copy: &Measured,
    copy_bytes: u64,
) -> NaiveRow {
    let (naive_s, fused_s, _) = same_clock(&naive, fused);
    NaiveRow {
        section,
        layout: layout.name.clone(),
        tensors: layout.tensors.len(),
        elements: layout.elements(),
        dispatches,
        record_s,
        slowdown: naive_s / fused_s,
        ratio_at_fused_bytes: Ratio::new(&naive, fused_bytes, copy, copy_bytes),
        step: naive,
    }
}

/// The AdamW rules of a layout: torch's defaults, or nanoGPT's two groups for GPT-2.
fn layout_rules(gpt2: bool) -> Vec<Box<dyn UpdateRule>> {
    if gpt2 {
        let adamw = |weight_decay| -> Box<dyn UpdateRule> {
            Box::new(AdamW {
                lr: 6e-4,
                betas: (0.9, 0.95),
                weight_decay,
                ..AdamW::default()
            })
        };
        vec![adamw(0.1), adamw(0.0)]
    } else {
        vec![Box::new(AdamW::default())]
    }
}

fn layout_section(
    bench: &Bench,
    plan: &Plan,
    options: &OptimizerOptions,
    layouts: &[Layout],
    baselines: bool,
    gpt2: bool,
) -> Result<Vec<LayoutRow>, String> {
    let mut rows = Vec::new();
    for layout in layouts {
        eprintln!("layout: {} (load average {:?})", layout.name, gpu::load_average());
        let rules = layout_rules(gpt2);
        let elements = layout.elements();
        let bytes = elements as u64 * bytes_per_element(rules[0].as_ref());
        let mut opt = build_optimizer(bench, layout, &rules, options)?;
        let mut copy = Copy::new(bench, bytes);
        let mut naive = baselines.then(|| NaiveAdamW::new(bench, &opt, u64::from(plan.max_batch)));

        // Recording cost, before anything runs: encoders recorded and dropped unsubmitted.
        let mut in_pass = Vec::new();
        let mut in_pass_allocations = Vec::new();
        let (record_s, allocations_per_record) = time_recording(bench, 200, |encoder| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("bench record"),
                timestamp_writes: None,
            });
            let allocations = alloc_count::allocations();
            let start = Instant::now();
            opt.step_in_pass(&mut pass).expect("each recorded step is dropped before the next");
            in_pass.push(start.elapsed().as_secs_f64());
            in_pass_allocations.push((alloc_count::allocations() - allocations) as f64);
        });
        let naive_record_s = naive.as_mut().map(|naive| {
            let mut record = |encoder: &mut wgpu::CommandEncoder| {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("bench record"),
                    timestamp_writes: None,
                });
                naive.step_in_pass(&mut pass);
            };
            let (once, _) = time_recording(bench, 1, &mut record);
            let iterations = (0.5 / once).clamp(3.0, 50.0) as u32;
            time_recording(bench, iterations, &mut record).0
        });
        bench.wait();

        let dispatches = opt.dispatches_per_step();
        let arenas = opt.arenas().len();
        let (copy_m, step_m, naive_m) = measure_step(bench, plan, &mut copy, &mut opt, naive.as_mut(), 1.0);
        let naive_row = match (naive_m, naive.as_ref()) {
            (Some(m), Some(naive)) => Some(naive_row(
                if gpt2 { "gpt2" } else { "scaling" },
                layout,
                naive.dispatches_per_step(),
                naive_record_s,
                m,
                &step_m,
                bytes,
                &copy_m,
                copy.traffic_bytes,
            )),
            _ => None,
        };
        let ratio = Ratio::new(&step_m, bytes, &copy_m, copy.traffic_bytes);
        drop((naive, opt, copy));
        let cpu = if baselines && (gpt2 || layout.tensors.len() == 1) {
            Some(cpu_baseline(layout, &rules, plan.reps.min(5))?)
        } else {
            None
        };
        rows.push(LayoutRow {
            layout: layout.name.clone(),
            tensors: layout.tensors.len(),
            elements,
            arenas,
            dispatches,
            record_s,
            step_in_pass_s: median(&in_pass),
            allocations_per_record,
            allocations_in_step_in_pass: median(&in_pass_allocations) as u64,
            step: step_m,
            copy: copy_m,
            ratio,
            cpu,
            naive: naive_row,
        });
    }
    Ok(rows)
}

fn tuning_section(
    bench: &Bench,
    plan: &Plan,
    options: &OptimizerOptions,
    sizes: &[usize],
) -> Result<Vec<TuningRow>, String> {
    let mut rows = Vec::new();
    for &elements in sizes {
        let elements = elements.next_multiple_of(4);
        if elements > bench.binding_elements() {
            return Err(format!(
                "tuning size {} exceeds one storage binding ({} elements) on this adapter",
                format_count(elements),
                bench.binding_elements()
            ));
        }
        eprintln!(
            "tuning: {} (load average {:?})",
            format_count(elements),
            gpu::load_average()
        );
        let layout = Layout::single(elements);
        let buffers = AdamBuffers::new(bench, &layouts::values(elements, 0, 0.05), &layout.grad(0));
        let mut opt = build_optimizer(bench, &layout, &[Box::new(AdamW::default())], options)?;
        let mut copy = Copy::new(bench, buffers.traffic_bytes());
        let mut copy_kernel = CopyKernel::new(bench, &copy);
        let mut steps: Vec<VariantStep> = Variant::all(bench.subgroups)
            .into_iter()
            .map(|v| VariantStep::new(bench, v, &buffers))
            .collect();
        let timings = {
            let mut library = Step::new(&mut opt);
            let mut workloads: Vec<&mut dyn Workload> = vec![&mut copy, &mut copy_kernel, &mut library];
            workloads.extend(steps.iter_mut().map(|s| s as &mut dyn Workload));
            measure(bench, plan, &mut workloads)
        };
        let mut timings = timings.into_iter().map(Measured::new);
        let copy_m = timings.next().expect("copy");
        let bytes = buffers.traffic_bytes();
        let named: Vec<(String, Option<Variant>, Measured)> = [
            ("copy kernel (vec4, wg 256)".to_string(), None),
            ("library: Optimizer::step_in_pass".to_string(), None),
        ]
        .into_iter()
        .chain(steps.iter().map(|s| (s.variant.name(), Some(s.variant))))
        .zip(timings)
        .map(|((name, variant), m)| (name, variant, m))
        .collect();
        let library = &named
            .iter()
            .find(|(_, v, _)| *v == Some(Variant::LIBRARY))
            .expect("the library's variant is measured")
            .2;
        let speedup = |m: &Measured| {
            let (library_s, s, _) = same_clock(library, m);
            library_s / s
        };
        for (kernel, variant, step) in &named {
            rows.push(TuningRow {
                kernel: kernel.clone(),
                variant: *variant,
                elements,
                ratio: Ratio::new(step, bytes, &copy_m, copy.traffic_bytes),
                speedup_vs_library: speedup(step),
                step: step.clone(),
            });
        }
        rows.push(TuningRow {
            kernel: "copy_buffer_to_buffer".into(),
            variant: None,
            elements,
            ratio: Ratio::new(&copy_m, copy.traffic_bytes, &copy_m, copy.traffic_bytes),
            speedup_vs_library: speedup(&copy_m),
            step: copy_m,
        });
    }
    Ok(rows)
}

/// Runs one AdamW step through the composed-op baseline and through every tuning variant on
/// small awkward sizes and compares each with the CPU reference.
fn run_checks(bench: &Bench, verbose: bool) -> Result<Vec<CheckRow>, String> {
    let mut rows = Vec::new();
    let error = |got: &[f32], want: &[f32]| -> f64 {
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE) as f64;
        got.iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max)
            / scale
    };

    // Composed-op baseline: two groups (with and without weight decay), tensors of 1 to 65,537.
    let layout = Layout {
        name: "check".into(),
        tensors: [1, 3, 17, 1000, 65537, 4096]
            .iter()
            .enumerate()
            .map(|(t, &len)| (format!("t{t}"), vec![len], t % 2))
            .collect(),
    };
    let rules: Vec<Box<dyn UpdateRule>> = vec![
        Box::new(AdamW::default()),
        Box::new(AdamW {
            weight_decay: 0.0,
            ..AdamW::default()
        }),
    ];
    let opt = build_optimizer(bench, &layout, &rules, &OptimizerOptions::default())?;
    let mut naive = NaiveAdamW::new(bench, &opt, 1);
    let mut encoder = bench.device().create_command_encoder(&Default::default());
    naive.record(&mut encoder, None);
    bench.queue().submit([encoder.finish()]);
    let (params, groups) = layout.build(&rules);
    // The reference's own ids (ids name the tensors of one Parameters only), in layout order.
    let cpu_ids: Vec<_> = params.iter().map(|(id, _)| id).collect();
    let mut cpu = CpuOptimizer::new(params, groups).map_err(|e| e.to_string())?;
    for (t, &id) in cpu_ids.iter().enumerate() {
        cpu.write_grad(id, &layout.grad(t)).map_err(|e| e.to_string())?;
    }
    cpu.step();
    let mut worst: f64 = 0.0;
    for (id, &cpu_id) in opt.tensor_ids().zip(&cpu_ids) {
        worst = worst.max(error(&opt.read_param(id).map_err(|e| e.to_string())?, cpu.param(cpu_id).map_err(|e| e.to_string())?));
        for key in ["exp_avg", "exp_avg_sq"] {
            let got = opt.read_state(id, key).map_err(|e| e.to_string())?;
            worst = worst.max(error(&got, cpu.state(cpu_id, key).map_err(|e| e.to_string())?));
        }
    }
    rows.push(CheckRow {
        kernel: "composed-op AdamW".into(),
        max_error: worst,
        passed: worst <= CHECK_TOLERANCE,
    });

    // Tuning variants: one tensor of 1,000,004 elements (250,001 vec4s: no variant's multiple).
    let elements = 1_000_004;
    let layout = Layout::single(elements);
    let (param, grad) = (layouts::values(elements, 0, 0.05), layout.grad(0));
    let (params, groups) = layout.build(&[Box::new(AdamW::default())]);
    let mut cpu = CpuOptimizer::new(params, groups).map_err(|e| e.to_string())?;
    let id = cpu.tensor_id("t0").expect("the single tensor");
    cpu.write_grad(id, &grad).map_err(|e| e.to_string())?;
    cpu.step();
    let want = [
        cpu.param(id).map_err(|e| e.to_string())?.to_vec(),
        cpu.state(id, "exp_avg").map_err(|e| e.to_string())?.to_vec(),
        cpu.state(id, "exp_avg_sq").map_err(|e| e.to_string())?.to_vec(),
    ];
    for variant in Variant::all(bench.subgroups) {
        let buffers = AdamBuffers::new(bench, &param, &grad);
        let mut step = VariantStep::new(bench, variant, &buffers);
        let mut encoder = bench.device().create_command_encoder(&Default::default());
        step.record(&mut encoder, None);
        bench.queue().submit([encoder.finish()]);
        let got = buffers.read(bench);
        let worst = got.iter().zip(&want).map(|(g, w)| error(g, w)).fold(0.0, f64::max);
        rows.push(CheckRow {
            kernel: variant.name(),
            max_error: worst,
            passed: worst <= CHECK_TOLERANCE,
        });
    }

    // The structured section's rules on a tiny GPT-2: state accounting and Muon + AdamW.
    rows.extend(structured::checks(bench, CHECK_TOLERANCE)?);

    for row in &rows {
        if verbose || !row.passed {
            println!(
                "check {:<36} max error {:.2e} of scale: {}",
                row.kernel,
                row.max_error,
                if row.passed { "ok" } else { "FAILED" }
            );
        }
    }
    if rows.iter().any(|r| !r.passed) {
        return Err(format!(
            "a check failed: a kernel disagrees with the CPU reference by more than its tolerance \
             ({CHECK_TOLERANCE:e} of a tensor's scale; {BF16_CHECK_TOLERANCE:e} for Muon in bfloat16), or the state accounting differs"
        ));
    }
    Ok(rows)
}
