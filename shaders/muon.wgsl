// Muon: torch.optim.Muon (torch 2.15, _single_tensor_muon). Every pass runs over batches of
// same-shape matrices (grid z: the matrix in its batch). An m x n matrix (m <= n; a tall
// parameter is transposed) has scratch [norm | X | Y | A | B]: X and Y the iterates (m x n,
// taking turns), A the Gram matrix and B its polynomial (m x m).
//
//   momentum   buf = lerp(buf, g, 1 - momentum)
//              X = lerp(g, buf, momentum) if nesterov, else buf      (transposed if rows > cols)
//   normalize  X = X / max(‖X‖, eps)
//   ns_steps times:
//     gram     A = X Xᵀ
//     update   B = b*A + c*(A A)
//     combine  Y = a*X + B X;  X, Y swap
//   apply      p = p*(1 - lr*wd);  p = p + (-lr*ratio) * X(ᵀ)   ratio from adjust_lr_fn and the shape
//
// With `bfloat16` (torch's own precision) X is rounded to bfloat16 where torch's bfloat16
// tensors are: the input, the norm, the normalized X and every product's result; products
// accumulate in f32 as torch's CPU kernels do. Without it everything is f32.

override nesterov: bool = true;
override bfloat16: bool = true;

struct MuonTerms {
    step: u32,
    _padding0: f32,
    _padding1: f32,
    _padding2: f32,
}

// MuonTerms from its four words in the ring.
fn muon_terms(w: vec4<u32>) -> MuonTerms {
    return MuonTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct MuonScalars {
    terms: MuonTerms,
    lr: f32,
    decay_factor: f32,          // 1 - lr*wd
    momentum: f32,
    one_minus_momentum: f32,
    a: f32,
    b: f32,
    c: f32,
    eps: f32,
    adjust: u32,                // 0: "original", 1: "match_rms_adamw", 2: "spectral_unclamped"
}

@group(0) @binding(0) var<uniform> scalars: MuonScalars;
@group(0) @binding(6) var<storage, read_write> momentum_buffer: array<vec4<f32>>;

// Scratch regions (the words of a matmul pass's args).
const X: u32 = 0u;
const Y: u32 = 1u;
const A: u32 = 2u;
const B: u32 = 3u;
const NONE: u32 = 4u;
// Products (args[1].x): the output's shape and the inner dimension.
const GRAM: u32 = 0u;       // m x m, inner n, the right factor is the left one transposed
const UPDATE: u32 = 1u;     // m x m, inner m
const COMBINE: u32 = 2u;    // m x n, inner m

// Whether the matrix of grid layer z is updated this step.
fn applies_to(s: MuonScalars, z: u32) -> bool {
    let step = tensor_step(dispatch_tensor(z));
    if (s.terms.step == step) {
        return step_applies(s.terms.step, step);
    }
    return step_applies(muon_terms(ring_terms(step)).step, step);
}

// bfloat16 rounding (to nearest, ties to even), as torch converts float to bfloat16.
fn round_bf16(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) {
        return x;
    }
    return bitcast<f32>((bits + 0x7fffu + ((bits >> 16u) & 1u)) & 0xffff0000u);
}

fn in_precision(x: f32) -> f32 {
    if (bfloat16) {
        return round_bf16(x);
    }
    return x;
}

struct Matrix {
    tensor: Tensor,
    m: u32,
    n: u32,
    transposed: bool,
}

fn matrix_at(z: u32) -> Matrix {
    let tensor = tensor_at(dispatch_tensor(z));
    let transposed = tensor.rows > tensor.cols;
    return Matrix(tensor, min(tensor.rows, tensor.cols), max(tensor.rows, tensor.cols), transposed);
}

// The first element of a scratch region.
fn region(mat: Matrix, which: u32) -> u32 {
    let base = mat.tensor.scratch + 4u;
    let mn = mat.m * mat.n;
    switch (which) {
        case 0u: { return base; }
        case 1u: { return base + mn; }
        case 2u: { return base + 2u * mn; }
        default: { return base + 2u * mn + mat.m * mat.m; }
    }
}

