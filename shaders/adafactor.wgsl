// Adafactor: torch.optim.Adafactor (torch 2.15, _single_tensor_adafactor). Tensors of two or
// more dimensions keep factored second moments over their last two dimensions (row_var,
// col_var); vectors keep a full `variance`. Five passes:
//
//   moments      (every element)   partials: Σ p²  (for ‖p‖, before weight decay);
//                                  segments of ‖g_row‖² and ‖g_col‖²
//   factor       (per tensor)      alpha = max(eps2, ‖p‖ / sqrt(n)) * min(lr, 1/sqrt(t))
//                                  row_var = lerp(row_var, ‖g_row‖² / cols, t^beta2_decay)
//                                  col_var = lerp(col_var, ‖g_col‖² / rows, t^beta2_decay)
//                                  row_mean = max(mean over rows of row_var, eps1)
//   update_norm  (every element)   est = row_var*col_var / row_mean   (factored)
//                                  variance = lerp(variance, g*g, t^beta2_decay); est = variance
//                                  u = (1/sqrt(max(est, eps1²))) * g;   partials: Σ u²
//   step_size    (per tensor)      coefficient = -alpha / max(1, ‖u‖ / (sqrt(n)*d))
//   apply        (every element)   p = p*(1 - lr*wd) if wd != 0;  p = p + coefficient*u
//
// g = -g if maximize. A tensor's aux region holds its scalars (‖p‖, coefficient), then its
// state (row_var then col_var, or variance); its scratch holds row_mean per matrix, then the
// segment sums. The row and column sums run in the element pass, one segment of a row or of
// four columns per invocation of the tensor's chunks, so a large matrix spreads over many
// workgroups instead of one.

override maximize: bool = false;

struct AdafactorTerms {
    step: u32,
    beta2_t: f32,               // t^beta2_decay (torch's one_minus_beta2_t)
    rsqrt_t: f32,               // 1 / t^0.5
    _padding: f32,
}

// AdafactorTerms from its four words in the ring.
fn adafactor_terms(w: vec4<u32>) -> AdafactorTerms {
    return AdafactorTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct AdafactorScalars {
    terms: AdafactorTerms,
    lr: f32,
    eps1: f32,
    eps1_squared: f32,
    eps2: f32,
    d: f32,
    weight_decay: f32,
    decay_factor: f32,          // 1 - lr*wd
}

@group(0) @binding(0) var<uniform> scalars: AdafactorScalars;

fn terms_at(s: AdafactorScalars, step: u32) -> AdafactorTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return adafactor_terms(ring_terms(step));
}

// torch.lerp for one value.
fn lerp1(start: f32, end: f32, weight: f32) -> f32 {
    if (weight < 0.5) {
        return start + weight * (end - start);
    }
    return end - (end - start) * (1.0 - weight);
}

// The (conditioned, maximize-signed) gradients of the vec4 at window index i.
fn signed_gradient(i: u32, conditioning: Conditioning) -> vec4<f32> {
    let g = conditioned_gradient(grad[i], conditioning);
    return select(g, -g, maximize);
}

// The gradient of element e of the window.
fn gradient_at(e: u32, conditioning: Conditioning) -> f32 {
    return signed_gradient(e / 4u, conditioning)[e % 4u];
}

fn factored(tensor: Tensor) -> bool {
    return tensor.dims >= 2u;
}

// The second-moment estimates of the four elements from `first` (after this step's moments):
// the element's row and column, found once and then stepped, not divided out per element.
fn estimates(tensor: Tensor, first: u32) -> vec4<f32> {
    let state = tensor.aux + 4u;
    var est = vec4<f32>(0.0);
    if (!factored(tensor)) {
        for (var j = 0u; j < 4u; j++) {
            if (first + j < tensor.len) {
                est[j] = aux[state + first + j];
            }
        }
        return est;
    }
    let col_var = state + tensor.matrices * tensor.rows;
    var row = first / tensor.cols;              // b * rows + r: the index into row_var
    var c = first % tensor.cols;
    var r = row % tensor.rows;
    var b = row / tensor.rows;
    if (c + 4u <= tensor.cols) {
        // The common case: all four in one row.
        let row_value = aux[state + row];
        let row_mean = aux[tensor.scratch + b];
        let at = col_var + b * tensor.cols + c;
        let col_values = vec4<f32>(aux[at], aux[at + 1u], aux[at + 2u], aux[at + 3u]);
        return row_value * col_values / row_mean;
    }
    for (var j = 0u; j < 4u; j++) {
        if (first + j < tensor.len) {
            est[j] = aux[state + row] * aux[col_var + b * tensor.cols + c] / aux[tensor.scratch + b];
        }
        c += 1u;
        if (c == tensor.cols) {
            c = 0u;
            row += 1u;
            r += 1u;
            if (r == tensor.rows) {
                r = 0u;
                b += 1u;
            }
        }
    }
    return est;
}

fn update(s: AdafactorScalars, estimate: f32, g: f32) -> f32 {
    return (1.0 / sqrt(max(estimate, s.eps1_squared))) * g;
}

