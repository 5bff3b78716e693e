//! Bad input gets a clear error and changes nothing: the hyper-parameters torch rejects,
//! inconsistent parameter groups, mismatched sizes, unknown names.

use serde_json::json;
use wgpu_optim::rules::{
    from_config, Adadelta, Adagrad, Adam, AdamW, AdamWScheduleFree, Adamax, Adan, Asgd, Lion, NAdam, RAdam, RMSprop, Rprop, Sgd,
    SparseAdam,
};
use wgpu_optim::{CpuOptimizer, Error, Optimizer, ParamGroup, Parameters, UpdateRule};

use crate::common::gpus;

fn rejects(rule: &dyn UpdateRule, name: &str) {
    match rule.validate() {
        Err(Error::InvalidHyperparameter { name: got, .. }) => assert_eq!(got, name, "{rule:?}"),
        other => panic!("{rule:?} should be rejected for {name}, got {other:?}"),
    }
}

#[test]
fn torch_rejections_are_errors() {
    rejects(&Sgd { lr: -0.1, ..Sgd::default() }, "lr");
    rejects(&Sgd { momentum: -0.5, ..Sgd::default() }, "momentum");
    rejects(&Sgd { weight_decay: -1e-4, ..Sgd::default() }, "weight_decay");
    rejects(&Sgd { nesterov: true, ..Sgd::default() }, "nesterov");
    rejects(&Sgd { nesterov: true, momentum: 0.9, dampening: 0.1, ..Sgd::default() }, "nesterov");
    rejects(&Adagrad { lr: -1.0, ..Adagrad::default() }, "lr");
    rejects(&Adagrad { lr_decay: -1.0, ..Adagrad::default() }, "lr_decay");
    rejects(&Adagrad { initial_accumulator_value: -0.1, ..Adagrad::default() }, "initial_accumulator_value");
    rejects(&Adagrad { eps: -1e-10, ..Adagrad::default() }, "eps");
    rejects(&RMSprop { alpha: -0.9, ..RMSprop::default() }, "alpha");
    rejects(&RMSprop { momentum: -0.9, ..RMSprop::default() }, "momentum");
    rejects(&RMSprop { eps: -1.0, ..RMSprop::default() }, "eps");
    rejects(&Adadelta { rho: 1.5, ..Adadelta::default() }, "rho");
    rejects(&Adadelta { rho: -0.1, ..Adadelta::default() }, "rho");
    rejects(&Adadelta { weight_decay: -1.0, ..Adadelta::default() }, "weight_decay");
    rejects(&Adam { betas: (1.0, 0.999), ..Adam::default() }, "betas[0]");
    rejects(&Adam { betas: (0.9, -0.1), ..Adam::default() }, "betas[1]");
    rejects(&Adam { eps: -1e-8, ..Adam::default() }, "eps");
    rejects(&Adam { weight_decay: -1e-2, ..Adam::default() }, "weight_decay");
    rejects(&AdamW { lr: -1e-3, ..AdamW::default() }, "lr");
    rejects(&AdamW { betas: (0.9, 1.0), ..AdamW::default() }, "betas[1]");
    rejects(&NAdam { momentum_decay: -1e-3, ..NAdam::default() }, "momentum_decay");
    rejects(&NAdam { betas: (1.2, 0.999), ..NAdam::default() }, "betas[0]");
    rejects(&Adamax { betas: (1.0, 0.999), ..Adamax::default() }, "betas[0]");
    rejects(&Adamax { eps: -1e-8, ..Adamax::default() }, "eps");
    rejects(&Adamax { weight_decay: -1e-2, ..Adamax::default() }, "weight_decay");
    rejects(&RAdam { betas: (0.9, 1.0), ..RAdam::default() }, "betas[1]");
    rejects(&RAdam { lr: -1e-3, ..RAdam::default() }, "lr");
    rejects(&Rprop { etas: (1.0, 1.2), ..Rprop::default() }, "etas");
    rejects(&Rprop { etas: (0.0, 1.2), ..Rprop::default() }, "etas");
    rejects(&Rprop { etas: (0.5, 1.0), ..Rprop::default() }, "etas");
    assert_eq!(
        Rprop { etas: (0.5, 1.0), ..Rprop::default() }.validate().unwrap_err().to_string(),
        "Rprop: invalid etas value: 0.5, 1 (must satisfy 0 < etas[0] < 1 < etas[1])"
    );
    rejects(&Rprop { lr: -1e-2, ..Rprop::default() }, "lr");
    rejects(&Lion { lr: -1e-4, ..Lion::default() }, "lr");
    rejects(&Lion { betas: (1.1, 0.99), ..Lion::default() }, "betas[0]");
    rejects(&Lion { betas: (0.9, -0.1), ..Lion::default() }, "betas[1]");
    rejects(&Asgd { lr: -1e-2, ..Asgd::default() }, "lr");
    rejects(&Asgd { weight_decay: -1e-4, ..Asgd::default() }, "weight_decay");
    rejects(&Asgd { t0: f64::NAN, ..Asgd::default() }, "t0");
    rejects(&Adan { betas: (0.98, 1.0, 0.99), ..Adan::default() }, "betas[1]");
    rejects(&Adan { eps: -1e-8, ..Adan::default() }, "eps");
    rejects(&Adan { max_grad_norm: -1.0, ..Adan::default() }, "max_grad_norm");
    // The reference's global clip is not supported: a clear error, not a silent difference.
    rejects(&Adan { max_grad_norm: 1.0, ..Adan::default() }, "max_grad_norm");
    assert!(from_config("Adan", &json!({"max_grad_norm": 1.0})).unwrap_err().to_string().contains("not supported"));
    // SparseAdam checks 0 < lr and 0 < eps, strictly (Adam allows 0).
    rejects(&SparseAdam { lr: 0.0, ..SparseAdam::default() }, "lr");
    rejects(&SparseAdam { eps: 0.0, ..SparseAdam::default() }, "eps");
    rejects(&SparseAdam { betas: (0.9, 1.0), ..SparseAdam::default() }, "betas[1]");
    // schedulefree validates nothing; its eval() divides by betas[0] and its arithmetic
    // needs the rest finite and in range.
    rejects(&AdamWScheduleFree { betas: (0.0, 0.999), ..AdamWScheduleFree::default() }, "betas[0]");
    rejects(&AdamWScheduleFree { betas: (0.9, 1.0), ..AdamWScheduleFree::default() }, "betas[1]");
    rejects(&AdamWScheduleFree { lr: -1.0, ..AdamWScheduleFree::default() }, "lr");
    rejects(&AdamWScheduleFree { r: f64::NAN, ..AdamWScheduleFree::default() }, "r");
    rejects(&AdamWScheduleFree { weight_lr_power: f64::INFINITY, ..AdamWScheduleFree::default() }, "weight_lr_power");
    assert!(from_config("AdamWScheduleFree", &json!({"warmup_steps": -1})).is_err(), "warmup_steps is a count");
    // Non-finite values poison every parameter: rejected although torch lets some pass.
    rejects(&Sgd { lr: f64::NAN, ..Sgd::default() }, "lr");
    rejects(&Adam { lr: f64::INFINITY, ..Adam::default() }, "lr");
    rejects(&Sgd { dampening: f64::NAN, ..Sgd::default() }, "dampening");
}

