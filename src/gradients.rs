//! Gradient conditioning fused into the step: loss-scale unscaling and the non-finite check of
//! torch's AMP `GradScaler`, `clip_grad_value_`, `clip_grad_norm_` (norm types 2 and inf) and
//! the dynamic loss-scale update, decided on the GPU without a CPU read-back per step
//! (`shaders/gradients.wgsl`). The order is torch's:
//!
//! ```text
//! g = g / loss_scale                      # scaler.unscale_(optimizer); non-finite -> found_inf
//! g = clamp(g, -clip_value, clip_value)   # clip_grad_value_
//! norm = ||g||_2 or max|g|                # clip_grad_norm_
//! g = g * min(max_norm / (norm + 1e-6), 1)
//! skip the step if found_inf (skip_nonfinite or loss scaling); otherwise t += 1 and step
//! loss_scale *= backoff_factor if found_inf, *= growth_factor after growth_interval good steps
//! ```
//! A skipped step leaves parameters, state and the step count exactly as they were, as
//! `GradScaler.step` does by not calling `optimizer.step()`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rules::{Pass, Scope};

/// `torch.nn.utils.clip_grad_norm_` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipGradNorm {
    /// The largest total norm the gradients keep (torch's `max_norm`); finite, >= 0.
    pub max_norm: f64,
    /// 2.0 or `f64::INFINITY` (JSON: 2, or the string "inf").
    #[serde(default = "two", with = "norm_type")]
    pub norm_type: f64,
    /// A non-finite total norm is an error (reported by the next counters read); the step
    /// is skipped so nothing changes, as torch raises before touching anything.
    #[serde(default)]
    pub error_if_nonfinite: bool,
}

fn two() -> f64 {
    2.0
}

/// JSON has no infinity: `norm_type` accepts a number or the strings "inf"/"infinity".
mod norm_type {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_infinite() {
            serializer.serialize_str("inf")
        } else {
            serializer.serialize_f64(*value)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum NumberOrName {
            Number(f64),
            Name(String),
        }
        match NumberOrName::deserialize(deserializer)? {
            NumberOrName::Number(n) => Ok(n),
            NumberOrName::Name(name) if matches!(name.as_str(), "inf" | "infinity" | "Infinity") => Ok(f64::INFINITY),
            NumberOrName::Name(name) => Err(serde::de::Error::custom(format!("norm_type {name:?}: expected 2 or \"inf\""))),
        }
    }
}

/// Dynamic loss scaling, `torch.amp.GradScaler`'s arguments and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossScale {
    /// The first scale (default 65,536).
    pub init_scale: f64,
    /// The scale is multiplied by this after `growth_interval` steps without an inf/NaN
    /// gradient (default 2).
    pub growth_factor: f64,
    /// The scale is multiplied by this after a step with an inf/NaN gradient (default 0.5).
    pub backoff_factor: f64,
    /// Consecutive finite steps before the scale grows (default 2,000).
    pub growth_interval: u32,
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

/// What is done to the gradients before each step. All off by default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GradientOptions {
    /// `clip_grad_norm_` over all the optimizer's gradients.
    pub clip_grad_norm: Option<ClipGradNorm>,
    /// `clip_grad_value_`: clamp every gradient element to [-v, v].
    pub clip_grad_value: Option<f64>,
    /// Skip the step (parameters, state and step count untouched) when a gradient holds NaN or
    /// infinity, and count it. Implied by `loss_scale`.
    pub skip_nonfinite: bool,
    /// Gradients arrive multiplied by a dynamic loss scale (read it with
    /// `Optimizer::loss_scale_view` in the backward pass); they are unscaled, and the scale is
    /// updated after each step as `GradScaler.update()` does.
    pub loss_scale: Option<LossScale>,
}

impl GradientOptions {
    /// Whether anything is done to the gradients (then the step count lives on the GPU).
    pub fn is_active(&self) -> bool {
        self.clip_grad_norm.is_some() || self.clip_grad_value.is_some() || self.skip_nonfinite || self.loss_scale.is_some()
    }

