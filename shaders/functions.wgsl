// 2-D test functions for optimizer trajectories (src/trajectories.rs): the gradient of
// f(x, y) at each of N points, written where the optimizer reads its gradients (`main`); the
// value and gradient at one point, written where L-BFGS's closure writes them
// (`value_and_gradient`); and, for Newton's method (shaders/newton.wgsl, appended to this
// file), the value and the analytic Hessian (`value_at`, `hessian_at`).
//
//   0 rosenbrock       (1 - x)^2 + 100 (y - x^2)^2                       min (1, 1)
//   1 beale            (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2   min (3, 0.5)
//   2 himmelblau       (x^2 + y - 11)^2 + (x + y^2 - 7)^2                four minima
//   3 rastrigin        20 + x^2 - 10 cos(2 pi x) + y^2 - 10 cos(2 pi y)  min (0, 0)
//   4 saddle           x^2 - y^2                                         no minimum
//   5 ill_conditioned  0.5 (x^2 + 100 y^2)                               min (0, 0)
//   6 booth            (x + 2y - 7)^2 + (2x + y - 5)^2                   min (1, 3)
//
// The CPU mirrors (TestFunction::gradient_f32, value_f32 and hessian_f32 in
// src/trajectories.rs) follow these lines operation by operation.

override function_id: u32 = 0u;
// vec2s from one start point to the next: 1 when the starts are rows of one tensor, the
// tensors' alignment when each start is a tensor of its own (rules that work per tensor).
override stride: u32 = 1u;

const GRAD_WORKGROUP_SIZE: u32 = 256u;
const TWO_PI: f32 = 6.283185307179586;

// Positions: the optimizer's parameter tensor, (x, y) pairs. Gradients: its gradient tensor.
// Loss: where L-BFGS's closure writes f (`value_and_gradient` only).
@group(0) @binding(0) var<storage, read> position: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read_write> gradient: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;

fn rosenbrock(x: f32, y: f32) -> vec2<f32> {
    let r = y - x * x;
    return vec2<f32>(-2.0 * (1.0 - x) - 400.0 * x * r, 200.0 * r);
}

fn beale(x: f32, y: f32) -> vec2<f32> {
    let y2 = y * y;
    let y3 = y2 * y;
    let a = 1.5 - x + x * y;
    let b = 2.25 - x + x * y2;
    let c = 2.625 - x + x * y3;
    let dx = 2.0 * a * (y - 1.0) + 2.0 * b * (y2 - 1.0) + 2.0 * c * (y3 - 1.0);
    let dy = 2.0 * a * x + 4.0 * b * x * y + 6.0 * c * x * y2;
    return vec2<f32>(dx, dy);
}

fn himmelblau(x: f32, y: f32) -> vec2<f32> {
    let a = x * x + y - 11.0;
    let b = x + y * y - 7.0;
    return vec2<f32>(4.0 * x * a + 2.0 * b, 2.0 * a + 4.0 * y * b);
}

fn rastrigin(x: f32, y: f32) -> vec2<f32> {
    return vec2<f32>(2.0 * x + 10.0 * TWO_PI * sin(TWO_PI * x), 2.0 * y + 10.0 * TWO_PI * sin(TWO_PI * y));
}

fn saddle(x: f32, y: f32) -> vec2<f32> {
    return vec2<f32>(2.0 * x, -2.0 * y);
}

fn ill_conditioned(x: f32, y: f32) -> vec2<f32> {
    return vec2<f32>(x, 100.0 * y);
}

fn booth(x: f32, y: f32) -> vec2<f32> {
    let a = x + 2.0 * y - 7.0;
    let b = 2.0 * x + y - 5.0;
    return vec2<f32>(2.0 * a + 4.0 * b, 4.0 * a + 2.0 * b);
}

// ---- values, in f32 ----

fn rosenbrock_value(x: f32, y: f32) -> f32 {
    let a = 1.0 - x;
    let r = y - x * x;
    return (100.0 * r) * r + a * a;
}

fn beale_value(x: f32, y: f32) -> f32 {
    let y2 = y * y;
    let a = 1.5 - x + x * y;
    let b = 2.25 - x + x * y2;
    let c = 2.625 - x + x * (y2 * y);
    return a * a + b * b + c * c;
}

fn himmelblau_value(x: f32, y: f32) -> f32 {
    let a = x * x + y - 11.0;
    let b = x + y * y - 7.0;
    return a * a + b * b;
}

fn rastrigin_value(x: f32, y: f32) -> f32 {
    return 20.0 + x * x - 10.0 * cos(TWO_PI * x) + y * y - 10.0 * cos(TWO_PI * y);
}

fn saddle_value(x: f32, y: f32) -> f32 {
    return x * x - y * y;
}

fn ill_conditioned_value(x: f32, y: f32) -> f32 {
    return 0.5 * (x * x + 100.0 * y * y);
}

