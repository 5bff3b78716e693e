//! Gradient presence (`OptimizerOptions::gradient_presence`): a tensor without a gradient is
//! skipped as torch skips a `grad` of None, and rules that count steps per tensor count only
//! its own. The golden cases `*-absent` compare every rule with torch; these tests cover the
//! GPU against its CPU twin, the ways presence is set, checkpoints, and the errors.

use wgpu_optim::gradients::{ClipGradNorm, GradientOptions};
use wgpu_optim::rules::{
    Adafactor, Adagrad, Adam, AdamW, AdamWScheduleFree, Adan, Asgd, Lamb, Lion, Muon, NAdam, RAdam, Rprop, Sgd, SparseAdam,
    UpdateRule,
};
use wgpu_optim::{CpuOptimizer, Error, GpuContext, Optimizer, OptimizerOptions, ParamGroup, Parameters, TensorId};

use crate::common::{gpus, max_normwise_difference, snapshot_cpu, snapshot_gpu, Rng, Snapshot};
use crate::rules::GPU_VS_CPU_TOLERANCE;

const STEPS: usize = 10;

fn presence() -> OptimizerOptions {
    OptimizerOptions { gradient_presence: true, ..Default::default() }
}

/// Whether tensor `t` of the problem has a gradient at step `k` (0-based): the first always,
/// the second not on steps 1, 4 and 5, the third frozen for steps 0..=3, the fourth on even
/// steps only (so it is absent on the last).
fn present(t: usize, k: usize) -> bool {
    match t {
        0 => true,
        1 => ![1, 4, 5].contains(&k),
        2 => k > 3,
        _ => k.is_multiple_of(2),
    }
}

/// The steps tensor `t` takes in `steps` steps.
fn steps_taken(t: usize, steps: usize) -> u64 {
    (0..steps).filter(|&k| present(t, k)).count() as u64
}

fn shapes(rule: &dyn UpdateRule) -> Vec<Vec<usize>> {
    if rule.name() == "Muon" {
        vec![vec![6, 5], vec![4, 8], vec![3, 3], vec![5, 6]]
    } else {
        vec![vec![37], vec![6, 5], vec![2100], vec![2, 3, 4]]
    }
}

fn rules() -> Vec<Box<dyn UpdateRule>> {
    vec![
        Box::new(Adam { lr: 0.01, amsgrad: true, weight_decay: 0.01, ..Adam::default() }),
        Box::new(AdamW { lr: 0.01, ..AdamW::default() }),
        Box::new(NAdam { lr: 0.01, ..NAdam::default() }),
        Box::new(RAdam { lr: 0.01, ..RAdam::default() }),
        Box::new(Sgd { lr: 0.05, momentum: 0.9, dampening: 0.1, ..Sgd::default() }),
        Box::new(Adagrad { lr: 0.05, lr_decay: 0.01, ..Adagrad::default() }),
        Box::new(Asgd { lr: 0.05, t0: 3.0, ..Asgd::default() }),
        Box::new(Rprop { lr: 0.01, ..Rprop::default() }),
        Box::new(Lion { lr: 0.001, ..Lion::default() }),
        Box::new(Adafactor { lr: 0.01, ..Adafactor::default() }),
        Box::new(Lamb { lr: 0.01, ..Lamb::default() }),
        Box::new(Adan { lr: 0.01, ..Adan::default() }),
        Box::new(Muon { lr: 0.02, ..Muon::default() }),
        Box::new(AdamWScheduleFree { lr: 0.01, warmup_steps: 3, ..AdamWScheduleFree::default() }),
        Box::new(SparseAdam { lr: 0.01, ..SparseAdam::default() }),
    ]
}

fn problem(rule: &dyn UpdateRule, seed: u64) -> (Parameters, Vec<TensorId>) {
    let mut rng = Rng::new(seed);
    let mut params = Parameters::new();
    let ids = shapes(rule)
        .iter()
        .enumerate()
        .map(|(t, shape)| params.add(&format!("t{t}"), shape, rng.vec(shape.iter().product(), 1.0)).unwrap())
        .collect();
    (params, ids)
}

