//! L-BFGS's vectors on the GPU: one storage buffer per vector, the kernels of
//! `shaders/lbfgs.wgsl`, and one uniform record (256 bytes, a dynamic offset) per dispatch.
//!
//! Operations are recorded into one command encoder and submitted when the algorithm reads
//! registers back; the user's closure records its forward and backward into the same encoder.

use std::collections::HashMap;
use std::num::NonZeroU64;

use crate::context::{storage_binding, GpuContext, PipelineKey};
use crate::error::{Error, Result};

use super::vectors::{register, Coef, Finalize, Vector, Vectors, WORKGROUP};

/// The kernels of L-BFGS.
pub const LBFGS_WGSL: &str = concat!(include_str!("../../shaders/block_reduce.wgsl"), include_str!("../../shaders/lbfgs.wgsl"));

const ENTRIES: [&str; 5] = [
    "gather",
    "history_pair",
    "scale_dot",
    "axpy_dot",
    "finalize",
];
const GATHER: usize = 0;
const HISTORY_PAIR: usize = 1;
const SCALE_DOT: usize = 2;
const AXPY_DOT: usize = 3;
const FINALIZE: usize = 4;
/// `op.finalize` of a register write.
const FINALIZE_SET: u32 = 5;

/// One dispatch's parameters (`struct Op` of the WGSL).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Op {
    vec4s: u32,
    blocks: u32,
    grid_x: u32,
    finalize: u32,
    coef_register: u32,
    coef_scale: f32,
    slot: u32,
    with_dot: u32,
    ro_base: u32,
    al_base: u32,
    _pad: [u32; 2],
}

/// The vectors bound by one dispatch: x, x2 (read-write), v, v2, w (read).
type Bindings = [Option<Vector>; 5];

struct Dispatch {
    entry: usize,
    bindings: Bindings,
    op: usize,
    workgroups: (u32, u32),
}

/// The vectors of an L-BFGS run on the GPU.
pub struct GpuVectors {
    gpu: GpuContext,
    len: usize,
    param: wgpu::Buffer,
    grad: wgpu::Buffer,
    work: Vec<wgpu::Buffer>,
    registers: wgpu::Buffer,
    register_count: usize,
    partials: wgpu::Buffer,
    ops_buffer: wgpu::Buffer,
    op_stride: u64,
    op_capacity: usize,
    staging: wgpu::Buffer,
    /// Bound where a dispatch does not use a binding: one for reading, and one per writable
    /// binding (WebGPU refuses two writable bindings of one buffer in a dispatch).
    unused_read: wgpu::Buffer,
    unused_write: [wgpu::Buffer; 2],
    layout: wgpu::BindGroupLayout,
    pipelines: Vec<wgpu::ComputePipeline>,
    bind_groups: HashMap<Bindings, wgpu::BindGroup>,
    ring_slots: usize,
    blocks: u32,
    grid: (u32, u32),
    encoder: Option<wgpu::CommandEncoder>,
    ops: Vec<Op>,
    pending: Vec<Dispatch>,
    dispatches: usize,
}

