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
// Products (args[1].x).
const GRAM: u32 = 0u;       // A = X Xᵀ: m x m, inner n
const UPDATE: u32 = 1u;     // A A: m x m, inner m
const COMBINE: u32 = 2u;    // B X: m x n, inner m

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
    let norm = in_precision(sqrt(workgroup_sum_to_all(local, vec4<f32>(sum, 0.0, 0.0, 0.0)).x));
    let scale = in_precision(max(norm, s.eps));
    for (var q = local; q < count; q += WORKGROUP_SIZE) {
        aux[x + q] = in_precision(aux[x + q] / scale);
    }
}

// One product of the iteration: out = alpha * (left @ right) + beta * add, rows x cols, summed
// over `inner`. The left factor is row-major (rows x inner); the right one is read as
// right(k, col) = aux[right + k * k_stride + col * col_stride], so the Gram matrix's Xᵀ is X
// read with its strides swapped.
struct Product {
    rows: u32,
    cols: u32,
    inner: u32,
    left: u32,
    right: u32,
    k_stride: u32,
    col_stride: u32,
    out: u32,
    add: u32,
    has_add: bool,
    alpha: f32,
    beta: f32,
}

// The product of a matmul pass: args[0]: out, left, right, add regions; args[1]: product,
// alpha, beta (f32 bits).
fn product_of(mat: Matrix, args: array<vec4<u32>, 2>) -> Product {
    let regions = args[0];
    var p = Product(mat.m, mat.m, mat.m, region(mat, regions.y), region(mat, regions.z), mat.m, 1u,
                    region(mat, regions.x), region(mat, regions.w), regions.w != NONE, bitcast<f32>(args[1].y), bitcast<f32>(args[1].z));
    switch (args[1].x) {
        case GRAM: {            // Xᵀ: X read with its strides swapped
            p.inner = mat.n;
            p.k_stride = 1u;
            p.col_stride = mat.n;
        }
        case UPDATE: {}
        default: {              // COMBINE
            p.cols = mat.n;
            p.k_stride = mat.n;
        }
    }
    return p;
}

// Writes output (row, col) from its sum of products.
fn finish(p: Product, row: u32, col: u32, sum: f32) {
    let at = row * p.cols + col;
    var value = p.alpha * sum;
    if (p.has_add) {
        value = value + p.beta * aux[p.add + at];
    }
    aux[p.out + at] = in_precision(value);
}

// A matmul workgroup computes a 64 x 64 tile of the output (the grid's x and y). Every output
// sums its products in index order, as the CPU reference does. A GPU runs 256 invocations of
// 4 x 4 outputs on factors staged in workgroup memory (`matmul_tiles`). On a CPU adapter
// (llvmpipe) every storage or workgroup access inside a loop is a scalar load per lane, so
// staging saves nothing and the cost is the loads per product: 16 invocations of 16 x 16
// outputs read both factors straight from storage, 32 loads per 256 products where the tiles
// take 8 per 16 (`matmul_blocks`; BENCHMARKS.md, "Muon's products on a CPU adapter").
override matmul_invocations: u32 = select(256u, 16u, cpu_adapter);

@compute @workgroup_size(matmul_invocations)
fn matmul(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms and the tensor table first (see common.wgsl).
    let mat = matrix_at(workgroup.z);
    let p = product_of(mat, dispatch.args);
    if (!applies_to(scalars, workgroup.z)) {
        return;
    }
    if (cpu_adapter) {
        matmul_blocks(p, workgroup.y * 64u + (local / 4u) * 16u, workgroup.x * 64u + (local % 4u) * 16u);
    } else {
        matmul_tiles(p, workgroup.y * 64u, workgroup.x * 64u, local);
    }
}

var<workgroup> left_tile: array<array<f32, 16>, 64>;     // 64 rows x 16 of the inner dimension
var<workgroup> right_tile: array<array<f32, 64>, 16>;    // 16 of the inner dimension x 64 columns

