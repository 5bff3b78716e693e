//! A host application that owns its wgpu device (as a game engine or a renderer does) and
//! hands it to the optimizer: fine-tuning a pretrained two-layer model, torch's way.
//!
//! - The app opens the adapter and device itself and shares them (`GpuContext::from_device`).
//! - The backbone `B` starts frozen: it stays in the app's own buffer, outside the optimizer,
//!   as torch users freeze layers by giving the optimizer only the trainable ones.
//! - Its own WGSL kernel computes the gradients of the head `h`, accumulated over four
//!   micro-batches per step (`zero_grad`, then `grad += ...` four times), into the optimizer's
//!   buffers through `TensorView::bind_group`.
//! - It checkpoints mid-run and resumes from the file.
//! - Then it unfreezes the backbone with `add_param_group` (torch's recipe for gradual
//!   unfreezing), starting from the backbone's values in the app's buffer, with a smaller lr.
//!
//! The model: ŷ = h · (B x), loss = mean (ŷ - y)², on data from a teacher whose backbone
//! differs a little from the pretrained one, so only unfreezing reaches a loss near zero.
//!
//! `cargo run --release --example host_app`

use wgpu::util::DeviceExt;
use wgpu_optim::rules::AdamW;
use wgpu_optim::{GpuContext, Optimizer, ParamGroup, Parameters, TensorView};

const FEATURES: usize = 16;
const HIDDEN: usize = 8;
const MICRO_BATCH: usize = 64;
const MICRO_BATCHES: usize = 4;
const STEPS: u32 = 300;
const CHECKPOINT_AT: u32 = 100;
const UNFREEZE_AT: u32 = 150;

/// One invocation per parameter element: the first HIDDEN are h's, the rest B's (row-major).
/// Each adds its gradient over one micro-batch, scaled to the mean over the whole batch.
const BACKWARD: &str = r#"
struct MicroBatch { first: u32, samples: u32, total: u32, _padding: u32 }
@group(0) @binding(0) var<storage, read> head: array<f32>;
@group(0) @binding(1) var<storage, read> backbone: array<f32>;
@group(0) @binding(2) var<storage, read_write> head_grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> backbone_grad: array<f32>;
@group(1) @binding(0) var<storage, read> xs: array<f32>;
@group(1) @binding(1) var<storage, read> ys: array<f32>;
@group(1) @binding(2) var<uniform> batch: MicroBatch;

const FEATURES: u32 = 16u;
const HIDDEN: u32 = 8u;

