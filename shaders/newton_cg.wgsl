// Newton-CG (src/newton_cg.rs): the Newton step s ≈ −H⁻¹g by conjugate gradients, with H only
// through Hessian-vector products (the user's closure writes Hp for the current p). Every
// scalar stays on the GPU; once CG has converged or met negative curvature (`done`), α = 0
// and the remaining iterations change nothing. Reductions: shaders/block_reduce.wgsl.
//
//   start         r = −g,  p = r,  s = 0                 rr = rr₀ = r·r
//   curvature     pHp = p·Hp;  pHp ≤ 0: done (on the first iteration s = p, the steepest
//                 descent step); else α = rr / pHp
//   update_sr     s = s + α·p,  r = r − α·Hp             rr' = r·r;  √rr' ≤ tol·√rr₀: done;
//                                                        β = rr' / rr,  rr = rr'
//   update_p      p = r + β·p
//   apply         x = x + lr·s

struct Op {
    vec4s: u32,
    blocks: u32,
    grid_x: u32,
    finalize: u32,
    iteration: u32,
    tolerance: f32,
    lr: f32,
    _pad: u32,
}

// Registers.
const RR: u32 = 0u;
const RR0: u32 = 1u;
const ALPHA: u32 = 2u;
const BETA: u32 = 3u;
const DONE: u32 = 4u;

const FINALIZE_START: u32 = 0u;
const FINALIZE_CURVATURE: u32 = 1u;
const FINALIZE_RESIDUAL: u32 = 2u;

@group(0) @binding(0) var<uniform> op: Op;
@group(0) @binding(1) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> s: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> r: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> p: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> hp: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> registers: array<f32>;
@group(0) @binding(8) var<storage, read_write> partials: array<vec4<f32>>;

fn element(wid: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * op.grid_x) * WORKGROUP + lid;
}

fn block_partial(wid: vec3<u32>, lid: u32, value: vec4<f32>) {
    let total = workgroup_total(lid, value);
    if lid == 0u {
        partials[wid.x + wid.y * op.grid_x] = total;
    }
}

@compute @workgroup_size(256)
fn start(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if wid.x + wid.y * op.grid_x >= op.blocks {
        return;
    }
    let e = element(wid, lid);
    var value = vec4<f32>(0.0);
    if e < op.vec4s {
        let residual = -g[e];
        r[e] = residual;
        p[e] = residual;
        s[e] = vec4<f32>(0.0);
        value.x = lane_sum(residual * residual);
    }
    block_partial(wid, lid, value);
}

@compute @workgroup_size(256)
fn curvature(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if wid.x + wid.y * op.grid_x >= op.blocks {
        return;
    }
    let e = element(wid, lid);
    var value = vec4<f32>(0.0);
    if e < op.vec4s {
        value.x = lane_sum(p[e] * hp[e]);
    }
    block_partial(wid, lid, value);
}

@compute @workgroup_size(256)
fn update_sr(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if wid.x + wid.y * op.grid_x >= op.blocks {
        return;
    }
    let e = element(wid, lid);
    let alpha = registers[ALPHA];
    var value = vec4<f32>(0.0);
    if e < op.vec4s {
        s[e] = s[e] + alpha * p[e];
        let residual = r[e] - alpha * hp[e];
        r[e] = residual;
        value.x = lane_sum(residual * residual);
    }
    block_partial(wid, lid, value);
}

@compute @workgroup_size(256)
fn update_p(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = element(wid, lid);
    if e < op.vec4s {
        p[e] = r[e] + registers[BETA] * p[e];
    }
}

@compute @workgroup_size(256)
fn apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = element(wid, lid);
    if e < op.vec4s {
        x[e] = x[e] + op.lr * s[e];
    }
}

@compute @workgroup_size(256)
fn finalize(@builtin(local_invocation_index) lid: u32) {
    var value = vec4<f32>(0.0);
    for (var b = lid; b < op.blocks; b = b + WORKGROUP) {
        value = combine(value, partials[b]);
    }
    let total = workgroup_total(lid, value).x;
    if lid != 0u {
        return;
    }
    switch op.finalize {
        case FINALIZE_START: {
            registers[RR] = total;
            registers[RR0] = total;
            registers[DONE] = 0.0;
            registers[ALPHA] = 0.0;
            registers[BETA] = 0.0;
        }
        case FINALIZE_CURVATURE: {
            if registers[DONE] != 0.0 {
                registers[ALPHA] = 0.0;
            } else if total <= 0.0 {
                // Negative curvature: stop; on the first iteration take p = −g itself.
                registers[ALPHA] = select(0.0, 1.0, op.iteration == 0u);
                registers[DONE] = 1.0;
            } else {
                registers[ALPHA] = registers[RR] / total;
            }
        }
        case FINALIZE_RESIDUAL: {
            if registers[DONE] == 0.0 {
                registers[BETA] = total / registers[RR];
                registers[RR] = total;
                if sqrt(total) <= op.tolerance * sqrt(registers[RR0]) {
                    registers[DONE] = 1.0;
                }
            }
        }
        default: {}
    }
}
