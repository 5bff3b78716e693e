// Newton's method on the 2-D test functions (src/trajectories/newton.rs), one invocation per
// start point; appended to shaders/functions.wgsl, whose grad_at, hessian_at and value_at it
// calls (and whose `function_id` picks the function). H = (a b; b c) = hessian_at(p).
//
// `newton`, plain Newton:
//   det = a c − b²;  s = max(|a|, |b|, |c|)
//   if |det| ≤ 1e-6 · s · s:  H is singular: the point stays (first_singular records the step)
//   else:                     p ← p − lr · H⁻¹ ∇f(p)               (Cramer's rule)
//
// `damped_newton`, Levenberg–Marquardt with a positive-definiteness shift; λ per start point
// (`damping`, initially the option `damping`):
//   λ_min = (a + c)/2 − sqrt(((a − c)/2)² + b²)                   H's smallest eigenvalue
//   δ = margin · s                                                 the margin, relative to H
//   μ = λ + max(0, δ − λ_min)                                      so H + μI ⪰ (λ + δ) I ≻ 0
//     diagonal of H + μI: if λ_min < δ: ((a − λ_min) + δ) + λ, ((c − λ_min) + δ) + λ
//                         else:         a + λ, c + λ
//     (H − λ_min·I first: no rounding of a large shift swamps a small λ + δ)
//   trial = p − lr · (H + μI)⁻¹ ∇f(p)
//   if f(trial) < f(p) and trial and f(trial) are finite:  p ← trial, λ ← max(λ · shrink, 1e-10)
//   else (rejected, p stays):                               λ ← min(λ · grow, 1e10)
//
// The CPU mirrors (newton_step and damped_newton_step in src/trajectories/newton.rs) follow
// these lines operation by operation.

override lr: f32 = 1.0;
override shrink: f32 = 0.33333334;
override grow: f32 = 2.0;
override margin: f32 = 0.001;

const NEWTON_WORKGROUP_SIZE: u32 = 256u;
// |det| ≤ SINGULAR · s² (s the largest entry): a condition number beyond about 1e6, where f32
// leaves no correct digit of the step.
const SINGULAR: f32 = 1e-6;
const MIN_DAMPING: f32 = 1e-10;
const MAX_DAMPING: f32 = 1e10;
// The largest finite f32 (3.40282347e38 is its rounded decimal, above it: Tint rejects it).
const F32_MAX: f32 = 3.4028234e38;

// Per start point: steps taken, the first step whose Hessian was singular (0: none; plain
// Newton), steps rejected (damped Newton), and λ (damped Newton).
struct NewtonState {
    step: u32,
    first_singular: u32,
    rejected: u32,
    damping: f32,
}

@group(0) @binding(3) var<storage, read_write> points: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> states: array<NewtonState>;

fn finite(v: f32) -> bool {
    return abs(v) <= F32_MAX;
}

fn largest_entry(h: vec3<f32>) -> f32 {
    return max(max(abs(h.x), abs(h.y)), abs(h.z));
}

// (a b; b c)⁻¹ g by Cramer's rule, det = a c − b².
fn solve(h: vec3<f32>, g: vec2<f32>, det: f32) -> vec2<f32> {
    return vec2<f32>((h.z * g.x - h.y * g.y) / det, (h.x * g.y - h.y * g.x) / det);
}

fn start_index(workgroup: vec3<u32>, grid: vec3<u32>, local: u32) -> u32 {
    return (workgroup.y * grid.x + workgroup.x) * NEWTON_WORKGROUP_SIZE + local;
}

@compute @workgroup_size(NEWTON_WORKGROUP_SIZE)
fn newton(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = start_index(workgroup, grid, local);
    if (i >= arrayLength(&points)) {
        return;
    }
    let p = points[i];
    var s = states[i];
    s.step = s.step + 1u;
    let g = grad_at(p);
    let h = hessian_at(p);
    let det = h.x * h.z - h.y * h.y;
    let scale = largest_entry(h);
    if (abs(det) <= SINGULAR * scale * scale) {
        if (s.first_singular == 0u) {
            s.first_singular = s.step;
        }
    } else {
        let d = solve(h, g, det);
        points[i] = vec2<f32>(p.x - lr * d.x, p.y - lr * d.y);
    }
    states[i] = s;
}

@compute @workgroup_size(NEWTON_WORKGROUP_SIZE)
fn damped_newton(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = start_index(workgroup, grid, local);
    if (i >= arrayLength(&points)) {
        return;
    }
    let p = points[i];
    var s = states[i];
    s.step = s.step + 1u;
    let f = value_at(p);
    let g = grad_at(p);
    let h = hessian_at(p);
    let mean = 0.5 * (h.x + h.z);
    let half = 0.5 * (h.x - h.z);
    let lowest = mean - sqrt(half * half + h.y * h.y);
    let delta = margin * largest_entry(h);
    var shifted = vec3<f32>(h.x + s.damping, h.y, h.z + s.damping);
    if (lowest < delta) {
        shifted = vec3<f32>(h.x - lowest + delta + s.damping, h.y, h.z - lowest + delta + s.damping);
    }
    let det = shifted.x * shifted.z - shifted.y * shifted.y;
    let d = solve(shifted, g, det);
    let trial = vec2<f32>(p.x - lr * d.x, p.y - lr * d.y);
    let f_trial = value_at(trial);
    if (f_trial < f && finite(trial.x) && finite(trial.y) && finite(f_trial)) {
        points[i] = trial;
        s.damping = max(s.damping * shrink, MIN_DAMPING);
    } else {
        s.rejected = s.rejected + 1u;
        s.damping = min(s.damping * grow, MAX_DAMPING);
    }
    states[i] = s;
}
