//! Trajectories on 2-D test functions (the browser demo's runs, natively): gradients against
//! finite differences, the GPU runner (gradient kernel + optimizer in one pass, many steps per
//! submission, positions sampled on the GPU) against the CPU reference for every rule and
//! function, per-step learning rates, basin maps, errors, and the `trajectories` command.
//! Newton's method (plain and damped, with the analytic Hessians) and L-BFGS: their GPU runs
//! against their CPU mirrors on every function, and the lessons the demo shows, in numbers:
//! Newton solves the ill-conditioned quadratic in one step, plain Newton walks into the saddle
//! of x² − y² and damped Newton does not, L-BFGS needs far fewer gradient evaluations than
//! Adam needs steps on Rosenbrock.

#[cfg(feature = "cli")]
use std::path::PathBuf;
#[cfg(feature = "cli")]
use std::process::Command;

use wgpu_optim::rules;
use wgpu_optim::trajectories::{
    blocking, learning_rates, sampled_steps, BasinSpec, CpuRunner, Device, GpuRunner, Method, MethodInput, MethodRun,
    RunInput, RunSpec, TestFunction, TrajectorySpec, MAX_STEPS_PER_SUBMISSION,
};
use wgpu_optim::Error;

use crate::common::gpus;

fn rule(name: &str, hyperparameters: serde_json::Value) -> Box<dyn wgpu_optim::UpdateRule> {
    rules::from_config(name, &hyperparameters).unwrap()
}

/// A learning rate for each rule that moves visibly without diverging on these functions.
fn sensible(name: &str) -> serde_json::Value {
    match name {
        "SGD" => serde_json::json!({"lr": 1e-3, "momentum": 0.9, "nesterov": true}),
        "Adagrad" => serde_json::json!({"lr": 0.3}),
        "RMSprop" => serde_json::json!({"lr": 0.01, "centered": true}),
        "Adadelta" => serde_json::json!({"lr": 1.0}),
        "Adam" => serde_json::json!({"lr": 0.05, "amsgrad": true}),
        "AdamW" => serde_json::json!({"lr": 0.02}),
        "NAdam" => serde_json::json!({"lr": 0.02}),
        "Adafactor" => serde_json::json!({"lr": 0.05}),
        "Muon" => serde_json::json!({"lr": 0.02, "weight_decay": 0.0}),
        // Without the global-norm clip: the CPU reference sums that norm in f64, the GPU in f32, and
        // Rosenbrock's valley amplifies the last-bit difference over 150 steps.
        "Lamb" => serde_json::json!({"lr": 0.02, "max_grad_norm": null}),
        "Adamax" => serde_json::json!({"lr": 0.05}),
        "RAdam" => serde_json::json!({"lr": 0.05}),
        "Rprop" => serde_json::json!({"lr": 1e-3}),
        "Lion" => serde_json::json!({"lr": 1e-3}),
        "ASGD" => serde_json::json!({"lr": 1e-3}),
        "Adan" => serde_json::json!({"lr": 0.02}),
        "SparseAdam" => serde_json::json!({"lr": 0.05}),
        "AdamWScheduleFree" => serde_json::json!({"lr": 0.05, "warmup_steps": 10}),
        other => panic!("no settings for {other}"),
    }
}

fn starts(function: TestFunction) -> Vec<[f32; 2]> {
    let d = function.domain();
    let at = |u: f64, v: f64| [(d.x[0] + (d.x[1] - d.x[0]) * u) as f32, (d.y[0] + (d.y[1] - d.y[0]) * v) as f32];
    vec![function.default_start(), at(0.3, 0.7), at(0.8, 0.2)]
}

/// Largest coordinate difference relative to the domain's width; a run that diverged (a
/// non-finite coordinate) must have diverged on both sides.
fn difference(function: TestFunction, a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let width = function.domain().x[1] - function.domain().x[0];
    a.iter().zip(b).fold(0.0, |m, (&x, &y)| {
        let d = match (x.is_finite(), y.is_finite()) {
            (true, true) => (f64::from(x) - f64::from(y)).abs() / width,
            (false, false) => 0.0,
            _ => f64::INFINITY,
        };
        m.max(d)
    })
}

#[test]
fn gradients_match_finite_differences() {
    for function in TestFunction::ALL {
        for [x, y] in starts(function) {
            let g = function.gradient_f32(x, y);
            let (x, y) = (f64::from(x), f64::from(y));
            let h = 1e-6;
            let dx = (function.value(x + h, y) - function.value(x - h, y)) / (2.0 * h);
            let dy = (function.value(x, y + h) - function.value(x, y - h)) / (2.0 * h);
            for (analytic, numeric) in [(g[0], dx), (g[1], dy)] {
                let scale = numeric.abs().max(1.0);
                assert!(
                    (f64::from(analytic) - numeric).abs() / scale < 1e-4,
                    "{function} at ({x}, {y}): gradient {analytic} against finite difference {numeric}"
                );
            }
        }
    }
}

#[test]
fn every_rule_on_every_function_matches_the_cpu_reference() {
    // The gradient kernel and the optimizer kernels follow their CPU mirrors operation by
    // operation, so on llvmpipe the paths of element-wise rules are bit-identical, except
    // Rastrigin's sin(), whose GPU implementation may differ from Rust's in the last bits. Rules
    // that work per tensor sum norms in loops that the driver may fuse into multiply-adds (a
    // last-bit difference per step, 2e-7 relative in `structured.rs`), which long paths through
    // curved valleys and Rastrigin's bumps amplify chaotically (to 7e-3 of the domain's width
    // in 150 steps): they are compared over their first 40 steps (measured: 9e-8).
    for gpu in gpus() {
        let mut worst = 0.0f64;
        for function in TestFunction::ALL {
            for name in rules::OPTIMIZER_NAMES {
                let rule = rule(name, sensible(name));
                let element_wise = rule.kernel().is_element_wise();
                let input = RunInput { rule, starts: starts(function), steps: if element_wise { 150 } else { 40 }, sample_every: 10, lr: None, precision: Default::default() };
                let cpu = CpuRunner::new(function, &input).unwrap().run().unwrap();
                let gpu_paths = pollster::block_on(async { GpuRunner::new(gpu, function, &input).await?.run().await }).unwrap();
                assert_eq!(cpu.sampled_steps, gpu_paths.sampled_steps);
                let d = difference(function, &gpu_paths.positions, &cpu.positions);
                let tolerance = if function == TestFunction::Rastrigin { 1e-4 } else { 1e-6 };
                assert!(d <= tolerance, "{} {name} on {function}: GPU differs from the CPU reference by {d:e}", gpu.adapter());
                worst = worst.max(d);
            }
        }
        eprintln!("{}: largest GPU/CPU path difference {worst:e} of the domain width", gpu.adapter());
    }
}

