//! Newton's method with a dense Hessian, solved on the GPU; plain or damped
//! (Levenberg–Marquardt). For problems small enough to hold an n × n matrix (n up to a few
//! thousand: the matrix must fit one storage binding).
//!
//! ```text
//! plain:   loss, g, H ← closure(x)
//!          solve H·p = g (Gaussian elimination with partial pivoting)
//!          x ← x − lr·p                       (a singular H is an error; x stays)
//!
//! damped:  loss, g, H ← closure(x)
//!          repeat (at most max_attempts times):
//!            solve (H + λI)·p = g without row swaps; if a pivot is ≤ 0, H + λI is not
//!              positive definite: λ ← max(λ·grow, λ_floor), try again
//!            x' ← x − lr·p;  loss' ← closure(x') (loss only)
//!            if loss' < loss: accept x', λ ← max(λ·shrink, λ_floor); stop
//!            else: reject (x stays), λ ← max(λ·grow, λ_floor)
//! ```
//!
//! The damped step is a descent direction whenever it is taken (H + λI is positive definite),
//! so it never walks uphill into a saddle as plain Newton does: on `x² − y²` plain Newton jumps
//! to the saddle (0, 0) from anywhere; the damped variant moves away from it along y.
//! Defaults: `λ = 1e-3`, `shrink = 1/3`, `grow = 10`, `λ_floor = 1e-12`, `max_attempts = 30`.
//!
//! The closure records the loss (one `f32` into [`Newton::loss_view`]), and when asked the
//! gradient ([`Newton::grad_view`]) and Hessian ([`Newton::hessian_view`], row-major n × n,
//! cleared to zero before each call) at the parameters ([`Newton::param_view`]; tensors back to
//! back, each at [`Newton::tensor_range`]). Reads per step: one (plain), two per attempt
//! (damped: the pivots, then the trial loss).

use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

use crate::context::{storage_binding, GpuContext, PipelineKey};
use crate::error::{Error, Result};
use crate::optimizer::{read_views, TensorView};
use crate::params::{CollectionTag, Parameters, TensorId};

/// The kernels.
pub const NEWTON_WGSL: &str = include_str!("../shaders/newton_solve.wgsl");

/// The Levenberg–Marquardt damping rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Damping {
    /// λ of the first step.
    pub initial: f64,
    /// λ ← λ·shrink after an accepted step.
    pub shrink: f64,
    /// λ ← λ·grow after a rejected step or a matrix that is not positive definite.
    pub grow: f64,
    /// λ never goes below this.
    pub floor: f64,
    /// Attempts per step before the step gives up (x stays; an error says so).
    pub max_attempts: u32,
}

impl Default for Damping {
    fn default() -> Self {
        Damping { initial: 1e-3, shrink: 1.0 / 3.0, grow: 10.0, floor: 1e-12, max_attempts: 30 }
    }
}

/// Newton's hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NewtonOptions {
    /// Step scale (default 1: the full Newton step).
    pub lr: f64,
    /// `None`: plain Newton. `Some`: Levenberg–Marquardt damping.
    pub damping: Option<Damping>,
}

impl Default for NewtonOptions {
    fn default() -> Self {
        NewtonOptions { lr: 1.0, damping: None }
    }
}

