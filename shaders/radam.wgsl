// RAdam: torch.optim.RAdam (Adam with the variance rectification).
//
//   g = -g                                       if maximize
//   p = p * (1 - lr*wd)                          if wd != 0 and decoupled
//   g = g + wd*p                                 if wd != 0 and not decoupled
//   m = lerp(m, g, 1 - beta1)
//   v = v*beta2 + (1 - beta2)*g*g
//   m_hat = m / (1 - beta1^t)
//   p = p - ((m_hat*lr) * ((1/(sqrt(v) + eps)) * sqrt(1 - beta2^t))) * rect    if rect > 0 (rho_t > 5)
//   p = p - m_hat*lr                                                           otherwise
// rect (0 when rho_t <= 5) and the bias corrections are computed on the CPU in f64.

override maximize: bool = false;
override decoupled_weight_decay: bool = false;

// What depends on the step number t.
struct RadamTerms {
    step: u32,
    bias_correction1: f32,      // 1 - beta1^t
    bias_correction2_sqrt: f32, // sqrt(1 - beta2^t)
    rect: f32,                  // the rectification term, 0 when rho_t <= 5 (no rectification)
}

// RadamTerms from its four words in the ring.
fn radam_terms(w: vec4<u32>) -> RadamTerms {
    return RadamTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct RadamScalars {
    terms: RadamTerms,
    lr: f32,
    weight_decay: f32,
    decay_factor: f32,          // 1 - lr*wd
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> scalars: RadamScalars;
@group(0) @binding(6) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step, or for a tensor that missed steps).
fn terms_at(s: RadamScalars, step: u32) -> RadamTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return radam_terms(ring_terms(step));
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
    let m_hat = m / t.bias_correction1;
    if (t.rect > 0.0) {
        let adaptive = (1.0 / (sqrt(v) + s.eps)) * t.bias_correction2_sqrt;
        param[i] = p - m_hat * s.lr * adaptive * t.rect;
    } else {
        param[i] = p - m_hat * s.lr;
    }
}