#[test]
fn sampling_keeps_the_positions_of_the_sampled_steps() {
    assert_eq!(sampled_steps(10, 3), [0, 3, 6, 9, 10]);
    assert_eq!(sampled_steps(9, 3), [0, 3, 6, 9]);
    assert_eq!(sampled_steps(5, 100), [0, 5]);
    let function = TestFunction::Himmelblau;
    for gpu in gpus() {
        let every = |k| RunInput { rule: rule("Adam", serde_json::json!({"lr": 0.05})), starts: starts(function), steps: 50, sample_every: k, lr: None, precision: Default::default() };
        let run = |input: &RunInput| pollster::block_on(async { GpuRunner::new(gpu, function, input).await?.run().await }).unwrap();
        let all = run(&every(1));
        let some = run(&every(7));
        assert_eq!(all.sampled_steps.len(), 51);
        for (k, &step) in some.sampled_steps.iter().enumerate() {
            for s in 0..3 {
                assert_eq!(some.at(k, s), all.at(step as usize, s), "step {step}, start {s}");
            }
        }
        assert_eq!(all.at(0, 0), function.default_start());
    }
}

#[test]
fn runs_longer_than_one_submission_continue_exactly() {
    // 2,345 steps: three submissions of at most MAX_STEPS_PER_SUBMISSION steps, each step's
    // scalars in its own ring slot.
    const { assert!(2345 > 2 * MAX_STEPS_PER_SUBMISSION) };
    let function = TestFunction::Rosenbrock;
    let input = RunInput { rule: rule("NAdam", serde_json::json!({"lr": 0.01})), starts: starts(function), steps: 2345, sample_every: 100, lr: None, precision: Default::default() };
    let cpu = CpuRunner::new(function, &input).unwrap().run().unwrap();
    for gpu in gpus() {
        let gpu_paths = pollster::block_on(async { GpuRunner::new(gpu, function, &input).await?.run().await }).unwrap();
        assert_eq!(gpu_paths.sampled_steps.last(), Some(&2345));
        let d = difference(function, &gpu_paths.positions, &cpu.positions);
        assert!(d <= 1e-6, "{}: {d:e}", gpu.adapter());
    }
}

#[test]
fn per_step_learning_rates_are_applied_inside_one_submission() {
    let function = TestFunction::IllConditioned;
    let steps = 120;
    // A step decay: 0.015 for 40 steps, then 0.0015 (what a StepLR schedule gives).
    let decayed: Vec<f64> = (0..steps).map(|t| if t < 40 { 0.015 } else { 0.0015 }).collect();
    let base = || rule("SGD", serde_json::json!({"lr": 0.015, "momentum": 0.5}));
    let input = |lr| RunInput { rule: base(), starts: starts(function), steps, sample_every: 1, lr, precision: Default::default() };
    let constant_cpu = CpuRunner::new(function, &input(None)).unwrap().run().unwrap();
    let decayed_cpu = CpuRunner::new(function, &input(Some(decayed.clone()))).unwrap().run().unwrap();
    let same_cpu = CpuRunner::new(function, &input(Some(vec![0.015; steps as usize]))).unwrap().run().unwrap();
    assert_eq!(constant_cpu, same_cpu, "a constant list is the constant lr");
    assert_eq!(constant_cpu.path(0)[..=40], decayed_cpu.path(0)[..=40], "identical before the decay");
    assert_ne!(constant_cpu.path(0)[41], decayed_cpu.path(0)[41], "the decay takes effect at step 41");
    for gpu in gpus() {
        let gpu_paths = pollster::block_on(async { GpuRunner::new(gpu, function, &input(Some(decayed.clone()))).await?.run().await }).unwrap();
        let d = difference(function, &gpu_paths.positions, &decayed_cpu.positions);
        assert!(d <= 1e-6, "{}: {d:e}", gpu.adapter());
    }
    // The same decay from torch's MultiStepLR through the schedule module.
    let step_lr = serde_json::json!({"name": "MultiStepLR", "milestones": [40], "gamma": 0.1});
    let scheduled = learning_rates(Some(&step_lr), base().as_ref(), steps).unwrap().unwrap();
    for (t, (a, b)) in scheduled.iter().zip(&decayed).enumerate() {
        assert!((a - b).abs() <= 1e-15, "step {}: {a} against {b}", t + 1);
    }
}

#[test]
fn a_warmup_cosine_schedule_runs_on_the_gpu_as_on_the_cpu() {
    let spec = TrajectorySpec::from_json(
        r#"{"function": "rosenbrock", "steps": 300, "sample_every": 3,
            "runs": [{"optimizer": "Adam", "hyperparameters": {"lr": 0.05},
                      "schedule": {"name": "SequentialLR", "milestones": [30],
                                   "schedulers": [{"name": "LinearLR", "start_factor": 0.1, "total_iters": 30},
                                                  {"name": "CosineAnnealingLR", "T_max": 270}]}},
                     {"optimizer": "SGD", "hyperparameters": {"lr": 0.002, "momentum": 0.9},
                      "schedule": {"name": "InverseTimeLR", "decay_rate": 0.01}}]}"#,
    )
    .unwrap();
    let cpu = blocking::run_spec(&Device::Cpu, &spec).unwrap();
    let warm = cpu.runs[0].lr.as_ref().unwrap();
    assert_eq!(warm.len(), 300);
    assert!((warm[0] - 0.005).abs() < 1e-12 && (warm[30] - 0.05).abs() < 1e-12 && warm[299] < 1e-4, "{warm:?}");
    let inverse = cpu.runs[1].lr.as_ref().unwrap();
    assert!((inverse[100] - 0.002 / 2.0).abs() < 1e-12);
    for gpu in gpus() {
        let report = blocking::run_spec(&Device::Gpu(gpu.clone()), &spec).unwrap();
        for (a, b) in report.runs.iter().zip(&cpu.runs) {
            assert_eq!(a.lr, b.lr);
            let flat = |r: &wgpu_optim::trajectories::RunReport| r.paths.iter().flatten().flatten().copied().collect::<Vec<f32>>();
            assert!(difference(spec.function, &flat(a), &flat(b)) <= 1e-6, "{}", gpu.adapter());
        }
    }
}

