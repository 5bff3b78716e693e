// ASGD: torch.optim.ASGD (torch 2.15, _single_tensor_asgd). eta and mu are per-tensor 0-d
// state in the tensor's aux region (after its four scalars); ax is per-element state.
//
//   update    (every element)   eta, mu = lr, 1 at t = 1, else the tensor's state
//                               g = -g if maximize;  g = g + wd*p if wd != 0
//                               p = p * (1 - lambd*eta);  p = p + (-eta)*g
//                               ax = ax + (p - ax)*mu if mu != 1, else ax = p
//   schedule  (per tensor)      eta = lr/(1 + lambd*lr*t)^alpha;  mu = 1/max(1, t - t0)
//
// Both schedule values are computed on the CPU in f64: mu in the terms, the next eta in the
// scalars for the CPU's step and the 15 before it (the GPU's step may lag behind after skipped
// steps), the terms' eta_next being the fallback.

override maximize: bool = false;

struct AsgdTerms {
    step: u32,
    eta_next: f32,              // lr/(1 + lambd*lr*t)^alpha, with the lr of when the terms were written
    mu_next: f32,               // 1/max(1, t - t0)
    _padding: f32,
}

fn asgd_terms(w: vec4<u32>) -> AsgdTerms {
    return AsgdTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct AsgdScalars {
    terms: AsgdTerms,
    lr: f32,
    lambd: f32,
    weight_decay: f32,
    recorded_step: u32,             // the step the CPU recorded these scalars for (terms.step may be the GPU's)
    eta_next: array<vec4<f32>, 4>,  // [j]: the next eta after step recorded_step - j, with this step's lr
}

@group(0) @binding(0) var<uniform> scalars: AsgdScalars;
@group(0) @binding(6) var<storage, read_write> ax: array<vec4<f32>>;

fn terms_at(s: AsgdScalars, step: u32) -> AsgdTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return asgd_terms(ring_terms(step));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn update(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms first (see common.wgsl).
    let s = scalars;
    let conditioning = gradient_conditioning();
    if (!in_window(workgroup, grid)) {
        return;
    }
    let site = element_site(workgroup, grid, local);
    let step = tensor_step(workgroup_tensor(workgroup, grid));
    let t = terms_at(s, step);
    if (!step_applies(t.step, step)) {
        return;
    }
    if (site.first >= site.tensor.len) {
        return;
    }
    var eta = s.lr;
    var mu = 1.0;
    if (t.step != 1u) {
        eta = aux[site.tensor.aux + 4u];
        mu = aux[site.tensor.aux + 5u];
    }
    let i = site.i;
    var p = param[i];
    var g = conditioned_gradient(grad[i], conditioning);
    if (maximize) {
        g = -g;
    }
    if (s.weight_decay != 0.0) {
        g = g + s.weight_decay * p;
    }
    p = p * (1.0 - s.lambd * eta);
    p = p + (-eta) * g;
    param[i] = p;
    if (mu != 1.0) {
        let a = ax[i];
        ax[i] = a + (p - a) * mu;
    } else {
        ax[i] = p;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn schedule(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms first (see common.wgsl).
    let s = scalars;
    let k = workgroup_index(workgroup, grid);
    if (k >= dispatch.tensor_count || local != 0u) {
        return;
    }
    let index = dispatch_tensor(k);
    let step = tensor_step(index);
    let t = terms_at(s, step);
    if (!step_applies(t.step, step)) {
        return;
    }
    let tensor = tensor_at(index);
    var eta_next = t.eta_next;
    if (s.recorded_step >= t.step) {
        let lag = s.recorded_step - t.step;
        if (lag < 16u) {
            eta_next = s.eta_next[lag / 4u][lag % 4u];
        }
    }
    aux[tensor.aux + 4u] = eta_next;
    aux[tensor.aux + 5u] = t.mu_next;
}
