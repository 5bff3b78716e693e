//! Learning-rate schedules (`wgpu_optim::schedule`) against `torch.optim.lr_scheduler`.
//!
//! `tests/golden/schedules/<Scheduler>.json` (written by `tests/golden/schedules.py`) holds,
//! for 52 parameterisations of every scheduler, the learning rates torch produced after
//! construction and after each of 1,000 steps, the momentum (`momentum` / `betas[0]`) where the
//! scheduler cycles it, and torch's `state_dict()` after 400 steps.
//!
//! Tolerance: relative 1e-12 per value (against 0, absolute 1e-12 of the sequence's largest
//! value). The schedules perform torch's f64 operations in torch's order and call the same C
//! library `cos` and `pow` that Python's `math.cos` and `**` call, so on glibc the sequences come
//! out bit-identical (the tests print the largest difference seen). What the tolerance leaves
//! room for: serde_json's default float parsing of the golden files (within an ulp), and another
//! platform's libm, whose `cos` or `pow` may round a value differently by an ulp; the chainable
//! recurrences carry such an error forward, so over 1,000 steps it can grow to about
//! 1,000 × 2⁻⁵² ≈ 2e-13. A wrong operation order shows up at ~1e-16…1e-15 only when it changes
//! rounding, which this cannot see; that is what the bit-exact checkpoint tests and the measured
//! zero difference are for; a wrong formula or quirk differs by 1e-3 or more.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use wgpu_optim::rules::{self, Adagrad, Sgd};
use wgpu_optim::schedule::{
    self, ChainedScheduler, ConstantLR, CosineAnnealingLR, CosineAnnealingWarmRestarts, CyclicLR, CyclicLRArgs, EpochFn,
    ExponentialLR, InverseTimeLR, LambdaLR, LinearLR, MultiStepLR, MultiplicativeLR, OneCycleLR, OneCycleLRArgs,
    PolynomialLR, ReduceLROnPlateau, ReduceLROnPlateauArgs, SequentialLR, StepLR,
};
use wgpu_optim::{CpuOptimizer, LearningRates, Optimizer, ParamGroup, Parameters, Scheduler};

use crate::common::gpus;

const TOLERANCE: f64 = 1e-12;

// ---- golden cases ----

struct Case {
    file: String,
    name: String,
    optimizer: Value,
    config: Value,
    metrics: Option<Vec<f64>>,
    lr: Vec<Vec<f64>>,
    momentum: Option<Vec<Vec<f64>>>,
    state_step: usize,
    state: Value,
}

impl Case {
    fn id(&self) -> String {
        format!("{}/{}", self.file, self.name)
    }

    fn groups(&self) -> usize {
        self.lr[0].len()
    }
}

fn floats(value: &Value) -> Vec<f64> {
    value.as_array().expect("a list").iter().map(|x| x.as_f64().expect("a number")).collect()
}

fn rows(value: &Value) -> Vec<Vec<f64>> {
    value.as_array().expect("a list of lists").iter().map(floats).collect()
}

fn golden_cases() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/schedules");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    let mut cases = Vec::new();
    for path in paths {
        let document: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let file = document["scheduler"].as_str().unwrap().to_string();
        for case in document["cases"].as_array().unwrap() {
            cases.push(Case {
                file: file.clone(),
                name: case["name"].as_str().unwrap().to_string(),
                optimizer: case["optimizer"].clone(),
                config: case["config"].clone(),
                metrics: case.get("metrics").map(floats),
                lr: rows(&case["lr"]),
                momentum: case.get("momentum").map(rows),
                state_step: case["state_step"].as_u64().unwrap() as usize,
                state: case["state"].clone(),
            });
        }
    }
    cases
}

/// The update rule of each group of a golden optimizer spec
/// (`{"optimizer": "SGD", "lr": [0.1, 0.01], "momentum": 0.9}`).
fn group_rules(spec: &Value) -> Vec<Box<dyn wgpu_optim::UpdateRule>> {
    let mut hyperparameters = spec.as_object().unwrap().clone();
    let name = hyperparameters.remove("optimizer").unwrap();
    let lrs = floats(&hyperparameters.remove("lr").unwrap());
    lrs.iter()
        .map(|&lr| {
            let mut group = hyperparameters.clone();
            group.insert("lr".into(), json!(lr));
            rules::from_config(name.as_str().unwrap(), &Value::Object(group)).unwrap()
        })
        .collect()
}

fn cpu_optimizer(spec: &Value) -> CpuOptimizer {
    let mut params = Parameters::new();
    let groups = group_rules(spec)
        .into_iter()
        .enumerate()
        .map(|(g, rule)| ParamGroup::from_boxed(rule, vec![params.add(&format!("w{g}"), &[3], vec![0.5; 3]).unwrap()]))
        .collect();
    CpuOptimizer::new(params, groups).unwrap()
}

