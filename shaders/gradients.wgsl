// Gradient conditioning before an optimizer step, on the GPU (no CPU read-back):
//   norm_partials: per workgroup, the sum of squares (or max |g|) of the unscaled,
//                  value-clipped gradients, and whether any unscaled gradient is not finite;
//   finalize:      one workgroup reduces the partials to the total norm, decides whether the
//                  step is skipped, counts the step, sets the clip coefficient and updates the
//                  dynamic loss scale (torch's clip_grad_norm_ and GradScaler semantics).
//   advance:       without conditioning, counts the step (it always applies);
//   (both then publish each group's terms for the step: see publish_terms)
//   count_missed:  with gradient presence tracked, counts for each tensor without a gradient
//                  a step it missed (after the step was counted and not skipped).
// `Control` and `WORKGROUP_SIZE` come from control.wgsl.

struct Settings {
    partial_count: u32,     // norm-pass workgroups over all windows
    infinity_norm: u32,     // 1: norm_type inf (max |g|), 0: norm_type 2
    clip_norm: u32,         // 1: scale gradients to max_norm
    max_norm: f32,
    skip_nonfinite: u32,    // 1: skip steps whose gradients are not all finite
    error_if_nonfinite: u32,
    dynamic_scale: u32,     // 1: update the loss scale (GradScaler.update)
    growth_interval: u32,
    growth_factor: f32,
    backoff_factor: f32,
    groups: u32,            // the groups whose terms publish_terms writes
    group_table: u32,       // tables word of the group table: per group, its ring's word and step offset
    scalar_stride: u32,     // distance between two groups' scalars, in vec4s
}

struct Window {
    first_partial: u32,     // index of this window's first workgroup in `partials`
    first_chunk: u32,       // with gradient presence: its first chunk's index in the chunk map
    chunk_map: u32,         // with gradient presence: the tables word of the chunk map
}

@group(0) @binding(0) var<uniform> settings: Settings;
@group(0) @binding(1) var<storage, read_write> partials: array<vec2<f32>>;  // (sum or max, not finite)
// The control block, then the words the rules read (src/optimizer.rs lays them out).
struct TablesRw {
    control: Control,
    words: array<u32>,
}
@group(0) @binding(2) var<storage, read_write> tables_rw: TablesRw;
// This step's slot of the scalars ring (every group's scalars; each starts with its terms).
@group(0) @binding(3) var<storage, read_write> step_scalars: array<vec4<u32>>;
@group(1) @binding(0) var<uniform> window: Window;
@group(1) @binding(1) var<storage, read> grad: array<vec4<f32>>;

var<workgroup> reduce_value: array<f32, WORKGROUP_SIZE>;
var<workgroup> reduce_flag: array<f32, WORKGROUP_SIZE>;

fn not_finite(x: vec4<f32>) -> bool {
    let exponent = bitcast<vec4<u32>>(x) & vec4<u32>(0x7f800000u);
    return any(exponent == vec4<u32>(0x7f800000u));
}

fn combine(a: f32, b: f32, infinity_norm: bool) -> f32 {
    if (infinity_norm) {
        return max(a, b);
    }
    return a + b;
}

// Tree reduction of the workgroup's values into element 0.
fn reduce(local: u32, infinity_norm: bool) {
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (local < stride) {
            reduce_value[local] = combine(reduce_value[local], reduce_value[local + stride], infinity_norm);
            reduce_flag[local] = max(reduce_flag[local], reduce_flag[local + stride]);
        }
    }
    workgroupBarrier();
}

// Set when the optimizer tracks gradient presence (OptimizerOptions::gradient_presence). A
// constant, so that without it the norm pass has no presence reads at all: llvmpipe pays for
// a storage read in a branch even where no lane takes it.
override gradient_presence: bool = false;

// Whether a chunk's tensor has a gradient (`presence`: the control block's word): torch's
// norm and its non-finite check take only the gradients that are not None. Each tensor
// starts at a chunk when presence is tracked.
fn chunk_has_gradient(chunk: u32, presence: u32) -> bool {
    if (!gradient_presence) {
        return true;
    }
    let tensor = tables_rw.words[window.chunk_map + window.first_chunk + chunk];
    return tables_rw.words[presence + tensor] != 0u;
}

