//! The measurements behind the README's "Reliability, measured": a long AdamW run on the GPU
//! against the CPU reference with the same gradients (drift), and host and GPU memory over many
//! steps (flatness). Shared by `examples/reliability` (the full run, a table) and the test
//! suite (`tests/suite/reliability.rs`, a quick run with assertions).
//!
//! The gradients are computed on the GPU by a small kernel of this file: the gradient of
//! `¼·Σ(p - target)²` plus a hash-based noise term of (step, element), each exactly
//! representable, so that the CPU reproduces them bit for bit in f32 (checked by
//! [`check_gradients`]) and any difference comes from the optimizer's own arithmetic.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wgpu_optim::rules::AdamW;
use wgpu_optim::{BackendChoice, CpuOptimizer, GpuContext, Optimizer, ParamGroup, Parameters, Result, TensorId};

// ---- host allocations ----

/// A `#[global_allocator]` that counts allocations and live bytes, per thread (so that a test
/// sharing its process with other tests sees its own) and for the whole process.
pub struct CountingAllocator;

thread_local! {
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static THREAD_LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

fn record(allocations: u64, bytes: i64) {
    ALLOCATIONS.fetch_add(allocations, Ordering::Relaxed);
    LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
    let _ = THREAD_ALLOCATIONS.try_with(|c| c.set(c.get() + allocations));
    let _ = THREAD_LIVE_BYTES.try_with(|c| c.set(c.get() + bytes));
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            record(1, layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            record(1, layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        record(0, -(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            record(1, new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Allocations made and bytes still held by the calling thread (bytes it freed that another
/// thread allocated count negative), or by the whole process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounts {
    pub allocations: u64,
    pub live_bytes: i64,
}

impl HostCounts {
    pub fn thread() -> Self {
        HostCounts { allocations: THREAD_ALLOCATIONS.with(Cell::get), live_bytes: THREAD_LIVE_BYTES.with(Cell::get) }
    }

    pub fn process() -> Self {
        HostCounts { allocations: ALLOCATIONS.load(Ordering::Relaxed), live_bytes: LIVE_BYTES.load(Ordering::Relaxed) }
    }
}

/// Whether this binary's global allocator is [`CountingAllocator`] (else every count is 0 and
/// a flatness check would pass vacuously).
pub fn counting_is_active() -> bool {
    let before = HostCounts::thread().allocations;
    let probe = std::hint::black_box(Box::new(7u64));
    drop(probe);
    HostCounts::thread().allocations > before
}

// ---- the model and its gradients ----

/// The model: (name, shape, group). Group 0: AdamW with weight decay; group 1: AdamW without,
/// with AMSGrad (so every state key of AdamW is measured). 9,905 elements in all.
pub const MODEL: &[(&str, &[usize], usize)] = &[
    ("w1", &[64, 96], 0),
    ("b1", &[96], 1),
    ("w2", &[96, 32], 0),
    ("b2", &[32], 1),
    ("w3", &[32, 17], 0),
    ("b3", &[17], 1),
];

pub fn rules() -> [AdamW; 2] {
    [
        AdamW { lr: 1e-3, weight_decay: 1e-2, ..AdamW::default() },
        AdamW { lr: 3e-4, weight_decay: 0.0, amsgrad: true, ..AdamW::default() },
    ]
}

/// The model's parameters (deterministic, in [-1, 1)), its groups, and its tensors' ids with
/// the global index of their first element (the noise's element coordinate).
pub fn model() -> (Parameters, Vec<ParamGroup>, Vec<(TensorId, u32)>) {
    let mut params = Parameters::new();
    let mut tensors = Vec::new();
    let mut members = [Vec::new(), Vec::new()];
    let mut base = 0u32;
    for &(name, shape, group) in MODEL {
        let len: usize = shape.iter().product();
        let data = (0..len as u32).map(|i| unit(mix32((base + i) ^ 0x85eb_ca6b))).collect();
        let id = params.add(name, shape, data).expect("a valid tensor");
        tensors.push((id, base));
        members[group].push(id);
        base += len as u32;
    }
    let [r0, r1] = rules();
    let [m0, m1] = members;
    (params, vec![ParamGroup::new(r0, m0), ParamGroup::new(r1, m1)], tensors)
}

/// A 32-bit integer hash (Chris Wellons' lowbias32); `GRADIENT_WGSL` has the same.
pub fn mix32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// A hash's top 24 bits as a value in [-1, 1): a multiple of 2^-23, exact in f32 on any device.
pub fn unit(h: u32) -> f32 {
    (h >> 8) as f32 * (1.0 / 8_388_608.0) - 1.0
}

/// The gradient of step `step` (1-based) of the tensor whose first element has global index
/// `base`: `0.5·(p - target) + 0.25·noise`. `0.5·(p - target)` and `0.25·noise` are exact, so
/// there is one rounding, fused multiply-add or not.
pub fn cpu_gradient(step: u32, base: u32, param: &[f32], grad: &mut [f32]) {
    let s = mix32(step);
    for (i, (g, &p)) in grad.iter_mut().zip(param).enumerate() {
        let e = base + i as u32;
        let target = unit(mix32(e ^ 0x9e37_79b9));
        let noise = unit(mix32(s ^ e));
        *g = 0.5 * (p - target) + 0.25 * noise;
    }
}

const GRADIENT_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read_write> counter: array<u32>;  // [0]: the current step
@group(0) @binding(1) var<uniform> info: vec4<u32>;                   // x: the tensor's base
@group(0) @binding(2) var<storage, read> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;

fn mix32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

fn unit(h: u32) -> f32 {
    return f32(h >> 8u) * (1.0 / 8388608.0) - 1.0;
}

// Before each step's gradients: the step number advances on the GPU.
@compute @workgroup_size(1)
fn advance() {
    counter[0] = counter[0] + 1u;
}

@compute @workgroup_size(64)
fn gradient(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= arrayLength(&param)) {
        return;
    }
    let e = info.x + i;
    let goal = unit(mix32(e ^ 0x9e3779b9u));
    let noise = unit(mix32(mix32(counter[0]) ^ e));
    grad[i] = 0.5 * (param[i] - goal) + 0.25 * noise;
}
"#;

/// The GPU's gradients: one dispatch advancing the step counter, one per tensor.
pub struct GpuGradients {
    counter: wgpu::Buffer,
    advance: (wgpu::ComputePipeline, wgpu::BindGroup),
    gradient: wgpu::ComputePipeline,
    tensors: Vec<(wgpu::BindGroup, u32)>,
}

impl GpuGradients {
    pub fn new(opt: &Optimizer, tensors: &[(TensorId, u32)]) -> Result<Self> {
        use wgpu::util::DeviceExt;
        let device = opt.gpu().device();
        let counter = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("reliability step counter"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("reliability gradients"),
            source: wgpu::ShaderSource::Wgsl(GRADIENT_WGSL.into()),
        });
        let pipeline = |entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let (advance, gradient) = (pipeline("advance"), pipeline("gradient"));
        let advance_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("advance"),
            layout: &advance.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry { binding: 0, resource: counter.as_entire_binding() }],
        });
        let mut groups = Vec::new();
        for &(id, base) in tensors {
            let info = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("reliability tensor info"),
                contents: bytemuck::cast_slice(&[base, 0, 0, 0]),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let (param, grad) = (opt.param(id)?, opt.grad(id)?);
            let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("gradient"),
                layout: &gradient.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: counter.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: info.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 2, resource: param.binding() },
                    wgpu::BindGroupEntry { binding: 3, resource: grad.binding() },
                ],
            });
            groups.push((group, (param.len as u32).div_ceil(64)));
        }
        Ok(GpuGradients { counter, advance: (advance, advance_group), gradient, tensors: groups })
    }

    /// Records the next step's gradients (the counter advances first).
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("gradients"), timestamp_writes: None });
        pass.set_pipeline(&self.advance.0);
        pass.set_bind_group(0, &self.advance.1, &[]);
        pass.dispatch_workgroups(1, 1, 1);
        pass.set_pipeline(&self.gradient);
        for (group, workgroups) in &self.tensors {
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(*workgroups, 1, 1);
        }
    }

    /// Sets the step counter: the next recorded gradients are step `step + 1`'s.
    pub fn set_step(&self, queue: &wgpu::Queue, step: u32) {
        queue.write_buffer(&self.counter, 0, bytemuck::cast_slice(&[step, 0, 0, 0]));
    }
}

