//! The built-in N-dimensional problems of `wgpu-optim minimize`: Rosenbrock (as
//! `scipy.optimize.rosen` defines it) and an ill-conditioned quadratic. Each has a WGSL kernel
//! (`shaders/problems.wgsl`) that writes the loss and gradient into an optimizer's views, and a
//! CPU twin ([`Problem::evaluate`]) that computes the same float32 operations in the same order.

use std::fmt;
use std::str::FromStr;

use crate::context::{storage_binding, GpuContext, PipelineKey};
use crate::error::{Error, Result};
use crate::lbfgs::vectors::{reduce, WORKGROUP};
use crate::optimizer::TensorView;

/// The problems' kernels.
pub const PROBLEMS_WGSL: &str = include_str!("../shaders/problems.wgsl");

/// Which problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// `Σ_{i<N−1} 100·(x_{i+1} − x_i²)² + (1 − x_i)²`; minimum 0 at (1, …, 1). N ≥ 2.
    Rosenbrock,
    /// `½·Σ c_i·x_i²` with `c_i = 1000^(i/(N−1))` (condition number 1000); minimum 0 at 0.
    Quadratic,
}

impl FromStr for ProblemKind {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "rosenbrock" => Ok(ProblemKind::Rosenbrock),
            "quadratic" => Ok(ProblemKind::Quadratic),
            other => Err(Error::Config(format!(
                "unknown problem {other:?}: expected rosenbrock or quadratic"
            ))),
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemKind::Rosenbrock => "rosenbrock",
            ProblemKind::Quadratic => "quadratic",
        })
    }
}

/// A problem of a given dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    kind: ProblemKind,
    dim: usize,
    /// The quadratic's `c_i` (computed in double precision, rounded to float32); empty for
    /// Rosenbrock.
    curvature: Vec<f32>,
}

impl Problem {
    /// The problem in `dim` dimensions (Rosenbrock needs at least 2).
    pub fn new(kind: ProblemKind, dim: usize) -> Result<Self> {
        let least = if kind == ProblemKind::Rosenbrock {
            2
        } else {
            1
        };
        if dim < least {
            return Err(Error::Config(format!(
                "{kind} needs --dim of at least {least}, got {dim}"
            )));
        }
        if dim > u32::MAX as usize / 4 {
            return Err(Error::Config(format!("--dim {dim} is too large")));
        }
        let curvature = match kind {
            ProblemKind::Rosenbrock => Vec::new(),
            ProblemKind::Quadratic if dim == 1 => vec![1.0],
            ProblemKind::Quadratic => (0..dim)
                .map(|i| 1000f64.powf(i as f64 / (dim - 1) as f64) as f32)
                .collect(),
        };
        Ok(Problem {
            kind,
            dim,
            curvature,
        })
    }

    /// Which problem.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// Its dimension N.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The loss term of element `i` (0 where it has none) and the gradient's element `i`.
    fn term_and_gradient(&self, x: &[f32], i: usize) -> (f32, f32) {
        match self.kind {
            ProblemKind::Rosenbrock => {
                let (mut term, mut g) = (0.0f32, 0.0f32);
                if i + 1 < self.dim {
                    let a = x[i + 1] - x[i] * x[i];
                    let b = 1.0 - x[i];
                    term = (100.0 * a) * a + b * b;
                    g = (-400.0 * x[i]) * a - 2.0 * b;
                }
                if i > 0 {
                    let a = x[i] - x[i - 1] * x[i - 1];
                    g += 200.0 * a;
                }
                (term, g)
            }
            ProblemKind::Quadratic => {
                let c = self.curvature[i];
                (((0.5 * c) * x[i]) * x[i], c * x[i])
            }
        }
    }

    /// The Hessian at `x`, dense and row-major, as the kernel writes it.
    pub fn hessian(&self, x: &[f32]) -> Vec<f32> {
        let n = self.dim;
        let mut h = vec![0.0f32; n * n];
        for i in 0..n {
            match self.kind {
                ProblemKind::Rosenbrock => {
                    let mut diagonal = 0.0f32;
                    if i + 1 < n {
                        diagonal = ((1200.0 * x[i]) * x[i] - 400.0 * x[i + 1]) + 2.0;
                        h[i * n + i + 1] = -400.0 * x[i];
                    }
                    if i > 0 {
                        diagonal += 200.0;
                        h[i * n + i - 1] = -400.0 * x[i - 1];
                    }
                    h[i * n + i] = diagonal;
                }
                ProblemKind::Quadratic => h[i * n + i] = self.curvature[i],
            }
        }
        h
    }

