// A fully connected layer y = relu?(x·Wᵀ + b), W stored [outputs, inputs] as torch's nn.Linear,
// and its backward pass. One invocation per output element; the sums run in index order.
// Each entry point uses only some of these bindings (its pipeline layout has just those).

@group(0) @binding(1) var<storage, read> x: array<f32>;          // rows × inputs: the layer's input
@group(0) @binding(2) var<storage, read> w: array<f32>;          // outputs × inputs
@group(0) @binding(3) var<storage, read> b: array<f32>;          // outputs
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // rows × outputs
@group(0) @binding(5) var<storage, read> dz: array<f32>;         // rows × outputs: dloss/d(x·Wᵀ + b)
@group(0) @binding(6) var<storage, read_write> dw: array<f32>;   // outputs × inputs
@group(0) @binding(7) var<storage, read_write> db: array<f32>;   // outputs
@group(0) @binding(8) var<storage, read_write> dx: array<f32>;   // rows × inputs

@compute @workgroup_size(ELEMENT_WORKGROUP)
fn forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let k = flat_index(id, groups);
    if (k >= dims.rows * dims.outputs) {
        return;
    }
    let row = k / dims.outputs;
    let out = k % dims.outputs;
    var sum = 0.0;
    for (var i = 0u; i < dims.inputs; i++) {
        sum += x[row * dims.inputs + i] * w[out * dims.inputs + i];
    }
    var z = sum + b[out];
    if (dims.flag != 0u) {
        z = max(z, 0.0);
    }
    y[k] = z;
}

// dW = dZᵀ·X and db = Σ_rows dZ: one invocation per weight, plus one per output for the bias
// (column `inputs`). Written, not accumulated: each step's gradient replaces the last, as
// torch's zero_grad() + backward() leave it.
@compute @workgroup_size(ELEMENT_WORKGROUP)
fn grad_weights(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let k = flat_index(id, groups);
    let width = dims.inputs + 1u;
    if (k >= dims.outputs * width) {
        return;
    }
    let out = k / width;
    let i = k % width;
    var sum = 0.0;
    if (i < dims.inputs) {
        for (var row = 0u; row < dims.rows; row++) {
            sum += dz[row * dims.outputs + out] * x[row * dims.inputs + i];
        }
        dw[out * dims.inputs + i] = sum;
    } else {
        for (var row = 0u; row < dims.rows; row++) {
            sum += dz[row * dims.outputs + out];
        }
        db[out] = sum;
    }
}

// dX = dZ·W, times the previous layer's ReLU derivative: its output `x` is max(z, 0), so
// x > 0 exactly where z > 0 (torch's threshold_backward on the output).
@compute @workgroup_size(ELEMENT_WORKGROUP)
fn grad_input(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let k = flat_index(id, groups);
    if (k >= dims.rows * dims.inputs) {
        return;
    }
    if (x[k] <= 0.0) {
        dx[k] = 0.0;
        return;
    }
    let row = k / dims.inputs;
    let i = k % dims.inputs;
    var sum = 0.0;
    for (var out = 0u; out < dims.outputs; out++) {
        sum += dz[row * dims.outputs + out] * w[out * dims.inputs + i];
    }
    dx[k] = sum;
}