/// Whether the GPU's gradients equal [`cpu_gradient`] bit for bit at a few steps (from the
/// initial parameters): the premise of the drift measurement. Returns the first mismatch.
pub fn check_gradients(gpu: &GpuContext) -> Result<std::result::Result<(), String>> {
    let (params, groups, tensors) = model();
    let opt = Optimizer::new(gpu, params.clone(), groups)?;
    let gradients = GpuGradients::new(&opt, &tensors)?;
    for step in [1u32, 2, 99_999, 100_000, u32::MAX] {
        gradients.set_step(gpu.queue(), step - 1);
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        gradients.record(&mut encoder);
        gpu.queue().submit([encoder.finish()]);
        let views = tensors.iter().map(|&(id, _)| opt.grad(id)).collect::<Result<Vec<_>>>()?;
        for (grad, &(id, base)) in opt.read_many(&views)?.iter().zip(&tensors) {
            let mut expected = vec![0.0; grad.len()];
            cpu_gradient(step, base, &params.spec(id)?.data, &mut expected);
            if let Some(i) = (0..grad.len()).find(|&i| grad[i].to_bits() != expected[i].to_bits()) {
                let name = &params.spec(id)?.name;
                return Ok(Err(format!("step {step}, {name}[{i}]: GPU {:e}, CPU {:e}", grad[i], expected[i])));
            }
        }
    }
    Ok(Ok(()))
}