// Chunks (1,024 elements) one norm workgroup adds up (`NORM_CHUNKS` in src/gradients.rs sizes
// the grid). Fewer workgroups that reduce means fewer barriers and folds, which llvmpipe pays
// for far more than for the reads: with one chunk per workgroup the norm cost LAMB a third of
// its step at 16M.
const NORM_CHUNKS: u32 = 16u;

@compute @workgroup_size(WORKGROUP_SIZE)
fn norm_partials(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniform values first, before any branch (see common.wgsl).
    let inv_scale = tables_rw.control.inv_scale;
    let clip_value = tables_rw.control.clip_value;
    let infinity_norm = settings.infinity_norm != 0u;
    let presence = tables_rw.control.presence;
    let partial = window.first_partial + workgroup.y * grid.x + workgroup.x;
    let vec4s = arrayLength(&grad);
    let first = (workgroup.y * grid.x + workgroup.x) * NORM_CHUNKS;
    if (first * WORKGROUP_SIZE >= vec4s) {
        if (local == 0u) {
            partials[partial] = vec2<f32>(0.0);
        }
        return;
    }
    var value = 0.0;
    var flag = 0.0;
    for (var chunk = first; chunk < first + NORM_CHUNKS; chunk++) {
        let i = chunk * WORKGROUP_SIZE + local;
        if (i >= vec4s || !chunk_has_gradient(chunk, presence)) {
            continue;
        }
        let unscaled = grad[i] * inv_scale;
        if (not_finite(unscaled)) {
            flag = 1.0;
        }
        let g = clamp(unscaled, vec4<f32>(-clip_value), vec4<f32>(clip_value));
        if (infinity_norm) {
            let a = abs(g);
            value = max(value, max(max(a.x, a.y), max(a.z, a.w)));
        } else {
            value += dot(g, g);
        }
    }
    reduce_value[local] = value;
    reduce_flag[local] = flag;
    // One barrier, then one invocation folds the workgroup's values in order: a software
    // adapter (llvmpipe) pays for each barrier with a switch between all the invocations, which
    // costs more than the 255 additions.
    workgroupBarrier();
    if (local == 0u) {
        var total = reduce_value[0];
        var any_flag = reduce_flag[0];
        for (var k = 1u; k < WORKGROUP_SIZE; k++) {
            total = combine(total, reduce_value[k], infinity_norm);
            any_flag = max(any_flag, reduce_flag[k]);
        }
        partials[partial] = vec2<f32>(total, any_flag);
    }
}

// Makes each group's scalars' terms, which the rules read as `s.terms` (a uniform), those
// of the step now counted. The CPU wrote there the terms of the step it expected (tagged
// with it); after skipped or dropped steps the GPU's step is an earlier one, whose terms
// the CPU keeps in the ring, and they are copied from there. So the element passes never
// read the ring in their common path: on CPU drivers (llvmpipe) a storage read costs a loop
// over the lanes even where no lane takes it. A ring entry no longer held keeps its old
// tag, and the rules then skip.
fn publish_terms() {
    let c = tables_rw.control;
    for (var g = 0u; g < settings.groups; g++) {
        let step = c.step - tables_rw.words[settings.group_table + 2u * g + 1u];
        let slot = g * settings.scalar_stride;
        if (step_scalars[slot].x != step) {
            let at = tables_rw.words[settings.group_table + 2u * g] + (step % c.terms_ring) * 4u;
            let w = &tables_rw.words;
            step_scalars[slot] = vec4<u32>((*w)[at], (*w)[at + 1u], (*w)[at + 2u], (*w)[at + 3u]);
        }
    }
}