#[test]
fn torch_boundary_values_are_accepted() {
    for rule in [
        Box::new(Adam { betas: (0.0, 0.0), lr: 0.0, eps: 0.0, ..Adam::default() }) as Box<dyn UpdateRule>,
        Box::new(Adadelta { rho: 1.0, ..Adadelta::default() }),
        Box::new(Lion { betas: (1.0, 0.0), ..Lion::default() }), // lion-pytorch: 0 <= beta <= 1
        Box::new(Lion { lr: 0.0, ..Lion::default() }), // a scheduled lr may reach 0 (see Lion::validate)
        Box::new(Rprop { etas: (0.01, 10.0), ..Rprop::default() }),
        Box::new(Adadelta { rho: 0.0, ..Adadelta::default() }),
        Box::new(Sgd { nesterov: true, momentum: 0.9, ..Sgd::default() }),
        Box::new(Sgd { dampening: -0.5, momentum: 0.9, ..Sgd::default() }), // torch does not check dampening
    ] {
        rule.validate().unwrap_or_else(|e| panic!("{rule:?}: {e}"));
    }
}

#[test]
fn defaults_are_torchs() {
    assert_eq!(Sgd::default().lr, 1e-3);
    assert_eq!(Adagrad::default().eps, 1e-10);
    assert_eq!((RMSprop::default().lr, RMSprop::default().alpha), (1e-2, 0.99));
    assert_eq!((Adadelta::default().lr, Adadelta::default().rho, Adadelta::default().eps), (1.0, 0.9, 1e-6));
    assert_eq!((Adam::default().betas, Adam::default().eps, Adam::default().weight_decay), ((0.9, 0.999), 1e-8, 0.0));
    assert_eq!(AdamW::default().weight_decay, 1e-2);
    assert_eq!((NAdam::default().lr, NAdam::default().momentum_decay), (2e-3, 4e-3));
    assert_eq!((Adamax::default().lr, Adamax::default().betas, Adamax::default().eps), (2e-3, (0.9, 0.999), 1e-8));
    assert_eq!((RAdam::default().lr, RAdam::default().betas, RAdam::default().decoupled_weight_decay), (1e-3, (0.9, 0.999), false));
    assert_eq!((Rprop::default().lr, Rprop::default().etas, Rprop::default().step_sizes), (1e-2, (0.5, 1.2), (1e-6, 50.0)));
    let asgd = Asgd::default();
    assert_eq!((asgd.lr, asgd.lambd, asgd.alpha, asgd.t0, asgd.weight_decay, asgd.maximize), (1e-2, 1e-4, 0.75, 1e6, 0.0, false));
    // sail-sg/Adan's Adan.
    let adan = Adan::default();
    assert_eq!((adan.lr, adan.betas, adan.eps, adan.weight_decay, adan.max_grad_norm, adan.no_prox), (1e-3, (0.98, 0.92, 0.99), 1e-8, 0.0, 0.0, false));
    let sparse = SparseAdam::default();
    assert_eq!((sparse.lr, sparse.betas, sparse.eps, sparse.maximize), (1e-3, (0.9, 0.999), 1e-8, false));
    // schedulefree 1.4.1's AdamWScheduleFree.
    let sf = AdamWScheduleFree::default();
    assert_eq!((sf.lr, sf.betas, sf.eps, sf.weight_decay), (0.0025, (0.9, 0.999), 1e-8, 0.0));
    assert_eq!((sf.warmup_steps, sf.r, sf.weight_lr_power), (0, 0.0, 2.0));
    // lion-pytorch's Lion.
    assert_eq!((Lion::default().lr, Lion::default().betas, Lion::default().weight_decay), (1e-4, (0.9, 0.99), 0.0));
}

