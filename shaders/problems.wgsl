// The built-in problems of `wgpu-optim minimize`: loss and gradient at x, in float32, in the
// operation order of tests/golden/minimize/generate.py.
//
//   rosenbrock  a_i = x_{i+1} − x_i²,  b_i = 1 − x_i          (i < N−1)
//               loss = Σ (100·a_i)·a_i + b_i·b_i
//               g_i  = (−400·x_i)·a_i − 2·b_i  [i < N−1]  +  200·a_{i−1}  [i > 0]
//   quadratic   loss = Σ ((0.5·c_i)·x_i)·x_i,   g_i = c_i·x_i,   c_i = 1000^(i/(N−1))
//
// `hessian` writes the Hessian's nonzero entries (row-major n × n; the rest must be zero):
//   rosenbrock  H_ii = ((1200·x_i)·x_i − 400·x_{i+1}) + 2 [i < N−1]  +  200 [i > 0]
//               H_{i,i+1} = H_{i+1,i} = −400·x_i
//   quadratic   H_ii = c_i
//
// `hessian_times_direction` writes product = H·direction from the same entries, row i as
//   (H_ii·v_i + H_{i,i+1}·v_{i+1}) + H_{i,i−1}·v_{i−1}.
//
// `evaluate` writes the gradient and reduces the loss terms per block of 1,024 elements
// (each invocation adds its four terms in order, then a halving tree); `total` adds the blocks
// (src/problems.rs mirrors both on the CPU).

override problem: u32;        // 0: rosenbrock, 1: quadratic
const ROSENBROCK: u32 = 0u;

struct Shape {
    dim: u32,
    blocks: u32,
    grid_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;
@group(0) @binding(3) var<storage, read> curvature: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> hessian: array<f32>;
@group(0) @binding(7) var<storage, read> direction: array<f32>;
@group(0) @binding(8) var<storage, read_write> product: array<f32>;

const WORKGROUP: u32 = 256u;
var<workgroup> reduced: array<f32, 256>;

fn workgroup_sum(lid: u32, value: f32) -> f32 {
    reduced[lid] = value;
    workgroupBarrier();
    for (var stride = WORKGROUP / 2u; stride > 0u; stride = stride / 2u) {
        if lid < stride {
            reduced[lid] = reduced[lid] + reduced[lid + stride];
        }
        workgroupBarrier();
    }
    return reduced[0];
}

// The loss term of element i (0 where it has none) and its gradient.
fn term_and_gradient(i: u32) -> vec2<f32> {
    let n = shape.dim;
    if problem == ROSENBROCK {
        var term = 0.0;
        var g = 0.0;
        if i + 1u < n {
            let a = x[i + 1u] - x[i] * x[i];
            let b = 1.0 - x[i];
            term = (100.0 * a) * a + b * b;
            g = (-400.0 * x[i]) * a - 2.0 * b;
        }
        if i > 0u {
            let a = x[i] - x[i - 1u] * x[i - 1u];
            g = g + 200.0 * a;
        }
        return vec2<f32>(term, g);
    }
    let c = curvature[i];
    return vec2<f32>(((0.5 * c) * x[i]) * x[i], c * x[i]);
}

@compute @workgroup_size(256)
fn evaluate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let block = wid.x + wid.y * shape.grid_x;
    if block >= shape.blocks {
        return;
    }
    var terms = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k = k + 1u) {
        let i = 4u * (block * WORKGROUP + lid) + k;
        if i < shape.dim {
            let tg = term_and_gradient(i);
            terms[k] = tg.x;
            grad[i] = tg.y;
        }
    }
    let total = workgroup_sum(lid, ((terms.x + terms.y) + terms.z) + terms.w);
    if lid == 0u {
        partials[block] = total;
    }
}

@compute @workgroup_size(256)
fn total(@builtin(local_invocation_index) lid: u32) {
    var value = 0.0;
    for (var b = lid; b < shape.blocks; b = b + WORKGROUP) {
        value = value + partials[b];
    }
    let sum = workgroup_sum(lid, value);
    if lid == 0u {
        loss[0] = sum;
    }
}

@compute @workgroup_size(256)
fn hessian_rows(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let n = shape.dim;
    if i >= n {
        return;
    }
    hessian[i * n + i] = hessian_entry(i, i);
    if problem == ROSENBROCK {
        if i + 1u < n {
            hessian[i * n + i + 1u] = hessian_entry(i, i + 1u);
        }
        if i > 0u {
            hessian[i * n + i - 1u] = hessian_entry(i, i - 1u);
        }
    }
}

// The Hessian's entry (i, j), |i − j| ≤ 1.
fn hessian_entry(i: u32, j: u32) -> f32 {
    let n = shape.dim;
    if problem != ROSENBROCK {
        return select(0.0, curvature[i], i == j);
    }
    if i == j {
        var diagonal = 0.0;
        if i + 1u < n {
            diagonal = ((1200.0 * x[i]) * x[i] - 400.0 * x[i + 1u]) + 2.0;
        }
        if i > 0u {
            diagonal = diagonal + 200.0;
        }
        return diagonal;
    }
    return -400.0 * x[min(i, j)];
}

@compute @workgroup_size(256)
fn hessian_times_direction(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * (65535u * WORKGROUP);
    let n = shape.dim;
    if i >= n {
        return;
    }
    var value = hessian_entry(i, i) * direction[i];
    if problem == ROSENBROCK {
        if i + 1u < n {
            value = value + hessian_entry(i, i + 1u) * direction[i + 1u];
        }
        if i > 0u {
            value = value + hessian_entry(i, i - 1u) * direction[i - 1u];
        }
    }
    product[i] = value;
}
