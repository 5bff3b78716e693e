//! The dispatcher: parameters, gradients and optimizer state in flat arenas, bind groups built
//! once, and a step that records one dispatch per arena window into the caller's encoder.
//!
//! Layout. Each parameter group's tensors are packed, in order, into arenas: one buffer for
//! params, one for grads and one per state key (`exp_avg`, ...), every tensor starting at a
//! 256-byte boundary so the user's kernels can bind it directly. An arena holds at most one
//! storage binding's worth of elements (`max_storage_buffer_binding_size`); a tensor larger
//! than that gets an arena of its own, swept in several binding-sized windows. All rules are
//! element-wise, so one dispatch sweeps a whole window whatever the number of tensors in it.
//!
//! Per-step scalars (bias corrections, learning rate) are computed on the CPU in f64 and
//! written with `queue.write_buffer` into a ring of uniform slots, one slot per recorded step,
//! selected by a dynamic offset: up to [`OptimizerOptions::steps_in_flight`] steps (default
//! [`SCALAR_RING_STEPS`]) may be recorded before the encoders holding them are submitted.

use std::collections::HashMap;
use std::num::NonZeroU64;

use crate::checkpoint::{self, Checkpoint};
#[cfg(not(target_arch = "wasm32"))]
use crate::checkpoint::{CounterRecord, GroupRecord};
use crate::context::{GpuContext, PipelineKey};
use crate::error::{Error, Result};
use crate::gradients::{Control, GradientOptions, GradientPass, StepCounters, CONTROL_ERROR_OFFSET, CONTROL_SIZE};
use crate::params::{check_groups, ParamGroup, Parameters, TensorId};
use crate::rules::{self, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule, ELEMENTS_PER_INVOCATION, WORKGROUP_SIZE};

/// Default number of steps that can be recorded into not-yet-submitted encoders, each with its
/// own scalars ([`OptimizerOptions::steps_in_flight`]).
pub const SCALAR_RING_STEPS: u64 = 64;

/// Every tensor starts at a multiple of this many bytes (WebGPU's storage offset alignment).
const TENSOR_ALIGN_BYTES: u64 = 256;

const SCALARS_SIZE: u64 = std::mem::size_of::<StepScalars>() as u64;
const TERMS_SIZE: u64 = std::mem::size_of::<StepTerms>() as u64;

/// Entries of each group's ring of step terms (used when the step count lives on the GPU):
/// at most this many steps may be skipped between two reads of [`Optimizer::counters`].
pub const STEP_TERMS_RING: u64 = 4096;

/// Tuning knobs; the defaults follow the device's limits.
#[derive(Clone, Debug, Default)]
pub struct OptimizerOptions {
    /// Largest arena (and window), in elements. Default: what one storage binding holds.
    pub max_arena_elements: Option<usize>,
    /// Workgroups per grid dimension before a window's grid becomes 2-D. Default: the device's
    /// `max_compute_workgroups_per_dimension`.
    pub max_workgroups_per_dimension: Option<u32>,
    /// Steps that may be recorded before the encoders holding them are submitted (each keeps
    /// its own scalars in a ring of uniform slots). Default: [`SCALAR_RING_STEPS`]. Recording
    /// many steps into one submission (e.g. 1,000 steps of a small problem) needs as many.
    pub steps_in_flight: Option<u64>,
    /// Loss-scale unscaling, value and norm clipping, skipping non-finite steps: done on the
    /// GPU before each step (see [`crate::gradients`]).
    pub gradients: GradientOptions,
}

/// Where a tensor lives on the GPU: a range of a storage buffer.
///
/// `offset` is 256-byte aligned, so `binding()` can be used in the user's own bind groups
/// (forward and backward kernels reading parameters and writing gradients in place).
#[derive(Clone, Debug)]
pub struct TensorView {
    pub buffer: wgpu::Buffer,
    /// Byte offset of the first element.
    pub offset: u64,
    /// Number of `f32` elements.
    pub len: usize,
}

impl TensorView {
    pub fn byte_size(&self) -> u64 {
        self.len as u64 * 4
    }

    /// A binding resource covering exactly this tensor.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: NonZeroU64::new(self.byte_size()),
        })
    }
}

/// How the tensors were laid out, for inspection and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaInfo {
    pub group: usize,
    /// Elements, padding included.
    pub len: usize,
    pub tensors: Vec<TensorId>,
    /// Dispatches this arena costs per step.
    pub windows: usize,
}

