// Adamax: torch.optim.Adamax (Adam with the infinity norm).
//
//   g = -g                                       if maximize
//   g = g + wd*p                                 if wd != 0
//   m = lerp(m, g, 1 - beta1)
//   u = max(u*beta2, |g| + eps)                  (torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps)))
//   p = p + (-(lr / (1 - beta1^t))) * m / u
// The gradient is first conditioned (unscaled, clipped) when the optimizer does so.

override maximize: bool = false;

// What depends on the step number t.
struct AdamaxTerms {
    step: u32,
    bias_correction1: f32,      // 1 - beta1^t
    _padding0: f32,
    _padding1: f32,
}

// AdamaxTerms from its four words in the ring.
fn adamax_terms(w: vec4<u32>) -> AdamaxTerms {
    return AdamaxTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct AdamaxScalars {
    terms: AdamaxTerms,
    lr: f32,
    weight_decay: f32,
    one_minus_beta1: f32,
    beta2: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> scalars: AdamaxScalars;
@group(0) @binding(6) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> exp_inf: array<vec4<f32>>;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step, or for a tensor that missed steps).
fn terms_at(s: AdamaxScalars, step: u32) -> AdamaxTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return adamax_terms(ring_terms(step));
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
    let p = param[i];
    var g = conditioned_gradient(grad[i], conditioning);
    if (maximize) {
        g = -g;
    }
    if (s.weight_decay != 0.0) {
        g = g + s.weight_decay * p;
    }
    let m = torch_lerp(exp_avg[i], g, s.one_minus_beta1);
    let u = max(exp_inf[i] * s.beta2, abs(g) + s.eps);
    exp_avg[i] = m;
    exp_inf[i] = u;
    let neg_clr = -(s.lr / t.bias_correction1);
    param[i] = p + neg_clr * m / u;
}