// Element e (row-major over the parameter's rows x cols) in X's layout.
fn iterate_index(mat: Matrix, e: u32) -> u32 {
    if (mat.transposed) {
        let r = e / mat.tensor.cols;
        let c = e % mat.tensor.cols;
        return c * mat.tensor.rows + r;
    }
    return e;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn momentum(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms and the tensor table first (see common.wgsl).
    let s = scalars;
    let conditioning = gradient_conditioning();
    let mat = matrix_at(workgroup.z);
    let applies = applies_to(s, workgroup.z);
    let q = workgroup_index(workgroup, grid) * WORKGROUP_SIZE + local;
    if (q * 4u >= mat.tensor.len || !applies) {
        return;
    }
    let i = mat.tensor.offset / 4u + q;
    let g = conditioned_gradient(grad[i], conditioning);
    let buf = torch_lerp(momentum_buffer[i], g, s.one_minus_momentum);
    momentum_buffer[i] = buf;
    var update = buf;
    if (nesterov) {
        update = torch_lerp(g, buf, s.momentum);
    }
    let x = region(mat, X);
    for (var j = 0u; j < 4u; j++) {
        let e = q * 4u + j;
        if (e < mat.tensor.len) {
            aux[x + iterate_index(mat, e)] = in_precision(update[j]);
        }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn normalize(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms first (see common.wgsl).
    let s = scalars;
    if (!applies_to(s, workgroup.z)) {
        return;
    }
    let mat = matrix_at(workgroup.z);
    let x = region(mat, X);
    let count = mat.m * mat.n;
    var sum = 0.0;
    for (var q = local; q < count; q += WORKGROUP_SIZE) {
        sum += aux[x + q] * aux[x + q];
    }
    let norm = in_precision(sqrt(workgroup_sum(local, vec4<f32>(sum, 0.0, 0.0, 0.0)).x));
    let scale = in_precision(max(norm, s.eps));
    for (var q = local; q < count; q += WORKGROUP_SIZE) {
        aux[x + q] = in_precision(aux[x + q] / scale);
    }
}

var<workgroup> left_tile: array<array<f32, 16>, 64>;     // 64 rows x 16 of the inner dimension
var<workgroup> right_tile: array<array<f32, 64>, 16>;    // 16 of the inner dimension x 64 columns

// out = alpha * (left @ right) + beta * add, in 64 x 64 output tiles (the grid's x and y): the
// workgroup stages 16-deep slices of both factors in workgroup memory, and each invocation
// accumulates a 4 x 4 block in registers. Every output sums its products in index order, as the
// CPU reference does. args[0]: out, left, right, add regions; args[1]: product, alpha, beta
// (f32 bits).
@compute @workgroup_size(WORKGROUP_SIZE)
fn matmul(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms and the tensor table first (see common.wgsl).
    let mat = matrix_at(workgroup.z);
    let regions = dispatch.args[0];
    let product = dispatch.args[1].x;
    let alpha = bitcast<f32>(dispatch.args[1].y);
    let beta = bitcast<f32>(dispatch.args[1].z);
    if (!applies_to(scalars, workgroup.z)) {
        return;
    }
    let m = mat.m;
    var cols = mat.m;            // of the output
    var inner = mat.m;
    var left_stride = mat.m;     // row length of the left factor
    var right_stride = mat.n;    // row length of the right factor's storage
    if (product == GRAM) {
        inner = mat.n;
        left_stride = mat.n;
    } else if (product == UPDATE) {
        right_stride = mat.m;
    } else {
        cols = mat.n;
    }
    let left = region(mat, regions.y);
    let right = region(mat, regions.z);
    let tile_row = workgroup.y * 64u;
    let tile_col = workgroup.x * 64u;
    let ty = local / 16u;
    let tx = local % 16u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < inner; k0 += 16u) {
        // 1,024 values of each factor, four per invocation; past the edges, zeros.
        for (var j = 0u; j < 4u; j++) {
            let at = local * 4u + j;
            let l_row = at / 16u;
            let l_k = k0 + at % 16u;
            var l = 0.0;
            if (tile_row + l_row < m && l_k < inner) {
                l = aux[left + (tile_row + l_row) * left_stride + l_k];
            }
            left_tile[l_row][at % 16u] = l;
            let r_k = k0 + at / 64u;
            let r_col = tile_col + at % 64u;
            var r = 0.0;
            if (r_k < inner && r_col < cols) {
                if (product == GRAM) {
                    r = aux[right + r_col * right_stride + r_k];     // Xᵀ[k][col] = X[col][k]
                } else {
                    r = aux[right + r_k * right_stride + r_col];
                }
            }
            right_tile[at / 64u][at % 64u] = r;
        }
        workgroupBarrier();
        for (var k = 0u; k < 16u; k++) {
            let r = vec4<f32>(right_tile[k][tx * 4u], right_tile[k][tx * 4u + 1u], right_tile[k][tx * 4u + 2u], right_tile[k][tx * 4u + 3u]);
            for (var q = 0u; q < 4u; q++) {
                acc[q] += left_tile[ty * 4u + q][k] * r;
            }
        }
        workgroupBarrier();
    }
    let out = region(mat, regions.x);
    let add = region(mat, regions.w);
    for (var q = 0u; q < 4u; q++) {
        for (var c = 0u; c < 4u; c++) {
            let row = tile_row + ty * 4u + q;
            let col = tile_col + tx * 4u + c;
            if (row < m && col < cols) {
                var value = alpha * acc[q][c];
                if (regions.w != NONE) {
                    value = value + beta * aux[add + row * cols + col];
                }
                aux[out + row * cols + col] = in_precision(value);
            }
        }
    }
}

// lr scaled for the shape (torch's _adjust_lr, on A x B = rows x cols).
fn adjusted_lr(s: MuonScalars, tensor: Tensor) -> f32 {
    let rows = f32(tensor.rows);
    let cols = f32(tensor.cols);
    switch (s.adjust) {
        case 1u: { return s.lr * (0.2 * sqrt(max(rows, cols))); }
        case 2u: { return s.lr * sqrt(rows / cols); }
        default: { return s.lr * sqrt(max(1.0, rows / cols)); }
    }
}

// args[0].x: the region holding the orthogonalized update.
@compute @workgroup_size(WORKGROUP_SIZE)
fn apply(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms and the tensor table first (see common.wgsl).
    let s = scalars;
    let mat = matrix_at(workgroup.z);
    let applies = applies_to(s, workgroup.z);
    let result = region(mat, dispatch.args[0].x);
    let step_size = -adjusted_lr(s, mat.tensor);
    let q = workgroup_index(workgroup, grid) * WORKGROUP_SIZE + local;
    if (q * 4u >= mat.tensor.len || !applies) {
        return;
    }
    let i = mat.tensor.offset / 4u + q;
    var p = param[i] * s.decay_factor;
    for (var j = 0u; j < 4u; j++) {
        let e = q * 4u + j;
        if (e < mat.tensor.len) {
            p[j] = p[j] + step_size * aux[result + iterate_index(mat, e)];
        }
    }
    param[i] = p;
}