/// The gradient of tensor `t` at step `k`: dense, or for a sparse rule rows 0 and 2 of it.
fn gradient(t: usize, k: usize, len: usize) -> Vec<f32> {
    Rng::new(100 * k as u64 + t as u64).vec(len, 1.0)
}

fn sparse_rows(shape: &[usize]) -> (Vec<u32>, usize) {
    let (rows, row_length) = wgpu_optim::rules::sparse_rows(shape);
    ((0..rows as u32).filter(|r| r % 2 == 0).collect(), row_length)
}

/// `steps` steps on the CPU twin: torch's loop of `zero_grad()` (to None), gradients for the
/// present tensors, `step()`.
fn run_cpu(rule: &dyn UpdateRule, gradients: GradientOptions, steps: usize) -> (Snapshot, Vec<u64>) {
    let (params, ids) = problem(rule, 7);
    let mut opt = CpuOptimizer::with_gradients(params, vec![ParamGroup::from_boxed(rule.clone_box(), ids.clone())], gradients).unwrap();
    for k in 0..steps {
        opt.zero_grad_set_to_none();
        for (t, &id) in ids.iter().enumerate().filter(|(t, _)| present(*t, k)) {
            let shape = opt.tensor_shape(id).unwrap().to_vec();
            let g = gradient(t, k, shape.iter().product());
            if rule.name() == "SparseAdam" {
                let (rows, row_length) = sparse_rows(&shape);
                let values: Vec<f32> = rows.iter().flat_map(|&r| &g[r as usize * row_length..(r as usize + 1) * row_length]).copied().collect();
                opt.write_sparse_grad(id, &rows, &values).unwrap();
            } else {
                opt.write_grad(id, &g).unwrap();
            }
        }
        opt.step();
    }
    (snapshot_cpu(&opt, &ids), opt.tensor_steps())
}

/// The same on a GPU; also checks that the tensor frozen for the first steps is bit for bit
/// as it was at the end of them.
fn run_gpu(gpu: &GpuContext, rule: &dyn UpdateRule, gradients: GradientOptions, steps: usize) -> (Snapshot, Vec<u64>) {
    let (params, ids) = problem(rule, 7);
    let options = OptimizerOptions { gradients, ..presence() };
    let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::from_boxed(rule.clone_box(), ids.clone())], options).unwrap();
    let frozen = snapshot_gpu(&opt, &ids[2..3]);
    for k in 0..steps {
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        opt.zero_grad_set_to_none(&mut encoder).unwrap();
        gpu.queue().submit([encoder.finish()]);
        for (t, &id) in ids.iter().enumerate().filter(|(t, _)| present(*t, k)) {
            let shape = opt.tensor_shape(id).unwrap().to_vec();
            let g = gradient(t, k, shape.iter().product());
            if rule.name() == "SparseAdam" {
                let (rows, row_length) = sparse_rows(&shape);
                let values: Vec<f32> = rows.iter().flat_map(|&r| &g[r as usize * row_length..(r as usize + 1) * row_length]).copied().collect();
                opt.write_sparse_grad(id, &rows, &values).unwrap();
            } else {
                opt.write_grad(id, &g).unwrap();
            }
        }
        opt.step_and_submit().unwrap();
        if k == 3 {
            assert_eq!(bits(&snapshot_gpu(&opt, &ids[2..3])), bits(&frozen), "{} on {}: a tensor without gradients changed", rule.name(), gpu.adapter());
        }
    }
    let steps_taken = opt.read_tensor_steps().unwrap();
    (snapshot_gpu(&opt, &ids), steps_taken)
}

fn bits(snapshot: &Snapshot) -> Vec<(String, Vec<u32>)> {
    snapshot.iter().map(|(name, values)| (name.clone(), values.iter().map(|v| v.to_bits()).collect())).collect()
}

