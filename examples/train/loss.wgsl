// Softmax cross-entropy over `outputs` classes, mean over `rows` (torch's F.cross_entropy),
// in one workgroup: each invocation takes rows t, t + 256, ... and the partial sums are reduced
// in a fixed order, so the loss is deterministic.

@group(0) @binding(1) var<storage, read> logits: array<f32>;        // rows × outputs
@group(0) @binding(2) var<storage, read> labels: array<u32>;        // rows
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>; // rows × outputs
@group(0) @binding(4) var<storage, read_write> metrics: array<f32>; // [mean loss, correct] (see entry points)

// Largest logit of a row (for a stable softmax) and its first index (torch.argmax's tie rule).
fn row_max(base: u32) -> vec2<f32> {
    var best = logits[base];
    var at = 0u;
    for (var c = 1u; c < dims.outputs; c++) {
        if (logits[base + c] > best) {
            best = logits[base + c];
            at = c;
        }
    }
    return vec2<f32>(best, f32(at));
}

fn row_sum_exp(base: u32, m: f32) -> f32 {
    var s = 0.0;
    for (var c = 0u; c < dims.outputs; c++) {
        s += exp(logits[base + c] - m);
    }
    return s;
}

// Training: metrics[0] = mean loss; dlogits = (softmax - onehot) / rows, the gradient of the
// mean loss, which the last layer's backward pass reads.
@compute @workgroup_size(REDUCE_WORKGROUP)
fn cross_entropy(@builtin(local_invocation_index) t: u32) {
    let scale = 1.0 / f32(dims.rows);
    var total = 0.0;
    for (var row = t; row < dims.rows; row += REDUCE_WORKGROUP) {
        let base = row * dims.outputs;
        let m = row_max(base).x;
        let s = row_sum_exp(base, m);
        let label = labels[row];
        total += log(s) + m - logits[base + label];
        for (var c = 0u; c < dims.outputs; c++) {
            let p = exp(logits[base + c] - m) / s;
            dlogits[base + c] = (p - select(0.0, 1.0, c == label)) * scale;
        }
    }
    partial[t] = total;
    reduce_partial(t);
    if (t == 0u) {
        metrics[0] = partial[0] * scale;
    }
}

// Evaluation: metrics[0] = mean loss, metrics[1] = number of rows whose argmax is the label.
@compute @workgroup_size(REDUCE_WORKGROUP)
fn evaluate(@builtin(local_invocation_index) t: u32) {
    var total = 0.0;
    var correct = 0.0;
    for (var row = t; row < dims.rows; row += REDUCE_WORKGROUP) {
        let base = row * dims.outputs;
        let best = row_max(base);
        let label = labels[row];
        total += log(row_sum_exp(base, best.x)) + best.x - logits[base + label];
        correct += select(0.0, 1.0, u32(best.y) == label);
    }
    partial[t] = total;
    reduce_partial(t);
    let loss = partial[0];
    workgroupBarrier();
    partial[t] = correct;
    reduce_partial(t);
    if (t == 0u) {
        metrics[0] = loss / f32(dims.rows);
        metrics[1] = partial[0];
    }
}
