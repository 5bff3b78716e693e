//! The measured device, GPU timestamps, and the timing loop every workload goes through.

use std::time::Instant;

use wgpu_optim::{BackendChoice, GpuContext};

/// The adapter under test: the library's context around a device opened with timestamp
/// queries when the adapter has them.
pub struct Bench {
    pub gpu: GpuContext,
    pub info: wgpu::AdapterInfo,
    /// Timestamps around compute passes (`Features::TIMESTAMP_QUERY`).
    pub timer: Option<Timer>,
    /// Timestamps between encoder commands, needed to time a buffer copy on the GPU
    /// (`Features::TIMESTAMP_QUERY_INSIDE_ENCODERS`).
    pub encoder_timestamps: bool,
    /// Subgroup builtins in shaders (`Features::SUBGROUP`), for the tuning variant that uses them.
    pub subgroups: bool,
}

impl Bench {
    pub fn open(choice: BackendChoice, max_batch: u32) -> Result<Self, String> {
        let adapter = pollster::block_on(GpuContext::adapters(choice))
            .into_iter()
            .next()
            .ok_or_else(|| format!("no {choice} adapter; `wgpu-optim adapters` lists what this machine has"))?;
        let wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let features = adapter.features() & (wanted | wgpu::Features::SUBGROUP);
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("wgpu-optim bench"),
            required_features: features,
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor)).map_err(|e| e.to_string())?;
        let timer = features
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            .then(|| Timer::new(&device, &queue, max_batch));
        let info = adapter.get_info();
        Ok(Bench {
            gpu: GpuContext::from_device(device, queue),
            info,
            timer,
            encoder_timestamps: features.contains(wanted),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
        })
    }

    pub fn device(&self) -> &wgpu::Device {
        self.gpu.device()
    }

    pub fn queue(&self) -> &wgpu::Queue {
        self.gpu.queue()
    }

    pub fn limits(&self) -> wgpu::Limits {
        self.device().limits()
    }

    /// Largest storage binding in `f32` elements, a multiple of 64 (256 bytes).
    pub fn binding_elements(&self) -> usize {
        let limits = self.limits();
        let bytes = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        (bytes / 4) as usize / 64 * 64
    }

    /// Workgroup grid for `workgroups` workgroups: 1-D while it fits, else rows.
    pub fn grid(&self, workgroups: usize) -> (u32, u32) {
        let max = self.limits().max_compute_workgroups_per_dimension as usize;
        let workgroups = workgroups.max(1);
        let x = workgroups.min(max);
        (x as u32, workgroups.div_ceil(x) as u32)
    }

    pub fn wait(&self) {
        self.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("the device was lost while waiting for it");
    }
}

/// A query set of `capacity` begin/end pairs, resolved and read back after each batch.
pub struct Timer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    capacity: u32,
    seconds_per_tick: f64,
}

impl Timer {
    fn new(device: &wgpu::Device, queue: &wgpu::Queue, capacity: u32) -> Self {
        let bytes = u64::from(capacity) * 2 * wgpu::QUERY_SIZE as u64;
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        Timer {
            set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity * 2,
            }),
            resolve: buffer(
                "bench timestamps",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            readback: buffer(
                "bench timestamps read-back",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            capacity,
            seconds_per_tick: f64::from(queue.get_timestamp_period()) * 1e-9,
        }
    }

    fn resolve(&self, encoder: &mut wgpu::CommandEncoder, pairs: u32) {
        encoder.resolve_query_set(&self.set, 0..pairs * 2, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(
            &self.resolve,
            0,
            &self.readback,
            0,
            u64::from(pairs) * 2 * wgpu::QUERY_SIZE as u64,
        );
    }

    /// Durations of the first `pairs` pairs, in seconds (after the batch has completed).
    fn read(&self, device: &wgpu::Device, pairs: u32) -> Vec<f64> {
        let slice = self.readback.slice(..u64::from(pairs) * 2 * wgpu::QUERY_SIZE as u64);
        slice.map_async(wgpu::MapMode::Read, |result| {
            result.expect("mapping the timestamps failed")
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("the device was lost while reading timestamps");
        let ticks: Vec<u64> = bytemuck::cast_slice(&slice.get_mapped_range().expect("mapped above")).to_vec();
        self.readback.unmap();
        ticks
            .chunks(2)
            .map(|pair| pair[1].saturating_sub(pair[0]) as f64 * self.seconds_per_tick)
            .collect()
    }
}

/// Where one recorded unit (a step, a copy) writes its begin and end timestamps.
pub struct Stamp<'a> {
    timer: &'a Timer,
    pair: u32,
}

impl<'a> Stamp<'a> {
    /// For a compute pass holding the unit.
    pub fn pass_writes(&self) -> wgpu::ComputePassTimestampWrites<'a> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.timer.set,
            beginning_of_pass_write_index: Some(self.pair * 2),
            end_of_pass_write_index: Some(self.pair * 2 + 1),
        }
    }

