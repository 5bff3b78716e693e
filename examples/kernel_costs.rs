//! What one AdamW step costs on an adapter, kernel by kernel: the library's step against the
//! same update as one plain kernel (its scalars read after or before the bounds check),
//! against the kernel Burn 0.22.1 generates for its fused AdamW (its WGSL, transcribed from
//! `CUBECL_DEBUG_LOG`), and against the floor (an empty kernel, a copy of one array). All run
//! on the same device, in alternating order; each figure is the median over repetitions of the
//! compute pass's time (timestamp queries where the adapter has them, else wall time from
//! submit to completion). Optional sections follow: the step per element over tensor layouts
//! (`--layouts`), Muon's step in both shapes of its products (`--muon`), and the rules that
//! reduce (`--reductions`); they time whole steps by wall time.
//!
//! ```sh
//! cargo run --release --example kernel_costs -- --elements 16M --reps 7 --backend vulkan
//! cargo run --release --example kernel_costs -- --elements 1M --reps 5 --muon --reductions
//! ```
//!
//! BENCHMARKS.md ("The single-tensor gap", "Muon's products on a CPU adapter", "Workgroup
//! folds") reads these on llvmpipe.

use std::time::Instant;

use clap::Parser;
use wgpu_optim::rules::{Adafactor, AdamW, Lamb, Muon};
use wgpu_optim::{BackendChoice, ClipGradNorm, GpuContext, GradientOptions, Optimizer, OptimizerOptions, ParamGroup, Parameters, UpdateRule};

#[derive(Parser)]
struct Args {
    /// Elements of the one tensor (a multiple of 1,024; suffixes k and M).
    #[arg(long, default_value = "16M")]
    elements: String,
    #[arg(long, default_value_t = 7)]
    reps: usize,
    #[arg(long, default_value = "vulkan")]
    backend: BackendChoice,
    /// Afterwards, the library's step per element over layouts of about 16M elements: one
    /// tensor of 2^24 elements (buffers of exactly 64 MiB), one of 4000 x 4000, one of
    /// 4096 x 4097, and 100 of 400 x 400 (see `STAGGER_BYTES` in src/optimizer.rs).
    #[arg(long)]
    layouts: bool,
    /// Afterwards, Muon's step (torch's defaults: 5 Newton–Schulz iterations, bfloat16) on 64
    /// matrices of 256 x 256, with its products in both kernel shapes
    /// (`GpuContext::with_cpu_kernels`: staged tiles for a GPU, register blocks for a CPU adapter).
    #[arg(long)]
    muon: bool,
    /// Afterwards, the step of rules that reduce (one 4096 x 4096 tensor): AdamW alone and with
    /// `clip_grad_norm` (the gradient norm pass), LAMB with and without its global-norm clip
    /// (timm's default `max_grad_norm` 1.0; its moments pass writes a partial sum per chunk),
    /// and Adafactor.
    #[arg(long)]
    reductions: bool,
}

/// AdamW's scalars as the plain kernels read them.
const SCALARS: &str = "struct Scalars {
    lr: f32, decay_factor: f32, one_minus_beta1: f32, beta1: f32, beta2: f32, one_minus_beta2: f32, eps: f32,
    bias_correction1: f32, bias_correction2_sqrt: f32, bias_correction2: f32, n: u32, _padding: u32,
}";

/// A kernel of one vec4 per invocation over `param`, 256 invocations per workgroup, running
/// `body` for vec4 `i` (the library's mapping, without its step count, terms and tables).
/// The body reads its scalars as `s`: the uniform itself, or, with `uniforms_first`, a copy
/// loaded before the bounds check (as the library's kernels do; see shaders/common.wgsl).
fn one_vec4_per_invocation(body: &str, uniforms_first: bool) -> String {
    let (name, copy) = if uniforms_first { ("scalars", "    let s = scalars;\n") } else { ("s", "") };
    format!(
        "@group(0) @binding(0) var<uniform> {name}: Scalars;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) grid: vec3<u32>, @builtin(local_invocation_index) local: u32) {{
{copy}    let i = (wg.y * grid.x + wg.x) * 256u + local;
    if (i >= arrayLength(&param)) {{
        return;
    }}
{body}
}}"
    )
}

