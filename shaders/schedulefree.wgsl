// Schedule-Free AdamW: schedulefree 1.4.1's AdamWScheduleFree (Defazio et al., 2024). The
// parameters hold y while training and x while evaluating; z is the base sequence.
//
//   main (every element; in train mode, p = y)
//     z = p                                         at the first step (the reference clones p)
//     v = v*beta2 + (1 - beta2)*g*g                 (exp_avg_sq)
//     u = g / (sqrt(v / (1 - beta2^t)) + eps)
//     u = u + wd*y                                  if wd != 0 (decay at y)
//     y = lerp(y, z, ckp1)
//     y = y + lr_t*(beta1*(1 - ckp1) - 1) * u
//     z = z - lr_t*u
//   switch_mode, to eval:  p = lerp(p, z, 1 - 1/beta1)    (y to x)
//   switch_mode, to train: p = lerp(p, z, 1 - beta1)      (x to y)
// lr_t is the warmed-up lr, ckp1 = weight_t / sum of weights (src/rules/schedulefree.rs); the
// switches' weights come in dispatch.args. The gradient is first conditioned when the
// optimizer does so.

// What depends on the step number t and the lr history.
struct ScheduleFreeTerms {
    step: u32,
    ckp1: f32,                  // weight_t / weight_sum
    lr: f32,                    // lr * min(1, t / warmup_steps)
    bias_correction2: f32,      // 1 - beta2^t
}

fn schedulefree_terms(w: vec4<u32>) -> ScheduleFreeTerms {
    return ScheduleFreeTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct ScheduleFreeScalars {
    terms: ScheduleFreeTerms,
    beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
}

@group(0) @binding(0) var<uniform> scalars: ScheduleFreeScalars;
@group(0) @binding(6) var<storage, read_write> z: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step, or for a tensor that missed steps).
fn terms_at(s: ScheduleFreeScalars, step: u32) -> ScheduleFreeTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return schedulefree_terms(ring_terms(step));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms first (see common.wgsl).
    let s = scalars;
    let step = element_group_step(workgroup, grid);
    let t = terms_at(s, step);
    let conditioning = gradient_conditioning();
    // The tensor's first step creates its state (its group's step may be later; it has a
    // gradient here, so its lag is the steps it missed).
    let first_step = group_step() - element_lag(workgroup, grid) == 1u;
    let i = vec4_index(workgroup, grid, local);
    if (i >= arrayLength(&param) || !step_applies(t.step, step)) {
        return;
    }
    let y = param[i];
    let g = conditioned_gradient(grad[i], conditioning);
    var base = z[i];
    if (first_step) {
        base = y;
    }
    let v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * g * g;
    exp_avg_sq[i] = v;
    var u = g / (sqrt(v / t.bias_correction2) + s.eps);
    if (s.weight_decay != 0.0) {
        u = u + s.weight_decay * y;
    }
    let y_coefficient = t.lr * (s.beta1 * (1.0 - t.ckp1) - 1.0);
    param[i] = torch_lerp(y, base, t.ckp1) + y_coefficient * u;
    z[i] = base - t.lr * u;
}

// Moves the parameters toward z: to_eval (y to x) and to_train (x to y) differ only in the
// weight, dispatch.args[0].x. Nothing moves before the first step has created z.
@compute @workgroup_size(WORKGROUP_SIZE)
fn switch_mode(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = vec4_index(workgroup, grid, local);
    if (i >= arrayLength(&param) || element_steps_taken(workgroup, grid) == 0u) {
        return;
    }
    param[i] = torch_lerp(param[i], z[i], bitcast<f32>(dispatch.args[0].x));
}
