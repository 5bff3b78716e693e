// Shared by every kernel of the training example (prepended to each file).

// Shape of one dispatch. `flag`: apply ReLU (forward), or add to the running sum instead of
// overwriting it (param_norm).
struct Dims {
    rows: u32,
    inputs: u32,
    outputs: u32,
    flag: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;

// Invocations per workgroup of the element-wise kernels; must equal ELEMENT_WORKGROUP in model.rs.
const ELEMENT_WORKGROUP: u32 = 64u;
// Invocations of the single-workgroup reductions; must equal REDUCE_WORKGROUP in model.rs.
const REDUCE_WORKGROUP: u32 = 256u;

// Flat invocation index of a 1-D grid, or of a 2-D one when a dispatch needs more than
// max_compute_workgroups_per_dimension workgroups (rows of `groups.x` workgroups).
fn flat_index(id: vec3<u32>, groups: vec3<u32>) -> u32 {
    return id.x + id.y * groups.x * ELEMENT_WORKGROUP;
}

var<workgroup> partial: array<f32, REDUCE_WORKGROUP>;

// Sums `partial` across the workgroup in a fixed tree order (deterministic); the result is in
// partial[0]. Called from uniform control flow by every invocation.
fn reduce_partial(t: u32) {
    workgroupBarrier();
    for (var stride = REDUCE_WORKGROUP / 2u; stride > 0u; stride = stride / 2u) {
        if (t < stride) {
            partial[t] += partial[t + stride];
        }
        workgroupBarrier();
    }
}
