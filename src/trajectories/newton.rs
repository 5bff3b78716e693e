//! Newton's method, plain and damped, on the 2-D test functions: `"Newton"` and
//! `"DampedNewton"` in a run spec. The WGSL is `shaders/newton.wgsl` (appended to
//! `shaders/functions.wgsl`, whose analytic gradient and Hessian it calls), one invocation per
//! start point and one dispatch per step; [`newton_step`] and [`damped_newton_step`] are its
//! CPU mirrors, operation by operation.
//!
//! Plain Newton (`NewtonOptions { lr }`), with `H = [[a, b], [b, c]]` the Hessian at `p`:
//!
//! ```text
//! det = a·c − b²,  s = max(|a|, |b|, |c|)
//! if |det| ≤ 1e-6·s²:  singular: p stays (the report's `singular_at` is the first such step)
//! else:                p ← p − lr·H⁻¹∇f(p)
//! ```
//!
//! Damped Newton (Levenberg–Marquardt with a positive-definiteness shift), per start point a
//! damping λ, initially `damping`:
//!
//! ```text
//! λ_min = (a + c)/2 − sqrt(((a − c)/2)² + b²)     the smallest eigenvalue of H
//! δ = margin·s                                     the margin, relative to H's largest entry
//! μ = λ + max(0, δ − λ_min)                        so H + μI ⪰ (λ + δ)·I: positive definite
//!     (H + μI's diagonal is computed as ((a − λ_min) + δ) + λ where λ_min < δ, else a + λ:
//!     H − λ_min·I first, so that rounding a large shift does not swamp a small λ + δ)
//! trial = p − lr·(H + μI)⁻¹∇f(p)
//! if f(trial) < f(p) (and both are finite):  accepted: p ← trial, λ ← max(λ·shrink, 1e-10)
//! else:                                      rejected: p stays,   λ ← min(λ·grow, 1e10)
//! ```
//!
//! Defaults: `lr` 1, `damping` 1, `shrink` 1/3, `grow` 2, `margin` 1e-3. Where H is positive
//! definite with λ_min ≥ δ the shift is 0 and λ shrinks with every accepted step, so damped
//! Newton becomes Newton near a minimum. Where H has a negative eigenvalue (the saddle
//! x² − y²: H = diag(2, −2)), H + μI is positive definite, so the step is a descent direction:
//! from (1, 0.1), plain Newton lands on the saddle (0, 0) in one step (the stationary point of
//! the quadratic model, where ∇f = 0 keeps it), damped Newton moves away from it along y.

use serde::{Deserialize, Serialize};

use super::{sampled_steps, Paths, TestFunction, MAX_STEPS_PER_SUBMISSION};
use crate::context::{GpuContext, PipelineKey};
use crate::error::{Error, Result};
use crate::optimizer::{read_views, TensorView};

/// `shaders/functions.wgsl` followed by `shaders/newton.wgsl`: entries `newton` and
/// `damped_newton`.
pub const NEWTON_WGSL: &str = concat!(
    include_str!("../../shaders/functions.wgsl"),
    include_str!("../../shaders/newton.wgsl")
);

/// Invocations per workgroup (`NEWTON_WORKGROUP_SIZE` in the WGSL).
const WORKGROUP_SIZE: u32 = 256;
/// `|det| ≤ SINGULAR·s²`: a singular Hessian.
const SINGULAR: f32 = 1e-6;
/// The range λ is kept in.
const MIN_DAMPING: f32 = 1e-10;
const MAX_DAMPING: f32 = 1e10;

fn invalid(
    optimizer: &'static str,
    name: &'static str,
    value: f64,
    requirement: &'static str,
) -> Error {
    Error::InvalidHyperparameter {
        optimizer,
        name,
        value: value.to_string(),
        requirement,
    }
}

/// A value that stays finite and positive in f32, as the kernel receives it.
fn positive_f32(value: f64) -> bool {
    value.is_finite() && value > 0.0 && (value as f32).is_finite() && value as f32 > 0.0
}