/// shaders/adam.wgsl's update with decoupled weight decay.
const ADAMW_UPDATE: &str = "
    let p = param[i] * s.decay_factor;
    let g = grad[i];
    let e = exp_avg[i];
    let m = e + s.one_minus_beta1 * (g - e);
    let v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    let denom = sqrt(v) / s.bias_correction2_sqrt + s.eps;
    param[i] = p + -(s.lr / s.bias_correction1) * m / denom;";

/// Burn 0.22.1's fused AdamW step (`elemwise_fuse`), renamed: scalars read from a storage
/// buffer at the top, one comparison against a length, fused multiply-adds.
const BURN: &str = "
@group(0) @binding(0) var<storage, read> s: Scalars;
@compute @workgroup_size(WGX, WGY, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) grid: vec3<u32>, @builtin(local_invocation_index) local: u32) {
    let beta1 = s.beta1; let one_minus_beta1 = s.one_minus_beta1; let one_minus_beta2 = s.one_minus_beta2;
    let beta2 = s.beta2; let bc1 = s.bias_correction1; let bc2 = s.bias_correction2; let eps = s.eps;
    let lr = s.lr; let decay = s.decay_factor; let n = s.n;
    let i = (wg.z * grid.y * grid.x + wg.y * grid.x + wg.x) * SIZEu + local;
    if i < n {
        let m0 = exp_avg[i];
        let g = grad[i];
        let v0 = exp_avg_sq[i];
        let p = param[i];
        let m = fma(m0, vec4<f32>(beta1), g * vec4<f32>(one_minus_beta1));
        let v = fma(v0, vec4<f32>(beta2), g * g * vec4<f32>(one_minus_beta2));
        let update = (m / vec4<f32>(bc1)) / (sqrt(v / vec4<f32>(bc2)) + vec4<f32>(eps)) * vec4<f32>(lr);
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = fma(p, vec4<f32>(decay), -update);
    }
}";

const ARRAYS: &str = "
@group(0) @binding(1) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;";

/// Times a compute pass: its timestamps where the device has them, else submit to completion.
struct PassTimer {
    queries: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
    period_ns: f64,
}