#[derive(Debug)]
struct TensorEntry {
    name: String,
    shape: Vec<usize>,
    len: usize,
    group: usize,
    arena: usize,
    /// Element offset inside the arena.
    offset: usize,
}

struct Window {
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
    /// Element range in the arena.
    start: usize,
    len: usize,
}

struct Arena {
    group: usize,
    len: usize,
    tensors: Vec<TensorId>,
    param: wgpu::Buffer,
    grad: wgpu::Buffer,
    state: Vec<(&'static str, wgpu::Buffer)>,
    windows: Vec<Window>,
}

struct Group {
    rule: Box<dyn UpdateRule>,
    tensors: Vec<TensorId>,
    slots: Vec<StateSlot>,
    pipeline: wgpu::ComputePipeline,
    memo: TermsMemo,
    /// Step terms by step number, when the step count lives on the GPU.
    terms_ring: Option<wgpu::Buffer>,
}

/// A GPU optimizer over a set of parameter groups.
///
/// ```no_run
/// use wgpu_optim::{rules::AdamW, BackendChoice, GpuContext, Optimizer, ParamGroup, Parameters};
/// let gpu = GpuContext::new(BackendChoice::Auto)?;
/// let mut params = Parameters::new();
/// let w = params.add("w", &[4, 4], vec![0.5; 16])?;
/// let b = params.zeros("b", &[4])?;
/// let mut opt = Optimizer::new(&gpu, params, vec![
///     ParamGroup::new(AdamW::default(), [w]),
///     ParamGroup::new(AdamW { weight_decay: 0.0, ..AdamW::default() }, [b]),
/// ])?;
/// // Your backward kernel writes into opt.grad(w).binding(); here we upload from the CPU.
/// opt.write_grad(w, &[0.1; 16])?;
/// opt.write_grad(b, &[0.1; 4])?;
/// let mut encoder = gpu.device().create_command_encoder(&Default::default());
/// let dispatches = opt.step(&mut encoder);
/// gpu.queue().submit([encoder.finish()]);
/// assert_eq!(dispatches, opt.dispatches_per_step());
/// let w_now = opt.read_param(w)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct Optimizer {
    gpu: GpuContext,
    tensors: Vec<TensorEntry>,
    by_name: HashMap<String, TensorId>,
    groups: Vec<Group>,
    arenas: Vec<Arena>,
    scalars: wgpu::Buffer,
    scalar_stride: u64,
    steps_in_flight: u64,
    steps_recorded: u64,
    /// The scalars of one recorded step, reused (no allocation per step).
    scalar_bytes: Vec<u8>,
    gradients: GradientOptions,
    control: wgpu::Buffer,
    conditioning: Option<GradientPass>,
    /// The GPU's counters as last read (the step count, when it lives on the GPU).
    known: Control,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("rule", &self.groups[0].rule.name())
            .field("groups", &self.groups.len())
            .field("tensors", &self.tensors.len())
            .field("arenas", &self.arenas.len())
            .field("dispatches_per_step", &self.dispatches_per_step())
            .finish()
    }
}

