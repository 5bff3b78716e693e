// Adan: the authors' adan.Adan (sail-sg/Adan, _single_tensor_adan).
//
//   neg_pre_grad = -g                                 at t = 1
//   n = neg_pre_grad + g
//   m = m*beta1 + (1 - beta1)*g
//   d = d*beta2 + (1 - beta2)*n
//   n = n*beta2 + g
//   v = v*beta3 + ((1 - beta3)*n)*n
//   denom = sqrt(v) / sqrt(1 - beta3^t) + eps
//   p = p*(1 - lr*wd)                                 if no_prox
//   p = p + (-lr/bc1)*(m/denom);  p = p + (-(lr*beta2)/bc2)*(d/denom)
//   p = p / (1 + lr*wd)                               if not no_prox
//   neg_pre_grad = -g
// The bias corrections are computed on the CPU in f64.

override no_prox: bool = false;

struct AdanTerms {
    step: u32,
    bias_correction1: f32,      // 1 - beta1^t
    bias_correction2: f32,      // 1 - beta2^t
    bias_correction3_sqrt: f32, // sqrt(1 - beta3^t)
}

fn adan_terms(w: vec4<u32>) -> AdanTerms {
    return AdanTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct AdanScalars {
    terms: AdanTerms,
    lr: f32,
    lr_beta2: f32,              // lr*beta2
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    beta3: f32,
    one_minus_beta3: f32,
    eps: f32,
    decay_factor: f32,          // 1 - lr*wd
    prox_divisor: f32,          // 1 + lr*wd
}

@group(0) @binding(0) var<uniform> scalars: AdanScalars;
@group(0) @binding(6) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> exp_avg_diff: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> neg_pre_grad: array<vec4<f32>>;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step, or for a tensor that missed steps).
fn terms_at(s: AdanScalars, step: u32) -> AdanTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return adan_terms(ring_terms(step));
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
    let g = conditioned_gradient(grad[i], conditioning);
    var pre = neg_pre_grad[i];
    if (first_step) {
        pre = -g;
    }
    var n = pre + g;
    let m = exp_avg[i] * s.beta1 + s.one_minus_beta1 * g;
    let d = exp_avg_diff[i] * s.beta2 + s.one_minus_beta2 * n;
    n = n * s.beta2 + g;
    let v = exp_avg_sq[i] * s.beta3 + s.one_minus_beta3 * n * n;
    exp_avg[i] = m;
    exp_avg_diff[i] = d;
    exp_avg_sq[i] = v;
    let denom = sqrt(v) / t.bias_correction3_sqrt + s.eps;
    let step_size = s.lr / t.bias_correction1;
    let step_size_diff = s.lr_beta2 / t.bias_correction2;
    var p = param[i];
    if (no_prox) {
        p = p * s.decay_factor;
        p = p + (-step_size) * (m / denom);
        p = p + (-step_size_diff) * (d / denom);
    } else {
        p = p + (-step_size) * (m / denom);
        p = p + (-step_size_diff) * (d / denom);
        p = p / s.prox_divisor;
    }
    param[i] = p;
    neg_pre_grad[i] = -g;
}
