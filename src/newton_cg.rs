//! Newton-CG: Newton's method for problems too large for a dense Hessian. The step
//! `s ≈ −H⁻¹g` comes from conjugate gradients that see H only through Hessian-vector products,
//! which the user's closure records (`shaders/newton_cg.wgsl` holds the rest).
//!
//! ```text
//! loss, g ← closure(LossAndGradient)
//! r ← −g, p ← r, s ← 0
//! repeat max_cg_iter times:                       (no CPU reads: converged iterations change nothing)
//!   Hp ← closure(HessianTimesDirection)            (the closure reads p, writes Hp)
//!   if p·Hp ≤ 0: stop (first iteration: s ← p = −g, the steepest-descent step)
//!   α ← r·r / p·Hp;  s ← s + α·p;  r ← r − α·Hp
//!   if |r| ≤ cg_tolerance·|g|: stop
//!   p ← r + (r·r / previous r·r)·p
//! x ← x + lr·s
//! ```
//!
//! A step is `2 + 5·max_cg_iter + 1` dispatches plus the closure's, and one read (the loss, for
//! the report). On a quadratic with `max_cg_iter ≥ n` it is exact Newton: one step reaches the
//! minimum.

use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

use crate::context::{storage_binding, GpuContext, PipelineKey};
use crate::error::{Error, Result};
use crate::optimizer::{read_views, TensorView};
use crate::params::{CollectionTag, Parameters, TensorId};

/// The kernels (with the shared block reductions).
pub const NEWTON_CG_WGSL: &str = concat!(include_str!("../shaders/block_reduce.wgsl"), include_str!("../shaders/newton_cg.wgsl"));

/// Newton-CG's hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NewtonCgOptions {
    /// Step scale (default 1).
    pub lr: f64,
    /// Conjugate-gradient iterations per step, each one Hessian-vector product (default 50).
    pub max_cg_iter: u32,
    /// CG stops when `|r| ≤ cg_tolerance·|g|` (default 1e-4).
    pub cg_tolerance: f64,
}

impl Default for NewtonCgOptions {
    fn default() -> Self {
        NewtonCgOptions { lr: 1.0, max_cg_iter: 50, cg_tolerance: 1e-4 }
    }
}

impl NewtonCgOptions {
    /// Finite positive `lr`, at least one CG iteration, a finite tolerance ≥ 0.
    pub fn validate(&self) -> Result<()> {
        let invalid = |name: &'static str, value: String, requirement: &'static str| {
            Err(Error::InvalidHyperparameter { optimizer: "NewtonCG", name, value, requirement })
        };
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return invalid("lr", self.lr.to_string(), "must be finite and > 0");
        }
        if self.max_cg_iter == 0 {
            return invalid("max_cg_iter", "0".into(), "must be at least 1");
        }
        if !(self.cg_tolerance >= 0.0 && self.cg_tolerance.is_finite()) {
            return invalid("cg_tolerance", self.cg_tolerance.to_string(), "must be finite and >= 0");
        }
        Ok(())
    }
}

/// What the closure is asked to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgEvaluate {
    /// The loss into `loss_view()` and the gradient into `grad_view()`, at the parameters.
    LossAndGradient,
    /// `H·p` into `product_view()`, for `p` in `direction_view()`, at the parameters.
    HessianTimesDirection,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Op {
    vec4s: u32,
    blocks: u32,
    grid_x: u32,
    finalize: u32,
    iteration: u32,
    tolerance: f32,
    lr: f32,
    _pad: u32,
}

const ENTRIES: [&str; 6] = ["start", "curvature", "update_sr", "update_p", "apply", "finalize"];
const START: usize = 0;
const CURVATURE: usize = 1;
const UPDATE_SR: usize = 2;
const UPDATE_P: usize = 3;
const APPLY: usize = 4;
const FINALIZE: usize = 5;
/// Records: 0 the start's, 1 the residual's, 2 + k iteration k's curvature.
const START_RECORD: u64 = 0;
const RESIDUAL_RECORD: u64 = 1;

/// Newton-CG on the GPU.
pub struct NewtonCg {
    gpu: GpuContext,
    options: NewtonCgOptions,
    tensors: Vec<(String, Vec<usize>, usize)>,
    tag: CollectionTag,
    n: usize,
    param: wgpu::Buffer,
    grad: wgpu::Buffer,
    direction: wgpu::Buffer,
    product: wgpu::Buffer,
    loss: wgpu::Buffer,
    pipelines: Vec<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    stride: u64,
    grid: (u32, u32),
}