impl Optimizer {
    /// Builds the optimizer: validates the groups, uploads the parameters, creates state,
    /// pipelines and bind groups (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(gpu: &GpuContext, params: Parameters, groups: Vec<ParamGroup>) -> Result<Self> {
        Self::with_options(gpu, params, groups, OptimizerOptions::default())
    }

    /// [`Optimizer::new`] with explicit options (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(
        gpu: &GpuContext,
        params: Parameters,
        groups: Vec<ParamGroup>,
        options: OptimizerOptions,
    ) -> Result<Self> {
        pollster::block_on(Self::new_async(gpu, params, groups, options))
    }

    /// Builds the optimizer (async; the form to use on the web).
    pub async fn new_async(
        gpu: &GpuContext,
        params: Parameters,
        groups: Vec<ParamGroup>,
        options: OptimizerOptions,
    ) -> Result<Self> {
        check_groups(&params, &groups)?;
        options.gradients.validate()?;
        let conditioned = options.gradients.is_active();
        let device = gpu.device();
        let limits = device.limits();
        let align = (TENSOR_ALIGN_BYTES.max(u64::from(limits.min_storage_buffer_offset_alignment)) / 4) as usize;
        let binding_elements = (limits.max_storage_buffer_binding_size.min(limits.max_buffer_size) / 4) as usize;
        let device_capacity = binding_elements / align * align;
        let capacity = match options.max_arena_elements {
            Some(requested) => (requested / align * align).clamp(align, device_capacity),
            None => device_capacity,
        };
        let max_grid = options
            .max_workgroups_per_dimension
            .unwrap_or(limits.max_compute_workgroups_per_dimension)
            .clamp(1, limits.max_compute_workgroups_per_dimension);

        let specs = params.into_specs();
        let mut tensors: Vec<Option<TensorEntry>> = (0..specs.len()).map(|_| None).collect();
        let mut plans: Vec<(usize, Vec<TensorId>, usize)> = Vec::new(); // (group, tensors, len)
        for (g, group) in groups.iter().enumerate() {
            let mut open: Option<usize> = None;
            for &id in &group.tensors {
                let spec = &specs[id.0];
                let padded = spec.data.len().div_ceil(align) * align;
                let fits = open.is_some_and(|a| plans[a].2 + padded <= capacity);
                let arena = if fits {
                    open.expect("checked above")
                } else {
                    plans.push((g, Vec::new(), 0));
                    plans.len() - 1
                };
                // A tensor larger than one binding gets an arena of its own.
                open = if padded > capacity { None } else { Some(arena) };
                let offset = plans[arena].2;
                plans[arena].1.push(id);
                plans[arena].2 += padded;
                tensors[id.0] = Some(TensorEntry {
                    name: spec.name.clone(),
                    shape: spec.shape.clone(),
                    len: spec.data.len(),
                    group: g,
                    arena,
                    offset,
                });
            }
        }
        let tensors: Vec<TensorEntry> = tensors.into_iter().map(|t| t.expect("check_groups covers every tensor")).collect();
        for (_, ids, len) in &plans {
            let bytes = *len as u64 * 4;
            if bytes > limits.max_buffer_size {
                return Err(Error::Tensor(format!(
                    "tensor {:?} needs {bytes} bytes but the device's max_buffer_size is {}",
                    tensors[ids[0].0].name, limits.max_buffer_size
                )));
            }
        }

        let steps_in_flight = options.steps_in_flight.unwrap_or(SCALAR_RING_STEPS).max(1);
        let scalar_stride = SCALARS_SIZE.next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let scalars = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-optim step scalars"),
            size: scalar_stride * groups.len() as u64 * steps_in_flight,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let control_values = Control::new(&options.gradients);
        let control = {
            use wgpu::util::DeviceExt;
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("wgpu-optim gradient control"),
                contents: bytemuck::bytes_of(&control_values),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            })
        };

        let mut built_groups = Vec::with_capacity(groups.len());
        for group in groups {
            let kernel = group.rule.kernel();
            let mut flags = kernel.flags.clone();
            flags.push(("conditioned", conditioned));
            let key = PipelineKey {
                label: kernel.label,
                constants: flags.iter().map(|&(name, on)| (name, f64::from(u8::from(on)).to_bits())).collect(),
            };
            let layout = kernel_layout(device, kernel.label, kernel.state_bindings.len());
            let pipeline = gpu.pipeline(key, &kernel.wgsl(), &layout).await?;
            let terms_ring = conditioned.then(|| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-optim step terms"),
                    size: STEP_TERMS_RING * TERMS_SIZE,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            });
            built_groups.push(Group {
                tensors: group.tensors,
                slots: group.rule.state_slots(),
                rule: group.rule,
                pipeline,
                memo: TermsMemo::default(),
                terms_ring,
            });
        }

        let arenas = gpu
            .checked("allocating arenas and bind groups", || {
                let unused_slot = |binding: usize| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(&format!("wgpu-optim unused state binding {binding}")),
                        size: 16,
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: false,
                    })
                };
                let max_bindings = built_groups.iter().map(|g| g.rule.kernel().state_bindings.len()).max().unwrap_or(0);
                let unused: Vec<wgpu::Buffer> = (0..max_bindings).map(unused_slot).collect();
                let unused_terms = unused_slot(6);
                plans
                    .into_iter()
                    .map(|(g, ids, len)| {
                        let group = &built_groups[g];
                        let mut initial = vec![0.0f32; len];
                        for id in &ids {
                            let t = &tensors[id.0];
                            initial[t.offset..t.offset + t.len].copy_from_slice(&specs[id.0].data);
                        }
                        let param = arena_buffer(device, "param", len, Some(&initial));
                        let grad = arena_buffer(device, "grad", len, None);
                        let state: Vec<(&'static str, wgpu::Buffer)> = group
                            .slots
                            .iter()
                            .map(|slot| {
                                let contents = (slot.init != 0.0).then(|| {
                                    initial.fill(slot.init);
                                    initial.as_slice()
                                });
                                (slot.key, arena_buffer(device, slot.key, len, contents))
                            })
                            .collect();
                        let kernel = group.rule.kernel();
                        let layout = group.pipeline.get_bind_group_layout(0);
                        let windows = (0..len)
                            .step_by(capacity)
                            .map(|start| {
                                let window_len = capacity.min(len - start);
                                let range = |buffer| wgpu::BufferBinding {
                                    buffer,
                                    offset: start as u64 * 4,
                                    size: NonZeroU64::new(window_len as u64 * 4),
                                };
                                let mut entries = vec![
                                    wgpu::BindGroupEntry {
                                        binding: 0,
                                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                            buffer: &scalars,
                                            offset: 0,
                                            size: NonZeroU64::new(SCALARS_SIZE),
                                        }),
                                    },
                                    wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::Buffer(range(&param)) },
                                    wgpu::BindGroupEntry { binding: 2, resource: wgpu::BindingResource::Buffer(range(&grad)) },
                                ];
                                for (k, key) in kernel.state_bindings.iter().enumerate() {
                                    let resource = match state.iter().find(|(name, _)| name == key) {
                                        Some((_, buffer)) => wgpu::BindingResource::Buffer(range(buffer)),
                                        None => unused[k].as_entire_binding(),
                                    };
                                    entries.push(wgpu::BindGroupEntry { binding: 3 + k as u32, resource });
                                }
                                let terms = group.terms_ring.as_ref().unwrap_or(&unused_terms);
                                entries.push(wgpu::BindGroupEntry { binding: 6, resource: terms.as_entire_binding() });
                                entries.push(wgpu::BindGroupEntry { binding: 7, resource: control.as_entire_binding() });
                                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                                    label: Some(kernel.label),
                                    layout: &layout,
                                    entries: &entries,
                                });
                                Window { bind_group, grid: grid(window_len, max_grid), start, len: window_len }
                            })
                            .collect();
                        Arena { group: g, len, tensors: ids, param, grad, state, windows }
                    })
                    .collect::<Vec<_>>()
            })
            .await?;

        let conditioning = if conditioned {
            let windows: Vec<(wgpu::Buffer, u64, u64, (u32, u32))> = arenas
                .iter()
                .flat_map(|arena: &Arena| {
                    arena.windows.iter().map(move |w| (arena.grad.clone(), w.start as u64 * 4, w.len as u64 * 4, w.grid))
                })
                .collect();
            Some(GradientPass::new(gpu, &options.gradients, &control, &windows).await?)
        } else {
            None
        };

        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), TensorId(i))).collect();
        let built_groups_len = built_groups.len() as u64;
        let mut optimizer = Optimizer {
            gpu: gpu.clone(),
            tensors,
            by_name,
            groups: built_groups,
            arenas,
            scalars,
            scalar_stride,
            steps_in_flight,
            steps_recorded: 0,
            scalar_bytes: vec![0; (scalar_stride * built_groups_len) as usize],
            gradients: options.gradients,
            control,
            conditioning,
            known: control_values,
        };
        optimizer.fill_terms_rings();
        Ok(optimizer)
    }

    /// Records one optimizer step (every group) into `encoder`, in a compute pass of its own;
    /// returns the number of dispatches recorded. The step's scalars are written with
    /// `queue.write_buffer`, so they reach the GPU with the next `queue.submit`.
    pub fn step(&mut self, encoder: &mut wgpu::CommandEncoder) -> usize {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-optim step"),
            timestamp_writes: None,
        });
        self.step_in_pass(&mut pass)
    }

    /// Records one optimizer step into the caller's compute pass (e.g. after the backward
    /// kernels, or between timestamp writes); returns the number of dispatches recorded.
    /// The pass's bound pipeline and bind group 0 are changed.
    pub fn step_in_pass(&mut self, pass: &mut wgpu::ComputePass<'_>) -> usize {
        let ring_base = (self.steps_recorded % self.steps_in_flight) * self.scalar_stride * self.groups.len() as u64;
        self.steps_recorded += 1;
        // Without conditioning every recorded step is applied: t is known here. With it, the
        // GPU decides; this is the largest t the step can have (no further skips).
        let step = self.steps_recorded - u64::from(self.known.skipped);
        let bytes = &mut self.scalar_bytes;
        for (g, group) in self.groups.iter_mut().enumerate() {
            let terms = group.rule.step_terms(step, &mut group.memo);
            if let Some(ring) = &group.terms_ring {
                self.gpu.queue().write_buffer(ring, (step % STEP_TERMS_RING) * TERMS_SIZE, bytemuck::bytes_of(&terms));
            }
            let scalars = group.rule.step_scalars(terms);
            let at = g * self.scalar_stride as usize;
            bytes[at..at + SCALARS_SIZE as usize].copy_from_slice(bytemuck::bytes_of(&scalars));
        }
        self.gpu.queue().write_buffer(&self.scalars, ring_base, bytes);

        let mut dispatches = 0;
        if let Some(conditioning) = &self.conditioning {
            dispatches += conditioning.record(pass);
        }
        for arena in &self.arenas {
            pass.set_pipeline(&self.groups[arena.group].pipeline);
            let offset = (ring_base + arena.group as u64 * self.scalar_stride) as u32;
            for window in &arena.windows {
                pass.set_bind_group(0, &window.bind_group, &[offset]);
                pass.dispatch_workgroups(window.grid.0, window.grid.1, 1);
                dispatches += 1;
            }
        }
        dispatches
    }

    /// Writes every group's ring of step terms for the steps the GPU may reach next, given
    /// the skips known so far.
    fn fill_terms_rings(&mut self) {
        let newest = self.steps_recorded + 1 - u64::from(self.known.skipped);
        let oldest = newest.saturating_sub(STEP_TERMS_RING - 1).max(1);
        for group in &mut self.groups {
            let Some(ring) = &group.terms_ring else { continue };
            let mut entries = vec![StepTerms::default(); STEP_TERMS_RING as usize];
            for step in oldest..=newest {
                entries[(step % STEP_TERMS_RING) as usize] = group.rule.step_terms(step, &mut group.memo);
            }
            self.gpu.queue().write_buffer(ring, 0, bytemuck::cast_slice(&entries));
        }
    }

    /// What the GPU counted: applied and skipped steps, loss scale, last gradient norm
    /// (blocking read; native only). Without gradient conditioning nothing is skipped and
    /// this needs no read. Reports the error torch would have raised (a non-finite norm with
    /// `error_if_nonfinite`) once.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn counters(&mut self) -> Result<StepCounters> {
        pollster::block_on(self.counters_async())
    }

    /// [`Optimizer::counters`], async.
    pub async fn counters_async(&mut self) -> Result<StepCounters> {
        if self.conditioning.is_none() {
            let mut counters = self.known.counters();
            counters.applied_steps = self.steps_recorded;
            return Ok(counters);
        }
        let view = TensorView { buffer: self.control.clone(), offset: 0, len: (CONTROL_SIZE / 4) as usize };
        let words = read_views(&self.gpu, std::slice::from_ref(&view)).await?.remove(0);
        let mut control: Control = bytemuck::pod_read_unaligned(bytemuck::cast_slice(&words));
        let newly_skipped = u64::from(control.skipped - self.known.skipped);
        let error = control.take_error();
        if control.error != self.known.error || error.is_err() {
            self.gpu.queue().write_buffer(&self.control, CONTROL_ERROR_OFFSET, &0u32.to_le_bytes());
        }
        let rebase = newly_skipped > 0;
        self.known = control;
        if rebase {
            self.fill_terms_rings();
        }
        error?;
        if newly_skipped >= STEP_TERMS_RING {
            return Err(Error::StepTermsLost(format!(
                "{newly_skipped} steps were skipped since the counters were last read; the GPU keeps the terms of \
                 {STEP_TERMS_RING} steps, so some updates may have been dropped. Read counters() more often."
            )));
        }
        Ok(control.counters())
    }

    /// Everything needed to resume exactly: parameters, state, counters, hyper-parameters,
    /// and the caller's schedule state (blocking read; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn checkpoint(&mut self, schedule: Option<serde_json::Value>) -> Result<Checkpoint> {
        let counters = self.counters()?;
        let mut control = self.known;
        if self.conditioning.is_none() {
            control.step = u32::try_from(self.steps_recorded).map_err(|_| Error::Checkpoint("more than 2^32 steps".into()))?;
        }
        let mut views = Vec::new();
        for group in &self.groups {
            for &id in &group.tensors {
                views.push(self.param(id));
                for slot in &group.slots {
                    views.push(self.state(id, slot.key)?);
                }
            }
        }
        let mut values = self.read_many(&views)?.into_iter();
        let mut tensors = Vec::new();
        let mut groups = Vec::new();
        for group in &self.groups {
            for &id in &group.tensors {
                let entry = &self.tensors[id.0];
                let param_and_state = (0..=group.slots.len()).map(|_| values.next().expect("one read per view")).collect();
                tensors.extend(checkpoint::tensors_of(&entry.name, &entry.shape, group.rule.as_ref(), counters.applied_steps, param_and_state));
            }
            groups.push(GroupRecord {
                params: group.tensors.iter().map(|id| self.tensors[id.0].name.clone()).collect(),
                hyperparameters: group.rule.hyperparameters(),
            });
        }
        Ok(Checkpoint {
            optimizer: self.groups[0].rule.name().to_string(),
            groups,
            counters: CounterRecord::of(&control),
            gradients: self.gradients.clone(),
            schedule,
            tensors,
        })
    }

    /// Writes [`Optimizer::checkpoint`] to a file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint(&mut self, path: &std::path::Path, schedule: Option<serde_json::Value>) -> Result<()> {
        self.checkpoint(schedule)?.save(path)
    }

    /// Restores a checkpoint into this optimizer (same optimizer, tensors, groups, flags and
    /// gradient conditioning; hyper-parameters such as lr are taken from the checkpoint).
    /// Returns the saved schedule state. A checkpoint that does not fit changes nothing.
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<Option<serde_json::Value>> {
        let target = checkpoint::Target::new(
            self.groups.iter().map(|g| (g.tensors.as_slice(), g.rule.as_ref())),
            |id| (self.tensors[id.0].name.as_str(), self.tensors[id.0].shape.as_slice()),
            &self.gradients,
        );
        let restore = checkpoint::check(checkpoint, &target)?;
        let control = checkpoint.counters.control(&self.gradients)?;
        for (group, rule) in self.groups.iter_mut().zip(restore.rules) {
            group.rule = rule;
            group.memo = TermsMemo::default();
        }
        for group in &self.groups {
            for &id in &group.tensors {
                let values = &restore.values[&self.tensors[id.0].name];
                self.write_param(id, &values[0])?;
                for (slot, data) in group.slots.iter().zip(&values[1..]) {
                    self.write_state(id, slot.key, data)?;
                }
            }
        }
        self.gpu.queue().write_buffer(&self.control, 0, bytemuck::bytes_of(&control));
        self.known = control;
        self.steps_recorded = checkpoint.counters.steps_recorded;
        self.fill_terms_rings();
        Ok(checkpoint.schedule.clone())
    }

    /// Reads a checkpoint file and restores it; returns the saved schedule state.
    pub fn load_checkpoint(&mut self, path: &std::path::Path) -> Result<Option<serde_json::Value>> {
        self.restore(&Checkpoint::load(path)?)
    }

    /// The dynamic loss scale on the GPU, for the user's backward pass to multiply the loss by
    /// (a 4-byte view at offset 0 of the control block; 1.0 without loss scaling).
    pub fn loss_scale_view(&self) -> TensorView {
        TensorView { buffer: self.control.clone(), offset: 0, len: 1 }
    }

    /// The gradient conditioning this optimizer applies.
    pub fn gradient_options(&self) -> &GradientOptions {
        &self.gradients
    }

    /// Steps recorded so far (applied or, with gradient conditioning, possibly skipped).
    pub fn steps_recorded(&self) -> u64 {
        self.steps_recorded
    }

    /// Records one step and submits it.
    pub fn step_and_submit(&mut self) -> wgpu::SubmissionIndex {
        let mut encoder = self.gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("wgpu-optim step"),
        });
        self.step(&mut encoder);
        self.gpu.queue().submit([encoder.finish()])
    }

    /// Dispatches every step records: one per arena window.
    pub fn dispatches_per_step(&self) -> usize {
        self.arenas.iter().map(|a| a.windows.len()).sum()
    }

    /// The arenas, in dispatch order.
    pub fn arenas(&self) -> Vec<ArenaInfo> {
        self.arenas
            .iter()
            .map(|a| ArenaInfo { group: a.group, len: a.len, tensors: a.tensors.clone(), windows: a.windows.len() })
            .collect()
    }

    pub fn gpu(&self) -> &GpuContext {
        &self.gpu
    }

    // ---- tensors ----

    pub fn tensor_id(&self, name: &str) -> Option<TensorId> {
        self.by_name.get(name).copied()
    }

    pub fn tensor_ids(&self) -> impl Iterator<Item = TensorId> {
        (0..self.tensors.len()).map(TensorId)
    }

    pub fn tensor_name(&self, id: TensorId) -> &str {
        &self.tensors[id.0].name
    }

    pub fn tensor_shape(&self, id: TensorId) -> &[usize] {
        &self.tensors[id.0].shape
    }

    /// The parameter group a tensor belongs to.
    pub fn group_of(&self, id: TensorId) -> usize {
        self.tensors[id.0].group
    }

    /// State keys kept for a tensor (torch's names), e.g. `["exp_avg", "exp_avg_sq"]`.
    pub fn state_keys(&self, id: TensorId) -> Vec<&'static str> {
        self.groups[self.tensors[id.0].group].slots.iter().map(|s| s.key).collect()
    }

    pub fn param(&self, id: TensorId) -> TensorView {
        self.view(id, |a| &a.param)
    }

    pub fn grad(&self, id: TensorId) -> TensorView {
        self.view(id, |a| &a.grad)
    }

    /// A state tensor by torch's key; an error names the keys this tensor has.
    pub fn state(&self, id: TensorId, key: &str) -> Result<TensorView> {
        let arena = &self.arenas[self.tensors[id.0].arena];
        match arena.state.iter().find(|(name, _)| *name == key) {
            Some(_) => Ok(self.view(id, |a| &a.state.iter().find(|(name, _)| *name == key).expect("found above").1)),
            None => Err(Error::Tensor(format!(
                "tensor {:?} has no state {key:?}; it has {:?}",
                self.tensors[id.0].name,
                self.state_keys(id)
            ))),
        }
    }

    fn view(&self, id: TensorId, buffer: impl Fn(&Arena) -> &wgpu::Buffer) -> TensorView {
        let entry = &self.tensors[id.0];
        TensorView {
            buffer: buffer(&self.arenas[entry.arena]).clone(),
            offset: entry.offset as u64 * 4,
            len: entry.len,
        }
    }

    // ---- groups ----

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    pub fn rule(&self, group: usize) -> &dyn UpdateRule {
        self.groups[group].rule.as_ref()
    }

    /// Sets a group's learning rate (what a schedule does); takes effect at the next step.
    pub fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        let group = &mut self.groups[group];
        group.rule = rules::changed(group.rule.as_ref(), |rule| {
            rule.set_lr(lr);
            Ok(())
        })?;
        Ok(())
    }

    /// Sets a group's `momentum` or `betas[0]`, the hyper-parameter torch's `CyclicLR` and
    /// `OneCycleLR` cycle (see [`UpdateRule::cycled_momentum`]); like lr, it travels in each
    /// step's scalars, so it takes effect at the next step recorded.
    pub fn set_cycled_momentum(&mut self, group: usize, value: f64) -> Result<()> {
        let group = &mut self.groups[group];
        group.rule = rules::changed(group.rule.as_ref(), |rule| rule.set_cycled_momentum(value))?;
        Ok(())
    }

    // ---- CPU access ----

    pub fn write_param(&self, id: TensorId, data: &[f32]) -> Result<()> {
        self.write(&self.param(id), data, || format!("parameter {:?}", self.tensors[id.0].name))
    }

    pub fn write_grad(&self, id: TensorId, data: &[f32]) -> Result<()> {
        self.write(&self.grad(id), data, || format!("gradient of {:?}", self.tensors[id.0].name))
    }

    pub fn write_state(&self, id: TensorId, key: &str, data: &[f32]) -> Result<()> {
        self.write(&self.state(id, key)?, data, || format!("{key} of {:?}", self.tensors[id.0].name))
    }

    fn write(&self, view: &TensorView, data: &[f32], what: impl Fn() -> String) -> Result<()> {
        if data.len() != view.len {
            return Err(Error::SizeMismatch { what: what(), expected: view.len, actual: data.len() });
        }
        self.gpu.queue().write_buffer(&view.buffer, view.offset, bytemuck::cast_slice(data));
        Ok(())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_param(&self, id: TensorId) -> Result<Vec<f32>> {
        self.read(&self.param(id))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_grad(&self, id: TensorId) -> Result<Vec<f32>> {
        self.read(&self.grad(id))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_state(&self, id: TensorId, key: &str) -> Result<Vec<f32>> {
        self.read(&self.state(id, key)?)
    }

    /// Reads one view back (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, view: &TensorView) -> Result<Vec<f32>> {
        Ok(self.read_many(std::slice::from_ref(view))?.remove(0))
    }

    /// Reads several views back with one copy submission (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_many(&self, views: &[TensorView]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(read_views(&self.gpu, views))
    }
}

