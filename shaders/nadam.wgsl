// NAdam: torch.optim.NAdam (Adam with Nesterov momentum and momentum decay).
//
//   g = -g                                       if maximize
//   p = p * (1 - lr*wd)                          if wd != 0 and decoupled
//   g = g + wd*p                                 if wd != 0 and not decoupled
//   mu_t = beta1*(1 - 0.5*0.96^(t*psi));  mu_prod_t = mu_prod_{t-1}*mu_t     (on the CPU)
//   m = lerp(m, g, 1 - beta1)
//   v = v*beta2 + (1 - beta2)*g*g
//   denom = sqrt(v / (1 - beta2^t)) + eps
//   p = p + (-(lr * ((1 - mu_t)/(1 - mu_prod_t)))) * g / denom
//   p = p + (-(lr * (mu_{t+1}/(1 - mu_prod_t*mu_{t+1})))) * m / denom

override maximize: bool = false;
override decoupled_weight_decay: bool = false;

struct NadamTerms {
    step: u32,
    bias_correction2: f32,      // 1 - beta2^t
    grad_ratio: f32,            // (1 - mu_t)/(1 - mu_prod_t)
    exp_avg_ratio: f32,         // mu_{t+1}/(1 - mu_prod_t*mu_{t+1})
}

// NadamTerms from its four words in the ring.
fn nadam_terms(w: vec4<u32>) -> NadamTerms {
    return NadamTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct NadamScalars {
    terms: NadamTerms,
    lr: f32,
    weight_decay: f32,
    decay_factor: f32,          // 1 - lr*wd
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> scalars: NadamScalars;
@group(0) @binding(6) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step, or for a tensor that missed steps).
fn terms_at(s: NadamScalars, step: u32) -> NadamTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return nadam_terms(ring_terms(step));
}

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
    let denom = sqrt(v / t.bias_correction2) + s.eps;
    let grad_coefficient = -(s.lr * t.grad_ratio);
    let exp_avg_coefficient = -(s.lr * t.exp_avg_ratio);
    p = p + grad_coefficient * g / denom;
    param[i] = p + exp_avg_coefficient * m / denom;
}
