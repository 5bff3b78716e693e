// Shared by every update rule; prepended (after shaders/control.wgsl) to each rule's kernel.
//
// Binding layout of every rule's passes:
//   0: the group's scalars for this step (uniform; one slot per recorded step and group)
//   1: this dispatch's record (uniform; one per dispatch): its window, tensors and pass words
//   2: tables (read): the gradient control block, then the groups' step-terms rings, the tensor
//      table, the chunk map and the dispatches' tensor lists (u32 words)
//   15: the control block alone (uniform), the range of tables the rules read most
//   3: param (read_write)    4: grad (read)
//   5: aux (read_write): reduction partials, then per tensor four scalars and the rule's
//      per-tensor state (Adafactor's row_var, col_var) or its gradient's row mask (SparseAdam),
//      then scratch (Muon's matrices)
//   6..: the rule's per-element state arrays (read_write), e.g. exp_avg, exp_avg_sq
// Uniforms first: a kernel reads its uniforms (the group's scalars, as `let s = scalars;`,
// the control block and its dispatch record) before its first branch or return. llvmpipe
// loads a uniform once while every invocation is known to run, and once per lane after any
// branch: AdamW's pass spent 12 % of its time re-reading its scalars after the bounds check
// (BENCHMARKS.md, "Uniforms first").
// Bindings 3, 4 and 6.. cover one window of an arena: a run of whole tensors, at most
// max_storage_buffer_binding_size bytes. In an element pass one invocation updates one vec4
// (4 elements) and one workgroup one chunk (1,024 elements); tensors of rules that work per
// tensor start at chunk boundaries, so a workgroup never straddles two tensors.

// Set when the optimizer conditions gradients on the GPU before the step (loss-scale
// unscaling, value and norm clipping, skipping non-finite steps, a rule reading the global
// norm).
override conditioned: bool = false;

// Set when the optimizer tracks which tensors have a gradient this step
// (OptimizerOptions::gradient_presence): a tensor without one is skipped as torch skips a
// parameter whose grad is None, and rules that count steps per tensor (torch's
// state['step']) count only the steps it took. Every tensor then starts at a chunk.
override gradient_presence: bool = false;

// Set on a CPU adapter (llvmpipe, device type Cpu), where invocations are SIMD lanes and
// every storage or workgroup access inside a loop is a scalar load per lane: kernels whose
// loops read a lot (Muon's products) take a shape for that there.
override cpu_adapter: bool = false;

// The step count lives on the GPU (control.step), advanced when a step executes, so a
// recorded step that never reaches the GPU shifts nothing. A step's terms (bias corrections,
// ...) are in its group's ring, which the CPU fills ahead and keeps for the last
// control.terms_ring steps; the step pass copies the GPU step's entry into the scalars
// (`s.terms`, a uniform read), which is what the rules read, also after skipped steps or
// steps whose encoders were dropped. Only a tensor that missed steps reads the ring itself.

struct Tables {
    control: Control,
    words: array<u32>,
}

// Mirrors `DispatchRecord` in src/optimizer.rs.
struct Dispatch {
    first_chunk: u32,       // element passes: the global index of the window's first chunk
    tensors: u32,           // tables word of this dispatch's tensor list (per-tensor and matrix passes)
    tensor_count: u32,
    terms: u32,             // tables word of the group's step-terms ring
    table: u32,             // tables word of the tensor table
    chunk_map: u32,         // tables word of the chunk map (global chunk -> tensor)
    chunks: u32,            // element passes: the window's chunks (workgroups beyond them return)
    step_offset: u32,       // the GPU's step count when the group was added (see group_step)
    args: array<vec4<u32>, 2>,  // the pass's own words
}

// One tensor: mirrors `TableEntry` in src/optimizer.rs (11 words).
struct Tensor {
    offset: u32,            // first element in its arena
    len: u32,
    rows: u32,              // the last two dimensions (a vector is 1 x n)
    cols: u32,
    matrices: u32,          // the product of the leading dimensions
    dims: u32,              // the number of dimensions
    aux: u32,               // first element of its aux region: 4 scalars, then its state
    scratch: u32,           // first element of its scratch
    first_chunk: u32,       // global index of its first chunk
    row_mask: u32,          // first element of its gradient's row mask in aux (sparse gradients)
    kept_state: u32,        // int8 state: first word of its f32 state if kept in f32 (else NOT_KEPT)
}