fn gpu_optimizer(gpu: &wgpu_optim::GpuContext, spec: &Value) -> Optimizer {
    let mut params = Parameters::new();
    let groups = group_rules(spec)
        .into_iter()
        .enumerate()
        .map(|(g, rule)| ParamGroup::from_boxed(rule, vec![params.add(&format!("w{g}"), &[5], vec![0.5; 5]).unwrap()]))
        .collect();
    Optimizer::new(gpu, params, groups).unwrap()
}

/// The functions `tests/golden/schedules.py` names in `LAMBDAS`, in Rust.
fn lambda(name: &str) -> EpochFn {
    match name {
        "pow095" => Arc::new(|e| 0.95f64.powf(e as f64)),
        "floordiv30" => Arc::new(|e| (e / 30) as f64),
        "warmup_rsqrt" => Arc::new(|e| ((e + 1) as f64 / 10.0).min((10.0 / (e + 1) as f64).powf(0.5))),
        "const0995" => Arc::new(|_| 0.995),
        "halve_every_100" => Arc::new(|e| if e % 100 == 0 { 0.5 } else { 1.0 }),
        other => panic!("no Rust version of lambda {other:?}"),
    }
}

/// A golden case's scheduler: a [`Scheduler`], or `ReduceLROnPlateau` (stepped with a metric).
enum Built {
    Schedule(Box<dyn Scheduler>),
    Plateau(ReduceLROnPlateau),
}

impl Built {
    fn new(config: &Value, opt: &mut dyn LearningRates) -> wgpu_optim::Result<Self> {
        let name = config["name"].as_str().unwrap();
        let lambdas = || -> Vec<EpochFn> {
            match &config["lr_lambda"] {
                Value::String(one) => vec![lambda(one); opt.group_count()],
                each => each.as_array().unwrap().iter().map(|n| lambda(n.as_str().unwrap())).collect(),
            }
        };
        Ok(match name {
            "LambdaLR" => {
                let functions = lambdas();
                Built::Schedule(Box::new(LambdaLR::per_group(opt, functions)?))
            }
            "MultiplicativeLR" => {
                let functions = lambdas();
                Built::Schedule(Box::new(MultiplicativeLR::per_group(opt, functions)?))
            }
            "ReduceLROnPlateau" => Built::Plateau(ReduceLROnPlateau::from_config(config, opt)?),
            _ => Built::Schedule(schedule::from_config(config, opt)?),
        })
    }

    /// Step `step` (1-based) of a golden run.
    fn step(&mut self, opt: &mut dyn LearningRates, case: &Case, step: usize) -> wgpu_optim::Result<()> {
        match self {
            Built::Schedule(s) => s.step(opt),
            Built::Plateau(p) => p.step(opt, case.metrics.as_ref().unwrap()[step - 1]),
        }
    }

    fn last_lr(&self) -> Vec<f64> {
        match self {
            Built::Schedule(s) => s.last_lr().to_vec(),
            Built::Plateau(p) => p.last_lr().to_vec(),
        }
    }

    fn state(&self) -> Value {
        match self {
            Built::Schedule(s) => s.state(),
            Built::Plateau(p) => p.state(),
        }
    }

    fn load_state(&mut self, state: &Value) -> wgpu_optim::Result<()> {
        match self {
            Built::Schedule(s) => s.load_state(state),
            Built::Plateau(p) => p.load_state(state),
        }
    }
}

fn momenta(opt: &dyn LearningRates) -> Vec<f64> {
    (0..opt.group_count()).map(|g| opt.cycled_momentum(g).expect("a momentum").value).collect()
}

fn lrs(opt: &dyn LearningRates) -> Vec<f64> {
    (0..opt.group_count()).map(|g| opt.lr(g)).collect()
}

/// What a run produced: the learning rates (and momenta) after construction or `from`, then
/// after each step; and the step that failed, if one did.
#[derive(Default)]
struct Trace {
    lr: Vec<Vec<f64>>,
    momentum: Vec<Vec<f64>>,
    refused: Option<(usize, String)>,
}

impl Trace {
    /// How many of the case's values from `from` on this run must reproduce: all of them, or,
    /// where the run stopped, those before the step it refused. The one refusal allowed is
    /// documented: torch's last OneCycleLR step with linear annealing sets a negative learning
    /// rate, which the optimizers here do not take.
    fn expected_len(&self, case: &Case, from: usize) -> usize {
        match &self.refused {
            None => case.lr.len() - from,
            Some((step, message)) => {
                assert!(
                    case.lr[*step].iter().any(|&lr| lr < 0.0) && message.contains("negative learning rate"),
                    "{} step {step}: {message}",
                    case.id()
                );
                step - from
            }
        }
    }
}

/// Steps `built` from step `from` (0: just built) to the case's end, recording what it sets.
fn trace(case: &Case, built: &mut Built, opt: &mut dyn LearningRates, from: usize) -> Trace {
    let mut trace = Trace::default();
    let record = |built: &Built, opt: &dyn LearningRates, trace: &mut Trace| {
        let last = built.last_lr();
        assert_eq!(last, lrs(opt), "{}: last_lr is what the optimizer holds", case.id());
        trace.lr.push(last);
        if case.momentum.is_some() {
            trace.momentum.push(momenta(opt));
        }
    };
    record(built, opt, &mut trace);
    for step in from + 1..case.lr.len() {
        if let Err(error) = built.step(opt, case, step) {
            trace.refused = Some((step, error.to_string()));
            break;
        }
        record(built, opt, &mut trace);
    }
    trace
}

