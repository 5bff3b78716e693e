//! L-BFGS on the 2-D test functions: `"LBFGS"` in a run spec, torch.optim.LBFGS with its
//! keyword arguments ([`LbfgsOptions`], e.g. `{"line_search_fn": "strong_wolfe"}`).
//!
//! L-BFGS couples every element of its parameters (its dot products run over the whole flat
//! vector), so each start point gets an L-BFGS of its own over a 2-element tensor: the
//! library's [`Lbfgs`] on the GPU, its twin [`CpuLbfgs`] on the CPU. A trajectory step is one
//! call of `step(closure)`, which runs up to `max_iter` iterations and may call the closure
//! several times. On the GPU the closure records one dispatch of `value_and_gradient`
//! (`shaders/functions.wgsl`): f and ∇f at the start's point, written into the L-BFGS's loss
//! and gradient views; on the CPU it calls [`TestFunction::value_f32`] and
//! [`TestFunction::gradient_f32`], the kernel's mirrors. The report counts closure
//! evaluations (torch's `state["func_evals"]`) at every sampled step: one evaluation is one
//! gradient, what a first-order optimizer spends per step.
//!
//! Once two consecutive steps each made one evaluation and left the point where it was, the
//! first of them not being L-BFGS's first iteration, every later step would repeat the second
//! exactly (the gradient difference is 0, so no pair joins the history and the direction, the
//! step length and the outcome are the same). The runner then stops calling `step` and counts
//! the one evaluation each of the remaining steps would make, as torch would: the paths and
//! evaluation counts are those of calling `step` every time, without its GPU round trips.

use super::{sampled_steps, Paths, TestFunction, FUNCTIONS_WGSL};
use crate::context::{GpuContext, PipelineKey};
use crate::error::{Error, Result};
use crate::lbfgs::{CpuLbfgs, Lbfgs, LbfgsOptions, LbfgsStep};
use crate::optimizer::TensorView;
use crate::params::Parameters;

/// Positions and evaluation counts of L-BFGS runs.
pub struct LbfgsPaths {
    /// The positions at the sampled steps.
    pub paths: Paths,
    /// Closure evaluations so far at each sampled step, `[start][sample]`.
    pub evaluations: Vec<Vec<u64>>,
    /// Kernel dispatches: L-BFGS's own and one per closure evaluation (0 on the CPU).
    pub dispatches: usize,
    /// Time spent stepping, reading positions back included (L-BFGS and pipeline creation
    /// excluded), in milliseconds of `clock`.
    pub elapsed_ms: f64,
}

/// Watches for the fixed point described in the module's documentation.
#[derive(Default)]
struct FixedPoint {
    /// The last step was quiet and was not L-BFGS's first iteration.
    armed: bool,
}

impl FixedPoint {
    /// After a step from `before` to `after`; true once every later step would repeat it.
    fn reached(&mut self, before: [f32; 2], after: [f32; 2], step: LbfgsStep, n_iter: u64) -> bool {
        let same = before[0].to_bits() == after[0].to_bits() && before[1].to_bits() == after[1].to_bits();
        let quiet = same && step.evaluations == 1 && step.iterations <= 1;
        let reached = self.armed && quiet;
        self.armed = quiet && n_iter != 1;
        reached
    }
}

/// One start's run, recorded sample by sample.
struct Recorder {
    samples: Vec<u32>,
    next_sample: usize,
    positions: Vec<[f32; 2]>,
    evaluations: Vec<u64>,
}

impl Recorder {
    fn new(samples: &[u32], start: [f32; 2]) -> Self {
        Recorder {
            samples: samples.to_vec(),
            next_sample: 1,
            positions: vec![start],
            evaluations: vec![0],
        }
    }

    fn after_step(&mut self, step: u32, position: [f32; 2], evaluations: u64) {
        if step == self.samples[self.next_sample] {
            self.positions.push(position);
            self.evaluations.push(evaluations);
            self.next_sample += 1;
        }
    }
}

fn assemble(samples: Vec<u32>, recorders: Vec<Recorder>, dispatches: usize, elapsed_ms: f64) -> LbfgsPaths {
    let starts = recorders.len();
    let mut positions = Vec::with_capacity(samples.len() * starts * 2);
    for s in 0..samples.len() {
        for r in &recorders {
            positions.extend_from_slice(&r.positions[s]);
        }
    }
    LbfgsPaths {
        paths: Paths {
            starts,
            sampled_steps: samples,
            positions,
        },
        evaluations: recorders.into_iter().map(|r| r.evaluations).collect(),
        dispatches,
        elapsed_ms,
    }
}

fn binding(view: &TensorView) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: &view.buffer,
        offset: view.offset,
        size: std::num::NonZeroU64::new(view.byte_size()),
    })
}

fn start_parameters(start: [f32; 2]) -> Result<(Parameters, crate::params::TensorId)> {
    let mut params = Parameters::new();
    let xy = params.add("xy", &[2], start.to_vec())?;
    Ok((params, xy))
}

