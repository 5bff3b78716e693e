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

use crate::context::{GpuContext, PipelineKey};
use crate::error::{Error, Result};
use crate::params::{check_groups, ParamGroup, Parameters, TensorId};
use crate::rules::{StateSlot, StepScalars, UpdateRule, ELEMENTS_PER_INVOCATION, WORKGROUP_SIZE};

/// Default number of steps that can be recorded into not-yet-submitted encoders, each with its
/// own scalars ([`OptimizerOptions::steps_in_flight`]).
pub const SCALAR_RING_STEPS: u64 = 64;

/// Every tensor starts at a multiple of this many bytes (WebGPU's storage offset alignment).
const TENSOR_ALIGN_BYTES: u64 = 256;

const SCALARS_SIZE: u64 = std::mem::size_of::<StepScalars>() as u64;

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
    slots: Vec<StateSlot>,
    pipeline: wgpu::ComputePipeline,
    step: u64,
    scalar_keys: Vec<&'static str>,
    scalar_values: Vec<f32>,
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

        let mut built_groups = Vec::with_capacity(groups.len());
        for group in groups {
            let kernel = group.rule.kernel();
            let key = PipelineKey {
                label: kernel.label,
                constants: kernel.flags.iter().map(|&(name, on)| (name, f64::from(u8::from(on)).to_bits())).collect(),
            };
            let layout = kernel_layout(device, kernel.label, kernel.state_bindings.len());
            let pipeline = gpu.pipeline(key, &kernel.wgsl(), &layout).await?;
            let (scalar_keys, scalar_values) = group.rule.scalar_state().into_iter().unzip();
            built_groups.push(Group {
                slots: group.rule.state_slots(),
                rule: group.rule,
                pipeline,
                step: 0,
                scalar_keys,
                scalar_values,
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
                                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                                    label: Some(kernel.label),
                                    layout: &layout,
                                    entries: &entries,
                                });
                                Window { bind_group, grid: grid(window_len, max_grid) }
                            })
                            .collect();
                        Arena { group: g, len, tensors: ids, param, grad, state, windows }
                    })
                    .collect::<Vec<_>>()
            })
            .await?;

        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), TensorId(i))).collect();
        Ok(Optimizer {
            gpu: gpu.clone(),
            tensors,
            by_name,
            groups: built_groups,
            arenas,
            scalars,
            scalar_stride,
            steps_in_flight,
            steps_recorded: 0,
        })
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
        let mut bytes = vec![0u8; (self.scalar_stride * self.groups.len() as u64) as usize];
        for (g, group) in self.groups.iter_mut().enumerate() {
            group.step += 1;
            let scalars = group.rule.step_scalars(group.step, &mut group.scalar_values);
            let at = g * self.scalar_stride as usize;
            bytes[at..at + SCALARS_SIZE as usize].copy_from_slice(bytemuck::bytes_of(&scalars));
        }
        self.gpu.queue().write_buffer(&self.scalars, ring_base, &bytes);

        let mut dispatches = 0;
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
        let mut rule = self.groups[group].rule.clone();
        rule.set_lr(lr);
        rule.validate()?;
        self.groups[group].rule = rule;
        Ok(())
    }

    /// Steps taken by a group.
    pub fn step_count(&self, group: usize) -> u64 {
        self.groups[group].step
    }

    /// A group's scalar state, e.g. NAdam's `[("mu_product", ..)]`.
    pub fn scalar_state(&self, group: usize) -> Vec<(&'static str, f32)> {
        let g = &self.groups[group];
        g.scalar_keys.iter().copied().zip(g.scalar_values.iter().copied()).collect()
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
    let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: NonZeroU64::new(16),
        },
        count: None,
    };
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
