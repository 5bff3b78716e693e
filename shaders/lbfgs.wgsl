// L-BFGS's vector work (torch.optim.LBFGS 2.15), on flat vectors of every parameter.
//
// Each entry point is one line of torch's step fused with the reduction that the next line
// needs. A reduction takes two dispatches: every workgroup reduces one block of 1,024 elements
// (256 invocations × vec4) into `partials[block]`, then `finalize` (one workgroup) adds the
// blocks in a fixed order and writes the result into `registers`. The scalars that torch turns
// into Python numbers (ys, gtd, the loss) are read back by the CPU; the others (ro, al, be,
// H_diag) never leave the GPU. The reduction helpers are shaders/block_reduce.wgsl (prepended);
// the CPU twin (src/lbfgs/vectors.rs) reduces in the same order.
//
//   entry           computes                                   reduces
//   gather          g = ±grad                                  Σ|g|, g·d, max|g|
//   history_pair    y = g − prev_g,  s = d·t                   y·s, y·y
//   scale_dot       x = c·v                                    w·x, max|x|
//   axpy_dot        x = x + c·v  (torch's x.add_(v, alpha=c))  w·x, max|x|
//
// torch's add_ is one fused multiply-add on the CPU. WGSL's fma() need not fuse, and
// llvmpipe's Vulkan and GL disagree on it, so the kernel writes x + c·v as every rule does:
// adapters that contract it (most GPUs) fuse as torch does; llvmpipe and the twin round twice.
//   finalize        the registers, by `op.finalize`

struct Op {
    vec4s: u32,            // elements / 4 of every vector
    blocks: u32,           // reduction blocks (workgroups)
    grid_x: u32,           // workgroups along x; blocks beyond it continue along y
    finalize: u32,         // FINALIZE_*
    coef_register: u32,    // c = coef_scale · registers[coef_register], or coef_scale alone
    coef_scale: f32,
    slot: u32,             // history slot of ro/al, or the register of FINALIZE_SET
    with_dot: u32,         // 0: no reduction
    ro_base: u32,
    al_base: u32,
    _pad0: u32,
    _pad1: u32,
}

// Registers: the scalars of a step (src/lbfgs/vectors.rs names the same indices).
const LOSS: u32 = 0u;      // written by the user's closure
const MAX_G: u32 = 1u;     // max |g| of the last gathered gradient
const SUM_G: u32 = 2u;     // Σ |g|
const GTD_NEW: u32 = 3u;   // g · d
const YS: u32 = 4u;
const YY: u32 = 5u;
const H_DIAG: u32 = 6u;
const GTD: u32 = 7u;       // flat_grad · d of the new direction
const D_NORM: u32 = 8u;    // max |d|
const COEF: u32 = 9u;      // al[i] − be_i of the second loop
const NO_REGISTER: u32 = 0xffffffffu;

const FINALIZE_GATHER: u32 = 0u;
const FINALIZE_HISTORY: u32 = 1u;
const FINALIZE_ALPHA: u32 = 2u;
const FINALIZE_BETA: u32 = 3u;
const FINALIZE_DIRECTION: u32 = 4u;
const FINALIZE_SET: u32 = 5u;

@group(0) @binding(0) var<uniform> op: Op;
@group(0) @binding(1) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> x2: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> v2: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> registers: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<vec4<f32>>;

fn coefficient() -> f32 {
    if op.coef_register == NO_REGISTER {
        return op.coef_scale;
    }
    return op.coef_scale * registers[op.coef_register];
}

fn block_partial(block: u32, lid: u32, value: vec4<f32>) {
    let total = workgroup_total(lid, value);
    if lid == 0u {
        partials[block] = total;
    }
}

@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let block = wid.x + wid.y * op.grid_x;
    if block >= op.blocks {
        return;
    }
    let e = block * WORKGROUP + lid;
    var value = vec4<f32>(0.0);
    if e < op.vec4s {
        let g = op.coef_scale * v[e];
        x[e] = g;
        value = vec4<f32>(lane_sum(abs(g)), lane_sum(g * w[e]), lane_max(abs(g)), 0.0);
    }
    block_partial(block, lid, value);
}

@compute @workgroup_size(256)
fn history_pair(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let block = wid.x + wid.y * op.grid_x;
    if block >= op.blocks {
        return;
    }
    let e = block * WORKGROUP + lid;
    var value = vec4<f32>(0.0);
    if e < op.vec4s {
        let y = v[e] - v2[e];
        let s = w[e] * op.coef_scale;
        x[e] = y;
        x2[e] = s;
        value = vec4<f32>(lane_sum(y * s), lane_sum(y * y), 0.0, 0.0);
    }
    block_partial(block, lid, value);
}

@compute @workgroup_size(256)
fn scale_dot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let block = wid.x + wid.y * op.grid_x;
    if block >= op.blocks {
        return;
    }
    let e = block * WORKGROUP + lid;
    let c = coefficient();
    var value = vec4<f32>(0.0);
    if e < op.vec4s {
        let r = c * v[e];
        x[e] = r;
        if op.with_dot != 0u {
            value = vec4<f32>(lane_sum(w[e] * r), 0.0, lane_max(abs(r)), 0.0);
        }
    }
    if op.with_dot != 0u {
        block_partial(block, lid, value);
    }
}

@compute @workgroup_size(256)
fn axpy_dot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let block = wid.x + wid.y * op.grid_x;
    if block >= op.blocks {
        return;
    }
    let e = block * WORKGROUP + lid;
    let c = coefficient();
    var value = vec4<f32>(0.0);
    if e < op.vec4s {
        let r = x[e] + c * v[e];
        x[e] = r;
        if op.with_dot != 0u {
            value = vec4<f32>(lane_sum(w[e] * r), 0.0, lane_max(abs(r)), 0.0);
        }
    }
    if op.with_dot != 0u {
        block_partial(block, lid, value);
    }
}

@compute @workgroup_size(256)
fn finalize(@builtin(local_invocation_index) lid: u32) {
    var value = vec4<f32>(0.0);
    for (var b = lid; b < op.blocks; b = b + WORKGROUP) {
        value = combine(value, partials[b]);
    }
    let total = workgroup_total(lid, value);
    if lid != 0u {
        return;
    }
    switch op.finalize {
        case FINALIZE_GATHER: {
            registers[SUM_G] = total.x;
            registers[GTD_NEW] = total.y;
            registers[MAX_G] = total.z;
        }
        case FINALIZE_HISTORY: {
            let ys = total.x;
            let yy = total.y;
            registers[YS] = ys;
            registers[YY] = yy;
            if ys > 1e-10 {
                registers[op.ro_base + op.slot] = 1.0 / ys;
                registers[H_DIAG] = ys / yy;
            }
        }
        case FINALIZE_ALPHA: {
            registers[op.al_base + op.slot] = total.x * registers[op.ro_base + op.slot];
        }
        case FINALIZE_BETA: {
            let be = total.x * registers[op.ro_base + op.slot];
            registers[COEF] = registers[op.al_base + op.slot] - be;
        }
        case FINALIZE_DIRECTION: {
            registers[GTD] = total.x;
            registers[D_NORM] = total.z;
        }
        case FINALIZE_SET: {
            registers[op.slot] = op.coef_scale;
        }
        default: {}
    }
}