// ---- drift ----

/// How far one kind of tensor (the parameters, or one state key) is from the reference.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Difference {
    /// Largest normwise relative difference over the tensors: max|gpu - cpu| / max|cpu|.
    pub normwise: f64,
    /// Largest difference in units in the last place (adjacent f32 values: 1).
    pub max_ulps: u64,
    /// Elements bit-identical to the reference.
    pub identical: usize,
    pub elements: usize,
}

impl Difference {
    fn add(&mut self, gpu: &[f32], cpu: &[f32]) {
        let scale = cpu.iter().fold(0.0f64, |m, &y| m.max(f64::from(y).abs()));
        let mut max_abs = 0.0f64;
        for (&a, &e) in gpu.iter().zip(cpu) {
            let d = (f64::from(a) - f64::from(e)).abs();
            max_abs = max_abs.max(if d.is_nan() { f64::INFINITY } else { d });
            self.max_ulps = self.max_ulps.max(ulps(a, e));
            self.identical += usize::from(a.to_bits() == e.to_bits());
        }
        self.elements += cpu.len();
        self.normwise = self.normwise.max(if scale > 0.0 { max_abs / scale } else { max_abs });
    }
}

/// Distance in representable f32 values (`u64::MAX` when either is NaN).
pub fn ulps(a: f32, b: f32) -> u64 {
    if a.is_nan() || b.is_nan() {
        return u64::MAX;
    }
    let ordered = |x: f32| {
        let bits = i64::from(x.to_bits() as i32);
        if bits < 0 { i64::from(i32::MIN) - bits } else { bits }
    };
    (ordered(a) - ordered(b)).unsigned_abs()
}

/// The drift after `step` steps: the parameters, then each state key.
#[derive(Clone, Debug)]
pub struct DriftRow {
    pub step: u64,
    pub tensors: Vec<(String, Difference)>,
}

