// Newton's step on the GPU (src/newton.rs): solve (H + λI)·p = g by Gaussian elimination,
// then x ← x_saved − lr·p.
//
//   prepare          W = H + λI, b = g                               one thread per entry
//   pivot(k)         partial pivoting: swap row k with the row of max|W[i][k]|, i ≥ k (plain
//                    Newton); without it (damped), only the pivot is checked; the smallest
//                    pivot is kept in `status`: every pivot of an elimination without row
//                    swaps is positive exactly when H + λI is positive definite
//   eliminate(k)     W[i][j] −= (W[i][k] / W[k][k])·W[k][j],  b[i] −= (W[i][k] / W[k][k])·b[k]
//                    for i > k, j > k
//   back_substitute  p_k = b_k / W[k][k], then b_i −= W[i][k]·p_k for i < k, k = n−1 … 0
//   update           x = x_saved − lr·p
//
// The CPU twin (src/newton.rs, `solve_reference`) performs the same operations in the same order.

struct Step {
    n: u32,
    k: u32,
    pivoting: u32,
    _pad: u32,
}

struct Scalars {
    lambda: f32,
    lr: f32,
}

// status: the smallest pivot and the smallest |pivot|.
@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
@group(0) @binding(3) var<storage, read> hessian: array<f32>;
@group(0) @binding(4) var<storage, read> grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> status: array<f32>;
@group(0) @binding(6) var<storage, read_write> x: array<f32>;
@group(0) @binding(7) var<storage, read> saved: array<f32>;
@group(0) @binding(8) var<storage, read> scalars: Scalars;

const TILE: u32 = 16u;
const WORKGROUP: u32 = 256u;

@compute @workgroup_size(16, 16)
fn prepare(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.y;
    let j = id.x;
    let n = step.n;
    if i >= n || j >= n {
        return;
    }
    var value = hessian[i * n + j];
    if i == j {
        value = value + scalars.lambda;
        b[i] = grad[i];
    }
    w[i * n + j] = value;
    if i == 0u && j == 0u {
        status[0] = 3.4028235e38;
        status[1] = 3.4028235e38;
    }
}

var<workgroup> best_value: array<f32, 256>;
var<workgroup> best_row: array<u32, 256>;

@compute @workgroup_size(256)
fn pivot(@builtin(local_invocation_index) lid: u32) {
    let n = step.n;
    let k = step.k;
    if step.pivoting != 0u {
        // argmax |W[i][k]| over i ≥ k, the lowest row on ties.
        var value = -1.0;
        var row = k;
        for (var i = k + lid; i < n; i = i + WORKGROUP) {
            let a = abs(w[i * n + k]);
            if a > value {
                value = a;
                row = i;
            }
        }
        best_value[lid] = value;
        best_row[lid] = row;
        workgroupBarrier();
        for (var stride = WORKGROUP / 2u; stride > 0u; stride = stride / 2u) {
            if lid < stride {
                let other = best_value[lid + stride];
                let other_row = best_row[lid + stride];
                if other > best_value[lid] || (other == best_value[lid] && other_row < best_row[lid]) {
                    best_value[lid] = other;
                    best_row[lid] = other_row;
                }
            }
            workgroupBarrier();
        }
        let p = best_row[0];
        if p != k {
            for (var j = lid; j < n; j = j + WORKGROUP) {
                let t = w[k * n + j];
                w[k * n + j] = w[p * n + j];
                w[p * n + j] = t;
            }
            if lid == 0u {
                let t = b[k];
                b[k] = b[p];
                b[p] = t;
            }
        }
        storageBarrier();
    }
    if lid == 0u {
        let pivot_value = w[k * n + k];
        status[0] = min(status[0], pivot_value);
        status[1] = min(status[1], abs(pivot_value));
    }
}

@compute @workgroup_size(16, 16)
fn eliminate(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = step.n;
    let k = step.k;
    let i = k + 1u + id.y;
    let j = k + id.x;
    if i >= n || j >= n {
        return;
    }
    let l = w[i * n + k] / w[k * n + k];
    if j == k {
        b[i] = b[i] - l * b[k];
    } else {
        w[i * n + j] = w[i * n + j] - l * w[k * n + j];
    }
}

var<workgroup> solved: f32;

@compute @workgroup_size(256)
fn back_substitute(@builtin(local_invocation_index) lid: u32) {
    let n = step.n;
    for (var k = n; k > 0u; k = k - 1u) {
        let kk = k - 1u;
        if lid == 0u {
            solved = b[kk] / w[kk * n + kk];
            b[kk] = solved;
        }
        workgroupBarrier();
        let p = solved;
        for (var i = lid; i < kk; i = i + WORKGROUP) {
            b[i] = b[i] - w[i * n + kk] * p;
        }
        storageBarrier();
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn update(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i >= step.n {
        return;
    }
    x[i] = saved[i] - scalars.lr * b[i];
}