@group(0) @binding(1) var<uniform> dispatch: Dispatch;
// The control block again (the first bytes of tables), as a uniform: every invocation reads
// the step count and the conditioning's factors, and a uniform is what every backend reads
// fastest (llvmpipe: one scalar load instead of a gather per lane).
@group(0) @binding(15) var<uniform> control: Control;
@group(0) @binding(2) var<storage, read> tables: Tables;
@group(0) @binding(3) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> aux: array<f32>;

// The group's step count: the steps applied since it was added (torch's `state['step']` of
// its parameters). A group added after construction counts from its own first step.
fn group_step() -> u32 {
    return control.step - dispatch.step_offset;
}

// The words of the terms of step `step` in the group's ring (tagged with the step they are
// for; a tag that differs means the ring no longer holds them). Only a tensor that missed
// steps needs them: the step pass publishes each group's terms for the GPU's step into its
// scalars (`s.terms`; publish_terms in shaders/gradients.wgsl), so without gradient presence
// a rule's `s.terms` is its step's, or tagged otherwise when the ring lost them (then it
// skips, as it would on the ring's entry). The ring is then not read at all: on CPU drivers
// (llvmpipe) a storage read inside a branch costs a loop over the lanes even when none
// takes it, 5 % of AdamW's step.
fn ring_terms(step: u32) -> vec4<u32> {
    if (!gradient_presence) {
        return vec4<u32>(0u);
    }
    let at = dispatch.terms + (step % control.terms_ring) * 4u;
    return vec4<u32>(tables.words[at], tables.words[at + 1u], tables.words[at + 2u], tables.words[at + 3u]);
}

// ---- gradient presence (see `gradient_presence`) ----
// Per tensor, in the tables from word control.presence: whether it has a gradient this step
// (written by the user's kernels or the CPU), then the steps it missed since its group began.

fn has_gradient(tensor: u32) -> bool {
    return tables.words[control.presence + tensor] != 0u;
}

// The step a tensor takes now for rules that count steps per tensor (torch's
// state['step'] after this step), or 0 when it has no gradient and is left as it is.
fn tensor_step(tensor: u32) -> u32 {
    if (!gradient_presence) {
        return group_step();
    }
    if (!has_gradient(tensor)) {
        return 0u;
    }
    return group_step() - missed_steps(tensor);
}

// The group's steps a tensor sat out without a gradient (0 when presence is not tracked).
fn missed_steps(tensor: u32) -> u32 {
    if (!gradient_presence) {
        return 0u;
    }
    return tables.words[control.presence + control.tensors + tensor];
}

// The same for rules whose step count belongs to the group (it advances whether or not the
// tensor has a gradient): the group's step, or 0 when the tensor is left as it is.
fn group_step_of(tensor: u32) -> u32 {
    if (gradient_presence && !has_gradient(tensor)) {
        return 0u;
    }
    return group_step();
}

// The tensor an element pass's workgroup works on, when every tensor starts at a chunk
// (gradient presence tracked, or a rule that works per tensor). Workgroup-uniform, which
// WGSL's uniformity analysis can see (unlike a field of `element_site`, whose value also
// depends on the invocation): passes with barriers may return on what it gives.
fn workgroup_tensor(workgroup: vec3<u32>, grid: vec3<u32>) -> u32 {
    return tables.words[dispatch.chunk_map + dispatch.first_chunk + workgroup_index(workgroup, grid)];
}

// The lag of an element pass's workgroup's tensor: the steps it missed, or ABSENT when it
// has no gradient now (one word per chunk, after the chunk map, written before the rules
// run); 0 when presence is not tracked. Meaningless for a workgroup outside the window (a
// 2-D grid's last row), which the passes read it for and then return: WebGPU keeps
// out-of-range storage reads inside the buffer.
fn element_lag(workgroup: vec3<u32>, grid: vec3<u32>) -> u32 {
    if (!gradient_presence) {
        return 0u;
    }
    return tables.words[control.chunk_map + control.chunks + dispatch.first_chunk + workgroup_index(workgroup, grid)];
}

// tensor_step for an element-wise rule's workgroup.
fn element_step(workgroup: vec3<u32>, grid: vec3<u32>) -> u32 {
    let lag = element_lag(workgroup, grid);
    return select(group_step() - lag, 0u, lag == ABSENT);
}

// The steps an element pass's workgroup's tensor has taken, this one included if it has a
// gradient (its state exists once it is 1).
fn element_steps_taken(workgroup: vec3<u32>, grid: vec3<u32>) -> u32 {
    if (!gradient_presence) {
        return group_step();
    }
    return group_step() - missed_steps(workgroup_tensor(workgroup, grid));
}