impl PassTimer {
    fn new(gpu: &GpuContext) -> Self {
        let device = gpu.device();
        let queries = device.features().contains(wgpu::Features::TIMESTAMP_QUERY).then(|| {
            let set = device.create_query_set(&wgpu::QuerySetDescriptor { label: None, ty: wgpu::QueryType::Timestamp, count: 2 });
            let buffer = |usage| device.create_buffer(&wgpu::BufferDescriptor { label: None, size: 16, usage, mapped_at_creation: false });
            (set, buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC), buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST))
        });
        PassTimer { queries, period_ns: f64::from(gpu.queue().get_timestamp_period()) }
    }

    /// Milliseconds of the pass `record` fills.
    fn time(&self, gpu: &GpuContext, record: &mut dyn FnMut(&mut wgpu::ComputePass<'_>)) -> f64 {
        let device = gpu.device();
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let timestamp_writes = self.queries.as_ref().map(|(set, _, _)| wgpu::ComputePassTimestampWrites {
                query_set: set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
            record(&mut pass);
        }
        if let Some((set, resolve, read)) = &self.queries {
            encoder.resolve_query_set(set, 0..2, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
        }
        let start = Instant::now();
        gpu.queue().submit([encoder.finish()]);
        device.poll(wgpu::PollType::wait_indefinitely()).expect("device lost");
        let wall = start.elapsed().as_secs_f64() * 1e3;
        let Some((_, _, read)) = &self.queries else { return wall };
        read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        device.poll(wgpu::PollType::wait_indefinitely()).expect("device lost");
        let ticks: [u64; 2] = bytemuck::pod_read_unaligned(&read.slice(..).get_mapped_range().expect("mapped"));
        read.unmap();
        ticks[1].wrapping_sub(ticks[0]) as f64 * self.period_ns / 1e6
    }
}

fn parse_count(text: &str) -> usize {
    let (digits, scale) = match text.strip_suffix('M') {
        Some(d) => (d, 1 << 20),
        None => text.strip_suffix('k').map_or((text, 1), |d| (d, 1 << 10)),
    };
    digits.parse::<usize>().expect("a count such as 16M") * scale
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let elements = parse_count(&args.elements);
    assert!(elements.is_multiple_of(1024), "a multiple of 1,024 elements");
    let adapter = pollster::block_on(GpuContext::adapters(args.backend)).into_iter().next().ok_or("no adapter")?;
    let mut descriptor = GpuContext::device_descriptor(&adapter);
    descriptor.required_features |= adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
    let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))?;
    let gpu = GpuContext::from_device(device.clone(), queue.clone());
    let timer = PassTimer::new(&gpu);
    println!("{} elements on {}; {}", elements, adapter.get_info().name, if timer.queries.is_some() { "pass timestamps" } else { "wall time" });

    let mut seed = 42u64;
    let mut random = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let param: Vec<f32> = (0..elements).map(|_| random()).collect();
    let grad: Vec<f32> = (0..elements).map(|_| random()).collect();

    let mut params = Parameters::new();
    let id = params.add("w", &[elements], param.clone())?;
    let mut optimizer = Optimizer::new(&gpu, params, vec![ParamGroup::new(AdamW::default(), [id])])?;
    optimizer.write_grad(id, &grad)?;

    // The plain kernels' own buffers and AdamW's scalars at step 2 (lr 1e-3, weight decay 1e-2).
    use wgpu::util::DeviceExt;
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let array = |contents: &[f32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(contents), usage: storage })
    };
    let zeros = vec![0.0f32; elements];
    let arrays = [array(&param), array(&grad), array(&zeros), array(&zeros)];
    let (beta1, beta2, lr, weight_decay) = (0.9f32, 0.999f32, 1e-3f32, 1e-2f32);
    let mut words = [0u32; 12];
    let values = [lr, 1.0 - lr * weight_decay, 1.0 - beta1, beta1, beta2, 1.0 - beta2, 1e-8, 1.0 - beta1 * beta1];
    for (w, v) in words.iter_mut().zip(values) {
        *w = v.to_bits();
    }
    let bias_correction2 = 1.0 - beta2 * beta2;
    words[8] = bias_correction2.sqrt().to_bits();
    words[9] = bias_correction2.to_bits();
    words[10] = (elements / 4) as u32;
    let scalars = |usage| device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(&words), usage });
    let (uniform_scalars, storage_scalars) = (scalars(wgpu::BufferUsages::UNIFORM), scalars(wgpu::BufferUsages::STORAGE));

    let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    };
    let kernel = |source: &str, workgroup: (u32, u32), scalars_in_storage: bool| {
        let scalars = if scalars_in_storage { wgpu::BufferBindingType::Storage { read_only: true } } else { wgpu::BufferBindingType::Uniform };
        let read_write = wgpu::BufferBindingType::Storage { read_only: false };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: None,
            entries: &[entry(0, scalars), entry(1, read_write), entry(2, wgpu::BufferBindingType::Storage { read_only: true }), entry(3, read_write), entry(4, read_write)],
        });
        let size = workgroup.0 * workgroup.1;
        let source = format!("{SCALARS}\n{ARRAYS}\n{source}")
            .replace("WGX", &workgroup.0.to_string())
            .replace("WGY", &workgroup.1.to_string())
            .replace("SIZE", &size.to_string());
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: None, source: wgpu::ShaderSource::Wgsl(source.into()) });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: None, bind_group_layouts: &[Some(&layout)], immediate_size: 0 });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let buffers = [if scalars_in_storage { &storage_scalars } else { &uniform_scalars }, &arrays[0], &arrays[1], &arrays[2], &arrays[3]];
        let entries: Vec<_> = buffers.iter().enumerate().map(|(b, buffer)| wgpu::BindGroupEntry { binding: b as u32, resource: buffer.as_entire_binding() }).collect();
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries });
        let groups = (elements / 4).div_ceil(size as usize) as u32;
        let grid = if groups <= 65_535 { (groups, 1) } else { (256, groups.div_ceil(256)) };
        move |pass: &mut wgpu::ComputePass<'_>| {
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(grid.0, grid.1, 1);
        }
    };

    type Record<'a> = Box<dyn FnMut(&mut wgpu::ComputePass<'_>) + 'a>;
    let mut runs: Vec<(&str, Record)> = vec![
        ("library: Optimizer::step_in_pass (step count, then AdamW)", Box::new(|pass: &mut wgpu::ComputePass<'_>| {
            optimizer.step_in_pass(pass).expect("a step");
        })),
        ("AdamW as one plain kernel, scalars read after the bounds check", Box::new(kernel(&one_vec4_per_invocation(ADAMW_UPDATE, false), (256, 1), false))),
        ("the same, scalars read first (as the library's kernels)", Box::new(kernel(&one_vec4_per_invocation(ADAMW_UPDATE, true), (256, 1), false))),
        ("AdamW as Burn 0.22.1 generates it (wg 8x8)", Box::new(kernel(BURN, (8, 8), true))),
        ("AdamW as Burn 0.22.1 generates it, wg 256", Box::new(kernel(BURN, (256, 1), true))),
        ("empty kernel (index, bounds check)", Box::new(kernel(&one_vec4_per_invocation("", true), (256, 1), false))),
        ("copy: one vec4 read and written per invocation", Box::new(kernel(&one_vec4_per_invocation("    exp_avg[i] = param[i];", true), (256, 1), false))),
    ];
    for (_, record) in runs.iter_mut() {
        timer.time(&gpu, record.as_mut());
    }
    let mut times = vec![Vec::new(); runs.len()];
    for rep in 0..args.reps {
        for k in 0..runs.len() {
            let k = if rep % 2 == 0 { k } else { runs.len() - 1 - k };
            times[k].push(timer.time(&gpu, runs[k].1.as_mut()));
        }
    }
    println!("| kernel | ms (median of {}) | vs the library's step |", args.reps);
    println!("|---|---:|---:|");
    let library = median(&mut times[0].clone());
    for ((name, _), t) in runs.iter().zip(times.iter_mut()) {
        let ms = median(t);
        println!("| {name} | {ms:.2} | {:.2}× |", library / ms);
    }
    drop(runs);
    if args.layouts {
        compare_layouts(&GpuContext::new(args.backend)?, args.reps, &mut random)?;
    }
    if args.muon {
        compare_muon_shapes(&GpuContext::new(args.backend)?, args.reps, &mut random)?;
    }
    if args.reductions {
        compare_reductions(&GpuContext::new(args.backend)?, args.reps, &mut random)?;
    }
    Ok(())
}

