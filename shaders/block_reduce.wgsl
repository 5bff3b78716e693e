// Reductions of (sum, sum, max, max) over a workgroup of 256 invocations: each invocation adds
// its vec4's lanes in order, then a halving tree. Prepended to lbfgs.wgsl and newton_cg.wgsl;
// src/lbfgs/vectors.rs (`reduce`) is the CPU twin.

const WORKGROUP: u32 = 256u;
var<workgroup> reduced: array<vec4<f32>, 256>;

// (sum, sum, max, max) of two partial results.
fn combine(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(a.xy + b.xy, max(a.zw, b.zw));
}

fn lane_sum(p: vec4<f32>) -> f32 {
    return ((p.x + p.y) + p.z) + p.w;
}

fn lane_max(p: vec4<f32>) -> f32 {
    return max(max(p.x, p.y), max(p.z, p.w));
}

// The workgroup's tree reduction (halving strides); every invocation returns the total.
fn workgroup_total(lid: u32, value: vec4<f32>) -> vec4<f32> {
    reduced[lid] = value;
    workgroupBarrier();
    for (var stride = WORKGROUP / 2u; stride > 0u; stride = stride / 2u) {
        if lid < stride {
            reduced[lid] = combine(reduced[lid], reduced[lid + stride]);
        }
        workgroupBarrier();
    }
    return reduced[0];
}

