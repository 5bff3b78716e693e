//! The composed-op baseline: AdamW as a framework without fused optimizers runs it, one
//! element-wise kernel per operation per tensor, in the order of torch's single-tensor
//! `_single_tensor_adam` (decoupled weight decay, `capturable=False`):
//!
//! ```text
//! param.mul_(1 - lr*weight_decay)                       (skipped when weight_decay == 0)
//! exp_avg.lerp_(grad, 1 - beta1)
//! exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
//! denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
//! param.addcdiv_(exp_avg, denom, value=-step_size)
//! ```
//!
//! Each kernel is vectorised like the library's (one `vec4` per invocation, 256 per
//! workgroup), so the comparison measures fusion and dispatch count, not vectorisation. The
//! baseline steps the optimizer's own buffers; `denom` lives in one preallocated temporary
//! (torch's caching allocator would hand out a block per step), and the per-step scalars go
//! through a uniform ring as kernel arguments would. Traffic: 80 bytes per element (with
//! weight decay) against the fused kernel's 28.

use std::num::NonZeroU64;

use wgpu_optim::Optimizer;

use crate::gpu::{Bench, Stamp, Workload};
use crate::variants::AdamScalars;

/// Bytes one element costs across the composed operations (weight decay on).
pub const TRAFFIC_BYTES_PER_ELEMENT: u64 = 80;

#[derive(Clone, Copy, PartialEq)]
enum Operand {
    Param,
    Grad,
    ExpAvg,
    ExpAvgSq,
    Denom,
}

/// One element-wise operation: the tensors it binds (the first is written) and its expression,
/// with `x`, `y`, `z` the bound arrays and `s(k)` the k-th field of [`AdamScalars`]
/// (2 decay_factor, 3 one_minus_beta1, 4 beta2, 5 one_minus_beta2, 6 eps,
/// 8 bias_correction2_sqrt, 9 neg_step_size).
struct Op {
    name: &'static str,
    operands: &'static [Operand],
    expression: &'static str,
}

const WEIGHT_DECAY: Op = Op {
    name: "param.mul_",
    operands: &[Operand::Param],
    expression: "x[i] * s(2u)",
};

const OPS: [Op; 7] = [
    Op {
        name: "exp_avg.lerp_",
        operands: &[Operand::ExpAvg, Operand::Grad],
        expression: "torch_lerp(x[i], y[i], s(3u))",
    },
    Op {
        name: "exp_avg_sq.mul_",
        operands: &[Operand::ExpAvgSq],
        expression: "x[i] * s(4u)",
    },
    Op {
        name: "exp_avg_sq.addcmul_",
        operands: &[Operand::ExpAvgSq, Operand::Grad, Operand::Grad],
        expression: "x[i] + s(5u) * y[i] * z[i]",
    },
    Op {
        name: "exp_avg_sq.sqrt",
        operands: &[Operand::Denom, Operand::ExpAvgSq],
        expression: "sqrt(y[i])",
    },
    Op {
        name: "denom.div_",
        operands: &[Operand::Denom],
        expression: "x[i] / s(8u)",
    },
    Op {
        name: "denom.add_",
        operands: &[Operand::Denom],
        expression: "x[i] + s(6u)",
    },
    Op {
        name: "param.addcdiv_",
        operands: &[Operand::Param, Operand::ExpAvg, Operand::Denom],
        expression: "x[i] + s(9u) * y[i] / z[i]",
    },
];

const WORKGROUP_SIZE: usize = 256;
const SCALAR_SLOT: u64 = 256;

fn op_wgsl(op: &Op) -> String {
    let names = ["x", "y", "z"];
    let bindings: String = (0..op.operands.len())
        .map(|k| {
            let access = if k == 0 { "read_write" } else { "read" };
            format!(
                "@group(0) @binding({}) var<storage, {access}> {}: array<vec4<f32>>;\n",
                k + 1,
                names[k]
            )
        })
        .collect();
    format!(
        r#"// {name} (composed-op AdamW baseline)
struct Scalars {{ v: array<vec4<f32>, 4> }}
@group(0) @binding(0) var<uniform> scalars: Scalars;
{bindings}
fn s(k: u32) -> f32 {{
    return scalars.v[k / 4u][k % 4u];
}}

fn torch_lerp(start: vec4<f32>, end: vec4<f32>, weight: f32) -> vec4<f32> {{
    if (weight < 0.5) {{
        return start + weight * (end - start);
    }}
    return end - (end - start) * (1.0 - weight);
}}

@compute @workgroup_size({WORKGROUP_SIZE})
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {{
    let i = (workgroup.y * grid.x + workgroup.x) * {WORKGROUP_SIZE}u + local;
    if (i >= arrayLength(&x)) {{
        return;
    }}
    x[i] = {expression};
}}
"#,
        name = op.name,
        expression = op.expression,
    )
}

struct Dispatch {
    pipeline: usize,
    bind_group: wgpu::BindGroup,
    group: usize,
    grid: (u32, u32),
}

/// AdamW over an optimizer's tensors, one dispatch per operation per tensor (per binding-sized
/// window of a tensor larger than one binding).
pub struct NaiveAdamW<'a> {
    bench: &'a Bench,
    rules: Vec<Box<dyn wgpu_optim::UpdateRule>>,
    pipelines: Vec<wgpu::ComputePipeline>,
    dispatches: Vec<Dispatch>,
    scalars: wgpu::Buffer,
    ring: u64,
    step: u64,
}