impl DriftRow {
    /// The largest normwise difference of any kind.
    pub fn worst(&self) -> f64 {
        self.tensors.iter().map(|(_, d)| d.normwise).fold(0.0, f64::max)
    }
}

#[derive(Clone, Debug)]
pub struct Drift {
    pub rows: Vec<DriftRow>,
    pub gpu_time: Duration,
    pub cpu_time: Duration,
}

/// Runs the model for `checkpoints.last()` steps on the GPU and on the CPU reference, with the
/// same gradients, comparing every parameter and state tensor at each checkpoint.
pub fn drift(gpu: &GpuContext, checkpoints: &[u64]) -> Result<Drift> {
    let (params, groups, tensors) = model();
    let mut cpu = CpuOptimizer::new(params.clone(), groups.clone())?;
    let mut opt = Optimizer::new(gpu, params, groups)?;
    let gradients = GpuGradients::new(&opt, &tensors)?;
    let mut grads: Vec<Vec<f32>> = tensors.iter().map(|&(id, _)| vec![0.0; cpu.param(id).map_or(0, <[f32]>::len)]).collect();
    let (mut gpu_time, mut cpu_time) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0u64;
    let mut rows = Vec::new();
    for &checkpoint in checkpoints {
        let started = Instant::now();
        opt.submit_steps(checkpoint - done, |_, encoder, _| {
            gradients.record(encoder);
            Ok(())
        })?;
        let mut views = Vec::new();
        let mut names = Vec::new();
        for &(id, _) in &tensors {
            views.push(opt.param(id)?);
            names.push("param");
            for key in opt.state_keys(id)? {
                views.push(opt.state(id, key)?);
                names.push(key);
            }
        }
        let read = opt.read_many(&views)?;
        gpu_time += started.elapsed();

        let started = Instant::now();
        for step in done + 1..=checkpoint {
            for (&(id, base), grad) in tensors.iter().zip(&mut grads) {
                cpu_gradient(step as u32, base, cpu.param(id)?, grad);
                cpu.write_grad(id, grad)?;
            }
            cpu.step();
        }
        cpu_time += started.elapsed();
        done = checkpoint;

        let mut kinds: Vec<(String, Difference)> = Vec::new();
        let mut read = read.into_iter().zip(names);
        for &(id, _) in &tensors {
            let keys = std::iter::once("param").chain(opt.state_keys(id)?);
            for key in keys {
                let (values, name) = read.next().expect("one read per view");
                debug_assert_eq!(name, key);
                let reference = if key == "param" { cpu.param(id)? } else { cpu.state(id, key)? };
                let at = match kinds.iter().position(|(k, _)| k == key) {
                    Some(at) => at,
                    None => {
                        kinds.push((key.to_string(), Difference::default()));
                        kinds.len() - 1
                    }
                };
                kinds[at].1.add(&values, reference);
            }
        }
        rows.push(DriftRow { step: checkpoint, tensors: kinds });
    }
    Ok(Drift { rows, gpu_time, cpu_time })
}

// ---- memory ----

/// The GPU's side: wgpu's memory allocator (Vulkan, DX12; `None` elsewhere) and, when the
/// instance is at hand, the objects wgpu holds for the user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuCounts {
    /// (allocations, bytes allocated, memory blocks, bytes reserved).
    pub allocator: Option<(usize, u64, usize, u64)>,
    /// (buffers, bind groups, command encoders, command buffers) alive.
    pub objects: Option<(usize, usize, usize, usize)>,
}

impl GpuCounts {
    pub fn of(gpu: &GpuContext, instance: Option<&wgpu::Instance>) -> Self {
        let allocator = gpu
            .device()
            .generate_allocator_report()
            .map(|r| (r.allocations.len(), r.total_allocated_bytes, r.blocks.len(), r.total_reserved_bytes));
        let objects = instance.and_then(wgpu::Instance::generate_report).map(|r| {
            let hub = &r.hub;
            (
                hub.buffers.num_allocated,
                hub.bind_groups.num_allocated,
                hub.command_encoders.num_allocated,
                hub.command_buffers.num_allocated,
            )
        });
        GpuCounts { allocator, objects }
    }
}

