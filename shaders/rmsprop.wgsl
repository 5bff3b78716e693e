// RMSprop, plain or centered, with optional momentum: torch.optim.RMSprop.
//
//   g = -g                                       if maximize
//   g = g + wd*p                                 if wd != 0
//   sq = sq*alpha + (1 - alpha)*g*g
//   if centered: ga = lerp(ga, g, 1 - alpha); avg = sqrt(sq - ga*ga) + eps
//   else:        avg = sqrt(sq) + eps
//   if momentum > 0: b = b*momentum + g/avg; p = p + (-lr)*b
//   else:            p = p + (-lr)*g/avg

override maximize: bool = false;
override centered: bool = false;
override has_momentum: bool = false;

// These rules do not use t; the step tag only checks the ring.
struct RmspropTerms {
    step: u32,
    _padding0: f32,
    _padding1: f32,
    _padding2: f32,
}

// RmspropTerms from its four words in the ring.
fn rmsprop_terms(w: vec4<u32>) -> RmspropTerms {
    return RmspropTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct RmspropScalars {
    terms: RmspropTerms,
    neg_lr: f32,
    alpha: f32,
    one_minus_alpha: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
}

@group(0) @binding(0) var<uniform> scalars: RmspropScalars;
@group(0) @binding(6) var<storage, read_write> square_avg: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> momentum_buffer: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> grad_avg: array<vec4<f32>>;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step, or for a tensor that missed steps).
fn terms_at(s: RmspropScalars, step: u32) -> RmspropTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return rmsprop_terms(ring_terms(step));
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
    let sq = square_avg[i] * s.alpha + s.one_minus_alpha * g * g;
    square_avg[i] = sq;
    var avg: vec4<f32>;
    if (centered) {
        let ga = torch_lerp(grad_avg[i], g, s.one_minus_alpha);
        grad_avg[i] = ga;
        avg = sqrt(sq - ga * ga) + s.eps;
    } else {
        avg = sqrt(sq) + s.eps;
    }
    if (has_momentum) {
        let b = momentum_buffer[i] * s.momentum + g / avg;
        momentum_buffer[i] = b;
        param[i] = p + s.neg_lr * b;
    } else {
        param[i] = p + s.neg_lr * g / avg;
    }
}
