//! The dispatcher: parameters, gradients and optimizer state in flat arenas, a GPU table of
//! the tensors, bind groups built once, and a step that records each rule's passes.
//!
//! Layout. Each parameter group's tensors are packed, in order, into arenas: one buffer for
//! params, one for grads and one per per-element state key (`exp_avg`, ...). Every tensor
//! starts at a 256-byte boundary so the user's kernels can bind it directly, or at a chunk
//! boundary (1,024 elements, one workgroup of an element pass) when its rule works per tensor,
//! so that no workgroup straddles two tensors. An arena holds at most one storage binding's
//! worth of elements (`max_storage_buffer_binding_size`); a tensor larger than that gets an
//! arena of its own, swept in several binding-sized windows.
//!
//! Two more buffers serve every group. *Tables* (read-only to the rules) holds the gradient
//! control block, each group's ring of step terms, the tensor table (offset, length and shape
//! of every tensor), the chunk map (chunk → tensor) and the tensor lists of per-tensor and
//! matrix dispatches. *Aux* (read-write) holds the reduction partials (one `vec4` per chunk),
//! per tensor four scalars and the rule's per-tensor state (Adafactor's factored moments), and
//! the scratch that batches of matrices share (Muon's Newton–Schulz iterates).
//!
//! A rule is a list of passes ([`rules::Pass`]), each with a scope: every element (one
//! dispatch per arena window, whatever the number of tensors in it), one workgroup per tensor,
//! batches of same-shape matrices, or once. The dispatch plan is built once: a step replays it,
//! with one uniform record per dispatch (its window, tensor list and the pass's own words).
//!
//! Per-step scalars (learning rate, ...) are computed on the CPU in f64 and written with
//! `queue.write_buffer` into a ring of uniform slots, one slot per recorded step, selected by
//! a dynamic offset: up to [`OptimizerOptions::steps_in_flight`] steps (default
//! [`SCALAR_RING_STEPS`]) may be recorded before the encoders holding them are submitted, and
//! recording one more is an error. A slot is freed when its step has run or its commands were
//! dropped (a callback on the pass tells). The step count lives on the GPU: the first pass of
//! every step advances it (or, with gradient conditioning, decides whether the step is
//! skipped), and the rules read the terms that depend on t (bias corrections) from their
//! group's ring by that count. So a step that never reaches the GPU shifts nothing.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::checkpoint::{self, Checkpoint, CounterRecord, GroupRecord};
use crate::context::{GpuContext, PipelineKey};
use crate::error::{Error, Result};
use crate::gradients::{
    Control, GradientOptions, GradientPass, GradientWindow, StepCounters, StepTermsTarget, CONTROL_ERROR_OFFSET, CONTROL_SIZE,
};
use crate::params::{check_groups, CollectionTag, ParamGroup, Parameters, TensorId};
use crate::storage::{typed_source, Dtype, Precision, TypedBuffer, INT8_BLOCK, INT8_MIN_ELEMENTS};
use crate::rules::{
    self, matrix_dims, Kernel, Scope, StateSlot, StepTerms, TensorSlot, TermsMemo, UpdateRule, CHUNK_ELEMENTS,
    ELEMENTS_PER_INVOCATION, FIRST_STATE_BINDING, SCALARS_BYTES, WORKGROUP_SIZE,
};

/// Default number of steps that can be recorded into not-yet-submitted encoders, each with its
/// own scalars ([`OptimizerOptions::steps_in_flight`]).
pub const SCALAR_RING_STEPS: u64 = 64;

const TERMS_SIZE: u64 = std::mem::size_of::<StepTerms>() as u64;

/// Default entries of each group's ring of step terms ([`OptimizerOptions::step_terms_history`]):
/// at most this many steps may be skipped between two reads of [`Optimizer::counters`], and
/// with gradient presence tracked a tensor may miss at most this many steps less
/// [`OptimizerOptions::steps_in_flight`].
pub const STEP_TERMS_RING: u64 = 4096;

/// The binding of the control block as a uniform (`control` in `shaders/common.wgsl`), after
/// the per-element state arrays' bindings.
const CONTROL_BINDING: u32 = 15;

/// Storage bindings every rule's passes use besides their per-element state: tables, param,
/// grad, aux.
const FIXED_STORAGE_BINDINGS: u32 = 4;

/// Writes the terms of a rule's `steps` into a ring's `entries` (by step, modulo their
/// number), computed on `memo`.
fn ring_entries(entries: &mut [StepTerms], rule: &dyn UpdateRule, steps: std::ops::Range<u64>, memo: &mut TermsMemo) {
    let len = entries.len() as u64;
    for step in steps {
        entries[(step % len) as usize] = rule.step_terms(step, memo);
    }
}

/// The gradient presence flags start at a multiple of this many bytes of the tables buffer
/// (WebGPU's storage offset alignment), so a user's kernel can bind them.
const PRESENCE_ALIGN_BYTES: u64 = 256;

/// The terms ring word of a tensor whose rule counts steps per group (`NO_RING` in
/// `shaders/gradients.wgsl`).
const NO_RING: u32 = u32::MAX;

/// Entries of each group's ring of step terms: the option, checked.
fn terms_ring_entries(options: &OptimizerOptions, steps_in_flight: u64) -> Result<u64> {
    let entries = options.step_terms_history.unwrap_or(STEP_TERMS_RING);
    if entries <= steps_in_flight || entries > 1 << 24 {
        return Err(Error::Config(format!(
            "step_terms_history = {entries}: it must exceed steps_in_flight ({steps_in_flight}) and be at most 2^24"
        )));
    }
    Ok(entries)
}

/// Tuning knobs; the defaults follow the device's limits.
#[derive(Clone, Debug, Default)]
pub struct OptimizerOptions {
    /// Largest arena (and window), in elements. Default: what one storage binding holds.
    pub max_arena_elements: Option<usize>,
    /// Workgroups per grid dimension before a window's grid becomes 2-D. Default: the device's
    /// `max_compute_workgroups_per_dimension`.
    pub max_workgroups_per_dimension: Option<u32>,
    /// Steps that may be recorded before the encoders holding them are submitted (each keeps
    /// its own scalars in a ring of uniform slots). Default: [`SCALAR_RING_STEPS`]. Recording
    /// many steps into one submission (e.g. 1,000 steps of a small problem) needs as many.
    pub steps_in_flight: Option<u64>,
    /// Loss-scale unscaling, value and norm clipping, skipping non-finite steps: done on the
    /// GPU before each step (see [`crate::gradients`]).
    pub gradients: GradientOptions,
    /// Tracks, per tensor, whether it has a gradient this step, as torch tells a `grad` of
    /// None from a tensor: a tensor without one is skipped (parameter and state untouched) and,
    /// for rules that count steps per tensor as torch's `state['step']`, its step count does
    /// not advance. Set by [`Optimizer::write_grad`], [`Optimizer::set_gradient_present`], the
    /// user's kernels through [`Optimizer::gradient_presence_view`], and cleared by
    /// [`Optimizer::zero_grad_set_to_none`]. Every tensor then starts at a 1,024-element
    /// chunk, and each step has one more dispatch. Default: off (every tensor always steps).
    pub gradient_presence: bool,
    /// Entries of each group's ring of step terms. Default: [`STEP_TERMS_RING`]. With
    /// gradient presence tracked, a tensor whose gradient is absent for longer than this
    /// (less [`OptimizerOptions::steps_in_flight`]) cannot resume from the terms of its own
    /// step: it is left as it is and [`Optimizer::counters`] reports
    /// [`Error::StepTermsLost`]. Each entry is 16 bytes per group.
    pub step_terms_history: Option<u64>,
    /// The storage types of parameters, gradients and optimizer state (see
    /// [`crate::storage`]). Default: all f32.
    pub precision: Precision,
}

/// Where a tensor lives on the GPU: a range of a storage buffer.
///
/// `offset` is 256-byte aligned for parameters, gradients and per-element state, so
/// `binding()` can be used in the user's own bind groups (forward and backward kernels reading
/// parameters and writing gradients in place). Per-tensor state (Adafactor's `row_var`) lives
/// in the auxiliary buffer at 16-byte alignment: read it, do not bind it.
#[derive(Clone, Debug)]
pub struct TensorView {
    /// The buffer holding the tensor (an arena, or the auxiliary buffer).
    pub buffer: wgpu::Buffer,
    /// Byte offset of the first element.
    pub offset: u64,
    /// Number of elements.
    pub len: usize,
    /// The element type (f16 and bf16 packed two to a `u32`; see [`crate::storage`]).
    pub dtype: Dtype,
}

impl TensorView {
    /// Its size in bytes (16-bit types: whole `u32` words).
    pub fn byte_size(&self) -> u64 {
        self.dtype.byte_len(self.len)
    }

    /// A binding resource covering exactly this tensor.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: NonZeroU64::new(self.byte_size()),
        })
    }

    /// A bind group of `views` at bindings 0, 1, 2, ... in order, each covering exactly its
    /// tensor: what a user's kernel reading parameters and writing gradients binds.
    ///
    /// ```no_run
    /// # fn backward(opt: &wgpu_optim::Optimizer, w: wgpu_optim::TensorId, pipeline: &wgpu::ComputePipeline) -> wgpu_optim::Result<()> {
    /// use wgpu_optim::TensorView;
    /// let layout = pipeline.get_bind_group_layout(0);
    /// let bind_group = TensorView::bind_group(opt.gpu().device(), &layout, &[&opt.param(w)?, &opt.grad(w)?]);
    /// # Ok(()) }
    /// ```
    pub fn bind_group(device: &wgpu::Device, layout: &wgpu::BindGroupLayout, views: &[&TensorView]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> =
            views.iter().enumerate().map(|(k, view)| wgpu::BindGroupEntry { binding: k as u32, resource: view.binding() }).collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("wgpu-optim tensor views"), layout, entries: &entries })
    }
}

/// The GPU memory of an optimizer ([`Optimizer::memory`]): every buffer's bytes, padding
/// included, by role (`param`, `grad`, `exp_avg`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// Parameters (elements of all tensors, without padding).
    pub parameters: u64,
    /// The buffers of each role, summed over arenas.
    pub buffers: Vec<BufferMemory>,
}

/// The bytes of one role's buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferMemory {
    /// `param` (what the model reads), `master param`, `grad`, a state key, or the
    /// optimizer's own bookkeeping.
    pub role: String,
    /// The element type (None for the optimizer's bookkeeping buffers).
    pub dtype: Option<Dtype>,
    /// Bytes, padding included.
    pub bytes: u64,
}

impl MemoryReport {
    /// All bytes.
    pub fn total_bytes(&self) -> u64 {
        self.buffers.iter().map(|b| b.bytes).sum()
    }

    /// All bytes per parameter.
    pub fn bytes_per_parameter(&self) -> f64 {
        self.total_bytes() as f64 / self.parameters.max(1) as f64
    }

    /// The bytes per parameter of the buffers whose role is not `param`, `master param`,
    /// `grad` or bookkeeping: the optimizer's state.
    pub fn state_bytes_per_parameter(&self) -> f64 {
        let state: u64 =
            self.buffers.iter().filter(|b| b.dtype.is_some() && !["param", "master param", "grad"].contains(&b.role.as_str())).map(|b| b.bytes).sum();
        state as f64 / self.parameters.max(1) as f64
    }
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<40} {:>6} {:>14} {:>10}", "buffer", "type", "bytes", "B/param")?;
        let per = |bytes: u64| bytes as f64 / self.parameters.max(1) as f64;
        for b in &self.buffers {
            let dtype = b.dtype.map_or("-", Dtype::name);
            writeln!(f, "{:<40} {:>6} {:>14} {:>10.3}", b.role, dtype, b.bytes, per(b.bytes))?;
        }
        write!(f, "{:<40} {:>6} {:>14} {:>10.3}  ({} parameters)", "total", "", self.total_bytes(), self.bytes_per_parameter(), self.parameters)
    }
}

/// How the tensors were laid out, for inspection and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaInfo {
    /// The parameter group whose tensors it holds.
    pub group: usize,
    /// Elements, padding included.
    pub len: usize,
    /// Its tensors, in layout order.
    pub tensors: Vec<TensorId>,
    /// Windows (dispatches of each element pass) of this arena.
    pub windows: usize,
}

#[derive(Debug)]
struct TensorEntry {
    name: String,
    shape: Vec<usize>,
    len: usize,
    group: usize,
    arena: usize,
    /// Element offset inside the arena.
    offset: usize,
    /// Element offset of its aux region (four scalars, then its per-tensor state).
    aux: Option<usize>,
    /// Element offset of its sparse gradient's row mask in aux.
    row_mask: Option<usize>,
}

struct Window {
    bind_group: usize,
    grid: (u32, u32),
    /// Element range in the arena.
    start: usize,
    len: usize,
}

struct Arena {
    group: usize,
    len: usize,
    tensors: Vec<TensorId>,
    param: wgpu::Buffer,
    grad: wgpu::Buffer,
    state: Vec<(&'static str, wgpu::Buffer)>,
    /// With master weights: the rounded copy of `param` that the model reads.
    model: Option<wgpu::Buffer>,
    windows: Vec<Window>,
}

/// Where int8 state's absmax words and the f32 state of tensors kept in f32 lie in the
/// `quant` buffer (shaders/int8.wgsl): per state array s and rotation r (0, 1), one word per
/// block of 256 elements of every chunked arena, at `(s*2 + r)*blocks + block`; then each kept
/// tensor's f32 state, its state arrays one after another.
struct QuantLayout {
    /// Per tensor: the first word of its f32 state when it is kept in f32.
    kept: Vec<Option<usize>>,
    /// Blocks of all chunked arenas (`control.chunks` × 4).
    blocks: usize,
    /// Words of the buffer.
    words: usize,
}

impl QuantLayout {
    fn new(tensors: &[TensorEntry], groups: &[ParamGroup], plan: &crate::layout::Plan, precision: &Precision) -> Self {
        if precision.state != Dtype::Int8 {
            return QuantLayout { kept: vec![None; tensors.len()], blocks: 0, words: 4 };
        }
        let slots = groups.iter().map(|g| g.rule.state_slots().len()).max().unwrap_or(0);
        let blocks = plan.total_chunks * (CHUNK_ELEMENTS as usize / INT8_BLOCK);
        let mut at = slots * 2 * blocks;
        let kept = tensors
            .iter()
            .map(|t| {
                (t.len < INT8_MIN_ELEMENTS).then(|| {
                    let first = at;
                    at += groups[t.group].rule.state_slots().len() * t.len.next_multiple_of(4);
                    first
                })
            })
            .collect();
        QuantLayout { kept, blocks, words: at.max(4) }
    }

    fn absmax_word(&self, slot: usize, rotation: usize, block: usize) -> usize {
        (slot * 2 + rotation) * self.blocks + block
    }

