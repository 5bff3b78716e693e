//! Checkpoints: resuming is bit-exact for every rule (N steps straight equal k steps, save,
//! load into a fresh optimizer, N − k steps); a checkpoint that does not fit is rejected with
//! an error that says what differs, and changes nothing.

use std::path::PathBuf;

use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::replay::read_safetensors;
use wgpu_optim::rules::{
    Adadelta, Adagrad, Adam, AdamW, AdamWScheduleFree, Adamax, Adan, Asgd, Lion, NAdam, RAdam, RMSprop, Rprop, Sgd,
};
use wgpu_optim::{
    ClipGradNorm, CpuOptimizer, GpuContext, GradientOptions, LossScale, Optimizer, OptimizerOptions, ParamGroup, Parameters,
    TensorId, UpdateRule,
};

use crate::common::{gpus, Rng};

const STEPS: usize = 12;
const SAVED_AT: usize = 5;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-checkpoints-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn rules() -> Vec<Box<dyn UpdateRule>> {
    vec![
        Box::new(Sgd { lr: 0.05, momentum: 0.9, dampening: 0.1, ..Sgd::default() }),
        Box::new(Adagrad { lr: 0.05, lr_decay: 1e-2, initial_accumulator_value: 0.1, ..Adagrad::default() }),
        Box::new(RMSprop { lr: 0.01, momentum: 0.9, centered: true, ..RMSprop::default() }),
        Box::new(Adadelta { weight_decay: 1e-2, ..Adadelta::default() }),
        Box::new(Adam { lr: 0.01, amsgrad: true, ..Adam::default() }),
        Box::new(AdamW { lr: 0.01, ..AdamW::default() }),
        Box::new(NAdam { lr: 0.01, decoupled_weight_decay: true, weight_decay: 1e-2, ..NAdam::default() }),
        Box::new(Adamax { lr: 0.01, weight_decay: 1e-2, ..Adamax::default() }),
        Box::new(RAdam { lr: 0.01, decoupled_weight_decay: true, weight_decay: 1e-2, ..RAdam::default() }),
        Box::new(Rprop { lr: 0.01, step_sizes: (1e-4, 0.05), ..Rprop::default() }),
        Box::new(Lion { lr: 1e-3, weight_decay: 0.1, ..Lion::default() }),
        Box::new(Asgd { lr: 0.01, lambd: 0.5, t0: 4.0, weight_decay: 1e-2, ..Asgd::default() }),
        Box::new(Adan { lr: 0.01, weight_decay: 0.02, ..Adan::default() }),
        Box::new(AdamWScheduleFree { lr: 0.01, warmup_steps: 3, weight_decay: 1e-2, ..AdamWScheduleFree::default() }),
    ]
}

/// Two groups, the second with half the lr; the same initial values every time.
fn model(rule: &dyn UpdateRule) -> (Parameters, Vec<ParamGroup>, Vec<TensorId>) {
    let mut rng = Rng::new(3);
    let mut params = Parameters::new();
    let w = params.add("layer.0.weight", &[7, 5], rng.vec(35, 1.0)).unwrap();
    let b = params.add("layer.0.bias", &[5], rng.vec(5, 1.0)).unwrap();
    let v = params.add("v", &[130], rng.vec(130, 1.0)).unwrap();
    let mut slow = rule.clone_box();
    slow.set_lr(rule.lr() * 0.5);
    let groups = vec![ParamGroup::from_boxed(rule.clone_box(), [w, v]), ParamGroup::from_boxed(slow, [b])];
    (params, groups, vec![w, b, v])
}

fn gradient(step: usize, id: TensorId, len: usize, poison: bool) -> Vec<f32> {
    let mut g = Rng::new(1000 * step as u64 + id.index() as u64).vec(len, 1.0);
    if poison && step == 2 && id.index() == 2 {
        g[7] = f32::NAN; // skipped by the conditioning, before the save
    }
    g
}

fn bits(checkpoint: &Checkpoint) -> Vec<(String, Vec<u32>)> {
    checkpoint.tensors.iter().map(|t| (t.name.clone(), t.data.iter().map(|x| x.to_bits()).collect())).collect()
}

