//! Newton's method with a dense Hessian on the GPU: the solve against its CPU twin, the
//! closed form on the quadratic, the saddle that plain Newton walks into and the damped
//! variant avoids, convergence on Rosenbrock, and bad input.

use wgpu_optim::newton::{solve_reference, Damping, Evaluate, Newton, NewtonOptions};
use wgpu_optim::newton_cg::{CgEvaluate, NewtonCg, NewtonCgOptions};
use wgpu_optim::problems::{GpuProblem, Problem, ProblemKind};
use wgpu_optim::{GpuContext, Parameters};

use crate::common::{gpus, Rng};

fn newton_on(gpu: &GpuContext, problem: &Problem, start: Vec<f32>, options: NewtonOptions) -> (Newton, GpuProblem) {
    let mut params = Parameters::new();
    params.add("x", &[problem.dim()], start).unwrap();
    let newton = Newton::new(gpu, params, options).unwrap();
    let bound = pollster::block_on(GpuProblem::with_hessian(gpu, problem, &newton.param_view(), &newton.grad_view(), &newton.loss_view(), Some(&newton.hessian_view()))).unwrap();
    (newton, bound)
}

fn step(newton: &mut Newton, problem: &GpuProblem) -> wgpu_optim::Result<wgpu_optim::newton::NewtonStep> {
    newton.step(|encoder, what| {
        problem.record(encoder);
        if what == Evaluate::All {
            problem.record_hessian(encoder);
        }
        Ok(())
    })
}

fn rounds_as_written(gpu: &GpuContext) -> bool {
    gpu.adapter().backend == wgpu::Backend::Vulkan && gpu.adapter().name.contains("llvmpipe")
}

/// One plain step on Rosenbrock (an indefinite, pivoted system) and one damped step equal the
/// CPU twin: bit for bit where the adapter rounds as written, to 1e-5 elsewhere.
#[test]
fn the_gpu_solve_equals_its_cpu_twin() {
    let problem = Problem::new(ProblemKind::Rosenbrock, 60).unwrap();
    let mut rng = Rng::new(7);
    let start: Vec<f32> = rng.vec(60, 2.0);
    let mut grad = vec![0.0; 60];
    problem.evaluate(&start, &mut grad);
    let hessian = problem.hessian(&start);
    for gpu in gpus() {
        for damping in [None, Some(Damping { initial: 1e4, ..Damping::default() })] {
            let lambda = damping.as_ref().map_or(0.0, |d| d.initial as f32);
            let (p, min_pivot, _) = solve_reference(&hessian, &grad, lambda, damping.is_none());
            let expected: Vec<f32> = start.iter().zip(&p).map(|(x, p)| x - 1.0 * p).collect();
            let (mut newton, bound) = newton_on(gpu, &problem, start.clone(), NewtonOptions { damping: damping.clone(), ..NewtonOptions::default() });
            let report = step(&mut newton, &bound);
            let what = format!("damping {damping:?} on {}", gpu.adapter());
            if damping.is_some() {
                assert!(min_pivot > 0.0, "λ = 1e4 makes H + λI positive definite here");
                let report = report.unwrap();
                assert_eq!(report.attempts, 1, "{what}");
            } else {
                report.unwrap();
            }
            let got = newton.read_params().unwrap();
            if rounds_as_written(gpu) {
                assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{what}");
            } else {
                let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let worst = got.iter().zip(&expected).fold(0.0f32, |m, (a, e)| m.max((a - e).abs())) / scale;
                assert!(worst < 1e-5, "{what}: {worst:e}");
            }
        }
    }
}

/// On the quadratic ½·Σ c_i·x_i² (condition number 1000) one Newton step lands on the minimum.
#[test]
fn newton_solves_the_quadratic_in_one_step() {
    let problem = Problem::new(ProblemKind::Quadratic, 200).unwrap();
    let start: Vec<f32> = Rng::new(3).vec(200, 1.0);
    for gpu in gpus() {
        let (mut newton, bound) = newton_on(gpu, &problem, start.clone(), NewtonOptions::default());
        let report = step(&mut newton, &bound).unwrap();
        assert_eq!(report.reads, 1);
        let x = newton.read_params().unwrap();
        let worst = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(worst <= 1e-6, "on {}: max |x| after one step is {worst:e}", gpu.adapter());
    }
}