    /// The buffer before the first step: each quantized block's absmax (rotation 0, which
    /// step 1 reads) is its state's initial magnitude, and kept tensors hold their initial state.
    fn initial_words(&self, tensors: &[TensorEntry], groups: &[ParamGroup], first_chunks: &[usize]) -> Vec<u32> {
        let mut words = vec![0u32; self.words];
        for (i, t) in tensors.iter().enumerate() {
            let slots = groups[t.group].rule.state_slots();
            match self.kept[i] {
                Some(at) => {
                    for (s, slot) in slots.iter().enumerate() {
                        let start = at + s * t.len.next_multiple_of(4);
                        words[start..start + t.len].fill(slot.init.to_bits());
                    }
                }
                None => {
                    let first_block = first_chunks[i] * (CHUNK_ELEMENTS as usize / INT8_BLOCK);
                    for (s, slot) in slots.iter().enumerate() {
                        for b in 0..t.len.div_ceil(INT8_BLOCK) {
                            words[self.absmax_word(s, 0, first_block + b)] = slot.init.abs().to_bits();
                        }
                    }
                }
            }
        }
        words
    }
}

/// `kept_state` of a tensor whose state is quantized (or not int8).
const NOT_KEPT: u32 = u32::MAX;

struct Group {
    rule: Box<dyn UpdateRule>,
    tensors: Vec<TensorId>,
    slots: Vec<StateSlot>,
    memo: TermsMemo,
    /// Byte offset of its ring of step terms in the tables buffer (read by the GPU's step count).
    terms_ring: u64,
    /// Its gradients are row-sparse (see [`rules::Kernel::sparse_rows`]).
    sparse: bool,
    /// Whether the parameters hold the training point (rules with a mode switch).
    train_mode: bool,
    /// The dispatches of its mode switch: toward training, toward evaluation.
    switch: Option<[Vec<Command>; 2]>,
    /// Its pipelines are `pipelines[first_pipeline..]`, one per pass of
    /// [`Kernel::passes_and_switches`].
    first_pipeline: usize,
    /// The applied steps when the group was added ([`Optimizer::add_param_group`]; 0 for the
    /// groups built with the optimizer): its own step count is the GPU's less this.
    step_offset: u64,
}

/// One recorded dispatch of the plan.
struct Command {
    group: usize,
    /// Its pass in the rule's [`Kernel::passes_and_switches`].
    pass: usize,
    pipeline: usize,
    bind_group: usize,
    record_offset: u32,
    grid: (u32, u32, u32),
}

/// The pipelines of a rule's passes ([`Kernel::passes_and_switches`]), from the context's cache.
async fn kernel_pipelines(
    gpu: &GpuContext,
    kernel: &Kernel,
    slots: &[StateSlot],
    conditioned: bool,
    presence: bool,
    precision: &Precision,
) -> Result<Vec<wgpu::ComputePipeline>> {
    let mut flags = kernel.flags.clone();
    flags.push(("conditioned", conditioned));
    flags.push(("gradient_presence", presence));
    flags.push(("cpu_adapter", gpu.cpu_kernels()));
    let int8 = precision.state == Dtype::Int8;
    let layout = kernel_layout(gpu.device(), kernel.label, kernel.state_bindings.len(), precision.master_weights, int8);
    let source = kernel_source(kernel, slots, precision, gpu.native_f16())?;
    let mut constants: Vec<(&'static str, u64)> = flags.iter().map(|&(name, on)| (name, f64::from(u8::from(on)).to_bits())).collect();
    if precision.is_stochastic() {
        constants.push(("rounding_seed", f64::from(precision.seed()).to_bits()));
    }
    let mut pipelines = Vec::new();
    for (p, pass) in kernel.passes_and_switches().enumerate() {
        let mut constants = constants.clone();
        if int8 {
            // The first pass is the absmax phase (see `group_kernel`).
            constants.push(("quantize_phase", f64::from(u8::from(p == 0)).to_bits()));
        }
        let key = PipelineKey { label: kernel.label, entry: pass.entry, constants };
        pipelines.push(gpu.pipeline(key, &source, &layout).await?);
    }
    Ok(pipelines)
}

/// A rule's WGSL with its buffers in the storage types of `precision` (the rule's own source
/// when everything is f32).
fn kernel_source(kernel: &Kernel, slots: &[StateSlot], precision: &Precision, native_f16: bool) -> Result<String> {
    if precision.is_f32() {
        return Ok(kernel.wgsl());
    }
    let mut buffers = vec![
        TypedBuffer { name: "param", dtype: precision.updated_params(), hash_buffer: 0, int8: None },
        TypedBuffer { name: "grad", dtype: precision.grads, hash_buffer: 0, int8: None },
    ];
    for (k, name) in kernel.state_bindings.iter().enumerate() {
        // An int8 array's absmax slot is its index among the configuration's state arrays
        // (arrays the configuration does not keep are never touched).
        let int8 = (precision.state == Dtype::Int8).then(|| match slots.iter().position(|slot| slot.key == *name) {
            Some(at) => (at as u32, slots[at].nonnegative),
            None => (0, false),
        });
        buffers.push(TypedBuffer { name, dtype: precision.state, hash_buffer: 1 + k as u32, int8 });
    }
    let model = precision.master_weights.then_some((precision.params, MODEL_BINDING));
    typed_source(&kernel.wgsl(), &buffers, model, precision.rounding, native_f16)
}

/// A group's kernel under `precision`: with int8 state, the rule's one pass runs twice, first
/// as the absmax phase, then clears the scales it read (see shaders/int8.wgsl).
fn group_kernel(rule: &dyn UpdateRule, precision: &Precision) -> Kernel {
    let mut kernel = rule.kernel();
    if precision.state == Dtype::Int8 {
        kernel.passes.insert(0, kernel.passes[0].clone());
        kernel.passes.push(rules::Pass::new("int8_clear", Scope::Elements));
    }
    kernel
}

/// Rejects a storage type a rule's kernel cannot keep yet, with the reason.
fn check_precision(rule: &dyn UpdateRule, kernel: &Kernel, precision: &Precision, presence: bool) -> Result<()> {
    if precision.is_f32() {
        return Ok(());
    }
    if precision.state == Dtype::Int8 {
        let why = if !rule.kernel().is_element_wise() {
            Some("its passes work per tensor or per matrix")
        } else if kernel.mode_switch.is_some() {
            Some("it switches between training and evaluation parameters")
        } else if presence {
            Some("gradient presence is tracked (a tensor that sits out a step would lose its block scales)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::Config(format!("{} cannot keep int8 (8-bit blockwise) state yet: {why}", rule.name())));
        }
    }
    if kernel.has_matrix_passes() {
        return Err(Error::Config(format!(
            "{} runs matrix passes, which keep f32 storage only for now (precision {precision:?} asked)",
            rule.name()
        )));
    }
    if kernel.sparse_rows && precision.grads != Dtype::F32 {
        return Err(Error::Config(format!("{} takes row-sparse gradients, which are f32 only", rule.name())));
    }
    Ok(())
}

/// The binding of the parameters' rounded copy, with master weights (`model_param`).
const MODEL_BINDING: u32 = 16;
/// The binding of int8 state's block scales and kept f32 state (`quant`, shaders/int8.wgsl).
const QUANT_BINDING: u32 = 17;

/// Mirrors `struct Dispatch` in `shaders/common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct DispatchRecord {
    first_chunk: u32,
    tensors: u32,
    tensor_count: u32,
    terms: u32,
    table: u32,
    chunk_map: u32,
    chunks: u32,
    /// The GPU's step count when the group was added (`group_step()` in the kernels).
    step_offset: u32,
    args: [u32; 8],
}

/// Mirrors `struct Tensor` in `shaders/common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct TableEntry {
    offset: u32,
    len: u32,
    rows: u32,
    cols: u32,
    matrices: u32,
    dims: u32,
    aux: u32,
    scratch: u32,
    first_chunk: u32,
    row_mask: u32,
    /// Int8 state: the `quant` word of its f32 state when kept in f32 (else `NOT_KEPT`).
    kept_state: u32,
}

/// A GPU optimizer over a set of parameter groups, each with its own update rule.
///
/// ```no_run
/// use wgpu_optim::{rules::AdamW, BackendChoice, GpuContext, Optimizer, ParamGroup, Parameters};
/// let gpu = GpuContext::new(BackendChoice::Auto)?;
/// let mut params = Parameters::new();
/// let w = params.add("w", &[4, 4], vec![0.5; 16])?;
/// let b = params.zeros("b", &[4])?;
/// let mut opt = Optimizer::new(&gpu, params, vec![
///     ParamGroup::new(AdamW::default(), [w]),
///     ParamGroup::new(AdamW { weight_decay: 0.0, ..AdamW::default() }, [b]),
/// ])?;
/// // Your backward kernel writes into opt.grad(w)?.binding(); here we upload from the CPU.
/// opt.write_grad(w, &[0.1; 16])?;
/// opt.write_grad(b, &[0.1; 4])?;
/// let mut encoder = gpu.device().create_command_encoder(&Default::default());
/// let dispatches = opt.step(&mut encoder)?;
/// gpu.queue().submit([encoder.finish()]);
/// assert_eq!(dispatches, opt.dispatches_per_step());
/// let w_now = opt.read_param(w)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct Optimizer {
    gpu: GpuContext,
    /// The [`Parameters`] collection whose ids name this optimizer's tensors.
    tag: CollectionTag,
    tensors: Vec<TensorEntry>,
    by_name: HashMap<String, TensorId>,
    groups: Vec<Group>,
    arenas: Vec<Arena>,
    scalars: wgpu::Buffer,
    scalar_stride: u64,
    steps_in_flight: u64,
    steps_recorded: u64,
    /// The scalars of one recorded step, reused (no allocation per step).
    scalar_bytes: Vec<u8>,
    gradients: GradientOptions,
    /// The control block (offset 0), rings, tensor table, chunk map and tensor lists.
    tables: wgpu::Buffer,
    /// Reduction partials, per-tensor scalars and state, shared scratch.
    aux: wgpu::Buffer,
    pipelines: Vec<wgpu::ComputePipeline>,
    bind_groups: Vec<wgpu::BindGroup>,
    plan: Vec<Command>,
    /// The dispatch records (a mode switch's are rewritten with the rule's current weights).
    records: wgpu::Buffer,
    /// Gradient conditioning (when on) and the step counter: the passes before the rules'.
    before_step: GradientPass,
    /// Gradients are conditioned (or a rule reads their global norm): a pipeline constant.
    conditioned: bool,
    /// Per slot of the scalar ring: taken by a recorded step until its commands have run or
    /// were dropped unsubmitted.
    scalar_slots: Vec<Arc<AtomicBool>>,
    /// Recorded steps whose commands were dropped unsubmitted.
    dropped_steps: Arc<AtomicU64>,
    /// What it was built with (a group added later rebuilds it with the same options).
    options: OptimizerOptions,
    /// The GPU's counters as last read (the step count, when it lives on the GPU).
    known: Control,
    /// Entries of each group's ring of step terms.
    terms_ring: u64,
    /// The byte offset in the tables of the group table (per group: ring word, step offset).
    group_table: u64,
    /// Gradient presence: the byte offset in the tables of the per-tensor flags (then the
    /// missed steps, terms rings and step offsets), when tracked.
    presence: Option<u64>,
    /// The control block's layout words ([`Optimizer::with_layout`]).
    layout: Control,
    /// Int8 state: its block scales and kept f32 state (binding `QUANT_BINDING`), and where
    /// they lie.
    quant: Option<wgpu::Buffer>,
    quant_layout: QuantLayout,
    /// Per tensor: its first chunk (global; tensors of chunked arenas).
    first_chunks: Vec<usize>,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("rules", &self.groups.iter().map(|g| g.rule.name()).collect::<Vec<_>>())
            .field("tensors", &self.tensors.len())
            .field("arenas", &self.arenas.len())
            .field("dispatches_per_step", &self.dispatches_per_step())
            .finish()
    }
}