impl NewtonCg {
    /// Places the parameters (tensors back to back) and allocates CG's vectors.
    pub fn new(gpu: &GpuContext, params: Parameters, options: NewtonCgOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(gpu, params, options))
    }

    /// [`NewtonCg::new`] for the browser.
    pub async fn new_async(gpu: &GpuContext, params: Parameters, options: NewtonCgOptions) -> Result<Self> {
        options.validate()?;
        let tag = params.tag();
        let mut flat = Vec::new();
        let mut tensors = Vec::new();
        for spec in params.into_specs() {
            tensors.push((spec.name, spec.shape, flat.len()));
            flat.extend_from_slice(&spec.data);
        }
        let n = flat.len();
        if n == 0 {
            return Err(Error::Tensor("Newton-CG needs at least one parameter".into()));
        }
        flat.resize(n.next_multiple_of(4), 0.0);
        let device = gpu.device();
        let limits = device.limits();
        let bytes = flat.len() as u64 * 4;
        let binding = u64::from(limits.max_storage_buffer_binding_size).min(limits.max_buffer_size);
        if bytes > binding {
            return Err(Error::Tensor(format!("Newton-CG keeps each vector in one storage binding: {bytes} bytes, and this device binds at most {binding}")));
        }
        let vec4s = (flat.len() / 4) as u32;
        let blocks = vec4s.div_ceil(256).max(1);
        let max_x = limits.max_compute_workgroups_per_dimension;
        let grid = (blocks.min(max_x), blocks.div_ceil(max_x));
        let stride = (std::mem::size_of::<Op>() as u64).next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let op = |finalize: u32, iteration: u32| Op {
            vec4s,
            blocks,
            grid_x: grid.0,
            finalize,
            iteration,
            tolerance: options.cg_tolerance as f32,
            lr: options.lr as f32,
            _pad: 0,
        };
        let mut records = Vec::new();
        for record in [op(0, 0), op(2, 0)].into_iter().chain((0..options.max_cg_iter).map(|k| op(1, k))) {
            let mut bytes = bytemuck::bytes_of(&record).to_vec();
            bytes.resize(stride as usize, 0);
            records.extend(bytes);
        }
        let built = gpu
            .checked("allocating Newton-CG's buffers", || {
                use wgpu::util::DeviceExt;
                let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
                let vector = |label: &str| device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: bytes, usage, mapped_at_creation: false });
                let param = device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("wgpu-optim newton-cg param"), contents: bytemuck::cast_slice(&flat), usage });
                let (grad, s, r, direction, product) = (vector("newton-cg grad"), vector("newton-cg s"), vector("newton-cg r"), vector("newton-cg p"), vector("newton-cg Hp"));
                let registers = device.create_buffer(&wgpu::BufferDescriptor { label: Some("newton-cg registers"), size: 32, usage, mapped_at_creation: false });
                let partials = device.create_buffer(&wgpu::BufferDescriptor { label: Some("newton-cg partials"), size: u64::from(blocks) * 16, usage, mapped_at_creation: false });
                let loss = device.create_buffer(&wgpu::BufferDescriptor { label: Some("newton-cg loss"), size: 4, usage, mapped_at_creation: false });
                let ops = device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("newton-cg ops"), contents: &records, usage: wgpu::BufferUsages::UNIFORM });
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: true, min_binding_size: NonZeroU64::new(std::mem::size_of::<Op>() as u64) },
                    count: None,
                }];
                entries.extend([(1, false, 16), (2, true, 16), (3, false, 16), (4, false, 16), (5, false, 16), (6, true, 16), (7, false, 4), (8, false, 16)].map(|(b, read_only, least)| storage_binding(b, read_only, least)));
                let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some("wgpu-optim newton-cg"), entries: &entries });
                let resources = [&param, &grad, &s, &r, &direction, &product, &registers, &partials];
                let mut bindings = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &ops, offset: 0, size: NonZeroU64::new(std::mem::size_of::<Op>() as u64) }),
                }];
                bindings.extend(resources.iter().enumerate().map(|(k, buffer)| wgpu::BindGroupEntry { binding: k as u32 + 1, resource: buffer.as_entire_binding() }));
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("wgpu-optim newton-cg"), layout: &layout, entries: &bindings });
                (param, grad, direction, product, loss, layout, bind_group)
            })
            .await?;
        let (param, grad, direction, product, loss, layout, bind_group) = built;
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: Some("wgpu-optim newton-cg"), bind_group_layouts: &[Some(&layout)], immediate_size: 0 });
        let mut pipelines = Vec::new();
        for entry in ENTRIES {
            pipelines.push(gpu.pipeline(PipelineKey { label: "newton_cg", entry, constants: Vec::new() }, NEWTON_CG_WGSL, &pipeline_layout).await?);
        }
        Ok(NewtonCg { gpu: gpu.clone(), options, tensors, tag, n, param, grad, direction, product, loss, pipelines, bind_group, stride, grid })
    }

    fn view(&self, buffer: &wgpu::Buffer) -> TensorView {
        TensorView { buffer: buffer.clone(), offset: 0, len: self.n, dtype: crate::storage::Dtype::F32 }
    }

    /// The parameters, tensors back to back (a tensor at [`NewtonCg::tensor_range`]).
    pub fn param_view(&self) -> TensorView {
        self.view(&self.param)
    }

    /// Where the closure writes the gradient.
    pub fn grad_view(&self) -> TensorView {
        self.view(&self.grad)
    }

    /// The direction p whose Hessian product the closure computes.
    pub fn direction_view(&self) -> TensorView {
        self.view(&self.direction)
    }

    /// Where the closure writes `H·p`.
    pub fn product_view(&self) -> TensorView {
        self.view(&self.product)
    }

    /// Where the closure writes the loss (one `f32`).
    pub fn loss_view(&self) -> TensorView {
        TensorView { buffer: self.loss.clone(), offset: 0, len: 1, dtype: crate::storage::Dtype::F32 }
    }

    /// A tensor's flat index range.
    pub fn tensor_range(&self, id: TensorId) -> Result<std::ops::Range<usize>> {
        let (_, shape, offset) = id.lookup(self.tag, &self.tensors)?;
        Ok(*offset..*offset + shape.iter().product::<usize>())
    }

    /// Reads the parameters back.
    pub fn read_params(&self) -> Result<Vec<f32>> {
        Ok(pollster::block_on(read_views(&self.gpu, &[self.param_view()]))?.remove(0))
    }

    fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, entry: usize, record: u64) {
        pass.set_pipeline(&self.pipelines[entry]);
        pass.set_bind_group(0, &self.bind_group, &[(record * self.stride) as u32]);
        let groups = if entry == FINALIZE { (1, 1) } else { self.grid };
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }

    fn pass<'e>(encoder: &'e mut wgpu::CommandEncoder) -> wgpu::ComputePass<'e> {
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgpu-optim newton-cg"), timestamp_writes: None })
    }

    /// One step; returns the loss at its start (one read).
    pub fn step<F>(&mut self, closure: F) -> Result<f32>
    where
        F: FnMut(&mut wgpu::CommandEncoder, CgEvaluate) -> Result<()>,
    {
        pollster::block_on(self.step_async(closure))
    }

    /// [`NewtonCg::step`] for the browser.
    pub async fn step_async<F>(&mut self, mut closure: F) -> Result<f32>
    where
        F: FnMut(&mut wgpu::CommandEncoder, CgEvaluate) -> Result<()>,
    {
        let mut encoder = self.gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-optim newton-cg") });
        closure(&mut encoder, CgEvaluate::LossAndGradient)?;
        {
            let mut pass = Self::pass(&mut encoder);
            self.dispatch(&mut pass, START, START_RECORD);
            self.dispatch(&mut pass, FINALIZE, START_RECORD);
        }
        for k in 0..u64::from(self.options.max_cg_iter) {
            closure(&mut encoder, CgEvaluate::HessianTimesDirection)?;
            let mut pass = Self::pass(&mut encoder);
            self.dispatch(&mut pass, CURVATURE, 2 + k);
            self.dispatch(&mut pass, FINALIZE, 2 + k);
            self.dispatch(&mut pass, UPDATE_SR, RESIDUAL_RECORD);
            self.dispatch(&mut pass, FINALIZE, RESIDUAL_RECORD);
            self.dispatch(&mut pass, UPDATE_P, RESIDUAL_RECORD);
        }
        {
            let mut pass = Self::pass(&mut encoder);
            self.dispatch(&mut pass, APPLY, START_RECORD);
        }
        self.gpu.queue().submit([encoder.finish()]);
        Ok(read_views(&self.gpu, &[self.loss_view()]).await?[0][0])
    }
}
