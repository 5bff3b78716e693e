//! The dispatcher: a step costs one dispatch per arena window (plus the step counter's)
//! whatever the number of tensors; arenas split at the binding limit; 2-D grids; views usable
//! by the user's own kernels; several steps recorded into one encoder; a host application's
//! device.

use wgpu_optim::rules::{Adam, Sgd};
use wgpu_optim::{GpuContext, Optimizer, OptimizerOptions, ParamGroup, Parameters, SCALAR_RING_STEPS};

use crate::common::{gpus, max_normwise_difference, run_cpu, run_gpu, Rng};

#[test]
fn a_thousand_tensors_step_in_one_dispatch() {
    let mut rng = Rng::new(7);
    let mut params = Parameters::new();
    let ids: Vec<_> = (0..1000).map(|t| params.add(&format!("t{t}"), &[1 + t % 37], rng.vec(1 + t % 37, 1.0)).unwrap()).collect();
    for gpu in gpus() {
        let mut opt = Optimizer::new(gpu, params.clone(), vec![ParamGroup::new(Adam::default(), ids.clone())]).unwrap();
        assert_eq!(opt.arenas().len(), 1);
        assert_eq!(opt.dispatches_per_step(), 1 + 1, "the step counter's dispatch and one update dispatch");
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        assert_eq!(opt.step(&mut encoder).unwrap(), 1 + 1, "dispatches recorded by one step (step counter, update)");
        gpu.queue().submit([encoder.finish()]);
        for &id in &ids {
            assert_eq!(opt.param(id).unwrap().offset % 256, 0, "every tensor is bindable at its offset");
        }
    }
}

