//! `wgpu-optim minimize`: any of the library's optimizers on a built-in problem
//! ([`crate::problems`]), K calls of torch's `step(closure)`, on a GPU or on the CPU twins.
//!
//! The loss of each step is what torch's `step(closure)` returns: the closure's value at the
//! point the step starts from (L-BFGS's first evaluation of the step). For first-order rules
//! the step's gradient is the problem's gradient at that point.

use serde::Serialize;

use crate::context::GpuContext;
use crate::cpu::CpuOptimizer;
use crate::error::{Error, Result};
use crate::lbfgs::{CpuLbfgs, Lbfgs, LbfgsOptions, LbfgsStep};
use crate::optimizer::{Optimizer, TensorView};
use crate::params::{ParamGroup, Parameters};
use crate::problems::{GpuProblem, Problem};
use crate::rules;

/// What to run.
#[derive(Clone, Debug)]
pub struct MinimizeSpec {
    /// The problem (kind and dimension).
    pub problem: Problem,
    /// The start point: `problem.dim()` values.
    pub start: Vec<f32>,
    /// `"LBFGS"` or any rule name of [`rules::from_config`].
    pub optimizer: String,
    /// torch's keyword arguments as JSON.
    pub hyperparameters: serde_json::Value,
    /// Calls of `step(closure)`.
    pub steps: usize,
}

/// What a run produced.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MinimizeResult {
    /// The final point.
    pub x: Vec<f32>,
    /// The loss each step returned.
    pub loss: Vec<f32>,
    /// L-BFGS only: torch's `state["func_evals"]` and `state["n_iter"]` after each step.
    pub func_evals: Vec<u64>,
    /// See `func_evals`.
    pub n_iter: Vec<u64>,
    /// L-BFGS only: each step's reads, dispatches, evaluations and iterations.
    pub lbfgs_steps: Vec<LbfgsStep>,
}

/// The optimizer of a spec, checked before anything runs.
enum Method {
    Lbfgs(LbfgsOptions),
    FirstOrder(Box<dyn rules::UpdateRule>),
}

impl MinimizeSpec {
    /// Checks the start point against the problem, and the optimizer and its
    /// hyper-parameters (nothing has run when this fails).
    fn method(&self) -> Result<Method> {
        if self.start.len() != self.problem.dim() {
            return Err(Error::SizeMismatch {
                what: "the start point x".into(),
                expected: self.problem.dim(),
                actual: self.start.len(),
            });
        }
        if self.optimizer == "LBFGS" {
            return Ok(Method::Lbfgs(LbfgsOptions::from_json(
                &self.hyperparameters,
            )?));
        }
        let rule =
            rules::from_config(&self.optimizer, &self.hyperparameters).map_err(|e| match e {
                Error::UnknownOptimizer(name, known) => {
                    Error::UnknownOptimizer(name, format!("LBFGS, {known}"))
                }
                other => other,
            })?;
        if rule.kernel().sparse_rows {
            return Err(Error::Config(format!(
                "{} takes row-sparse gradients; the problems give dense ones",
                rule.name()
            )));
        }
        Ok(Method::FirstOrder(rule))
    }

    /// Checks the spec without running it.
    pub fn validate(&self) -> Result<()> {
        self.method().map(|_| ())
    }

    fn parameters(&self) -> Result<(Parameters, crate::params::TensorId)> {
        let mut params = Parameters::new();
        let x = params.add("x", &[self.problem.dim()], self.start.clone())?;
        Ok((params, x))
    }