impl Optimizer {
    /// Builds the optimizer: validates the groups, uploads the parameters, creates state,
    /// pipelines and bind groups (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(gpu: &GpuContext, params: Parameters, groups: Vec<ParamGroup>) -> Result<Self> {
        Self::with_options(gpu, params, groups, OptimizerOptions::default())
    }

    /// [`Optimizer::new`] with explicit options (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(
        gpu: &GpuContext,
        params: Parameters,
        groups: Vec<ParamGroup>,
        options: OptimizerOptions,
    ) -> Result<Self> {
        pollster::block_on(Self::new_async(gpu, params, groups, options))
    }

    /// Builds the optimizer (async; the form to use on the web).
    pub async fn new_async(
        gpu: &GpuContext,
        params: Parameters,
        groups: Vec<ParamGroup>,
        options: OptimizerOptions,
    ) -> Result<Self> {
        check_groups(&params, &groups)?;
        options.gradients.validate()?;
        options.precision.validate()?;
        let precision = options.precision;
        let conditioned = options.gradients.is_active() || groups.iter().any(|g| g.rule.needs_grad_norm());
        crate::params::check_sparse_conditioning(&groups, conditioned)?;
        let device = gpu.device();
        let limits = device.limits();
        let presence = options.gradient_presence;
        let mut kernels: Vec<Kernel> = groups.iter().map(|g| group_kernel(g.rule.as_ref(), &precision)).collect();
        for (group, kernel) in groups.iter().zip(&mut kernels) {
            check_kernel(group.rule.as_ref(), kernel, &limits, &precision)?;
            check_precision(group.rule.as_ref(), kernel, &precision, presence)?;
            // With presence tracked, stochastic rounding or int8 state, every workgroup finds
            // its tensor in the chunk map.
            kernel.per_tensor |= presence || precision.is_stochastic() || precision.state == Dtype::Int8;
        }
        let steps_in_flight = options.steps_in_flight.unwrap_or(SCALAR_RING_STEPS).max(1);
        let terms_ring = terms_ring_entries(&options, steps_in_flight)?;
        let tag = params.tag();
        let specs = params.into_specs();
        let plan = crate::layout::plan_layout(&specs, &groups, &kernels, &limits, options.max_arena_elements, precision.smallest_element())?;
        let max_grid = options
            .max_workgroups_per_dimension
            .unwrap_or(limits.max_compute_workgroups_per_dimension)
            .clamp(1, limits.max_compute_workgroups_per_dimension);

        let tensors: Vec<TensorEntry> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| TensorEntry {
                name: spec.name.clone(),
                shape: spec.shape.clone(),
                len: spec.data.len(),
                group: plan.arenas[plan.placement[i].0].0,
                arena: plan.placement[i].0,
                offset: plan.placement[i].1,
                aux: plan.aux_region[i],
                row_mask: plan.row_mask[i],
            })
            .collect();

        // The tables: control block, rings, tensor table, chunk map, tensor lists (words after
        // the control block).
        let mut words: Vec<u32> = Vec::new();
        if precision.state == Dtype::Int8 {
            // The quantization maps first, at words 0..1024 (shaders/int8.wgsl).
            for nonnegative in [false, true] {
                let map = crate::storage::int8_map(nonnegative);
                words.extend(map.iter().map(|x| x.to_bits()));
                words.extend(crate::storage::int8_midpoints(&map).iter().map(|x| x.to_bits()));
            }
        }
        let quant = QuantLayout::new(&tensors, &groups, &plan, &precision);
        let mut terms_rings = Vec::new();
        for _ in &groups {
            let at = words.len();
            words.resize(at + (terms_ring * TERMS_SIZE / 4) as usize, 0);
            terms_rings.push(CONTROL_SIZE + at as u64 * 4);
        }
        // Per group: its ring's word and its step offset, for the pass that publishes each
        // step's terms into the scalars (see `publish_terms` in shaders/gradients.wgsl).
        let group_table = words.len();
        for &ring in &terms_rings {
            words.extend([((ring - CONTROL_SIZE) / 4) as u32, 0]);
        }
        // Each tensor's first chunk (global index); meaningful for per-tensor rules' arenas.
        let first_chunks: Vec<usize> = tensors.iter().map(|t| plan.arenas[t.arena].3 + t.offset / CHUNK_ELEMENTS as usize).collect();
        let table = words.len();
        for (i, t) in tensors.iter().enumerate() {
            let (rows, cols, matrices) = matrix_dims(&t.shape);
            let first_chunk = first_chunks[i];
            let entry = TableEntry {
                offset: t.offset as u32,
                len: t.len as u32,
                rows: rows as u32,
                cols: cols as u32,
                matrices: matrices as u32,
                dims: t.shape.len() as u32,
                aux: t.aux.unwrap_or(0) as u32,
                scratch: plan.scratch[i] as u32,
                first_chunk: first_chunk as u32,
                row_mask: plan.row_mask[i].unwrap_or(0) as u32,
                kept_state: quant.kept[i].map_or(NOT_KEPT, |at| at as u32),
            };
            words.extend_from_slice(bytemuck::cast_slice(&[entry]));
        }
        let chunk_map = words.len();
        words.resize(chunk_map + plan.total_chunks, 0);
        for (id, entry) in tensors.iter().enumerate().filter(|(_, t)| kernels[t.group].per_tensor) {
            let first = chunk_map + first_chunks[id];
            words[first..first + entry.len.div_ceil(CHUNK_ELEMENTS as usize)].fill(id as u32);
        }
        if presence {
            // Each chunk's lag (`element_lag` in shaders/common.wgsl), written every step.
            words.resize(chunk_map + 2 * plan.total_chunks, 0);
        }
        let mut list = |ids: &[TensorId]| {
            let at = words.len();
            words.extend(ids.iter().map(|id| id.0 as u32));
            at
        };
        let arena_lists: Vec<usize> = plan.arenas.iter().map(|(_, ids, _, _)| list(ids)).collect();
        let group_lists: Vec<usize> = groups.iter().map(|g| list(&g.tensors)).collect();
        let batch_lists: Vec<Vec<usize>> =
            plan.batches.iter().map(|batches| batches.iter().map(|(_, ids)| list(ids)).collect()).collect();
        // Gradient presence: per tensor, has a gradient (1 until told otherwise), steps
        // missed, its group's terms ring (NO_RING when its rule counts steps per group) and
        // its group's step offset; the flags 256-byte aligned, so a user's kernel can bind them.
        let presence_word = presence.then(|| {
            let flags_byte = (CONTROL_SIZE + words.len() as u64 * 4).next_multiple_of(PRESENCE_ALIGN_BYTES);
            let at = ((flags_byte - CONTROL_SIZE) / 4) as usize;
            words.resize(at, 0);
            words.extend(std::iter::repeat_n(1, tensors.len()));
            words.extend(std::iter::repeat_n(0, tensors.len()));
            words.extend(tensors.iter().map(|t| {
                let counts_per_tensor = groups[t.group].rule.counts_steps_per_tensor();
                if counts_per_tensor { ((terms_rings[t.group] - CONTROL_SIZE) / 4) as u32 } else { NO_RING }
            }));
            words.extend(std::iter::repeat_n(0, tensors.len()));
            at
        });
        words.push(0); // never an empty array

        // The dispatch plan: one record per dispatch.
        let record_stride = 64u64.next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let mut records: Vec<DispatchRecord> = Vec::new();
        let mut commands: Vec<(usize, usize, usize, usize, (u32, u32, u32))> = Vec::new(); // group, pass, arena, window, grid
        let mut arena_windows: Vec<Vec<(usize, usize, (u32, u32))>> = vec![Vec::new(); plan.arenas.len()]; // (start, len, grid)
        for (a, (g, _, len, _)) in plan.arenas.iter().enumerate() {
            let capacity = plan.capacity[*g];
            arena_windows[a] = (0..*len)
                .step_by(capacity)
                .map(|start| {
                    let window_len = capacity.min(len - start);
                    (start, window_len, grid(window_len, max_grid))
                })
                .collect();
        }
        for (g, kernel) in kernels.iter().enumerate() {
            let base = DispatchRecord {
                terms: ((terms_rings[g] - CONTROL_SIZE) / 4) as u32,
                table: table as u32,
                chunk_map: chunk_map as u32,
                ..Default::default()
            };
            let group_arenas: Vec<usize> = (0..plan.arenas.len()).filter(|&a| plan.arenas[a].0 == g).collect();
            let mut push = |records: &mut Vec<DispatchRecord>, record: DispatchRecord, pass: usize, arena: usize, window: usize, grid: (u32, u32, u32)| {
                records.push(record);
                commands.push((g, pass, arena, window, grid));
            };
            if kernel.has_matrix_passes() {
                // Matrix passes share scratch between batches: each batch runs all passes.
                for ((arena, ids), &at) in plan.batches[g].iter().zip(&batch_lists[g]) {
                    let shape = &specs[ids[0].0].shape;
                    for (p, pass) in kernel.passes.iter().enumerate() {
                        let Scope::Matrices { grid } = pass.scope else { unreachable!("checked by check_kernel") };
                        let (x, y) = grid(shape);
                        let record = DispatchRecord { tensors: at as u32, tensor_count: ids.len() as u32, args: pass.args, ..base };
                        push(&mut records, record, p, *arena, 0, (x.max(1), y.max(1), ids.len() as u32));
                    }
                }
                continue;
            }
            // The mode switch's passes follow the step's (train() and eval() record them, step()
            // does not); see `Kernel::passes_and_switches`.
            for (p, pass) in kernel.passes_and_switches().enumerate() {
                match pass.scope {
                    Scope::Elements => {
                        for &a in &group_arenas {
                            for (w, &(start, len, (x, y))) in arena_windows[a].iter().enumerate() {
                                let chunk = CHUNK_ELEMENTS as usize;
                                let record = DispatchRecord {
                                    first_chunk: (plan.arenas[a].3 + start / chunk) as u32,
                                    chunks: len.div_ceil(chunk) as u32,
                                    args: pass.args,
                                    ..base
                                };
                                push(&mut records, record, p, a, w, (x, y, 1));
                            }
                        }
                    }
                    Scope::Tensors => {
                        for &a in &group_arenas {
                            let count = plan.arenas[a].1.len();
                            let x = count.min(max_grid as usize);
                            let record = DispatchRecord {
                                tensors: arena_lists[a] as u32,
                                tensor_count: count as u32,
                                args: pass.args,
                                ..base
                            };
                            push(&mut records, record, p, a, 0, (x as u32, count.div_ceil(x) as u32, 1));
                        }
                    }
                    Scope::Once => {
                        let record = DispatchRecord {
                            tensors: group_lists[g] as u32,
                            tensor_count: groups[g].tensors.len() as u32,
                            args: pass.args,
                            ..base
                        };
                        push(&mut records, record, p, group_arenas[0], 0, (1, 1, 1));
                    }
                    Scope::Matrices { .. } => unreachable!("handled above"),
                }
            }
        }

        // Each slot is bound as a uniform by the rules and as storage by the step pass.
        let slot_alignment = limits.min_uniform_buffer_offset_alignment.max(limits.min_storage_buffer_offset_alignment);
        let scalar_stride = (SCALARS_BYTES as u64).next_multiple_of(u64::from(slot_alignment));
        let mut control_values = Control::new(&options.gradients);
        control_values.terms_ring = terms_ring as u32;
        control_values.presence = presence_word.map_or(0, |at| at as u32);
        control_values.tensors = tensors.len() as u32;
        control_values.chunk_map = chunk_map as u32;
        control_values.chunks = plan.total_chunks as u32;

        // Pipelines: one per (group, pass); the cache shares them between groups and optimizers.
        let mut pipelines = Vec::new();
        let mut pipeline_of: HashMap<(usize, usize), usize> = HashMap::new();
        for (g, kernel) in kernels.iter().enumerate() {
            let slots = groups[g].rule.state_slots();
            for (p, pipeline) in kernel_pipelines(gpu, kernel, &slots, conditioned, presence, &precision).await?.into_iter().enumerate() {
                pipeline_of.insert((g, p), pipelines.len());
                pipelines.push(pipeline);
            }
        }

        let built = gpu
            .checked("allocating arenas and bind groups", || {
                use wgpu::util::DeviceExt;
                let scalars = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-optim step scalars"),
                    size: scalar_stride * groups.len() as u64 * steps_in_flight,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut table_bytes = bytemuck::bytes_of(&control_values).to_vec();
                table_bytes.extend_from_slice(bytemuck::cast_slice(&words));
                let tables = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("wgpu-optim tables"),
                    contents: &table_bytes,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                });
                let mut aux_values = vec![0.0f32; plan.aux_len.max(4)];
                for (t, spec) in tensors.iter().zip(&specs) {
                    if let Some(region) = t.aux {
                        let mut at = region + 4;
                        for slot in groups[t.group].rule.tensor_state(&spec.shape) {
                            aux_values[at..at + slot.len()].fill(slot.init);
                            at += slot.len();
                        }
                    }
                }
                let aux = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("wgpu-optim aux"),
                    contents: bytemuck::cast_slice(&aux_values),
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                });
                let quant_buffer = (precision.state == Dtype::Int8).then(|| {
                    let words = quant.initial_words(&tensors, &groups, &first_chunks);
                    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("wgpu-optim int8 scales"),
                        contents: bytemuck::cast_slice(&words),
                        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    })
                });
                let mut record_bytes = vec![0u8; (records.len().max(1) as u64 * record_stride) as usize];
                for (k, record) in records.iter().enumerate() {
                    let at = k * record_stride as usize;
                    record_bytes[at..at + 64].copy_from_slice(bytemuck::bytes_of(record));
                }
                let record_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("wgpu-optim dispatch records"),
                    contents: &record_bytes,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                });
                let unused_slot = |binding: usize| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(&format!("wgpu-optim unused state binding {binding}")),
                        size: 16,
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: false,
                    })
                };
                let max_bindings = kernels.iter().map(|k| k.state_bindings.len()).max().unwrap_or(0);
                let unused: Vec<wgpu::Buffer> = (0..max_bindings).map(unused_slot).collect();
                let mut bind_groups = Vec::new();
                let arenas: Vec<Arena> = plan
                    .arenas
                    .iter()
                    .enumerate()
                    .map(|(a, (g, ids, len, _))| {
                        let (g, len) = (*g, *len);
                        let group = &groups[g];
                        let slots = group.rule.state_slots();
                        let mut initial = vec![0.0f32; len];
                        for id in ids {
                            let t = &tensors[id.0];
                            initial[t.offset..t.offset + t.len].copy_from_slice(&specs[id.0].data);
                        }
                        let param = arena_buffer(device, "param", precision.updated_params(), len, Some(&initial));
                        let model = precision.master_weights.then(|| arena_buffer(device, "model param", precision.params, len, Some(&initial)));
                        let grad = arena_buffer(device, "grad", precision.grads, len, None);
                        let state: Vec<(&'static str, wgpu::Buffer)> = slots
                            .iter()
                            .map(|slot| {
                                let contents = if precision.state == Dtype::Int8 {
                                    // Every element's code of the initial value (its block's absmax).
                                    let map = crate::storage::int8_map(slot.nonnegative);
                                    let code = crate::storage::quantize_value(slot.init, slot.init.abs(), false, &crate::storage::int8_midpoints(&map));
                                    initial.fill(f32::from(code));
                                    Some(initial.as_slice())
                                } else {
                                    (slot.init != 0.0).then(|| {
                                        initial.fill(slot.init);
                                        initial.as_slice()
                                    })
                                };
                                (slot.key, arena_buffer(device, slot.key, precision.state, len, contents))
                            })
                            .collect();
                        let kernel = &kernels[g];
                        let layout = pipelines[pipeline_of[&(g, 0)]].get_bind_group_layout(0);
                        let windows = arena_windows[a]
                            .iter()
                            .map(|&(start, window_len, grid)| {
                                let range = |buffer, dtype: Dtype| wgpu::BufferBinding {
                                    buffer,
                                    offset: dtype.byte_len(start),
                                    size: NonZeroU64::new(dtype.byte_len(window_len)),
                                };
                                let uniform = |buffer, size| {
                                    wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer, offset: 0, size: NonZeroU64::new(size) })
                                };
                                let mut entries = vec![
                                    wgpu::BindGroupEntry { binding: 0, resource: uniform(&scalars, SCALARS_BYTES as u64) },
                                    wgpu::BindGroupEntry { binding: 1, resource: uniform(&record_buffer, 64) },
                                    wgpu::BindGroupEntry { binding: 2, resource: tables.as_entire_binding() },
                                    wgpu::BindGroupEntry { binding: CONTROL_BINDING, resource: uniform(&tables, CONTROL_SIZE) },
                                    wgpu::BindGroupEntry { binding: 3, resource: wgpu::BindingResource::Buffer(range(&param, precision.updated_params())) },
                                    wgpu::BindGroupEntry { binding: 4, resource: wgpu::BindingResource::Buffer(range(&grad, precision.grads)) },
                                    wgpu::BindGroupEntry { binding: 5, resource: aux.as_entire_binding() },
                                ];
                                if let Some(model) = &model {
                                    let resource = wgpu::BindingResource::Buffer(range(model, precision.params));
                                    entries.push(wgpu::BindGroupEntry { binding: MODEL_BINDING, resource });
                                }
                                if let Some(quant) = &quant_buffer {
                                    entries.push(wgpu::BindGroupEntry { binding: QUANT_BINDING, resource: quant.as_entire_binding() });
                                }
                                for (k, key) in kernel.state_bindings.iter().enumerate() {
                                    let resource = match state.iter().find(|(name, _)| name == key) {
                                        Some((_, buffer)) => wgpu::BindingResource::Buffer(range(buffer, precision.state)),
                                        None => unused[k].as_entire_binding(),
                                    };
                                    entries.push(wgpu::BindGroupEntry { binding: FIRST_STATE_BINDING + k as u32, resource });
                                }
                                bind_groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                                    label: Some(kernel.label),
                                    layout: &layout,
                                    entries: &entries,
                                }));
                                Window { bind_group: bind_groups.len() - 1, grid, start, len: window_len }
                            })
                            .collect();
                        Arena { group: g, len, tensors: ids.clone(), param, grad, state, model, windows }
                    })
                    .collect();
                (scalars, tables, aux, arenas, bind_groups, record_buffer, quant_buffer)
            })
            .await?;
        let (scalars, tables, aux, arenas, bind_groups, records_buffer, quant_buffer) = built;

        // Command k uses record k. A pass index past the rule's passes is a mode switch's:
        // toward training, then toward evaluation.
        let mut plan_commands = Vec::new();
        let mut switches: Vec<Option<[Vec<Command>; 2]>> =
            kernels.iter().map(|k| k.mode_switch.as_ref().map(|_| [Vec::new(), Vec::new()])).collect();
        for (k, &(g, p, a, w, grid)) in commands.iter().enumerate() {
            let command = Command {
                group: g,
                pass: p,
                pipeline: pipeline_of[&(g, p)],
                bind_group: arenas[a].windows[w].bind_group,
                record_offset: (k as u64 * record_stride) as u32,
                grid,
            };
            match p.checked_sub(kernels[g].passes.len()) {
                None => plan_commands.push(command),
                Some(direction) => switches[g].as_mut().expect("a group with a mode switch")[direction].push(command),
            }
        }

        let windows: Vec<GradientWindow> = arenas
            .iter()
            .zip(&plan.arenas)
            .flat_map(|(arena, (_, _, _, first_chunk))| {
                arena.windows.iter().map(move |w| GradientWindow {
                    buffer: arena.grad.clone(),
                    offset: precision.grads.byte_len(w.start),
                    size: precision.grads.byte_len(w.len),
                    grid: w.grid,
                    first_chunk: (first_chunk + w.start / CHUNK_ELEMENTS as usize) as u32,
                })
            })
            .collect();
        let terms = StepTermsTarget {
            scalars: &scalars,
            groups: groups.len() as u32,
            group_table: group_table as u32,
            slot_size: scalar_stride * groups.len() as u64,
            scalar_stride,
        };
        let before_step =
            GradientPass::new(gpu, &options.gradients, conditioned, presence, &tables, &terms, &windows, chunk_map as u32, precision.grads)
                .await?;

        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), TensorId(i, tag))).collect();
        let groups: Vec<Group> = groups
            .into_iter()
            .zip(terms_rings)
            .zip(switches)
            .zip(&kernels)
            .enumerate()
            .map(|(g, (((group, terms_ring), switch), kernel))| Group {
                slots: group.rule.state_slots(),
                sparse: kernel.sparse_rows,
                tensors: group.tensors,
                rule: group.rule,
                memo: TermsMemo::default(),
                terms_ring,
                train_mode: true,
                switch,
                first_pipeline: pipeline_of[&(g, 0)],
                step_offset: 0,
            })
            .collect();
        let group_count = groups.len() as u64;
        let mut optimizer = Optimizer {
            gpu: gpu.clone(),
            tag,
            tensors,
            by_name,
            groups,
            arenas,
            scalars,
            scalar_stride,
            steps_in_flight,
            steps_recorded: 0,
            scalar_bytes: vec![0; (scalar_stride * group_count) as usize],
            gradients: options.gradients.clone(),
            tables,
            aux,
            pipelines,
            bind_groups,
            plan: plan_commands,
            records: records_buffer,
            before_step,
            conditioned,
            scalar_slots: (0..steps_in_flight).map(|_| Arc::new(AtomicBool::new(false))).collect(),
            dropped_steps: Arc::new(AtomicU64::new(0)),
            options: options.clone(),
            known: control_values,
            terms_ring,
            group_table: CONTROL_SIZE + group_table as u64 * 4,
            presence: presence_word.map(|at| CONTROL_SIZE + at as u64 * 4),
            layout: control_values,
            quant: quant_buffer,
            quant_layout: quant,
            first_chunks,
        };
        optimizer.fill_terms_rings();
        Ok(optimizer)
    }

    /// Records one optimizer step (every group) into `encoder`, in a compute pass of its own;
    /// returns the number of dispatches recorded. The step's scalars (learning rate, ...) are
    /// written with `queue.write_buffer`, so they reach the GPU with the next `queue.submit`.
    ///
    /// The step count lives on the GPU and advances when the step runs: a step whose encoder
    /// is dropped unsubmitted changes nothing, and later steps keep their bias corrections.
    /// Up to [`OptimizerOptions::steps_in_flight`] steps may wait unsubmitted; recording one
    /// more is [`Error::StepsInFlight`] and records nothing. (A slot whose step was submitted
    /// but has not run yet is waited for on native; see [`Optimizer::submit_steps`].)
    pub fn step(&mut self, encoder: &mut wgpu::CommandEncoder) -> Result<usize> {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-optim step"),
            timestamp_writes: None,
        });
        self.step_in_pass(&mut pass)
    }

    /// Records one optimizer step into the caller's compute pass (e.g. after the backward
    /// kernels, or between timestamp writes); returns the number of dispatches recorded.
    /// The pass's bound pipeline and bind group 0 are changed. Errors as [`Optimizer::step`].
    pub fn step_in_pass(&mut self, pass: &mut wgpu::ComputePass<'_>) -> Result<usize> {
        let slot = self.take_scalar_slot()?;
        // Steps move the training point: a group left in eval mode goes back to it first.
        let switched = self.record_switch(pass, true);
        let ring_base = slot as u64 * self.scalar_stride * self.groups.len() as u64;
        self.steps_recorded += 1;
        // The GPU decides t; this is the largest t the step can have (every earlier recorded
        // step applied). Its terms go to the ring too, where the GPU finds them by t.
        let newest = self.newest_step();
        let bytes = &mut self.scalar_bytes;
        for (g, group) in self.groups.iter_mut().enumerate() {
            let step = newest - group.step_offset;
            let terms = group.rule.step_terms(step, &mut group.memo);
            let entry = group.terms_ring + (step % self.terms_ring) * TERMS_SIZE;
            self.gpu.queue().write_buffer(&self.tables, entry, bytemuck::bytes_of(&terms));
            let scalars = group.rule.step_scalars(terms);
            let at = g * self.scalar_stride as usize;
            bytes[at..at + SCALARS_BYTES].copy_from_slice(bytemuck::bytes_of(&scalars));
        }
        self.gpu.queue().write_buffer(&self.scalars, ring_base, bytes);
        // The slot is free again once the step has run on the GPU, or when its commands are
        // dropped unsubmitted (the callback is then dropped uncalled, and so is the release).
        let release = SlotRelease { slot: self.scalar_slots[slot].clone(), dropped: self.dropped_steps.clone(), ran: false };
        pass.on_submitted_work_done(move || release.ran());

        let mut dispatches = switched + self.before_step.record(pass, ring_base as u32);
        let mut bound = usize::MAX;
        for command in &self.plan {
            if command.pipeline != bound {
                pass.set_pipeline(&self.pipelines[command.pipeline]);
                bound = command.pipeline;
            }
            let scalars = (ring_base + command.group as u64 * self.scalar_stride) as u32;
            pass.set_bind_group(0, &self.bind_groups[command.bind_group], &[scalars, command.record_offset]);
            pass.dispatch_workgroups(command.grid.0, command.grid.1, command.grid.2);
            dispatches += 1;
        }
        Ok(dispatches)
    }

    /// The t of the newest recorded step if every recorded step not yet known to be skipped or
    /// dropped applies.
    fn newest_step(&self) -> u64 {
        self.steps_recorded - u64::from(self.known.skipped) - self.dropped_steps.load(Ordering::Acquire)
    }

    /// The scalar ring's slot for the next step, taken; waits on native for a submitted step
    /// still holding it to run. An error when it belongs to a step not yet submitted.
    fn take_scalar_slot(&mut self) -> Result<usize> {
        let slot = (self.steps_recorded % self.steps_in_flight) as usize;
        let taken = &self.scalar_slots[slot];
        if taken.load(Ordering::Acquire) {
            // Runs the callbacks of every finished submission; a slot still taken then
            // belongs to a step that was never submitted.
            #[cfg(not(target_arch = "wasm32"))]
            crate::context::wait_for_submitted_work(self.gpu.device()).map_err(|e| Error::Gpu {
                context: "waiting for a submitted step".into(),
                message: e.to_string(),
            })?;
            if taken.load(Ordering::Acquire) {
                return Err(Error::StepsInFlight { in_flight: self.steps_in_flight });
            }
        }
        taken.store(true, Ordering::Release);
        Ok(slot)
    }

    /// Records setting every gradient to zero into `encoder` (torch's
    /// `zero_grad(set_to_none=False)`): one buffer clear per arena, and for rules with sparse
    /// gradients every row mask cleared (no row touched). [`Optimizer::step`] reads the
    /// gradients and leaves them as they were, so kernels that accumulate gradients over
    /// micro-batches (`grad += ...`) start each step from here.
    pub fn zero_grad(&self, encoder: &mut wgpu::CommandEncoder) {
        for arena in &self.arenas {
            encoder.clear_buffer(&arena.grad, 0, None);
        }
        for entry in self.tensors.iter().filter(|t| t.row_mask.is_some()) {
            let at = entry.row_mask.expect("filtered") as u64 * 4;
            let rows = rules::sparse_rows(&entry.shape).0 as u64;
            encoder.clear_buffer(&self.aux, at, Some(rows * 4));
        }
    }

    /// Records torch's `zero_grad()` (its default `set_to_none=True`) into `encoder`: every
    /// gradient is zeroed as by [`Optimizer::zero_grad`] and marked absent, so a tensor that no
    /// kernel gives a gradient before the next step is skipped as torch skips a `grad` of None.
    /// Needs [`OptimizerOptions::gradient_presence`].
    ///
    /// ```no_run
    /// # use wgpu_optim::{rules::Adam, BackendChoice, GpuContext, Optimizer, OptimizerOptions, ParamGroup, Parameters};
    /// # let gpu = GpuContext::new(BackendChoice::Auto)?;
    /// let mut params = Parameters::new();
    /// let encoder_w = params.add("encoder.w", &[4], vec![0.5; 4])?;
    /// let head_w = params.add("head.w", &[4], vec![0.5; 4])?;
    /// let options = OptimizerOptions { gradient_presence: true, ..Default::default() };
    /// let mut opt = Optimizer::with_options(&gpu, params, vec![ParamGroup::new(Adam::default(), [encoder_w, head_w])], options)?;
    /// let mut encoder = gpu.device().create_command_encoder(&Default::default());
    /// opt.zero_grad_set_to_none(&mut encoder)?;
    /// gpu.queue().submit([encoder.finish()]);
    /// opt.write_grad(head_w, &[0.1; 4])?; // only the head has a gradient this step
    /// opt.step_and_submit()?;
    /// assert_eq!(opt.read_tensor_steps()?, vec![0, 1]); // torch's state['step'] of each tensor
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn zero_grad_set_to_none(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let flags = self.presence_flags()?;
        self.zero_grad(encoder);
        encoder.clear_buffer(&flags.buffer, flags.offset, Some(flags.byte_size()));
        Ok(())
    }

    /// Marks whether a tensor has a gradient for the next step (uploaded with the next
    /// submission). [`Optimizer::write_grad`] marks it present itself. Needs
    /// [`OptimizerOptions::gradient_presence`].
    pub fn set_gradient_present(&self, id: TensorId, present: bool) -> Result<()> {
        let flags = self.presence_flags()?;
        self.entry(id)?;
        self.gpu.queue().write_buffer(&flags.buffer, flags.offset + id.index() as u64 * 4, &u32::from(present).to_le_bytes());
        Ok(())
    }

    /// The gradient presence flags on the GPU, for the user's kernels: one `u32` per tensor,
    /// indexed by [`TensorId::index`], nonzero when the tensor has a gradient this step (a
    /// backward kernel sets its tensors' flags to 1 after [`Optimizer::zero_grad_set_to_none`]
    /// cleared them). `len` counts words; the offset is 256-byte aligned. Needs
    /// [`OptimizerOptions::gradient_presence`].
    pub fn gradient_presence_view(&self) -> Result<TensorView> {
        self.presence_flags()
    }

    fn presence_flags(&self) -> Result<TensorView> {
        let offset = self.presence.ok_or_else(|| {
            Error::Config("gradient presence is not tracked: build the optimizer with OptimizerOptions::gradient_presence".into())
        })?;
        Ok(TensorView { buffer: self.tables.clone(), offset, len: self.tensors.len(), dtype: Dtype::F32 })
    }

    /// Per tensor (by [`TensorId::index`]): the steps it has taken, torch's `state['step']`
    /// (its group's applied steps less those it missed without a gradient). Blocking read;
    /// native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_tensor_steps(&mut self) -> Result<Vec<u64>> {
        pollster::block_on(self.read_tensor_steps_async())
    }

    /// [`Optimizer::read_tensor_steps`], async.
    pub async fn read_tensor_steps_async(&mut self) -> Result<Vec<u64>> {
        let applied = self.counters_async().await?.applied_steps;
        let missed = self.missed_steps_async().await?;
        Ok(self.tensors.iter().zip(missed).map(|(t, m)| applied - self.groups[t.group].step_offset - m).collect())
    }

    /// Per tensor: the steps it missed without a gradient (all 0 without presence tracking).
    async fn missed_steps_async(&self) -> Result<Vec<u64>> {
        let Some(flags) = self.presence else { return Ok(vec![0; self.tensors.len()]) };
        let view = TensorView { buffer: self.tables.clone(), offset: flags + self.tensors.len() as u64 * 4, len: self.tensors.len(), dtype: Dtype::F32 };
        let words = read_views(&self.gpu, std::slice::from_ref(&view)).await?.remove(0);
        Ok(words.into_iter().map(|w| u64::from(w.to_bits())).collect())
    }

    /// Switches every group whose rule has training and evaluation points (Schedule-Free's y
    /// and x) to the training point, as the reference's `optimizer.train()`, recording its
    /// passes into `encoder`; returns the dispatches recorded. Other groups are untouched, and
    /// before the first step nothing moves (the reference's state does not exist yet).
    pub fn train(&mut self, encoder: &mut wgpu::CommandEncoder) -> usize {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgpu-optim train"), timestamp_writes: None });
        self.record_switch(&mut pass, true)
    }

    /// Switches every group whose rule has training and evaluation points to the evaluation
    /// point, as the reference's `optimizer.eval()` (Schedule-Free: the parameters become x,
    /// the point to evaluate and to save). The next [`Optimizer::step`] switches back first.
    ///
    /// ```no_run
    /// # use wgpu_optim::{rules::AdamWScheduleFree, BackendChoice, GpuContext, Optimizer, ParamGroup, Parameters};
    /// # let gpu = GpuContext::new(BackendChoice::Auto)?;
    /// # let mut params = Parameters::new();
    /// # let w = params.add("w", &[4], vec![0.5; 4])?;
    /// let mut opt = Optimizer::new(&gpu, params, vec![ParamGroup::new(AdamWScheduleFree::default(), [w])])?;
    /// let mut encoder = gpu.device().create_command_encoder(&Default::default());
    /// opt.step(&mut encoder)?; // the parameters hold y
    /// opt.eval(&mut encoder); // the parameters hold x: evaluate, checkpoint
    /// opt.train(&mut encoder); // back to y
    /// gpu.queue().submit([encoder.finish()]);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn eval(&mut self, encoder: &mut wgpu::CommandEncoder) -> usize {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgpu-optim eval"), timestamp_writes: None });
        self.record_switch(&mut pass, false)
    }

    /// Whether group `group` holds its training point (always, for rules without a mode switch).
    pub fn is_train_mode(&self, group: usize) -> bool {
        self.groups[group].train_mode
    }

    fn record_switch(&mut self, pass: &mut wgpu::ComputePass<'_>, to_train: bool) -> usize {
        let mut dispatches = 0;
        let newest = self.newest_step();
        for group in &mut self.groups {
            let Some(commands) = &group.switch else { continue };
            if group.train_mode == to_train {
                continue;
            }
            group.train_mode = to_train;
            if newest == group.step_offset {
                continue; // nothing to move toward before the group's first step creates the state
            }
            let switch = group.rule.kernel().mode_switch.expect("a group with switch commands has a mode switch");
            let args = if to_train { switch.to_train.args } else { switch.to_eval.args };
            for command in &commands[usize::from(!to_train)] {
                // The weights follow the rule's hyper-parameters now (a restore may change betas).
                let offset = u64::from(command.record_offset) + std::mem::offset_of!(DispatchRecord, args) as u64;
                self.gpu.queue().write_buffer(&self.records, offset, bytemuck::cast_slice(&args));
                pass.set_pipeline(&self.pipelines[command.pipeline]);
                // The scalars slot is bound but not read by a switch pass.
                pass.set_bind_group(0, &self.bind_groups[command.bind_group], &[0, command.record_offset]);
                pass.dispatch_workgroups(command.grid.0, command.grid.1, command.grid.2);
                dispatches += 1;
            }
        }
        dispatches
    }

    /// Writes every group's ring of step terms for the steps the GPU may reach next, given
    /// the skips known so far; with gradient presence tracked, also for the earlier steps the
    /// ring holds, where a tensor that missed steps finds its own step's terms (computed
    /// with the current hyper-parameters, as torch computes them from `state['step']`).
    fn fill_terms_rings(&mut self) {
        // The GPU's next step lies between the step after the last one read and `newest`.
        let newest = self.newest_step() + 1;
        let ring_len = self.terms_ring;
        let next = newest.saturating_sub(ring_len - 1).max(u64::from(self.known.step) + 1);
        let tracked = self.presence.is_some();
        for group in &mut self.groups {
            let ring = group.terms_ring;
            let mut entries = vec![StepTerms::default(); ring_len as usize];
            // By the group's own step count (see `group_step` in shaders/common.wgsl).
            let own = |step: u64| step.saturating_sub(group.step_offset).max(1);
            // The earlier steps, for tensors that missed some: computed on a copy of the memo,
            // which keeps the group's own history (NAdam's product over its steps).
            if tracked && group.rule.counts_steps_per_tensor() {
                let mut probe = group.memo;
                ring_entries(&mut entries, group.rule.as_ref(), own(newest.saturating_sub(ring_len - 1))..own(next), &mut probe);
            }
            ring_entries(&mut entries, group.rule.as_ref(), own(next)..own(newest) + 1, &mut group.memo);
            self.gpu.queue().write_buffer(&self.tables, ring, bytemuck::cast_slice(&entries));
        }
    }

    /// The terms of the next step of group `g` under its current rule (the memo untouched).
    fn next_terms(&self, g: usize) -> StepTerms {
        let group = &self.groups[g];
        let mut memo = group.memo;
        group.rule.step_terms((self.newest_step() + 1).saturating_sub(group.step_offset).max(1), &mut memo)
    }

    /// After a group's hyper-parameters changed: with gradient presence tracked, the ring's
    /// earlier steps are written again when the change alters the terms (ASGD's `lr`, a
    /// cycled `betas[0]`), so a tensor that missed steps sees torch's values.
    ///
    /// The whole ring is computed on a copy of the memo: the group's own history (NAdam's
    /// product over the `betas[0]` of its steps) stays in the memo and the scalars of the
    /// steps recorded, which tensors without missed steps read.
    fn refresh_terms_history(&mut self, g: usize, before: Option<StepTerms>) {
        let group = &self.groups[g];
        let Some(before) = before else { return };
        if !group.rule.counts_steps_per_tensor() || bytemuck::bytes_of(&self.next_terms(g)) == bytemuck::bytes_of(&before) {
            return;
        }
        let newest = self.newest_step() + 1;
        let own = |step: u64| step.saturating_sub(group.step_offset).max(1);
        let mut entries = vec![StepTerms::default(); self.terms_ring as usize];
        let steps = own(newest.saturating_sub(self.terms_ring - 1))..own(newest) + 1;
        ring_entries(&mut entries, group.rule.as_ref(), steps, &mut group.memo.clone());
        self.gpu.queue().write_buffer(&self.tables, group.terms_ring, bytemuck::cast_slice(&entries));
    }

    /// With gradient presence tracked, group `g`'s next terms, before a change that
    /// [`Optimizer::refresh_terms_history`] compares them after.
    fn terms_before_change(&self, g: usize) -> Option<StepTerms> {
        self.presence.is_some().then(|| self.next_terms(g))
    }

    /// What the GPU counted: applied and skipped steps, loss scale, last gradient norm
    /// (blocking read; native only). Steps recorded but not yet submitted are not counted.
    /// Reports the error torch would have raised (a non-finite norm with `error_if_nonfinite`)
    /// once.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn counters(&mut self) -> Result<StepCounters> {
        pollster::block_on(self.counters_async())
    }

    /// [`Optimizer::counters`], async.
    pub async fn counters_async(&mut self) -> Result<StepCounters> {
        let view = TensorView { buffer: self.tables.clone(), offset: 0, len: (CONTROL_SIZE / 4) as usize, dtype: Dtype::F32 };
        let words = read_views(&self.gpu, std::slice::from_ref(&view)).await?.remove(0);
        let mut control: Control = bytemuck::pod_read_unaligned(bytemuck::cast_slice(&words));
        let newly_skipped = u64::from(control.skipped - self.known.skipped);
        let error = control.take_error();
        if control.error != self.known.error || error.is_err() {
            self.gpu.queue().write_buffer(&self.tables, CONTROL_ERROR_OFFSET, &0u32.to_le_bytes());
        }
        let rebase = newly_skipped > 0;
        self.known = control;
        if rebase {
            self.fill_terms_rings();
        }
        error?;
        if newly_skipped >= self.terms_ring {
            return Err(Error::StepTermsLost(format!(
                "{newly_skipped} steps were skipped since the counters were last read; the GPU keeps the terms of \
                 {} steps, so some updates may have been dropped. Read counters() more often.",
                self.terms_ring
            )));
        }
        Ok(control.counters())
    }

    /// Everything needed to resume exactly: parameters, state, counters, hyper-parameters,
    /// and the caller's schedule state (blocking read; native only). The GPU is read in
    /// batches of bounded size, so a model larger than one GPU buffer can be saved.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn checkpoint(&mut self, schedule: Option<serde_json::Value>) -> Result<Checkpoint> {
        pollster::block_on(self.checkpoint_async(schedule))
    }

    /// [`Optimizer::checkpoint`], async: the form to use on the web.
    pub async fn checkpoint_async(&mut self, schedule: Option<serde_json::Value>) -> Result<Checkpoint> {
        let counters = self.counters_async().await?;
        let control = self.known;
        let mut views = Vec::new();
        for group in &self.groups {
            for &id in &group.tensors {
                views.push(self.updated_param(id)?);
                views.extend(self.state_entries(id)?.into_iter().map(|(_, _, view)| view));
            }
        }
        let missed = self.missed_steps_async().await?;
        let mut values = read_views(&self.gpu, &views).await?.into_iter();
        let mut tensors = Vec::new();
        let mut groups = Vec::new();
        for group in &self.groups {
            let applied = counters.applied_steps - group.step_offset;
            let running = rules::running_after(group.rule.as_ref(), applied, &group.memo);
            let mut group_missed = std::collections::BTreeMap::new();
            for &id in &group.tensors {
                let entry = &self.tensors[id.0];
                let param = (values.next().expect("one read per view"), self.options.precision.updated_params());
                let state = self
                    .state_entries(id)?
                    .into_iter()
                    .map(|(key, shape, view)| (key, shape, values.next().expect("one read per view"), view.dtype))
                    .collect();
                let rule = group.rule.as_ref();
                // A tensor that missed steps has taken fewer (torch's state['step'] is its own).
                let taken = applied - missed[id.0];
                let tensor_running = if taken == applied { running } else { rules::running_after(rule, taken, &group.memo) };
                tensors.extend(checkpoint::tensors_of(&entry.name, &entry.shape, rule, taken, tensor_running, param, state));
                if missed[id.0] > 0 {
                    group_missed.insert(entry.name.clone(), missed[id.0]);
                }
            }
            let names = group.tensors.iter().map(|id| self.tensors[id.0].name.clone()).collect();
            let record = GroupRecord::of(group.rule.as_ref(), names, running, group.train_mode, group.step_offset);
            groups.push(GroupRecord { missed: (!group_missed.is_empty()).then_some(group_missed), ..record });
        }
        // Int8 state: the block scales of its codes, beside them.
        for group in &self.groups {
            for &id in &group.tensors {
                for slot in group.slots.iter().filter(|_| self.options.precision.state == Dtype::Int8 && self.quant_layout.kept[id.0].is_none()) {
                    let (_, scales, _) = self.read_int8_async(id, slot.key).await?;
                    let name = format!("{}.{}.absmax", self.tensors[id.0].name, slot.key);
                    tensors.push(crate::tensor_file::NamedTensor::f32(name, vec![scales.len()], scales));
                }
            }
        }
        Ok(Checkpoint {
            optimizer: self.groups[0].rule.name().to_string(),
            groups,
            counters: CounterRecord::of(&control),
            gradients: self.gradients.clone(),
            schedule,
            tensors,
            precision: self.options.precision,
        })
    }

    /// Writes [`Optimizer::checkpoint`] to a file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint(&mut self, path: &std::path::Path, schedule: Option<serde_json::Value>) -> Result<()> {
        self.checkpoint(schedule)?.save(path)
    }

    /// Restores a checkpoint into this optimizer (same rules, tensors, groups and gradient
    /// conditioning). Hyper-parameters are taken from the checkpoint, as torch's
    /// `load_state_dict` takes them, flags included (`maximize`, `nesterov`, ...: other
    /// pipelines, compiled once per context), as long as they keep the same state and passes
    /// (Adam's `amsgrad` and Muon's `ns_steps` must match). Returns the saved schedule state. A
    /// checkpoint that does not fit changes nothing. Blocking on native (a flag change
    /// compiles pipelines); see [`Optimizer::restore_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<Option<serde_json::Value>> {
        pollster::block_on(self.restore_async(checkpoint))
    }

    /// [`Optimizer::restore`], async: the form to use on the web.
    pub async fn restore_async(&mut self, checkpoint: &Checkpoint) -> Result<Option<serde_json::Value>> {
        let target = checkpoint::Target::new(
            self.groups.iter().map(|g| (g.tensors.as_slice(), g.rule.as_ref())),
            |id| (self.tensors[id.0].name.as_str(), self.tensors[id.0].shape.as_slice()),
            &self.gradients,
            self.presence.is_some(),
        );
        let restore = checkpoint::check(checkpoint, &target)?;
        if checkpoint.precision != self.options.precision {
            return Err(Error::Checkpoint(format!(
                "the checkpoint was saved with storage types {:?}; this optimizer keeps {:?} (build it with the checkpoint's \
                 `precision` to resume)",
                checkpoint.precision, self.options.precision
            )));
        }
        let control = self.with_layout(checkpoint.counters.control(&self.gradients)?);
        let mut pipelines = Vec::new();
        for (g, rule) in restore.rules.iter().enumerate() {
            pipelines.push(self.pipelines_for(g, rule.as_ref()).await?);
        }
        // Nothing fails from here on: the checkpoint is restored whole.
        for (g, (rule, pipelines)) in restore.rules.into_iter().zip(pipelines).enumerate() {
            let group = &mut self.groups[g];
            group.step_offset = restore.step_offsets[g];
            group.memo = rules::resumed_memo(rule.as_ref(), u64::from(control.step) - group.step_offset, restore.running[g]);
            group.train_mode = restore.train_modes[g];
            self.install_rule(g, rule, pipelines);
        }
        for g in 0..self.groups.len() {
            self.write_step_offset(g);
        }
        for group in &self.groups {
            for &id in &group.tensors {
                let values = &restore.values[&self.tensors[id.0].name];
                self.write_param(id, &values[0])?;
                for ((key, _, _), data) in self.state_entries(id)?.into_iter().zip(&values[1..]) {
                    match restore.absmax.get(&format!("{}.{key}", self.tensors[id.0].name)) {
                        Some(scales) => self.write_int8(id, key, data, scales, control.step)?,
                        None => self.write_state(id, key, data)?,
                    }
                }
            }
        }
        self.gpu.queue().write_buffer(&self.tables, 0, bytemuck::bytes_of(&control));
        if let Some(flags) = self.presence {
            let missed: Vec<u32> =
                self.tensors.iter().map(|t| restore.missed.get(&t.name).map_or(0, |&m| m as u32)).collect();
            let at = flags + self.tensors.len() as u64 * 4;
            self.gpu.queue().write_buffer(&self.tables, at, bytemuck::cast_slice(&missed));
        }
        self.known = control;
        self.steps_recorded = checkpoint.counters.steps_recorded;
        let unapplied = self.steps_recorded.saturating_sub(u64::from(control.step) + u64::from(control.skipped));
        self.dropped_steps.store(unapplied, Ordering::Release);
        self.fill_terms_rings();
        Ok(checkpoint.schedule.clone())
    }

    /// Reads a checkpoint file and restores it; returns the saved schedule state.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_checkpoint(&mut self, path: &std::path::Path) -> Result<Option<serde_json::Value>> {
        self.restore(&Checkpoint::load(path)?)
    }

    /// The dynamic loss scale on the GPU, for the user's backward pass to multiply the loss by
    /// (a 4-byte view at offset 0 of the tables buffer; 1.0 without loss scaling).
    pub fn loss_scale_view(&self) -> TensorView {
        TensorView { buffer: self.tables.clone(), offset: 0, len: 1, dtype: Dtype::F32 }
    }

    /// The gradient conditioning this optimizer applies.
    pub fn gradient_options(&self) -> &GradientOptions {
        &self.gradients
    }

    /// Steps recorded so far (applied or, with gradient conditioning, possibly skipped).
    pub fn steps_recorded(&self) -> u64 {
        self.steps_recorded
    }

    /// Records one step and submits it.
    pub fn step_and_submit(&mut self) -> Result<wgpu::SubmissionIndex> {
        let mut encoder = self.gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("wgpu-optim step"),
        });
        self.step(&mut encoder)?;
        Ok(self.gpu.queue().submit([encoder.finish()]))
    }

    /// Runs `steps` training steps, submitting them in batches that fit the scalar ring
    /// ([`OptimizerOptions::steps_in_flight`]), so that recording can never overrun it.
    /// Before each step, `record(optimizer, encoder, k)` records step k's own work (forward
    /// and backward kernels writing [`Optimizer::grad`]) and may change hyper-parameters
    /// (a schedule's [`Optimizer::set_lr`]); then the step is recorded after it.
    ///
    /// ```no_run
    /// # use wgpu_optim::{rules::Adam, BackendChoice, GpuContext, Optimizer, ParamGroup, Parameters};
    /// # let gpu = GpuContext::new(BackendChoice::Auto)?;
    /// # let mut params = Parameters::new();
    /// # let w = params.add("w", &[4], vec![0.5; 4])?;
    /// let mut opt = Optimizer::new(&gpu, params, vec![ParamGroup::new(Adam::default(), [w])])?;
    /// opt.submit_steps(1_000, |opt, encoder, k| {
    ///     opt.set_lr(0, 1e-3 * 0.999f64.powi(k as i32))?;
    ///     // your backward kernel: encoder.begin_compute_pass(..), writing opt.grad(w)?.binding()
    ///     Ok(())
    /// })?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn submit_steps(
        &mut self,
        steps: u64,
        mut record: impl FnMut(&mut Self, &mut wgpu::CommandEncoder, u64) -> Result<()>,
    ) -> Result<()> {
        let mut k = 0;
        while k < steps {
            let batch = self.steps_in_flight.min(steps - k);
            let mut encoder = self.gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim steps"),
            });
            for _ in 0..batch {
                record(self, &mut encoder, k)?;
                self.step(&mut encoder)?;
                k += 1;
            }
            self.gpu.queue().submit([encoder.finish()]);
        }
        Ok(())
    }

    /// Dispatches every step records: the gradient conditioning's (one per arena window and
    /// one, when on) or the step counter's (one), then each group's passes (an element pass
    /// costs one dispatch per arena window).
    pub fn dispatches_per_step(&self) -> usize {
        self.before_step.dispatches() + self.plan.len()
    }

    /// The arenas, in layout order.
    pub fn arenas(&self) -> Vec<ArenaInfo> {
        self.arenas
            .iter()
            .map(|a| ArenaInfo { group: a.group, len: a.len, tensors: a.tensors.clone(), windows: a.windows.len() })
            .collect()
    }

    /// The device and queue it runs on.
    pub fn gpu(&self) -> &GpuContext {
        &self.gpu
    }

    // ---- tensors ----
    //
    // Every method taking a TensorId returns Error::ForeignTensor for an id that this
    // optimizer's Parameters (or a clone of it) did not issue.

    /// The id of the tensor registered as `name`.
    pub fn tensor_id(&self, name: &str) -> Option<TensorId> {
        self.by_name.get(name).copied()
    }

    /// Every tensor's id, in registration order.
    pub fn tensor_ids(&self) -> impl Iterator<Item = TensorId> + '_ {
        (0..self.tensors.len()).map(|i| TensorId(i, self.tag))
    }

    /// The tensor an id names here.
    fn entry(&self, id: TensorId) -> Result<&TensorEntry> {
        id.lookup(self.tag, &self.tensors)
    }

    /// The name a tensor was registered under.
    pub fn tensor_name(&self, id: TensorId) -> Result<&str> {
        Ok(&self.entry(id)?.name)
    }

    /// A tensor's shape.
    pub fn tensor_shape(&self, id: TensorId) -> Result<&[usize]> {
        Ok(&self.entry(id)?.shape)
    }

    /// The parameter group a tensor belongs to.
    pub fn group_of(&self, id: TensorId) -> Result<usize> {
        Ok(self.entry(id)?.group)
    }

    /// State keys kept for a tensor (torch's names), e.g. `["exp_avg", "exp_avg_sq"]` or
    /// Adafactor's `["row_var", "col_var"]`.
    pub fn state_keys(&self, id: TensorId) -> Result<Vec<&'static str>> {
        Ok(self.state_entries(id)?.into_iter().map(|(key, _, _)| key).collect())
    }

    /// Every state tensor of a tensor: key, shape and where it lives (per-element state in its
    /// arena, per-tensor state in the aux buffer).
    fn state_entries(&self, id: TensorId) -> Result<Vec<(&'static str, Vec<usize>, TensorView)>> {
        let entry = self.entry(id)?;
        let group = &self.groups[entry.group];
        let mut out: Vec<(&'static str, Vec<usize>, TensorView)> = group
            .slots
            .iter()
            .map(|slot| {
                let buffer = &self.arenas[entry.arena].state.iter().find(|(key, _)| *key == slot.key).expect("a buffer per slot").1;
                let dtype = self.options.precision.state;
                match self.quant_layout.kept[id.0] {
                    // Int8 state of a small tensor: f32, in the quant buffer.
                    Some(at) => {
                        let s = group.slots.iter().position(|x| x.key == slot.key).expect("its own slot");
                        let offset = (at + s * entry.len.next_multiple_of(4)) as u64 * 4;
                        let quant = self.quant.as_ref().expect("a quant buffer with int8 state").clone();
                        (slot.key, entry.shape.clone(), TensorView { buffer: quant, offset, len: entry.len, dtype: Dtype::F32 })
                    }
                    None => (slot.key, entry.shape.clone(), TensorView { buffer: buffer.clone(), offset: dtype.byte_len(entry.offset), len: entry.len, dtype }),
                }
            })
            .collect();
        if let Some(region) = entry.aux {
            let mut at = region + 4;
            for TensorSlot { key, shape, .. } in group.rule.tensor_state(&entry.shape) {
                let len = shape.iter().product();
                out.push((key, shape, TensorView { buffer: self.aux.clone(), offset: at as u64 * 4, len, dtype: Dtype::F32 }));
                at += len;
            }
        }
        Ok(out)
    }

    /// Where a parameter lives as the model reads it: bind it in your own kernels (forward
    /// passes read it). Its type is [`Precision::params`]; with master weights, this is the
    /// rounded copy the step writes (see [`Optimizer::master_param`]).
    pub fn param(&self, id: TensorId) -> Result<TensorView> {
        match self.options.precision.master_weights {
            true => self.view(id, self.options.precision.params, |a| a.model.as_ref().expect("a model copy with master weights")),
            false => self.updated_param(id),
        }
    }

    /// The f32 master copy of a parameter, which the step updates (with
    /// [`Precision::master_weights`] only).
    pub fn master_param(&self, id: TensorId) -> Result<TensorView> {
        if !self.options.precision.master_weights {
            return Err(Error::Tensor(format!(
                "tensor {:?} has no master copy: this optimizer keeps its parameters in {} without master weights",
                self.entry(id)?.name,
                self.options.precision.params
            )));
        }
        self.updated_param(id)
    }

    /// The parameter the step updates: the master copy, or the parameter itself.
    fn updated_param(&self, id: TensorId) -> Result<TensorView> {
        self.view(id, self.options.precision.updated_params(), |a| &a.param)
    }

    /// Where a tensor's gradient lives: your backward kernels write it; the step reads it
    /// and leaves it as it was (see [`Optimizer::zero_grad`]). Its type is [`Precision::grads`].
    pub fn grad(&self, id: TensorId) -> Result<TensorView> {
        self.view(id, self.options.precision.grads, |a| &a.grad)
    }

    /// A state tensor by torch's key; an error names the keys this tensor has.
    pub fn state(&self, id: TensorId, key: &str) -> Result<TensorView> {
        let entries = self.state_entries(id)?;
        let keys: Vec<&str> = entries.iter().map(|(name, _, _)| *name).collect();
        match entries.iter().find(|(name, _, _)| *name == key) {
            Some((_, _, view)) => Ok(view.clone()),
            None => Err(Error::Tensor(format!("tensor {:?} has no state {key:?}; it has {keys:?}", self.tensors[id.0].name))),
        }
    }

    fn view(&self, id: TensorId, dtype: Dtype, buffer: impl Fn(&Arena) -> &wgpu::Buffer) -> Result<TensorView> {
        let entry = self.entry(id)?;
        Ok(TensorView { buffer: buffer(&self.arenas[entry.arena]).clone(), offset: dtype.byte_len(entry.offset), len: entry.len, dtype })
    }

    // ---- groups ----

    /// The bytes of every GPU buffer this optimizer owns, by role and type, and per parameter.
    pub fn memory(&self) -> MemoryReport {
        let precision = &self.options.precision;
        let mut buffers: Vec<BufferMemory> = Vec::new();
        let mut add = |role: String, dtype: Option<Dtype>, bytes: u64| match buffers.iter_mut().find(|b| b.role == role) {
            Some(b) => b.bytes += bytes,
            None => buffers.push(BufferMemory { role, dtype, bytes }),
        };
        // An arena buffer's elements under its role; the page that staggers a large one apart
        // from the next (`STAGGER_BYTES`) with the bookkeeping.
        let mut staggering = 0;
        for arena in &self.arenas {
            let updated = if precision.master_weights { "master param" } else { "param" };
            let mut buffers_of_arena: Vec<(&str, Dtype, &wgpu::Buffer)> = vec![(updated, precision.updated_params(), &arena.param)];
            if let Some(model) = &arena.model {
                buffers_of_arena.push(("param", precision.params, model));
            }
            buffers_of_arena.push(("grad", precision.grads, &arena.grad));
            buffers_of_arena.extend(arena.state.iter().map(|(key, buffer)| (*key, precision.state, buffer)));
            for (role, dtype, buffer) in buffers_of_arena {
                let bytes = dtype.byte_len(arena.len);
                add(role.into(), Some(dtype), bytes);
                staggering += buffer.size() - bytes;
            }
        }
        if staggering > 0 {
            add("pages staggering large arena buffers".into(), None, staggering);
        }
        if let Some(quant) = &self.quant {
            add("int8 block scales, small tensors' f32 state".into(), Some(Dtype::F32), quant.size());
        }
        add("per-tensor state and scratch (aux)".into(), None, self.aux.size());
        add("tables, step scalars, dispatch records".into(), None, self.tables.size() + self.scalars.size() + self.records.size());
        MemoryReport { parameters: self.tensors.iter().map(|t| t.len as u64).sum(), buffers }
    }

    /// The number of parameter groups.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// A group's update rule with its current hyper-parameters. Panics for a group that does
    /// not exist (see [`Optimizer::group_count`]).
    pub fn rule(&self, group: usize) -> &dyn UpdateRule {
        self.groups[group].rule.as_ref()
    }

    /// Sets a group's learning rate (what a schedule does); takes effect at the next step.
    pub fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        let g = group;
        let group = self.group(g)?;
        let changed = rules::changed(group.rule.as_ref(), |rule| {
            rule.set_lr(lr);
            Ok(())
        })?;
        let before = self.terms_before_change(g);
        self.groups[g].rule = changed;
        self.refresh_terms_history(g, before);
        Ok(())
    }

    /// Changes a group's hyper-parameters between steps, as torch's
    /// `opt.param_groups[g][key] = value` does: `changes` is a JSON object of torch's names
    /// and values, merged into the current ones. Validated as at construction; a flag change
    /// (`maximize`, `nesterov`, `decoupled_weight_decay`, ...) selects other pipelines, compiled
    /// once per context. Refused, leaving the group as it was: unknown names, invalid values,
    /// and changes that would change the state kept (Adam's `amsgrad`) or the passes (Muon's
    /// `ns_steps`). Blocking on native (a new flag compiles a pipeline); see
    /// [`Optimizer::set_rule_async`].
    ///
    /// ```no_run
    /// # use wgpu_optim::{rules::AdamW, BackendChoice, GpuContext, Optimizer, ParamGroup, Parameters};
    /// # let gpu = GpuContext::new(BackendChoice::Auto)?;
    /// # let mut params = Parameters::new();
    /// # let w = params.add("w", &[4], vec![0.5; 4])?;
    /// let mut opt = Optimizer::new(&gpu, params, vec![ParamGroup::new(AdamW::default(), [w])])?;
    /// opt.set_hyperparameters(0, serde_json::json!({"weight_decay": 0.0, "betas": [0.9, 0.95], "maximize": true}))?;
    /// assert!(opt.set_hyperparameters(0, serde_json::json!({"amsgrad": true})).is_err());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn set_hyperparameters(&mut self, group: usize, changes: serde_json::Value) -> Result<()> {
        let rule = rules::with_changes(self.group(group)?.rule.as_ref(), &changes)?;
        pollster::block_on(self.set_rule_async(group, rule))
    }

    /// Replaces a group's rule by another configuration of the same class (see
    /// [`Optimizer::set_hyperparameters`]), async: the form to use on the web.
    pub async fn set_rule_async(&mut self, group: usize, rule: Box<dyn UpdateRule>) -> Result<()> {
        let g = group;
        let group = self.group(g)?;
        let tensors: Vec<(&str, &[usize])> =
            group.tensors.iter().map(|id| (self.tensors[id.0].name.as_str(), self.tensors[id.0].shape.as_slice())).collect();
        rules::check_rule_change(group.rule.as_ref(), rule.as_ref(), &tensors)?;
        let pipelines = self.pipelines_for(g, rule.as_ref()).await?;
        self.install_rule(g, rule, pipelines);
        self.fill_terms_rings();
        Ok(())
    }

    /// The pipelines group `g` needs under `rule` (checked by `rules::check_rule_change`):
    /// none when its flags are those of the group's rule, else compiled (once per context).
    async fn pipelines_for(&self, g: usize, rule: &dyn UpdateRule) -> Result<Vec<wgpu::ComputePipeline>> {
        let precision = &self.options.precision;
        let (old, new) = (group_kernel(self.groups[g].rule.as_ref(), precision), group_kernel(rule, precision));
        if old.flags == new.flags {
            return Ok(Vec::new());
        }
        kernel_pipelines(&self.gpu, &new, &rule.state_slots(), self.conditioned, self.options.gradient_presence, precision).await
    }

    /// Installs `rule` in group `g` with the pipelines [`Optimizer::pipelines_for`] gave, and
    /// the pass words of every dispatch record of the group from it. Nothing here fails.
    fn install_rule(&mut self, g: usize, rule: Box<dyn UpdateRule>, pipelines: Vec<wgpu::ComputePipeline>) {
        let group = &self.groups[g];
        let args: Vec<[u32; 8]> = group_kernel(rule.as_ref(), &self.options.precision).passes_and_switches().map(|pass| pass.args).collect();
        let switches = group.switch.iter().flatten().flatten();
        let records: Vec<(u64, usize)> = self
            .plan
            .iter()
            .filter(|c| c.group == g)
            .chain(switches)
            .map(|c| (u64::from(c.record_offset) + std::mem::offset_of!(DispatchRecord, args) as u64, c.pass))
            .collect();
        let first = group.first_pipeline;
        for (p, pipeline) in pipelines.into_iter().enumerate() {
            self.pipelines[first + p] = pipeline;
        }
        for (offset, pass) in records {
            self.gpu.queue().write_buffer(&self.records, offset, bytemuck::cast_slice(&args[pass]));
        }
        self.groups[g].rule = rule;
    }

    /// torch's `add_param_group`: `params`' tensors (with their initial values) form a new
    /// group under `rule`, on an optimizer that may have stepped already. Their state starts
    /// empty and their step count at 0, as torch's does; the other groups' parameters, state,
    /// gradients and counters carry over exactly. Returns the new tensors' ids in this
    /// optimizer (the ids `params` issued are not this optimizer's). Refused, changing nothing:
    /// a name already in the optimizer, invalid hyper-parameters, a rule needing gradient
    /// conditioning this optimizer was built without, and recorded steps not yet submitted.
    ///
    /// The arenas are laid out again (blocking on native: the GPU copies the existing state
    /// into the new buffers); ids issued before stay valid.
    ///
    /// ```no_run
    /// # use wgpu_optim::{rules::{AdamW, Sgd}, BackendChoice, GpuContext, Optimizer, ParamGroup, Parameters};
    /// # let gpu = GpuContext::new(BackendChoice::Auto)?;
    /// # let mut params = Parameters::new();
    /// # let w = params.add("w", &[4], vec![0.5; 4])?;
    /// let mut opt = Optimizer::new(&gpu, params, vec![ParamGroup::new(AdamW::default(), [w])])?;
    /// opt.step_and_submit()?;
    /// let mut head = Parameters::new();
    /// head.zeros("head.weight", &[4, 2])?;
    /// let ids = opt.add_param_group(head, Box::new(Sgd { lr: 0.1, ..Sgd::default() }))?;
    /// opt.write_grad(ids[0], &[0.5; 8])?;
    /// opt.step_and_submit()?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn add_param_group(&mut self, params: Parameters, rule: Box<dyn UpdateRule>) -> Result<Vec<TensorId>> {
        pollster::block_on(self.add_param_group_async(params, rule))
    }

    /// [`Optimizer::add_param_group`], async: the form to use on the web.
    pub async fn add_param_group_async(&mut self, params: Parameters, rule: Box<dyn UpdateRule>) -> Result<Vec<TensorId>> {
        crate::params::check_added_group(|name| self.by_name.contains_key(name), &params, rule.as_ref(), self.conditioned)?;
        // Every recorded step must have run: the new layout takes the state over from here.
        #[cfg(not(target_arch = "wasm32"))]
        crate::context::wait_for_submitted_work(self.gpu.device())
            .map_err(|e| Error::Gpu { context: "waiting for the recorded steps".into(), message: e.to_string() })?;
        if self.scalar_slots.iter().any(|slot| slot.load(Ordering::Acquire)) {
            return Err(Error::StepsInFlight { in_flight: self.steps_in_flight });
        }
        let counters = self.counters_async().await?;

        // The same tensors and groups (values copied on the GPU below), then the new ones.
        let mut all = Parameters::with_tag(self.tag);
        for entry in &self.tensors {
            all.add(&entry.name, &entry.shape, vec![0.0; entry.len])?;
        }
        let mut added = Vec::new();
        for (_, spec) in params.iter() {
            added.push(all.add(&spec.name, &spec.shape, spec.data.clone())?);
        }
        let mut groups: Vec<ParamGroup> = self.groups.iter().map(|g| ParamGroup::from_boxed(g.rule.clone(), g.tensors.clone())).collect();
        groups.push(ParamGroup::from_boxed(rule, added.clone()));
        let mut rebuilt = Optimizer::new_async(&self.gpu, all, groups, self.options.clone()).await?;

        // Parameters, gradients, state (per element and per tensor), row masks and the
        // control block move over on the GPU.
        let mut encoder = self.gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-optim add_param_group") });
        let mut copy = |from: &TensorView, to: &TensorView| encoder.copy_buffer_to_buffer(&from.buffer, from.offset, &to.buffer, to.offset, from.byte_size());
        for id in self.tensor_ids().collect::<Vec<_>>() {
            copy(&self.updated_param(id)?, &rebuilt.updated_param(id)?);
            copy(&self.param(id)?, &rebuilt.param(id)?);
            copy(&self.grad(id)?, &rebuilt.grad(id)?);
            for ((_, _, from), (_, _, to)) in self.state_entries(id)?.iter().zip(&rebuilt.state_entries(id)?) {
                copy(from, to);
            }
            if let (Ok(from), Ok(to)) = (self.grad_rows(id), rebuilt.grad_rows(id)) {
                copy(&from, &to);
            }
            // Int8 state: its codes' block scales (both arrays) move with them.
            if let (Some(from), Some(to)) = (&self.quant, &rebuilt.quant) {
                let blocks_per_chunk = CHUNK_ELEMENTS as usize / INT8_BLOCK;
                let blocks = self.tensors[id.0].len.div_ceil(INT8_BLOCK);
                let slots = self.groups[self.tensors[id.0].group].slots.len();
                for s in (0..slots).filter(|_| self.quant_layout.kept[id.0].is_none()) {
                    for rotation in 0..2 {
                        let at = |layout: &QuantLayout, first_chunk: usize| layout.absmax_word(s, rotation, first_chunk * blocks_per_chunk) as u64 * 4;
                        let view = |buffer: &wgpu::Buffer, offset| TensorView { buffer: buffer.clone(), offset, len: blocks, dtype: Dtype::F32 };
                        copy(&view(from, at(&self.quant_layout, self.first_chunks[id.0])), &view(to, at(&rebuilt.quant_layout, rebuilt.first_chunks[id.0])));
                    }
                }
            }
        }
        // The counters, not the layout words (the new layout has its own).
        let counters_len = std::mem::offset_of!(Control, terms_ring) / 4;
        let control = TensorView { buffer: self.tables.clone(), offset: 0, len: counters_len, dtype: Dtype::F32 };
        copy(&control, &TensorView { buffer: rebuilt.tables.clone(), ..control.clone() });
        // Gradient presence: the flags and missed steps of the tensors there were.
        if let (Some(from), Some(to)) = (self.presence, rebuilt.presence) {
            let (old_count, new_count) = (self.tensors.len() as u64, rebuilt.tensors.len() as u64);
            for array in 0..2 {
                let from = TensorView { buffer: self.tables.clone(), offset: from + array * old_count * 4, len: old_count as usize, dtype: Dtype::F32 };
                copy(&from, &TensorView { buffer: rebuilt.tables.clone(), offset: to + array * new_count * 4, len: old_count as usize, dtype: Dtype::F32 });
            }
        }
        self.gpu.queue().submit([encoder.finish()]);

        for (old, new) in self.groups.iter().zip(&mut rebuilt.groups) {
            new.memo = old.memo;
            new.train_mode = old.train_mode;
            new.step_offset = old.step_offset;
        }
        rebuilt.groups.last_mut().expect("the added group").step_offset = counters.applied_steps;
        for g in 0..rebuilt.groups.len() {
            rebuilt.write_step_offset(g);
        }
        rebuilt.known = rebuilt.with_layout(self.known);
        rebuilt.steps_recorded = self.steps_recorded;
        rebuilt.dropped_steps.store(self.dropped_steps.load(Ordering::Acquire), Ordering::Release);
        rebuilt.fill_terms_rings();
        *self = rebuilt;
        Ok(added)
    }

    /// Writes a group's step offset into its dispatch records (and, with gradient presence,
    /// beside each of its tensors, for the pass that counts missed steps).
    fn write_step_offset(&self, g: usize) {
        let group = &self.groups[g];
        let offset = u32::try_from(group.step_offset).expect("fewer than 2^32 steps");
        for command in self.plan.iter().filter(|c| c.group == g).chain(group.switch.iter().flatten().flatten()) {
            let at = u64::from(command.record_offset) + std::mem::offset_of!(DispatchRecord, step_offset) as u64;
            self.gpu.queue().write_buffer(&self.records, at, &offset.to_le_bytes());
        }
        let at = self.group_table + (2 * g as u64 + 1) * 4;
        self.gpu.queue().write_buffer(&self.tables, at, &offset.to_le_bytes());
        if let Some(flags) = self.presence {
            for id in &group.tensors {
                let at = flags + (3 * self.tensors.len() + id.0) as u64 * 4;
                self.gpu.queue().write_buffer(&self.tables, at, &offset.to_le_bytes());
            }
        }
    }

    /// `control` with this optimizer's layout words (ring entries, presence flags, tensor
    /// count), not those of a checkpoint's or another layout's.
    fn with_layout(&self, control: Control) -> Control {
        let layout = &self.layout;
        Control {
            terms_ring: layout.terms_ring,
            presence: layout.presence,
            tensors: layout.tensors,
            chunk_map: layout.chunk_map,
            chunks: layout.chunks,
            ..control
        }
    }

    fn group(&self, group: usize) -> Result<&Group> {
        let count = self.groups.len();
        self.groups.get(group).ok_or_else(|| crate::params::no_such_group(group, count))
    }

    /// Sets a group's `momentum` or `betas[0]`, the hyper-parameter torch's `CyclicLR` and
    /// `OneCycleLR` cycle (see [`UpdateRule::cycled_momentum`]); like lr, it travels in each
    /// step's scalars, so it takes effect at the next step recorded.
    pub fn set_cycled_momentum(&mut self, group: usize, value: f64) -> Result<()> {
        let g = group;
        let group = self.group(g)?;
        let changed = rules::changed(group.rule.as_ref(), |rule| rule.set_cycled_momentum(value))?;
        let before = self.terms_before_change(g);
        self.groups[g].rule = changed;
        self.refresh_terms_history(g, before);
        Ok(())
    }
    // ---- CPU access ----

    /// Uploads a parameter's values (with the next submission), rounded to nearest in its
    /// type; with master weights, into the master copy and its rounded copy.
    pub fn write_param(&self, id: TensorId, data: &[f32]) -> Result<()> {
        self.write(&self.updated_param(id)?, data, || format!("parameter {:?}", self.tensors[id.0].name))?;
        if self.options.precision.master_weights {
            self.write(&self.param(id)?, data, || format!("parameter {:?}", self.tensors[id.0].name))?;
        }
        Ok(())
    }

    /// Uploads a dense gradient; tensors whose rule takes sparse gradients (SparseAdam) refuse
    /// one, as torch does: use [`Optimizer::write_sparse_grad`].
    pub fn write_grad(&self, id: TensorId, data: &[f32]) -> Result<()> {
        let entry = self.entry(id)?;
        let group = &self.groups[entry.group];
        if group.sparse {
            return Err(crate::params::dense_refused(group.rule.name(), &entry.name));
        }
        self.write(&self.grad(id)?, data, || format!("gradient of {:?}", entry.name))?;
        self.mark_present(id);
        Ok(())
    }

    /// With gradient presence tracked, marks a tensor whose gradient the CPU wrote as present.
    fn mark_present(&self, id: TensorId) {
        if self.presence.is_some() {
            self.set_gradient_present(id, true).expect("a checked id, with presence tracked");
        }
    }

    /// The mask of the rows a sparse gradient touches this step (rules with sparse gradients,
    /// SparseAdam): one `u32` per row of [`rules::sparse_rows`], non-zero where touched. A
    /// user's backward kernel binds it (its offset is 256-byte aligned) and sets the rows it
    /// writes into [`Optimizer::grad`]; the step consumes it (clears every row).
    pub fn grad_rows(&self, id: TensorId) -> Result<TensorView> {
        let entry = self.entry(id)?;
        match entry.row_mask {
            Some(at) => Ok(TensorView { buffer: self.aux.clone(), offset: at as u64 * 4, len: rules::sparse_rows(&entry.shape).0, dtype: Dtype::F32 }),
            None => Err(Error::Tensor(format!(
                "tensor {:?}'s rule ({}) takes dense gradients: it has no row mask",
                entry.name,
                self.groups[entry.group].rule.name()
            ))),
        }
    }

    /// Uploads a row-sparse gradient (SparseAdam): the touched rows' indices and their
    /// values, row after row. A row listed twice gets the sum of its values, as torch's
    /// `coalesce` gives it. Untouched rows of the gradient buffer are not written.
    pub fn write_sparse_grad(&self, id: TensorId, rows: &[u32], values: &[f32]) -> Result<()> {
        let entry = self.entry(id)?;
        let sparse = self.groups[entry.group].sparse;
        let (mask, dense) = crate::params::sparse_gradient(sparse, &entry.name, &entry.shape, rows, values)?;
        let (_, row_length) = rules::sparse_rows(&entry.shape);
        let grad = self.grad(id)?;
        for (row, _) in mask.iter().enumerate().filter(|(_, &t)| t != 0) {
            let at = row * row_length;
            self.gpu.queue().write_buffer(&grad.buffer, grad.offset + at as u64 * 4, bytemuck::cast_slice(&dense[at..at + row_length]));
        }
        let rows_view = self.grad_rows(id)?;
        self.gpu.queue().write_buffer(&rows_view.buffer, rows_view.offset, bytemuck::cast_slice(&mask));
        self.mark_present(id);
        Ok(())
    }

    /// Uploads a state tensor's values by torch's key (with the next submission).
    /// Int8 state is quantized here as the kernels quantize it (block scales for the GPU's
    /// current step; blocking on native to read that step).
    pub fn write_state(&self, id: TensorId, key: &str, data: &[f32]) -> Result<()> {
        let view = self.state(id, key)?;
        if view.dtype != Dtype::Int8 {
            return self.write(&view, data, || format!("{key} of {:?}", self.tensors[id.0].name));
        }
        if data.len() != view.len {
            return Err(Error::SizeMismatch { what: format!("{key} of {:?}", self.tensors[id.0].name), expected: view.len, actual: data.len() });
        }
        let (_, slot) = self.int8_slot(id, key)?;
        let map = crate::storage::int8_map(slot.nonnegative);
        let (mut codes, mut absmax) = (Vec::new(), Vec::new());
        for (b, block) in data.chunks(INT8_BLOCK).enumerate() {
            let (block_codes, block_absmax) = crate::storage::quantize_block(block, &map, (b + 1) * INT8_BLOCK > data.len());
            codes.extend(block_codes.into_iter().map(f32::from));
            absmax.push(block_absmax);
        }
        let control = TensorView { buffer: self.tables.clone(), offset: 0, len: (CONTROL_SIZE / 4) as usize, dtype: Dtype::F32 };
        let words: Vec<u32> = pollster::block_on(read_views(&self.gpu, &[control]))?[0].iter().map(|x| x.to_bits()).collect();
        let control: Control = bytemuck::pod_read_unaligned(bytemuck::cast_slice(&words));
        self.write_int8(id, key, &codes, &absmax, control.step)
    }

    /// Writes an int8 state array's codes and block scales as the GPU reads them after `step`
    /// applied steps (and clears the scales the next step gathers into).
    fn write_int8(&self, id: TensorId, key: &str, codes: &[f32], absmax: &[f32], step: u32) -> Result<()> {
        let (s, _) = self.int8_slot(id, key)?;
        let name = &self.tensors[id.0].name;
        self.write(&self.state(id, key)?, codes, || format!("{key} of {name:?}"))?;
        let first_block = self.first_chunks[id.0] * (CHUNK_ELEMENTS as usize / INT8_BLOCK);
        let quant = self.quant.as_ref().expect("a quant buffer with int8 state");
        let at = |rotation: usize| self.quant_layout.absmax_word(s, rotation, first_block) as u64 * 4;
        let blocks = self.tensors[id.0].len.div_ceil(INT8_BLOCK);
        if absmax.len() != blocks {
            return Err(Error::SizeMismatch { what: format!("{key}.absmax of {name:?}"), expected: blocks, actual: absmax.len() });
        }
        let rotation = step as usize % 2;
        self.gpu.queue().write_buffer(quant, at(rotation), bytemuck::cast_slice(absmax));
        self.gpu.queue().write_buffer(quant, at(1 - rotation), bytemuck::cast_slice(&vec![0u32; blocks]));
        Ok(())
    }

    fn write(&self, view: &TensorView, data: &[f32], what: impl Fn() -> String) -> Result<()> {
        if data.len() != view.len {
            return Err(Error::SizeMismatch { what: what(), expected: view.len, actual: data.len() });
        }
        self.gpu.queue().write_buffer(&view.buffer, view.offset, &view.dtype.encode(data));
        Ok(())
    }

    /// Reads a parameter back (blocking: submits a copy and waits; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_param(&self, id: TensorId) -> Result<Vec<f32>> {
        self.read(&self.param(id)?)
    }

    /// Reads a gradient back (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_grad(&self, id: TensorId) -> Result<Vec<f32>> {
        self.read(&self.grad(id)?)
    }

    /// Reads a state tensor back by torch's key (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_state(&self, id: TensorId, key: &str) -> Result<Vec<f32>> {
        pollster::block_on(self.read_state_async(id, key))
    }

    /// Reads one view back (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, view: &TensorView) -> Result<Vec<f32>> {
        Ok(self.read_many(std::slice::from_ref(view))?.remove(0))
    }

    /// Reads one view back, async (the form to use on the web; see [`read_views`]).
    pub async fn read_async(&self, view: &TensorView) -> Result<Vec<f32>> {
        Ok(read_views(&self.gpu, std::slice::from_ref(view)).await?.remove(0))
    }

    /// Reads a parameter back, async.
    pub async fn read_param_async(&self, id: TensorId) -> Result<Vec<f32>> {
        self.read_async(&self.param(id)?).await
    }

    /// Reads a state tensor back by torch's key, async.
    pub async fn read_state_async(&self, id: TensorId, key: &str) -> Result<Vec<f32>> {
        let view = self.state(id, key)?;
        if view.dtype != Dtype::Int8 {
            return self.read_async(&view).await;
        }
        let (codes, absmax, map) = self.read_int8_async(id, key).await?;
        Ok(codes.iter().enumerate().map(|(k, &q)| map[q as usize] * absmax[k / INT8_BLOCK]).collect())
    }

    /// An int8 state array's codes, its blocks' absmax (read at the GPU's current step) and
    /// its map.
    async fn read_int8_async(&self, id: TensorId, key: &str) -> Result<(Vec<u8>, Vec<f32>, [f32; 256])> {
        let (s, slot) = self.int8_slot(id, key)?;
        let entry = &self.tensors[id.0];
        let quant = self.quant.as_ref().expect("a quant buffer with int8 state");
        let control = TensorView { buffer: self.tables.clone(), offset: 0, len: (CONTROL_SIZE / 4) as usize, dtype: Dtype::F32 };
        let first_block = self.first_chunks[id.0] * (CHUNK_ELEMENTS as usize / INT8_BLOCK);
        let blocks = entry.len.div_ceil(INT8_BLOCK);
        let mut views = vec![control, self.state(id, key)?];
        for rotation in 0..2 {
            let offset = self.quant_layout.absmax_word(s, rotation, first_block) as u64 * 4;
            views.push(TensorView { buffer: quant.clone(), offset, len: blocks, dtype: Dtype::F32 });
        }
        let mut values = read_views(&self.gpu, &views).await?;
        let words: Vec<u32> = values[0].iter().map(|x| x.to_bits()).collect();
        let control: Control = bytemuck::pod_read_unaligned(bytemuck::cast_slice(&words));
        let absmax = values.swap_remove(2 + control.step as usize % 2);
        let codes = values[1].iter().map(|&q| q as u8).collect();
        Ok((codes, absmax, crate::storage::int8_map(slot.nonnegative)))
    }

    /// The index of an int8 state array among its group's and the slot; an error for state
    /// that is not per-element or a tensor kept in f32.
    fn int8_slot(&self, id: TensorId, key: &str) -> Result<(usize, StateSlot)> {
        let entry = self.entry(id)?;
        let slots = &self.groups[entry.group].slots;
        match slots.iter().position(|slot| slot.key == key) {
            Some(s) if self.quant_layout.kept[id.0].is_none() => Ok((s, slots[s])),
            _ => Err(Error::Tensor(format!("{key} of {:?} is not 8-bit state", entry.name))),
        }
    }

    /// Reads several views back with one copy submission (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_many(&self, views: &[TensorView]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(read_views(&self.gpu, views))
    }
}

