// A fully connected layer y = relu?(x·Wᵀ + b), W stored [outputs, inputs] as torch's nn.Linear,
// and its backward pass. Each entry point uses only some of these bindings (its pipeline layout
// has just those).
//
// Every invocation computes a 4×4 tile of its output, so that each value it loads feeds four
// multiply-adds: on llvmpipe loads (per-lane gathers) dominate and the tiles make the training
// step several times faster than one output per invocation. Each output is still one sum in
// index order. Tiles at an edge clamp their reads to the last row/column and skip the writes.

@group(0) @binding(1) var<storage, read> x: array<f32>;          // rows × inputs: the layer's input
@group(0) @binding(2) var<storage, read> w: array<f32>;          // outputs × inputs
@group(0) @binding(3) var<storage, read> b: array<f32>;          // outputs
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // rows × outputs
@group(0) @binding(5) var<storage, read> dz: array<f32>;         // rows × outputs: dloss/d(x·Wᵀ + b)
@group(0) @binding(6) var<storage, read_write> dw: array<f32>;   // outputs × inputs
@group(0) @binding(7) var<storage, read_write> db: array<f32>;   // outputs
@group(0) @binding(8) var<storage, read_write> dx: array<f32>;   // rows × inputs

const TILE: u32 = 4u;

fn tiles(n: u32) -> u32 {
    return (n + TILE - 1u) / TILE;
}

// The four indices from `first`, each clamped to below `n`.
fn clamped(first: u32, n: u32) -> vec4<u32> {
    return min(vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(n - 1u));
}

// Forward: rows r0.. × outputs o0..; y = x·Wᵀ + b, then ReLU when dims.flag is set.
@compute @workgroup_size(ELEMENT_WORKGROUP)
fn forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let k = flat_index(id, groups);
    let rows = dims.rows;
    let inputs = dims.inputs;
    let outputs = dims.outputs;
    let output_tiles = tiles(outputs);
    if (k >= tiles(rows) * output_tiles) {
        return;
    }
    let r0 = (k / output_tiles) * TILE;
    let o0 = (k % output_tiles) * TILE;
    let xr = clamped(r0, rows) * inputs;
    let wr = clamped(o0, outputs) * inputs;
    // acc_j: row r0 + j, outputs o0..o0 + 3.
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var i = 0u; i < inputs; i++) {
        let wv = vec4<f32>(w[wr.x + i], w[wr.y + i], w[wr.z + i], w[wr.w + i]);
        acc0 += x[xr.x + i] * wv;
        acc1 += x[xr.y + i] * wv;
        acc2 += x[xr.z + i] * wv;
        acc3 += x[xr.w + i] * wv;
    }
    let oc = clamped(o0, outputs);
    let bias = vec4<f32>(b[oc.x], b[oc.y], b[oc.z], b[oc.w]);
    store_forward(r0, o0, acc0 + bias);
    store_forward(r0 + 1u, o0, acc1 + bias);
    store_forward(r0 + 2u, o0, acc2 + bias);
    store_forward(r0 + 3u, o0, acc3 + bias);
}

fn store_forward(row: u32, o0: u32, z: vec4<f32>) {
    if (row >= dims.rows) {
        return;
    }
    var v = z;
    if (dims.flag != 0u) {
        v = max(v, vec4<f32>(0.0));
    }
    for (var j = 0u; j < TILE; j++) {
        if (o0 + j < dims.outputs) {
            y[row * dims.outputs + o0 + j] = v[j];
        }
    }
}

// dW = dZᵀ·X over outputs o0.. × inputs i0.., and db = Σ_rows dZ (written by the tiles with
// i0 = 0). Written, not accumulated: each step's gradient replaces the last, as torch's
// zero_grad() + backward() leave it.
@compute @workgroup_size(ELEMENT_WORKGROUP)
fn grad_weights(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let k = flat_index(id, groups);
    let rows = dims.rows;
    let inputs = dims.inputs;
    let outputs = dims.outputs;
    let input_tiles = tiles(inputs);
    if (k >= tiles(outputs) * input_tiles) {
        return;
    }
    let o0 = (k / input_tiles) * TILE;
    let i0 = (k % input_tiles) * TILE;
    let oc = clamped(o0, outputs);
    let ic = clamped(i0, inputs);
    // acc_j: output o0 + j, inputs i0..i0 + 3.
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    var bias = vec4<f32>();
    for (var r = 0u; r < rows; r++) {
        let d = vec4<f32>(dz[r * outputs + oc.x], dz[r * outputs + oc.y], dz[r * outputs + oc.z], dz[r * outputs + oc.w]);
        let xv = vec4<f32>(x[r * inputs + ic.x], x[r * inputs + ic.y], x[r * inputs + ic.z], x[r * inputs + ic.w]);
        acc0 += d.x * xv;
        acc1 += d.y * xv;
        acc2 += d.z * xv;
        acc3 += d.w * xv;
        bias += d;
    }
    store_grad_weights(o0, i0, acc0);
    store_grad_weights(o0 + 1u, i0, acc1);
    store_grad_weights(o0 + 2u, i0, acc2);
    store_grad_weights(o0 + 3u, i0, acc3);
    if (i0 == 0u) {
        for (var j = 0u; j < TILE; j++) {
            if (o0 + j < outputs) {
                db[o0 + j] = bias[j];
            }
        }
    }
}

fn store_grad_weights(out: u32, i0: u32, g: vec4<f32>) {
    if (out >= dims.outputs) {
        return;
    }
    for (var j = 0u; j < TILE; j++) {
        if (i0 + j < dims.inputs) {
            dw[out * dims.inputs + i0 + j] = g[j];
        }
    }
}

// dX = dZ·W over rows r0.. × inputs i0.., times the previous layer's ReLU derivative: its
// output `x` is max(z, 0), so x > 0 exactly where z > 0 (torch's threshold_backward).
@compute @workgroup_size(ELEMENT_WORKGROUP)
fn grad_input(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let k = flat_index(id, groups);
    let rows = dims.rows;
    let inputs = dims.inputs;
    let outputs = dims.outputs;
    let input_tiles = tiles(inputs);
    if (k >= tiles(rows) * input_tiles) {
        return;
    }
    let r0 = (k / input_tiles) * TILE;
    let i0 = (k % input_tiles) * TILE;
    let dr = clamped(r0, rows) * outputs;
    let ic = clamped(i0, inputs);
    // acc_j: row r0 + j, inputs i0..i0 + 3.
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var o = 0u; o < outputs; o++) {
        let wv = vec4<f32>(w[o * inputs + ic.x], w[o * inputs + ic.y], w[o * inputs + ic.z], w[o * inputs + ic.w]);
        acc0 += dz[dr.x + o] * wv;
        acc1 += dz[dr.y + o] * wv;
        acc2 += dz[dr.z + o] * wv;
        acc3 += dz[dr.w + o] * wv;
    }
    store_grad_input(r0, i0, acc0);
    store_grad_input(r0 + 1u, i0, acc1);
    store_grad_input(r0 + 2u, i0, acc2);
    store_grad_input(r0 + 3u, i0, acc3);
}

fn store_grad_input(row: u32, i0: u32, g: vec4<f32>) {
    if (row >= dims.rows) {
        return;
    }
    for (var j = 0u; j < TILE; j++) {
        let at = row * dims.inputs + i0 + j;
        if (i0 + j < dims.inputs) {
            dx[at] = select(0.0, g[j], x[at] > 0.0);
        }
    }
}