impl GpuVectors {
    /// Allocates the parameter and gradient vectors (`param` as initial values), the
    /// registers and the kernels.
    pub(crate) async fn new(gpu: &GpuContext, param: &[f32], ring_slots: usize) -> Result<Self> {
        let device = gpu.device();
        let limits = device.limits();
        let len = param.len();
        let bytes = len as u64 * 4;
        let binding_limit =
            u64::from(limits.max_storage_buffer_binding_size).min(limits.max_buffer_size);
        if bytes > binding_limit {
            return Err(Error::Tensor(format!(
                "L-BFGS keeps every vector (the parameters of all tensors, flattened as torch does) in one storage binding: \
                 {len} elements need {bytes} bytes, and this device binds at most {binding_limit}"
            )));
        }
        let vec4s = len / 4;
        let blocks = vec4s.div_ceil(WORKGROUP).max(1) as u32;
        let max_x = limits.max_compute_workgroups_per_dimension;
        let grid = (blocks.min(max_x), blocks.div_ceil(max_x));
        let register_count = register::HEADER + 2 * ring_slots;
        let op_stride = (std::mem::size_of::<Op>() as u64)
            .next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        // The two loops of a full history, plus the rest of an iteration, in one submission.
        let op_capacity = 4 * ring_slots + 64;
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let (
            param_buffer,
            grad,
            registers,
            partials,
            ops_buffer,
            staging,
            unused_read,
            unused_write,
            layout,
        ) = gpu
            .checked("allocating L-BFGS's buffers", || {
                let buffer = |label: &str, size: u64, usage: wgpu::BufferUsages| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(label),
                        size,
                        usage,
                        mapped_at_creation: false,
                    })
                };
                let param_buffer = buffer("wgpu-optim lbfgs param", bytes, storage);
                let grad = buffer("wgpu-optim lbfgs grad", bytes, storage);
                let registers = buffer(
                    "wgpu-optim lbfgs registers",
                    register_count as u64 * 4,
                    storage,
                );
                let partials = buffer("wgpu-optim lbfgs partials", u64::from(blocks) * 16, storage);
                let ops_buffer = buffer(
                    "wgpu-optim lbfgs ops",
                    op_stride * op_capacity as u64,
                    wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                );
                let staging = buffer(
                    "wgpu-optim lbfgs read-back",
                    register::HEADER as u64 * 4,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                );
                let unused_read = buffer(
                    "wgpu-optim lbfgs unused (read)",
                    16,
                    wgpu::BufferUsages::STORAGE,
                );
                let unused_write = [
                    buffer("wgpu-optim lbfgs unused (write x)", 16, wgpu::BufferUsages::STORAGE),
                    buffer("wgpu-optim lbfgs unused (write x2)", 16, wgpu::BufferUsages::STORAGE),
                ];
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: NonZeroU64::new(std::mem::size_of::<Op>() as u64),
                    },
                    count: None,
                }];
                // vec4 arrays, and the f32 registers.
                entries.extend(
                    [
                        (1, false, 16),
                        (2, false, 16),
                        (3, true, 16),
                        (4, true, 16),
                        (5, true, 16),
                        (6, false, 4),
                        (7, false, 16),
                    ]
                    .map(|(binding, read_only, least)| storage_binding(binding, read_only, least)),
                );
                let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("wgpu-optim lbfgs"),
                    entries: &entries,
                });
                (
                    param_buffer,
                    grad,
                    registers,
                    partials,
                    ops_buffer,
                    staging,
                    unused_read,
                    unused_write,
                    layout,
                )
            })
            .await?;
        gpu.queue()
            .write_buffer(&param_buffer, 0, bytemuck::cast_slice(param));
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("wgpu-optim lbfgs"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let mut pipelines = Vec::new();
        for entry in ENTRIES {
            let key = PipelineKey {
                label: "lbfgs",
                entry,
                constants: Vec::new(),
            };
            pipelines.push(gpu.pipeline(key, LBFGS_WGSL, &pipeline_layout).await?);
        }
        Ok(GpuVectors {
            gpu: gpu.clone(),
            len,
            param: param_buffer,
            grad,
            work: Vec::new(),
            registers,
            register_count,
            partials,
            ops_buffer,
            op_stride,
            op_capacity,
            staging,
            unused_read,
            unused_write,
            layout,
            pipelines,
            bind_groups: HashMap::new(),
            ring_slots,
            blocks,
            grid,
            encoder: None,
            ops: Vec::new(),
            pending: Vec::new(),
            dispatches: 0,
        })
    }

    pub(crate) fn gpu(&self) -> &GpuContext {
        &self.gpu
    }

    pub(crate) fn param_buffer(&self) -> &wgpu::Buffer {
        &self.param
    }

    pub(crate) fn grad_buffer(&self) -> &wgpu::Buffer {
        &self.grad
    }

    pub(crate) fn registers_buffer(&self) -> &wgpu::Buffer {
        &self.registers
    }

    fn buffer(&self, v: Vector) -> &wgpu::Buffer {
        match v {
            Vector::Param => &self.param,
            Vector::Grad => &self.grad,
            Vector::Work(k) => &self.work[k],
        }
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        let device = self.gpu.device();
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim lbfgs"),
            })
        })
    }

    fn op(&self, finalize: u32, coef: Coef, slot: u32, with_dot: bool) -> Op {
        Op {
            vec4s: (self.len / 4) as u32,
            blocks: self.blocks,
            grid_x: self.grid.0,
            finalize,
            coef_register: coef.register.map_or(register::NONE, |r| r as u32),
            coef_scale: coef.scale,
            slot,
            with_dot: u32::from(with_dot),
            ro_base: register::HEADER as u32,
            al_base: (register::HEADER + self.ring_slots) as u32,
            _pad: [0; 2],
        }
    }

    fn push(&mut self, entry: usize, bindings: Bindings, op: Op, workgroups: (u32, u32)) {
        if self.ops.len() == self.op_capacity {
            self.submit_recorded();
        }
        self.ops.push(op);
        self.pending.push(Dispatch {
            entry,
            bindings,
            op: self.ops.len() - 1,
            workgroups,
        });
        self.dispatches += 1;
    }

    /// A vector-wide dispatch, followed by `finalize` when it reduces.
    fn sweep(&mut self, entry: usize, bindings: Bindings, op: Op, finalize: Option<Finalize>) {
        self.push(entry, bindings, op, self.grid);
        if let Some(finalize) = finalize {
            let op = Op {
                finalize: finalize.code(),
                slot: finalize.slot(),
                ..op
            };
            self.push(FINALIZE, [None; 5], op, (1, 1));
        }
    }

    fn bind_group(&mut self, bindings: Bindings) -> wgpu::BindGroup {
        if let Some(group) = self.bind_groups.get(&bindings) {
            return group.clone();
        }
        let unused = [
            &self.unused_write[0],
            &self.unused_write[1],
            &self.unused_read,
            &self.unused_read,
            &self.unused_read,
        ];
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.ops_buffer,
                offset: 0,
                size: NonZeroU64::new(std::mem::size_of::<Op>() as u64),
            }),
        }];
        for (k, bound) in bindings.iter().enumerate() {
            let buffer = match bound {
                Some(v) => self.buffer(*v),
                None => unused[k],
            };
            entries.push(wgpu::BindGroupEntry {
                binding: k as u32 + 1,
                resource: buffer.as_entire_binding(),
            });
        }
        entries.push(wgpu::BindGroupEntry {
            binding: 6,
            resource: self.registers.as_entire_binding(),
        });
        entries.push(wgpu::BindGroupEntry {
            binding: 7,
            resource: self.partials.as_entire_binding(),
        });
        let group = self
            .gpu
            .device()
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("wgpu-optim lbfgs"),
                layout: &self.layout,
                entries: &entries,
            });
        self.bind_groups.insert(bindings, group.clone());
        group
    }

    /// Records the pending dispatches into one compute pass.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let groups: Vec<wgpu::BindGroup> = pending
            .iter()
            .map(|d| self.bind_group(d.bindings))
            .collect();
        let pipelines = self.pipelines.clone();
        let stride = self.op_stride;
        let encoder = self.encoder();
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-optim lbfgs"),
            timestamp_writes: None,
        });
        for (dispatch, group) in pending.iter().zip(&groups) {
            pass.set_pipeline(&pipelines[dispatch.entry]);
            pass.set_bind_group(0, group, &[(dispatch.op as u64 * stride) as u32]);
            pass.dispatch_workgroups(dispatch.workgroups.0, dispatch.workgroups.1, 1);
        }
    }

    /// Submits everything recorded: the dispatch records first, then the commands.
    fn submit_recorded(&mut self) {
        self.flush();
        let mut records = vec![0u8; self.ops.len() * self.op_stride as usize];
        for (k, op) in self.ops.iter().enumerate() {
            let at = k * self.op_stride as usize;
            records[at..at + std::mem::size_of::<Op>()].copy_from_slice(bytemuck::bytes_of(op));
        }
        if !records.is_empty() {
            self.gpu.queue().write_buffer(&self.ops_buffer, 0, &records);
        }
        self.ops.clear();
        let encoder = self.encoder.take();
        self.gpu.queue().submit(encoder.map(|e| e.finish()));
    }

    async fn read_buffer(&mut self, buffer: Vector, count: usize) -> Result<Vec<f32>> {
        self.submit_recorded();
        let view = crate::optimizer::TensorView {
            buffer: self.buffer(buffer).clone(),
            offset: 0,
            len: count,
            dtype: crate::storage::Dtype::F32,
        };
        let mut values = crate::optimizer::read_views(&self.gpu, &[view]).await?;
        Ok(values.remove(0))
    }
}

