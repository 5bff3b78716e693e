//! L-BFGS (torch.optim.LBFGS) on the GPU: against its CPU twin bit for bit, against torch's
//! golden runs, and what a step costs in reads and dispatches.

use serde_json::json;
use wgpu_optim::minimize::{MinimizeResult, MinimizeSpec};
use wgpu_optim::problems::{Problem, ProblemKind};

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
                assert_eq!(
                    on_gpu.lbfgs_steps, on_cpu.lbfgs_steps,
                    "{what}: reads, dispatches, evaluations, iterations"
                );
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
