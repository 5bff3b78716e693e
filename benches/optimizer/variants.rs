//! Tuning: the AdamW update of `shaders/adam.wgsl` (its unconditioned path: same arithmetic, in
//! the same order, with the same flags) under other ways of mapping elements to invocations, to
//! choose the library's by measurement. The library uses `Strided { per_invocation: 1 }` with
//! 256 invocations per workgroup. The kernels here take their scalars from [`AdamScalars`],
//! computed in this file, so that they do not depend on the library's internal layout.

use std::num::NonZeroU64;

use wgpu_optim::rules::AdamW;
use wgpu_optim::{TensorView, UpdateRule};

/// AdamW's scalars for one step, as the kernels of this benchmark read them (16 `f32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamScalars {
    pub lr: f32,
    pub weight_decay: f32,
    /// 1 - lr*wd
    pub decay_factor: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    /// 1 - beta1^t
    pub bias_correction1: f32,
    /// sqrt(1 - beta2^t)
    pub bias_correction2_sqrt: f32,
    /// -(lr / bias_correction1), in f32 as the library's kernel computes it
    pub neg_step_size: f32,
    _padding: [f32; 6],
}

impl AdamScalars {
    /// Step `step` (1-based) of an Adam or AdamW rule, from its torch hyper-parameters
    /// (`lr`, `betas`, `eps`, `weight_decay`); step terms in f64 like torch's Python floats.
    pub fn new(rule: &dyn UpdateRule, step: u64) -> Self {
        let h = rule.hyperparameters();
        let number = |v: &serde_json::Value| v.as_f64().expect("Adam hyper-parameters are numbers");
        let (lr, eps, weight_decay) = (number(&h["lr"]), number(&h["eps"]), number(&h["weight_decay"]));
        let (beta1, beta2) = (number(&h["betas"][0]), number(&h["betas"][1]));
        let t = step as f64;
        let bias_correction1 = (1.0 - beta1.powf(t)) as f32;
        AdamScalars {
            lr: lr as f32,
            weight_decay: weight_decay as f32,
            decay_factor: (1.0 - lr * weight_decay) as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: eps as f32,
            bias_correction1,
            bias_correction2_sqrt: (1.0 - beta2.powf(t)).sqrt() as f32,
            neg_step_size: -(lr as f32 / bias_correction1),
            _padding: [0.0; 6],
        }
    }
}

use crate::gpu::{Bench, Stamp, Workload};

/// How a kernel variant maps elements to invocations.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Mapping {
    /// One `f32` per invocation (the kernel before vectorisation).
    Scalar,
    /// `per_invocation` vec4s per invocation, the j-th at `j * workgroup_size` from the
    /// workgroup's base (neighbouring invocations touch neighbouring vec4s: coalesced).
    Strided { per_invocation: u32 },
    /// `per_invocation` consecutive vec4s per invocation.
    Consecutive { per_invocation: u32 },
    /// A fixed grid of `workgroups` workgroups; each invocation loops with the grid's stride.
    GridStride { workgroups: u32 },
    /// One invocation per workgroup looping over `per_workgroup` consecutive vec4s: every
    /// address depends on the workgroup id alone, so a SIMD-on-CPU driver can keep it scalar.
    Uniform { per_workgroup: u32 },
    /// One vec4 per invocation at `subgroup_id * subgroup_size + subgroup_invocation_id` instead
    /// of the local invocation index (llvmpipe derives that index from the local id by integer
    /// division, per lane). Needs `Features::SUBGROUP`, and full subgroups to cover the workgroup
    /// (the checks catch a device where they do not).
    Subgroup,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Variant {
    pub mapping: Mapping,
    pub workgroup_size: u32,
    /// Whether naga adds its own bounds checks (wgpu's default). Without them only the
    /// driver's robust buffer access guards the accesses; every variant checks `i < n` itself.
    pub naga_bounds_checks: bool,
}

impl Variant {
    /// The library's current kernel.
    pub const LIBRARY: Variant = Variant::new(Mapping::Strided { per_invocation: 1 }, 256);

    const fn new(mapping: Mapping, workgroup_size: u32) -> Variant {
        Variant {
            mapping,
            workgroup_size,
            naga_bounds_checks: true,
        }
    }