fn gpu_run(gpu: &GpuContext, rule: &dyn UpdateRule, gradients: &GradientOptions, steps: std::ops::Range<usize>, resume: Option<&PathBuf>, save: Option<&PathBuf>) -> Checkpoint {
    let (params, groups, ids) = model(rule);
    let options = OptimizerOptions { gradients: gradients.clone(), ..Default::default() };
    let mut opt = Optimizer::with_options(gpu, params, groups, options).unwrap();
    if let Some(path) = resume {
        let schedule = opt.load_checkpoint(path).unwrap();
        assert_eq!(schedule, Some(serde_json::json!({"last_epoch": SAVED_AT})));
    }
    for step in steps {
        for &id in &ids {
            opt.write_grad(id, &gradient(step, id, opt.param(id).unwrap().len, gradients.skip_nonfinite)).unwrap();
        }
        opt.step_and_submit().unwrap();
    }
    if let Some(path) = save {
        opt.save_checkpoint(path, Some(serde_json::json!({"last_epoch": SAVED_AT}))).unwrap();
    }
    opt.checkpoint(None).unwrap()
}

fn cpu_run(rule: &dyn UpdateRule, gradients: &GradientOptions, steps: std::ops::Range<usize>, resume: Option<&Checkpoint>) -> Checkpoint {
    let (params, groups, ids) = model(rule);
    let lens: Vec<usize> = ids.iter().map(|&id| params.spec(id).unwrap().data.len()).collect();
    let mut opt = CpuOptimizer::with_gradients(params, groups, gradients.clone()).unwrap();
    if let Some(checkpoint) = resume {
        opt.restore(checkpoint).unwrap();
    }
    for step in steps {
        for (&id, &len) in ids.iter().zip(&lens) {
            opt.write_grad(id, &gradient(step, id, len, gradients.skip_nonfinite)).unwrap();
        }
        opt.step();
    }
    opt.checkpoint(None)
}

#[test]
fn resuming_is_bit_exact_for_every_rule() {
    let conditioned = GradientOptions {
        clip_grad_norm: Some(ClipGradNorm { max_norm: 2.0, norm_type: 2.0, error_if_nonfinite: false }),
        skip_nonfinite: true,
        loss_scale: Some(LossScale { init_scale: 1.0, growth_interval: 3, ..LossScale::default() }),
        ..Default::default()
    };
    for rule in rules() {
        for gradients in [GradientOptions::default(), conditioned.clone()] {
            let context = format!("{} (conditioned: {})", rule.name(), gradients.is_active());
            for gpu in gpus() {
                let path = scratch(&format!("{}-{}-{:?}.safetensors", rule.name(), gradients.is_active(), gpu.adapter().backend));
                let straight = gpu_run(gpu, rule.as_ref(), &gradients, 0..STEPS, None, None);
                gpu_run(gpu, rule.as_ref(), &gradients, 0..SAVED_AT, None, Some(&path));
                let resumed = gpu_run(gpu, rule.as_ref(), &gradients, SAVED_AT..STEPS, Some(&path), None);
                assert_eq!(bits(&resumed), bits(&straight), "{context} on {}", gpu.adapter());
                assert_eq!(resumed.counters, straight.counters, "{context}");
                if gradients.is_active() {
                    assert_eq!(straight.counters.skipped_steps, 1, "the poisoned step was skipped");
                }
            }
            let straight = cpu_run(rule.as_ref(), &gradients, 0..STEPS, None);
            let saved = cpu_run(rule.as_ref(), &gradients, 0..SAVED_AT, None);
            let path = scratch(&format!("{}-{}-cpu.safetensors", rule.name(), gradients.is_active()));
            saved.save(&path).unwrap();
            let resumed = cpu_run(rule.as_ref(), &gradients, SAVED_AT..STEPS, Some(&Checkpoint::load(&path).unwrap()));
            assert_eq!(bits(&resumed), bits(&straight), "{context} on the CPU reference");
        }
    }
}

#[test]
fn checkpoints_use_torch_state_names() {
    let rule = Adam { amsgrad: true, ..Adam::default() };
    let checkpoint = cpu_run(&rule, &GradientOptions::default(), 0..3, None);
    let path = scratch("names.safetensors");
    checkpoint.save(&path).unwrap();
    let names: Vec<String> = read_safetensors(&path).unwrap().into_iter().map(|t| t.name).collect();
    for key in ["layer.0.weight", "layer.0.weight.exp_avg", "layer.0.weight.exp_avg_sq", "layer.0.weight.max_exp_avg_sq", "layer.0.weight.step", "v.step"] {
        assert!(names.iter().any(|n| n == key), "{key} in {names:?}");
    }
    let step = checkpoint.tensor("v.step").unwrap();
    assert_eq!((step.shape.clone(), step.data.clone()), (vec![], vec![3.0]), "0-d float32, as torch keeps it");
    let nadam = cpu_run(&NAdam::default(), &GradientOptions::default(), 0..3, None);
    assert_eq!(nadam.tensor("v.mu_product").unwrap().shape, Vec::<usize>::new());
}