// The row and column sums of squared gradients are split into segments, summed in the element
// pass (one segment per invocation) and added segment by segment, in order, in the factor pass:
// a row's segments are 1,024 of its elements, a column's 256 of its rows.
const ROW_SEGMENT: u32 = 1024u;
const COLUMN_SEGMENT: u32 = 256u;

fn row_segments(tensor: Tensor) -> u32 {
    return (tensor.cols + ROW_SEGMENT - 1u) / ROW_SEGMENT;
}

fn column_segments(tensor: Tensor) -> u32 {
    return (tensor.rows + COLUMN_SEGMENT - 1u) / COLUMN_SEGMENT;
}

// Column groups of a matrix: four adjacent columns read as one vec4 per row where rows are
// whole vec4s (cols a multiple of 4), else single columns.
fn column_groups(tensor: Tensor) -> u32 {
    return select(tensor.cols, tensor.cols / 4u, tensor.cols % 4u == 0u);
}

// Where the segment sums go in the tensor's scratch (after row_mean, one per matrix): row q's
// segment k at rows + q*row_segments + k, column q's at columns + q*column_segments + k.
fn row_partials(tensor: Tensor) -> u32 {
    return tensor.scratch + tensor.matrices;
}

fn column_partials(tensor: Tensor) -> u32 {
    return row_partials(tensor) + tensor.matrices * tensor.rows * row_segments(tensor);
}

