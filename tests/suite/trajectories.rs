//! Trajectories on 2-D test functions (the browser demo's runs, natively): gradients against
//! finite differences, the GPU runner (gradient kernel + optimizer in one pass, many steps per
//! submission, positions sampled on the GPU) against the CPU reference for every rule and
//! function, per-step learning rates, basin maps, errors, and the `trajectories` command.

#[cfg(feature = "cli")]
use std::path::PathBuf;
#[cfg(feature = "cli")]
use std::process::Command;

use wgpu_optim::rules;
use wgpu_optim::trajectories::{
    blocking, learning_rates, sampled_steps, BasinSpec, CpuRunner, Device, GpuRunner, RunInput, RunSpec, TestFunction,
    TrajectorySpec, MAX_STEPS_PER_SUBMISSION,
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
                let input = RunInput { rule, starts: starts(function), steps: if element_wise { 150 } else { 40 }, sample_every: 10, lr: None };
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
        let every = |k| RunInput { rule: rule("Adam", serde_json::json!({"lr": 0.05})), starts: starts(function), steps: 50, sample_every: k, lr: None };
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
    let input = RunInput { rule: rule("NAdam", serde_json::json!({"lr": 0.01})), starts: starts(function), steps: 2345, sample_every: 100, lr: None };
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
    let input = |lr| RunInput { rule: base(), starts: starts(function), steps, sample_every: 1, lr };
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
    let run = RunSpec { optimizer: "Adam".into(), hyperparameters: Default::default(), schedule: None, lr: Some(vec![0.1; 3]) };
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
    let many = RunInput { rule: rule("Lamb", serde_json::json!({})), starts: vec![[0.5, 0.5]; 65], steps: 3, sample_every: 1, lr: None };
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