// group_step_of for an element-wise rule's workgroup.
fn element_group_step(workgroup: vec3<u32>, grid: vec3<u32>) -> u32 {
    return select(group_step(), 0u, element_lag(workgroup, grid) == ABSENT);
}

// What the gradient conditioning does to this step's gradients, read at a kernel's top.
struct Conditioning {
    inv_scale: f32,         // 1 / the loss scale the gradients carry
    clip_value: f32,
    clip_coefficient: f32,  // clip_grad_norm_'s factor
}

fn gradient_conditioning() -> Conditioning {
    return Conditioning(control.step_inv_scale, control.clip_value, control.clip_coefficient);
}

// The gradient as torch's GradScaler.unscale_, clip_grad_value_ and clip_grad_norm_ leave it.
fn conditioned_gradient(g: vec4<f32>, c: Conditioning) -> vec4<f32> {
    if (!conditioned) {
        return g;
    }
    let unscaled = g * c.inv_scale;
    let clamped = clamp(unscaled, vec4<f32>(-c.clip_value), vec4<f32>(c.clip_value));
    return clamped * c.clip_coefficient;
}

// True when the GPU decided to skip this step.
fn step_skipped() -> bool {
    return conditioned && control.skip != 0u;
}

// Whether a tensor is updated at `step` (its step now; 0: it is left as it is) with terms
// tagged `tag`: the step is not skipped and the terms are that step's. Workgroup-uniform.
fn step_applies(tag: u32, step: u32) -> bool {
    return !step_skipped() && step != 0u && tag == step;
}

// torch.lerp(start, end, weight), computed from the nearer end as ATen does.
fn torch_lerp(start: vec4<f32>, end: vec4<f32>, weight: f32) -> vec4<f32> {
    if (weight < 0.5) {
        return start + weight * (end - start);
    }
    return end - (end - start) * (1.0 - weight);
}

// ---- tensors (rules that work per tensor) ----

fn tensor_at(t: u32) -> Tensor {
    let at = dispatch.table + t * 11u;
    let w = &tables.words;
    return Tensor(
        (*w)[at], (*w)[at + 1u], (*w)[at + 2u], (*w)[at + 3u], (*w)[at + 4u],
        (*w)[at + 5u], (*w)[at + 6u], (*w)[at + 7u], (*w)[at + 8u], (*w)[at + 9u], (*w)[at + 10u],
    );
}

// The linear index of a workgroup in a (possibly 2-D) grid: an element pass's chunk within its
// window, or a per-tensor pass's tensor within its dispatch. Workgroup-uniform.
fn workgroup_index(workgroup: vec3<u32>, grid: vec3<u32>) -> u32 {
    return workgroup.y * grid.x + workgroup.x;
}

// The k-th tensor of this dispatch (per-tensor passes: workgroup k; matrix passes: grid z).
fn dispatch_tensor(k: u32) -> u32 {
    return tables.words[dispatch.tensors + k];
}

// Where an element pass's invocation works, for rules that work per tensor.
struct ElementSite {
    chunk: u32,             // the global chunk of its workgroup (its partials' index)
    tensor: Tensor,         // the tensor the chunk lies in
    first: u32,             // the index in the tensor of its vec4's first element
    i: u32,                 // the index of its vec4 in the window's arrays
}

fn element_site(workgroup: vec3<u32>, grid: vec3<u32>, local: u32) -> ElementSite {
    let chunk = dispatch.first_chunk + workgroup_index(workgroup, grid);
    let tensor = tensor_at(tables.words[dispatch.chunk_map + chunk]);
    let first = (chunk - tensor.first_chunk) * CHUNK_ELEMENTS + local * 4u;
    return ElementSite(chunk, tensor, first, vec4_index(workgroup, grid, local));
}

// Whether a workgroup of an element pass covers a chunk of the window (a 2-D grid may have
// more workgroups than chunks). Workgroup-uniform, so passes with barriers may return on it.
fn in_window(workgroup: vec3<u32>, grid: vec3<u32>) -> bool {
    return workgroup_index(workgroup, grid) < dispatch.chunks;
}

// A chunk's reduction partials (aux starts with one vec4 per chunk).
fn write_partials(chunk: u32, value: vec4<f32>) {
    aux[chunk * 4u] = value.x;
    aux[chunk * 4u + 1u] = value.y;
    aux[chunk * 4u + 2u] = value.z;
    aux[chunk * 4u + 3u] = value.w;
}

fn read_partials(chunk: u32) -> vec4<f32> {
    return vec4<f32>(aux[chunk * 4u], aux[chunk * 4u + 1u], aux[chunk * 4u + 2u], aux[chunk * 4u + 3u]);
}