/// Frees a slot of the scalar ring when its step has run (the callback sets `ran`) or when
/// its commands are dropped unsubmitted (the callback is dropped uncalled): then the step is
/// counted as dropped, so later steps know their t.
struct SlotRelease {
    slot: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    ran: bool,
}

impl SlotRelease {
    fn ran(mut self) {
        self.ran = true;
    }
}

impl Drop for SlotRelease {
    fn drop(&mut self) {
        if !self.ran {
            self.dropped.fetch_add(1, Ordering::AcqRel);
        }
        self.slot.store(false, Ordering::Release);
    }
}

/// Largest staging buffer a read uses: a model larger than this (or than the device's
/// `max_buffer_size`) is read in several copies, so checkpoints of any size can be saved.
const READ_BATCH_BYTES: u64 = 64 << 20;

/// Reads views back to the CPU: copies them into staging buffers of at most
/// 64 MiB (and `max_buffer_size`), one batch at a time, and maps them.
pub async fn read_views(gpu: &GpuContext, views: &[TensorView]) -> Result<Vec<Vec<f32>>> {
    let capacity = gpu.device().limits().max_buffer_size.min(READ_BATCH_BYTES) / 4 * 4;
    let mut out: Vec<Vec<u8>> = views.iter().map(|view| Vec::with_capacity(view.byte_size() as usize)).collect();
    // Pieces of views (view, buffer offset, bytes) that fill the next staging buffer.
    let mut batch: Vec<(usize, u64, u64)> = Vec::new();
    let mut batch_bytes = 0;
    for (k, view) in views.iter().enumerate() {
        let mut done = 0;
        while done < view.byte_size() {
            let bytes = (view.byte_size() - done).min(capacity - batch_bytes);
            batch.push((k, view.offset + done, bytes));
            batch_bytes += bytes;
            done += bytes;
            if batch_bytes == capacity {
                read_batch(gpu, views, &batch, batch_bytes, &mut out).await?;
                batch.clear();
                batch_bytes = 0;
            }
        }
    }
    if batch_bytes > 0 {
        read_batch(gpu, views, &batch, batch_bytes, &mut out).await?;
    }
    Ok(out.iter().zip(views).map(|(bytes, view)| view.dtype.decode(bytes, view.len)).collect())
}

