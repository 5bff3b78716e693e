//! The `second-order` section: what one L-BFGS step costs against one AdamW step on the same
//! model (the Rosenbrock problem in N dimensions, `wgpu_optim::problems`), in the same run on
//! the same adapter: optimizer dispatches, CPU reads (each a full wait for the GPU), closure
//! evaluations and wall time per step, CPU waits included. AdamW waits once per step too
//! (for its loss), as a training loop that logs the loss does.

use std::time::Instant;

use serde::Serialize;
use wgpu_optim::lbfgs::{Lbfgs, LbfgsOptions, LineSearch};
use wgpu_optim::problems::{GpuProblem, Problem, ProblemKind};
use wgpu_optim::rules::AdamW;
use wgpu_optim::{read_views, Optimizer, OptimizerOptions, ParamGroup, Parameters, TensorView};

use crate::gpu::{median, Bench};

/// One optimizer's cost per step.
#[derive(Clone, Debug, Serialize)]
pub struct SecondOrderRow {
    pub method: String,
    pub dim: usize,
    /// Optimizer dispatches per step (the closure's 2 per evaluation not counted).
    pub dispatches: f64,
    pub reads: f64,
    pub evaluations: f64,
    pub iterations: f64,
    /// Median wall time of a step, milliseconds.
    pub step_ms: f64,
    /// Median wall time per closure evaluation, milliseconds.
    pub ms_per_evaluation: f64,
}

fn start(dim: usize) -> Vec<f32> {
    (0..dim).map(|i| if i % 2 == 0 { -1.2 } else { 1.0 }).collect()
}

pub fn second_order_section(bench: &Bench, dims: &[usize], steps: usize) -> Result<Vec<SecondOrderRow>, String> {
    let gpu = &bench.gpu;
    let e = |e: wgpu_optim::Error| e.to_string();
    let mut rows = Vec::new();
    for &dim in dims {
        let problem = Problem::new(ProblemKind::Rosenbrock, dim).map_err(e)?;
        // AdamW: closure (loss and gradient), step, then a wait for the loss.
        {
            let mut params = Parameters::new();
            let x = params.add("x", &[dim], start(dim)).map_err(e)?;
            let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(AdamW { lr: 1e-3, ..AdamW::default() }, [x])], OptimizerOptions::default()).map_err(e)?;
            let loss = TensorView {
                buffer: gpu.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bench loss"),
                    size: 4,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                offset: 0,
                len: 1,
                dtype: wgpu_optim::Dtype::F32,
            };
            let bound = pollster::block_on(GpuProblem::new(gpu, &problem, &opt.param(x).map_err(e)?, &opt.grad(x).map_err(e)?, &loss)).map_err(e)?;
            let mut times = Vec::new();
            for k in 0..steps + 2 {
                let began = Instant::now();
                let mut encoder = gpu.device().create_command_encoder(&Default::default());
                bound.record(&mut encoder);
                opt.step(&mut encoder).map_err(e)?;
                gpu.queue().submit([encoder.finish()]);
                pollster::block_on(read_views(gpu, &[loss.clone()])).map_err(e)?;
                if k >= 2 {
                    times.push(began.elapsed().as_secs_f64() * 1e3);
                }
            }
            let ms = median(&times);
            eprintln!("second-order: AdamW at {dim}: {ms:.2} ms per step");
            rows.push(SecondOrderRow {
                method: "AdamW".into(),
                dim,
                dispatches: opt.dispatches_per_step() as f64,
                reads: 1.0,
                evaluations: 1.0,
                iterations: 1.0,
                step_ms: ms,
                ms_per_evaluation: ms,
            });
        }
        let variants = [
            ("L-BFGS, one iteration per step (max_iter 1, history 10)", LbfgsOptions { max_iter: 1, history_size: 10, lr: 0.1, ..LbfgsOptions::default() }),
            ("L-BFGS, torch's defaults (max_iter 20, history 100)", LbfgsOptions { lr: 0.1, ..LbfgsOptions::default() }),
            ("L-BFGS, strong Wolfe (max_iter 20, history 100)", LbfgsOptions { line_search_fn: Some(LineSearch::StrongWolfe), ..LbfgsOptions::default() }),
        ];
        for (name, options) in variants {
            let mut params = Parameters::new();
            let x = params.add("x", &[dim], start(dim)).map_err(e)?;
            let mut lbfgs = Lbfgs::new(gpu, params, options).map_err(e)?;
            let bound = pollster::block_on(GpuProblem::new(gpu, &problem, &lbfgs.param(x).map_err(e)?, &lbfgs.grad(x).map_err(e)?, &lbfgs.loss_view())).map_err(e)?;
            let (mut times, mut per_evaluation) = (Vec::new(), Vec::new());
            let (mut dispatches, mut reads, mut evaluations, mut iterations) = (0, 0, 0, 0);
            for k in 0..steps + 2 {
                let began = Instant::now();
                lbfgs.step(|encoder| Ok(bound.record(encoder))).map_err(e)?;
                let ms = began.elapsed().as_secs_f64() * 1e3;
                let report = lbfgs.last_step();
                if k >= 2 {
                    times.push(ms);
                    per_evaluation.push(ms / report.evaluations as f64);
                    dispatches += report.dispatches;
                    reads += report.reads;
                    evaluations += report.evaluations;
                    iterations += report.iterations;
                }
            }
            let n = steps as f64;
            eprintln!("second-order: {name} at {dim}: {:.1} ms per step", median(&times));
            rows.push(SecondOrderRow {
                method: name.into(),
                dim,
                dispatches: dispatches as f64 / n,
                reads: reads as f64 / n,
                evaluations: evaluations as f64 / n,
                iterations: iterations as f64 / n,
                step_ms: median(&times),
                ms_per_evaluation: median(&per_evaluation),
            });
        }
    }
    Ok(rows)
}

pub fn print_second_order(rows: &[SecondOrderRow]) {
    println!("\nSecond order: one step on Rosenbrock in N dimensions (optimizer dispatches and reads per step, CPU waits included)");
    println!("| method | N | dispatches | reads | evaluations | iterations | ms per step | ms per evaluation |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
            r.method, r.dim, r.dispatches, r.reads, r.evaluations, r.iterations, r.step_ms, r.ms_per_evaluation
        );
    }
}
