//! What a training framework relies on besides the update: `zero_grad` on the GPU, and
//! checkpoints of models larger than one GPU buffer.

use wgpu_optim::rules::{Adam, SparseAdam};
use wgpu_optim::{BackendChoice, GpuContext, Optimizer, ParamGroup, Parameters};

use crate::common::{gpus, snapshot_gpu, Rng};

#[test]
fn zero_grad_clears_every_gradient_and_sparse_row_mask() {
    for gpu in gpus() {
        let mut rng = Rng::new(2);
        let mut params = Parameters::new();
        let dense: Vec<_> = (0..3).map(|t| params.add(&format!("d{t}"), &[5 + 100 * t], rng.vec(5 + 100 * t, 1.0)).unwrap()).collect();
        let embedding = params.add("embedding", &[6, 4], rng.vec(24, 1.0)).unwrap();
        let groups = vec![ParamGroup::new(Adam::default(), dense.clone()), ParamGroup::new(SparseAdam::default(), [embedding])];
        let opt = Optimizer::new(gpu, params, groups).unwrap();
        for &id in &dense {
            opt.write_grad(id, &rng.vec(opt.tensor_shape(id).unwrap()[0], 1.0)).unwrap();
        }
        opt.write_sparse_grad(embedding, &[1, 4], &rng.vec(8, 1.0)).unwrap();
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        opt.zero_grad(&mut encoder);
        gpu.queue().submit([encoder.finish()]);
        for &id in dense.iter().chain([&embedding]) {
            assert!(opt.read_grad(id).unwrap().iter().all(|&g| g == 0.0), "{} on {}", opt.tensor_name(id).unwrap(), gpu.adapter());
        }
        let mask = opt.read(&opt.grad_rows(embedding).unwrap()).unwrap();
        assert!(mask.iter().all(|&m| m.to_bits() == 0), "no row touched after zero_grad: {mask:?}");
    }
}

/// A Vulkan device whose buffers hold at most 1 MiB, so that a small model's checkpoint
/// exceeds one buffer.
fn small_buffer_device() -> GpuContext {
    let adapters = pollster::block_on(GpuContext::adapters(BackendChoice::Vulkan));
    let adapter = adapters.into_iter().find(|a| GpuContext::unusable(a).is_none()).expect("a Vulkan adapter");
    let mut descriptor = GpuContext::device_descriptor(&adapter);
    descriptor.required_limits.max_buffer_size = 1 << 20;
    descriptor.required_limits.max_storage_buffer_binding_size = 1 << 20;
    let (device, queue) = pollster::block_on(adapter.request_device(&descriptor)).expect("a device with smaller limits");
    GpuContext::from_device(device, queue)
}

