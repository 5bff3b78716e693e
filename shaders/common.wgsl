// Shared by every update rule; prepended to each rule's kernel.
//
// Binding layout of every kernel:
//   0: the group's per-step scalars (uniform, one slot per step and group)
//   1: param (read_write)    2: grad (read)    3..: the rule's state tensors (read_write)
// Each binding covers one window of an arena: a run of whole tensors, at most
// max_storage_buffer_binding_size bytes. One invocation updates one vec4 (4 elements); the
// arena is padded to a multiple of 64 elements, so no vec4 straddles two tensors' padding.

const WORKGROUP_SIZE: u32 = 256u;

// Index of this invocation's vec4. Windows needing more than the device's workgroups per
// dimension are swept by a 2-D grid of workgroups, row by row.
fn vec4_index(workgroup: vec3<u32>, grid: vec3<u32>, local: u32) -> u32 {
    return (workgroup.y * grid.x + workgroup.x) * WORKGROUP_SIZE + local;
}

// torch.lerp(start, end, weight), computed from the nearer end as ATen does.
fn torch_lerp(start: vec4<f32>, end: vec4<f32>, weight: f32) -> vec4<f32> {
    if (weight < 0.5) {
        return start + weight * (end - start);
    }
    return end - (end - start) * (1.0 - weight);
}
