// SGD with momentum, dampening, Nesterov and L2 weight decay: torch.optim.SGD.
//
//   g = -g                                       if maximize
//   g = g + wd*p                                 if wd != 0
//   if momentum != 0:
//       b = g                                    at the first step
//       b = b*momentum + (1 - dampening)*g       afterwards
//       g = g + momentum*b                       if nesterov, else g = b
//   p = p + (-lr)*g

override maximize: bool = false;
override has_momentum: bool = false;
override nesterov: bool = false;

struct SgdTerms {
    step: u32,                  // the buffer is initialised to g at step 1
    _padding0: f32,
    _padding1: f32,
    _padding2: f32,
}

// SgdTerms from its four words in the ring.
fn sgd_terms(w: vec4<u32>) -> SgdTerms {
    return SgdTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct SgdScalars {
    terms: SgdTerms,
    neg_lr: f32,
    weight_decay: f32,
    momentum: f32,
    one_minus_dampening: f32,
}

@group(0) @binding(0) var<uniform> scalars: SgdScalars;
@group(0) @binding(6) var<storage, read_write> momentum_buffer: array<vec4<f32>>;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step, or for a tensor that missed steps).
fn terms_at(s: SgdScalars, step: u32) -> SgdTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return sgd_terms(ring_terms(step));
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
    if (has_momentum) {
        var b = g;
        if (t.step != 1u) {
            b = momentum_buffer[i] * s.momentum + s.one_minus_dampening * g;
        }
        momentum_buffer[i] = b;
        if (nesterov) {
            g = g + s.momentum * b;
        } else {
            g = b;
        }
    }
    param[i] = p + s.neg_lr * g;
}