/// Relative difference, or absolute against 0 at the sequence's scale.
fn difference(actual: f64, expected: f64, scale: f64) -> f64 {
    if expected == 0.0 {
        actual.abs() / scale.max(f64::MIN_POSITIVE)
    } else {
        ((actual - expected) / expected).abs()
    }
}

/// Largest difference between two sequences of per-group values; panics past the tolerance.
fn compare(what: &str, actual: &[Vec<f64>], expected: &[Vec<f64>]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "{what}: number of steps");
    let scale = expected.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut worst = 0.0f64;
    for (step, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a.len(), e.len(), "{what}: groups at step {step}");
        for (g, (&a, &e)) in a.iter().zip(e).enumerate() {
            let d = difference(a, e, scale);
            assert!(d <= TOLERANCE, "{what}: step {step}, group {g}: {a:e} vs torch {e:e} (difference {d:.2e})");
            worst = worst.max(d);
        }
    }
    worst
}

// ---- against torch ----

#[test]
fn golden_cases_cover_every_scheduler() {
    let cases = golden_cases();
    assert_eq!(cases.len(), 52);
    let mut names: Vec<&str> = schedule::CONFIG_SCHEDULER_NAMES.to_vec();
    names.extend(["LambdaLR", "MultiplicativeLR", "ReduceLROnPlateau"]);
    for name in names {
        let of_name: Vec<&Case> = cases.iter().filter(|c| c.file == name).collect();
        assert!(of_name.len() >= 2, "{name} has several golden cases");
        assert!(of_name.iter().any(|c| c.groups() == 2), "{name} has a case with two parameter groups");
        assert!(of_name.iter().all(|c| c.lr.len() == 1001), "{name}: 1,000 steps");
    }
}

#[test]
fn every_golden_schedule_matches_torch_on_the_cpu_optimizer() {
    let mut worst = (0.0f64, String::new());
    for case in golden_cases() {
        let mut opt = cpu_optimizer(&case.optimizer);
        let mut built = Built::new(&case.config, &mut opt).unwrap_or_else(|e| panic!("{}: {e}", case.id()));
        let run = trace(&case, &mut built, &mut opt, 0);
        let n = run.expected_len(&case, 0);
        let mut d = compare(&format!("{} lr", case.id()), &run.lr, &case.lr[..n]);
        if let Some(expected) = &case.momentum {
            d = d.max(compare(&format!("{} momentum", case.id()), &run.momentum, &expected[..n]));
        }
        if d >= worst.0 {
            worst = (d, case.id());
        }
    }
    eprintln!("largest difference from torch over every golden schedule: {:.2e} ({})", worst.0, worst.1);
}

#[test]
fn inverse_time_decay_stays_on_its_closed_form() {
    let mut opt = cpu_optimizer(&json!({"optimizer": "SGD", "lr": [0.1, 0.02]}));
    let mut schedule = InverseTimeLR::new(&mut opt, 0.05).unwrap();
    for epoch in 1..=1000u32 {
        schedule.step(&mut opt).unwrap();
        for (lr, base) in schedule.last_lr().iter().zip([0.1, 0.02]) {
            let closed = base / (1.0 + 0.05 * f64::from(epoch));
            // The chainable ratios round once each: the drift stays near sqrt(1000) ulps.
            assert!(((lr - closed) / closed).abs() < 1e-13, "epoch {epoch}: {lr} vs {closed}");
        }
    }
}