#[test]
fn absent_gradients_skip_tensors_on_the_gpu_as_on_the_cpu_twin() {
    for rule in rules() {
        let (expected, expected_steps) = run_cpu(rule.as_ref(), GradientOptions::default(), STEPS);
        let torch_steps: Vec<u64> = (0..4).map(|t| steps_taken(t, STEPS)).collect();
        assert_eq!(expected_steps, torch_steps, "{}: the CPU twin's per-tensor steps", rule.name());
        for gpu in gpus() {
            let (actual, actual_steps) = run_gpu(gpu, rule.as_ref(), GradientOptions::default(), STEPS);
            assert_eq!(actual_steps, torch_steps, "{} on {}: torch's state['step'] per tensor", rule.name(), gpu.adapter());
            let (difference, tensor) = max_normwise_difference(&actual, &expected);
            assert!(difference <= GPU_VS_CPU_TOLERANCE, "{} on {}: {tensor} off by {difference:e}", rule.name(), gpu.adapter());
        }
    }
}

#[test]
fn the_norm_of_clipping_takes_only_the_gradients_present() {
    // A stale gradient left in an absent tensor's buffer must not enter the norm (torch's
    // clip_grad_norm_ sees only grads that are not None): mark absent without zeroing.
    let gradients = GradientOptions { clip_grad_norm: Some(ClipGradNorm { max_norm: 0.5, norm_type: 2.0, error_if_nonfinite: false }), ..Default::default() };
    let rule = Adam { lr: 0.01, ..Adam::default() };
    for gpu in gpus() {
        let (params, ids) = problem(&rule, 3);
        let options = OptimizerOptions { gradients: gradients.clone(), ..presence() };
        let mut opt = Optimizer::with_options(gpu, params.clone(), vec![ParamGroup::new(rule.clone(), ids.clone())], options).unwrap();
        let mut twin = CpuOptimizer::with_gradients(params, vec![ParamGroup::new(rule.clone(), ids.clone())], gradients.clone()).unwrap();
        for k in 0..4 {
            for (t, &id) in ids.iter().enumerate() {
                let len = opt.tensor_shape(id).unwrap().iter().product();
                let g: Vec<f32> = gradient(t, k, len).iter().map(|x| x * 100.0).collect();
                opt.write_grad(id, &g).unwrap();
                twin.write_grad(id, &g).unwrap();
                if !present(t, k) {
                    opt.set_gradient_present(id, false).unwrap();
                    twin.set_gradient_present(id, false).unwrap();
                }
            }
            opt.step_and_submit().unwrap();
            twin.step();
        }
        let norm = opt.counters().unwrap().last_grad_norm;
        let twin_norm = twin.counters().unwrap().last_grad_norm;
        assert!((norm - twin_norm).abs() <= 1e-5 * twin_norm, "{}: norm {norm} vs {twin_norm}", gpu.adapter());
        let (difference, tensor) = max_normwise_difference(&snapshot_gpu(&opt, &ids), &snapshot_cpu(&twin, &ids));
        assert!(difference <= GPU_VS_CPU_TOLERANCE, "{}: {tensor} off by {difference:e}", gpu.adapter());
        // The last step's norm: of the gradients present at step 3 (tensors 0 and 1).
        let present_sq: f64 = (0..4)
            .filter(|&t| present(t, 3))
            .map(|t| gradient(t, 3, opt.tensor_shape(ids[t]).unwrap().iter().product()).iter().map(|&x| f64::from(x * 100.0).powi(2)).sum::<f64>())
            .sum();
        assert!((f64::from(norm) - present_sq.sqrt()).abs() < 1e-3 * present_sq.sqrt(), "norm {norm} vs {}", present_sq.sqrt());
    }
}