    /// Runs on the GPU.
    pub async fn run_gpu(&self, gpu: &GpuContext) -> Result<MinimizeResult> {
        let method = self.method()?;
        let (params, x) = self.parameters()?;
        let mut result = MinimizeResult::default();
        match method {
            Method::Lbfgs(options) => {
                let mut lbfgs = Lbfgs::new_async(gpu, params, options).await?;
                let problem = GpuProblem::new(
                    gpu,
                    &self.problem,
                    &lbfgs.param(x)?,
                    &lbfgs.grad(x)?,
                    &lbfgs.loss_view(),
                )
                .await?;
                for _ in 0..self.steps {
                    let loss = lbfgs
                        .step_async(|encoder| Ok(problem.record(encoder)))
                        .await?;
                    result.push_lbfgs(loss, lbfgs.func_evals(), lbfgs.n_iter(), lbfgs.last_step());
                }
                result.x = lbfgs.read_param_async(x).await?;
            }
            Method::FirstOrder(rule) => {
                let mut opt = Optimizer::new_async(
                    gpu,
                    params,
                    vec![ParamGroup::from_boxed(rule, [x])],
                    Default::default(),
                )
                .await?;
                let device = gpu.device();
                let buffer = |size: u64, usage| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("wgpu-optim minimize loss"),
                        size,
                        usage,
                        mapped_at_creation: false,
                    })
                };
                let loss = TensorView {
                    buffer: buffer(
                        4,
                        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                    ),
                    offset: 0,
                    len: 1,
                    dtype: crate::storage::Dtype::F32,
                };
                let losses = TensorView {
                    buffer: buffer(
                        self.steps.max(1) as u64 * 4,
                        wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                    ),
                    offset: 0,
                    len: self.steps,
                    dtype: crate::storage::Dtype::F32,
                };
                let problem =
                    GpuProblem::new(gpu, &self.problem, &opt.param(x)?, &opt.grad(x)?, &loss)
                        .await?;
                for k in 0..self.steps {
                    let mut encoder =
                        device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("wgpu-optim minimize"),
                        });
                    problem.record(&mut encoder);
                    encoder.copy_buffer_to_buffer(&loss.buffer, 0, &losses.buffer, k as u64 * 4, 4);
                    opt.step(&mut encoder)?;
                    gpu.queue().submit([encoder.finish()]);
                }
                result.loss = if self.steps > 0 {
                    crate::optimizer::read_views(gpu, &[losses])
                        .await?
                        .remove(0)
                } else {
                    Vec::new()
                };
                result.x = opt.read_param_async(x).await?;
            }
        }
        Ok(result)
    }

    /// Runs on the CPU twins.
    pub fn run_cpu(&self) -> Result<MinimizeResult> {
        let method = self.method()?;
        let (params, x) = self.parameters()?;
        let mut result = MinimizeResult::default();
        let dim = self.problem.dim();
        match method {
            Method::Lbfgs(options) => {
                let mut lbfgs = CpuLbfgs::new(params, options)?;
                let range = lbfgs.tensor_range(x)?;
                for _ in 0..self.steps {
                    let loss = lbfgs.step(|e| {
                        *e.loss = self
                            .problem
                            .evaluate(&e.params[range.clone()], &mut e.grad[range.clone()]);
                        Ok(())
                    })?;
                    result.push_lbfgs(loss, lbfgs.func_evals(), lbfgs.n_iter(), lbfgs.last_step());
                }
                result.x = lbfgs.params()[range].to_vec();
            }
            Method::FirstOrder(rule) => {
                let mut opt = CpuOptimizer::new(params, vec![ParamGroup::from_boxed(rule, [x])])?;
                let mut grad = vec![0.0; dim];
                for _ in 0..self.steps {
                    result
                        .loss
                        .push(self.problem.evaluate(opt.param(x)?, &mut grad));
                    opt.write_grad(x, &grad)?;
                    opt.step();
                }
                result.x = opt.param(x)?.to_vec();
            }
        }
        Ok(result)
    }
}

impl MinimizeResult {
    fn push_lbfgs(&mut self, loss: f32, func_evals: u64, n_iter: u64, step: LbfgsStep) {
        self.loss.push(loss);
        self.func_evals.push(func_evals);
        self.n_iter.push(n_iter);
        self.lbfgs_steps.push(step);
    }
}
