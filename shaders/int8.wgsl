// 8-bit blockwise optimizer state (bitsandbytes 0.50.2's scheme): each element a byte, a code
// into a 256-value map (tables words 0..1023: signed map, its midpoints, unsigned map, its
// midpoints), times its block's absmax (blocks of 256 elements from the tensor's start).
// Appended to a rule's kernel that keeps int8 state; src/storage.rs generates each state
// array's load_/store_ accessors over these, and holds their CPU twin.
//
// The absmax of a block's new values is known only after every element is updated, so the
// step runs the rule's kernel twice: `quantize_phase` 1 computes the update and records each
// block's absmax of the new values (atomicMax of the bits of non-negative f32s, which order
// as the values do), writing nothing else; phase 0 computes it again and writes codes,
// parameters and the rest. The absmax words alternate between two arrays per state array: at
// GPU step t, codes are read with array (t + 1) % 2 (the last step's), the new absmax gathered
// in t % 2; a third pass, `int8_clear`, then zeroes array (t + 1) % 2 for the next step to
// gather into. Tensors below 4,096 elements keep f32 state, in the `quant` buffer after the
// absmax arrays (their table entry's `kept_state`).

override quantize_phase: u32 = 0u;

@group(0) @binding(17) var<storage, read_write> quant: array<atomic<u32>>;

const NOT_KEPT: u32 = 0xffffffffu;
const INT8_BLOCK: u32 = 256u;

// Where vec4 `i` of an element pass's window lies: its tensor's length and kept state, its
// first element's index in the tensor, its block (global) and whether that block is the
// tensor's last, partial one.
struct QuantSite {
    len: u32,
    kept: u32,
    element: u32,
    block: u32,
    partial: bool,
}

fn quant_site(i: u32) -> QuantSite {
    let chunk = dispatch.first_chunk + i / WORKGROUP_SIZE;
    // Three words of the tensor's table entry (see `tensor_at`): len, first_chunk, kept_state.
    let entry = dispatch.table + tables.words[dispatch.chunk_map + chunk] * 11u;
    let len = tables.words[entry + 1u];
    let element = (chunk - tables.words[entry + 8u]) * CHUNK_ELEMENTS + (i % WORKGROUP_SIZE) * 4u;
    let block = chunk * (CHUNK_ELEMENTS / INT8_BLOCK) + (i % WORKGROUP_SIZE) / (INT8_BLOCK / 4u);
    let block_start = element - element % INT8_BLOCK;
    return QuantSite(len, tables.words[entry + 10u], element, block, block_start + INT8_BLOCK > len);
}

// The word of state array `slot`'s absmax of `block` in array `rotation` (0 or 1).
fn absmax_word(slot: u32, rotation: u32, block: u32) -> u32 {
    return (slot * 2u + rotation) * control.chunks * (CHUNK_ELEMENTS / INT8_BLOCK) + block;
}

// At GPU step t: the scales the codes were written with (the last step's).
fn absmax_read(slot: u32, block: u32) -> f32 {
    return bitcast<f32>(atomicLoad(&quant[absmax_word(slot, (control.step + 1u) % 2u, block)]));
}

fn int8_code(map: u32, q: u32) -> f32 {
    return bitcast<f32>(tables.words[map * 512u + q]);
}

// The nearest codes of v in its block (ties to the lower code): for each element, the number
// of midpoints below it scaled to [-1, 1] (x * (1 / absmax), or x / absmax in a tensor's last,
// partial block), found in 8 branch-free halvings (the midpoints are padded to 256 with +inf).
fn int8_quantize(v: vec4<f32>, absmax: f32, partial: bool, map: u32) -> vec4<u32> {
    var scaled = vec4<f32>(0.0);
    if (absmax >= 1.17549435e-38) {
        if (partial) {
            scaled = v / absmax;
        } else {
            scaled = v * (1.0 / absmax);
        }
    }
    scaled = clamp(scaled, vec4<f32>(-1.0), vec4<f32>(1.0));
    let midpoints = map * 512u + 256u;
    var below = vec4<u32>(0u);
    for (var step = 128u; step > 0u; step = step / 2u) {
        let at = midpoints + below + vec4<u32>(step - 1u);
        let mid = vec4<f32>(bitcast<f32>(tables.words[at.x]), bitcast<f32>(tables.words[at.y]), bitcast<f32>(tables.words[at.z]), bitcast<f32>(tables.words[at.w]));
        below = below + select(vec4<u32>(0u), vec4<u32>(step), mid < scaled);
    }
    return below;
}

fn int8_dequantize(w: u32, absmax: f32, map: u32) -> vec4<f32> {
    let codes = vec4<f32>(int8_code(map, w & 0xffu), int8_code(map, (w >> 8u) & 0xffu), int8_code(map, (w >> 16u) & 0xffu), int8_code(map, w >> 24u));
    return codes * absmax;
}

// Phase 1: the largest |v| of the tensor's elements among the four, into the block's new absmax.
fn record_absmax(slot: u32, site: QuantSite, v: vec4<f32>) {
    var m = 0.0;
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (site.element + j < site.len) {
            m = max(m, abs(v[j]));
        }
    }
    let word = absmax_word(slot, control.step % 2u, site.block);
    // Most invocations find a larger value already there: skip their read-modify-write.
    if (bitcast<u32>(m) > atomicLoad(&quant[word])) {
        atomicMax(&quant[word], bitcast<u32>(m));
    }
}

// Phase 0: the four codes of v with the block's new absmax.
fn int8_codes(slot: u32, site: QuantSite, v: vec4<f32>, map: u32) -> u32 {
    let absmax = bitcast<f32>(atomicLoad(&quant[absmax_word(slot, control.step % 2u, site.block)]));
    let q = int8_quantize(v, absmax, site.partial, map);
    return q.x | (q.y << 8u) | (q.z << 16u) | (q.w << 24u);
}

// A kept (f32) tensor's state: four words at `at`.
fn kept_load(at: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<f32>(atomicLoad(&quant[at])), bitcast<f32>(atomicLoad(&quant[at + 1u])), bitcast<f32>(atomicLoad(&quant[at + 2u])), bitcast<f32>(atomicLoad(&quant[at + 3u])));
}

fn kept_store(at: u32, v: vec4<f32>) {
    atomicStore(&quant[at], bitcast<u32>(v.x));
    atomicStore(&quant[at + 1u], bitcast<u32>(v.y));
    atomicStore(&quant[at + 2u], bitcast<u32>(v.z));
    atomicStore(&quant[at + 3u], bitcast<u32>(v.w));
}

// Where a kept tensor's state array `slot` holds vec4 `i`: slots one after another, each the
// tensor's length rounded up to whole vec4s.
fn kept_word(site: QuantSite, slot: u32) -> u32 {
    return site.kept + slot * ((site.len + 3u) / 4u * 4u) + site.element;
}

// The third pass of an int8 step: zero the scales this step read (array (t + 1) % 2), which the
// next step gathers into. One word per block and state array; a skipped step read nothing new
// and clears nothing.
@compute @workgroup_size(WORKGROUP_SIZE)
fn int8_clear(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let blocks_per_chunk = CHUNK_ELEMENTS / INT8_BLOCK;
    if (!in_window(workgroup, grid) || step_skipped() || local >= blocks_per_chunk * INT8_SLOTS) {
        return;
    }
    let block = (dispatch.first_chunk + workgroup_index(workgroup, grid)) * blocks_per_chunk + local % blocks_per_chunk;
    atomicStore(&quant[absmax_word(local / blocks_per_chunk, (control.step + 1u) % 2u, block)], 0u);
}