/// Expects `load` to fail with `message` and the optimizer to be unchanged.
fn rejected(path: &PathBuf, rule: &dyn UpdateRule, gradients: GradientOptions, message: &str) {
    let (params, groups, ids) = model(rule);
    let mut cpu = CpuOptimizer::with_gradients(params.clone(), groups.clone(), gradients.clone()).unwrap();
    let before = cpu.checkpoint(None);
    let error = Checkpoint::load(path).and_then(|c| cpu.restore(&c)).expect_err("rejected").to_string();
    assert!(error.contains(message), "expected {message:?} in: {error}");
    assert_eq!(cpu.checkpoint(None), before, "nothing changed");
    for gpu in gpus() {
        let options = OptimizerOptions { gradients: gradients.clone(), ..Default::default() };
        let mut opt = Optimizer::with_options(gpu, params.clone(), groups.clone(), options).unwrap();
        let before = opt.read_param(ids[0]).unwrap();
        let error = opt.load_checkpoint(path).expect_err("rejected").to_string();
        assert!(error.contains(message), "expected {message:?} in: {error}");
        assert_eq!(opt.read_param(ids[0]).unwrap(), before, "nothing changed");
        assert_eq!(opt.counters().unwrap().applied_steps, 0);
    }
}

#[test]
fn a_checkpoint_brings_its_flags_as_torchs_load_state_dict_does() {
    // Saved by SGD with nesterov and maximize, resumed into an optimizer built without them:
    // the checkpoint's hyper-parameters win (other pipelines), and the run continues exactly.
    let flagged = Sgd { lr: 0.05, momentum: 0.9, nesterov: true, maximize: true, ..Sgd::default() };
    let plain = Sgd { lr: 0.05, momentum: 0.9, ..Sgd::default() };
    let gradients = GradientOptions::default();
    for gpu in gpus() {
        let path = scratch(&format!("flags-{:?}.safetensors", gpu.adapter().backend));
        let straight = gpu_run(gpu, &flagged, &gradients, 0..STEPS, None, None);
        gpu_run(gpu, &flagged, &gradients, 0..SAVED_AT, None, Some(&path));
        let resumed = gpu_run(gpu, &plain, &gradients, SAVED_AT..STEPS, Some(&path), None);
        assert_eq!(bits(&resumed), bits(&straight), "{}", gpu.adapter());
        assert_eq!(resumed.groups[0].hyperparameters["nesterov"], true);
    }
    let straight = cpu_run(&flagged, &gradients, 0..STEPS, None);
    let saved = cpu_run(&flagged, &gradients, 0..SAVED_AT, None);
    let resumed = cpu_run(&plain, &gradients, SAVED_AT..STEPS, Some(&saved));
    assert_eq!(bits(&resumed), bits(&straight), "the CPU reference");
}