impl<'a> NaiveAdamW<'a> {
    /// Builds the kernels and the bind groups over `opt`'s tensors; `opt` must be AdamW.
    pub fn new(bench: &'a Bench, opt: &Optimizer, ring: u64) -> Self {
        let device = bench.device();
        let rules: Vec<Box<dyn wgpu_optim::UpdateRule>> =
            (0..opt.group_count()).map(|g| opt.rule(g).clone_box()).collect();
        assert!(
            rules.iter().all(|r| r.name() == "AdamW"),
            "the composed-op baseline implements AdamW"
        );

        let ops: Vec<&Op> = std::iter::once(&WEIGHT_DECAY).chain(OPS.iter()).collect();
        let layouts: Vec<wgpu::BindGroupLayout> = (1..=3).map(|operands| op_layout(device, operands)).collect();
        let pipelines = ops
            .iter()
            .map(|op| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(op.name),
                    source: wgpu::ShaderSource::Wgsl(op_wgsl(op).into()),
                });
                let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(op.name),
                    bind_group_layouts: &[Some(&layouts[op.operands.len() - 1])],
                    immediate_size: 0,
                });
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(op.name),
                    layout: Some(&layout),
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();

        let ring = ring.max(1);
        let scalars = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("naive scalars"),
            size: SCALAR_SLOT * ring * rules.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let window = bench.binding_elements();
        let largest = opt
            .tensor_ids()
            .map(|id| opt.param(id).expect("the optimizer's own tensor").len.next_multiple_of(64))
            .max()
            .unwrap_or(64);
        let denom = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("naive denom"),
            size: largest as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });

        let mut dispatches = Vec::new();
        for id in opt.tensor_ids() {
            let group = opt.group_of(id).expect("the optimizer's own tensor");
            let decays = rules[group].hyperparameters()["weight_decay"].as_f64().unwrap_or(0.0) != 0.0;
            let views = [
                opt.param(id).expect("the optimizer's own tensor"),
                opt.grad(id).expect("the optimizer's own tensor"),
                opt.state(id, "exp_avg").expect("AdamW keeps exp_avg"),
                opt.state(id, "exp_avg_sq").expect("AdamW keeps exp_avg_sq"),
            ];
            let len = views[0].len;
            for (p, op) in ops.iter().enumerate() {
                if p == 0 && !decays {
                    continue;
                }
                for start in (0..len).step_by(window) {
                    let window_len = window.min(len - start).next_multiple_of(4);
                    let range = |operand: Operand| -> wgpu::BufferBinding<'_> {
                        let (buffer, offset) = match operand {
                            Operand::Param => (&views[0].buffer, views[0].offset),
                            Operand::Grad => (&views[1].buffer, views[1].offset),
                            Operand::ExpAvg => (&views[2].buffer, views[2].offset),
                            Operand::ExpAvgSq => (&views[3].buffer, views[3].offset),
                            Operand::Denom => (&denom, 0),
                        };
                        wgpu::BufferBinding {
                            buffer,
                            offset: offset + start as u64 * 4,
                            size: NonZeroU64::new(window_len as u64 * 4),
                        }
                    };
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &scalars,
                            offset: 0,
                            size: NonZeroU64::new(64),
                        }),
                    }];
                    for (k, &operand) in op.operands.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry {
                            binding: k as u32 + 1,
                            resource: wgpu::BindingResource::Buffer(range(operand)),
                        });
                    }
                    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(op.name),
                        layout: &layouts[op.operands.len() - 1],
                        entries: &entries,
                    });
                    let workgroups = (window_len / 4).div_ceil(WORKGROUP_SIZE);
                    dispatches.push(Dispatch {
                        pipeline: p,
                        bind_group,
                        group,
                        grid: bench.grid(workgroups),
                    });
                }
            }
        }
        NaiveAdamW {
            bench,
            rules,
            pipelines,
            dispatches,
            scalars,
            ring,
            step: 0,
        }
    }

    pub fn dispatches_per_step(&self) -> usize {
        self.dispatches.len()
    }

    /// Records one step into `pass`: writes this step's scalars into the next ring slot.
    pub fn step_in_pass(&mut self, pass: &mut wgpu::ComputePass<'_>) {
        self.step += 1;
        let slot = (self.step - 1) % self.ring;
        for (g, rule) in self.rules.iter().enumerate() {
            let scalars = AdamScalars::new(rule.as_ref(), self.step);
            let offset = (slot * self.rules.len() as u64 + g as u64) * SCALAR_SLOT;
            self.bench
                .queue()
                .write_buffer(&self.scalars, offset, bytemuck::bytes_of(&scalars));
        }
        let base = slot * self.rules.len() as u64;
        for dispatch in &self.dispatches {
            pass.set_pipeline(&self.pipelines[dispatch.pipeline]);
            pass.set_bind_group(
                0,
                &dispatch.bind_group,
                &[((base + dispatch.group as u64) * SCALAR_SLOT) as u32],
            );
            pass.dispatch_workgroups(dispatch.grid.0, dispatch.grid.1, 1);
        }
    }
}

impl Workload for NaiveAdamW<'_> {
    fn record(&mut self, encoder: &mut wgpu::CommandEncoder, stamp: Option<Stamp<'_>>) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("naive AdamW step"),
            timestamp_writes: stamp.as_ref().map(Stamp::pass_writes),
        });
        self.step_in_pass(&mut pass);
    }
}

fn op_layout(device: &wgpu::Device, operands: usize) -> wgpu::BindGroupLayout {
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: NonZeroU64::new(64),
        },
        count: None,
    }];
    entries.extend((0..operands).map(|k| wgpu::BindGroupLayoutEntry {
        binding: k as u32 + 1,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only: k > 0 },
            has_dynamic_offset: false,
            min_binding_size: NonZeroU64::new(16),
        },
        count: None,
    }));
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("naive op"),
        entries: &entries,
    })
}