/// Reads views back to the CPU: copies them into one staging buffer and maps it.
pub async fn read_views(gpu: &GpuContext, views: &[TensorView]) -> Result<Vec<Vec<f32>>> {
    let total: u64 = views.iter().map(TensorView::byte_size).sum();
    if total == 0 {
        return Ok(views.iter().map(|_| Vec::new()).collect());
    }
    let device = gpu.device();
    let staging = gpu
        .checked("allocating a read-back buffer", || {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim read-back"),
                size: total,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
        .await?;
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-optim read-back") });
    let mut at = 0;
    for view in views {
        encoder.copy_buffer_to_buffer(&view.buffer, view.offset, &staging, at, view.byte_size());
        at += view.byte_size();
    }
    gpu.queue().submit([encoder.finish()]);
    let (sender, receiver) = futures_channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |result| {
        let _ = sender.send(result);
    });
    #[cfg(not(target_arch = "wasm32"))]
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::ReadBack(e.to_string()))?;
    receiver
        .await
        .map_err(|_| Error::ReadBack("the device was lost before the buffer was mapped".into()))?
        .map_err(|e| Error::ReadBack(e.to_string()))?;
    let mapped = staging.get_mapped_range(..).map_err(|e| Error::ReadBack(e.to_string()))?;
    let all: &[f32] = bytemuck::cast_slice(&mapped);
    let mut out = Vec::with_capacity(views.len());
    let mut at = 0;
    for view in views {
        out.push(all[at..at + view.len].to_vec());
        at += view.len;
    }
    drop(mapped);
    staging.unmap();
    Ok(out)
}

