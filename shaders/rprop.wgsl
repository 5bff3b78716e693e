// Rprop: torch.optim.Rprop (resilient backpropagation).
//
//   g = -g                                       if maximize
//   step_size = lr                               at step 1 (torch creates it then, with the group's lr)
//   f = etaplus if g*prev > 0, etaminus if g*prev < 0, 1 otherwise
//   step_size = clamp(step_size*f, step_size_min, step_size_max)
//   g = 0                                        where f == etaminus
//   p = p + (-sign(g))*step_size
//   prev = g
// The gradient is first conditioned (unscaled, clipped) when the optimizer does so.

override maximize: bool = false;

struct RpropTerms {
    step: u32,
    _padding0: f32,
    _padding1: f32,
    _padding2: f32,
}

struct RpropScalars {
    terms: RpropTerms,
    lr: f32,
    etaminus: f32,
    etaplus: f32,
    step_size_min: f32,
    step_size_max: f32,
}

@group(0) @binding(0) var<uniform> scalars: RpropScalars;
@group(0) @binding(6) var<storage, read_write> prev: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> step_size: array<vec4<f32>>;

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
    let p = param[i];
    var g = conditioned_gradient(grad[i], conditioning);
    if (maximize) {
        g = -g;
    }
    var size = step_size[i];
    if (tag == 1u) {
        size = vec4<f32>(s.lr);
    }
    let product = g * prev[i];
    let factor = select(select(vec4<f32>(1.0), vec4<f32>(s.etaminus), product < vec4<f32>(0.0)),
                        vec4<f32>(s.etaplus), product > vec4<f32>(0.0));
    size = min(max(size * factor, vec4<f32>(s.step_size_min)), vec4<f32>(s.step_size_max));
    g = select(g, vec4<f32>(0.0), factor == vec4<f32>(s.etaminus));
    step_size[i] = size;
    param[i] = p + -sign(g) * size;
    prev[i] = g;
}