// The tile from (tile_row, tile_col): the workgroup stages 16-deep slices of both factors in
// workgroup memory, and each invocation accumulates a 4 x 4 block in registers.
fn matmul_tiles(p: Product, tile_row: u32, tile_col: u32, local: u32) {
    let ty = local / 16u;
    let tx = local % 16u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.inner; k0 += 16u) {
        // 1,024 values of each factor, four per invocation; past the edges, zeros.
        for (var j = 0u; j < 4u; j++) {
            let at = local * 4u + j;
            let l_row = tile_row + at / 16u;
            let l_k = k0 + at % 16u;
            var l = 0.0;
            if (l_row < p.rows && l_k < p.inner) {
                l = aux[p.left + l_row * p.inner + l_k];
            }
            left_tile[at / 16u][at % 16u] = l;
            let r_k = k0 + at / 64u;
            let r_col = tile_col + at % 64u;
            var r = 0.0;
            if (r_k < p.inner && r_col < p.cols) {
                r = aux[p.right + r_k * p.k_stride + r_col * p.col_stride];
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
    for (var q = 0u; q < 4u; q++) {
        for (var c = 0u; c < 4u; c++) {
            let row = tile_row + ty * 4u + q;
            let col = tile_col + tx * 4u + c;
            if (row < p.rows && col < p.cols) {
                finish(p, row, col, acc[q][c]);
            }
        }
    }
}

// Rows row..row+3 of the left factor at k; rows past the last read the last (no branch in the
// loop: llvmpipe would run both sides' loads).
fn left_column(p: Product, row: u32, k: u32) -> vec4<f32> {
    let last = p.rows - 1u;
    let at = p.left + k;
    return vec4<f32>(aux[at + min(row, last) * p.inner], aux[at + min(row + 1u, last) * p.inner],
                     aux[at + min(row + 2u, last) * p.inner], aux[at + min(row + 3u, last) * p.inner]);
}

// Columns col..col+3 of the right factor at k; columns past the last read the last.
fn right_row(p: Product, k: u32, col: u32) -> vec4<f32> {
    let last = p.cols - 1u;
    let at = p.right + k * p.k_stride;
    return vec4<f32>(aux[at + min(col, last) * p.col_stride], aux[at + min(col + 1u, last) * p.col_stride],
                     aux[at + min(col + 2u, last) * p.col_stride], aux[at + min(col + 3u, last) * p.col_stride]);
}

// The products of a 4 x 4 block at one k: row i of the block is r * l[i].
fn outer(l: vec4<f32>, r: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(r * l.x, r * l.y, r * l.z, r * l.w);
}

// The 16 x 16 block from (row, col), as 4 x 4 blocks: acc_ab holds rows row + 4a.. and
// columns col + 4b... The accumulators are named variables: an array of them indexed in the
// loop stays in memory on llvmpipe (3x slower).
fn matmul_blocks(p: Product, row: u32, col: u32) {
    var acc00: mat4x4<f32>; var acc01: mat4x4<f32>; var acc02: mat4x4<f32>; var acc03: mat4x4<f32>;
    var acc10: mat4x4<f32>; var acc11: mat4x4<f32>; var acc12: mat4x4<f32>; var acc13: mat4x4<f32>;
    var acc20: mat4x4<f32>; var acc21: mat4x4<f32>; var acc22: mat4x4<f32>; var acc23: mat4x4<f32>;
    var acc30: mat4x4<f32>; var acc31: mat4x4<f32>; var acc32: mat4x4<f32>; var acc33: mat4x4<f32>;
    for (var k = 0u; k < p.inner; k++) {
        var l: array<vec4<f32>, 4>;
        var r: array<vec4<f32>, 4>;
        for (var b = 0u; b < 4u; b++) {
            l[b] = left_column(p, row + 4u * b, k);
            r[b] = right_row(p, k, col + 4u * b);
        }
        acc00 += outer(l[0], r[0]); acc01 += outer(l[0], r[1]); acc02 += outer(l[0], r[2]); acc03 += outer(l[0], r[3]);
        acc10 += outer(l[1], r[0]); acc11 += outer(l[1], r[1]); acc12 += outer(l[1], r[2]); acc13 += outer(l[1], r[3]);
        acc20 += outer(l[2], r[0]); acc21 += outer(l[2], r[1]); acc22 += outer(l[2], r[2]); acc23 += outer(l[2], r[3]);
        acc30 += outer(l[3], r[0]); acc31 += outer(l[3], r[1]); acc32 += outer(l[3], r[2]); acc33 += outer(l[3], r[3]);
    }
    // A `var`: a `let` array indexed in a loop is copied whole at every index on llvmpipe.
    var blocks = array<mat4x4<f32>, 16>(acc00, acc01, acc02, acc03, acc10, acc11, acc12, acc13,
                                        acc20, acc21, acc22, acc23, acc30, acc31, acc32, acc33);
    for (var a = 0u; a < 4u; a++) {
        for (var b = 0u; b < 4u; b++) {
            for (var i = 0u; i < 4u; i++) {
                for (var c = 0u; c < 4u; c++) {
                    if (row + 4u * a + i < p.rows && col + 4u * b + c < p.cols) {
                        finish(p, row + 4u * a + i, col + 4u * b + c, blocks[a * 4u + b][i][c]);
                    }
                }
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