/// The step of AdamW with and without the gradient norm pass, LAMB with and without its global
/// norm, and Adafactor, on one 4096 x 4096 tensor.
fn compare_reductions(gpu: &GpuContext, reps: usize, random: &mut dyn FnMut() -> f32) -> Result<(), Box<dyn std::error::Error>> {
    let clip = GradientOptions { clip_grad_norm: Some(ClipGradNorm { max_norm: 1.0, norm_type: 2.0, error_if_nonfinite: false }), ..Default::default() };
    let runs: [(&str, Box<dyn UpdateRule>, GradientOptions); 5] = [
        ("AdamW", Box::new(AdamW::default()), GradientOptions::default()),
        ("AdamW + clip_grad_norm", Box::new(AdamW::default()), clip),
        ("LAMB (timm's defaults: global-norm clip)", Box::new(Lamb::default()), GradientOptions::default()),
        ("LAMB, max_grad_norm None", Box::new(Lamb { max_grad_norm: None, ..Lamb::default() }), GradientOptions::default()),
        ("Adafactor", Box::new(Adafactor::default()), GradientOptions::default()),
    ];
    let mut names = Vec::new();
    let mut optimizers = Vec::new();
    for (name, rule, gradients) in runs {
        optimizers.push(random_optimizer(gpu, &[[4096, 4096]], rule, OptimizerOptions { gradients, ..Default::default() }, random)?);
        names.push(name);
    }
    let times = step_times(gpu, &mut optimizers, reps)?;
    println!("| one 4096 x 4096 tensor | ms per step (median of {reps}) | vs AdamW |");
    println!("|---|---:|---:|");
    for (name, ms) in names.iter().zip(&times) {
        println!("| {name} | {ms:.1} | {:.2}× |", ms / times[0]);
    }
    Ok(())
}