    /// Rejects, with [`Error::Config`]: a negative or non-finite `max_norm` or
    /// `clip_grad_value`, a norm type other than 2 or inf, and loss-scale settings out of
    /// range (`init_scale` > 0, `growth_factor` > 1, `backoff_factor` in (0, 1),
    /// `growth_interval` >= 1).
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: &str, value: f64, requirement: &str| {
            Err(Error::Config(format!("{what} = {value}: {requirement}")))
        };
        if let Some(clip) = &self.clip_grad_norm {
            if !(clip.max_norm >= 0.0 && clip.max_norm.is_finite()) {
                return invalid("clip_grad_norm.max_norm", clip.max_norm, "must be finite and >= 0");
            }
            if clip.norm_type != 2.0 && clip.norm_type != f64::INFINITY {
                return invalid("clip_grad_norm.norm_type", clip.norm_type, "only 2 and inf are supported");
            }
        }
        if let Some(value) = self.clip_grad_value {
            if !(value >= 0.0 && value.is_finite()) {
                return invalid("clip_grad_value", value, "must be finite and >= 0");
            }
        }
        if let Some(scale) = &self.loss_scale {
            if !(scale.init_scale > 0.0 && scale.init_scale.is_finite()) {
                return invalid("loss_scale.init_scale", scale.init_scale, "must be finite and > 0");
            }
            if !(scale.growth_factor > 1.0 && scale.growth_factor.is_finite()) {
                return invalid("loss_scale.growth_factor", scale.growth_factor, "must be finite and > 1");
            }
            if !(scale.backoff_factor > 0.0 && scale.backoff_factor < 1.0) {
                return invalid("loss_scale.backoff_factor", scale.backoff_factor, "must be in (0, 1)");
            }
            if scale.growth_interval == 0 {
                return invalid("loss_scale.growth_interval", 0.0, "must be >= 1");
            }
        }
        Ok(())
    }

    fn skips(&self) -> bool {
        self.skip_nonfinite || self.loss_scale.is_some()
    }
}

/// What the GPU (or the CPU reference) counted: read with `Optimizer::counters`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCounters {
    /// Updates applied: torch's `state["step"]`.
    pub applied_steps: u64,
    /// Steps skipped because a gradient was not finite.
    pub skipped_steps: u64,
    /// The scale the next backward pass multiplies the loss by (1 without loss scaling).
    pub loss_scale: f32,
    /// Good steps since the loss scale last changed.
    pub growth_tracker: u32,
    /// Total norm of the last step's unscaled, value-clipped gradients (0 before any step;
    /// computed only when gradients are conditioned).
    pub last_grad_norm: f32,
}

/// Mirrors `struct Control` in `shaders/common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Control {
    pub loss_scale: f32,
    pub inv_scale: f32,
    pub step_inv_scale: f32,
    pub growth_tracker: u32,
    pub step: u32,
    pub skipped: u32,
    pub skip: u32,
    pub error: u32,
    pub grad_norm: f32,
    pub clip_coefficient: f32,
    pub clip_value: f32,
    /// Entries of each group's ring of step terms.
    pub terms_ring: u32,
    /// Gradient presence: the tables word of the per-tensor flags (0: not tracked).
    pub presence: u32,
    /// Tensors in the tensor table.
    pub tensors: u32,
    /// The tables word of the chunk map.
    pub chunk_map: u32,
    /// Its chunks; with presence tracked, each chunk's lag follows them.
    pub chunks: u32,
}

/// Byte offset of `Control.error`, cleared after it is reported.
pub(crate) const CONTROL_ERROR_OFFSET: u64 = 28;
pub(crate) const CONTROL_SIZE: u64 = std::mem::size_of::<Control>() as u64;

/// `Control.error` bits.
pub(crate) const ERROR_NONFINITE_NORM: u32 = 1;
/// A tensor missed more steps than its group's ring of step terms holds (gradient presence).
pub(crate) const ERROR_TERMS_LOST: u32 = 2;

impl Control {
    pub fn new(options: &GradientOptions) -> Self {
        let scale = options.loss_scale.as_ref().map_or(1.0, |s| s.init_scale);
        // torch: inv_scale = scale.double().reciprocal().float()
        let inv_scale = (1.0 / scale) as f32;
        Control {
            loss_scale: scale as f32,
            inv_scale,
            step_inv_scale: inv_scale,
            growth_tracker: 0,
            step: 0,
            skipped: 0,
            skip: 0,
            error: 0,
            grad_norm: 0.0,
            clip_coefficient: 1.0,
            clip_value: options.clip_grad_value.map_or(f32::INFINITY, |v| v as f32),
            terms_ring: 0,
            presence: 0,
            tensors: 0,
            chunk_map: 0,
            chunks: 0,
        }
    }

    pub fn counters(&self) -> StepCounters {
        StepCounters {
            applied_steps: u64::from(self.step),
            skipped_steps: u64::from(self.skipped),
            loss_scale: self.loss_scale,
            growth_tracker: self.growth_tracker,
            last_grad_norm: self.grad_norm,
        }
    }