impl NewtonOptions {
    /// Positive finite `lr`; damping factors with `0 < shrink < 1 < grow`, `initial ≥ floor > 0`,
    /// at least one attempt.
    pub fn validate(&self) -> Result<()> {
        let invalid = |name: &'static str, value: f64, requirement: &'static str| {
            Err(Error::InvalidHyperparameter { optimizer: "Newton", name, value: value.to_string(), requirement })
        };
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return invalid("lr", self.lr, "must be finite and > 0");
        }
        if let Some(d) = &self.damping {
            if !(d.shrink > 0.0 && d.shrink < 1.0) {
                return invalid("damping.shrink", d.shrink, "must be in (0, 1)");
            }
            if !(d.grow > 1.0 && d.grow.is_finite()) {
                return invalid("damping.grow", d.grow, "must be finite and > 1");
            }
            if !(d.floor > 0.0 && d.floor.is_finite()) {
                return invalid("damping.floor", d.floor, "must be finite and > 0");
            }
            if !(d.initial >= d.floor && d.initial.is_finite()) {
                return invalid("damping.initial", d.initial, "must be finite and >= floor");
            }
            if d.max_attempts == 0 {
                return invalid("damping.max_attempts", 0.0, "must be at least 1");
            }
        }
        Ok(())
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct NewtonStep {
    /// The loss at the step's start.
    pub loss: f32,
    /// The accepted trial's loss (damped), or `None`.
    pub new_loss: Option<f32>,
    /// Solves (damped: including those refused as not positive definite).
    pub attempts: u32,
    /// λ after the step (damped).
    pub damping: f64,
    /// Times the CPU waited for the GPU.
    pub reads: usize,
}

/// What the closure is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evaluate {
    /// Loss, gradient and Hessian.
    All,
    /// The loss only (a damped step's trial point). The closure may write the gradient and
    /// Hessian too: Newton keeps its own copies of those at the step's start.
    LossOnly,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Step {
    n: u32,
    k: u32,
    pivoting: u32,
    _pad: u32,
}

/// Byte offset of the solver's status (min pivot, min |pivot|) after the closure's loss.
const STATUS_OFFSET: u64 = 256;

const PREPARE: usize = 0;
const PIVOT: usize = 1;
const ELIMINATE: usize = 2;
const BACK_SUBSTITUTE: usize = 3;
const UPDATE: usize = 4;
const ENTRIES: [&str; 5] = ["prepare", "pivot", "eliminate", "back_substitute", "update"];

/// Newton's method on the GPU.
pub struct Newton {
    gpu: GpuContext,
    options: NewtonOptions,
    tensors: Vec<(String, Vec<usize>, usize)>,
    tag: CollectionTag,
    n: usize,
    param: wgpu::Buffer,
    grad: wgpu::Buffer,
    hessian: wgpu::Buffer,
    hessian_start: wgpu::Buffer,
    grad_start: wgpu::Buffer,
    /// loss, then the status (min pivot).
    scalars_out: wgpu::Buffer,
    scalars_in: wgpu::Buffer,
    loss_start: wgpu::Buffer,
    saved: wgpu::Buffer,
    pipelines: Vec<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    step_stride: u64,
    lambda: f64,
}

impl Newton {
    /// Places the parameters (tensors back to back) and allocates the n × n matrices.
    pub fn new(gpu: &GpuContext, params: Parameters, options: NewtonOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(gpu, params, options))
    }