#[test]
fn tracking_presence_changes_nothing_when_every_gradient_is_present() {
    // The same steps with and without tracking: bit for bit (tensors then start at chunks,
    // and each step has one more dispatch).
    for gpu in gpus() {
        for rule in [Box::new(Adam { lr: 0.01, ..Adam::default() }) as Box<dyn UpdateRule>, Box::new(Lamb::default()), Box::new(Muon::default())] {
            let run = |options: OptimizerOptions| {
                let (params, ids) = problem(rule.as_ref(), 11);
                let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::from_boxed(rule.clone_box(), ids.clone())], options).unwrap();
                for k in 0..4 {
                    for (t, &id) in ids.iter().enumerate() {
                        opt.write_grad(id, &gradient(t, k, opt.tensor_shape(id).unwrap().iter().product())).unwrap();
                    }
                    opt.step_and_submit().unwrap();
                }
                (bits(&snapshot_gpu(&opt, &ids)), opt.dispatches_per_step())
            };
            let (tracked, tracked_dispatches) = run(presence());
            let (untracked, dispatches) = run(OptimizerOptions::default());
            assert_eq!(tracked, untracked, "{} on {}", rule.name(), gpu.adapter());
            assert_eq!(tracked_dispatches, dispatches + 1, "one dispatch counts the missed steps");
        }
    }
}

/// Sets the presence flags of the tensors listed in `present` to 1 from a kernel, as a
/// backward pass that writes their gradients would.
fn mark_present_on_the_gpu(gpu: &GpuContext, opt: &Optimizer, present: &[TensorId]) {
    let device = gpu.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("mark present"),
        source: wgpu::ShaderSource::Wgsl(
            "@group(0) @binding(0) var<storage, read_write> flags: array<u32>;
             @group(0) @binding(1) var<storage, read> tensors: array<u32>;
             @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
                 if (id.x < arrayLength(&tensors)) { flags[tensors[id.x]] = 1u; }
             }"
            .into(),
        ),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("mark present"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let indices: Vec<u32> = present.iter().map(|id| id.index() as u32).collect();
    let list = wgpu::util::DeviceExt::create_buffer_init(
        device,
        &wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(&indices), usage: wgpu::BufferUsages::STORAGE },
    );
    let flags = opt.gradient_presence_view().unwrap();
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: flags.binding() },
            wgpu::BindGroupEntry { binding: 1, resource: list.as_entire_binding() },
        ],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    gpu.queue().submit([encoder.finish()]);
}

