// Adadelta: torch.optim.Adadelta.
//
//   g = -g                                       if maximize
//   g = g + wd*p                                 if wd != 0
//   sq = sq*rho + (1 - rho)*g*g
//   delta = sqrt(acc + eps) / sqrt(sq + eps) * g
//   acc = acc*rho + (1 - rho)*delta*delta
//   p = p + (-lr)*delta

override maximize: bool = false;

// These rules do not use t; the step tag only checks the ring.
struct AdadeltaTerms {
    step: u32,
    _padding0: f32,
    _padding1: f32,
    _padding2: f32,
}

// AdadeltaTerms from its four words in the ring.
fn adadelta_terms(w: vec4<u32>) -> AdadeltaTerms {
    return AdadeltaTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct AdadeltaScalars {
    terms: AdadeltaTerms,
    neg_lr: f32,
    rho: f32,
    one_minus_rho: f32,
    eps: f32,
    weight_decay: f32,
}

@group(0) @binding(0) var<uniform> scalars: AdadeltaScalars;
@group(0) @binding(6) var<storage, read_write> square_avg: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> acc_delta: array<vec4<f32>>;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step, or for a tensor that missed steps).
fn terms_at(s: AdadeltaScalars, step: u32) -> AdadeltaTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return adadelta_terms(ring_terms(step));
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
    let sq = square_avg[i] * s.rho + s.one_minus_rho * g * g;
    square_avg[i] = sq;
    let std_dev = sqrt(sq + s.eps);
    let delta = sqrt(acc_delta[i] + s.eps) / std_dev * g;
    acc_delta[i] = acc_delta[i] * s.rho + s.one_minus_rho * delta * delta;
    param[i] = p + s.neg_lr * delta;
}
