// Squared L2 norm of one layer's parameters (weights `inputs` elements, bias `outputs`),
// written to or added to metrics[1]; the host runs it per layer after the optimizer step.

@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> metrics: array<f32>;

@compute @workgroup_size(REDUCE_WORKGROUP)
fn param_norm(@builtin(local_invocation_index) t: u32) {
    var sum = 0.0;
    for (var i = t; i < dims.inputs; i += REDUCE_WORKGROUP) {
        sum += w[i] * w[i];
    }
    for (var i = t; i < dims.outputs; i += REDUCE_WORKGROUP) {
        sum += b[i] * b[i];
    }
    partial[t] = sum;
    reduce_partial(t);
    if (t == 0u) {
        metrics[1] = select(0.0, metrics[1], dims.flag != 0u) + partial[0];
    }
}
