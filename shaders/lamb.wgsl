// LAMB: timm.optim.Lamb (timm 1.0.31, _single_tensor_lamb). Three passes:
//
//   moments      (every element)   g = g / clip                                  clip = max(‖g_all‖ / max_grad_norm, 1)
//                                  m = lerp(m, g, 1 - beta1) if grad_averaging, else m*beta1 + g
//                                  v = v*beta2 + (1 - beta2)*g*g
//                                  u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
//                                  p' = p + p*(-lr*wd)       if wd != 0 and decoupled_decay
//                                  u = u + wd*p              if wd != 0 and not decoupled_decay
//                                  partials: Σ p'², Σ u²
//   trust_ratio  (per tensor)      r = ‖p'‖ / ‖u‖, 1 where either norm is 0; min(r, 1) if trust_clip;
//                                  1 unless wd != 0 or always_adapt
//   apply        (every element)   p = p' + (-lr)*(u*r)      (u recomputed from the new m and v)

override grad_averaging: bool = true;
override decoupled_decay: bool = false;
override trust_clip: bool = false;
override always_adapt: bool = false;
override clip_global_norm: bool = true;

struct LambTerms {
    step: u32,
    bias_correction1: f32,          // 1 - beta1^t, or 1 without bias correction
    bias_correction2_sqrt: f32,     // sqrt(1 - beta2^t), or 1
    _padding: f32,
}

// LambTerms from its four words in the ring.
fn lamb_terms(w: vec4<u32>) -> LambTerms {
    return LambTerms(w.x, bitcast<f32>(w.y), bitcast<f32>(w.z), bitcast<f32>(w.w));
}

struct LambScalars {
    terms: LambTerms,
    lr: f32,
    neg_lr: f32,                    // -lr
    beta1: f32,
    beta3: f32,                     // 1 - beta1 with grad averaging, else 1
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    neg_lr_weight_decay: f32,       // -lr*wd
    max_grad_norm: f32,
}

@group(0) @binding(0) var<uniform> scalars: LambScalars;
@group(0) @binding(6) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

// The terms of step `step`: those recorded with this step (uniform, cheap to read), or the
// ring's (after a skipped or dropped step).
fn terms_at(s: LambScalars, step: u32) -> LambTerms {
    if (s.terms.step == step) {
        return s.terms;
    }
    return lamb_terms(ring_terms(step));
}

// timm's global-norm clip, max(‖g_all‖ / max_grad_norm, 1) (unused without it).
fn global_norm_clip(s: LambScalars) -> f32 {
    return max(control.grad_norm * control.clip_coefficient / s.max_grad_norm, 1.0);
}

// The gradient timm's Lamb sees: the conditioned gradient divided by its global-norm clip.
fn lamb_gradient(g: vec4<f32>, clip: f32) -> vec4<f32> {
    if (!clip_global_norm) {
        return g;
    }
    return g / clip;
}

// The update before the trust ratio, from the (new) moments.
fn raw_update(s: LambScalars, t: LambTerms, m: vec4<f32>, v: vec4<f32>, p: vec4<f32>) -> vec4<f32> {
    let denom = sqrt(v) / t.bias_correction2_sqrt + s.eps;
    var u = (m / t.bias_correction1) / denom;
    if (s.weight_decay != 0.0 && !decoupled_decay) {
        u = u + s.weight_decay * p;
    }
    return u;
}

// The parameter after decoupled decay.
fn decayed(s: LambScalars, p: vec4<f32>) -> vec4<f32> {
    if (s.weight_decay != 0.0 && decoupled_decay) {
        return p + s.neg_lr_weight_decay * p;
    }
    return p;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn moments(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms and the tensor table first (see common.wgsl); outside the window they mean nothing.
    let s = scalars;
    let conditioning = gradient_conditioning();
    let clip = global_norm_clip(s);
    let site = element_site(workgroup, grid, local);
    let step = group_step_of(workgroup_tensor(workgroup, grid));
    let t = terms_at(s, step);
    if (!in_window(workgroup, grid) || !step_applies(t.step, step)) {
        return;
    }
    let i = site.i;
    var sums = vec4<f32>(0.0);
    if (site.first < site.tensor.len) {
        let g = lamb_gradient(conditioned_gradient(grad[i], conditioning), clip);
        var m: vec4<f32>;
        if (grad_averaging) {
            m = torch_lerp(exp_avg[i], g, s.beta3);
        } else {
            m = exp_avg[i] * s.beta1 + s.beta3 * g;
        }
        let v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * g * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        let p = param[i];
        let u = raw_update(s, t, m, v, p);
        let pd = decayed(s, p);
        for (var k = 0u; k < 4u; k++) {
            if (site.first + k < site.tensor.len) {
                sums.x += pd[k] * pd[k];
                sums.y += u[k] * u[k];
            }
        }
    }
    let total = workgroup_sum(local, sums);
    if (local == 0u) {
        write_partials(site.chunk, total);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn trust_ratio(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms first (see common.wgsl).
    let s = scalars;
    let k = workgroup_index(workgroup, grid);
    if (k >= dispatch.tensor_count) {
        return;
    }
    let index = dispatch_tensor(k);
    let step = group_step_of(index);
    if (!step_applies(terms_at(s, step).step, step)) {
        return;
    }
    let tensor = tensor_at(index);
    let sums = tensor_sum(local, tensor);
    if (local != 0u) {
        return;
    }
    let w_norm = sqrt(sums.x);
    let u_norm = sqrt(sums.y);
    var ratio = 1.0;
    if (s.weight_decay != 0.0 || always_adapt) {
        ratio = w_norm / u_norm;
        if (!(w_norm > 0.0) || !(u_norm > 0.0)) {
            ratio = 1.0;
        }
        if (trust_clip) {
            ratio = min(ratio, 1.0);
        }
    }
    write_tensor_scalars(tensor, vec4<f32>(ratio, w_norm, u_norm, 0.0));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn apply(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Uniforms and the tensor table first (see common.wgsl); outside the window they mean nothing.
    let s = scalars;
    let site = element_site(workgroup, grid, local);
    let step = group_step_of(workgroup_tensor(workgroup, grid));
    let t = terms_at(s, step);
    let ratio = tensor_scalars(site.tensor).x;
    if (!in_window(workgroup, grid) || !step_applies(t.step, step)) {
        return;
    }
    if (site.first >= site.tensor.len) {
        return;
    }
    let i = site.i;
    let p = param[i];
    let u = raw_update(s, t, exp_avg[i], exp_avg_sq[i], p);
    param[i] = decayed(s, p) + s.neg_lr * (u * ratio);
}