fn from_json<T: serde::de::DeserializeOwned>(name: &str, value: &serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value.clone())
        .map_err(|e| Error::Config(format!("{name} hyper-parameters: {e} (at {})", e.path())))
}

/// Plain Newton's hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NewtonOptions {
    /// Step scale: `p ← p − lr·H⁻¹∇f` (default 1, the full Newton step).
    pub lr: f64,
}

impl Default for NewtonOptions {
    fn default() -> Self {
        NewtonOptions { lr: 1.0 }
    }
}

impl NewtonOptions {
    /// From JSON (`{"lr": 0.5}`); unknown keys and invalid values are errors.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let options: Self = from_json("Newton", value)?;
        options.validate()?;
        Ok(options)
    }

    /// `lr` must be finite and positive (in f32 too).
    pub fn validate(&self) -> Result<()> {
        if !positive_f32(self.lr) {
            return Err(invalid(
                "Newton",
                "lr",
                self.lr,
                "must be finite and > 0",
            ));
        }
        Ok(())
    }
}

/// Damped Newton's hyper-parameters (see the module's documentation for the rule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DampedNewtonOptions {
    /// Step scale: `p ← p − lr·(H + μI)⁻¹∇f` (default 1).
    pub lr: f64,
    /// The initial damping λ (default 1), in [1e-10, 1e10].
    pub damping: f64,
    /// λ's factor after an accepted step (default 1/3), in (0, 1).
    pub shrink: f64,
    /// λ's factor after a rejected step (default 2), > 1.
    pub grow: f64,
    /// The positive-definiteness margin δ relative to H's largest entry (default 1e-3), > 0:
    /// `H + μI ⪰ (λ + margin·max|H_ij|)·I`.
    pub margin: f64,
}

impl Default for DampedNewtonOptions {
    fn default() -> Self {
        DampedNewtonOptions {
            lr: 1.0,
            damping: 1.0,
            shrink: 1.0 / 3.0,
            grow: 2.0,
            margin: 1e-3,
        }
    }
}

impl DampedNewtonOptions {
    /// From JSON (`{"damping": 10, "grow": 10}`); unknown keys and invalid values are errors.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let options: Self = from_json("DampedNewton", value)?;
        options.validate()?;
        Ok(options)
    }

    /// Checks every value against its range (in f32 too, as the kernel receives it).
    pub fn validate(&self) -> Result<()> {
        let name = "DampedNewton";
        if !positive_f32(self.lr) {
            return Err(invalid(name, "lr", self.lr, "must be finite and > 0"));
        }
        if !(f64::from(MIN_DAMPING)..=f64::from(MAX_DAMPING)).contains(&self.damping) {
            return Err(invalid(
                name,
                "damping",
                self.damping,
                "must be in [1e-10, 1e10]",
            ));
        }
        if !(positive_f32(self.shrink) && (self.shrink as f32) < 1.0) {
            return Err(invalid(name, "shrink", self.shrink, "must be in (0, 1)"));
        }
        if !(self.grow.is_finite() && self.grow as f32 > 1.0 && (self.grow as f32).is_finite()) {
            return Err(invalid(name, "grow", self.grow, "must be finite and > 1"));
        }
        if !positive_f32(self.margin) {
            return Err(invalid(
                name,
                "margin",
                self.margin,
                "must be finite and > 0",
            ));
        }
        Ok(())
    }
}

/// Plain or damped Newton, with its hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum NewtonMethod {
    /// `"Newton"`.
    Plain(NewtonOptions),
    /// `"DampedNewton"`.
    Damped(DampedNewtonOptions),
}

