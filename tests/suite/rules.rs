//! Every rule × every flag combination × three parameter groups × odd tensor sizes, 120 steps:
//! GPU (every adapter) against the CPU reference.
//!
//! Tolerance: the kernel and the CPU reference perform the same float32 operations in the
//! same order, so they differ only where the GPU rounds differently: WGSL allows division and
//! sqrt a few ulps of error, and drivers may fuse a*b+c. Each step therefore adds a few ulps
//! at the scale of the values involved; over 120 steps this stays below 2e-6 of each tensor's
//! largest magnitude (measured: see the printed table; a wrong constant or formula gives
//! errors of 1e-3 or more).

use wgpu_optim::rules::{
    Adadelta, Adagrad, Adam, AdamW, AdamWScheduleFree, Adamax, Adan, Asgd, Lion, NAdam, RAdam, Rprop, Sgd, RMSprop,
};
use wgpu_optim::{OptimizerOptions, ParamGroup, TensorId, UpdateRule};

use crate::common::{gpus, max_normwise_difference, run_cpu, run_gpu};

const STEPS: usize = 120;
const LAYOUT: &[&[usize]] = &[&[1, 65_537], &[3, 17], &[1000]];
pub const GPU_VS_CPU_TOLERANCE: f64 = 2e-6;

/// Three groups: the configuration itself, a variant from `second`, and half the lr.
fn groups<R: UpdateRule + Clone + 'static>(base: R, second: fn(&mut R)) -> Box<dyn Fn(&[Vec<TensorId>]) -> Vec<ParamGroup>> {
    Box::new(move |ids: &[Vec<TensorId>]| {
        let mut variant = base.clone();
        second(&mut variant);
        let mut slow = base.clone();
        slow.set_lr(base.lr() * 0.5);
        vec![
            ParamGroup::new(base.clone(), ids[0].clone()),
            ParamGroup::new(variant, ids[1].clone()),
            ParamGroup::new(slow, ids[2].clone()),
        ]
    })
}

type Case = (String, Box<dyn Fn(&[Vec<TensorId>]) -> Vec<ParamGroup>>);

fn bools() -> [bool; 2] {
    [false, true]
}

pub fn sgd_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for momentum in [0.0, 0.9] {
        for dampening in [0.0, 0.3] {
            for nesterov in bools() {
                for weight_decay in [0.0, 1e-2] {
                    for maximize in bools() {
                        let rule = Sgd { lr: 0.05, momentum, dampening, weight_decay, nesterov, maximize };
                        if rule.validate().is_ok() {
                            cases.push((format!("{rule:?}"), groups(rule, |r| r.weight_decay = 0.1)));
                        }
                    }
                }
            }
        }
    }
    cases
}

pub fn adagrad_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for lr_decay in [0.0, 1e-2] {
        for weight_decay in [0.0, 1e-2] {
            for initial_accumulator_value in [0.0, 0.1] {
                for maximize in bools() {
                    let rule = Adagrad { lr: 0.05, lr_decay, weight_decay, initial_accumulator_value, maximize, ..Adagrad::default() };
                    cases.push((format!("{rule:?}"), groups(rule, |r| r.eps = 1e-6)));
                }
            }
        }
    }
    cases
}

pub fn rmsprop_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for centered in bools() {
        for momentum in [0.0, 0.9] {
            for weight_decay in [0.0, 1e-2] {
                for maximize in bools() {
                    let rule = RMSprop { lr: 0.01, momentum, centered, weight_decay, maximize, ..RMSprop::default() };
                    cases.push((format!("{rule:?}"), groups(rule, |r| r.alpha = 0.9)));
                }
            }
        }
    }
    cases
}

pub fn adadelta_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for weight_decay in [0.0, 1e-2] {
        for maximize in bools() {
            let rule = Adadelta { weight_decay, maximize, ..Adadelta::default() };
            cases.push((format!("{rule:?}"), groups(rule, |r| r.rho = 0.95)));
        }
    }
    cases
}

pub fn adam_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for amsgrad in bools() {
        for maximize in bools() {
            for decoupled_weight_decay in bools() {
                for weight_decay in [0.0, 1e-2] {
                    let rule = Adam { lr: 0.01, amsgrad, maximize, decoupled_weight_decay, weight_decay, ..Adam::default() };
                    cases.push((format!("{rule:?}"), groups(rule, |r| r.betas = (0.8, 0.99))));
                }
            }
        }
    }
    for amsgrad in bools() {
        for maximize in bools() {
            for weight_decay in [0.0, 1e-2] {
                let rule = AdamW { lr: 0.01, amsgrad, maximize, weight_decay, ..AdamW::default() };
                cases.push((format!("{rule:?}"), groups(rule, |r| r.weight_decay = 0.0)));
            }
        }
    }
    cases
}

pub fn nadam_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for decoupled_weight_decay in bools() {
        for weight_decay in [0.0, 1e-2] {
            for maximize in bools() {
                let rule = NAdam { lr: 0.01, decoupled_weight_decay, weight_decay, maximize, ..NAdam::default() };
                cases.push((format!("{rule:?}"), groups(rule, |r| r.momentum_decay = 1e-2)));
            }
        }
    }
    cases
}

