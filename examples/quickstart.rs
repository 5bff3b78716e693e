//! Quick start: fit y = X·w + b by least squares, entirely on the GPU.
//!
//! The gradient is computed by this example's own WGSL kernel, which reads the parameters and
//! writes the gradients in place through the views the optimizer hands out; the optimizer
//! (AdamW, with no weight decay on the bias: a second parameter group) then steps them.
//! Nothing goes back to the CPU until the final read.
//!
//!     cargo run --release --example quickstart [-- vulkan|gl|auto]

use wgpu_optim::rules::AdamW;
use wgpu_optim::{BackendChoice, GpuContext, Optimizer, ParamGroup, Parameters};

const FEATURES: usize = 8;
const SAMPLES: usize = 256;

const GRADIENT: &str = r#"
const FEATURES: u32 = 8u;
@group(0) @binding(0) var<storage, read> x: array<f32>;      // SAMPLES × FEATURES
@group(0) @binding(1) var<storage, read> y: array<f32>;      // SAMPLES
@group(0) @binding(2) var<storage, read> w: array<f32>;      // FEATURES
@group(0) @binding(3) var<storage, read> b: array<f32>;      // 1
@group(0) @binding(4) var<storage, read_write> grad_w: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad_b: array<f32>;

// One invocation per parameter: d/dθ of mean((x·w + b - y)^2). Parameter FEATURES is b.
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let k = id.x;
    if (k > FEATURES) { return; }
    let samples = arrayLength(&y);
    var total = 0.0;
    for (var s = 0u; s < samples; s++) {
        var prediction = b[0];
        for (var f = 0u; f < FEATURES; f++) { prediction += x[s * FEATURES + f] * w[f]; }
        let residual = prediction - y[s];
        total += residual * select(1.0, x[s * FEATURES + k], k < FEATURES);
    }
    let g = 2.0 * total / f32(samples);
    if (k < FEATURES) { grad_w[k] = g; } else { grad_b[0] = g; }
}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let backend: BackendChoice = std::env::args().nth(1).as_deref().unwrap_or("auto").parse()?;
    let gpu = GpuContext::new(backend)?;
    println!("adapter: {}", gpu.adapter());

    // A noiseless linear problem with known answer.
    let true_w: Vec<f32> = (0..FEATURES).map(|f| f as f32 * 0.5 - 1.0).collect();
    let true_b = 0.75f32;
    let x: Vec<f32> = (0..SAMPLES * FEATURES).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let y: Vec<f32> = (0..SAMPLES)
        .map(|s| true_b + (0..FEATURES).map(|f| x[s * FEATURES + f] * true_w[f]).sum::<f32>())
        .collect();

    let mut params = Parameters::new();
    let w = params.zeros("w", &[FEATURES])?;
    let b = params.zeros("b", &[1])?;
    let rule = AdamW { lr: 0.05, weight_decay: 1e-4, ..AdamW::default() };
    let mut opt = Optimizer::new(
        &gpu,
        params,
        vec![ParamGroup::new(rule.clone(), [w]), ParamGroup::new(AdamW { weight_decay: 0.0, ..rule }, [b])],
    )?;

    let device = gpu.device();
    let upload = |data: &[f32]| {
        wgpu::util::DeviceExt::create_buffer_init(
            device,
            &wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            },
        )
    };
    let (x_buffer, y_buffer) = (upload(&x), upload(&y));
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("gradient"),
        source: wgpu::ShaderSource::Wgsl(GRADIENT.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("gradient"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("gradient"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: x_buffer.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: y_buffer.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 2, resource: opt.param(w)?.binding() },
            wgpu::BindGroupEntry { binding: 3, resource: opt.param(b)?.binding() },
            wgpu::BindGroupEntry { binding: 4, resource: opt.grad(w)?.binding() },
            wgpu::BindGroupEntry { binding: 5, resource: opt.grad(b)?.binding() },
        ],
    });

    let steps = 500;
    let mut encoder = device.create_command_encoder(&Default::default());
    for step in 1..=steps {
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        opt.step(&mut encoder)?;
        // Submit in batches (at most SCALAR_RING_STEPS recorded steps may wait unsubmitted).
        if step % 50 == 0 {
            gpu.queue().submit([std::mem::replace(&mut encoder, device.create_command_encoder(&Default::default())).finish()]);
        }
    }
    gpu.queue().submit([encoder.finish()]);

    let (found_w, found_b) = (opt.read_param(w)?, opt.read_param(b)?[0]);
    let error = found_w.iter().zip(&true_w).map(|(a, e)| (a - e).abs()).fold((found_b - true_b).abs(), f32::max);
    println!("{steps} AdamW steps, {} dispatch(es) each", opt.dispatches_per_step());
    println!("w = {found_w:.3?}\n  (true {true_w:.3?})");
    println!("b = {found_b:.3} (true {true_b})");
    println!("largest parameter error: {error:.2e}");
    Ok(())
}