impl Vectors for GpuVectors {
    type Evaluation<'a> = wgpu::CommandEncoder;

    fn len(&self) -> usize {
        self.len
    }

    fn allocate(&mut self) -> Result<usize> {
        let buffer = self.gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-optim lbfgs vector"),
            size: self.len as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.work.push(buffer);
        Ok(self.work.len() - 1)
    }

    fn work_vectors(&self) -> usize {
        self.work.len()
    }

    fn ro_base(&self) -> usize {
        register::HEADER
    }

    fn al_base(&self) -> usize {
        register::HEADER + self.ring_slots
    }

    fn gather(&mut self, x: Vector, sign: f32, direction: Vector) {
        let op = self.op(0, Coef::constant(sign), 0, true);
        self.sweep(
            GATHER,
            [Some(x), None, Some(Vector::Grad), None, Some(direction)],
            op,
            Some(Finalize::Gather),
        );
    }

    fn history_pair(
        &mut self,
        y: Vector,
        s: Vector,
        g: Vector,
        prev: Vector,
        d: Vector,
        t: f32,
        slot: usize,
    ) {
        let op = self.op(0, Coef::constant(t), slot as u32, true);
        self.sweep(
            HISTORY_PAIR,
            [Some(y), Some(s), Some(g), Some(prev), Some(d)],
            op,
            Some(Finalize::History(slot)),
        );
    }