impl NewtonMethod {
    /// `"Newton"` or `"DampedNewton"`.
    pub fn name(&self) -> &'static str {
        match self {
            NewtonMethod::Plain(_) => "Newton",
            NewtonMethod::Damped(_) => "DampedNewton",
        }
    }

    /// Every hyper-parameter, defaults included, as JSON.
    pub fn hyperparameters(&self) -> serde_json::Value {
        match self {
            NewtonMethod::Plain(o) => serde_json::to_value(o),
            NewtonMethod::Damped(o) => serde_json::to_value(o),
        }
        .expect("plain data")
    }

    fn validate(&self) -> Result<()> {
        match self {
            NewtonMethod::Plain(o) => o.validate(),
            NewtonMethod::Damped(o) => o.validate(),
        }
    }

    fn entry(&self) -> &'static str {
        match self {
            NewtonMethod::Plain(_) => "newton",
            NewtonMethod::Damped(_) => "damped_newton",
        }
    }

    /// The kernel's override constants: each value rounded to f32 first, so that the GPU
    /// receives exactly what the CPU mirror computes with.
    fn constants(&self) -> Vec<(&'static str, u64)> {
        let bits = |v: f64| f64::from(v as f32).to_bits();
        match self {
            NewtonMethod::Plain(o) => vec![("lr", bits(o.lr))],
            NewtonMethod::Damped(o) => vec![
                ("lr", bits(o.lr)),
                ("shrink", bits(o.shrink)),
                ("grow", bits(o.grow)),
                ("margin", bits(o.margin)),
            ],
        }
    }

    fn initial_state(&self) -> NewtonState {
        NewtonState {
            damping: match self {
                NewtonMethod::Plain(_) => 0.0,
                NewtonMethod::Damped(o) => o.damping as f32,
            },
            ..Default::default()
        }
    }

    /// One step at `p` on the CPU: [`newton_step`] or [`damped_newton_step`].
    pub fn step_cpu(&self, function: TestFunction, p: &mut [f32; 2], state: &mut NewtonState) {
        match self {
            NewtonMethod::Plain(o) => newton_step(function, p, state, o.lr as f32),
            NewtonMethod::Damped(o) => damped_newton_step(function, p, state, o),
        }
    }

    fn stats(&self, state: &NewtonState) -> NewtonStats {
        let damped = matches!(self, NewtonMethod::Damped(_));
        NewtonStats {
            singular_at: (state.first_singular > 0).then_some(state.first_singular),
            rejected: state.rejected,
            damping: damped.then_some(state.damping),
        }
    }
}

/// One start point's state (`NewtonState` in the WGSL).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NewtonState {
    /// Steps taken.
    pub step: u32,
    /// Plain Newton: the first step whose Hessian was singular; 0: none.
    pub first_singular: u32,
    /// Damped Newton: steps rejected.
    pub rejected: u32,
    /// Damped Newton: λ.
    pub damping: f32,
}

/// What Newton's method did from one start point, in a run's report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NewtonStats {
    /// Plain Newton: the first step whose Hessian was singular, from which on the point stayed
    /// where it was (`null`: never).
    pub singular_at: Option<u32>,
    /// Damped Newton: steps rejected (the loss would not have decreased; the point stayed and
    /// λ grew). 0 for plain Newton.
    pub rejected: u32,
    /// Damped Newton: λ after the last step (absent for plain Newton).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damping: Option<f32>,
}

fn largest_entry(h: [f32; 3]) -> f32 {
    h[0].abs().max(h[1].abs()).max(h[2].abs())
}

/// `[[a, b], [b, c]]⁻¹·g` by Cramer's rule, `det = a·c − b²` (`solve` in the WGSL).
fn solve(h: [f32; 3], g: [f32; 2], det: f32) -> [f32; 2] {
    [
        (h[2] * g[0] - h[1] * g[1]) / det,
        (h[0] * g[1] - h[1] * g[0]) / det,
    ]
}

/// One plain Newton step at `p` (the `newton` kernel's CPU mirror).
pub fn newton_step(function: TestFunction, p: &mut [f32; 2], state: &mut NewtonState, lr: f32) {
    state.step += 1;
    let g = function.gradient_f32(p[0], p[1]);
    let h = function.hessian_f32(p[0], p[1]);
    let det = h[0] * h[2] - h[1] * h[1];
    let scale = largest_entry(h);
    // Written as the WGSL's `if`: a NaN determinant is not "singular".
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    if det.abs() <= SINGULAR * scale * scale {
        if state.first_singular == 0 {
            state.first_singular = state.step;
        }
    } else {
        let d = solve(h, g, det);
        *p = [p[0] - lr * d[0], p[1] - lr * d[1]];
    }
}