    /// The variants measured by default; the subgroup-indexed one only where `subgroups`.
    pub fn all(subgroups: bool) -> Vec<Variant> {
        let mut variants = vec![Variant::new(Mapping::Scalar, 256)];
        for workgroup_size in [64, 128, 256] {
            for per_invocation in [1, 2, 4] {
                variants.push(Variant::new(Mapping::Strided { per_invocation }, workgroup_size));
            }
        }
        for per_invocation in [2, 4] {
            variants.push(Variant::new(Mapping::Consecutive { per_invocation }, 256));
        }
        for workgroups in [256, 1024, 4096] {
            variants.push(Variant::new(Mapping::GridStride { workgroups }, 256));
        }
        for per_workgroup in [16, 64, 256] {
            variants.push(Variant::new(Mapping::Uniform { per_workgroup }, 1));
        }
        if subgroups {
            variants.push(Variant::new(Mapping::Subgroup, 256));
        }
        variants.push(Variant {
            naga_bounds_checks: false,
            ..Variant::LIBRARY
        });
        variants
    }

    pub fn name(&self) -> String {
        let wg = self.workgroup_size;
        let mapping = match self.mapping {
            Mapping::Scalar => format!("scalar f32, wg {wg}"),
            Mapping::Strided { per_invocation } => format!("{per_invocation} vec4/inv strided, wg {wg}"),
            Mapping::Consecutive { per_invocation } => format!("{per_invocation} vec4/inv consecutive, wg {wg}"),
            Mapping::GridStride { workgroups } => format!("grid-stride {workgroups} wgs, wg {wg}"),
            Mapping::Uniform { per_workgroup } => format!("{per_workgroup} vec4/wg uniform, wg {wg}"),
            Mapping::Subgroup => format!("1 vec4/inv by subgroup ids, wg {wg}"),
        };
        if self.naga_bounds_checks {
            mapping
        } else {
            format!("{mapping}, no naga bounds checks")
        }
    }

    /// Workgroups dispatched for `elements` elements (a multiple of 4).
    fn workgroups(&self, elements: usize) -> usize {
        let wg = self.workgroup_size as usize;
        let vec4s = elements / 4;
        match self.mapping {
            Mapping::Scalar => elements.div_ceil(wg),
            Mapping::Strided { per_invocation } | Mapping::Consecutive { per_invocation } => {
                vec4s.div_ceil(wg * per_invocation as usize)
            }
            Mapping::GridStride { workgroups } => (workgroups as usize).min(vec4s.div_ceil(wg)),
            Mapping::Uniform { per_workgroup } => vec4s.div_ceil(per_workgroup as usize),
            Mapping::Subgroup => vec4s.div_ceil(wg),
        }
    }