    /// The CPU reference of `shaders/gradients.wgsl`: conditions `grads` in place and updates
    /// the counters; returns whether the step is skipped (then `grads` are unusable).
    pub fn condition(&mut self, options: &GradientOptions, grads: &mut [&mut [f32]]) -> bool {
        let infinity_norm = options.clip_grad_norm.as_ref().is_some_and(|c| c.norm_type.is_infinite());
        let mut found_inf = false;
        let mut total = 0.0f64;
        for g in grads.iter_mut() {
            for x in g.iter_mut() {
                let unscaled = *x * self.inv_scale;
                found_inf |= !unscaled.is_finite();
                let clamped = unscaled.clamp(-self.clip_value, self.clip_value);
                *x = clamped;
                if infinity_norm {
                    total = total.max(f64::from(clamped.abs()));
                } else {
                    total += f64::from(clamped) * f64::from(clamped);
                }
            }
        }
        let norm = if infinity_norm { total as f32 } else { total.sqrt() as f32 };
        let mut skip = options.skips() && found_inf;
        if options.clip_grad_norm.as_ref().is_some_and(|c| c.error_if_nonfinite) && !norm.is_finite() {
            skip = true;
            self.error |= ERROR_NONFINITE_NORM;
        }
        self.grad_norm = norm;
        self.skip = u32::from(skip);
        self.step_inv_scale = self.inv_scale;
        if skip {
            self.skipped += 1;
        } else {
            self.step += 1;
        }
        self.clip_coefficient = match &options.clip_grad_norm {
            Some(clip) => (clip.max_norm as f32 / (norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        if !skip {
            for g in grads.iter_mut() {
                for x in g.iter_mut() {
                    *x *= self.clip_coefficient;
                }
            }
        }
        if let Some(scale) = &options.loss_scale {
            if found_inf {
                self.loss_scale *= scale.backoff_factor as f32;
                self.growth_tracker = 0;
            } else if self.growth_tracker + 1 == scale.growth_interval {
                let grown = self.loss_scale * scale.growth_factor as f32;
                if grown.is_finite() {
                    self.loss_scale = grown;
                }
                self.growth_tracker = 0;
            } else {
                self.growth_tracker += 1;
            }
            self.inv_scale = 1.0 / self.loss_scale;
        }
        skip
    }

    /// Takes the error bits, turning them into the error torch would have raised.
    pub fn take_error(&mut self) -> Result<()> {
        let error = std::mem::take(&mut self.error);
        if error & ERROR_NONFINITE_NORM != 0 {
            return Err(Error::NonFiniteGradNorm);
        }
        if error & ERROR_TERMS_LOST != 0 {
            return Err(Error::StepTermsLost(
                "a tensor without a gradient for more steps than its group's ring of step terms holds \
                 (OptimizerOptions::step_terms_history) got one again; it is left as it is. Choose a longer \
                 history, or keep it out of the optimizer and add it with add_param_group when it trains"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Mirrors `struct Settings` in `shaders/gradients.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Settings {
    pub partial_count: u32,
    pub infinity_norm: u32,
    pub clip_norm: u32,
    pub max_norm: f32,
    pub skip_nonfinite: u32,
    pub error_if_nonfinite: u32,
    pub dynamic_scale: u32,
    pub growth_interval: u32,
    pub growth_factor: f32,
    pub backoff_factor: f32,
    /// The groups, whose terms the step pass publishes into their scalars.
    pub groups: u32,
    /// The tables word of the group table (per group: its ring's word, its step offset).
    pub group_table: u32,
    /// The distance between two groups' scalars, in 16-byte units.
    pub scalar_stride: u32,
    pub _padding: [u32; 3],
}

impl Settings {
    pub fn new(options: &GradientOptions, partial_count: u32, terms: &StepTermsTarget<'_>) -> Self {
        let clip = options.clip_grad_norm.as_ref();
        let scale = options.loss_scale.clone().unwrap_or_default();
        Settings {
            partial_count,
            infinity_norm: u32::from(clip.is_some_and(|c| c.norm_type.is_infinite())),
            clip_norm: u32::from(clip.is_some()),
            max_norm: clip.map_or(0.0, |c| c.max_norm as f32),
            skip_nonfinite: u32::from(options.skips()),
            error_if_nonfinite: u32::from(clip.is_some_and(|c| c.error_if_nonfinite)),
            dynamic_scale: u32::from(options.loss_scale.is_some()),
            growth_interval: scale.growth_interval,
            growth_factor: scale.growth_factor as f32,
            backoff_factor: scale.backoff_factor as f32,
            groups: terms.groups,
            group_table: terms.group_table,
            scalar_stride: (terms.scalar_stride / 16) as u32,
            _padding: [0; 3],
        }
    }
}

/// WGSL of the gradient-conditioning kernels (with the shared definitions).
pub(crate) fn gradients_wgsl() -> String {
    concat!(include_str!("../shaders/control.wgsl"), "\n", include_str!("../shaders/gradients.wgsl")).to_string()
}

/// The built-in passes that run before every rule's (`shaders/gradients.wgsl`). With
/// conditioning: the norm pass over every gradient window, then the finalize pass that
/// decides the step and counts it. Without: one pass that counts the step.
/// With gradient presence tracked, a last pass counts each tensor's missed step.
pub(crate) fn conditioning_passes(conditioned: bool, presence: bool) -> Vec<Pass> {
    let mut passes = if conditioned {
        vec![Pass::new("norm_partials", Scope::Elements), Pass::new("finalize", Scope::Once)]
    } else {
        vec![Pass::new("advance", Scope::Once)]
    };
    if presence {
        passes.push(Pass::new("count_missed", Scope::Once));
    }
    passes
}

/// One window of a gradient arena, as the norm pass reads it.
pub(crate) struct GradientWindow {
    pub buffer: wgpu::Buffer,
    /// Byte range in the buffer.
    pub offset: u64,
    pub size: u64,
    /// The workgroup grid of the window's dispatches.
    pub grid: (u32, u32),
    /// The global index of its first chunk (gradient presence: its chunks' tensors).
    pub first_chunk: u32,
}

/// Where the step pass publishes each group's terms for the step it counts: the first 16
/// bytes of the group's scalars in the step's slot, which every rule reads as `s.terms`.
/// A rule then finds its step's terms in a uniform whether or not the CPU foresaw the step
/// (skipped or dropped steps shift it), and reads the ring itself only for a tensor that
/// missed steps (gradient presence).
pub(crate) struct StepTermsTarget<'a> {
    /// The ring of scalar slots (bound at the step's slot with a dynamic offset).
    pub scalars: &'a wgpu::Buffer,
    pub groups: u32,
    /// The tables word of the group table (per group: its ring's word, its step offset).
    pub group_table: u32,
    /// Bytes of one slot (every group's scalars).
    pub slot_size: u64,
    /// Bytes between two groups' scalars.
    pub scalar_stride: u64,
}

/// Chunks one workgroup of the norm pass adds up; must equal `NORM_CHUNKS` in
/// `shaders/gradients.wgsl`.
const NORM_CHUNKS: u32 = 16;

/// The norm pass's grid over a window whose element passes take `element_grid`: a workgroup
/// per `NORM_CHUNKS` chunks, in rows no longer than the element grid's.
fn norm_grid(element_grid: (u32, u32)) -> (u32, u32) {
    let workgroups = (element_grid.0 * element_grid.1).div_ceil(NORM_CHUNKS).max(1);
    let x = workgroups.min(element_grid.0.max(1));
    (x, workgroups.div_ceil(x))
}

/// The GPU side of [`conditioning_passes`]: its pipelines and bind groups. It has bindings of
/// its own (it writes the control block, which the rules only read).
pub(crate) struct GradientPass {
    passes: Vec<(wgpu::ComputePipeline, Scope)>,
    shared: wgpu::BindGroup,
    /// Per gradient window: its bind group and workgroup grid.
    windows: Vec<(wgpu::BindGroup, (u32, u32))>,
}

impl GradientPass {
    /// `windows`: each gradient window, in dispatch order (read only when `conditioned`);
    /// `chunk_map`: the tables word of the chunk map (read only with gradient presence, when
    /// every tensor starts at a chunk).
    pub async fn new(
        gpu: &crate::GpuContext,
        options: &GradientOptions,
        conditioned: bool,
        presence: bool,
        control: &wgpu::Buffer,
        terms: &StepTermsTarget<'_>,
        windows: &[GradientWindow],
        chunk_map: u32,
        grads: crate::storage::Dtype,
    ) -> Result<Self> {
        let typed = crate::storage::TypedBuffer { name: "grad", dtype: grads, hash_buffer: 0, int8: None };
        let source = crate::storage::typed_source(&gradients_wgsl(), &[typed], None, crate::storage::Rounding::NearestEven, gpu.native_f16())?;
        let windows = if conditioned { windows } else { &[] };
        use wgpu::util::DeviceExt;
        let device = gpu.device();
        let grids: Vec<(u32, u32)> = windows.iter().map(|w| norm_grid(w.grid)).collect();
        let partial_count: u32 = grids.iter().map(|grid| grid.0 * grid.1).sum();
        let storage = crate::context::storage_binding;
        let uniform = |binding, min: u64| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: std::num::NonZeroU64::new(min),
            },
            count: None,
        };
        gpu.checked("building the gradient-conditioning passes", || {
            let shared_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("wgpu-optim gradients"),
                entries: &[
                    uniform(0, std::mem::size_of::<Settings>() as u64),
                    storage(1, false, 8),
                    storage(2, false, CONTROL_SIZE + 4),
                    wgpu::BindGroupLayoutEntry {
                        binding: 3,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only: false },
                            has_dynamic_offset: true,
                            min_binding_size: std::num::NonZeroU64::new(16),
                        },
                        count: None,
                    },
                ],
            });
            let window_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("wgpu-optim gradient window"),
                entries: &[uniform(0, 16), storage(1, true, if grads == crate::storage::Dtype::F32 { 16 } else { 8 })],
            });
            // Without conditioning only the step counter runs: it reads no gradient window.
            let layouts = [Some(&shared_layout), Some(&window_layout)];
            let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("wgpu-optim gradients"),
                bind_group_layouts: if conditioned { &layouts } else { &layouts[..1] },
                immediate_size: 0,
            });
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("gradients"),
                source: wgpu::ShaderSource::Wgsl(source.as_str().into()),
            });
            let pipeline = |entry: &str| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &[("gradient_presence", f64::from(u8::from(presence)))],
                        ..Default::default()
                    },
                    cache: None,
                })
            };
            let settings = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("wgpu-optim gradient settings"),
                contents: bytemuck::bytes_of(&Settings::new(options, partial_count, terms)),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let partials = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim gradient partials"),
                size: u64::from(partial_count.max(1)) * 8,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            let shared = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("wgpu-optim gradients"),
                layout: &shared_layout,
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: settings.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: partials.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 2, resource: control.as_entire_binding() },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: terms.scalars,
                            offset: 0,
                            size: std::num::NonZeroU64::new(terms.slot_size),
                        }),
                    },
                ],
            });
            let mut first_partial = 0u32;
            let windows = windows
                .iter()
                .zip(grids)
                .map(|(GradientWindow { buffer: grad, offset, size, first_chunk, .. }, grid)| {
                    let window = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("wgpu-optim gradient window"),
                        contents: bytemuck::bytes_of(&[first_partial, *first_chunk, chunk_map, 0]),
                        usage: wgpu::BufferUsages::UNIFORM,
                    });
                    first_partial += grid.0 * grid.1;
                    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("wgpu-optim gradient window"),
                        layout: &window_layout,
                        entries: &[
                            wgpu::BindGroupEntry { binding: 0, resource: window.as_entire_binding() },
                            wgpu::BindGroupEntry {
                                binding: 1,
                                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                    buffer: grad,
                                    offset: *offset,
                                    size: std::num::NonZeroU64::new(*size),
                                }),
                            },
                        ],
                    });
                    (bind_group, grid)
                })
                .collect();
            let passes = conditioning_passes(conditioned, presence).into_iter().map(|pass| (pipeline(pass.entry), pass.scope)).collect();
            GradientPass { passes, shared, windows }
        })
        .await
    }

    /// Records the passes for the step whose scalars start at byte `slot` of the scalars;
    /// returns the dispatches recorded.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, slot: u32) -> usize {
        pass.set_bind_group(0, &self.shared, &[slot]);
        for (pipeline, scope) in &self.passes {
            pass.set_pipeline(pipeline);
            match scope {
                Scope::Elements => {
                    for (bind_group, grid) in &self.windows {
                        pass.set_bind_group(1, bind_group, &[]);
                        pass.dispatch_workgroups(grid.0, grid.1, 1);
                    }
                }
                Scope::Once => pass.dispatch_workgroups(1, 1, 1),
                Scope::Tensors | Scope::Matrices { .. } => unreachable!("the conditioning passes are element and once passes"),
            }
        }
        self.dispatches()
    }

    /// Dispatches [`record`](Self::record) records: one per gradient window when
    /// conditioning, then one, then one counting missed steps when presence is tracked.
    pub fn dispatches(&self) -> usize {
        self.passes.iter().map(|(_, scope)| if matches!(scope, Scope::Elements) { self.windows.len() } else { 1 }).sum()
    }
}