#[test]
fn configs_reject_unknown_names_and_types() {
    let message = |r: Result<Box<dyn UpdateRule>, Error>| r.unwrap_err().to_string();
    assert!(message(from_config("Yogi", &json!({}))).contains("unknown optimizer \"Yogi\""));
    assert!(message(from_config("Adam", &json!({"beta1": 0.9}))).contains("unknown field `beta1`"));
    assert!(message(from_config("Adam", &json!({"betas": 0.9}))).contains("at \"betas\""));
    assert!(message(from_config("SGD", &json!({"lr": "fast"}))).contains("invalid type"));
    assert!(message(from_config("SGD", &json!({"lr": -1.0}))).contains("invalid lr"));
    // lion-pytorch's decoupled_weight_decay (weight_decay / the constructor's lr) is not supported.
    assert!(message(from_config("Lion", &json!({"decoupled_weight_decay": true}))).contains("unknown field `decoupled_weight_decay`"));
    let rule = from_config("AdamW", &json!({"lr": 3e-4, "betas": [0.9, 0.95], "amsgrad": true})).unwrap();
    assert_eq!(rule.hyperparameters()["betas"], json!([0.9, 0.95]));
    assert_eq!(rule.hyperparameters()["weight_decay"], json!(0.01));
}

fn two_tensors() -> (Parameters, wgpu_optim::TensorId, wgpu_optim::TensorId) {
    let mut params = Parameters::new();
    let w = params.add("w", &[3], vec![1.0, 2.0, 3.0]).unwrap();
    let b = params.zeros("b", &[2]).unwrap();
    (params, w, b)
}