/// One group of `rule` over tensors of `shapes`, with random values and gradients.
fn random_optimizer(
    gpu: &GpuContext,
    shapes: &[[usize; 2]],
    rule: Box<dyn UpdateRule>,
    options: OptimizerOptions,
    random: &mut dyn FnMut() -> f32,
) -> Result<Optimizer, Box<dyn std::error::Error>> {
    let mut params = Parameters::new();
    let mut ids = Vec::new();
    for (k, shape) in shapes.iter().enumerate() {
        ids.push(params.add(&format!("t{k}"), shape, (0..shape[0] * shape[1]).map(|_| random()).collect())?);
    }
    let optimizer = Optimizer::with_options(gpu, params, vec![ParamGroup::from_boxed(rule, ids.clone())], options)?;
    for (&id, shape) in ids.iter().zip(shapes) {
        optimizer.write_grad(id, &(0..shape[0] * shape[1]).map(|_| random()).collect::<Vec<_>>())?;
    }
    Ok(optimizer)
}

/// Median wall time of a step, submit to completion, for each optimizer stepped in turn.
fn step_times(gpu: &GpuContext, optimizers: &mut [Optimizer], reps: usize) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let mut times = vec![Vec::new(); optimizers.len()];
    for rep in 0..reps + 2 {
        for (k, optimizer) in optimizers.iter_mut().enumerate() {
            let start = Instant::now();
            optimizer.step_and_submit()?;
            gpu.device().poll(wgpu::PollType::wait_indefinitely())?;
            if rep >= 2 {
                times[k].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    Ok(times.iter_mut().map(|t| median(t)).collect())
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Muon's step on 64 matrices of 256 x 256 with its products as staged tiles and as register
/// blocks; the 15 products (3 per iteration) dominate the step.
fn compare_muon_shapes(gpu: &GpuContext, reps: usize, random: &mut dyn FnMut() -> f32) -> Result<(), Box<dyn std::error::Error>> {
    let shapes = [("staged tiles (the GPU shape)", false), ("register blocks (the CPU-adapter shape)", true)];
    let mut optimizers = Vec::new();
    for (_, cpu) in shapes {
        let gpu = gpu.clone().with_cpu_kernels(cpu);
        optimizers.push(random_optimizer(&gpu, &[[256, 256]; 64], Box::new(Muon::default()), OptimizerOptions::default(), random)?);
    }
    let times = step_times(gpu, &mut optimizers, reps)?;
    println!("| Muon, 64 x 256 x 256, products as | ms per step (median of {reps}) |");
    println!("|---|---:|");
    for ((name, _), ms) in shapes.iter().zip(times) {
        println!("| {name} | {ms:.0} |");
    }
    Ok(())
}

/// The library's AdamW step per element over tensor layouts of about 16M elements, the
/// optimizers stepped in turn; medians of wall time from submit to completion. It runs on a
/// device of its own, opened as the library opens one: lavapipe stepped the same optimizers
/// 1.8× slower by wall time on the device above, which has timestamp queries enabled.
fn compare_layouts(gpu: &GpuContext, reps: usize, random: &mut dyn FnMut() -> f32) -> Result<(), Box<dyn std::error::Error>> {
    let layouts: [(&str, Vec<[usize; 2]>); 4] = [
        ("1 x 4096 x 4096 (2^24 elements)", vec![[4096, 4096]]),
        ("1 x 4000 x 4000", vec![[4000, 4000]]),
        ("1 x 4096 x 4097", vec![[4096, 4097]]),
        ("100 x 400 x 400", vec![[400, 400]; 100]),
    ];
    let mut optimizers = Vec::new();
    for (_, shapes) in &layouts {
        optimizers.push(random_optimizer(gpu, shapes, Box::new(AdamW::default()), OptimizerOptions::default(), random)?);
    }
    let times = step_times(gpu, &mut optimizers, reps)?;
    println!("| layout | ms per step (median of {reps}) | ns per element |");
    println!("|---|---:|---:|");
    for ((name, shapes), ms) in layouts.iter().zip(times) {
        let elements: usize = shapes.iter().map(|s| s[0] * s[1]).sum();
        println!("| {name} | {ms:.2} | {:.3} |", ms * 1e6 / elements as f64);
    }
    Ok(())
}
