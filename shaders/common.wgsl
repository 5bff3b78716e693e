// Shared by every update rule; prepended to each rule's kernel.
//
// Binding layout of every kernel:
//   0: the group's scalars for this step (uniform; one slot per recorded step and group)
//   1: param (read_write)    2: grad (read)    3..5: the rule's state tensors (read_write)
//   6: the group's step terms by step number (read; used when the step count lives on the GPU)
//   7: the optimizer's gradient control block (read; written by shaders/gradients.wgsl)
// Bindings 1..5 cover one window of an arena: a run of whole tensors, at most
// max_storage_buffer_binding_size bytes. One invocation updates one vec4 (4 elements); the
// arena is padded to a multiple of 64 elements.

const WORKGROUP_SIZE: u32 = 256u;

// Set when the optimizer conditions gradients on the GPU before the step (loss-scale
// unscaling, value and norm clipping, skipping non-finite steps): the step count then lives
// on the GPU too, and the step's terms come from the ring at binding 6.
override conditioned: bool = false;

// Mirrors `Control` in src/gradients.rs; written by shaders/gradients.wgsl.
struct Control {
    loss_scale: f32,        // the scale the next backward pass multiplies the loss by (offset 0: bindable)
    inv_scale: f32,         // 1 / loss_scale, what the norm pass unscales by
    step_inv_scale: f32,    // the 1 / scale of this step's gradients
    growth_tracker: u32,    // successful steps since the scale last changed
    step: u32,              // updates applied, this step's included: the t of the update
    skipped: u32,           // steps skipped because a gradient was not finite
    skip: u32,              // 1 when this step is skipped
    error: u32,             // bit 0: non-finite norm with error_if_nonfinite
    grad_norm: f32,         // total norm of this step's unscaled, value-clipped gradients
    clip_coefficient: f32,  // min(max_norm / (norm + 1e-6), 1), or 1 without norm clipping
    clip_value: f32,        // |g| is clamped to this (infinity without value clipping)
    _padding: u32,
}

@group(0) @binding(7) var<storage, read> control: Control;

// Index of this invocation's vec4. Windows needing more than the device's workgroups per
// dimension are swept by a 2-D grid of workgroups, row by row.
fn vec4_index(workgroup: vec3<u32>, grid: vec3<u32>, local: u32) -> u32 {
    return (workgroup.y * grid.x + workgroup.x) * WORKGROUP_SIZE + local;
}

// The gradient as torch's GradScaler.unscale_, clip_grad_value_ and clip_grad_norm_ leave it.
fn conditioned_gradient(g: vec4<f32>) -> vec4<f32> {
    if (!conditioned) {
        return g;
    }
    let unscaled = g * control.step_inv_scale;
    let clamped = clamp(unscaled, vec4<f32>(-control.clip_value), vec4<f32>(control.clip_value));
    return clamped * control.clip_coefficient;
}

// True when the GPU decided to skip this step.
fn step_skipped() -> bool {
    return conditioned && control.skip != 0u;
}

// torch.lerp(start, end, weight), computed from the nearer end as ATen does.
fn torch_lerp(start: vec4<f32>, end: vec4<f32>, weight: f32) -> vec4<f32> {
    if (weight < 0.5) {
        return start + weight * (end - start);
    }
    return end - (end - start) * (1.0 - weight);
}