    /// [`Newton::new`] for the browser.
    pub async fn new_async(gpu: &GpuContext, params: Parameters, options: NewtonOptions) -> Result<Self> {
        options.validate()?;
        let tag = params.tag();
        let specs = params.into_specs();
        let mut flat = Vec::new();
        let mut tensors = Vec::new();
        for spec in specs {
            tensors.push((spec.name, spec.shape, flat.len()));
            flat.extend_from_slice(&spec.data);
        }
        let n = flat.len();
        if n == 0 {
            return Err(Error::Tensor("Newton needs at least one parameter".into()));
        }
        let device = gpu.device();
        let limits = device.limits();
        let binding = u64::from(limits.max_storage_buffer_binding_size).min(limits.max_buffer_size);
        let matrix_bytes = (n as u64) * (n as u64) * 4;
        if matrix_bytes > binding {
            return Err(Error::Tensor(format!(
                "Newton keeps the {n} × {n} Hessian in one storage binding: {matrix_bytes} bytes, and this device binds at most {binding}; \
                 use L-BFGS for problems this large"
            )));
        }
        let step_stride = (std::mem::size_of::<Step>() as u64).next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let pivoting = u32::from(options.damping.is_none());
        let records: Vec<u8> = (0..n)
            .flat_map(|k| {
                let mut record = bytemuck::bytes_of(&Step { n: n as u32, k: k as u32, pivoting, _pad: 0 }).to_vec();
                record.resize(step_stride as usize, 0);
                record
            })
            .collect();
        let built = gpu
            .checked("allocating Newton's buffers", || {
                use wgpu::util::DeviceExt;
                let buffer = |label: &str, size: u64, usage| device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false });
                let param = device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("wgpu-optim newton param"), contents: bytemuck::cast_slice(&flat), usage: storage });
                let grad = buffer("wgpu-optim newton grad", n as u64 * 4, storage);
                let hessian = buffer("wgpu-optim newton hessian", matrix_bytes, storage);
                let work = buffer("wgpu-optim newton work", matrix_bytes, wgpu::BufferUsages::STORAGE);
                // g and H at the step's start: a trial evaluation may overwrite the closure's.
                let hessian_start = buffer("wgpu-optim newton hessian at the start", matrix_bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST);
                let grad_start = buffer("wgpu-optim newton gradient at the start", n as u64 * 4, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST);
                let rhs = buffer("wgpu-optim newton rhs", n as u64 * 4, wgpu::BufferUsages::STORAGE);
                let saved = buffer("wgpu-optim newton saved x", n as u64 * 4, storage);
                let scalars_out = buffer("wgpu-optim newton loss and status", STATUS_OFFSET + 16, storage);
                let loss_start = buffer("wgpu-optim newton start loss", 4, wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST);
                let scalars_in = buffer("wgpu-optim newton lambda and lr", 16, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST);
                let steps = device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("wgpu-optim newton steps"), contents: &records, usage: wgpu::BufferUsages::UNIFORM });
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: true, min_binding_size: NonZeroU64::new(16) },
                    count: None,
                }];
                entries.extend([(1, false, 4), (2, false, 4), (3, true, 4), (4, true, 4), (5, false, 4), (6, false, 4), (7, true, 4), (8, true, 8)].map(|(b, read_only, least)| storage_binding(b, read_only, least)));
                let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some("wgpu-optim newton"), entries: &entries });
                let status = wgpu::BufferBinding { buffer: &scalars_out, offset: STATUS_OFFSET, size: NonZeroU64::new(16) };
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("wgpu-optim newton"),
                    layout: &layout,
                    entries: &[
                        wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &steps, offset: 0, size: NonZeroU64::new(16) }) },
                        wgpu::BindGroupEntry { binding: 1, resource: work.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 2, resource: rhs.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 3, resource: hessian_start.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 4, resource: grad_start.as_entire_binding() },
                        // The status lives after the closure's loss, 256 bytes in.
                        wgpu::BindGroupEntry { binding: 5, resource: wgpu::BindingResource::Buffer(status) },
                        wgpu::BindGroupEntry { binding: 6, resource: param.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 7, resource: saved.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 8, resource: scalars_in.as_entire_binding() },
                    ],
                });
                (param, grad, hessian, saved, scalars_out, scalars_in, loss_start, layout, bind_group, hessian_start, grad_start)
            })
            .await?;
        let (param, grad, hessian, saved, scalars_out, scalars_in, loss_start, layout, bind_group, hessian_start, grad_start) = built;
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: Some("wgpu-optim newton"), bind_group_layouts: &[Some(&layout)], immediate_size: 0 });
        let mut pipelines = Vec::new();
        for entry in ENTRIES {
            pipelines.push(gpu.pipeline(PipelineKey { label: "newton", entry, constants: Vec::new() }, NEWTON_WGSL, &pipeline_layout).await?);
        }
        let lambda = options.damping.as_ref().map_or(0.0, |d| d.initial);
        Ok(Newton { gpu: gpu.clone(), options, tensors, tag, n, param, grad, hessian, hessian_start, grad_start, scalars_out, scalars_in, loss_start, saved, pipelines, bind_group, step_stride, lambda })
    }

    /// The parameters, tensors back to back (a tensor's elements at [`Newton::tensor_range`]).
    pub fn param_view(&self) -> TensorView {
        TensorView { buffer: self.param.clone(), offset: 0, len: self.n, dtype: crate::storage::Dtype::F32 }
    }

    /// Where the closure writes the gradient (n values).
    pub fn grad_view(&self) -> TensorView {
        TensorView { buffer: self.grad.clone(), offset: 0, len: self.n, dtype: crate::storage::Dtype::F32 }
    }

    /// Where the closure writes the Hessian: n × n, row-major over the flat parameter index.
    pub fn hessian_view(&self) -> TensorView {
        TensorView { buffer: self.hessian.clone(), offset: 0, len: self.n * self.n, dtype: crate::storage::Dtype::F32 }
    }

    /// Where the closure writes the loss (one `f32`).
    pub fn loss_view(&self) -> TensorView {
        TensorView { buffer: self.scalars_out.clone(), offset: 0, len: 1, dtype: crate::storage::Dtype::F32 }
    }

    /// The flat index range of a tensor.
    pub fn tensor_range(&self, id: TensorId) -> Result<std::ops::Range<usize>> {
        let (_, shape, offset) = id.lookup(self.tag, &self.tensors)?;
        Ok(*offset..*offset + shape.iter().product::<usize>())
    }

    /// Elements n.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false: Newton needs at least one parameter.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The current damping λ (0 for plain Newton).
    pub fn damping(&self) -> f64 {
        self.lambda
    }

    /// Reads the parameters back.
    pub fn read_params(&self) -> Result<Vec<f32>> {
        Ok(pollster::block_on(read_views(&self.gpu, &[self.param_view()]))?.remove(0))
    }

    fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, entry: usize, k: usize, workgroups: (u32, u32)) {
        pass.set_pipeline(&self.pipelines[entry]);
        pass.set_bind_group(0, &self.bind_group, &[(k as u64 * self.step_stride) as u32]);
        pass.dispatch_workgroups(workgroups.0, workgroups.1, 1);
    }

    /// Records the solve of (H + λI)·p = g and x = saved − lr·p.
    fn record_solve(&self, encoder: &mut wgpu::CommandEncoder) {
        let n = self.n as u32;
        let tiles = |count: u32| count.div_ceil(16);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgpu-optim newton"), timestamp_writes: None });
        self.dispatch(&mut pass, PREPARE, 0, (tiles(n), tiles(n)));
        for k in 0..self.n {
            self.dispatch(&mut pass, PIVOT, k, (1, 1));
            let rows = n - k as u32 - 1;
            if rows > 0 {
                self.dispatch(&mut pass, ELIMINATE, k, (tiles(n - k as u32), tiles(rows)));
            }
        }
        self.dispatch(&mut pass, BACK_SUBSTITUTE, 0, (1, 1));
        self.dispatch(&mut pass, UPDATE, 0, (n.div_ceil(256), 1));
    }

    /// One step. `closure(encoder, what)` records the loss (and with [`Evaluate::All`] the
    /// gradient and Hessian) at the current parameters.
    pub fn step<F>(&mut self, closure: F) -> Result<NewtonStep>
    where
        F: FnMut(&mut wgpu::CommandEncoder, Evaluate) -> Result<()>,
    {
        pollster::block_on(self.step_async(closure))
    }

    /// [`Newton::step`] for the browser.
    pub async fn step_async<F>(&mut self, mut closure: F) -> Result<NewtonStep>
    where
        F: FnMut(&mut wgpu::CommandEncoder, Evaluate) -> Result<()>,
    {
        let device = self.gpu.device().clone();
        let bytes = self.n as u64 * 4;
        let mut report = NewtonStep { damping: self.lambda, ..NewtonStep::default() };
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-optim newton") });
        encoder.clear_buffer(&self.hessian, 0, None);
        closure(&mut encoder, Evaluate::All)?;
        encoder.copy_buffer_to_buffer(&self.param, 0, &self.saved, 0, bytes);
        encoder.copy_buffer_to_buffer(&self.grad, 0, &self.grad_start, 0, bytes);
        encoder.copy_buffer_to_buffer(&self.hessian, 0, &self.hessian_start, 0, bytes * self.n as u64);
        encoder.copy_buffer_to_buffer(&self.scalars_out, 0, &self.loss_start, 0, 4);
        let Some(damping) = self.options.damping.clone() else {
            // Plain Newton: one solve, one read.
            self.write_scalars(0.0);
            self.record_solve(&mut encoder);
            self.gpu.queue().submit([encoder.finish()]);
            let (loss, _, min_abs_pivot, _) = self.read().await?;
            report.loss = loss;
            report.attempts = 1;
            report.reads = 1;
            if !(min_abs_pivot > 0.0 && min_abs_pivot.is_finite()) {
                self.restore_saved();
                return Err(Error::Numerical(format!(
                    "Newton: the Hessian is singular (smallest pivot {min_abs_pivot:e}); the parameters are unchanged. Damped Newton handles this."
                )));
            }
            return Ok(report);
        };
        // Damped: each attempt solves with the current λ and evaluates the trial point in the
        // same submission; one read gives the start loss, the pivots and the trial loss.
        for attempt in 1..=damping.max_attempts {
            self.write_scalars(self.lambda);
            self.record_solve(&mut encoder);
            closure(&mut encoder, Evaluate::LossOnly)?;
            self.gpu.queue().submit([std::mem::replace(&mut encoder, device.create_command_encoder(&Default::default())).finish()]);
            let (trial, min_pivot, _, loss) = self.read().await?;
            report.loss = loss;
            report.attempts = attempt;
            report.reads += 1;
            let positive_definite = min_pivot > 0.0 && min_pivot.is_finite();
            if positive_definite && trial < loss {
                self.lambda = (self.lambda * damping.shrink).max(damping.floor);
                report.new_loss = Some(trial);
                report.damping = self.lambda;
                return Ok(report);
            }
            self.lambda = (self.lambda * damping.grow).max(damping.floor);
            encoder.copy_buffer_to_buffer(&self.saved, 0, &self.param, 0, bytes);
        }
        self.gpu.queue().submit([encoder.finish()]);
        Err(Error::Numerical(format!(
            "damped Newton: no step lowered the loss in {} attempts (λ is now {:e}); the parameters are unchanged",
            damping.max_attempts, self.lambda
        )))
    }

    fn write_scalars(&self, lambda: f64) {
        self.gpu.queue().write_buffer(&self.scalars_in, 0, bytemuck::cast_slice(&[lambda as f32, self.options.lr as f32]));
    }

    fn restore_saved(&self) {
        let mut encoder = self.gpu.device().create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&self.saved, 0, &self.param, 0, self.n as u64 * 4);
        self.gpu.queue().submit([encoder.finish()]);
    }

    /// One read: (closure's last loss, min pivot, min |pivot|, the step's start loss).
    async fn read(&self) -> Result<(f32, f32, f32, f32)> {
        let loss = TensorView { buffer: self.scalars_out.clone(), offset: 0, len: 1, dtype: crate::storage::Dtype::F32 };
        let status = TensorView { buffer: self.scalars_out.clone(), offset: STATUS_OFFSET, len: 2, dtype: crate::storage::Dtype::F32 };
        let start = TensorView { buffer: self.loss_start.clone(), offset: 0, len: 1, dtype: crate::storage::Dtype::F32 };
        let values = read_views(&self.gpu, &[loss, status, start]).await?;
        Ok((values[0][0], values[1][0], values[1][1], values[2][0]))
    }
}