/// Runs an L-BFGS per start point on the GPU, one start after the other; `clock` gives
/// milliseconds. A wgpu validation error raised by the run (the L-BFGS's own submissions
/// included, which would otherwise reach only wgpu's uncaptured-error handler, a console line
/// in a browser, while the steps read zeros) is an [`Error::Gpu`].
pub async fn run_gpu(
    gpu: &GpuContext,
    function: TestFunction,
    options: &LbfgsOptions,
    starts: &[[f32; 2]],
    steps: u32,
    sample_every: u32,
    clock: &dyn Fn() -> f64,
) -> Result<LbfgsPaths> {
    options.validate()?;
    // Held across the run's awaits: nothing else may use the device meanwhile (the page runs
    // one spec at a time).
    let validation = gpu.device().push_error_scope(wgpu::ErrorFilter::Validation);
    let result = run_gpu_unchecked(gpu, function, options, starts, steps, sample_every, clock).await;
    match validation.pop().await {
        Some(error) => Err(Error::Gpu {
            context: "running L-BFGS on the GPU".into(),
            message: error.to_string(),
        }),
        None => result,
    }
}

async fn run_gpu_unchecked(
    gpu: &GpuContext,
    function: TestFunction,
    options: &LbfgsOptions,
    starts: &[[f32; 2]],
    steps: u32,
    sample_every: u32,
    clock: &dyn Fn() -> f64,
) -> Result<LbfgsPaths> {
    let device = gpu.device();
    let storage = |binding, least| crate::context::storage_binding(binding, binding == 0, least);
    let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("trajectory lbfgs closure"),
        entries: &[storage(0, 8), storage(1, 8), storage(2, 4)],
    });
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("trajectory lbfgs closure"),
        bind_group_layouts: &[Some(&bind_group_layout)],
        immediate_size: 0,
    });
    let key = PipelineKey {
        label: "trajectory-functions",
        entry: "value_and_gradient",
        constants: vec![("function_id", f64::from(function.id()).to_bits())],
    };
    let pipeline = gpu.pipeline(key, FUNCTIONS_WGSL, &layout).await?;
    let samples = sampled_steps(steps, sample_every);
    let mut recorders = Vec::with_capacity(starts.len());
    let (mut dispatches, mut elapsed_ms) = (0, 0.0);
    for &start in starts {
        let (params, xy) = start_parameters(start)?;
        let mut lbfgs = Lbfgs::new_async(gpu, params, options.clone()).await?;
        let (param, grad, loss) = (lbfgs.param(xy)?, lbfgs.grad(xy)?, lbfgs.loss_view());
        let bind_group = gpu
            .checked("binding the L-BFGS closure", || {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("trajectory lbfgs closure"),
                    layout: &bind_group_layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: binding(&param),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: binding(&grad),
                        },
                        wgpu::BindGroupEntry {
                            binding: 2,
                            resource: binding(&loss),
                        },
                    ],
                })
            })
            .await?;
        let mut recorder = Recorder::new(&samples, start);
        let mut fixed = FixedPoint::default();
        let began = clock();
        let mut position = start;
        let (mut frozen, mut skipped) = (false, 0);
        for step in 1..=steps {
            if frozen {
                skipped += 1;
            } else {
                lbfgs
                    .step_async(|encoder| {
                        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("trajectory lbfgs closure"),
                            timestamp_writes: None,
                        });
                        pass.set_pipeline(&pipeline);
                        pass.set_bind_group(0, &bind_group, &[]);
                        pass.dispatch_workgroups(1, 1, 1);
                        Ok(())
                    })
                    .await?;
                let report = lbfgs.last_step();
                dispatches += report.dispatches + report.evaluations as usize;
                let read = lbfgs.read_param_async(xy).await?;
                let after = [read[0], read[1]];
                if fixed.reached(position, after, report, lbfgs.n_iter()) {
                    frozen = true;
                }
                position = after;
            }
            recorder.after_step(step, position, lbfgs.func_evals() + skipped);
        }
        elapsed_ms += clock() - began;
        recorders.push(recorder);
    }
    Ok(assemble(samples, recorders, dispatches, elapsed_ms))
}

/// Runs a [`CpuLbfgs`] per start point, with the f32 mirrors of the closure's kernel.
pub fn run_cpu(
    function: TestFunction,
    options: &LbfgsOptions,
    starts: &[[f32; 2]],
    steps: u32,
    sample_every: u32,
    clock: &dyn Fn() -> f64,
) -> Result<LbfgsPaths> {
    options.validate()?;
    let samples = sampled_steps(steps, sample_every);
    let mut recorders = Vec::with_capacity(starts.len());
    let mut elapsed_ms = 0.0;
    for &start in starts {
        let (params, xy) = start_parameters(start)?;
        let mut lbfgs = CpuLbfgs::new(params, options.clone())?;
        let range = lbfgs.tensor_range(xy)?;
        let mut recorder = Recorder::new(&samples, start);
        let mut fixed = FixedPoint::default();
        let began = clock();
        let mut position = start;
        let (mut frozen, mut skipped) = (false, 0);
        for step in 1..=steps {
            if frozen {
                skipped += 1;
            } else {
                lbfgs.step(|e| {
                    let p = &e.params[range.clone()];
                    *e.loss = function.value_f32(p[0], p[1]);
                    e.grad[range.clone()].copy_from_slice(&function.gradient_f32(p[0], p[1]));
                    Ok(())
                })?;
                let p = &lbfgs.params()[range.clone()];
                let after = [p[0], p[1]];
                if fixed.reached(position, after, lbfgs.last_step(), lbfgs.n_iter()) {
                    frozen = true;
                }
                position = after;
            }
            recorder.after_step(step, position, lbfgs.func_evals() + skipped);
        }
        elapsed_ms += clock() - began;
        recorders.push(recorder);
    }
    Ok(assemble(samples, recorders, 0, elapsed_ms))
}