/// One damped Newton step at `p` (the `damped_newton` kernel's CPU mirror).
pub fn damped_newton_step(
    function: TestFunction,
    p: &mut [f32; 2],
    state: &mut NewtonState,
    options: &DampedNewtonOptions,
) {
    let (lr, shrink, grow, margin) = (
        options.lr as f32,
        options.shrink as f32,
        options.grow as f32,
        options.margin as f32,
    );
    state.step += 1;
    let f = function.value_f32(p[0], p[1]);
    let g = function.gradient_f32(p[0], p[1]);
    let h = function.hessian_f32(p[0], p[1]);
    let mean = 0.5 * (h[0] + h[2]);
    let half = 0.5 * (h[0] - h[2]);
    let lowest = mean - (half * half + h[1] * h[1]).sqrt();
    let delta = margin * largest_entry(h);
    let lambda = state.damping;
    let shifted = if lowest < delta {
        [h[0] - lowest + delta + lambda, h[1], h[2] - lowest + delta + lambda]
    } else {
        [h[0] + lambda, h[1], h[2] + lambda]
    };
    let det = shifted[0] * shifted[2] - shifted[1] * shifted[1];
    let d = solve(shifted, g, det);
    let trial = [p[0] - lr * d[0], p[1] - lr * d[1]];
    let f_trial = function.value_f32(trial[0], trial[1]);
    if f_trial < f && trial[0].is_finite() && trial[1].is_finite() && f_trial.is_finite() {
        *p = trial;
        state.damping = (state.damping * shrink).max(MIN_DAMPING);
    } else {
        state.rejected += 1;
        state.damping = (state.damping * grow).min(MAX_DAMPING);
    }
}

/// Newton from N start points on the GPU: one dispatch per step, positions sampled into a
/// history buffer on the GPU and read back once, with the per-start states.
pub struct GpuNewtonRunner {
    gpu: GpuContext,
    method: NewtonMethod,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    points: wgpu::Buffer,
    states: wgpu::Buffer,
    history: wgpu::Buffer,
    grid: (u32, u32),
    starts: usize,
    steps: u32,
    samples: Vec<u32>,
}