/// Bind group layout of every kernel: scalars, param, grad, then `state_bindings` arrays.
fn kernel_layout(device: &wgpu::Device, label: &str, state_bindings: usize) -> wgpu::PipelineLayout {
    let storage = |binding, read_only| crate::context::storage_binding(binding, read_only, 16);
    let mut entries = vec![
        wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: NonZeroU64::new(SCALARS_SIZE),
            },
            count: None,
        },
        storage(1, false),
        storage(2, true),
    ];
    entries.extend((0..state_bindings as u32).map(|k| storage(3 + k, false)));
    entries.push(storage(6, true));
    let mut control = storage(7, true);
    if let wgpu::BindingType::Buffer { min_binding_size, .. } = &mut control.ty {
        *min_binding_size = NonZeroU64::new(CONTROL_SIZE);
    }
    entries.push(control);
    let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    });
    device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(&bind_group_layout)],
        immediate_size: 0,
    })
}

/// A storage buffer of `len` elements holding `contents` (zero-filled by wgpu when `None`).
fn arena_buffer(device: &wgpu::Device, label: &str, len: usize, contents: Option<&[f32]>) -> wgpu::Buffer {
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&format!("wgpu-optim {label}")),
        size: len as u64 * 4,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: contents.is_some(),
    });
    if let Some(contents) = contents {
        buffer
            .get_mapped_range_mut(..)
            .expect("a buffer mapped at creation is mappable")
            .copy_from_slice(bytemuck::cast_slice(contents));
        buffer.unmap();
    }
    buffer
}

/// Workgroup grid sweeping `len` elements: 1-D while it fits, else rows of `max_per_dim`.
fn grid(len: usize, max_per_dim: u32) -> (u32, u32) {
    let per_workgroup = (WORKGROUP_SIZE * ELEMENTS_PER_INVOCATION) as usize;
    let workgroups = len.div_ceil(per_workgroup).max(1);
    let x = workgroups.min(max_per_dim as usize);
    let y = workgroups.div_ceil(x);
    (x as u32, y as u32)
}