#[test]
fn groups_get_their_own_arenas() {
    let layout: &[&[usize]] = &[&[10, 20], &[5], &[7, 7, 7]];
    let groups = |ids: &[Vec<wgpu_optim::TensorId>]| ids.iter().map(|g| ParamGroup::new(Sgd { lr: 0.1, ..Sgd::default() }, g.clone())).collect();
    for gpu in gpus() {
        let mut rng = Rng::new(1);
        let (params, ids) = crate::common::parameters(layout, &mut rng);
        let opt = Optimizer::new(gpu, params, groups(&ids)).unwrap();
        let arenas = opt.arenas();
        assert_eq!(arenas.iter().map(|a| a.group).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(opt.dispatches_per_step(), 1 + 3, "the step counter's dispatch, then one per arena");
    }
}

#[test]
fn small_arenas_windows_and_2d_grids_match_the_cpu_reference() {
    // 5000 elements exceed the 1024-element arena: that tensor gets its own arena, swept in
    // five windows; the others share arenas of at most 1024 elements. One workgroup per grid
    // row forces 2-D grids.
    let layout: &[&[usize]] = &[&[100, 5000, 900, 30, 1]];
    let groups = |ids: &[Vec<wgpu_optim::TensorId>]| vec![ParamGroup::new(Adam { lr: 0.01, amsgrad: true, ..Adam::default() }, ids[0].clone())];
    let expected = run_cpu(layout, &groups, 30, 3);
    let options = OptimizerOptions { max_arena_elements: Some(1024), max_workgroups_per_dimension: Some(1), ..Default::default() };
    for gpu in gpus() {
        let mut rng = Rng::new(3);
        let (params, ids) = crate::common::parameters(layout, &mut rng);
        let opt = Optimizer::with_options(gpu, params, groups(&ids), options.clone()).unwrap();
        let shape: Vec<(usize, usize)> = opt.arenas().iter().map(|a| (a.tensors.len(), a.windows)).collect();
        assert_eq!(shape, [(1, 1), (1, 5), (2, 1), (1, 1)], "arenas (tensors, windows)");
        assert_eq!(opt.dispatches_per_step(), 1 + 8, "the step counter's dispatch, then one per window");
        let actual = run_gpu(gpu, layout, &groups, 30, 3, options.clone());
        let (difference, tensor) = max_normwise_difference(&actual, &expected);
        assert!(difference <= crate::rules::GPU_VS_CPU_TOLERANCE, "{tensor}: {difference:e} on {}", gpu.adapter());
    }
}

#[test]
fn a_wide_window_uses_a_2d_grid() {
    let layout: &[&[usize]] = &[&[65_537, 3]];
    let groups = |ids: &[Vec<wgpu_optim::TensorId>]| vec![ParamGroup::new(Sgd { lr: 0.1, momentum: 0.9, ..Sgd::default() }, ids[0].clone())];
    let expected = run_cpu(layout, &groups, 5, 11);
    let options = OptimizerOptions { max_workgroups_per_dimension: Some(7), ..Default::default() };
    for gpu in gpus() {
        let actual = run_gpu(gpu, layout, &groups, 5, 11, options.clone());
        assert_eq!(max_normwise_difference(&actual, &expected).0, 0.0, "{}", gpu.adapter());
    }
}

#[test]
fn user_kernels_write_gradients_in_place() {
    // A "backward pass" of the user's own: grad = 2 * param (the gradient of |p|^2), reading
    // the parameter and writing the gradient through the views the library hands out.
    const BACKWARD: &str = r#"
        @group(0) @binding(0) var<storage, read> param: array<f32>;
        @group(0) @binding(1) var<storage, read_write> grad: array<f32>;
        @compute @workgroup_size(64)
        fn main(@builtin(global_invocation_id) id: vec3<u32>) {
            if (id.x < arrayLength(&param)) { grad[id.x] = 2.0 * param[id.x]; }
        }"#;
    for gpu in gpus() {
        let mut params = Parameters::new();
        let a = params.add("a", &[3], vec![1.0, -2.0, 3.0]).unwrap();
        let b = params.add("b", &[70], vec![0.5; 70]).unwrap();
        let mut opt = Optimizer::new(gpu, params, vec![ParamGroup::new(Sgd { lr: 0.25, ..Sgd::default() }, [a, b])]).unwrap();
        let device = gpu.device();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("backward"),
            source: wgpu::ShaderSource::Wgsl(BACKWARD.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("backward"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let bind_groups: Vec<_> = [a, b]
            .iter()
            .map(|&id| wgpu_optim::TensorView::bind_group(device, &layout, &[&opt.param(id).unwrap(), &opt.grad(id).unwrap()]))
            .collect();
        for _ in 0..3 {
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                for (bind_group, len) in bind_groups.iter().zip([3u32, 70]) {
                    pass.set_bind_group(0, bind_group, &[]);
                    pass.dispatch_workgroups(len.div_ceil(64), 1, 1);
                }
            }
            opt.step(&mut encoder).unwrap();
            gpu.queue().submit([encoder.finish()]);
        }
        // p <- p - 0.25 * 2p = p / 2, three times.
        assert_eq!(opt.read_param(a).unwrap(), [0.125, -0.25, 0.375]);
        assert_eq!(opt.read_param(b).unwrap(), vec![0.0625; 70]);
        assert_eq!(opt.read_grad(a).unwrap(), [0.5, -1.0, 1.5]);
    }
}

#[test]
fn steps_recorded_into_one_encoder_each_get_their_scalars() {
    // Adam's bias corrections change every step: recording 10 steps into one encoder must
    // equal 10 separate submissions.
    for gpu in gpus() {
        let make = || {
            let mut params = Parameters::new();
            let w = params.add("w", &[5], vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
            (Optimizer::new(gpu, params, vec![ParamGroup::new(Adam { lr: 0.1, ..Adam::default() }, [w])]).unwrap(), w)
        };
        let (mut batched, w) = make();
        batched.write_grad(w, &[1.0, -1.0, 0.5, 0.0, 2.0]).unwrap();
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        for _ in 0..10 {
            batched.step(&mut encoder).unwrap();
        }
        gpu.queue().submit([encoder.finish()]);
        let (mut separate, w2) = make();
        separate.write_grad(w2, &[1.0, -1.0, 0.5, 0.0, 2.0]).unwrap();
        for _ in 0..10 {
            separate.step_and_submit().unwrap();
        }
        assert_eq!(batched.read_param(w).unwrap(), separate.read_param(w2).unwrap());
        assert_eq!(batched.steps_recorded(), 10);
        assert_eq!(batched.counters().unwrap().applied_steps, 10);
        assert!(SCALAR_RING_STEPS >= 10);
    }
}

#[test]
fn a_host_applications_device_can_be_shared() {
    let adapter = pollster::block_on(GpuContext::adapters(wgpu_optim::BackendChoice::Vulkan))
        .into_iter()
        .chain(pollster::block_on(GpuContext::adapters(wgpu_optim::BackendChoice::Auto)))
        .next()
        .expect("an adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let gpu = GpuContext::from_device(device, queue);
    assert_eq!(gpu.adapter().name, adapter.get_info().name, "the device reports its adapter");
    let mut params = Parameters::new();
    let w = params.add("w", &[2], vec![1.0, 1.0]).unwrap();
    let mut opt = Optimizer::new(&gpu, params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])]).unwrap();
    opt.write_grad(w, &[0.5, -0.5]).unwrap();
    opt.step_and_submit().unwrap();
    assert_eq!(opt.read_param(w).unwrap(), [0.5, 1.5]);
}

/// A user's rule whose kernel has a built-in rule's label but its own WGSL: SGD that steps
/// twice as far. It must get its own pipeline, not the built-in one cached on the same device.
#[derive(Clone, Debug)]
struct DoubledSgd(Sgd);

impl wgpu_optim::UpdateRule for DoubledSgd {
    fn name(&self) -> &'static str {
        "DoubledSgd"
    }
    fn validate(&self) -> wgpu_optim::Result<()> {
        self.0.validate()
    }
    fn kernel(&self) -> wgpu_optim::rules::Kernel {
        let mut kernel = self.0.kernel();
        let doubled = kernel.source.replace("param[i] = p + s.neg_lr * g;", "param[i] = p + 2.0 * s.neg_lr * g;");
        assert_ne!(doubled, kernel.source, "the SGD kernel's update line");
        kernel.source = Box::leak(doubled.into_boxed_str());
        kernel
    }
    fn state_slots(&self) -> Vec<wgpu_optim::rules::StateSlot> {
        self.0.state_slots()
    }
    fn step_terms(&self, step: u64, memo: &mut wgpu_optim::rules::TermsMemo) -> wgpu_optim::rules::StepTerms {
        self.0.step_terms(step, memo)
    }
    fn step_scalars(&self, terms: wgpu_optim::rules::StepTerms) -> wgpu_optim::rules::StepScalars {
        self.0.step_scalars(terms)
    }
    fn cpu_update(&self, scalars: &wgpu_optim::rules::StepScalars, tensor: wgpu_optim::rules::CpuTensor<'_>) {
        self.0.cpu_update(scalars, tensor)
    }
    fn lr(&self) -> f64 {
        self.0.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.0.lr = lr;
    }
    fn hyperparameters(&self) -> serde_json::Value {
        self.0.hyperparameters()
    }
    fn clone_box(&self) -> Box<dyn wgpu_optim::UpdateRule> {
        Box::new(self.clone())
    }
}