/// Memory after `step` steps, every submitted step having run.
#[derive(Clone, Debug)]
pub struct MemorySample {
    pub step: u64,
    /// The measuring thread's allocations (cumulative) and live bytes.
    pub host: HostCounts,
    /// The whole process's (other threads included: in a test binary, other tests).
    pub process: HostCounts,
    /// Allocations, cumulative, made while recording the gradients (the caller's part of a step).
    pub gradient_allocations: u64,
    pub gpu: GpuCounts,
    /// Resident set size (Linux), driver memory included (llvmpipe allocates with libc).
    pub rss_bytes: Option<u64>,
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[derive(Clone, Debug)]
pub struct Memory {
    pub samples: Vec<MemorySample>,
    pub time: Duration,
}

impl Memory {
    /// Host allocations per step between two samples: (all, the gradients' part).
    pub fn allocations_per_step(&self, from: usize, to: usize) -> (f64, f64) {
        let (a, b) = (&self.samples[from], &self.samples[to]);
        let steps = (b.step - a.step) as f64;
        (
            (b.host.allocations - a.host.allocations) as f64 / steps,
            (b.gradient_allocations - a.gradient_allocations) as f64 / steps,
        )
    }
}

/// Runs the model for `samples.last()` steps (with [`Optimizer::submit_steps`]), sampling
/// memory after each of `samples`, once the device is idle.
pub fn memory(gpu: &GpuContext, instance: Option<&wgpu::Instance>, samples: &[u64]) -> Result<Memory> {
    let started = Instant::now();
    let (params, groups, tensors) = model();
    let mut opt = Optimizer::new(gpu, params, groups)?;
    let gradients = GpuGradients::new(&opt, &tensors)?;
    let mut gradient_allocations = 0u64;
    let mut done = 0;
    let mut out = Vec::new();
    for &sample in samples {
        opt.submit_steps(sample - done, |_, encoder, _| {
            let before = HostCounts::thread().allocations;
            gradients.record(encoder);
            gradient_allocations += HostCounts::thread().allocations - before;
            Ok(())
        })?;
        done = sample;
        gpu.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| wgpu_optim::Error::Gpu { context: "waiting for the steps".into(), message: e.to_string() })?;
        // The reports allocate (and free) on the host: taken before the host counts, so that
        // the allocations between two samples are the steps' (and one poll's) alone.
        let gpu_counts = GpuCounts::of(gpu, instance);
        let rss = rss_bytes();
        out.push(MemorySample {
            step: sample,
            host: HostCounts::thread(),
            process: HostCounts::process(),
            gradient_allocations,
            gpu: gpu_counts,
            rss_bytes: rss,
        });
    }
    Ok(Memory { samples: out, time: started.elapsed() })
}

/// Opens the best adapter of `choice` on an instance of our own, so that wgpu's object counts
/// ([`wgpu::Instance::generate_report`]) can be read.
pub fn open(choice: BackendChoice) -> Result<(wgpu::Instance, GpuContext)> {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = choice.backends();
    let instance = wgpu::Instance::new(descriptor);
    let rank = |t: wgpu::DeviceType| match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let mut adapters = pollster::block_on(instance.enumerate_adapters(choice.backends()));
    adapters.retain(|a| GpuContext::unusable(a).is_none());
    adapters.sort_by_key(|a| rank(a.get_info().device_type));
    let Some(adapter) = adapters.into_iter().next() else {
        // The library's own search, for its error message.
        return Err(GpuContext::new(choice).err().unwrap_or_else(|| wgpu_optim::Error::Config("no usable adapter".into())));
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&GpuContext::device_descriptor(&adapter)))
        .map_err(|e| wgpu_optim::Error::RequestDevice(e.to_string()))?;
    Ok((instance, GpuContext::from_device(device, queue)))
}