impl GpuNewtonRunner {
    /// Places the start points and their states on the GPU and builds the pipeline.
    pub async fn new(
        gpu: &GpuContext,
        function: TestFunction,
        method: &NewtonMethod,
        starts: &[[f32; 2]],
        steps: u32,
        sample_every: u32,
    ) -> Result<Self> {
        method.validate()?;
        let device = gpu.device();
        let storage = |binding, least| crate::context::storage_binding(binding, false, least);
        let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("trajectory newton"),
            entries: &[storage(3, 8), storage(4, 16)],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("trajectory newton"),
            bind_group_layouts: &[Some(&bind_group_layout)],
            immediate_size: 0,
        });
        let mut constants = vec![("function_id", f64::from(function.id()).to_bits())];
        constants.extend(method.constants());
        let key = PipelineKey {
            label: "trajectory-newton",
            entry: method.entry(),
            constants,
        };
        let pipeline = gpu.pipeline(key, NEWTON_WGSL, &layout).await?;
        let samples = sampled_steps(steps, sample_every);
        let flat: Vec<f32> = starts.iter().flatten().copied().collect();
        let initial = vec![method.initial_state(); starts.len()];
        let (points, states, history, bind_group) = gpu
            .checked("allocating the Newton trajectory buffers", || {
                use wgpu::util::DeviceExt;
                let points = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("trajectory newton points"),
                    contents: bytemuck::cast_slice(&flat),
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                });
                let states = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("trajectory newton states"),
                    contents: bytemuck::cast_slice(&initial),
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                });
                let history = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("trajectory newton history"),
                    size: samples.len() as u64 * starts.len() as u64 * 8,
                    usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("trajectory newton"),
                    layout: &bind_group_layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 3,
                            resource: points.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 4,
                            resource: states.as_entire_binding(),
                        },
                    ],
                });
                (points, states, history, bind_group)
            })
            .await?;
        let workgroups = (starts.len() as u32).div_ceil(WORKGROUP_SIZE);
        let max = device.limits().max_compute_workgroups_per_dimension.max(1);
        let x = workgroups.min(max);
        Ok(GpuNewtonRunner {
            gpu: gpu.clone(),
            method: method.clone(),
            pipeline,
            bind_group,
            points,
            states,
            history,
            grid: (x, workgroups.div_ceil(x)),
            starts: starts.len(),
            steps,
            samples,
        })
    }

    /// Dispatches the run records: one per step.
    pub fn dispatches(&self) -> usize {
        self.steps as usize
    }

    /// Records every step (at most [`MAX_STEPS_PER_SUBMISSION`] per submission), and reads
    /// the sampled positions and the final states back.
    pub async fn run(self) -> Result<(Paths, Vec<NewtonStats>)> {
        let row = self.starts as u64 * 8;
        let device = self.gpu.device().clone();
        let new_encoder = || {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("trajectory newton"),
            })
        };
        let mut encoder = new_encoder();
        encoder.copy_buffer_to_buffer(&self.points, 0, &self.history, 0, row);
        let mut next_sample = 1;
        let mut step = 0u32;
        while step < self.steps {
            let submission_end = (step / MAX_STEPS_PER_SUBMISSION + 1) * MAX_STEPS_PER_SUBMISSION;
            let end = self.samples[next_sample].min(submission_end);
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("trajectory newton steps"),
                    timestamp_writes: None,
                });
                pass.set_pipeline(&self.pipeline);
                pass.set_bind_group(0, &self.bind_group, &[]);
                while step < end {
                    pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
                    step += 1;
                }
            }
            if step == self.samples[next_sample] {
                let at = next_sample as u64 * row;
                encoder.copy_buffer_to_buffer(&self.points, 0, &self.history, at, row);
                next_sample += 1;
            }
            if step.is_multiple_of(MAX_STEPS_PER_SUBMISSION) && step < self.steps {
                self.gpu
                    .queue()
                    .submit([std::mem::replace(&mut encoder, new_encoder()).finish()]);
            }
        }
        self.gpu.queue().submit([encoder.finish()]);
        let views = [
            TensorView {
                buffer: self.history.clone(),
                offset: 0,
                len: self.samples.len() * self.starts * 2,
                dtype: crate::storage::Dtype::F32,
            },
            TensorView {
                buffer: self.states.clone(),
                offset: 0,
                len: self.starts * 4,
                dtype: crate::storage::Dtype::F32,
            },
        ];
        let mut read = read_views(&self.gpu, &views).await?;
        let states: Vec<NewtonState> = bytemuck::cast_slice(&read[1]).to_vec();
        let stats = states.iter().map(|s| self.method.stats(s)).collect();
        Ok((
            Paths {
                starts: self.starts,
                sampled_steps: self.samples,
                positions: read.swap_remove(0),
            },
            stats,
        ))
    }
}

/// Newton from N start points on the CPU, with the f32 mirrors of the WGSL.
pub fn run_cpu(
    function: TestFunction,
    method: &NewtonMethod,
    starts: &[[f32; 2]],
    steps: u32,
    sample_every: u32,
) -> Result<(Paths, Vec<NewtonStats>)> {
    method.validate()?;
    let samples = sampled_steps(steps, sample_every);
    let mut points = starts.to_vec();
    let mut states = vec![method.initial_state(); starts.len()];
    let mut positions = Vec::with_capacity(samples.len() * starts.len() * 2);
    positions.extend(points.iter().flatten());
    let mut next_sample = 1;
    for step in 1..=steps {
        for (p, state) in points.iter_mut().zip(&mut states) {
            method.step_cpu(function, p, state);
        }
        if step == samples[next_sample] {
            positions.extend(points.iter().flatten());
            next_sample += 1;
        }
    }
    let stats = states.iter().map(|s| method.stats(s)).collect();
    Ok((
        Paths {
            starts: starts.len(),
            sampled_steps: samples,
            positions,
        },
        stats,
    ))
}
