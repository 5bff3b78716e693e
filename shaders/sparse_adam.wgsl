// SparseAdam: torch.optim.SparseAdam (torch 2.15, _functional.sparse_adam). Only the rows the
// gradient touches this step are updated; a tensor's row mask (one u32 per row, non-zero:
// touched) lies in aux at tensor.row_mask. A row is a row of the last dimension, or one element
// of a vector.
//
//   update     (every element of a touched row)
//     g = -g                                      if maximize
//     m_update = (g - m)*(1 - beta1);   m = m + m_update
//     v_update = (g*g - v)*(1 - beta2); v = v + v_update
//     p = p + (-step_size) * ((m_update + m_old) / (sqrt(v_update + v_old) + eps))
//   clear_rows (per tensor): the mask is consumed, every row set untouched
// step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t), in f64 on the CPU.

override maximize: bool = false;

// What depends on the step number t.
struct SparseAdamTerms {
    step: u32,
    neg_step_size: f32,
    _padding0: u32,
    _padding1: u32,
}

// SparseAdamTerms from its four words in the ring.
fn sparse_adam_terms(w: vec4<u32>) -> SparseAdamTerms {
    return SparseAdamTerms(w.x, bitcast<f32>(w.y), w.z, w.w);
}

struct SparseAdamScalars {
    terms: SparseAdamTerms,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    _padding: f32,
}

@group(0) @binding(0) var<uniform> scalars: SparseAdamScalars;
@group(0) @binding(6) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step, or for a tensor that missed steps).
fn terms_at(s: SparseAdamScalars, step: u32) -> SparseAdamTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return sparse_adam_terms(ring_terms(step));
}

// The elements of a row: the last dimension's length, or 1 for a vector.
fn row_length(tensor: Tensor) -> u32 {
    if (tensor.dims < 2u) {
        return 1u;
    }
    return tensor.cols;
}

fn row_touched(tensor: Tensor, row: u32) -> bool {
    return bitcast<u32>(aux[tensor.row_mask + row]) != 0u;
}

// Which of the four elements from `first` on lie in touched rows: one division and at most
// two mask reads when rows hold 4 or more elements (a vec4 then spans at most two rows).
fn lanes_touched(tensor: Tensor, first: u32) -> vec4<bool> {
    let length = row_length(tensor);
    let lanes = first + vec4<u32>(0u, 1u, 2u, 3u);
    let inside = lanes < vec4<u32>(tensor.len);
    if (length < 4u) {
        let rows = lanes / length;
        return inside & vec4<bool>(
            row_touched(tensor, rows.x), inside.y && row_touched(tensor, rows.y),
            inside.z && row_touched(tensor, rows.z), inside.w && row_touched(tensor, rows.w),
        );
    }
    let row = first / length;
    let in_next_row = lanes - vec4<u32>(row * length) >= vec4<u32>(length);
    let this_row = row_touched(tensor, row);
    var next_row = false;
    if (any(in_next_row) && (row + 1u) * length < tensor.len) {
        next_row = row_touched(tensor, row + 1u);
    }
    return inside & select(vec4<bool>(this_row), vec4<bool>(next_row), in_next_row);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn update(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms first (see common.wgsl).
    let s = scalars;
    if (!in_window(workgroup, grid)) {
        return;
    }
    let site = element_site(workgroup, grid, local);
    let step = tensor_step(workgroup_tensor(workgroup, grid));
    let t = terms_at(s, step);
    if (!step_applies(t.step, step)) {
        return;
    }
    let tensor = site.tensor;
    if (site.first >= tensor.len) {
        return;
    }
    let touched = lanes_touched(tensor, site.first);
    if (!any(touched)) {
        return;
    }
    let i = site.i;
    var g = grad[i];
    if (maximize) {
        g = -g;
    }
    let m_old = exp_avg[i];
    let v_old = exp_avg_sq[i];
    let m_update = (g - m_old) * s.one_minus_beta1;
    let v_update = (g * g - v_old) * s.one_minus_beta2;
    let numer = m_update + m_old;
    let denom = sqrt(v_update + v_old) + s.eps;
    let p = param[i];
    exp_avg[i] = select(m_old, m_old + m_update, touched);
    exp_avg_sq[i] = select(v_old, v_old + v_update, touched);
    param[i] = select(p, p + t.neg_step_size * (numer / denom), touched);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn clear_rows(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let k = workgroup_index(workgroup, grid);
    if (k >= dispatch.tensor_count) {
        return;
    }
    let tensor = tensor_at(dispatch_tensor(k));
    let rows = tensor.len / row_length(tensor);
    for (var r = local; r < rows; r += WORKGROUP_SIZE) {
        aux[tensor.row_mask + r] = 0.0;
    }
}