#[test]
fn a_users_kernel_sets_presence_and_checkpoints_keep_each_tensors_step() {
    let rule = NAdam { lr: 0.01, ..NAdam::default() };
    for gpu in gpus() {
        let (params, ids) = problem(&rule, 5);
        let group = || vec![ParamGroup::new(rule.clone(), ids.clone())];
        let mut opt = Optimizer::with_options(gpu, params.clone(), group(), presence()).unwrap();
        let mut twin = CpuOptimizer::new(params.clone(), group()).unwrap();
        let mut saved = None;
        for k in 0..STEPS {
            // Gradients are written for every tensor; only the kernel's flags say which count.
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            opt.zero_grad_set_to_none(&mut encoder).unwrap();
            gpu.queue().submit([encoder.finish()]);
            twin.zero_grad_set_to_none();
            let grads: Vec<Vec<f32>> =
                ids.iter().enumerate().map(|(t, &id)| gradient(t, k, opt.tensor_shape(id).unwrap().iter().product())).collect();
            for (t, &id) in ids.iter().enumerate() {
                let view = opt.grad(id).unwrap();
                gpu.queue().write_buffer(&view.buffer, view.offset, bytemuck::cast_slice(&grads[t]));
                if present(t, k) {
                    twin.write_grad(id, &grads[t]).unwrap();
                }
            }
            let marked: Vec<TensorId> = ids.iter().enumerate().filter(|(t, _)| present(*t, k)).map(|(_, &id)| id).collect();
            mark_present_on_the_gpu(gpu, &opt, &marked);
            opt.step_and_submit().unwrap();
            twin.step();
            if k == 5 {
                saved = Some(opt.checkpoint(None).unwrap());
            }
        }
        let (difference, tensor) = max_normwise_difference(&snapshot_gpu(&opt, &ids), &snapshot_cpu(&twin, &ids));
        assert!(difference <= GPU_VS_CPU_TOLERANCE, "{}: {tensor} off by {difference:e}", gpu.adapter());

        // The checkpoint after step 6 holds torch's per-tensor steps and each tensor's missed ones.
        let saved = saved.unwrap();
        let step_of = |name: &str| saved.tensor(&format!("{name}.step")).unwrap().data[0];
        let steps: Vec<f32> = (0..4).map(|t| step_of(&format!("t{t}"))).collect();
        assert_eq!(steps, (0..4).map(|t| steps_taken(t, 6) as f32).collect::<Vec<_>>());
        assert_eq!(saved.groups[0].missed.as_ref().unwrap()["t2"], 4);
        // NAdam's mu_product per tensor follows its own steps.
        let mu = |name: &str| saved.tensor(&format!("{name}.mu_product")).unwrap().data[0];
        assert_ne!(mu("t0"), mu("t2"), "t2 took 2 steps, t0 took 6");

        // Resuming from it repeats steps 7..10 bit for bit; a twin resumed from it agrees.
        let mut resumed = Optimizer::with_options(gpu, params.clone(), group(), presence()).unwrap();
        resumed.restore(&saved).unwrap();
        let mut resumed_twin = CpuOptimizer::new(params.clone(), group()).unwrap();
        resumed_twin.restore(&saved).unwrap();
        for k in 6..STEPS {
            for (t, &id) in ids.iter().enumerate() {
                let g = gradient(t, k, resumed.tensor_shape(id).unwrap().iter().product());
                resumed.write_grad(id, &g).unwrap();
                resumed_twin.write_grad(id, &g).unwrap();
                resumed.set_gradient_present(id, present(t, k)).unwrap();
                resumed_twin.set_gradient_present(id, present(t, k)).unwrap();
            }
            resumed.step_and_submit().unwrap();
            resumed_twin.step();
        }
        assert_eq!(bits(&snapshot_gpu(&resumed, &ids)), bits(&snapshot_gpu(&opt, &ids)), "{}: resume", gpu.adapter());
        assert_eq!(resumed.read_tensor_steps().unwrap(), resumed_twin.tensor_steps());
        assert_eq!(bits(&snapshot_cpu(&resumed_twin, &ids)), bits(&snapshot_cpu(&twin, &ids)), "twin resume");

        // An optimizer that does not track presence refuses it, changing nothing.
        let mut untracked = Optimizer::new(gpu, params.clone(), group()).unwrap();
        let before = bits(&snapshot_gpu(&untracked, &ids));
        let error = untracked.restore(&saved).unwrap_err();
        assert!(error.to_string().contains("gradient_presence"), "{error}");
        assert_eq!(bits(&snapshot_gpu(&untracked, &ids)), before);
    }
}