/// f(x, y) = x² − y², written by a user kernel: plain Newton jumps onto the saddle (0, 0); the
/// damped step is a descent direction and moves away from it.
#[test]
fn plain_newton_walks_into_the_saddle_and_damped_newton_does_not() {
    const SADDLE: &str = "
        @group(0) @binding(0) var<storage, read> x: array<f32>;
        @group(0) @binding(1) var<storage, read_write> grad: array<f32>;
        @group(0) @binding(2) var<storage, read_write> hessian: array<f32>;
        @group(0) @binding(3) var<storage, read_write> loss: array<f32>;
        @compute @workgroup_size(1) fn main() {
            loss[0] = x[0] * x[0] - x[1] * x[1];
            grad[0] = 2.0 * x[0];
            grad[1] = -2.0 * x[1];
            hessian[0] = 2.0;
            hessian[3] = -2.0;
        }";
    for gpu in gpus() {
        let mut ends = Vec::new();
        for damping in [None, Some(Damping::default())] {
            let mut params = Parameters::new();
            params.add("xy", &[2], vec![1.0, 0.1]).unwrap();
            let mut newton = Newton::new(gpu, params, NewtonOptions { damping, ..NewtonOptions::default() }).unwrap();
            let device = gpu.device();
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: None, source: wgpu::ShaderSource::Wgsl(SADDLE.into()) });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: None,
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            let views = [newton.param_view(), newton.grad_view(), newton.hessian_view(), newton.loss_view()];
            let bind_group = wgpu_optim::TensorView::bind_group(device, &pipeline.get_bind_group_layout(0), &views.iter().collect::<Vec<_>>());
            let mut losses = Vec::new();
            for _ in 0..12 {
                let report = newton
                    .step(|encoder, _| {
                        let mut pass = encoder.begin_compute_pass(&Default::default());
                        pass.set_pipeline(&pipeline);
                        pass.set_bind_group(0, &bind_group, &[]);
                        pass.dispatch_workgroups(1, 1, 1);
                        Ok(())
                    })
                    .unwrap();
                losses.push(report.loss);
            }
            ends.push((newton.read_params().unwrap(), losses));
        }
        let (plain, damped) = (&ends[0], &ends[1]);
        assert_eq!(plain.0, [0.0, 0.0], "on {}: plain Newton lands on the saddle", gpu.adapter());
        eprintln!("saddle on {}: plain {plain:?}, damped {damped:?}", gpu.adapter());
        assert!(damped.0[1].abs() > 0.5 && damped.1.windows(2).all(|l| l[1] < l[0]) && *damped.1.last().unwrap() < 0.0,
            "on {}: damped Newton descends away from the saddle: {damped:?}", gpu.adapter());
    }
}

/// Damped Newton from 0 reaches Rosenbrock's global minimum (1, …, 1). (From the classic
/// start (−1.2, 1, …) in 10 dimensions it ends in the local minimum near x₀ = −1, f ≈ 3.99,
/// as any descent method may.)
#[test]
fn damped_newton_converges_on_rosenbrock() {
    let problem = Problem::new(ProblemKind::Rosenbrock, 10).unwrap();
    let start = vec![0.0f32; 10];
    for gpu in gpus() {
        let (mut newton, bound) = newton_on(gpu, &problem, start.clone(), NewtonOptions { damping: Some(Damping::default()), ..NewtonOptions::default() });
        let mut steps = 0;
        let mut last = f32::MAX;
        while steps < 200 {
            match step(&mut newton, &bound) {
                Ok(report) => last = report.new_loss.unwrap(),
                Err(_) => break, // no lower loss left at float32 precision
            }
            steps += 1;
            if last < 1e-10 {
                break;
            }
        }
        let x = newton.read_params().unwrap();
        let worst = x.iter().fold(0.0f32, |m, v| m.max((v - 1.0).abs()));
        eprintln!("damped Newton on {}: {steps} steps, loss {last:e}, max |x − 1| {worst:e}", gpu.adapter());
        assert!(worst < 1e-3 && steps < 100, "on {}: {steps} steps, loss {last}, max |x − 1| {worst}", gpu.adapter());
    }
}