pub fn adamax_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for weight_decay in [0.0, 1e-2] {
        for maximize in bools() {
            let rule = Adamax { lr: 0.01, weight_decay, maximize, ..Adamax::default() };
            cases.push((format!("{rule:?}"), groups(rule, |r| r.betas = (0.8, 0.99))));
        }
    }
    cases
}

pub fn radam_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for decoupled_weight_decay in bools() {
        for weight_decay in [0.0, 1e-2] {
            for maximize in bools() {
                let rule = RAdam { lr: 0.01, decoupled_weight_decay, weight_decay, maximize, ..RAdam::default() };
                // betas (0.8, 0.9): rho_inf = 19, so the rectification starts at step 3 instead of 6.
                cases.push((format!("{rule:?}"), groups(rule, |r| r.betas = (0.8, 0.9))));
            }
        }
    }
    cases
}

pub fn rprop_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for maximize in bools() {
        for step_sizes in [(1e-6, 50.0), (1e-3, 0.02)] {
            let rule = Rprop { lr: 0.01, step_sizes, maximize, ..Rprop::default() };
            cases.push((format!("{rule:?}"), groups(rule, |r| r.etas = (0.3, 1.5))));
        }
    }
    cases
}

pub fn lion_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for weight_decay in [0.0, 0.1] {
        // beta1 0: the update is sign(g), exactly 0 where the gradient is.
        for beta1 in [0.9, 0.0] {
            let rule = Lion { lr: 1e-3, weight_decay, betas: (beta1, 0.99) };
            cases.push((format!("{rule:?}"), groups(rule, |r| r.betas = (0.95, 0.98))));
        }
    }
    cases
}

pub fn asgd_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for weight_decay in [0.0, 1e-2] {
        for maximize in bools() {
            // lambd 0.5 so that eta decays visibly; t0 50 so that the averaging (mu != 1)
            // starts within the run.
            let rule = Asgd { lr: 0.01, lambd: 0.5, t0: 50.0, weight_decay, maximize, ..Asgd::default() };
            cases.push((format!("{rule:?}"), groups(rule, |r| (r.alpha, r.t0) = (1.0, 10.0))));
        }
    }
    cases
}

pub fn adan_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for no_prox in bools() {
        for weight_decay in [0.0, 0.02] {
            let rule = Adan { lr: 0.01, weight_decay, no_prox, ..Adan::default() };
            cases.push((format!("{rule:?}"), groups(rule, |r| r.betas = (0.9, 0.9, 0.999))));
        }
    }
    cases
}

pub fn schedulefree_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for weight_decay in [0.0, 1e-2] {
        for (warmup_steps, r) in [(0, 0.0), (10, 1.0)] {
            let rule = AdamWScheduleFree { lr: 0.01, weight_decay, warmup_steps, r, ..AdamWScheduleFree::default() };
            cases.push((format!("{rule:?}"), groups(rule, |r| (r.betas, r.weight_lr_power) = ((0.8, 0.99), 0.0))));
        }
    }
    cases
}

fn check(rule: &str, cases: Vec<Case>) {
    let mut worst = (0.0f64, String::new());
    for (seed, (label, groups)) in cases.iter().enumerate() {
        let expected = run_cpu(LAYOUT, groups.as_ref(), STEPS, seed as u64);
        for gpu in gpus() {
            let actual = run_gpu(gpu, LAYOUT, groups.as_ref(), STEPS, seed as u64, OptimizerOptions::default());
            let (difference, tensor) = max_normwise_difference(&actual, &expected);
            assert!(
                difference <= GPU_VS_CPU_TOLERANCE,
                "{label} on {}: {tensor} differs from the CPU reference by {difference:.3e} (tolerance {GPU_VS_CPU_TOLERANCE:.0e})",
                gpu.adapter()
            );
            if difference > worst.0 {
                worst = (difference, format!("{label} {tensor} on {:?}", gpu.adapter().backend));
            }
        }
    }
    eprintln!("{rule}: {} configurations, worst GPU-vs-CPU difference {:.2e} ({})", cases.len(), worst.0, worst.1);
}

#[test]
fn sgd_matches_cpu_reference() {
    check("SGD", sgd_cases());
}

#[test]
fn adagrad_matches_cpu_reference() {
    check("Adagrad", adagrad_cases());
}

#[test]
fn rmsprop_matches_cpu_reference() {
    check("RMSprop", rmsprop_cases());
}

#[test]
fn adadelta_matches_cpu_reference() {
    check("Adadelta", adadelta_cases());
}

#[test]
fn adam_and_adamw_match_cpu_reference() {
    check("Adam/AdamW", adam_cases());
}

#[test]
fn nadam_matches_cpu_reference() {
    check("NAdam", nadam_cases());
}

#[test]
fn adamax_matches_cpu_reference() {
    check("Adamax", adamax_cases());
}

#[test]
fn radam_matches_cpu_reference() {
    check("RAdam", radam_cases());
}

#[test]
fn rprop_matches_cpu_reference() {
    check("Rprop", rprop_cases());
}

#[test]
fn lion_matches_cpu_reference() {
    check("Lion", lion_cases());
}

#[test]
fn asgd_matches_cpu_reference() {
    check("ASGD", asgd_cases());
}

#[test]
fn adan_matches_cpu_reference() {
    check("Adan", adan_cases());
}

#[test]
fn schedulefree_matches_cpu_reference() {
    check("AdamWScheduleFree", schedulefree_cases());
}
