// Adagrad: torch.optim.Adagrad.
//
//   g = -g                                       if maximize
//   g = g + wd*p                                 if wd != 0
//   sum = sum + g*g
//   p = p + (-(lr / (1 + (t - 1)*lr_decay))) * g / (sqrt(sum) + eps)

override maximize: bool = false;

struct AdagradTerms {
    step: u32,
    lr_decay_denominator: f32,  // 1 + (t - 1)*lr_decay
    _padding0: f32,
    _padding1: f32,
}

// AdagradTerms from its four words in the ring.
fn adagrad_terms(w: vec4<u32>) -> AdagradTerms {
    return AdagradTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct AdagradScalars {
    terms: AdagradTerms,
    lr: f32,
    weight_decay: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> scalars: AdagradScalars;
@group(0) @binding(6) var<storage, read_write> sum: array<vec4<f32>>;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step, or for a tensor that missed steps).
fn terms_at(s: AdagradScalars, step: u32) -> AdagradTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return adagrad_terms(ring_terms(step));
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
    let acc = sum[i] + g * g;
    sum[i] = acc;
    let std_dev = sqrt(acc) + s.eps;
    let neg_clr = -(s.lr / t.lr_decay_denominator);
    param[i] = p + neg_clr * g / std_dev;
}