    fn wgsl(&self) -> String {
        let element_type = if self.mapping == Mapping::Scalar {
            "f32"
        } else {
            "vec4<f32>"
        };
        let wg = self.workgroup_size;
        let entry = match self.mapping {
            Mapping::Scalar | Mapping::Strided { per_invocation: 1 } => "    let i = workgroup_index * WG + local;
    if (i < arrayLength(&param)) {
        update(i);
    }"
            .to_string(),
            Mapping::Strided { per_invocation } => format!(
                "    let base = workgroup_index * WG * {per_invocation}u + local;
    let n = arrayLength(&param);
    for (var j = 0u; j < {per_invocation}u; j++) {{
        let i = base + j * WG;
        if (i < n) {{
            update(i);
        }}
    }}"
            ),
            Mapping::Consecutive { per_invocation } => format!(
                "    let base = (workgroup_index * WG + local) * {per_invocation}u;
    let n = arrayLength(&param);
    for (var j = 0u; j < {per_invocation}u; j++) {{
        let i = base + j;
        if (i < n) {{
            update(i);
        }}
    }}"
            ),
            Mapping::GridStride { .. } => "    let stride = grid.x * grid.y * WG;
    let n = arrayLength(&param);
    for (var i = workgroup_index * WG + local; i < n; i += stride) {
        update(i);
    }"
            .to_string(),
            Mapping::Subgroup => "    let i = workgroup_index * WG + subgroup * lanes + lane;
    if (i < arrayLength(&param)) {
        update(i);
    }"
            .to_string(),
            Mapping::Uniform { per_workgroup } => format!(
                "    let base = workgroup_index * {per_workgroup}u;
    let end = min(base + {per_workgroup}u, arrayLength(&param));
    for (var i = base; i < end; i++) {{
        update(i);
    }}"
            ),
        };
        format!(
            r#"// Tuning variant of shaders/adam.wgsl: {name}
alias T = {element_type};
const WG: u32 = {wg}u;

override maximize: bool = false;
override amsgrad: bool = false;
override decoupled_weight_decay: bool = false;

struct AdamScalars {{
    lr: f32,
    weight_decay: f32,
    decay_factor: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
}}

@group(0) @binding(0) var<uniform> s: AdamScalars;
@group(0) @binding(1) var<storage, read_write> param: array<T>;
@group(0) @binding(2) var<storage, read> grad: array<T>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<T>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<T>;
@group(0) @binding(5) var<storage, read_write> max_exp_avg_sq: array<T>;

fn torch_lerp(start: T, end: T, weight: f32) -> T {{
    if (weight < 0.5) {{
        return start + weight * (end - start);
    }}
    return end - (end - start) * (1.0 - weight);
}}

// shaders/adam.wgsl's update (without gradient conditioning), for element (or vec4) i.
fn update(i: u32) {{
    var p = param[i];
    var g = grad[i];
    if (maximize) {{
        g = -g;
    }}
    if (s.weight_decay != 0.0) {{
        if (decoupled_weight_decay) {{
            p = p * s.decay_factor;
        }} else {{
            g = g + s.weight_decay * p;
        }}
    }}
    let m = torch_lerp(exp_avg[i], g, s.one_minus_beta1);
    let v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    var v_hat = v;
    if (amsgrad) {{
        v_hat = max(max_exp_avg_sq[i], v);
        max_exp_avg_sq[i] = v_hat;
    }}
    let denom = sqrt(v_hat) / s.bias_correction2_sqrt + s.eps;
    let neg_step_size = -(s.lr / s.bias_correction1);
    param[i] = p + neg_step_size * m / denom;
}}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,{subgroup_builtins}
) {{
    let workgroup_index = workgroup.y * grid.x + workgroup.x;
{entry}
}}
"#,
            name = self.name(),
            subgroup_builtins = if self.mapping == Mapping::Subgroup {
                "\n    @builtin(subgroup_id) subgroup: u32,\n    @builtin(subgroup_size) lanes: u32,\n    @builtin(subgroup_invocation_id) lane: u32,"
            } else {
                ""
            },
        )
    }
}

/// AdamW's buffers for the variants: `elements` (a multiple of 4) of param, grad and state.
pub struct AdamBuffers {
    pub elements: usize,
    param: wgpu::Buffer,
    exp_avg: wgpu::Buffer,
    exp_avg_sq: wgpu::Buffer,
    layout: wgpu::PipelineLayout,
    bind_group: wgpu::BindGroup,
}

impl AdamBuffers {
    pub fn new(bench: &Bench, param: &[f32], grad: &[f32]) -> Self {
        assert!(
            param.len().is_multiple_of(4) && param.len() == grad.len(),
            "variants take whole vec4s"
        );
        let device = bench.device();
        let elements = param.len();
        let storage = |label, contents: Option<&[f32]>| {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (elements.max(4) * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            if let Some(contents) = contents {
                bench.queue().write_buffer(&buffer, 0, bytemuck::cast_slice(contents));
            }
            buffer
        };
        let (param, grad) = (
            storage("variant param", Some(param)),
            storage("variant grad", Some(grad)),
        );
        let (exp_avg, exp_avg_sq) = (storage("variant exp_avg", None), storage("variant exp_avg_sq", None));
        let unused = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("variant max_exp_avg_sq (unused)"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let scalars = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("variant scalars"),
            size: 64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        bench
            .queue()
            .write_buffer(&scalars, 0, bytemuck::bytes_of(&AdamScalars::new(&AdamW::default(), 1)));

        let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![entry(0, wgpu::BufferBindingType::Uniform)];
        entries.extend((1..=5).map(|b| entry(b, wgpu::BufferBindingType::Storage { read_only: b == 2 })));
        let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("variant"),
            entries: &entries,
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("variant"),
            bind_group_layouts: &[Some(&bind_group_layout)],
            immediate_size: 0,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("variant"),
            layout: &bind_group_layout,
            entries: &[&scalars, &param, &grad, &exp_avg, &exp_avg_sq, &unused]
                .iter()
                .enumerate()
                .map(|(b, buffer)| wgpu::BindGroupEntry {
                    binding: b as u32,
                    resource: buffer.as_entire_binding(),
                })
                .collect::<Vec<_>>(),
        });
        AdamBuffers {
            elements,
            param,
            exp_avg,
            exp_avg_sq,
            layout,
            bind_group,
        }
    }