#[test]
fn a_spec_runs_on_the_gpu_and_on_the_cpu_reference_alike() {
    let spec = TrajectorySpec::from_json(
        r#"{"function": "beale", "steps": 200, "sample_every": 4,
            "runs": [{"optimizer": "Adam", "hyperparameters": {"lr": 0.01}},
                     {"optimizer": "Adadelta", "hyperparameters": {"lr": 1.0}, "lr": null}]}"#,
    )
    .unwrap();
    let cpu = blocking::run_spec(&Device::Cpu, &spec).unwrap();
    assert_eq!(cpu.backend, "cpu");
    assert_eq!(cpu.starts, [TestFunction::Beale.default_start()]);
    assert_eq!(cpu.sampled_steps.len(), 51);
    assert_eq!(cpu.runs[1].hyperparameters["rho"], 0.9, "defaults filled in");
    let first = cpu.runs[0].losses[0][0];
    let last = *cpu.runs[0].losses[0].last().unwrap();
    assert!(last < first, "Adam descends: {first} -> {last}");
    for gpu in gpus() {
        let report = blocking::run_spec(&Device::Gpu(gpu.clone()), &spec).unwrap();
        assert_eq!(report.runs[0].dispatches, 200 * 3, "one gradient dispatch, the step counter's and one update dispatch per step");
        for (a, b) in report.runs.iter().zip(&cpu.runs) {
            let flat = |r: &wgpu_optim::trajectories::RunReport| r.paths.iter().flatten().flatten().copied().collect::<Vec<f32>>();
            assert!(difference(spec.function, &flat(a), &flat(b)) <= 1e-6);
        }
    }
}

#[test]
fn a_basin_map_sends_each_start_to_its_minimum() {
    let spec = BasinSpec {
        function: TestFunction::Himmelblau,
        optimizer: "Adam".into(),
        hyperparameters: serde_json::json!({"lr": 0.05}).as_object().unwrap().clone(),
        schedule: None,
        lr: None,
        steps: 400,
        resolution: 16,
        domain: None,
    };
    let cpu = blocking::run_basin(&Device::Cpu, &spec).unwrap();
    assert_eq!(cpu.basin.len(), 256);
    let mut found = [0; 4];
    for &b in &cpu.basin {
        if b >= 0 {
            found[b as usize] += 1;
        }
    }
    assert!(found.iter().all(|&n| n > 10), "each of Himmelblau's four minima has a basin: {found:?}");
    for gpu in gpus() {
        let report = blocking::run_basin(&Device::Gpu(gpu.clone()), &spec).unwrap();
        assert_eq!(report.basin, cpu.basin, "{}", gpu.adapter());
        assert!(difference(spec.function, &report.end, &cpu.end) <= 1e-6);
    }
}

#[test]
fn basins_classify_end_points() {
    assert_eq!(TestFunction::Rosenbrock.basin(1.0, 1.0), 0);
    assert_eq!(TestFunction::Rosenbrock.basin(0.0, 0.0), -1);
    assert_eq!(TestFunction::Rosenbrock.basin(f32::NAN, 0.0), -2);
    assert_eq!(TestFunction::Himmelblau.basin(-3.77, -3.28), 2);
    assert_eq!(TestFunction::Saddle.basin(0.0, 3.0), 0);
    assert_eq!(TestFunction::Saddle.basin(0.0, -3.0), 1);
    assert_eq!(TestFunction::Rastrigin.basin(0.02, -0.01), 64 * 128 + 64);
    assert_eq!(TestFunction::Rastrigin.basin(1.0, 2.0), 65 * 128 + 66);
    assert_eq!(TestFunction::Rastrigin.basin(0.5, 0.5), -1);
}