/// Copies the pieces into one staging buffer, maps it and appends each piece to its view's
/// values.
async fn read_batch(gpu: &GpuContext, views: &[TensorView], pieces: &[(usize, u64, u64)], bytes: u64, out: &mut [Vec<u8>]) -> Result<()> {
    let device = gpu.device();
    let staging = gpu
        .checked("allocating a read-back buffer", || {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim read-back"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
        .await?;
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-optim read-back") });
    let mut at = 0;
    for &(k, offset, size) in pieces {
        encoder.copy_buffer_to_buffer(&views[k].buffer, offset, &staging, at, size);
        at += size;
    }
    gpu.queue().submit([encoder.finish()]);
    let (sender, receiver) = futures_channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |result| {
        let _ = sender.send(result);
    });
    #[cfg(not(target_arch = "wasm32"))]
    crate::context::wait_for_submitted_work(device).map_err(|e| Error::ReadBack(e.to_string()))?;
    receiver
        .await
        .map_err(|_| Error::ReadBack("the device was lost before the buffer was mapped".into()))?
        .map_err(|e| Error::ReadBack(e.to_string()))?;
    let mapped = staging.get_mapped_range(..).map_err(|e| Error::ReadBack(e.to_string()))?;
    let mut at = 0;
    for &(k, _, size) in pieces {
        out[k].extend_from_slice(&mapped[at..at + size as usize]);
        at += size as usize;
    }
    drop(mapped);
    staging.unmap();
    Ok(())
}


/// Rejects a kernel the dispatcher cannot run on this device, with the reason.
fn check_kernel(rule: &dyn UpdateRule, kernel: &Kernel, limits: &wgpu::Limits, precision: &Precision) -> Result<()> {
    let master_weights = precision.master_weights;
    let extra = u32::from(master_weights) + u32::from(precision.state == Dtype::Int8);
    let needed = FIXED_STORAGE_BINDINGS + kernel.state_bindings.len() as u32 + extra;
    if needed > limits.max_storage_buffers_per_shader_stage {
        return Err(Error::Config(format!(
            "{} needs {needed} storage buffers per shader stage ({} per-element state arrays + tables, param, grad, aux{}); \
             this device allows {}",
            rule.name(),
            kernel.state_bindings.len(),
            match (master_weights, precision.state == Dtype::Int8) {
                (true, true) => " + the master weights' model copy + int8 scales",
                (true, false) => " + the master weights' model copy",
                (false, true) => " + int8 scales",
                (false, false) => "",
            },
            limits.max_storage_buffers_per_shader_stage
        )));
    }
    if FIRST_STATE_BINDING + kernel.state_bindings.len() as u32 > CONTROL_BINDING {
        return Err(Error::Config(format!(
            "{} declares {} per-element state arrays; the bindings leave room for {}",
            rule.name(),
            kernel.state_bindings.len(),
            CONTROL_BINDING - FIRST_STATE_BINDING
        )));
    }
    let matrices = kernel.passes.iter().filter(|p| matches!(p.scope, Scope::Matrices { .. })).count();
    if matrices > 0 && matrices < kernel.passes.len() {
        return Err(Error::Config(format!(
            "{}: a rule with matrix passes must run all its passes over matrix batches (they share scratch)",
            rule.name()
        )));
    }
    if kernel.passes.is_empty() {
        return Err(Error::Config(format!("{} declares no passes", rule.name())));
    }
    if matrices > 0 && kernel.mode_switch.is_some() {
        return Err(Error::Config(format!("{}: a rule with matrix passes cannot have a mode switch", rule.name())));
    }
    Ok(())
}

/// Bind group layout of every rule's passes (see `shaders/common.wgsl`): scalars and the
/// dispatch record (uniforms with dynamic offsets), tables, param, grad, aux, then
/// `state_bindings` per-element state arrays.
fn kernel_layout(device: &wgpu::Device, label: &str, state_bindings: usize, master_weights: bool, int8: bool) -> wgpu::PipelineLayout {
    let storage = |binding, read_only, min| crate::context::storage_binding(binding, read_only, min);
    let uniform = |binding, min: u64| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: NonZeroU64::new(min),
        },
        count: None,
    };
    let mut entries = vec![
        uniform(0, SCALARS_BYTES as u64),
        uniform(1, std::mem::size_of::<DispatchRecord>() as u64),
        storage(2, true, CONTROL_SIZE + 4),
        storage(3, false, 16),
        storage(4, true, 16),
        storage(5, false, 4),
        wgpu::BindGroupLayoutEntry {
            binding: CONTROL_BINDING,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: false, min_binding_size: NonZeroU64::new(CONTROL_SIZE) },
            count: None,
        },
    ];
    entries.extend((0..state_bindings as u32).map(|k| storage(FIRST_STATE_BINDING + k, false, 16)));
    if master_weights {
        entries.push(storage(MODEL_BINDING, false, 8));
    }
    if int8 {
        entries.push(storage(QUANT_BINDING, false, 4));
    }
    let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    });
    device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(&bind_group_layout)],
        immediate_size: 0,
    })
}