    /// Param, exp_avg and exp_avg_sq, read back.
    pub fn read(&self, bench: &Bench) -> [Vec<f32>; 3] {
        let view = |buffer: &wgpu::Buffer| TensorView {
            buffer: buffer.clone(),
            offset: 0,
            len: self.elements,
            dtype: wgpu_optim::Dtype::F32,
        };
        let mut out = pollster::block_on(wgpu_optim::read_views(
            &bench.gpu,
            &[view(&self.param), view(&self.exp_avg), view(&self.exp_avg_sq)],
        ))
        .expect("reading the variant's buffers back");
        [out.remove(0), out.remove(0), out.remove(0)]
    }

    /// Bytes a step moves: param, grad, exp_avg, exp_avg_sq read; param and both states written.
    pub fn traffic_bytes(&self) -> u64 {
        self.elements as u64 * 28
    }
}

/// One variant's step over [`AdamBuffers`].
pub struct VariantStep<'a> {
    pub variant: Variant,
    buffers: &'a AdamBuffers,
    pipeline: wgpu::ComputePipeline,
    grid: (u32, u32),
}

impl<'a> VariantStep<'a> {
    pub fn new(bench: &Bench, variant: Variant, buffers: &'a AdamBuffers) -> Self {
        let device = bench.device();
        let descriptor = wgpu::ShaderModuleDescriptor {
            label: Some("adam variant"),
            source: wgpu::ShaderSource::Wgsl(variant.wgsl().into()),
        };
        let module = if variant.naga_bounds_checks {
            device.create_shader_module(descriptor)
        } else {
            // SAFETY: every access is guarded by `i < arrayLength(&param)`; `AdamBuffers`
            // gives grad and both states param's length, and the amsgrad-only binding is never
            // read (the variants run with `amsgrad` off).
            unsafe { device.create_shader_module_trusted(descriptor, wgpu::ShaderRuntimeChecks::unchecked()) }
        };
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("adam variant"),
            layout: Some(&buffers.layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("decoupled_weight_decay", 1.0)],
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        VariantStep {
            variant,
            buffers,
            pipeline,
            grid: bench.grid(variant.workgroups(buffers.elements)),
        }
    }
}

impl Workload for VariantStep<'_> {
    fn record(&mut self, encoder: &mut wgpu::CommandEncoder, stamp: Option<Stamp<'_>>) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("adam variant"),
            timestamp_writes: stamp.as_ref().map(Stamp::pass_writes),
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.buffers.bind_group, &[]);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
    }
}

/// A compute-shader copy (`vec4` per invocation, 256 per workgroup) over a [`crate::gpu::Copy`]'s
/// buffers: the bandwidth a kernel reaches on the same bytes as `copy_buffer_to_buffer`.
pub struct CopyKernel {
    pipeline: wgpu::ComputePipeline,
    windows: Vec<(wgpu::BindGroup, (u32, u32))>,
}

impl CopyKernel {
    pub fn new(bench: &Bench, copy: &crate::gpu::Copy) -> Self {
        let device = bench.device();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("copy kernel"),
            source: wgpu::ShaderSource::Wgsl(
                "@group(0) @binding(0) var<storage, read> source: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> destination: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) workgroup: vec3<u32>, @builtin(num_workgroups) grid: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let i = (workgroup.y * grid.x + workgroup.x) * 256u + local;
    if (i < arrayLength(&destination)) {
        destination[i] = source[i];
    }
}
"
                .into(),
            ),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("copy kernel"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let window = bench.binding_elements() as u64 * 4;
        let layout = pipeline.get_bind_group_layout(0);
        let mut windows = Vec::new();
        for (source, destination) in copy.buffers() {
            let mut start = 0;
            while start < source.size() {
                let size = window.min(source.size() - start);
                let binding = |buffer| {
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: start,
                        size: NonZeroU64::new(size),
                    })
                };
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("copy kernel"),
                    layout: &layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: binding(source),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: binding(destination),
                        },
                    ],
                });
                windows.push((bind_group, bench.grid((size / 16).div_ceil(256) as usize)));
                start += size;
            }
        }
        CopyKernel { pipeline, windows }
    }
}

impl Workload for CopyKernel {
    fn record(&mut self, encoder: &mut wgpu::CommandEncoder, stamp: Option<Stamp<'_>>) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("copy kernel"),
            timestamp_writes: stamp.as_ref().map(Stamp::pass_writes),
        });
        pass.set_pipeline(&self.pipeline);
        for (bind_group, grid) in &self.windows {
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(grid.0, grid.1, 1);
        }
    }
}