@compute @workgroup_size(1)
fn advance() {
    tables_rw.control.step = tables_rw.control.step + 1u;
    publish_terms();
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn finalize(@builtin(local_invocation_index) local: u32) {
    let infinity_norm = settings.infinity_norm != 0u;
    let partial_count = settings.partial_count;
    var value = 0.0;
    var flag = 0.0;
    for (var k = local; k < partial_count; k += WORKGROUP_SIZE) {
        value = combine(value, partials[k].x, infinity_norm);
        flag = max(flag, partials[k].y);
    }
    reduce_value[local] = value;
    reduce_flag[local] = flag;
    reduce(local, infinity_norm);
    if (local != 0u) {
        return;
    }
    var norm = reduce_value[0];
    if (!infinity_norm) {
        norm = sqrt(norm);
    }
    let found_inf = reduce_flag[0] != 0.0;
    let norm_not_finite = not_finite(vec4<f32>(norm));
    var skip = settings.skip_nonfinite != 0u && found_inf;
    if (settings.error_if_nonfinite != 0u && norm_not_finite) {
        // torch raises before touching anything: skip, and report on the next read.
        skip = true;
        tables_rw.control.error = tables_rw.control.error | 1u;
    }
    tables_rw.control.grad_norm = norm;
    tables_rw.control.skip = select(0u, 1u, skip);
    tables_rw.control.step_inv_scale = tables_rw.control.inv_scale;
    if (skip) {
        tables_rw.control.skipped = tables_rw.control.skipped + 1u;
    } else {
        tables_rw.control.step = tables_rw.control.step + 1u;
    }
    var coefficient = 1.0;
    if (settings.clip_norm != 0u) {
        coefficient = min(settings.max_norm / (norm + 1e-6), 1.0);
    }
    tables_rw.control.clip_coefficient = coefficient;
    if (settings.dynamic_scale != 0u) {
        // torch._amp_update_scale_
        if (found_inf) {
            tables_rw.control.loss_scale = tables_rw.control.loss_scale * settings.backoff_factor;
            tables_rw.control.growth_tracker = 0u;
        } else {
            let successful = tables_rw.control.growth_tracker + 1u;
            if (successful == settings.growth_interval) {
                let grown = tables_rw.control.loss_scale * settings.growth_factor;
                if (!not_finite(vec4<f32>(grown))) {
                    tables_rw.control.loss_scale = grown;
                }
                tables_rw.control.growth_tracker = 0u;
            } else {
                tables_rw.control.growth_tracker = successful;
            }
        }
        tables_rw.control.inv_scale = 1.0 / tables_rw.control.loss_scale;
    }
    publish_terms();
}

// Per tensor, from word control.presence of the tables (4 arrays of control.tensors words):
// has a gradient this step, steps missed, its group's terms ring (word; NO_RING when its rule
// counts steps per group) and its group's step offset.
const NO_RING: u32 = 0xffffffffu;

// Then, per chunk (after the chunk map), its tensor's lag for the element passes: the steps
// it missed, or ABSENT (one read per workgroup instead of three).
@compute @workgroup_size(WORKGROUP_SIZE)
fn count_missed(@builtin(local_invocation_index) local: u32) {
    let c = tables_rw.control;
    let n = c.tensors;
    let base = c.presence;
    for (var t = local; t < n && c.skip == 0u; t += WORKGROUP_SIZE) {
        let missed = base + n + t;
        if (tables_rw.words[base + t] == 0u) {
            tables_rw.words[missed] = tables_rw.words[missed] + 1u;
            continue;
        }
        let ring = tables_rw.words[base + 2u * n + t];
        if (ring == NO_RING) {
            continue;
        }
        // The terms of the tensor's step must still be in its group's ring; if a tensor
        // missed more steps than the ring holds, it is left as it is (it misses this step
        // too) and the error is reported by the next counters read.
        let step = c.step - tables_rw.words[base + 3u * n + t] - tables_rw.words[missed];
        if (tables_rw.words[ring + (step % c.terms_ring) * 4u] != step) {
            tables_rw.words[missed] = tables_rw.words[missed] + 1u;
            tables_rw.control.error = tables_rw.control.error | 2u;
        }
    }
    storageBarrier();
    let lags = c.chunk_map + c.chunks;
    for (var chunk = local; chunk < c.chunks; chunk += WORKGROUP_SIZE) {
        let t = tables_rw.words[c.chunk_map + chunk];
        tables_rw.words[lags + chunk] = select(ABSENT, tables_rw.words[base + n + t], tables_rw.words[base + t] != 0u);
    }
}
