// Shared by the update rules' kernels (before shaders/common.wgsl) and the gradient
// conditioning kernels (before shaders/gradients.wgsl): sizes, the control block, indexing.

const WORKGROUP_SIZE: u32 = 256u;
const CHUNK_ELEMENTS: u32 = 1024u;

// Mirrors `Control` in src/gradients.rs; written by shaders/gradients.wgsl.
struct Control {
    loss_scale: f32,        // the scale the next backward pass multiplies the loss by (offset 0: bindable)
    inv_scale: f32,         // 1 / loss_scale, what the norm pass unscales by
    step_inv_scale: f32,    // the 1 / scale of this step's gradients
    growth_tracker: u32,    // successful steps since the scale last changed
    step: u32,              // updates applied, this step's included: the t of the update
    skipped: u32,           // steps skipped because a gradient was not finite
    skip: u32,              // 1 when this step is skipped
    error: u32,             // bit 0: non-finite norm with error_if_nonfinite; bit 1: terms lost (a
                            // tensor missed more steps than its ring holds)
    grad_norm: f32,         // total norm of this step's unscaled, value-clipped gradients
    clip_coefficient: f32,  // min(max_norm / (norm + 1e-6), 1), or 1 without norm clipping
    clip_value: f32,        // |g| is clamped to this (infinity without value clipping)
    terms_ring: u32,        // entries of each group's ring of step terms
    presence: u32,          // gradient presence: word of the flags in the tables (0: not tracked)
    tensors: u32,           // the tensors of the tensor table
    chunk_map: u32,         // the tables word of the chunk map (chunk -> tensor)
    chunks: u32,            // its chunks; with presence tracked, each chunk's lag follows it
}

// A chunk's lag when its tensor has no gradient this step.
const ABSENT: u32 = 0xffffffffu;

// Index of this invocation's vec4. Windows needing more than the device's workgroups per
// dimension are swept by a 2-D grid of workgroups, row by row.
fn vec4_index(workgroup: vec3<u32>, grid: vec3<u32>, local: u32) -> u32 {
    return (workgroup.y * grid.x + workgroup.x) * WORKGROUP_SIZE + local;
}