fn booth_value(x: f32, y: f32) -> f32 {
    let a = x + 2.0 * y - 7.0;
    let b = 2.0 * x + y - 5.0;
    return a * a + b * b;
}

// ---- Hessians: (f_xx, f_xy, f_yy) ----

fn rosenbrock_hessian(x: f32, y: f32) -> vec3<f32> {
    let r = y - x * x;
    return vec3<f32>(2.0 - 400.0 * r + 800.0 * x * x, -400.0 * x, 200.0);
}

fn beale_hessian(x: f32, y: f32) -> vec3<f32> {
    let y2 = y * y;
    let y3 = y2 * y;
    let a = 1.5 - x + x * y;
    let b = 2.25 - x + x * y2;
    let c = 2.625 - x + x * y3;
    // First derivatives of the three residuals.
    let ax = y - 1.0;
    let bx = y2 - 1.0;
    let cx = y3 - 1.0;
    let ay = x;
    let by = 2.0 * x * y;
    let cy = 3.0 * x * y2;
    let xx = 2.0 * (ax * ax + bx * bx + cx * cx);
    let xy = 2.0 * (ay * ax + a) + 2.0 * (by * bx + 2.0 * y * b) + 2.0 * (cy * cx + 3.0 * y2 * c);
    let yy = 2.0 * (ay * ay) + 2.0 * (by * by + 2.0 * x * b) + 2.0 * (cy * cy + 6.0 * x * y * c);
    return vec3<f32>(xx, xy, yy);
}

fn himmelblau_hessian(x: f32, y: f32) -> vec3<f32> {
    let a = x * x + y - 11.0;
    let b = x + y * y - 7.0;
    return vec3<f32>(4.0 * a + 8.0 * x * x + 2.0, 4.0 * (x + y), 2.0 + 4.0 * b + 8.0 * y * y);
}

fn rastrigin_hessian(x: f32, y: f32) -> vec3<f32> {
    let k = 10.0 * TWO_PI * TWO_PI;
    return vec3<f32>(2.0 + k * cos(TWO_PI * x), 0.0, 2.0 + k * cos(TWO_PI * y));
}

fn saddle_hessian(x: f32, y: f32) -> vec3<f32> {
    return vec3<f32>(2.0, 0.0, -2.0);
}

fn ill_conditioned_hessian(x: f32, y: f32) -> vec3<f32> {
    return vec3<f32>(1.0, 0.0, 100.0);
}

fn booth_hessian(x: f32, y: f32) -> vec3<f32> {
    return vec3<f32>(10.0, 8.0, 10.0);
}

fn value_at(p: vec2<f32>) -> f32 {
    switch function_id {
        case 0u: { return rosenbrock_value(p.x, p.y); }
        case 1u: { return beale_value(p.x, p.y); }
        case 2u: { return himmelblau_value(p.x, p.y); }
        case 3u: { return rastrigin_value(p.x, p.y); }
        case 4u: { return saddle_value(p.x, p.y); }
        case 5u: { return ill_conditioned_value(p.x, p.y); }
        default: { return booth_value(p.x, p.y); }
    }
}

fn hessian_at(p: vec2<f32>) -> vec3<f32> {
    switch function_id {
        case 0u: { return rosenbrock_hessian(p.x, p.y); }
        case 1u: { return beale_hessian(p.x, p.y); }
        case 2u: { return himmelblau_hessian(p.x, p.y); }
        case 3u: { return rastrigin_hessian(p.x, p.y); }
        case 4u: { return saddle_hessian(p.x, p.y); }
        case 5u: { return ill_conditioned_hessian(p.x, p.y); }
        default: { return booth_hessian(p.x, p.y); }
    }
}

fn grad_at(p: vec2<f32>) -> vec2<f32> {
    switch function_id {
        case 0u: { return rosenbrock(p.x, p.y); }
        case 1u: { return beale(p.x, p.y); }
        case 2u: { return himmelblau(p.x, p.y); }
        case 3u: { return rastrigin(p.x, p.y); }
        case 4u: { return saddle(p.x, p.y); }
        case 5u: { return ill_conditioned(p.x, p.y); }
        default: { return booth(p.x, p.y); }
    }
}

@compute @workgroup_size(GRAD_WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = ((workgroup.y * grid.x + workgroup.x) * GRAD_WORKGROUP_SIZE + local) * stride;
    if (i >= arrayLength(&position)) {
        return;
    }
    gradient[i] = grad_at(position[i]);
}

// L-BFGS's closure (src/trajectories/lbfgs.rs): f and its gradient at one start point, the
// 2-element parameter tensor of that start's own L-BFGS.
@compute @workgroup_size(1)
fn value_and_gradient() {
    let p = position[0];
    gradient[0] = grad_at(p);
    loss[0] = value_at(p);
}