    /// Around encoder commands (needs `TIMESTAMP_QUERY_INSIDE_ENCODERS`).
    pub fn begin(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.write_timestamp(&self.timer.set, self.pair * 2);
    }

    pub fn end(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.write_timestamp(&self.timer.set, self.pair * 2 + 1);
    }
}

/// Something timed: an optimizer step, a baseline step, a copy.
pub trait Workload {
    /// Records one unit into `encoder`, writing `stamp`'s timestamps around it when given.
    fn record(&mut self, encoder: &mut wgpu::CommandEncoder, stamp: Option<Stamp<'_>>);
    /// Whether [`record`](Self::record) can place timestamps on this device.
    fn can_stamp(&self, bench: &Bench) -> bool {
        bench.timer.is_some()
    }
}

/// Samples of one workload, each per unit, in seconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timing {
    /// GPU time of each unit, from timestamps (empty without them).
    pub gpu: Vec<f64>,
    /// Wall time of each batch from submit to completion, divided by the batch size.
    pub wall: Vec<f64>,
    /// CPU time this process (all its threads, the driver's included) spent over the same
    /// span, divided by the batch size: on a software adapter, the work the step costs
    /// whatever share of the cores the machine's other load leaves it. Linux only.
    pub process_cpu: Vec<f64>,
    /// The machine's 1-minute load average after each round of batches (Linux only): how
    /// much other work shared the cores while this was measured.
    pub load_average: Vec<f64>,
    /// Units per batch.
    pub batch: u32,
}

impl Timing {
    pub fn gpu_median(&self) -> Option<f64> {
        (!self.gpu.is_empty()).then(|| median(&self.gpu))
    }

    pub fn wall_median(&self) -> f64 {
        median(&self.wall)
    }

    pub fn process_cpu_median(&self) -> Option<f64> {
        (!self.process_cpu.is_empty()).then(|| median(&self.process_cpu))
    }
}

pub fn median(samples: &[f64]) -> f64 {
    assert!(!samples.is_empty(), "median of no samples");
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// How long and how often to measure.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Plan {
    /// Batches per workload after warm-up.
    pub reps: u32,
    /// Wall time a batch should last; sets the batch size from a warm-up estimate.
    pub batch_seconds: f64,
    /// Most units per batch (also the timestamp capacity).
    pub max_batch: u32,
}

/// Records `batch` units into one encoder, submits it and waits: per-unit GPU and wall times.
fn run_batch(bench: &Bench, workload: &mut dyn Workload, batch: u32) -> (Vec<f64>, f64, Option<f64>) {
    let timer = bench.timer.as_ref().filter(|_| workload.can_stamp(bench));
    let mut encoder = bench.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("bench batch"),
    });
    for pair in 0..batch {
        workload.record(&mut encoder, timer.map(|timer| Stamp { timer, pair }));
    }
    if let Some(timer) = timer {
        timer.resolve(&mut encoder, batch);
    }
    let commands = encoder.finish();
    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    bench.queue().submit([commands]);
    bench.wait();
    let wall = start.elapsed().as_secs_f64() / f64::from(batch);
    let cpu = cpu_start
        .zip(process_cpu_seconds())
        .map(|(a, b)| (b - a) / f64::from(batch));
    let gpu = timer.map(|timer| timer.read(bench.device(), batch)).unwrap_or_default();
    (gpu, wall, cpu)
}

/// CPU time consumed so far by every thread of this process (`CLOCK_PROCESS_CPUTIME_ID`).
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
pub fn process_cpu_seconds() -> Option<f64> {
    #[repr(C)]
    struct Timespec {
        seconds: i64,
        nanoseconds: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut time = Timespec {
        seconds: 0,
        nanoseconds: 0,
    };
    // SAFETY: clock_gettime writes one timespec (two 64-bit fields on 64-bit Linux) into `time`.
    let status = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut time) };
    (status == 0).then_some(time.seconds as f64 + time.nanoseconds as f64 * 1e-9)
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
pub fn process_cpu_seconds() -> Option<f64> {
    None
}