/// Checks that every key of `ours` is in torch's state with the same value, and that torch's
/// other keys are its always-False bookkeeping.
fn same_state(path: &str, ours: &Value, torch: &Value) {
    match (ours, torch) {
        (Value::Object(ours), Value::Object(torch)) => {
            for (key, value) in ours {
                let theirs = torch.get(key).unwrap_or_else(|| panic!("{path}: torch's state has no {key:?}"));
                same_state(&format!("{path}.{key}"), value, theirs);
            }
            for (key, value) in torch {
                if !ours.contains_key(key) {
                    assert!(
                        ["_is_initial", "_get_lr_called_within_step"].contains(&key.as_str()) && value == &json!(false),
                        "{path}: torch's state has {key:?} = {value}, ours lacks it"
                    );
                }
            }
        }
        (Value::Array(ours), Value::Array(torch)) => {
            assert_eq!(ours.len(), torch.len(), "{path}: list length");
            for (i, (a, b)) in ours.iter().zip(torch).enumerate() {
                same_state(&format!("{path}[{i}]"), a, b);
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(difference(a, b, b.abs().max(1.0)) <= TOLERANCE, "{path}: {a} vs torch {b}");
        }
        _ => assert_eq!(ours, torch, "{path}"),
    }
}

#[test]
fn state_has_torchs_keys_and_values() {
    for case in golden_cases() {
        let mut opt = cpu_optimizer(&case.optimizer);
        let mut built = Built::new(&case.config, &mut opt).unwrap();
        for step in 1..=case.state_step {
            built.step(&mut opt, &case, step).unwrap();
        }
        same_state(&case.id(), &built.state(), &case.state);
    }
}

/// The optimizer side of a checkpoint: what torch's optimizer `state_dict` would restore.
fn restore_hyperparameters(opt: &mut dyn LearningRates, lrs: &[f64], momenta: Option<&[f64]>) {
    for (g, &lr) in lrs.iter().enumerate() {
        opt.set_lr(g, lr).unwrap();
    }
    for (g, &momentum) in momenta.into_iter().flatten().enumerate() {
        opt.set_cycled_momentum(g, momentum).unwrap();
    }
}

#[test]
fn loading_torchs_state_continues_like_torch() {
    for case in golden_cases() {
        let k = case.state_step;
        let mut opt = cpu_optimizer(&case.optimizer);
        let mut built = Built::new(&case.config, &mut opt).unwrap();
        restore_hyperparameters(&mut opt, &case.lr[k], case.momentum.as_ref().map(|m| m[k].as_slice()));
        built.load_state(&case.state).unwrap_or_else(|e| panic!("{}: loading torch's state: {e}", case.id()));
        let run = trace(&case, &mut built, &mut opt, k);
        let n = run.expected_len(&case, k);
        compare(&format!("{} lr after loading torch's state", case.id()), &run.lr, &case.lr[k..k + n]);
        if let Some(expected) = &case.momentum {
            compare(&format!("{} momentum after loading", case.id()), &run.momentum, &expected[k..k + n]);
        }
    }
}

// ---- checkpoints ----

#[test]
fn saving_and_loading_continues_bit_exactly() {
    for case in golden_cases() {
        let mut opt = cpu_optimizer(&case.optimizer);
        let mut built = Built::new(&case.config, &mut opt).unwrap();
        let whole = trace(&case, &mut built, &mut opt, 0);
        for k in [0, 1, 57, case.state_step, 999] {
            let mut opt = cpu_optimizer(&case.optimizer);
            let mut built = Built::new(&case.config, &mut opt).unwrap();
            for step in 1..=k {
                built.step(&mut opt, &case, step).unwrap();
            }
            // Through JSON text, as a checkpoint file would go.
            let saved: Value = serde_json::from_str(&built.state().to_string()).unwrap();
            let (saved_lrs, saved_momenta) = (lrs(&opt), case.momentum.as_ref().map(|_| momenta(&opt)));

            let mut resumed_opt = cpu_optimizer(&case.optimizer);
            let mut resumed = Built::new(&case.config, &mut resumed_opt).unwrap();
            restore_hyperparameters(&mut resumed_opt, &saved_lrs, saved_momenta.as_deref());
            resumed.load_state(&saved).unwrap_or_else(|e| panic!("{} at step {k}: {e}", case.id()));
            assert_eq!(resumed.state(), built.state(), "{} at step {k}: the loaded state", case.id());
            let rest = trace(&case, &mut resumed, &mut resumed_opt, k);
            assert_eq!(rest.refused.as_ref().map(|r| r.0), whole.refused.as_ref().map(|r| r.0), "{}: refused step", case.id());
            assert_eq!(rest.lr.len(), whole.lr.len() - k, "{}: steps after resuming", case.id());
            assert!(
                rest.lr.iter().zip(&whole.lr[k..]).all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())),
                "{} resumed at step {k}: learning rates differ from the uninterrupted run",
                case.id()
            );
            assert_eq!(rest.momentum, whole.momentum.get(k..).map(<[_]>::to_vec).unwrap_or_default(), "{}: momenta", case.id());
        }
    }
}

fn golden(name: &str) -> Case {
    golden_cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no golden case {name}"))
}

#[test]
fn invalid_states_are_errors_and_change_nothing() {
    let case = golden("sequentiallr-three-groups");
    let mut opt = cpu_optimizer(&case.optimizer);
    let mut built = Built::new(&case.config, &mut opt).unwrap();
    for step in 1..=30 {
        built.step(&mut opt, &case, step).unwrap();
    }
    let before = built.state();
    let mut with = |edit: &dyn Fn(&mut Value), needle: &str| {
        let mut state = before.clone();
        edit(&mut state);
        let error = built.load_state(&state).expect_err(needle).to_string();
        assert!(error.contains(needle), "{error:?} should mention {needle:?}");
        assert_eq!(built.state(), before, "a failed load changes nothing");
    };
    with(&|s| s["surprise"] = json!(1), "unknown key \"surprise\"");
    with(&|s| s["_schedulers"][2]["gamma"] = json!("half"), "gamma");
    with(&|s| s["_schedulers"][2]["step_size"] = json!(0), "step_size");
    with(&|s| s["_schedulers"][1]["base_lrs"] = json!([0.1]), "parameter groups");
    with(&|s| s["_schedulers"][0].as_object_mut().unwrap().remove("factor").map(drop).unwrap(), "factor");
    with(&|s| s["_schedulers"] = json!([{}, {}]), "schedulers");
    with(&|s| *s = json!([1, 2]), "JSON object");

    let mut opt = cpu_optimizer(&json!({"optimizer": "SGD", "lr": [0.1]}));
    let mut plateau = ReduceLROnPlateau::new(&mut opt, ReduceLROnPlateauArgs::default()).unwrap();
    let mut state = plateau.state();
    assert_eq!(state["best"], json!("inf"));
    state["mode"] = json!("sideways");
    assert!(plateau.load_state(&state).is_err());
    state["mode"] = json!("max");
    plateau.load_state(&state).unwrap();
    assert_eq!(plateau.state()["mode_worse"], json!("-inf"), "mode_worse follows the mode, as torch recomputes it");
}