#[test]
fn a_changed_hyperparameter_reaches_tensors_that_missed_steps() {
    // torch computes a tensor's terms from its own step with the group's current values:
    // ASGD's eta from lr, Adam's bias correction and NAdam's mu from betas[0] (cycled by
    // OneCycleLR).
    for gpu in gpus() {
        let rules: [Box<dyn UpdateRule>; 3] =
            [Box::new(Asgd { lr: 0.05, t0: 2.0, ..Asgd::default() }), Box::new(Adam { lr: 0.01, ..Adam::default() }), Box::new(NAdam { lr: 0.01, ..NAdam::default() })];
        for rule in rules {
            let (params, ids) = problem(rule.as_ref(), 9);
            let group = || vec![ParamGroup::from_boxed(rule.clone_box(), ids.clone())];
            let mut opt = Optimizer::with_options(gpu, params.clone(), group(), presence()).unwrap();
            let mut twin = CpuOptimizer::new(params, group()).unwrap();
            for k in 0..STEPS {
                for (t, &id) in ids.iter().enumerate() {
                    let g = gradient(t, k, opt.tensor_shape(id).unwrap().iter().product());
                    opt.write_grad(id, &g).unwrap();
                    twin.write_grad(id, &g).unwrap();
                    opt.set_gradient_present(id, present(t, k)).unwrap();
                    twin.set_gradient_present(id, present(t, k)).unwrap();
                }
                opt.step_and_submit().unwrap();
                twin.step();
                if rule.name() == "ASGD" {
                    let lr = 0.05 * 0.8f64.powi(k as i32 + 1);
                    opt.set_lr(0, lr).unwrap();
                    twin.set_lr(0, lr).unwrap();
                } else {
                    let beta1 = 0.85 + 0.01 * k as f64;
                    opt.set_cycled_momentum(0, beta1).unwrap();
                    twin.set_cycled_momentum(0, beta1).unwrap();
                }
            }
            let (difference, tensor) = max_normwise_difference(&snapshot_gpu(&opt, &ids), &snapshot_cpu(&twin, &ids));
            assert!(difference <= GPU_VS_CPU_TOLERANCE, "{} on {}: {tensor} off by {difference:e}", rule.name(), gpu.adapter());
        }
    }
}

#[test]
fn add_param_group_keeps_presence_and_missed_steps() {
    let rule = Adam { lr: 0.01, ..Adam::default() };
    for gpu in gpus() {
        let (params, ids) = problem(&rule, 13);
        let mut opt = Optimizer::with_options(gpu, params.clone(), vec![ParamGroup::new(rule.clone(), ids.clone())], presence()).unwrap();
        let mut twin = CpuOptimizer::new(params, vec![ParamGroup::new(rule.clone(), ids.clone())]).unwrap();
        let mut all = ids.clone();
        for k in 0..STEPS {
            if k == 4 {
                let mut head = Parameters::new();
                head.add("head", &[9], Rng::new(77).vec(9, 1.0)).unwrap();
                let added = opt.add_param_group(head.clone(), Box::new(Sgd { lr: 0.1, momentum: 0.9, ..Sgd::default() })).unwrap();
                let added_twin = twin.add_param_group(head, Box::new(Sgd { lr: 0.1, momentum: 0.9, ..Sgd::default() })).unwrap();
                assert_eq!(added, added_twin);
                all.extend(added);
            }
            for (t, &id) in all.iter().enumerate() {
                let g = gradient(t, k, opt.tensor_shape(id).unwrap().iter().product());
                opt.write_grad(id, &g).unwrap();
                twin.write_grad(id, &g).unwrap();
                // The flags set before the group was added must survive it: tensor 1 is
                // marked absent at step 4 before add_param_group on the next line runs.
                opt.set_gradient_present(id, present(t, k)).unwrap();
                twin.set_gradient_present(id, present(t, k)).unwrap();
            }
            opt.step_and_submit().unwrap();
            twin.step();
        }
        assert_eq!(opt.read_tensor_steps().unwrap(), twin.tensor_steps(), "{}", gpu.adapter());
        let (difference, tensor) = max_normwise_difference(&snapshot_gpu(&opt, &all), &snapshot_cpu(&twin, &all));
        assert!(difference <= GPU_VS_CPU_TOLERANCE, "{}: {tensor} off by {difference:e}", gpu.adapter());
    }
}