#[test]
fn checkpoints_that_do_not_fit_are_rejected() {
    let adam = Adam { amsgrad: true, ..Adam::default() };
    let good = scratch("good.safetensors");
    cpu_run(&adam, &GradientOptions::default(), 0..2, None).save(&good).unwrap();

    rejected(&good, &Sgd::default(), GradientOptions::default(), "it holds Adam state, this optimizer is SGD");
    rejected(&good, &Adam::default(), GradientOptions::default(), "would keep the state [\"exp_avg\", \"exp_avg_sq\", \"max_exp_avg_sq\"]");
    rejected(&good, &adam, GradientOptions { skip_nonfinite: true, ..Default::default() }, "gradient conditioning");

    let mut renamed = Checkpoint::load(&good).unwrap();
    renamed.groups[0].params[1] = "w".into();
    let path = scratch("renamed.safetensors");
    renamed.save(&path).unwrap();
    rejected(&path, &adam, GradientOptions::default(), "group 0 holds [\"layer.0.weight\", \"w\"]");

    let mut reshaped = Checkpoint::load(&good).unwrap();
    for t in reshaped.tensors.iter_mut().filter(|t| t.name.starts_with("layer.0.bias")) {
        if !t.shape.is_empty() {
            t.shape = vec![1, 5];
        }
    }
    let path = scratch("reshaped.safetensors");
    reshaped.save(&path).unwrap();
    rejected(&path, &adam, GradientOptions::default(), "\"layer.0.bias\" has shape [1, 5]");

    let bytes = std::fs::read(&good).unwrap();
    let path = scratch("truncated.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    rejected(&path, &adam, GradientOptions::default(), "truncated.safetensors");

    let path = scratch("garbage.safetensors");
    std::fs::write(&path, b"this is not a checkpoint at all").unwrap();
    rejected(&path, &adam, GradientOptions::default(), "garbage.safetensors");

    let field = b"\"version\":\"2\"";
    let at = bytes.windows(field.len()).position(|w| w == field).expect("the header names the version");
    let mut newer = bytes.clone();
    newer[at + field.len() - 2] = b'9';
    let path = scratch("newer.safetensors");
    std::fs::write(&path, newer).unwrap();
    rejected(&path, &adam, GradientOptions::default(), "format version 9 is newer than this build reads (2)");

    let path = scratch("plain.safetensors");
    wgpu_optim::replay::write_safetensors(&path, &Checkpoint::load(&good).unwrap().tensors).unwrap();
    rejected(&path, &adam, GradientOptions::default(), "not a wgpu-optim checkpoint");
}

/// NAdam's `mu_product` is a product over steps of terms in `betas[0]`, which CyclicLR and
/// OneCycleLR cycle: a resume must continue the saved product, not recompute it with the
/// current `betas[0]`.
#[test]
fn nadam_resumes_its_mu_product_under_a_cycled_momentum() {
    let rule = NAdam { lr: 0.01, ..NAdam::default() };
    let beta1 = |step: usize| 0.95 - 0.02 * (step % 4) as f64;
    let gpu_steps = |gpu: &GpuContext, steps: std::ops::Range<usize>, resume: Option<&Checkpoint>| {
        let (params, groups, ids) = model(&rule);
        let mut opt = Optimizer::new(gpu, params, groups).unwrap();
        if let Some(checkpoint) = resume {
            opt.restore(checkpoint).unwrap();
        }
        for step in steps {
            for group in 0..2 {
                opt.set_cycled_momentum(group, beta1(step)).unwrap();
            }
            for &id in &ids {
                opt.write_grad(id, &gradient(step, id, opt.param(id).unwrap().len, false)).unwrap();
            }
            opt.step_and_submit().unwrap();
        }
        opt.checkpoint(None).unwrap()
    };
    let cpu_steps = |steps: std::ops::Range<usize>, resume: Option<&Checkpoint>| {
        let (params, groups, ids) = model(&rule);
        let lens: Vec<usize> = ids.iter().map(|&id| params.spec(id).unwrap().data.len()).collect();
        let mut opt = CpuOptimizer::new(params, groups).unwrap();
        if let Some(checkpoint) = resume {
            opt.restore(checkpoint).unwrap();
        }
        for step in steps {
            for group in 0..2 {
                opt.set_cycled_momentum(group, beta1(step)).unwrap();
            }
            for (&id, &len) in ids.iter().zip(&lens) {
                opt.write_grad(id, &gradient(step, id, len, false)).unwrap();
            }
            opt.step();
        }
        opt.checkpoint(None)
    };
    // torch's mu_product after SAVED_AT steps: the float32 product of each step's mu_t.
    let mu = |step: usize| beta1(step) * (1.0 - 0.5 * 0.96f64.powf((step + 1) as f64 * 0.004));
    let expected = (0..SAVED_AT).fold(1.0f32, |product, step| product * mu(step) as f32);
    let saved = cpu_steps(0..SAVED_AT, None);
    let mu_product = saved.tensors.iter().find(|t| t.name == "v.mu_product").expect("v.mu_product");
    assert_eq!(mu_product.data, vec![expected], "the running product, not one recomputed with the last betas[0]");
    let path = scratch("nadam-cycled.safetensors");
    saved.save(&path).unwrap();
    let straight = cpu_steps(0..STEPS, None);
    let resumed = cpu_steps(SAVED_AT..STEPS, Some(&Checkpoint::load(&path).unwrap()));
    assert_eq!(bits(&resumed), bits(&straight), "on the CPU reference");
    for gpu in gpus() {
        let saved = gpu_steps(gpu, 0..SAVED_AT, None);
        let straight = gpu_steps(gpu, 0..STEPS, None);
        let resumed = gpu_steps(gpu, SAVED_AT..STEPS, Some(&saved));
        assert_eq!(bits(&resumed), bits(&straight), "on {}", gpu.adapter());
    }
}