fn hidden(n: u32, j: u32) -> f32 {
    var z = 0.0;
    for (var k = 0u; k < FEATURES; k++) { z += backbone[j * FEATURES + k] * xs[n * FEATURES + k]; }
    return z;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= HIDDEN + HIDDEN * FEATURES) { return; }
    var g = 0.0;
    for (var s = 0u; s < batch.samples; s++) {
        let n = batch.first + s;
        var prediction = 0.0;
        for (var j = 0u; j < HIDDEN; j++) { prediction += head[j] * hidden(n, j); }
        let residual = 2.0 * (prediction - ys[n]) / f32(batch.total);
        if (i < HIDDEN) {
            g += residual * hidden(n, i);
        } else {
            let b = i - HIDDEN;
            g += residual * head[b / FEATURES] * xs[n * FEATURES + b % FEATURES];
        }
    }
    if (i < HIDDEN) { head_grad[i] += g; } else { backbone_grad[i - HIDDEN] += g; }
}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Mesa's loaders want a runtime directory (unset on a fresh machine).
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", "/tmp");
    }
    // The host's own device, as an engine opens it.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&GpuContext::device_descriptor(&adapter)))?;
    let gpu = GpuContext::from_device(device.clone(), queue.clone());
    println!("adapter: {}", gpu.adapter());

    // Pretrained weights, and a teacher whose backbone differs a little.
    let mut seed = 7u64;
    let mut random = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    let pretrained: Vec<f32> = (0..HIDDEN * FEATURES).map(|_| random() * 0.4).collect();
    let teacher_backbone: Vec<f32> = pretrained.iter().map(|b| b + random() * 0.1).collect();
    let teacher_head: Vec<f32> = (0..HIDDEN).map(|_| random()).collect();
    let total = MICRO_BATCH * MICRO_BATCHES;
    let xs: Vec<f32> = (0..total * FEATURES).map(|_| random()).collect();
    let ys: Vec<f32> = (0..total).map(|n| predict(&teacher_head, &teacher_backbone, &xs[n * FEATURES..][..FEATURES])).collect();

    // The app's buffers: the frozen backbone (and a gradient sink for it while frozen), the data.
    let storage = |label, contents: &[f32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(contents),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
    };
    let view = |buffer: &wgpu::Buffer, len: usize| TensorView { buffer: buffer.clone(), offset: 0, len, dtype: wgpu_optim::Dtype::F32 };
    let frozen_backbone = view(&storage("backbone (frozen)", &pretrained), pretrained.len());
    let unused_grad = view(&storage("backbone gradient (frozen)", &vec![0.0; pretrained.len()]), pretrained.len());
    let data = [view(&storage("xs", &xs), xs.len()), view(&storage("ys", &ys), ys.len())];

    // Only the head is trainable at first.
    let mut params = Parameters::new();
    let head = params.zeros("head", &[HIDDEN])?;
    let mut opt = Optimizer::new(&gpu, params, vec![ParamGroup::new(AdamW { lr: 0.05, weight_decay: 0.0, ..AdamW::default() }, [head])])?;

    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some("backward"), source: wgpu::ShaderSource::Wgsl(BACKWARD.into()) });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("backward"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let micro_batches: Vec<wgpu::BindGroup> = (0..MICRO_BATCHES)
        .map(|m| {
            let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("micro-batch"),
                contents: bytemuck::cast_slice(&[(m * MICRO_BATCH) as u32, MICRO_BATCH as u32, total as u32, 0]),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("micro-batch"),
                layout: &pipeline.get_bind_group_layout(1),
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: data[0].binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: data[1].binding() },
                    wgpu::BindGroupEntry { binding: 2, resource: uniform.as_entire_binding() },
                ],
            })
        })
        .collect();
    // The model's bind group: rebuilt when the optimizer's buffers change (add_param_group).
    let model_bindings = |opt: &Optimizer, backbone: Option<wgpu_optim::TensorId>| -> wgpu_optim::Result<wgpu::BindGroup> {
        let (b, b_grad) = match backbone {
            Some(id) => (opt.param(id)?, opt.grad(id)?),
            None => (frozen_backbone.clone(), unused_grad.clone()),
        };
        Ok(TensorView::bind_group(&device, &pipeline.get_bind_group_layout(0), &[&opt.param(head)?, &b, &opt.grad(head)?, &b_grad]))
    };
    let mut backbone = None;
    let mut model = model_bindings(&opt, backbone)?;
    let checkpoint = std::env::temp_dir().join(format!("wgpu-optim-host-app-{}.safetensors", std::process::id()));

    for step in 1..=STEPS {
        let mut encoder = device.create_command_encoder(&Default::default());
        opt.zero_grad(&mut encoder);
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &model, &[]);
            for micro_batch in &micro_batches {
                pass.set_bind_group(1, micro_batch, &[]);
                pass.dispatch_workgroups(((HIDDEN + HIDDEN * FEATURES) as u32).div_ceil(64), 1, 1);
            }
            opt.step_in_pass(&mut pass)?;
        }
        queue.submit([encoder.finish()]);

        if step == CHECKPOINT_AT {
            // Save, then resume from the file as a restarted app would.
            opt.save_checkpoint(&checkpoint, None)?;
            opt.load_checkpoint(&checkpoint)?;
            std::fs::remove_file(&checkpoint)?;
            println!("step {step:3}: checkpointed and resumed");
        }
        if step == UNFREEZE_AT {
            // torch: optimizer.add_param_group({"params": backbone.parameters(), "lr": 5e-3})
            let mut unfrozen = Parameters::new();
            unfrozen.add("backbone", &[HIDDEN, FEATURES], opt.read(&frozen_backbone)?)?;
            let ids = opt.add_param_group(unfrozen, Box::new(AdamW { lr: 5e-3, weight_decay: 0.0, ..AdamW::default() }))?;
            backbone = Some(ids[0]);
            model = model_bindings(&opt, backbone)?;
            println!("step {step:3}: backbone unfrozen ({} groups)", opt.group_count());
        }
        if step % 50 == 0 || step == UNFREEZE_AT {
            let h = opt.read_param(head)?;
            let b = match backbone {
                Some(id) => opt.read_param(id)?,
                None => opt.read(&frozen_backbone)?,
            };
            let loss: f32 = (0..total).map(|n| (predict(&h, &b, &xs[n * FEATURES..][..FEATURES]) - ys[n]).powi(2)).sum::<f32>() / total as f32;
            println!("step {step:3}: loss {loss:.3e}");
        }
    }
    Ok(())
}

fn predict(head: &[f32], backbone: &[f32], x: &[f32]) -> f32 {
    (0..HIDDEN).map(|j| head[j] * (0..FEATURES).map(|k| backbone[j * FEATURES + k] * x[k]).sum::<f32>()).sum()
}