/// Bytes an arena buffer of at least [`STAGGERED_FROM`] bytes (1M f32 elements) gets beyond
/// its elements. Allocators place buffers back to back (wgpu's packs two 64 MiB buffers into
/// one 128 MiB block), and arrays a large power of two apart contend for the same cache sets
/// and memory banks: on llvmpipe, AdamW over one tensor of 2^24 elements ran 7-14 % slower per
/// element than over 4000 x 4000 or 4096 x 4097, and 0-4 % once its buffers were staggered by
/// a page (BENCHMARKS.md, "Uniforms first"). [`Optimizer::memory`] reports the pages apart.
const STAGGER_BYTES: u64 = 4096;
const STAGGERED_FROM: u64 = 4 << 20;

/// A storage buffer of `len` elements of `dtype` holding `contents` (zero-filled by wgpu when `None`).
fn arena_buffer(device: &wgpu::Device, label: &str, dtype: Dtype, len: usize, contents: Option<&[f32]>) -> wgpu::Buffer {
    let bytes = dtype.byte_len(len);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&format!("wgpu-optim {label}")),
        size: if bytes >= STAGGERED_FROM { bytes + STAGGER_BYTES } else { bytes },
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: contents.is_some(),
    });
    if let Some(contents) = contents {
        buffer
            .get_mapped_range_mut(..bytes)
            .expect("a buffer mapped at creation is mappable")
            .copy_from_slice(&dtype.encode(contents));
        buffer.unmap();
    }
    buffer
}

/// Workgroup grid sweeping `len` elements: 1-D while it fits, else rows of `max_per_dim`.
fn grid(len: usize, max_per_dim: u32) -> (u32, u32) {
    let per_workgroup = (WORKGROUP_SIZE * ELEMENTS_PER_INVOCATION) as usize;
    let workgroups = len.div_ceil(per_workgroup).max(1);
    let x = workgroups.min(max_per_dim as usize);
    let y = workgroups.div_ceil(x);
    (x as u32, y as u32)
}
