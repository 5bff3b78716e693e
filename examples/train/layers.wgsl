// A fully connected layer y = relu?(x·Wᵀ + b), W stored [outputs, inputs] as torch's nn.Linear,
// and its backward pass. One invocation per output element; the sums run in index order.
// Each entry point uses only some of these bindings (its pipeline layout has just those).

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;          // rows × inputs: the layer's input
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;          // outputs × inputs
@group(0) @binding(3) var<storage, read> b: array<f32>;          // outputs
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // rows × outputs
@group(0) @binding(5) var<storage, read> dz: array<f32>;         // rows × outputs: dloss/d(x·Wᵀ + b)
@group(0) @binding(6) var<storage, read_write> dw: array<f32>;   // outputs × inputs
@group(0) @binding(7) var<storage, read_write> db: array<f32>;   // outputs
@group(0) @binding(8) var<storage, read_write> dx: array<f32>;   // rows × inputs

@compute @workgroup_size(ELEMENT_WORKGROUP)
fn forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let k = flat_index(id, groups);
    let inputs = dims.inputs;
    let outputs = dims.outputs;
    if (k >= dims.rows * outputs) {
        return;
    }
    let x0 = (k / outputs) * inputs / 4u;
    let w0 = (k % outputs) * inputs / 4u;
    var acc = vec4<f32>();
    for (var i = 0u; i < inputs / 4u; i++) {
        acc += x[x0 + i] * w[w0 + i];
    }
    let sum = acc.x + acc.y + acc.z + acc.w;
    var z = sum + b[k % outputs];
    if (dims.flag != 0u) {
        z = max(z, 0.0);
    }
    y[k] = z;
}

@compute @workgroup_size(ELEMENT_WORKGROUP)
fn grad_weights(@builtin(global_invocation_id) id: vec3<u32>) { dw[0] = dz[0] + x[0].x + f32(dims.rows); db[0] = 0.0; }
@compute @workgroup_size(ELEMENT_WORKGROUP)
fn grad_input(@builtin(global_invocation_id) id: vec3<u32>) { dx[0] = dz[0] + x[0].x + w[0].x + f32(dims.rows); }
