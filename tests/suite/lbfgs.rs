//! L-BFGS (torch.optim.LBFGS) on the GPU: against its CPU twin bit for bit, against torch's
//! golden runs, and what a step costs in reads and dispatches.

use serde_json::json;
use wgpu_optim::minimize::{MinimizeResult, MinimizeSpec};
use wgpu_optim::problems::{GpuProblem, Problem, ProblemKind};
use wgpu_optim::{CpuLbfgs, Lbfgs, LbfgsOptions, LineSearch, Parameters, TensorId, TensorView};

use wgpu_optim::GpuContext;

use crate::common::gpus;

fn spec(
    kind: ProblemKind,
    dim: usize,
    hyperparameters: serde_json::Value,
    steps: usize,
) -> MinimizeSpec {
    let start = match kind {
        ProblemKind::Rosenbrock => (0..dim)
            .map(|i| if i % 2 == 0 { -1.2 } else { 1.0 })
            .collect(),
        ProblemKind::Quadratic => (0..dim)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect(),
    };
    MinimizeSpec {
        problem: Problem::new(kind, dim).unwrap(),
        start,
        optimizer: "LBFGS".into(),
        hyperparameters,
        steps,
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Whether the adapter computes every float32 operation of the kernels as written, so that
/// the CPU twin equals it bit for bit: llvmpipe through Vulkan. llvmpipe through GL contracts
/// some a·b + c into one rounding (dot products, the problems' loss terms), as GPUs may.
fn rounds_as_written(gpu: &GpuContext) -> bool {
    let adapter = gpu.adapter();
    adapter.backend == wgpu::Backend::Vulkan && adapter.name.contains("llvmpipe")
}

fn relative_difference(a: &[f32], b: &[f32]) -> f64 {
    let scale = b
        .iter()
        .fold(0.0f64, |m, v| m.max(f64::from(v.abs())))
        .max(1e-30);
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| {
        m.max((f64::from(*x) - f64::from(*y)).abs())
    }) / scale
}

/// Where the adapter rounds as written, GPU and CPU twin agree bit for bit: every loss, the
/// final point, and what each step did (reads, dispatches, evaluations, iterations). Elsewhere
/// the non-chaotic cases (the quadratic) agree to 1e-5 with the same counts.
#[test]
fn lbfgs_on_the_gpu_equals_its_cpu_twin() {
    let cases = [
        (ProblemKind::Rosenbrock, 10, json!({"history_size": 3}), 6),
        (
            ProblemKind::Rosenbrock,
            100,
            json!({"line_search_fn": "strong_wolfe"}),
            5,
        ),
        (
            ProblemKind::Quadratic,
            3000,
            json!({"history_size": 5, "line_search_fn": "strong_wolfe", "max_iter": 10}),
            3,
        ),
        (
            ProblemKind::Quadratic,
            50,
            json!({"lr": 0.001, "maximize": true, "max_iter": 5}),
            2,
        ),
    ];
    for gpu in gpus() {
        for (kind, dim, hyperparameters, steps) in &cases {
            let spec = spec(*kind, *dim, hyperparameters.clone(), *steps);
            let on_gpu = pollster::block_on(spec.run_gpu(gpu)).unwrap();
            let on_cpu = spec.run_cpu().unwrap();
            let what = format!("{kind} {dim} {hyperparameters} on {}", gpu.adapter());
            assert_eq!(on_gpu.lbfgs_steps.len(), *steps, "{what}");
            if rounds_as_written(gpu) {
                assert_eq!(
                    bits(&on_gpu.loss),
                    bits(&on_cpu.loss),
                    "{what}: losses\n gpu {:?}\n cpu {:?}",
                    on_gpu.loss,
                    on_cpu.loss
                );
                assert_eq!(bits(&on_gpu.x), bits(&on_cpu.x), "{what}: final x");
                assert_eq!(on_gpu.func_evals, on_cpu.func_evals, "{what}: func_evals");
                assert_eq!(
                    on_gpu.lbfgs_steps, on_cpu.lbfgs_steps,
                    "{what}: reads, dispatches, evaluations, iterations"
                );
            } else if *kind == ProblemKind::Quadratic {
                let counts = |r: &MinimizeResult| -> Vec<(usize, usize, u64, u64)> {
                    r.lbfgs_steps.iter().map(|s| (s.reads, s.dispatches, s.evaluations, s.iterations)).collect()
                };
                assert_eq!(counts(&on_gpu), counts(&on_cpu), "{what}: reads, dispatches, evaluations, iterations");
                let loss = relative_difference(&on_gpu.loss, &on_cpu.loss);
                let x = relative_difference(&on_gpu.x, &on_cpu.x);
                assert!(
                    loss < 1e-5 && x < 1e-5,
                    "{what}: GPU and CPU differ by {loss:e} (loss), {x:e} (x)"
                );
            }
        }
    }
}

/// A golden run of tests/golden/minimize (torch 2.15 on the CPU).
struct Golden {
    name: String,
    spec: MinimizeSpec,
    stable: bool,
    x: Vec<f32>,
    loss: Vec<f32>,
    func_evals: Option<Vec<u64>>,
    n_iter: Option<Vec<u64>>,
}

fn goldens() -> Vec<Golden> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/minimize");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("manifest.json")).unwrap()).unwrap();
    let mut goldens = Vec::new();
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap().to_string();
        let dir = root.join("cases").join(&name);
        let start = std::fs::read(dir.join("start.safetensors")).unwrap();
        let expected = std::fs::read(dir.join("expected.safetensors")).unwrap();
        let start = safetensors::SafeTensors::deserialize(&start).unwrap();
        let expected = safetensors::SafeTensors::deserialize(&expected).unwrap();
        let f32s = |file: &safetensors::SafeTensors, key: &str| -> Vec<f32> {
            bytemuck::pod_collect_to_vec(file.tensor(key).unwrap().data())
        };
        let counts = |key: &str| -> Option<Vec<u64>> {
            expected.tensor(key).ok().map(|t| {
                bytemuck::pod_collect_to_vec::<u8, i64>(t.data())
                    .into_iter()
                    .map(|v| v as u64)
                    .collect()
            })
        };
        let problem = Problem::new(
            case["problem"].as_str().unwrap().parse().unwrap(),
            case["dim"].as_u64().unwrap() as usize,
        )
        .unwrap();
        goldens.push(Golden {
            spec: MinimizeSpec {
                problem,
                start: f32s(&start, "x"),
                optimizer: case["optimizer"].as_str().unwrap().into(),
                hyperparameters: case["hyperparameters"].clone(),
                steps: case["steps"].as_u64().unwrap() as usize,
            },
            stable: case["sensitivity"]["stable"].as_bool().unwrap_or(true),
            x: f32s(&expected, "x"),
            loss: f32s(&expected, "loss"),
            func_evals: counts("func_evals"),
            n_iter: counts("n_iter"),
            name,
        });
    }
    goldens
}