// One item of the moments pass: a row segment (items below matrices*rows*row_segments), else a
// column-group segment. Each segment adds its elements in order.
fn factor_item(tensor: Tensor, item: u32, conditioning: Conditioning) {
    let rows = tensor.rows;
    let cols = tensor.cols;
    let whole_vec4s = cols % 4u == 0u;
    let row_items = tensor.matrices * rows * row_segments(tensor);
    if (item < row_items) {
        let q = item / row_segments(tensor);
        let k = item % row_segments(tensor);
        let start = tensor.offset + q * cols + k * ROW_SEGMENT;
        let end = tensor.offset + q * cols + min(cols, (k + 1u) * ROW_SEGMENT);
        var sum = 0.0;
        if (whole_vec4s) {
            for (var v = start / 4u; v < end / 4u; v++) {
                let g = signed_gradient(v, conditioning);
                sum += g.x * g.x;
                sum += g.y * g.y;
                sum += g.z * g.z;
                sum += g.w * g.w;
            }
        } else {
            for (var e = start; e < end; e++) {
                let g = gradient_at(e, conditioning);
                sum += g * g;
            }
        }
        aux[row_partials(tensor) + item] = sum;
        return;
    }
    let segments = column_segments(tensor);
    let group = (item - row_items) / segments;   // over all matrices
    let k = (item - row_items) % segments;
    let groups = column_groups(tensor);
    let b = group / groups;
    let matrix = tensor.offset + b * rows * cols;
    let first_row = k * COLUMN_SEGMENT;
    let last_row = min(rows, first_row + COLUMN_SEGMENT);
    if (whole_vec4s) {
        let c = (group % groups) * 4u;
        var sum = vec4<f32>(0.0);
        for (var r = first_row; r < last_row; r++) {
            let g = signed_gradient((matrix + r * cols + c) / 4u, conditioning);
            sum += g * g;
        }
        let column = b * cols + c;
        for (var j = 0u; j < 4u; j++) {
            aux[column_partials(tensor) + (column + j) * segments + k] = sum[j];
        }
        return;
    }
    let c = group % groups;
    var sum = 0.0;
    for (var r = first_row; r < last_row; r++) {
        let g = gradient_at(matrix + r * cols + c, conditioning);
        sum += g * g;
    }
    aux[column_partials(tensor) + (b * cols + c) * segments + k] = sum;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn moments(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms and the tensor table first (see common.wgsl); outside the window they mean nothing.
    let s = scalars;
    let conditioning = gradient_conditioning();
    let site = element_site(workgroup, grid, local);
    let step = tensor_step(workgroup_tensor(workgroup, grid));
    let t = terms_at(s, step);
    if (!in_window(workgroup, grid) || !step_applies(t.step, step)) {
        return;
    }
    let tensor = site.tensor;
    var p_sq = 0.0;
    if (site.first < tensor.len) {
        let p = param[site.i];
        for (var j = 0u; j < 4u; j++) {
            if (site.first + j < tensor.len) {
                p_sq += p[j] * p[j];
            }
        }
    }
    if (factored(tensor)) {
        // Invocation q of the tensor's chunks takes items q, q + invocations, ...
        let invocations = (tensor.len + CHUNK_ELEMENTS - 1u) / CHUNK_ELEMENTS * WORKGROUP_SIZE;
        let items = tensor.matrices * (tensor.rows * row_segments(tensor) + column_groups(tensor) * column_segments(tensor));
        for (var q = site.first / 4u; q < items; q += invocations) {
            factor_item(tensor, q, conditioning);
        }
    }
    let total = workgroup_sum(local, vec4<f32>(p_sq, 0.0, 0.0, 0.0));
    if (local == 0u) {
        write_partials(site.chunk, total);
    }
}

// A second moment from its sum's segments, added in order: lerp(moment, ‖g‖² / count, beta2_t).
fn update_moment(at: u32, partials: u32, segments: u32, count: u32, beta2_t: f32) {
    var sum = 0.0;
    for (var k = 0u; k < segments; k++) {
        sum += aux[partials + k];
    }
    let norm = sqrt(sum);
    aux[at] = lerp1(aux[at], norm * norm / f32(count), beta2_t);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn factor(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms first (see common.wgsl).
    let s = scalars;
    let k = workgroup_index(workgroup, grid);
    if (k >= dispatch.tensor_count) {
        return;
    }
    let index = dispatch_tensor(k);
    let step = tensor_step(index);
    let t = terms_at(s, step);
    if (!step_applies(t.step, step)) {
        return;
    }
    let tensor = tensor_at(index);
    let p_norm = sqrt(tensor_sum(local, tensor).x);
    if (local == 0u) {
        aux[tensor.aux] = p_norm;
    }
    if (!factored(tensor)) {
        return;
    }
    let rows = tensor.rows;
    let cols = tensor.cols;
    let row_var = tensor.aux + 4u;
    let col_var = row_var + tensor.matrices * rows;
    let row_segs = row_segments(tensor);
    let column_segs = column_segments(tensor);
    for (var q = local; q < tensor.matrices * rows; q += WORKGROUP_SIZE) {
        update_moment(row_var + q, row_partials(tensor) + q * row_segs, row_segs, cols, t.beta2_t);
    }
    for (var q = local; q < tensor.matrices * cols; q += WORKGROUP_SIZE) {
        update_moment(col_var + q, column_partials(tensor) + q * column_segs, column_segs, rows, t.beta2_t);
    }
    storageBarrier();
    workgroupBarrier();
    for (var b = local; b < tensor.matrices; b += WORKGROUP_SIZE) {
        var sum = 0.0;
        for (var r = 0u; r < rows; r++) {
            sum += aux[row_var + b * rows + r];
        }
        aux[tensor.scratch + b] = max(sum / f32(rows), s.eps1);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn update_norm(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms and the tensor table first (see common.wgsl); outside the window they mean nothing.
    let s = scalars;
    let conditioning = gradient_conditioning();
    let site = element_site(workgroup, grid, local);
    let step = tensor_step(workgroup_tensor(workgroup, grid));
    let t = terms_at(s, step);
    if (!in_window(workgroup, grid) || !step_applies(t.step, step)) {
        return;
    }
    let tensor = site.tensor;
    var u_sq = 0.0;
    if (site.first < tensor.len) {
        let g = signed_gradient(site.i, conditioning);
        if (!factored(tensor)) {
            for (var j = 0u; j < 4u; j++) {
                let at = tensor.aux + 4u + site.first + j;
                if (site.first + j < tensor.len) {
                    aux[at] = lerp1(aux[at], g[j] * g[j], t.beta2_t);
                }
            }
        }
        let est = estimates(tensor, site.first);
        for (var j = 0u; j < 4u; j++) {
            if (site.first + j < tensor.len) {
                let u = update(s, est[j], g[j]);
                u_sq += u * u;
            }
        }
    }
    let total = workgroup_sum(local, vec4<f32>(u_sq, 0.0, 0.0, 0.0));
    if (local == 0u) {
        write_partials(site.chunk, total);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn step_size(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms first (see common.wgsl).
    let s = scalars;
    let k = workgroup_index(workgroup, grid);
    if (k >= dispatch.tensor_count) {
        return;
    }
    let index = dispatch_tensor(k);
    let step = tensor_step(index);
    let t = terms_at(s, step);
    if (!step_applies(t.step, step)) {
        return;
    }
    let tensor = tensor_at(index);
    let u_norm = sqrt(tensor_sum(local, tensor).x);
    if (local != 0u) {
        return;
    }
    let sqrt_n = sqrt(f32(tensor.len));
    let rho = min(s.lr, t.rsqrt_t);
    let alpha = max(s.eps2, aux[tensor.aux] / sqrt_n) * rho;
    let denom = max(1.0, u_norm / (sqrt_n * s.d));
    aux[tensor.aux + 1u] = -alpha / denom;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn apply(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms and the tensor table first (see common.wgsl); outside the window they mean nothing.
    let s = scalars;
    let conditioning = gradient_conditioning();
    let site = element_site(workgroup, grid, local);
    let step = tensor_step(workgroup_tensor(workgroup, grid));
    let coefficient = aux[site.tensor.aux + 1u];
    if (!in_window(workgroup, grid) || !step_applies(terms_at(s, step).step, step)) {
        return;
    }
    let tensor = site.tensor;
    let first = site.first;
    if (first >= tensor.len) {
        return;
    }
    let i = site.i;
    let g = signed_gradient(i, conditioning);
    var p = param[i];
    if (s.weight_decay != 0.0) {
        p = p * s.decay_factor;
    }
    let est = estimates(tensor, first);
    for (var j = 0u; j < 4u; j++) {
        if (first + j < tensor.len) {
            p[j] = p[j] + coefficient * update(s, est[j], g[j]);
        }
    }
    param[i] = p;
}
