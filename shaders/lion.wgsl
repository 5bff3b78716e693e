// Lion: lion_pytorch.Lion (its plain PyTorch update_fn).
//
//   p = p * (1 - lr*wd)
//   p = p + (-lr) * sign(m*beta1 + (1 - beta1)*g)
//   m = m*beta2 + (1 - beta2)*g
// The gradient is first conditioned (unscaled, clipped) when the optimizer does so.

struct LionTerms {
    step: u32,
    _padding0: f32,
    _padding1: f32,
    _padding2: f32,
}

struct LionScalars {
    terms: LionTerms,
    decay_factor: f32,          // 1 - lr*wd
    neg_lr: f32,                // -lr
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
}

@group(0) @binding(0) var<uniform> scalars: LionScalars;
@group(0) @binding(6) var<storage, read_write> exp_avg: array<vec4<f32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms first (see common.wgsl). The rule has no step terms; their tag says whether
    // the step applies.
    let s = scalars;
    let step = element_step(workgroup, grid);
    let tag = select(ring_terms(step).x, s.terms.step, s.terms.step == step);
    let conditioning = gradient_conditioning();
    let i = vec4_index(workgroup, grid, local);
    if (i >= arrayLength(&param) || !step_applies(tag, step)) {
        return;
    }
    let g = conditioned_gradient(grad[i], conditioning);
    var p = param[i] * s.decay_factor;
    let m = exp_avg[i];
    let c = m * s.beta1 + s.one_minus_beta1 * g;
    p = p + s.neg_lr * sign(c);
    param[i] = p;
    exp_avg[i] = m * s.beta2 + s.one_minus_beta2 * g;
}
