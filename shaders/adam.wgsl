// Adam and AdamW: torch.optim.Adam and torch.optim.AdamW (= Adam, decoupled_weight_decay=True).
//
//   g = -g                                       if maximize
//   p = p * (1 - lr*wd)                          if wd != 0 and decoupled (AdamW)
//   g = g + wd*p                                 if wd != 0 and not decoupled (Adam + L2)
//   m = lerp(m, g, 1 - beta1)
//   v = v*beta2 + (1 - beta2)*g*g
//   v_max = max(v_max, v); v_hat = v_max         if amsgrad, else v_hat = v
//   p = p + (-(lr / (1 - beta1^t))) * m / (sqrt(v_hat) / sqrt(1 - beta2^t) + eps)
// The gradient is first conditioned (unscaled, clipped) when the optimizer does so.

override maximize: bool = false;
override amsgrad: bool = false;
override decoupled_weight_decay: bool = false;

// What depends on the step number t.
struct AdamTerms {
    step: u32,
    bias_correction1: f32,      // 1 - beta1^t
    bias_correction2_sqrt: f32, // sqrt(1 - beta2^t)
    _padding: f32,
}

// AdamTerms from its four words in the ring.
fn adam_terms(w: vec4<u32>) -> AdamTerms {
    return AdamTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct AdamScalars {
    terms: AdamTerms,
    lr: f32,
    weight_decay: f32,
    decay_factor: f32,          // 1 - lr*wd
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> scalars: AdamScalars;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step, or for a tensor that missed steps).
fn terms_at(s: AdamScalars, step: u32) -> AdamTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return adam_terms(ring_terms(step));
}
@group(0) @binding(6) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> max_exp_avg_sq: array<vec4<f32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms first (see common.wgsl).
    let s = scalars;
    let step = element_step(workgroup, grid);
    let t = terms_at(s, step);
    let conditioning = gradient_conditioning();
    let i = vec4_index(workgroup, grid, local);
    if (i >= arrayLength(&param) || !step_applies(t.step, step)) {
        return;
    }
    var p = param[i];
    var g = conditioned_gradient(grad[i], conditioning);
    if (maximize) {
        g = -g;
    }
    if (s.weight_decay != 0.0) {
        if (decoupled_weight_decay) {
            p = p * s.decay_factor;
        } else {
            g = g + s.weight_decay * p;
        }
    }
    let m = torch_lerp(exp_avg[i], g, s.one_minus_beta1);
    let v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    var v_hat = v;
    if (amsgrad) {
        v_hat = max(max_exp_avg_sq[i], v);
        max_exp_avg_sq[i] = v_hat;
    }
    let denom = sqrt(v_hat) / t.bias_correction2_sqrt + s.eps;
    let neg_step_size = -(s.lr / t.bias_correction1);
    param[i] = p + neg_step_size * m / denom;
}