#[test]
fn a_user_rule_named_like_a_built_in_one_gets_its_own_pipeline() {
    let mut params = Parameters::new();
    let w = params.add("w", &[8], vec![1.0; 8]).unwrap();
    let grad = vec![0.5f32; 8];
    for gpu in gpus() {
        let mut steps = Vec::new();
        // The built-in SGD first, so its pipeline is in the device's cache under label "sgd".
        for rule in [Box::new(Sgd { lr: 0.1, ..Sgd::default() }) as Box<dyn wgpu_optim::UpdateRule>, Box::new(DoubledSgd(Sgd { lr: 0.1, ..Sgd::default() }))] {
            let mut opt = Optimizer::new(gpu, params.clone(), vec![ParamGroup::from_boxed(rule, [w])]).unwrap();
            opt.write_grad(w, &grad).unwrap();
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            opt.step(&mut encoder).unwrap();
            gpu.queue().submit([encoder.finish()]);
            steps.push(1.0 - opt.read_param(w).unwrap()[0]);
        }
        assert!((steps[0] - 0.05).abs() < 1e-6, "{}: SGD steps lr * g: {}", gpu.adapter(), steps[0]);
        assert!((steps[1] - 0.1).abs() < 1e-6, "{}: the user's kernel steps twice as far: {}", gpu.adapter(), steps[1]);
    }
}