#[test]
fn a_checkpoint_larger_than_one_buffer_round_trips() {
    let _turn = gpus();
    let gpu = small_buffer_device();
    let mut rng = Rng::new(9);
    let mut params = Parameters::new();
    // 3 x 200,000 elements with Adam's two moments: 7.2 MB, seven times max_buffer_size.
    let ids: Vec<_> = (0..3).map(|t| params.add(&format!("w{t}"), &[200_000], rng.vec(200_000, 1.0)).unwrap()).collect();
    let group = || vec![ParamGroup::new(Adam { lr: 0.01, ..Adam::default() }, ids.clone())];
    let mut opt = Optimizer::new(&gpu, params.clone(), group()).unwrap();
    assert!(opt.arenas().len() >= 3, "arenas split at the binding limit");
    for _ in 0..2 {
        for &id in &ids {
            opt.write_grad(id, &rng.vec(200_000, 1.0)).unwrap();
        }
        opt.step_and_submit().unwrap();
    }
    let checkpoint = opt.checkpoint(None).unwrap();
    let params_again = || params.clone();
    let mut resumed = Optimizer::new(&gpu, params_again(), group()).unwrap();
    resumed.restore(&checkpoint).unwrap();
    assert_eq!(snapshot_gpu(&resumed, &ids), snapshot_gpu(&opt, &ids));
    let path = std::env::temp_dir().join(format!("wgpu-optim-large-checkpoint-{}.safetensors", std::process::id()));
    opt.save_checkpoint(&path, None).unwrap();
    resumed.load_checkpoint(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(snapshot_gpu(&resumed, &ids), snapshot_gpu(&opt, &ids));
    // Without a file system (the web): the same bytes in memory.
    let bytes = pollster::block_on(opt.checkpoint_async(None)).unwrap().to_bytes().unwrap();
    let mut fresh = Optimizer::new(&gpu, params_again(), group()).unwrap();
    fresh.restore(&wgpu_optim::checkpoint::Checkpoint::from_bytes(&bytes).unwrap()).unwrap();
    assert_eq!(snapshot_gpu(&fresh, &ids), snapshot_gpu(&opt, &ids));
}

#[test]
fn hyperparameters_change_between_steps_as_torch_param_groups_do() {
    use crate::common::{max_normwise_difference, snapshot_cpu};
    use wgpu_optim::CpuOptimizer;
    let layout: [(&str, usize); 2] = [("a", 70), ("b", 300)];
    let setup = || {
        let mut rng = Rng::new(4);
        let mut params = Parameters::new();
        let ids: Vec<_> = layout.iter().map(|&(name, len)| params.add(name, &[len], rng.vec(len, 1.0)).unwrap()).collect();
        (params, ids)
    };
    let change = serde_json::json!({"weight_decay": 0.1, "maximize": true, "betas": [0.8, 0.99], "eps": 1e-6});
    let grads = |step: u64| -> Vec<Vec<f32>> { layout.iter().map(|&(_, len)| Rng::new(50 + step).vec(len, 1.0)).collect() };

    let (params, ids) = setup();
    let mut cpu = CpuOptimizer::new(params, vec![ParamGroup::new(Adam { lr: 0.01, ..Adam::default() }, ids.clone())]).unwrap();
    for step in 1..=6 {
        if step == 4 {
            cpu.set_hyperparameters(0, change.clone()).unwrap();
        }
        for (&id, g) in ids.iter().zip(grads(step)) {
            cpu.write_grad(id, &g).unwrap();
        }
        cpu.step();
    }
    let expected = snapshot_cpu(&cpu, &ids);

    for gpu in gpus() {
        let (params, ids) = setup();
        let mut unchanged = Optimizer::new(gpu, params.clone(), vec![ParamGroup::new(Adam { lr: 0.01, ..Adam::default() }, ids.clone())]).unwrap();
        let mut opt = Optimizer::new(gpu, params, vec![ParamGroup::new(Adam { lr: 0.01, ..Adam::default() }, ids.clone())]).unwrap();
        for step in 1..=6 {
            if step == 4 {
                let before = opt.rule(0).hyperparameters();
                for refused in [
                    serde_json::json!({"amsgrad": true}),
                    serde_json::json!({"lr": -1.0}),
                    serde_json::json!({"momentum": 0.9}),
                    serde_json::json!(0.1),
                ] {
                    let error = opt.set_hyperparameters(0, refused.clone()).expect_err("refused");
                    assert!(!error.to_string().is_empty());
                    assert_eq!(opt.rule(0).hyperparameters(), before, "{refused} left the group as it was");
                }
                let error = opt.set_hyperparameters(0, serde_json::json!({"amsgrad": true})).unwrap_err();
                assert!(error.to_string().contains("max_exp_avg_sq"), "names the state it would need: {error}");
                opt.set_hyperparameters(0, change.clone()).unwrap();
                assert_eq!(opt.rule(0).hyperparameters()["maximize"], true);
            }
            for (&id, g) in ids.iter().zip(grads(step)) {
                opt.write_grad(id, &g).unwrap();
                unchanged.write_grad(id, &g).unwrap();
            }
            opt.step_and_submit().unwrap();
            unchanged.step_and_submit().unwrap();
        }
        let actual = snapshot_gpu(&opt, &ids);
        let (difference, tensor) = max_normwise_difference(&actual, &expected);
        assert!(difference <= crate::rules::GPU_VS_CPU_TOLERANCE, "{tensor}: {difference:e} on {}", gpu.adapter());
        let (effect, _) = max_normwise_difference(&snapshot_gpu(&unchanged, &ids), &expected);
        assert!(effect > 0.01, "the change took effect ({effect:e})");
    }
}

#[test]
fn a_group_added_after_steps_counts_its_own_steps_as_torch_does() {
    use crate::common::{max_normwise_difference, snapshot_cpu};
    use wgpu_optim::rules::{AdamW, NAdam, UpdateRule};
    use wgpu_optim::CpuOptimizer;
    let base = || {
        let mut rng = Rng::new(6);
        let mut params = Parameters::new();
        let ids: Vec<_> = [("a", 70), ("b", 300)].iter().map(|&(name, len)| params.add(name, &[len], rng.vec(len, 1.0)).unwrap()).collect();
        (params, ids)
    };
    let head = || {
        let mut params = Parameters::new();
        params.add("head.weight", &[5, 8], Rng::new(7).vec(40, 1.0)).unwrap();
        params.add("head.bias", &[5], vec![0.0; 5]).unwrap();
        params
    };
    let first_rule = || ParamGroup::new(Adam { lr: 0.01, ..Adam::default() }, []);
    let added_rule = || -> Box<dyn UpdateRule> { Box::new(NAdam { lr: 0.02, ..NAdam::default() }) };
    let gradient = |step: u64, id: usize, len: usize| Rng::new(100 * step + id as u64).vec(len, 1.0);
    const ADDED_AT: u64 = 3;

    let (params, ids) = base();
    let mut cpu = CpuOptimizer::new(params, vec![ParamGroup { tensors: ids.clone(), ..first_rule() }]).unwrap();
    let mut cpu_ids = ids.clone();
    for step in 1..=6 {
        if step == ADDED_AT + 1 {
            cpu_ids.extend(cpu.add_param_group(head(), added_rule()).unwrap());
        }
        for (k, &id) in cpu_ids.iter().enumerate() {
            cpu.write_grad(id, &gradient(step, k, cpu.param(id).unwrap().len())).unwrap();
        }
        cpu.step();
    }
    let expected = snapshot_cpu(&cpu, &cpu_ids);
    let saved = cpu.checkpoint(None);
    let steps_of = |name: &str| saved.tensor(&format!("{name}.step")).unwrap().data[0];
    assert_eq!((steps_of("a"), steps_of("head.weight")), (6.0, 3.0), "each group counts its own steps");

    for gpu in gpus() {
        let (params, ids) = base();
        let mut opt = Optimizer::new(gpu, params, vec![ParamGroup { tensors: ids.clone(), ..first_rule() }]).unwrap();
        let mut all = ids.clone();
        for step in 1..=6 {
            if step == ADDED_AT + 1 {
                // Refused changes leave the optimizer as it was.
                let mut clash = Parameters::new();
                clash.zeros("a", &[3]).unwrap();
                assert!(opt.add_param_group(clash, added_rule()).unwrap_err().to_string().contains("more than one parameter group"));
                assert!(opt.add_param_group(Parameters::new(), added_rule()).is_err());
                let invalid: Box<dyn UpdateRule> = Box::new(AdamW { lr: -1.0, ..AdamW::default() });
                assert!(opt.add_param_group(head(), invalid).is_err());
                assert_eq!(opt.group_count(), 1);
                all.extend(opt.add_param_group(head(), added_rule()).unwrap());
                assert_eq!(opt.group_count(), 2);
                assert_eq!(opt.tensor_name(ids[1]).unwrap(), "b", "ids issued before stay valid");
            }
            for (k, &id) in all.iter().enumerate() {
                opt.write_grad(id, &gradient(step, k, opt.param(id).unwrap().len)).unwrap();
            }
            opt.step_and_submit().unwrap();
        }
        let actual = snapshot_gpu(&opt, &all);
        let (difference, tensor) = max_normwise_difference(&actual, &expected);
        assert!(difference <= crate::rules::GPU_VS_CPU_TOLERANCE, "{tensor}: {difference:e} on {}", gpu.adapter());

        // A checkpoint resumes into an optimizer built with both groups at once: the added
        // group's step count comes from the checkpoint.
        let checkpoint = opt.checkpoint(None).unwrap();
        let (params, ids) = base();
        let mut both = params.clone();
        let head_ids: Vec<_> = head().iter().map(|(_, spec)| both.add(&spec.name, &spec.shape, spec.data.clone()).unwrap()).collect();
        let groups = vec![ParamGroup { tensors: ids.clone(), ..first_rule() }, ParamGroup::from_boxed(added_rule(), head_ids.clone())];
        let mut resumed = Optimizer::new(gpu, both, groups).unwrap();
        resumed.restore(&checkpoint).unwrap();
        let resumed_ids: Vec<_> = ids.iter().chain(&head_ids).copied().collect();
        for step in 7..=8 {
            for (k, (&a, &b)) in all.iter().zip(&resumed_ids).enumerate() {
                let g = gradient(step, k, opt.param(a).unwrap().len);
                opt.write_grad(a, &g).unwrap();
                resumed.write_grad(b, &g).unwrap();
            }
            opt.step_and_submit().unwrap();
            resumed.step_and_submit().unwrap();
        }
        assert_eq!(snapshot_gpu(&resumed, &resumed_ids), snapshot_gpu(&opt, &all), "on {}", gpu.adapter());
    }
}

#[test]
fn a_hyperparameter_that_only_sets_a_states_initial_value_can_change() {
    // ASGD starts its per-tensor eta at lr: a new lr changes that initial value, not the
    // state kept, so torch's `param_groups[0]["lr"] = ...` is accepted.
    let gpus = crate::common::gpus();
    let mut params = Parameters::new();
    let w = params.add("w", &[8], vec![0.5; 8]).unwrap();
    let mut opt = Optimizer::new(&gpus[0], params, vec![ParamGroup::new(wgpu_optim::rules::Asgd::default(), [w])]).unwrap();
    opt.set_hyperparameters(0, serde_json::json!({"lr": 0.5, "t0": 10.0})).unwrap();
    assert_eq!(opt.rule(0).hyperparameters()["lr"], 0.5);
}