    fn scale(&mut self, x: Vector, v: Vector, c: Coef, reduce: Option<(Vector, Finalize)>) {
        let op = self.op(0, c, 0, reduce.is_some());
        self.sweep(
            SCALE_DOT,
            [Some(x), None, Some(v), None, reduce.map(|r| r.0)],
            op,
            reduce.map(|r| r.1),
        );
    }

    fn axpy(&mut self, x: Vector, v: Vector, c: Coef, reduce: Option<(Vector, Finalize)>) {
        let op = self.op(0, c, 0, reduce.is_some());
        self.sweep(
            AXPY_DOT,
            [Some(x), None, Some(v), None, reduce.map(|r| r.0)],
            op,
            reduce.map(|r| r.1),
        );
    }

    fn set_register(&mut self, index: usize, value: f32) {
        let op = Op {
            blocks: 0,
            ..self.op(FINALIZE_SET, Coef::constant(value), index as u32, false)
        };
        self.push(FINALIZE, [None; 5], op, (1, 1));
    }

    fn copy(&mut self, from: Vector, to: Vector) {
        self.flush();
        let (from, to) = (self.buffer(from).clone(), self.buffer(to).clone());
        let bytes = self.len as u64 * 4;
        self.encoder()
            .copy_buffer_to_buffer(&from, 0, &to, 0, bytes);
    }

    fn evaluate<F>(&mut self, closure: &mut F) -> Result<()>
    where
        F: for<'a> FnMut(&mut Self::Evaluation<'a>) -> Result<()>,
    {
        self.flush();
        closure(self.encoder())
    }

    fn submit(&mut self) {
        self.submit_recorded();
    }

    async fn read(&mut self) -> Result<[f32; register::HEADER]> {
        self.flush();
        let (registers, staging) = (self.registers.clone(), self.staging.clone());
        self.encoder().copy_buffer_to_buffer(
            &registers,
            0,
            &staging,
            0,
            register::HEADER as u64 * 4,
        );
        self.submit_recorded();
        let (sender, receiver) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send(result);
        });
        #[cfg(not(target_arch = "wasm32"))]
        crate::context::wait_for_submitted_work(self.gpu.device()).map_err(|e| Error::ReadBack(e.to_string()))?;
        receiver
            .await
            .map_err(|_| {
                Error::ReadBack("the device was lost before the registers were mapped".into())
            })?
            .map_err(|e| Error::ReadBack(e.to_string()))?;
        let values = {
            let mapped = staging
                .get_mapped_range(..)
                .map_err(|e| Error::ReadBack(e.to_string()))?;
            let all: &[f32] = bytemuck::cast_slice(&mapped);
            std::array::from_fn(|k| all[k])
        };
        staging.unmap();
        Ok(values)
    }

    async fn read_vector(&mut self, v: Vector) -> Result<Vec<f32>> {
        self.read_buffer(v, self.len).await
    }

    async fn read_registers(&mut self) -> Result<Vec<f32>> {
        self.submit_recorded();
        let view = crate::optimizer::TensorView {
            buffer: self.registers.clone(),
            offset: 0,
            len: self.register_count,
            dtype: crate::storage::Dtype::F32,
        };
        Ok(crate::optimizer::read_views(&self.gpu, &[view])
            .await?
            .remove(0))
    }

    fn write_vector(&mut self, v: Vector, values: &[f32]) -> Result<()> {
        if values.len() != self.len {
            return Err(Error::SizeMismatch {
                what: "an L-BFGS vector".into(),
                expected: self.len,
                actual: values.len(),
            });
        }
        self.submit_recorded();
        self.gpu
            .queue()
            .write_buffer(self.buffer(v), 0, bytemuck::cast_slice(values));
        Ok(())
    }

    fn write_registers(&mut self, values: &[f32]) -> Result<()> {
        if values.len() != self.register_count {
            return Err(Error::SizeMismatch {
                what: "the L-BFGS registers".into(),
                expected: self.register_count,
                actual: values.len(),
            });
        }
        self.submit_recorded();
        self.gpu
            .queue()
            .write_buffer(&self.registers, 0, bytemuck::cast_slice(values));
        Ok(())
    }

    fn take_dispatches(&mut self) -> usize {
        std::mem::take(&mut self.dispatches)
    }
}