/// Measures workloads interleaved, so that a change in the machine's load (the CI machine's
/// two cores are shared) reaches all of them alike: one warm-up unit each (shader compilation,
/// lazy buffer clears), one unit to size the batches, then `plan.reps` rounds of one batch each.
pub fn measure(bench: &Bench, plan: &Plan, workloads: &mut [&mut dyn Workload]) -> Vec<Timing> {
    let max_batch = plan
        .max_batch
        .min(bench.timer.as_ref().map_or(u32::MAX, |t| t.capacity))
        .max(1);
    let batches: Vec<u32> = workloads
        .iter_mut()
        .map(|workload| {
            run_batch(bench, &mut **workload, 1);
            let (_, estimate, _) = run_batch(bench, &mut **workload, 1);
            ((plan.batch_seconds / estimate.max(1e-9)).ceil() as u32).clamp(1, max_batch)
        })
        .collect();
    let mut timings: Vec<Timing> = batches
        .iter()
        .map(|&batch| Timing {
            batch,
            ..Timing::default()
        })
        .collect();
    for _ in 0..plan.reps {
        for ((workload, timing), &batch) in workloads.iter_mut().zip(&mut timings).zip(&batches) {
            let (gpu, wall, cpu) = run_batch(bench, &mut **workload, batch);
            timing.gpu.extend(gpu);
            timing.wall.push(wall);
            timing.process_cpu.extend(cpu);
        }
        if let Some(load) = load_average() {
            timings.iter_mut().for_each(|t| t.load_average.push(load));
        }
    }
    timings
}

/// The 1-minute load average from `/proc/loadavg`, where there is one.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU cost of recording: creates an encoder, records one unit, finishes the encoder and drops
/// the command buffer unsubmitted; `iterations` times. Returns the median seconds and the
/// median number of heap allocations per iteration (Rust side: wgpu and the library; the
/// driver's own C allocations are not counted).
pub fn time_recording(bench: &Bench, iterations: u32, mut record: impl FnMut(&mut wgpu::CommandEncoder)) -> (f64, u64) {
    let mut seconds = Vec::with_capacity(iterations as usize);
    let mut allocations = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let allocations_before = crate::alloc_count::allocations();
        let start = Instant::now();
        let mut encoder = bench.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("bench record"),
        });
        record(&mut encoder);
        let commands = encoder.finish();
        seconds.push(start.elapsed().as_secs_f64());
        allocations.push((crate::alloc_count::allocations() - allocations_before) as f64);
        drop(commands);
    }
    (median(&seconds), median(&allocations) as u64)
}

/// A `copy_buffer_to_buffer` moving `traffic_bytes` in all: half read, half written.
/// Buffers larger than the device allows are split into several copies.
pub struct Copy {
    pairs: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    pub traffic_bytes: u64,
}

impl Copy {
    pub fn new(bench: &Bench, traffic_bytes: u64) -> Self {
        let copy_bytes = (traffic_bytes / 2).next_multiple_of(16);
        let max_chunk = bench.limits().max_buffer_size.min(1 << 30) / 256 * 256;
        let mut pairs = Vec::new();
        let mut left = copy_bytes;
        while left > 0 {
            let size = left.min(max_chunk);
            let buffer = |label| {
                bench.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            };
            pairs.push((buffer("bench copy source"), buffer("bench copy destination")));
            left -= size;
        }
        Copy {
            pairs,
            traffic_bytes: copy_bytes * 2,
        }
    }

    /// The source and destination buffers, for a compute-shader copy of the same bytes.
    pub fn buffers(&self) -> &[(wgpu::Buffer, wgpu::Buffer)] {
        &self.pairs
    }
}

impl Workload for Copy {
    fn record(&mut self, encoder: &mut wgpu::CommandEncoder, stamp: Option<Stamp<'_>>) {
        if let Some(stamp) = &stamp {
            stamp.begin(encoder);
        }
        for (source, destination) in &self.pairs {
            encoder.copy_buffer_to_buffer(source, 0, destination, 0, source.size());
        }
        if let Some(stamp) = &stamp {
            stamp.end(encoder);
        }
    }

    fn can_stamp(&self, bench: &Bench) -> bool {
        bench.encoder_timestamps
    }
}

/// One optimizer step per unit, in a compute pass of its own. For an optimizer with sparse
/// gradients (SparseAdam), each row mask is first copied from its source in `masks` (what the
/// user's backward kernel would write; outside the timed pass), since the step consumes it.
pub struct Step<'a> {
    pub opt: &'a mut wgpu_optim::Optimizer,
    pub masks: Vec<(wgpu::Buffer, wgpu_optim::TensorView)>,
}

impl<'a> Step<'a> {
    /// A step of an optimizer with dense gradients.
    pub fn new(opt: &'a mut wgpu_optim::Optimizer) -> Self {
        Step { opt, masks: Vec::new() }
    }
}

impl Workload for Step<'_> {
    fn record(&mut self, encoder: &mut wgpu::CommandEncoder, stamp: Option<Stamp<'_>>) {
        for (source, mask) in &self.masks {
            encoder.copy_buffer_to_buffer(source, 0, &mask.buffer, mask.offset, mask.byte_size());
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("bench optimizer step"),
            timestamp_writes: stamp.as_ref().map(Stamp::pass_writes),
        });
        self.opt.step_in_pass(&mut pass).expect("a batch of steps fits the scalar ring");
    }
}