#[test]
fn inconsistent_groups_are_errors() {
    let (params, w, b) = two_tensors();
    let errors = [
        (vec![ParamGroup::new(Sgd::default(), [w])], "\"b\" is in no parameter group"),
        (vec![ParamGroup::new(Sgd::default(), [w, b]), ParamGroup::new(Sgd::default(), [b])], "more than one parameter group"),
        (vec![ParamGroup::new(Sgd::default(), [w, b]), ParamGroup::new(Sgd::default(), [])], "has no tensors"),
        (vec![ParamGroup::new(Sgd { lr: -1.0, ..Sgd::default() }, [w, b])], "invalid lr"),
        (vec![], "at least one parameter group"),
    ];
    for (groups, expected) in errors {
        let cpu = CpuOptimizer::new(params.clone(), groups.clone()).err().expect("rejected").to_string();
        assert!(cpu.contains(expected), "{cpu}");
        for gpu in gpus() {
            let message = Optimizer::new(gpu, params.clone(), groups.clone()).err().expect("rejected").to_string();
            assert!(message.contains(expected), "{message}");
        }
    }
}

#[test]
fn bad_tensors_and_sizes_are_errors() {
    let mut params = Parameters::new();
    assert!(matches!(params.add("w", &[2, 2], vec![0.0; 3]), Err(Error::SizeMismatch { expected: 4, actual: 3, .. })));
    params.add("w", &[2], vec![0.0; 2]).unwrap();
    assert!(params.add("w", &[2], vec![0.0; 2]).unwrap_err().to_string().contains("registered twice"));
    assert!(params.add("empty", &[0, 3], vec![]).unwrap_err().to_string().contains("no elements"));
    assert!(params.add("", &[1], vec![0.0]).is_err());

    let (params, w, b) = two_tensors();
    for gpu in gpus() {
        let opt = Optimizer::new(gpu, params.clone(), vec![ParamGroup::new(Adam::default(), [w, b])]).unwrap();
        assert!(matches!(opt.write_grad(w, &[1.0; 4]), Err(Error::SizeMismatch { expected: 3, actual: 4, .. })));
        assert!(matches!(opt.write_param(b, &[1.0]), Err(Error::SizeMismatch { expected: 2, actual: 1, .. })));
        let message = opt.state(w, "momentum_buffer").unwrap_err().to_string();
        assert!(message.contains("has no state \"momentum_buffer\"") && message.contains("exp_avg"), "{message}");
        // Nothing changed.
        assert_eq!(opt.read_param(w).unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(opt.read_grad(w).unwrap(), [0.0; 3]);
    }
}

#[test]
fn set_lr_validates_and_keeps_the_old_rate_on_error() {
    let (params, w, b) = two_tensors();
    for gpu in gpus() {
        let mut opt = Optimizer::new(gpu, params.clone(), vec![ParamGroup::new(Sgd { lr: 0.1, ..Sgd::default() }, [w, b])]).unwrap();
        assert!(opt.set_lr(0, -1.0).is_err());
        assert_eq!(opt.rule(0).lr(), 0.1);
        opt.set_lr(0, 0.5).unwrap();
        opt.write_grad(w, &[1.0, 1.0, 1.0]).unwrap();
        opt.step_and_submit().unwrap();
        assert_eq!(opt.read_param(w).unwrap(), [0.5, 1.5, 2.5]);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_missing_backend_says_what_to_install() {
    let error = wgpu_optim::GpuContext::new(wgpu_optim::BackendChoice::Metal).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::NoAdapter { .. }), "{message}");
    assert!(message.contains("no metal GPU adapter found"), "{message}");
    assert!(message.contains("apt-get install -y mesa-vulkan-drivers"), "{message}");
    assert!(message.contains("adapters present:"), "{message}");
    assert!("cuda".parse::<wgpu_optim::BackendChoice>().unwrap_err().to_string().contains("expected one of auto, vulkan, gl"));
}