#[test]
fn bad_specs_are_errors() {
    let parse = |text: &str| TrajectorySpec::from_json(text).unwrap_err().to_string();
    let ok_run = r#"[{"optimizer": "Adam"}]"#;
    assert!(parse(&format!(r#"{{"function": "sphere", "steps": 10, "runs": {ok_run}}}"#)).contains("sphere"));
    assert!(parse(&format!(r#"{{"function": "booth", "steps": 0, "runs": {ok_run}}}"#)).contains("steps"));
    assert!(parse(r#"{"function": "booth", "steps": 10, "runs": []}"#).contains("at least one run"));
    assert!(parse(r#"{"function": "booth", "steps": 10, "runs": [{"optimizer": "Yogi"}]}"#).contains("Yogi"));
    assert!(parse(r#"{"function": "booth", "steps": 10, "runs": [{"optimizer": "Adam", "hyperparameters": {"lr": -1}}]}"#).contains("lr"));
    assert!(parse(r#"{"function": "booth", "steps": 2, "runs": [{"optimizer": "Adam", "lr": [0.1]}]}"#).contains("1 learning rates for 2 steps"));
    assert!(parse(&format!(r#"{{"function": "booth", "steps": 10, "colour": 1, "runs": {ok_run}}}"#)).contains("colour"));
    assert!(parse(&format!(r#"{{"function": "booth", "steps": 10, "sample_every": 0, "runs": {ok_run}}}"#)).contains("sample_every"));
    let adam = rule("Adam", serde_json::json!({}));
    assert!(learning_rates(None, adam.as_ref(), 10).unwrap().is_none());
    assert!(learning_rates(Some(&serde_json::Value::Null), adam.as_ref(), 10).unwrap().is_none());
    assert!(matches!(learning_rates(Some(&serde_json::json!({"name": "cosine"})), adam.as_ref(), 10), Err(Error::Config(_))));
    let cycling = serde_json::json!({"name": "OneCycleLR", "max_lr": 0.1, "total_steps": 10});
    assert!(learning_rates(Some(&cycling), adam.as_ref(), 10).unwrap_err().to_string().contains("cycle_momentum"));
    let no_cycling = serde_json::json!({"name": "OneCycleLR", "max_lr": 0.1, "total_steps": 10, "cycle_momentum": false});
    assert_eq!(learning_rates(Some(&no_cycling), adam.as_ref(), 10).unwrap().unwrap().len(), 10);
    let run = RunSpec { optimizer: "Adam".into(), hyperparameters: Default::default(), schedule: None, lr: Some(vec![0.1; 3]), state_dtype: Default::default() };
    assert!(run.learning_rates(adam.as_ref(), 3).unwrap().is_some());
    let basin = BasinSpec {
        function: TestFunction::Booth,
        optimizer: "Adam".into(),
        hyperparameters: Default::default(),
        schedule: None,
        lr: None,
        steps: 10,
        resolution: 5000,
        domain: None,
    };
    assert!(blocking::run_basin(&Device::Cpu, &basin).unwrap_err().to_string().contains("resolution"));
    let muon_basin = BasinSpec { optimizer: "Muon".into(), resolution: 10, ..basin };
    let error = blocking::run_basin(&Device::Cpu, &muon_basin).unwrap_err().to_string();
    assert!(error.contains("element-wise rules") && error.contains("Muon works per tensor"), "{error}");
    let many = RunInput { rule: rule("Lamb", serde_json::json!({})), starts: vec![[0.5, 0.5]; 65], steps: 3, sample_every: 1, lr: None, precision: Default::default() };
    assert!(CpuRunner::new(TestFunction::Booth, &many).err().expect("rejected").to_string().contains("at most 64 start points"));
    assert!("Ill-Conditioned".parse::<TestFunction>().is_ok());
}

#[cfg(feature = "cli")]
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-trajectories-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
#[cfg(feature = "cli")]
fn the_trajectories_command_writes_paths_and_a_plot() {
    gpus();
    let dir = scratch("cli");
    let (out, png) = (dir.join("paths.json"), dir.join("plot.png"));
    let output = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
        .args(["trajectories", "--function", "rosenbrock", "--optimizer", "Adam", "--hyperparameters", r#"{"lr": 0.05}"#])
        .args(["--optimizer", "SGD", "--hyperparameters", r#"{"lr": 0.001, "momentum": 0.9}"#, "--start", "-1.5,2"])
        .args(["--steps", "300", "--out"])
        .arg(&out)
        .arg("--png")
        .arg(&png)
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{log}");
    assert!(log.contains("adapter: "), "{log}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(report["runs"].as_array().unwrap().len(), 2);
    assert_eq!(report["runs"][0]["paths"][0].as_array().unwrap().len(), 301);
    assert_eq!(report["runs"][0]["paths"][0][0], serde_json::json!([-1.5, 2.0]));
    let image = std::fs::read(&png).unwrap();
    assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(u32::from_be_bytes(image[16..20].try_into().unwrap()), 640, "width");

    // The same through a spec file, on the CPU reference.
    let spec = dir.join("spec.json");
    std::fs::write(&spec, r#"{"function": "booth", "steps": 50, "runs": [{"optimizer": "RMSprop"}]}"#).unwrap();
    let cpu_out = dir.join("cpu.json");
    let output = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
        .args(["trajectories", "--backend", "cpu", "--config"])
        .arg(&spec)
        .arg("--out")
        .arg(&cpu_out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&cpu_out).unwrap()).unwrap();
    assert_eq!(report["backend"], "cpu");

    // Errors: a message, a non-zero exit, no output.
    let bad_out = dir.join("bad.json");
    for args in [
        &["--function", "sphere"][..],
        &["--optimizer", "Adam", "--hyperparameters", "[1]"],
        &["--start", "1"],
        &["--steps", "0"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
            .arg("trajectories")
            .args(args)
            .arg("--out")
            .arg(&bad_out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(!bad_out.exists());
    }
}

#[test]
fn the_gradient_kernel_translates_for_every_backend_and_function() {
    // As src/portability.rs does for the update rules, for each value of `function_id`.
    let source = wgpu_optim::trajectories::FUNCTIONS_WGSL;
    let module = naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)));
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty());
    let info = validator.validate(&module).unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)));
    let storage = module.global_variables.iter().filter(|(_, v)| matches!(v.space, naga::AddressSpace::Storage { .. })).count();
    assert!(storage <= 8, "WebGPU's storage buffers per stage");
    assert!(module.entry_points.iter().all(|e| e.workgroup_size.iter().product::<u32>() <= 256), "WebGPU's invocations per workgroup");
    for (id, function) in TestFunction::ALL.iter().enumerate() {
        let constants: naga::back::PipelineConstants = [("function_id".to_string(), id as f64)].into_iter().collect();
        let entry = (naga::ShaderStage::Compute, "main");
        let (module, info) = naga::back::pipeline_constants::process_overrides(&module, &info, Some(entry), &constants).unwrap();
        let spirv = naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None).unwrap();
        assert!(!spirv.is_empty(), "{function}: SPIR-V");
        let msl_pipeline = naga::back::msl::PipelineOptions { entry_point: Some((entry.0, entry.1.to_string())), ..Default::default() };
        naga::back::msl::write_string(&module, &info, &naga::back::msl::Options::default(), &msl_pipeline).unwrap();
        let hlsl_options = naga::back::hlsl::Options {
            special_constants_binding: Some(naga::back::hlsl::BindTarget { space: 1, register: 0, ..Default::default() }),
            ..Default::default()
        };
        let hlsl_pipeline = naga::back::hlsl::PipelineOptions { entry_point: Some((entry.0, entry.1.to_string())) };
        let mut hlsl = String::new();
        naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline).write(&module, &info, None).unwrap();
        let glsl_options = naga::back::glsl::Options {
            version: naga::back::glsl::Version::Embedded { version: 310, is_webgl: false },
            ..Default::default()
        };
        let glsl_pipeline = naga::back::glsl::PipelineOptions { shader_stage: entry.0, entry_point: entry.1.to_string(), multiview: None };
        let mut glsl = String::new();
        naga::back::glsl::Writer::new(&mut glsl, &module, &info, &glsl_options, &glsl_pipeline, Default::default())
            .and_then(|mut w| w.write())
            .unwrap();
    }
}

// ---- Newton's method and L-BFGS ----

fn method(name: &str, hyperparameters: serde_json::Value) -> Method {
    Method::from_config(name, &hyperparameters).unwrap()
}

fn run_method(device: &Device, function: TestFunction, method: Method, starts: Vec<[f32; 2]>, steps: u32) -> MethodRun {
    let input = MethodInput { method, starts, steps, sample_every: 1, lr: None, precision: Default::default() };
    let clock = || 0.0;
    pollster::block_on(device.run_method(function, &input, &clock)).unwrap()
}

/// Every device: the CPU reference, then each adapter.
fn devices() -> Vec<Device> {
    std::iter::once(Device::Cpu).chain(gpus().iter().map(|gpu| Device::Gpu(gpu.clone()))).collect()
}

/// Largest coordinate difference relative to the larger of the domain's width and the
/// coordinates (damped Newton leaves the saddle's map for coordinates up to 1e19, where f32
/// carries a relative difference); both non-finite counts as equal.
fn relative_difference(function: TestFunction, a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let width = function.domain().x[1] - function.domain().x[0];
    a.iter().zip(b).fold(0.0, |m, (&x, &y)| {
        let d = match (x.is_finite(), y.is_finite()) {
            (true, true) => {
                let (x, y) = (f64::from(x), f64::from(y));
                (x - y).abs() / width.max(x.abs()).max(y.abs())
            }
            (false, false) => 0.0,
            _ => f64::INFINITY,
        };
        m.max(d)
    })
}

#[test]
fn values_and_hessians_match_the_functions_and_finite_differences() {
    for function in TestFunction::ALL {
        for [x, y] in starts(function).into_iter().chain([[0.3, -0.7], [1.1, 0.9]]) {
            let v = function.value_f32(x, y);
            let (x, y) = (f64::from(x), f64::from(y));
            let exact = function.value(x, y);
            assert!((f64::from(v) - exact).abs() <= 1e-5 * exact.abs().max(1.0), "{function} at ({x}, {y}): {v} against {exact}");
            let h = function.hessian_f32(x as f32, y as f32);
            let e = 1e-4;
            let f = |dx: f64, dy: f64| function.value(x + dx, y + dy);
            let xx = (f(e, 0.0) - 2.0 * f(0.0, 0.0) + f(-e, 0.0)) / (e * e);
            let yy = (f(0.0, e) - 2.0 * f(0.0, 0.0) + f(0.0, -e)) / (e * e);
            let xy = (f(e, e) - f(e, -e) - f(-e, e) + f(-e, -e)) / (4.0 * e * e);
            let scale = xx.abs().max(yy.abs()).max(xy.abs()).max(1.0);
            for (name, analytic, numeric) in [("f_xx", h[0], xx), ("f_xy", h[1], xy), ("f_yy", h[2], yy)] {
                assert!(
                    (f64::from(analytic) - numeric).abs() / scale < 1e-4,
                    "{function} at ({x}, {y}): {name} {analytic} against finite difference {numeric}"
                );
            }
        }
    }
}

#[test]
fn newton_methods_match_their_cpu_mirrors_on_every_function() {
    // The kernels follow their CPU mirrors operation by operation: on llvmpipe's Vulkan the
    // paths are bit-identical except where Rastrigin's sin and cos or Beale's gradient differ in
    // a last bit (the GL driver fuses Beale's multiply-adds), which plain Newton amplifies on
    // Beale near its singular Hessians (measured: up to 4e-3 of the width over 30 steps at
    // lr 0.5, whose runs wander off the map; the damped runs agree to 2e-6).
    let methods = [("Newton", serde_json::json!({})), ("Newton", serde_json::json!({"lr": 0.5})), ("DampedNewton", serde_json::json!({}))];
    let mut worst = 0.0f64;
    for gpu in gpus() {
        for function in TestFunction::ALL {
            for (name, hyperparameters) in &methods {
                let m = method(name, hyperparameters.clone());
                let cpu = run_method(&Device::Cpu, function, m.clone(), starts(function), 30);
                let on_gpu = run_method(&Device::Gpu(gpu.clone()), function, m, starts(function), 30);
                assert_eq!(on_gpu.dispatches, 30, "one dispatch per step");
                let d = relative_difference(function, &on_gpu.paths.positions, &cpu.paths.positions);
                let exact = !matches!(function, TestFunction::Rastrigin | TestFunction::Beale);
                let tolerance = match function {
                    TestFunction::Beale => 1e-2,
                    TestFunction::Rastrigin => 1e-4,
                    _ => 1e-5,
                };
                assert!(d <= tolerance, "{} {name} {hyperparameters} on {function}: GPU differs from the CPU mirror by {d:e}", gpu.adapter());
                let (a, b) = (on_gpu.newton.unwrap(), cpu.newton.unwrap());
                for (a, b) in a.iter().zip(&b) {
                    if exact {
                        assert_eq!(a.singular_at, b.singular_at, "{name} on {function}");
                        assert_eq!(a.rejected, b.rejected, "{name} on {function}");
                    }
                }
                worst = worst.max(d);
            }
        }
        eprintln!("{}: largest Newton GPU/CPU path difference {worst:e}", gpu.adapter());
    }
}

#[test]
fn lbfgs_matches_its_cpu_twin_on_every_function() {
    // One L-BFGS per start point; the library's L-BFGS equals its CPU twin bit for bit when the
    // closure's values do, and the closure's kernel computes f and ∇f as their CPU mirrors
    // (bit for bit on llvmpipe's Vulkan but for Rastrigin's sin and cos; its GL driver fuses
    // Beale's multiply-adds). The line search branches on those values, so a run that wanders
    // across a plateau amplifies a last bit: Beale's start (−1.8, 1.8), which drifts towards
    // x → −∞ along the plateau y = 1, is left out (measured there: 0.14 of the width).
    let configurations = [
        serde_json::json!({"line_search_fn": "strong_wolfe"}),
        serde_json::json!({"line_search_fn": "strong_wolfe", "max_iter": 1, "max_eval": 25, "history_size": 5}),
        serde_json::json!({"lr": 0.1, "max_iter": 2}),
    ];
    let mut worst = 0.0f64;
    for gpu in gpus() {
        for function in TestFunction::ALL {
            if function == TestFunction::Saddle {
                continue; // unbounded below: the line search runs off to infinity
            }
            let mut points = starts(function);
            if function == TestFunction::Beale {
                points.remove(1);
            }
            for hyperparameters in &configurations {
                let m = method("LBFGS", hyperparameters.clone());
                let cpu = run_method(&Device::Cpu, function, m.clone(), points.clone(), 40);
                let on_gpu = run_method(&Device::Gpu(gpu.clone()), function, m, points.clone(), 40);
                let d = relative_difference(function, &on_gpu.paths.positions, &cpu.paths.positions);
                assert!(d <= 1e-5, "{} LBFGS {hyperparameters} on {function}: GPU differs from the CPU twin by {d:e}", gpu.adapter());
                assert_eq!(on_gpu.evaluations, cpu.evaluations, "{hyperparameters} on {function}: closure evaluations");
                assert!(on_gpu.dispatches > 0);
                worst = worst.max(d);
            }
        }
        eprintln!("{}: largest L-BFGS GPU/CPU path difference {worst:e}", gpu.adapter());
    }
}

#[test]
fn newton_reaches_the_ill_conditioned_minimum_in_one_step() {
    // f = (x² + 100 y²)/2: Newton's step −H⁻¹∇f = −(x, y) is exact. From the default start
    // (−2.5, 1.5) every operation is exact in f32: (0, 0) itself; from any start within a few
    // ulps of it. A first-order method needs many steps (SGD is limited by the steep direction).
    let function = TestFunction::IllConditioned;
    let others = starts(function).into_iter().chain([[0.3, -0.7], [2.9, 2.9]]).collect::<Vec<_>>();
    for device in devices() {
        let run = run_method(&device, function, method("Newton", serde_json::json!({})), others.clone(), 3);
        assert_eq!(run.paths.at(1, 0), [0.0, 0.0], "{}: one step from the default start", device.adapter_name());
        for s in 0..others.len() {
            let [x, y] = run.paths.at(1, s);
            assert!(x.abs() <= 1e-6 && y.abs() <= 1e-6, "{}: from {:?} one step reaches ({x}, {y})", device.adapter_name(), others[s]);
        }
        let sgd = run_method(&device, function, method("SGD", serde_json::json!({"lr": 0.015, "momentum": 0.5})), others.clone(), 100);
        let reached = (0..=100).find(|&k| {
            let [x, y] = sgd.paths.at(k, 0);
            function.value(f64::from(x), f64::from(y)) < 1e-6
        });
        eprintln!("{}: Newton reaches (0, 0) in 1 step; SGD (lr 0.015, momentum 0.5) reaches f < 1e-6 at step {reached:?}", device.adapter_name());
        assert!(reached.is_none_or(|k| k > 20));
    }
}

#[test]
fn plain_newton_walks_into_the_saddle_and_damped_newton_leaves_it() {
    // f = x² − y², H = diag(2, −2). Plain Newton from (1, 0.1): (1, 0.1) − H⁻¹(2, −0.2) = (0, 0),
    // the saddle, where ∇f = 0 keeps it. Damped Newton: μ = λ + 2 + δ makes H + μI positive
    // definite, so it descends: |y| grows and f falls below 0.
    let function = TestFunction::Saddle;
    let steps = 12;
    for device in devices() {
        let name = device.adapter_name();
        let plain = run_method(&device, function, method("Newton", serde_json::json!({})), vec![[1.0, 0.1]], steps);
        for k in 1..=steps as usize {
            assert_eq!(plain.paths.at(k, 0), [0.0, 0.0], "{name}: plain Newton at step {k}");
        }
        let damped = run_method(&device, function, method("DampedNewton", serde_json::json!({})), vec![[1.0, 0.1]], steps);
        let path = damped.paths.path(0);
        let loss = |p: [f32; 2]| function.value(f64::from(p[0]), f64::from(p[1]));
        for k in 1..path.len() {
            assert!(path[k][1].abs() >= path[k - 1][1].abs(), "{name}: |y| shrank at step {k}: {path:?}");
            assert!(loss(path[k]) <= loss(path[k - 1]), "{name}: f rose at step {k}");
            assert!(path[k][0].hypot(path[k][1]) > 0.5, "{name}: damped Newton near the saddle at step {k}: {:?}", path[k]);
        }
        assert!(path[1][1] > path[0][1] && loss(path[1]) < loss(path[0]), "{name}: the first step is accepted");
        assert!(loss(path[2]) < 0.0 && loss(path[steps as usize]) < -1e6, "{name}: {path:?}");
        let stats = &damped.newton.as_ref().unwrap()[0];
        eprintln!(
            "{name}: plain Newton (1, 0.1) -> {:?} after 1 step; damped Newton -> {:?} (f = {:e}), then {:?} (f = {:e}) after {steps} steps, {} rejected",
            plain.paths.at(1, 0),
            path[1],
            loss(path[1]),
            path[steps as usize],
            loss(path[steps as usize]),
            stats.rejected
        );
    }
}

#[test]
fn lbfgs_needs_far_fewer_gradient_evaluations_than_adam_needs_steps_on_rosenbrock() {
    // From (−1.2, 1) to f < 1e-6. L-BFGS's closure evaluations (each one gradient, torch's
    // func_evals) against Adam's steps (each one gradient) at its best learning rate of a grid,
    // counted generously: the first step below 1e-6, although Adam's runs with lr ≥ 0.5 leave
    // the minimum again (measured on the CPU: 1691 steps at lr 0.05, 679 at lr 0.3, 587 at lr
    // 0.7, which ends at f = 1e-2).
    let function = TestFunction::Rosenbrock;
    let start = vec![[-1.2f32, 1.0]];
    let first_below = |run: &MethodRun| {
        (0..run.paths.sampled_steps.len()).find(|&k| {
            let [x, y] = run.paths.at(k, 0);
            function.value(f64::from(x), f64::from(y)) < 1e-6
        })
    };
    let adam = |device: &Device, lr: f64, steps: u32| {
        let run = run_method(device, function, method("Adam", serde_json::json!({"lr": lr})), start.clone(), steps);
        first_below(&run).map(|k| run.paths.sampled_steps[k])
    };
    // The learning-rate grid on the CPU reference (the GPU runs equal it: see
    // every_rule_on_every_function_matches_the_cpu_reference).
    let grid: Vec<(f64, Option<u32>)> =
        [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0].iter().map(|&lr| (lr, adam(&Device::Cpu, lr, 10_000))).collect();
    eprintln!("Adam, steps to f < 1e-6 by lr: {grid:?}");
    let (best_lr, best_steps) = grid.iter().filter_map(|&(lr, s)| s.map(|s| (lr, s))).min_by_key(|&(_, s)| s).unwrap();
    for device in devices() {
        let name = device.adapter_name();
        let adam_steps = adam(&device, best_lr, best_steps + 10).expect("Adam reaches it within its CPU count");
        for hyperparameters in [
            serde_json::json!({"line_search_fn": "strong_wolfe"}),
            serde_json::json!({"line_search_fn": "strong_wolfe", "max_iter": 1, "max_eval": 25}),
        ] {
            let run = run_method(&device, function, method("LBFGS", hyperparameters.clone()), start.clone(), 100);
            let k = first_below(&run).expect("L-BFGS reaches f < 1e-6");
            let evaluations = run.evaluations.as_ref().unwrap()[0][k];
            eprintln!(
                "{name}: L-BFGS {hyperparameters}: f < 1e-6 at step {} after {evaluations} closure evaluations; Adam (lr {best_lr}): {adam_steps} steps",
                run.paths.sampled_steps[k]
            );
            assert!(evaluations * 5 < u64::from(adam_steps), "{name}: {evaluations} evaluations against {adam_steps} steps");
            assert!(evaluations <= 100, "{name}: {evaluations}");
        }
    }
}

#[test]
fn specs_run_newton_and_lbfgs_beside_the_update_rules() {
    let spec = TrajectorySpec::from_json(
        r#"{"function": "himmelblau", "steps": 40, "starts": [[0, 0], [-1, 2.5]],
            "runs": [{"optimizer": "Newton"},
                     {"optimizer": "DampedNewton", "hyperparameters": {"grow": 10}},
                     {"optimizer": "LBFGS", "hyperparameters": {"line_search_fn": "strong_wolfe", "max_iter": 1, "max_eval": 25}},
                     {"optimizer": "Adam", "hyperparameters": {"lr": 0.05}}]}"#,
    )
    .unwrap();
    let cpu = blocking::run_spec(&Device::Cpu, &spec).unwrap();
    assert_eq!(cpu.runs[0].hyperparameters, serde_json::json!({"lr": 1.0}));
    assert_eq!(cpu.runs[1].hyperparameters["grow"], 10.0);
    assert_eq!(cpu.runs[1].hyperparameters["shrink"], 1.0 / 3.0);
    assert_eq!(cpu.runs[2].hyperparameters["history_size"], 100);
    assert!(cpu.runs[0].newton.is_some() && cpu.runs[1].newton.is_some() && cpu.runs[2].newton.is_none());
    assert!(cpu.runs[2].evaluations.is_some() && cpu.runs[3].evaluations.is_none());
    let json = serde_json::to_value(&cpu).unwrap();
    assert!(json["runs"][0]["newton"][0]["singular_at"].is_null());
    assert!(json["runs"][0]["newton"][0].get("damping").is_none());
    assert!(json["runs"][1]["newton"][1]["damping"].is_number());
    assert_eq!(json["runs"][2]["evaluations"][0].as_array().unwrap().len(), 41);
    // Damped Newton and L-BFGS descend to one of Himmelblau's minima from both starts.
    for run in &cpu.runs[1..3] {
        for (s, losses) in run.losses.iter().enumerate() {
            assert!(*losses.last().unwrap() < 1e-6, "{} from {:?}: {losses:?}", run.optimizer, spec.starts[s]);
        }
    }
    for gpu in gpus() {
        let report = blocking::run_spec(&Device::Gpu(gpu.clone()), &spec).unwrap();
        assert_eq!(report.runs[0].dispatches, 40);
        for (a, b) in report.runs.iter().zip(&cpu.runs) {
            let flat = |r: &wgpu_optim::trajectories::RunReport| r.paths.iter().flatten().flatten().copied().collect::<Vec<f32>>();
            assert!(relative_difference(spec.function, &flat(a), &flat(b)) <= 1e-5, "{} {}", gpu.adapter(), a.optimizer);
            assert_eq!(a.hyperparameters, b.hyperparameters);
            assert_eq!(a.evaluations, b.evaluations);
        }
    }
}

#[test]
fn a_singular_hessian_leaves_the_point_where_it_is() {
    // Rosenbrock's Hessian is singular where det = 80000 (x² − y + 0.005) vanishes; at
    // (0, 0.005) it is diag(2 − 400·0.005, 200) = diag(0, 200) in f32 arithmetic too.
    let function = TestFunction::Rosenbrock;
    let h = function.hessian_f32(0.0, 0.005);
    assert_eq!(h[1], 0.0);
    assert!(h[0].abs() < 1e-6, "f_xx = {}", h[0]);
    for device in devices() {
        let run = run_method(&device, function, method("Newton", serde_json::json!({})), vec![[0.0, 0.005], [-1.2, 1.0]], 5);
        for k in 0..=5 {
            assert_eq!(run.paths.at(k, 0), [0.0, 0.005], "{}", device.adapter_name());
        }
        let stats = run.newton.unwrap();
        assert_eq!(stats[0].singular_at, Some(1));
        assert_eq!(stats[1].singular_at, None);
        // From (−1.2, 1) plain Newton converges (quadratically, near (1, 1)).
        let [x, y] = run.paths.at(5, 1);
        assert!((x - 1.0).abs() < 1e-4 && (y - 1.0).abs() < 1e-4, "({x}, {y})");
    }
}

#[test]
fn newton_basin_maps_run_on_the_gpu_as_on_the_cpu() {
    let spec = BasinSpec {
        function: TestFunction::Himmelblau,
        optimizer: "DampedNewton".into(),
        hyperparameters: Default::default(),
        schedule: None,
        lr: None,
        steps: 60,
        resolution: 24,
        domain: None,
    };
    let cpu = blocking::run_basin(&Device::Cpu, &spec).unwrap();
    let mut found = [0; 4];
    for &b in &cpu.basin {
        if b >= 0 {
            found[b as usize] += 1;
        }
    }
    assert!(found.iter().all(|&n| n > 20), "damped Newton finds each of Himmelblau's minima: {found:?}");
    let newton = blocking::run_basin(&Device::Cpu, &BasinSpec { optimizer: "Newton".into(), ..spec.clone() }).unwrap();
    let named = newton.basin.iter().filter(|&&b| b >= 0).count();
    eprintln!("Himmelblau 24x24, 60 steps: damped Newton ends at a minimum from {} starts {found:?}, plain Newton from {named}", found.iter().sum::<i32>());
    assert!(named < found.iter().sum::<i32>() as usize, "plain Newton also stops at maxima and saddles");
    for gpu in gpus() {
        for s in [&spec, &BasinSpec { optimizer: "Newton".into(), ..spec.clone() }] {
            let report = blocking::run_basin(&Device::Gpu(gpu.clone()), s).unwrap();
            let reference = if s.optimizer == "Newton" { &newton } else { &cpu };
            let differing = report.basin.iter().zip(&reference.basin).filter(|(a, b)| a != b).count();
            assert!(differing <= 2, "{} {}: {differing} of 576 basins differ", gpu.adapter(), s.optimizer);
        }
    }
}

#[test]
fn bad_newton_and_lbfgs_specs_are_errors() {
    let parse = |runs: &str| TrajectorySpec::from_json(&format!(r#"{{"function": "booth", "steps": 10, "runs": {runs}}}"#)).unwrap_err().to_string();
    assert!(parse(r#"[{"optimizer": "Newton", "hyperparameters": {"lr": -1}}]"#).contains("Newton: invalid lr"));
    assert!(parse(r#"[{"optimizer": "Newton", "hyperparameters": {"momentum": 0.9}}]"#).contains("momentum"));
    assert!(parse(r#"[{"optimizer": "DampedNewton", "hyperparameters": {"shrink": 1.5}}]"#).contains("shrink"));
    assert!(parse(r#"[{"optimizer": "DampedNewton", "hyperparameters": {"grow": 1}}]"#).contains("grow"));
    assert!(parse(r#"[{"optimizer": "DampedNewton", "hyperparameters": {"damping": 0}}]"#).contains("damping"));
    assert!(parse(r#"[{"optimizer": "DampedNewton", "hyperparameters": {"margin": "big"}}]"#).contains("margin"));
    assert!(parse(r#"[{"optimizer": "LBFGS", "hyperparameters": {"history_size": 0}}]"#).contains("history_size"));
    assert!(parse(r#"[{"optimizer": "LBFGS", "hyperparameters": {"line_search_fn": "armijo"}}]"#).contains("armijo"));
    assert!(parse(r#"[{"optimizer": "Newton", "schedule": {"name": "StepLR", "step_size": 2}}]"#).contains("Newton takes no learning-rate schedule"));
    assert!(parse(r#"[{"optimizer": "LBFGS", "lr": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}]"#).contains("LBFGS takes no"));
    let unknown = parse(r#"[{"optimizer": "BFGS"}]"#);
    assert!(unknown.contains("BFGS") && unknown.contains("DampedNewton, LBFGS"), "{unknown}");
    let many = format!(r#"{{"function": "booth", "steps": 3, "starts": {:?}, "runs": [{{"optimizer": "LBFGS"}}]}}"#, vec![[0.5f32, 0.5]; 65]);
    assert!(TrajectorySpec::from_json(&many).unwrap_err().to_string().contains("at most 64 start points"));
    let basin = BasinSpec {
        function: TestFunction::Booth,
        optimizer: "LBFGS".into(),
        hyperparameters: Default::default(),
        schedule: None,
        lr: None,
        steps: 10,
        resolution: 4,
        domain: None,
    };
    let error = blocking::run_basin(&Device::Cpu, &basin).unwrap_err().to_string();
    assert!(error.contains("LBFGS runs one L-BFGS per start point") && error.contains("DampedNewton"), "{error}");
}

#[test]
fn the_newton_and_closure_kernels_translate_for_every_backend_and_function() {
    // As the_gradient_kernel_translates_for_every_backend_and_function, for Newton's entries
    // and L-BFGS's closure.
    let sources = [
        (wgpu_optim::trajectories::newton::NEWTON_WGSL, &["newton", "damped_newton"][..]),
        (wgpu_optim::trajectories::FUNCTIONS_WGSL, &["value_and_gradient"][..]),
    ];
    for (source, entries) in sources {
        let module = naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)));
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty());
        let info = validator.validate(&module).unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)));
        for &entry_name in entries {
            for (id, function) in TestFunction::ALL.iter().enumerate() {
                let constants: naga::back::PipelineConstants = [("function_id".to_string(), id as f64)].into_iter().collect();
                let entry = (naga::ShaderStage::Compute, entry_name);
                let (module, info) = naga::back::pipeline_constants::process_overrides(&module, &info, Some(entry), &constants).unwrap();
                let spirv = naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None).unwrap();
                assert!(!spirv.is_empty(), "{function} {entry_name}: SPIR-V");
                let msl_pipeline = naga::back::msl::PipelineOptions { entry_point: Some((entry.0, entry.1.to_string())), ..Default::default() };
                naga::back::msl::write_string(&module, &info, &naga::back::msl::Options::default(), &msl_pipeline).unwrap();
                let hlsl_options = naga::back::hlsl::Options {
                    special_constants_binding: Some(naga::back::hlsl::BindTarget { space: 1, register: 0, ..Default::default() }),
                    ..Default::default()
                };
                let hlsl_pipeline = naga::back::hlsl::PipelineOptions { entry_point: Some((entry.0, entry.1.to_string())) };
                let mut hlsl = String::new();
                naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline).write(&module, &info, None).unwrap();
                let glsl_options = naga::back::glsl::Options {
                    version: naga::back::glsl::Version::Embedded { version: 310, is_webgl: false },
                    ..Default::default()
                };
                let glsl_pipeline = naga::back::glsl::PipelineOptions { shader_stage: entry.0, entry_point: entry.1.to_string(), multiview: None };
                let mut glsl = String::new();
                naga::back::glsl::Writer::new(&mut glsl, &module, &info, &glsl_options, &glsl_pipeline, Default::default())
                    .and_then(|mut w| w.write())
                    .unwrap();
            }
        }
    }
}

#[test]
#[cfg(feature = "cli")]
fn the_trajectories_command_runs_newton_and_lbfgs() {
    gpus();
    let dir = scratch("cli-newton");
    let out = dir.join("paths.json");
    let output = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
        .args(["trajectories", "--function", "saddle", "--start", "1,0.1", "--steps", "8"])
        .args(["--optimizer", "Newton", "--optimizer", "DampedNewton", "--hyperparameters", "{}", "--hyperparameters", r#"{"grow": 10}"#])
        .args(["--optimizer", "LBFGS", "--hyperparameters", r#"{"line_search_fn": "strong_wolfe"}"#, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{log}");
    assert!(log.contains("closure evaluations") && log.contains("steps rejected, damping"), "{log}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(report["runs"][0]["paths"][0][1], serde_json::json!([0.0, 0.0]), "plain Newton on the saddle");
    assert_eq!(report["runs"][1]["hyperparameters"]["grow"], 10.0);
    let output = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
        .args(["trajectories", "--optimizer", "Newton", "--hyperparameters", r#"{"lr": 0}"#, "--out"])
        .arg(dir.join("bad.json"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Newton: invalid lr"));
}

/// A run may keep its state in bf16 (stochastic rounding) or int8: the page's "state" choice.
/// The GPU equals the CPU twin bit for bit, and the report gives the optimizer's memory.
#[test]
fn runs_keep_their_state_in_the_type_the_spec_asks() {
    // 2,048 start points: one [2048, 2] tensor of 4,096 elements, so int8 quantizes it.
    let starts: Vec<[f32; 2]> = (0..2048).map(|k| [-1.5 + (k % 64) as f32 * 0.05, -1.0 + (k / 64) as f32 * 0.07]).collect();
    let spec = serde_json::json!({
        "function": "rosenbrock", "steps": 60, "sample_every": 20, "starts": starts,
        "runs": [{"optimizer": "Adam", "hyperparameters": {"lr": 0.01}},
                 {"optimizer": "Adam", "hyperparameters": {"lr": 0.01}, "state_dtype": "bf16"},
                 {"optimizer": "SGD", "hyperparameters": {"lr": 1e-4, "momentum": 0.9}, "state_dtype": "int8"}]});
    let spec = TrajectorySpec::from_json(&spec.to_string()).unwrap();
    let cpu = blocking::run_spec(&Device::Cpu, &spec).unwrap();
    let flat = |r: &wgpu_optim::trajectories::RunReport| r.paths.iter().flatten().flatten().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_ne!(flat(&cpu.runs[0]), flat(&cpu.runs[1]), "bf16 state changes the paths");
    for gpu in gpus() {
        let report = blocking::run_spec(&Device::Gpu(gpu.clone()), &spec).unwrap();
        for (a, b) in report.runs.iter().zip(&cpu.runs) {
            assert_eq!(a.state_dtype, b.state_dtype);
            assert!(flat(a) == flat(b), "{} with {} state on {}", a.optimizer, a.state_dtype, gpu.adapter());
        }
        let state = |k: usize| report.runs[k].state_bytes_per_parameter.unwrap();
        assert_eq!((state(0), state(1)), (8.0, 4.0), "Adam's two moments in f32, then bf16");
        assert!((state(2) - (1.0 + 8.0 / 256.0)).abs() < 1e-9, "SGD's momentum in int8: {}", state(2));
        assert!(report.runs[1].gpu_bytes.unwrap() < report.runs[0].gpu_bytes.unwrap());
    }
    assert!(cpu.runs[0].gpu_bytes.is_none());
    // Newton keeps f32 state only.
    let newton = serde_json::json!({"function": "rosenbrock", "steps": 3, "runs": [{"optimizer": "Newton", "state_dtype": "bf16"}]});
    let error = blocking::run_spec(&Device::Cpu, &TrajectorySpec::from_json(&newton.to_string()).unwrap()).unwrap_err();
    assert!(error.to_string().contains("f32 only"), "{error}");
}