#[test]
fn a_tensor_absent_for_longer_than_the_terms_history_is_an_error_not_a_wrong_step() {
    let rule = Adam { lr: 0.01, ..Adam::default() };
    for gpu in gpus() {
        let (params, ids) = problem(&rule, 17);
        let options = OptimizerOptions { steps_in_flight: Some(4), step_terms_history: Some(16), ..presence() };
        let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(rule.clone(), ids.clone())], options).unwrap();
        let frozen = ids[2];
        let before = bits(&snapshot_gpu(&opt, &[frozen]));
        for k in 0..30 {
            for (t, &id) in ids.iter().enumerate() {
                opt.write_grad(id, &gradient(t, k, opt.tensor_shape(id).unwrap().iter().product())).unwrap();
            }
            opt.set_gradient_present(frozen, k >= 25).unwrap();
            opt.step_and_submit().unwrap();
        }
        let error = opt.counters().unwrap_err();
        assert!(matches!(error, Error::StepTermsLost(_)), "{error}");
        assert!(error.to_string().contains("step_terms_history"), "{error}");
        assert_eq!(bits(&snapshot_gpu(&opt, &[frozen])), before, "left as it was");
        assert_eq!(opt.read_tensor_steps().unwrap()[2], 0);
        opt.counters().expect("reported once");
    }
}

#[test]
fn presence_calls_need_the_option_and_options_are_checked() {
    let gpus = gpus();
    let gpu = &gpus[0];
    let rule = Adam::default();
    let (params, ids) = problem(&rule, 1);
    let opt = Optimizer::new(gpu, params.clone(), vec![ParamGroup::new(rule.clone(), ids.clone())]).unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for error in [
        opt.set_gradient_present(ids[0], false).unwrap_err(),
        opt.zero_grad_set_to_none(&mut encoder).unwrap_err(),
        opt.gradient_presence_view().unwrap_err(),
    ] {
        assert!(error.to_string().contains("OptimizerOptions::gradient_presence"), "{error}");
    }
    for history in [64, 1 << 25] {
        let options = OptimizerOptions { step_terms_history: Some(history), ..presence() };
        let error = Optimizer::with_options(gpu, params.clone(), vec![ParamGroup::new(rule.clone(), ids.clone())], options).unwrap_err();
        assert!(error.to_string().contains("step_terms_history"), "{error}");
    }
    let tracked = Optimizer::with_options(gpu, params, vec![ParamGroup::new(rule, ids)], presence()).unwrap();
    let mut other = Parameters::new();
    let foreign = other.zeros("x", &[3]).unwrap();
    assert!(matches!(tracked.set_gradient_present(foreign, true), Err(Error::ForeignTensor { .. })));
    let view = tracked.gradient_presence_view().unwrap();
    assert_eq!((view.offset % 256, view.len), (0, 4), "bindable, one word per tensor");
}

#[test]
fn windows_and_two_dimensional_grids_find_each_chunks_tensor() {
    // Arenas of at most 1,024 elements (the 2,100-element tensor spans three windows) swept by
    // grids one workgroup wide: each workgroup still finds its chunk's tensor.
    let rule = Adam { lr: 0.01, weight_decay: 0.01, ..Adam::default() };
    let options = OptimizerOptions { max_arena_elements: Some(1024), max_workgroups_per_dimension: Some(1), ..presence() };
    let (expected, expected_steps) = run_cpu(&rule, GradientOptions::default(), STEPS);
    for gpu in gpus() {
        let (params, ids) = problem(&rule, 7);
        let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(rule.clone(), ids.clone())], options.clone()).unwrap();
        assert!(opt.arenas().iter().any(|a| a.windows > 1), "a tensor spans windows");
        for k in 0..STEPS {
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            opt.zero_grad_set_to_none(&mut encoder).unwrap();
            gpu.queue().submit([encoder.finish()]);
            for (t, &id) in ids.iter().enumerate().filter(|(t, _)| present(*t, k)) {
                opt.write_grad(id, &gradient(t, k, opt.tensor_shape(id).unwrap().iter().product())).unwrap();
            }
            opt.step_and_submit().unwrap();
        }
        assert_eq!(opt.read_tensor_steps().unwrap(), expected_steps);
        let (difference, tensor) = max_normwise_difference(&snapshot_gpu(&opt, &ids), &expected);
        assert!(difference <= GPU_VS_CPU_TOLERANCE, "{}: {tensor} off by {difference:e}", gpu.adapter());
    }
}
