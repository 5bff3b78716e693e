// Gathers one minibatch from the training set in the order the host chose.

@group(0) @binding(1) var<storage, read> samples: array<f32>;        // samples × (inputs + 1), label last
@group(0) @binding(2) var<storage, read> batch_index: array<u32>;    // rows: which samples
@group(0) @binding(3) var<storage, read_write> x: array<f32>;        // rows × inputs
@group(0) @binding(4) var<storage, read_write> labels: array<u32>;   // rows

@compute @workgroup_size(ELEMENT_WORKGROUP)
fn gather(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let k = flat_index(id, groups);
    let width = dims.inputs + 1u;
    if (k >= dims.rows * width) {
        return;
    }
    let row = k / width;
    let column = k % width;
    let value = samples[batch_index[row] * width + column];
    if (column < dims.inputs) {
        x[row * dims.inputs + column] = value;
    } else {
        labels[row] = u32(value);
    }
}