// ---- configuration ----

fn sgd(lrs: &[f64]) -> CpuOptimizer {
    cpu_optimizer(&json!({"optimizer": "SGD", "lr": lrs}))
}

fn config_error(config: Value, opt: &mut CpuOptimizer) -> String {
    match schedule::from_config(&config, opt) {
        Ok(s) => panic!("{config} was accepted: {s:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn configuration_errors_say_what_is_wrong() {
    let mut opt = sgd(&[0.1, 0.01]);
    let cases = [
        (json!({"name": "StepLRR", "step_size": 3}), "unknown scheduler \"StepLRR\""),
        (json!({"step_size": 3}), "needs a \"name\""),
        (json!({"name": 3}), "must be a string"),
        (json!("StepLR"), "JSON object"),
        (json!({"name": "StepLR", "step_size": 3, "gama": 0.5}), "unknown field `gama`"),
        (json!({"name": "StepLR"}), "missing field `step_size`"),
        (json!({"name": "StepLR", "step_size": 2.5}), "step_size"),
        (json!({"name": "StepLR", "step_size": -1}), "step_size"),
        (json!({"name": "StepLR", "step_size": 3, "last_epoch": 10}), "last_epoch = 10 is not supported"),
        (json!({"name": "ExponentialLR", "gamma": "0.9"}), "gamma"),
        (json!({"name": "CosineAnnealingLR", "T_max": 0}), "T_max"),
        (json!({"name": "CosineAnnealingLR", "t_max": 10}), "unknown field `t_max`"),
        (json!({"name": "LambdaLR"}), "Rust closure"),
        (json!({"name": "MultiplicativeLR", "lr_lambda": "x"}), "Rust closure"),
        (json!({"name": "ReduceLROnPlateau"}), "needs a metric"),
        (json!({"name": "CyclicLR", "base_lr": 0.1, "max_lr": [0.2, 0.3, 0.4], "cycle_momentum": false}), "same length"),
        (json!({"name": "CyclicLR", "base_lr": 0.1, "max_lr": 1.0, "mode": "sawtooth"}), "mode"),
        (json!({"name": "CyclicLR", "base_lr": 0.1, "max_lr": 1.0, "scale_fn": "lambda x: 1"}), "CyclicLR::with_scale_fn"),
        (json!({"name": "CyclicLR", "base_lr": 0.1, "max_lr": 1.0}), "build SGD with momentum > 0"),
        (json!({"name": "OneCycleLR", "max_lr": 0.1}), "total_steps OR (epochs AND steps_per_epoch)"),
        (json!({"name": "OneCycleLR", "max_lr": 0.1, "total_steps": 10, "anneal_strategy": "cosine"}), "anneal_strategy"),
        (json!({"name": "SequentialLR", "schedulers": [{"name": "StepLR", "step_size": 2}], "milestones": [3]}), "one more scheduler"),
        (json!({"name": "SequentialLR", "schedulers": [], "milestones": []}), "at least one scheduler"),
        (json!({"name": "ChainedScheduler", "schedulers": [{"name": "ChainedScheduler", "schedulers": []}]}), "nested composites"),
        (json!({"name": "ChainedScheduler", "schedulers": [{"name": "LambdaLR"}]}), "schedulers[0]: LambdaLR"),
        (
            json!({"name": "SequentialLR", "milestones": [5, 2], "schedulers": [
                {"name": "ConstantLR"}, {"name": "ConstantLR"}, {"name": "ConstantLR"}]}),
            "increasing order",
        ),
        (json!({"name": "ChainedScheduler", "schedulers": [{"name": "ExponentialLR", "gamma": 0.9}], "optimizer": 1}), "unknown field `optimizer`"),
    ];
    for (config, needle) in cases {
        let message = config_error(config.clone(), &mut opt);
        assert!(message.contains(needle), "{config}: {message:?} should mention {needle:?}");
    }
    let plateau = ReduceLROnPlateau::from_config(&json!({"name": "ReduceLROnPlateau", "patience": 2, "cooldwn": 1}), &mut opt);
    assert!(plateau.unwrap_err().to_string().contains("unknown field `cooldwn`"));
    let plateau = ReduceLROnPlateau::from_config(&json!({"name": "StepLR", "step_size": 2}), &mut opt);
    assert!(plateau.unwrap_err().to_string().contains("\"StepLR\" configuration"));
}

#[test]
fn configuration_defaults_are_torchs() {
    let mut opt = sgd(&[0.3]);
    let state = schedule::from_config(&json!({"name": "LinearLR"}), &mut opt).unwrap().state();
    assert_eq!((state["start_factor"].as_f64(), state["end_factor"].as_f64(), state["total_iters"].as_u64()), (Some(1.0 / 3.0), Some(1.0), Some(5)));
    let state = schedule::from_config(&json!({"name": "StepLR", "step_size": 4}), &mut opt).unwrap().state();
    assert_eq!(state["gamma"], json!(0.1));
    let state = schedule::from_config(&json!({"name": "CosineAnnealingWarmRestarts", "T_0": 4}), &mut opt).unwrap().state();
    assert_eq!((state["T_mult"].as_u64(), state["eta_min"].as_f64()), (Some(1), Some(0.0)));
    let state = schedule::from_config(&json!({"name": "CyclicLR", "base_lr": 0.1, "max_lr": 1.0, "cycle_momentum": false}), &mut opt)
        .unwrap()
        .state();
    assert_eq!((state["total_size"].as_f64(), state["mode"].as_str()), (Some(4000.0), Some("triangular")));
    let args: ReduceLROnPlateauArgs = serde_json::from_value(json!({})).unwrap();
    assert_eq!(args, ReduceLROnPlateauArgs::default());
    assert_eq!((args.factor, args.patience, args.threshold, args.eps), (0.1, 10, 1e-4, 1e-8));
}

#[test]
fn schedules_built_in_code_equal_those_from_configs() {
    let case = golden("sequentiallr-warmup-cosine");
    let mut opt = cpu_optimizer(&case.optimizer);
    let warmup = LinearLR::new(&mut opt, 0.01, 1.0, 50).unwrap();
    let cosine = CosineAnnealingLR::new(&mut opt, 950, 0.0).unwrap();
    let mut built = Built::Schedule(Box::new(SequentialLR::new(&mut opt, vec![Box::new(warmup), Box::new(cosine)], vec![50]).unwrap()));
    let run = trace(&case, &mut built, &mut opt, 0);
    assert!(run.refused.is_none());
    compare("SequentialLR built in code", &run.lr, &case.lr);

    let case = golden("chained-exponential-cyclic");
    let mut opt = cpu_optimizer(&case.optimizer);
    let decay = ExponentialLR::new(&mut opt, 0.999).unwrap();
    let args = CyclicLRArgs { step_size_up: 30, mode: schedule::CyclicMode::Triangular2, ..CyclicLRArgs::new(0.001, 0.02) };
    let cyclic = CyclicLR::new(&mut opt, args).unwrap();
    let mut built = Built::Schedule(Box::new(ChainedScheduler::new(&mut opt, vec![Box::new(decay), Box::new(cyclic)]).unwrap()));
    let run = trace(&case, &mut built, &mut opt, 0);
    assert!(run.refused.is_none());
    compare("ChainedScheduler built in code", &run.lr, &case.lr);
    compare("ChainedScheduler built in code, momentum", &run.momentum, case.momentum.as_ref().unwrap());
}

// ---- validation ----

fn invalid<T: std::fmt::Debug>(result: wgpu_optim::Result<T>, needle: &str) {
    let message = result.expect_err(needle).to_string();
    assert!(message.contains(needle), "{message:?} should mention {needle:?}");
}

#[test]
fn invalid_arguments_are_rejected_as_torch_rejects_them() {
    let mut opt = sgd(&[0.1, 0.01]);
    invalid(ConstantLR::new(&mut opt, 1.5, 5), "factor");
    invalid(ConstantLR::new(&mut opt, 0.0, 5), "factor");
    invalid(LinearLR::new(&mut opt, 0.0, 1.0, 5), "start_factor");
    invalid(LinearLR::new(&mut opt, 1.5, 1.0, 5), "start_factor");
    invalid(LinearLR::new(&mut opt, 0.5, -0.1, 5), "end_factor");
    invalid(StepLR::new(&mut opt, 0, 0.5), "step_size");
    invalid(StepLR::new(&mut opt, 3, f64::NAN), "gamma");
    invalid(MultiStepLR::new(&mut opt, [3], f64::INFINITY), "gamma");
    invalid(ExponentialLR::new(&mut opt, -0.5), "gamma");
    invalid(PolynomialLR::new(&mut opt, 10, f64::NAN), "power");
    invalid(CosineAnnealingLR::new(&mut opt, 0, 0.0), "T_max");
    invalid(CosineAnnealingLR::new(&mut opt, 10, -1.0), "eta_min");
    invalid(CosineAnnealingWarmRestarts::new(&mut opt, 0, 1, 0.0), "T_0");
    invalid(CosineAnnealingWarmRestarts::new(&mut opt, 5, 0, 0.0), "T_mult");
    invalid(InverseTimeLR::new(&mut opt, f64::NAN), "decay_rate");
    invalid(CyclicLR::new(&mut opt, CyclicLRArgs { step_size_up: 0, cycle_momentum: false, ..CyclicLRArgs::new(0.1, 1.0) }), "step_size_up");
    invalid(CyclicLR::new(&mut opt, CyclicLRArgs { cycle_momentum: false, ..CyclicLRArgs::new(-0.1, 1.0) }), "base_lr");
    invalid(CyclicLR::new(&mut opt, CyclicLRArgs { cycle_momentum: false, ..CyclicLRArgs::new(0.1, vec![1.0]) }), "same length");
    let one_cycle = |edit: fn(&mut OneCycleLRArgs)| {
        let mut args = OneCycleLRArgs { cycle_momentum: false, ..OneCycleLRArgs::new(0.1, 100) };
        edit(&mut args);
        args
    };
    invalid(OneCycleLR::new(&mut opt, one_cycle(|a| a.pct_start = 1.5)), "pct_start");
    invalid(OneCycleLR::new(&mut opt, one_cycle(|a| a.total_steps = Some(0))), "total_steps");
    invalid(OneCycleLR::new(&mut opt, one_cycle(|a| a.div_factor = 0.0)), "div_factor");
    invalid(OneCycleLR::new(&mut opt, one_cycle(|a| a.final_div_factor = f64::INFINITY)), "final_div_factor");
    invalid(OneCycleLR::new(&mut opt, one_cycle(|a| (a.total_steps, a.epochs, a.steps_per_epoch) = (None, Some(0), Some(5)))), "epochs");
    // pct_start · total_steps = 1: the first phase is empty at step 0, where torch divides by zero.
    invalid(OneCycleLR::new(&mut opt, one_cycle(|a| a.pct_start = 0.01)), "empty");
    invalid(LambdaLR::per_group(&mut opt, vec![lambda("pow095")]), "expected 2 lr_lambdas");
    invalid(MultiplicativeLR::per_group(&mut opt, vec![lambda("pow095"); 3]), "expected 2 lr_lambdas");
    let plateau = |edit: fn(&mut ReduceLROnPlateauArgs)| {
        let mut args = ReduceLROnPlateauArgs::default();
        edit(&mut args);
        args
    };
    invalid(ReduceLROnPlateau::new(&mut opt, plateau(|a| a.factor = 1.0)), "factor");
    invalid(ReduceLROnPlateau::new(&mut opt, plateau(|a| a.threshold = f64::NAN)), "threshold");
    invalid(ReduceLROnPlateau::new(&mut opt, plateau(|a| a.min_lr = vec![0.0; 3].into())), "same length");
    invalid(ReduceLROnPlateau::new(&mut opt, plateau(|a| a.eps = -1.0)), "eps");
}

#[test]
fn cycling_momentum_needs_a_momentum_the_optimizer_can_change() {
    let mut params = Parameters::new();
    let w = params.add("w", &[1], vec![0.0]).unwrap();
    let mut adagrad = CpuOptimizer::new(params, vec![ParamGroup::new(Adagrad::default(), [w])]).unwrap();
    invalid(CyclicLR::new(&mut adagrad, CyclicLRArgs::new(0.01, 0.1)), "must support momentum or beta1");
    invalid(OneCycleLR::new(&mut adagrad, OneCycleLRArgs::new(0.1, 100)), "must support momentum or beta1");
    CyclicLR::new(&mut adagrad, CyclicLRArgs { cycle_momentum: false, ..CyclicLRArgs::new(0.01, 0.1) }).unwrap();

    // SGD without momentum has no momentum buffer to cycle; torch would switch momentum on.
    let mut opt = sgd(&[0.1]);
    invalid(OneCycleLR::new(&mut opt, OneCycleLRArgs::new(0.1, 100)), "build SGD with momentum > 0");
    // A bound the optimizer rejects fails at construction, not mid-cycle.
    let mut opt = cpu_optimizer(&json!({"optimizer": "Adam", "lr": [1e-3]}));
    invalid(CyclicLR::new(&mut opt, CyclicLRArgs { base_momentum: 1.0.into(), ..CyclicLRArgs::new(1e-4, 1e-3) }), "betas[0]");
    let mut params = Parameters::new();
    let w = params.add("w", &[1], vec![0.0]).unwrap();
    let rule = Sgd { lr: 0.1, momentum: 0.9, nesterov: true, ..Sgd::default() };
    let mut nesterov = CpuOptimizer::new(params, vec![ParamGroup::new(rule, [w])]).unwrap();
    invalid(CyclicLR::new(&mut nesterov, CyclicLRArgs { base_momentum: 0.0.into(), ..CyclicLRArgs::new(0.01, 0.1) }), "momentum");
}

#[test]
fn a_step_that_fails_changes_nothing() {
    let mut opt = sgd(&[0.1, 0.01]);
    let mut schedule = OneCycleLR::new(&mut opt, OneCycleLRArgs { cycle_momentum: false, ..OneCycleLRArgs::new(0.1, 10) }).unwrap();
    for _ in 0..10 {
        schedule.step(&mut opt).unwrap();
    }
    let (state, lrs_before) = (schedule.state(), lrs(&opt));
    invalid(schedule.step(&mut opt), "tried to step 11 times");
    assert_eq!((schedule.state(), lrs(&opt)), (state, lrs_before));

    // A function producing a negative learning rate, inside a chain: everything is rolled back.
    let mut opt = sgd(&[0.1, 0.01]);
    let decay = ExponentialLR::new(&mut opt, 0.5).unwrap();
    let flip = MultiplicativeLR::new(&mut opt, |epoch| if epoch == 3 { -1.0 } else { 1.0 }).unwrap();
    let mut chain = ChainedScheduler::new(&mut opt, vec![Box::new(decay), Box::new(flip)]).unwrap();
    chain.step(&mut opt).unwrap();
    chain.step(&mut opt).unwrap();
    let (state, lrs_before) = (chain.state(), lrs(&opt));
    invalid(chain.step(&mut opt), "would be -0.0125");
    assert_eq!((chain.state(), lrs(&opt)), (state, lrs_before));

    // A composite takes schedulers just built, on its optimizer.
    let mut opt = sgd(&[0.1]);
    let mut stepped = StepLR::new(&mut opt, 2, 0.5).unwrap();
    stepped.step(&mut opt).unwrap();
    invalid(ChainedScheduler::new(&mut opt, vec![Box::new(stepped)]), "already stepped");
    let mut other = sgd(&[0.1, 0.2]);
    let foreign = StepLR::new(&mut other, 2, 0.5).unwrap();
    invalid(SequentialLR::new(&mut opt, vec![Box::new(foreign)], vec![]), "same optimizer");
    let mut one_group = StepLR::new(&mut opt, 2, 0.5).unwrap();
    invalid(one_group.step(&mut other), "built for 1 parameter groups");
}

// ---- GPU optimizer ----

/// The golden cases a GPU optimizer runs: one per family, two of them cycling momentum
/// (SGD's `momentum`, Adam's `betas[0]`).
const GPU_CASES: &[&str] = &[
    "sequentiallr-warmup-cosine",
    "steplr-7-groups",
    "cycliclr-triangular",
    "onecyclelr-adam-betas",
    "plateau-min-rel-cooldown-groups",
];

#[test]
fn schedules_drive_the_gpu_optimizer() {
    for gpu in gpus() {
        for name in GPU_CASES {
            let case = golden(name);
            let mut opt = gpu_optimizer(gpu, &case.optimizer);
            let mut built = Built::new(&case.config, &mut opt).unwrap();
            let run = trace(&case, &mut built, &mut opt, 0);
            assert!(run.refused.is_none(), "{}: {:?}", case.id(), run.refused);
            compare(&format!("{} on {}", case.id(), gpu.adapter()), &run.lr, &case.lr);
            if let Some(expected) = &case.momentum {
                compare(&format!("{} momentum on {}", case.id(), gpu.adapter()), &run.momentum, expected);
            }
        }
    }
}

#[test]
fn scheduled_updates_agree_between_the_gpu_and_the_cpu_optimizer() {
    const STEPS: usize = 120;
    const GRAD: [f32; 3] = [1.0, -2.0, 0.5];
    for name in ["sequentiallr-warmup-cosine", "cycliclr-triangular", "onecyclelr-adam-betas"] {
        let case = golden(name);
        let mut cpu = cpu_optimizer(&case.optimizer);
        let mut cpu_schedule = Built::new(&case.config, &mut cpu).unwrap();
        let w = cpu.tensor_id("w0").unwrap();
        for step in 1..=STEPS {
            cpu.write_grad(w, &GRAD).unwrap();
            cpu.step();
            cpu_schedule.step(&mut cpu, &case, step).unwrap();
        }
        if case.momentum.is_none() {
            // SGD with a constant gradient: p = p0 - g·Σ lr_t, every rate the schedule set.
            let sum: f64 = case.lr[..STEPS].iter().map(|lrs| lrs[0]).sum();
            assert!((f64::from(cpu.param(w).unwrap()[0]) - (0.5 - sum)).abs() < 1e-5, "{name}: the CPU optimizer used the scheduled rates");
        }
        let expected = cpu.param(w).unwrap();
        for gpu in gpus() {
            let mut opt = gpu_optimizer(gpu, &case.optimizer);
            let mut schedule = Built::new(&case.config, &mut opt).unwrap();
            let w = opt.tensor_id("w0").unwrap();
            for step in 1..=STEPS {
                opt.write_grad(w, &[GRAD[0], GRAD[1], GRAD[2], 0.0, 0.0]).unwrap();
                opt.step_and_submit().unwrap();
                schedule.step(&mut opt, &case, step).unwrap();
            }
            let gpu_params = opt.read_param(w).unwrap();
            for (a, e) in gpu_params.iter().zip(expected) {
                // The same float32 updates as the CPU reference (see tests/suite/rules.rs).
                assert!((a - e).abs() <= 2e-6 * e.abs().max(1.0), "{name} on {}: {a} vs CPU {e}", gpu.adapter());
            }
        }
    }
}