    /// The loss and gradient at `x` (its first `dim` elements), as the kernel computes them.
    pub fn evaluate(&self, x: &[f32], grad: &mut [f32]) -> f32 {
        let vec4s = self.dim.div_ceil(4);
        let mut terms = vec![[0.0f32; 4]; vec4s];
        for i in 0..self.dim {
            let (term, g) = self.term_and_gradient(x, i);
            terms[i / 4][i % 4] = term;
            grad[i] = g;
        }
        reduce(vec4s, |e| {
            let t = terms[e];
            [((t[0] + t[1]) + t[2]) + t[3], 0.0, 0.0, 0.0]
        })[0]
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Shape {
    dim: u32,
    blocks: u32,
    grid_x: u32,
    _pad: u32,
}

/// A problem's kernels bound to where its input and outputs live.
pub struct GpuProblem {
    evaluate: wgpu::ComputePipeline,
    total: wgpu::ComputePipeline,
    hessian: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
    product: wgpu::ComputePipeline,
    has_hessian: bool,
    has_product: bool,
    dim: u32,
}

impl GpuProblem {
    /// Binds the problem to `x` (read), `grad` (written) and `loss` (one `f32`, written).
    pub async fn new(gpu: &GpuContext, problem: &Problem, x: &TensorView, grad: &TensorView, loss: &TensorView) -> Result<Self> {
        Self::with_hessian(gpu, problem, x, grad, loss, None).await
    }

    /// [`GpuProblem::new`], and where [`GpuProblem::record_hessian`] writes the Hessian
    /// (n × n, row-major; only the nonzero entries are written).
    pub async fn with_hessian(gpu: &GpuContext, problem: &Problem, x: &TensorView, grad: &TensorView, loss: &TensorView, hessian: Option<&TensorView>) -> Result<Self> {
        Self::bind(gpu, problem, x, grad, loss, hessian, None).await
    }

    /// [`GpuProblem::new`], and the direction `v` and product `out` of
    /// [`GpuProblem::record_hessian_times_direction`] (`out = H·v`).
    pub async fn with_hessian_times(gpu: &GpuContext, problem: &Problem, x: &TensorView, grad: &TensorView, loss: &TensorView, v: &TensorView, out: &TensorView) -> Result<Self> {
        Self::bind(gpu, problem, x, grad, loss, None, Some((v, out))).await
    }

    async fn bind(
        gpu: &GpuContext,
        problem: &Problem,
        x: &TensorView,
        grad: &TensorView,
        loss: &TensorView,
        hessian: Option<&TensorView>,
        hessian_times: Option<(&TensorView, &TensorView)>,
    ) -> Result<Self> {
        if let Some((v, out)) = hessian_times {
            for (what, view) in [("the direction", v), ("the Hessian-vector product", out)] {
                if view.len != problem.dim {
                    return Err(Error::SizeMismatch { what: format!("{what} of {}", problem.kind), expected: problem.dim, actual: view.len });
                }
            }
        }
        if let Some(h) = hessian {
            if h.len != problem.dim * problem.dim {
                return Err(Error::SizeMismatch { what: format!("the Hessian of {}", problem.kind), expected: problem.dim * problem.dim, actual: h.len });
            }
        }
        for (what, view) in [("x", x), ("the gradient", grad)] {
            if view.len != problem.dim {
                return Err(Error::SizeMismatch {
                    what: format!("{what} of {}", problem.kind),
                    expected: problem.dim,
                    actual: view.len,
                });
            }
        }
        let device = gpu.device();
        let blocks = (problem.dim.div_ceil(4).div_ceil(WORKGROUP)) as u32;
        let max_x = device.limits().max_compute_workgroups_per_dimension;
        let grid = (blocks.min(max_x), blocks.div_ceil(max_x));
        let shape = Shape {
            dim: problem.dim as u32,
            blocks,
            grid_x: grid.0,
            _pad: 0,
        };
        let (layout, shape_buffer, curvature, partials, unused, unused_read, unused_write) = gpu
            .checked("allocating a problem's buffers", || {
                use wgpu::util::DeviceExt;
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                }];
                entries.extend(
                    [(1, true), (2, false), (3, true), (4, false), (5, false), (6, false), (7, true), (8, false)]
                        .map(|(b, read_only)| storage_binding(b, read_only, 4)),
                );
                let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("wgpu-optim problem"),
                    entries: &entries,
                });
                let shape_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("wgpu-optim problem shape"),
                    contents: bytemuck::bytes_of(&shape),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
                let values: &[f32] = if problem.curvature.is_empty() {
                    &[0.0]
                } else {
                    &problem.curvature
                };
                let curvature = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("wgpu-optim problem curvature"),
                    contents: bytemuck::cast_slice(values),
                    usage: wgpu::BufferUsages::STORAGE,
                });
                let partials = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-optim problem partials"),
                    size: u64::from(blocks) * 4,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                });
                let unused = device.create_buffer(&wgpu::BufferDescriptor { label: Some("wgpu-optim problem (unused)"), size: 4, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
                let unused_read = device.create_buffer(&wgpu::BufferDescriptor { label: Some("wgpu-optim problem (unused)"), size: 4, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
                let unused_write = device.create_buffer(&wgpu::BufferDescriptor { label: Some("wgpu-optim problem (unused)"), size: 4, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
                (layout, shape_buffer, curvature, partials, unused, unused_read, unused_write)
            })
            .await?;
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("wgpu-optim problem"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let kind = match problem.kind {
            ProblemKind::Rosenbrock => 0.0,
            ProblemKind::Quadratic => 1.0,
        };
        let constants = vec![("problem", f64::to_bits(kind))];
        let evaluate = gpu
            .pipeline(
                PipelineKey {
                    label: "problems",
                    entry: "evaluate",
                    constants: constants.clone(),
                },
                PROBLEMS_WGSL,
                &pipeline_layout,
            )
            .await?;
        let total = gpu
            .pipeline(
                PipelineKey {
                    label: "problems",
                    entry: "total",
                    constants: constants.clone(),
                },
                PROBLEMS_WGSL,
                &pipeline_layout,
            )
            .await?;
        let hessian_pipeline = gpu
            .pipeline(PipelineKey { label: "problems", entry: "hessian_rows", constants: constants.clone() }, PROBLEMS_WGSL, &pipeline_layout)
            .await?;
        let product_pipeline = gpu
            .pipeline(PipelineKey { label: "problems", entry: "hessian_times_direction", constants }, PROBLEMS_WGSL, &pipeline_layout)
            .await?;
        let (direction_binding, product_binding) = match hessian_times {
            Some((v, out)) => (v.binding(), out.binding()),
            None => (unused_read.as_entire_binding(), unused_write.as_entire_binding()),
        };
        let hessian_binding = match hessian {
            Some(h) => h.binding(),
            None => unused.as_entire_binding(),
        };
        let bind_group = gpu
            .checked("binding a problem", || {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("wgpu-optim problem"),
                    layout: &layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: shape_buffer.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: x.binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 2,
                            resource: grad.binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 3,
                            resource: curvature.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 4,
                            resource: partials.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 5,
                            resource: loss.binding(),
                        },
                        wgpu::BindGroupEntry { binding: 6, resource: hessian_binding },
                        wgpu::BindGroupEntry { binding: 7, resource: direction_binding },
                        wgpu::BindGroupEntry { binding: 8, resource: product_binding },
                    ],
                })
            })
            .await?;
        Ok(GpuProblem {
            evaluate,
            total,
            hessian: hessian_pipeline,
            product: product_pipeline,
            bind_group,
            grid,
            has_hessian: hessian.is_some(),
            has_product: hessian_times.is_some(),
            dim: problem.dim as u32,
        })
    }

    /// Records the Hessian's nonzero entries at the current `x` (bound by
    /// [`GpuProblem::with_hessian`]; nothing otherwise): one dispatch.
    pub fn record_hessian(&self, encoder: &mut wgpu::CommandEncoder) {
        if !self.has_hessian {
            return;
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgpu-optim problem hessian"), timestamp_writes: None });
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.set_pipeline(&self.hessian);
        // One invocation per row (n is small: the Hessian holds n² values).
        pass.dispatch_workgroups(self.dim.div_ceil(256), 1, 1);
    }

    /// Records `out = H·v` at the current `x` (bound by [`GpuProblem::with_hessian_times`];
    /// nothing otherwise): one dispatch.
    pub fn record_hessian_times_direction(&self, encoder: &mut wgpu::CommandEncoder) {
        if !self.has_product {
            return;
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgpu-optim problem hessian-vector"), timestamp_writes: None });
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.set_pipeline(&self.product);
        // Rows of 65,535 workgroups (the WGSL's stride) when one row is not enough.
        let groups = self.dim.div_ceil(256);
        pass.dispatch_workgroups(groups.min(65_535), groups.div_ceil(65_535), 1);
    }

    /// Records the loss and gradient at the current `x`: two dispatches.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-optim problem"),
            timestamp_writes: None,
        });
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.set_pipeline(&self.evaluate);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
        pass.set_pipeline(&self.total);
        pass.dispatch_workgroups(1, 1, 1);
    }
}
