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

// An L2 penalty λ/2·‖W‖² on one layer's weights (`inputs` elements; λ = bitcast<f32>(dims.rows)):
// adds λ·W to the weight gradient `dw` and λ/2·‖W‖² to the loss in metrics[0]. Recorded after
// the backward pass (which overwrote dw and the loss), once per layer, in one workgroup, so
// that the loss sums in a fixed order. L-BFGS's training loss; the biases take no penalty.
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;

@compute @workgroup_size(REDUCE_WORKGROUP)
fn l2_penalty(@builtin(local_invocation_index) t: u32) {
    let lambda = bitcast<f32>(dims.rows);
    var sum = 0.0;
    for (var i = t; i < dims.inputs; i += REDUCE_WORKGROUP) {
        let v = w[i];
        sum += v * v;
        dw[i] += lambda * v;
    }
    partial[t] = sum;
    reduce_partial(t);
    if (t == 0u) {
        metrics[0] += 0.5 * lambda * partial[0];
    }
}