#[test]
fn newton_rejects_bad_input_and_keeps_x_on_a_singular_hessian() {
    for (options, name) in [
        (NewtonOptions { lr: 0.0, ..NewtonOptions::default() }, "lr"),
        (NewtonOptions { damping: Some(Damping { shrink: 1.5, ..Damping::default() }), ..NewtonOptions::default() }, "shrink"),
        (NewtonOptions { damping: Some(Damping { grow: 1.0, ..Damping::default() }), ..NewtonOptions::default() }, "grow"),
        (NewtonOptions { damping: Some(Damping { max_attempts: 0, ..Damping::default() }), ..NewtonOptions::default() }, "max_attempts"),
    ] {
        let error = options.validate().unwrap_err();
        assert!(error.to_string().contains(name), "{error}");
    }
    for gpu in gpus() {
        let mut params = Parameters::new();
        params.add("x", &[3], vec![1.0, 2.0, 3.0]).unwrap();
        let mut newton = Newton::new(gpu, params, NewtonOptions::default()).unwrap();
        // The closure writes no Hessian: H = 0 is singular.
        let error = newton.step(|_, _| Ok(())).unwrap_err();
        assert!(error.to_string().contains("singular"), "{error}");
        assert_eq!(newton.read_params().unwrap(), [1.0, 2.0, 3.0], "x stays");
    }
}

fn newton_cg_on(gpu: &GpuContext, problem: &Problem, start: Vec<f32>, options: NewtonCgOptions) -> (NewtonCg, GpuProblem) {
    let mut params = Parameters::new();
    params.add("x", &[problem.dim()], start).unwrap();
    let cg = NewtonCg::new(gpu, params, options).unwrap();
    let bound = pollster::block_on(GpuProblem::with_hessian_times(gpu, problem, &cg.param_view(), &cg.grad_view(), &cg.loss_view(), &cg.direction_view(), &cg.product_view())).unwrap();
    (cg, bound)
}

fn cg_step(cg: &mut NewtonCg, problem: &GpuProblem) -> f32 {
    cg.step(|encoder, what| {
        match what {
            CgEvaluate::LossAndGradient => problem.record(encoder),
            CgEvaluate::HessianTimesDirection => problem.record_hessian_times_direction(encoder),
        }
        Ok(())
    })
    .unwrap()
}

/// Newton-CG sees H only through Hessian-vector products: one step on the quadratic (CG run to
/// convergence) lands on its minimum, and from near Rosenbrock's minimum in 10,000 dimensions the
/// loss falls quadratically.
#[test]
fn newton_cg_solves_the_quadratic_and_converges_on_rosenbrock() {
    let quadratic = Problem::new(ProblemKind::Quadratic, 100).unwrap();
    let start: Vec<f32> = Rng::new(5).vec(100, 1.0);
    let rosenbrock = Problem::new(ProblemKind::Rosenbrock, 10_000).unwrap();
    let mut rng = Rng::new(9);
    let near: Vec<f32> = (0..10_000).map(|_| 1.0 + 0.01 * (2.0 * rng.uniform() - 1.0)).collect();
    for gpu in gpus() {
        let (mut cg, bound) = newton_cg_on(gpu, &quadratic, start.clone(), NewtonCgOptions { max_cg_iter: 200, cg_tolerance: 1e-7, ..NewtonCgOptions::default() });
        cg_step(&mut cg, &bound);
        let worst = cg.read_params().unwrap().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(worst < 1e-4, "on {}: max |x| after one Newton-CG step is {worst:e}", gpu.adapter());

        let (mut cg, bound) = newton_cg_on(gpu, &rosenbrock, near.clone(), NewtonCgOptions { max_cg_iter: 30, ..NewtonCgOptions::default() });
        let losses: Vec<f32> = (0..6).map(|_| cg_step(&mut cg, &bound)).collect();
        eprintln!("Newton-CG on Rosenbrock 10,000-d on {}: {losses:?}", gpu.adapter());
        assert!(losses[5] < 1e-6 * losses[0], "on {}: {losses:?}", gpu.adapter());
    }
    assert!(NewtonCgOptions { max_cg_iter: 0, ..NewtonCgOptions::default() }.validate().is_err());
}