/// Largest |a − e| / (atol + |e|) over the losses, and over x against its largest magnitude.
fn deviation(result: &MinimizeResult, golden: &Golden) -> (f64, f64) {
    let loss = result
        .loss
        .iter()
        .zip(&golden.loss)
        .map(|(a, e)| (f64::from(*a) - f64::from(*e)).abs() / (1e-6 + f64::from(e.abs())))
        .fold(0.0, f64::max);
    (loss, relative_difference(&result.x, &golden.x))
}

#[test]
fn minimize_matches_torch_golden_runs() {
    let goldens = goldens();
    assert!(goldens.len() >= 30, "the golden cases are present");
    let mut failures = Vec::new();
    let mut check = |golden: &Golden, backend: &str, result: MinimizeResult| {
        let (loss, x) = deviation(&result, golden);
        let counts_equal = golden
            .func_evals
            .as_ref()
            .is_none_or(|f| *f == result.func_evals)
            && golden.n_iter.as_ref().is_none_or(|n| *n == result.n_iter);
        eprintln!(
            "{:<48} {backend:<7} loss {loss:.2e}  x {x:.2e}  counts {}{}",
            golden.name,
            if counts_equal { "equal" } else { "DIFFER" },
            if golden.stable { "" } else { "  (unstable)" }
        );
        let tolerance = 1e-4;
        if golden.stable && (!counts_equal || loss > tolerance || x > tolerance) {
            failures.push(format!(
                "{} on {backend}: loss {loss:e}, x {x:e}, counts equal {counts_equal}",
                golden.name
            ));
        }
    };
    for golden in &goldens {
        check(golden, "cpu", golden.spec.run_cpu().unwrap());
    }
    for gpu in gpus() {
        let backend = format!("{:?}", gpu.adapter().backend);
        for golden in &goldens {
            check(
                golden,
                &backend,
                pollster::block_on(golden.spec.run_gpu(gpu)).unwrap(),
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The problem on an L-BFGS optimizer's views: x spanning `len` elements from the start of the
/// parameter buffer (several tensors of 64-multiple sizes lie back to back without padding).
fn bound_problem(gpu: &GpuContext, lbfgs: &Lbfgs, first: TensorId, problem: &Problem) -> GpuProblem {
    let whole = |view: TensorView| TensorView { offset: 0, len: problem.dim(), ..view };
    let (x, grad) = (whole(lbfgs.param(first).unwrap()), whole(lbfgs.grad(first).unwrap()));
    pollster::block_on(GpuProblem::new(gpu, problem, &x, &grad, &lbfgs.loss_view())).unwrap()
}

fn rosenbrock_start(dim: usize) -> Vec<f32> {
    (0..dim).map(|i| if i % 2 == 0 { -1.2 } else { 1.0 }).collect()
}

/// Saving in the middle of a run and restoring into a new optimizer continues the run bit for
/// bit, on the GPU and on the CPU twin (with and without a line search).
#[test]
fn lbfgs_resumes_from_a_checkpoint_exactly() {
    let problem = Problem::new(ProblemKind::Rosenbrock, 100).unwrap();
    for line_search_fn in [None, Some(LineSearch::StrongWolfe)] {
        let options = LbfgsOptions { history_size: 4, max_iter: 5, lr: 0.5, line_search_fn, ..LbfgsOptions::default() };
        let params = || {
            let mut params = Parameters::new();
            let x = params.add("x", &[100], rosenbrock_start(100)).unwrap();
            (params, x)
        };
        for gpu in gpus() {
            let run = |steps: std::ops::Range<usize>, from: Option<&[u8]>| {
                let (params, x) = params();
                let mut lbfgs = Lbfgs::new(gpu, params, options.clone()).unwrap();
                if let Some(bytes) = from {
                    pollster::block_on(lbfgs.restore_async(bytes)).unwrap();
                }
                let problem = bound_problem(gpu, &lbfgs, x, &problem);
                let losses: Vec<f32> = steps.map(|_| lbfgs.step(|encoder| Ok(problem.record(encoder))).unwrap()).collect();
                let bytes = pollster::block_on(lbfgs.checkpoint_async()).unwrap();
                (losses, lbfgs.read_param(x).unwrap(), bytes, lbfgs.func_evals())
            };
            let (straight, x_straight, _, evals) = run(0..6, None);
            let (first, _, saved, _) = run(0..3, None);
            let (second, x_resumed, _, resumed_evals) = run(3..6, Some(&saved));
            let what = format!("{line_search_fn:?} on {}", gpu.adapter());
            assert_eq!(bits(&[first, second].concat()), bits(&straight), "{what}: losses");
            assert_eq!(bits(&x_resumed), bits(&x_straight), "{what}: final x");
            assert_eq!(resumed_evals, evals, "{what}: func_evals continues");
        }
        let cpu_run = |steps: std::ops::Range<usize>, from: Option<&[u8]>| {
            let (params, x) = params();
            let mut lbfgs = CpuLbfgs::new(params, options.clone()).unwrap();
            if let Some(bytes) = from {
                pollster::block_on(lbfgs.restore_async(bytes)).unwrap();
            }
            let range = lbfgs.tensor_range(x).unwrap();
            let losses: Vec<f32> = steps
                .map(|_| lbfgs.step(|e| Ok(*e.loss = problem.evaluate(&e.params[range.clone()], &mut e.grad[range.clone()]))).unwrap())
                .collect();
            (losses, lbfgs.params()[range].to_vec(), pollster::block_on(lbfgs.checkpoint_async()).unwrap())
        };
        let (straight, x_straight, _) = cpu_run(0..6, None);
        let (first, _, saved) = cpu_run(0..3, None);
        let (second, x_resumed, _) = cpu_run(3..6, Some(&saved));
        assert_eq!(bits(&[first, second].concat()), bits(&straight), "{line_search_fn:?} on the CPU: losses");
        assert_eq!(bits(&x_resumed), bits(&x_straight), "{line_search_fn:?} on the CPU: final x");
    }
}

/// One tensor of 4,096 elements and 64 tensors of 64 hold the same flat vector: the runs are
/// identical, and so is every step's dispatch count (it depends on the history, not on the
/// tensors).
#[test]
fn lbfgs_dispatches_do_not_grow_with_the_number_of_tensors() {
    let dim = 4096;
    let problem = Problem::new(ProblemKind::Rosenbrock, dim).unwrap();
    let start = rosenbrock_start(dim);
    let options = LbfgsOptions { history_size: 8, line_search_fn: Some(LineSearch::StrongWolfe), ..LbfgsOptions::default() };
    for gpu in gpus() {
        let mut runs = Vec::new();
        for tensors in [1, 64] {
            let mut params = Parameters::new();
            let size = dim / tensors;
            let ids: Vec<TensorId> = (0..tensors).map(|t| params.add(&format!("w{t}"), &[size], start[t * size..(t + 1) * size].to_vec()).unwrap()).collect();
            let mut lbfgs = Lbfgs::new(gpu, params, options.clone()).unwrap();
            assert_eq!(lbfgs.flat_len(), dim, "64-element tensors pack without padding");
            let problem = bound_problem(gpu, &lbfgs, ids[0], &problem);
            let mut steps = Vec::new();
            let mut losses = Vec::new();
            for _ in 0..3 {
                losses.push(lbfgs.step(|encoder| Ok(problem.record(encoder))).unwrap());
                steps.push(lbfgs.last_step());
            }
            runs.push((losses, steps));
        }
        assert_eq!(bits(&runs[0].0), bits(&runs[1].0), "on {}", gpu.adapter());
        assert_eq!(runs[0].1, runs[1].1, "on {}: reads, dispatches, evaluations, iterations", gpu.adapter());
        let last = runs[0].1[2];
        // Each read is one evaluation (the line search's and the step's first) or one of the two
        // scalars torch branches on per iteration (ys after the first, gtd).
        assert!(last.reads as u64 <= last.evaluations + 2 * last.iterations, "{last:?}");
    }
}

#[test]
fn lbfgs_rejects_bad_input_clearly() {
    let invalid = [
        (json!({"lr": -1.0}), "lr"),
        (json!({"history_size": 0}), "history_size"),
        (json!({"line_search_fn": "backtracking"}), "line_search_fn"),
        (json!({"momentum": 0.9}), "momentum"),
        (json!({"tolerance_grad": f64::NAN}), "tolerance_grad"),
        (json!({"line_search_fn": "strong_wolfe", "max_eval": 0}), "max_eval"),
    ];
    for (hyperparameters, name) in invalid {
        let error = LbfgsOptions::from_json(&hyperparameters).expect_err("invalid hyper-parameters are refused");
        assert!(error.to_string().contains(name), "{hyperparameters}: {error}");
    }
    let mut params = Parameters::new();
    let x = params.add("x", &[3], vec![1.0, 2.0, 3.0]).unwrap();
    let mut other = Parameters::new();
    let foreign = other.add("y", &[3], vec![0.0; 3]).unwrap();
    assert!(CpuLbfgs::new(Parameters::new(), LbfgsOptions::default()).is_err(), "no tensors");
    let mut lbfgs = CpuLbfgs::new(params, LbfgsOptions::default()).unwrap();
    assert!(matches!(lbfgs.tensor_range(foreign), Err(wgpu_optim::Error::ForeignTensor { .. })));
    let range = lbfgs.tensor_range(x).unwrap();
    lbfgs.step(|e| {
        *e.loss = e.params[range.clone()].iter().map(|v| v * v).sum();
        for (g, p) in e.grad[range.clone()].iter_mut().zip(&e.params[range.clone()]) {
            *g = 2.0 * p;
        }
        Ok(())
    })
    .unwrap();
    let saved = pollster::block_on(lbfgs.checkpoint_async()).unwrap();
    // A closure's error ends the step with that error.
    let error = lbfgs.step(|_| Err(wgpu_optim::Error::Config("backward failed".into()))).unwrap_err();
    assert!(error.to_string().contains("backward failed"));
    // Corrupt or mismatched checkpoints are refused and change nothing.
    let before = lbfgs.params().to_vec();
    assert!(pollster::block_on(lbfgs.restore_async(&saved[..saved.len() / 2])).is_err());
    let mut bigger = Parameters::new();
    bigger.add("x", &[4], vec![0.0; 4]).unwrap();
    let mut mismatched = CpuLbfgs::new(bigger, LbfgsOptions::default()).unwrap();
    let error = pollster::block_on(mismatched.restore_async(&saved)).unwrap_err();
    assert!(error.to_string().contains("\"x\""), "{error}");
    let mut other_history = Parameters::new();
    other_history.add("x", &[3], vec![0.0; 3]).unwrap();
    let mut other_history = CpuLbfgs::new(other_history, LbfgsOptions { history_size: 5, ..LbfgsOptions::default() }).unwrap();
    assert!(pollster::block_on(other_history.restore_async(&saved)).unwrap_err().to_string().contains("history_size"));
    assert_eq!(lbfgs.params(), &before[..]);
}