/// The CPU twin of the solve: `p` with `(H + λI)·p = g`, by the kernels' operations in their
/// order; also the smallest pivot and the smallest |pivot|.
pub fn solve_reference(hessian: &[f32], grad: &[f32], lambda: f32, pivoting: bool) -> (Vec<f32>, f32, f32) {
    let n = grad.len();
    let mut w: Vec<f32> = hessian.to_vec();
    for i in 0..n {
        w[i * n + i] += lambda;
    }
    let mut b = grad.to_vec();
    let (mut min_pivot, mut min_abs) = (f32::MAX, f32::MAX);
    for k in 0..n {
        if pivoting {
            // The lowest row of the largest |W[i][k]|, i ≥ k.
            let mut best = (-1.0f32, k);
            for i in k..n {
                let a = w[i * n + k].abs();
                if a > best.0 {
                    best = (a, i);
                }
            }
            let p = best.1;
            if p != k {
                for j in 0..n {
                    w.swap(k * n + j, p * n + j);
                }
                b.swap(k, p);
            }
        }
        let pivot = w[k * n + k];
        min_pivot = min_pivot.min(pivot);
        min_abs = min_abs.min(pivot.abs());
        for i in k + 1..n {
            let l = w[i * n + k] / w[k * n + k];
            b[i] -= l * b[k];
            for j in k + 1..n {
                w[i * n + j] -= l * w[k * n + j];
            }
        }
    }
    for k in (0..n).rev() {
        let p = b[k] / w[k * n + k];
        b[k] = p;
        for i in 0..k {
            b[i] -= w[i * n + k] * p;
        }
    }
    (b, min_pivot, min_abs)
}
