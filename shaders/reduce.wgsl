// Deterministic workgroup reductions (a fixed order, no atomics), for rules that reduce per
// tensor: an element pass writes one vec4 of partial sums per chunk, and a per-tensor pass
// sums its tensor's chunks in a fixed order.

var<workgroup> reduce_sums: array<vec4<f32>, WORKGROUP_SIZE>;

// The sum of `value` over the workgroup, in invocation 0 (the others get zero): invocation 0
// adds the workgroup's values in order. One barrier: a software adapter (llvmpipe) pays for
// each with a switch between all the workgroup's invocations, which costs more than the 255
// additions (BENCHMARKS.md, "Workgroup folds").
fn workgroup_sum(local: u32, value: vec4<f32>) -> vec4<f32> {
    reduce_sums[local] = value;
    workgroupBarrier();
    var sum = vec4<f32>(0.0);
    if (local == 0u) {
        sum = reduce_sums[0];
        for (var k = 1u; k < WORKGROUP_SIZE; k++) {
            sum += reduce_sums[k];
        }
    }
    return sum;
}

// The sum of `value` over the workgroup (`workgroup_sum`), returned to every invocation.
fn workgroup_sum_to_all(local: u32, value: vec4<f32>) -> vec4<f32> {
    let sum = workgroup_sum(local, value);
    workgroupBarrier();
    if (local == 0u) {
        reduce_sums[0] = sum;
    }
    workgroupBarrier();
    return reduce_sums[0];
}

// The sum of a tensor's chunk partials, in invocation 0 (a per-tensor pass, all invocations of
// the workgroup).
fn tensor_sum(local: u32, tensor: Tensor) -> vec4<f32> {
    let chunks = (tensor.len + CHUNK_ELEMENTS - 1u) / CHUNK_ELEMENTS;
    var sum = vec4<f32>(0.0);
    for (var c = local; c < chunks; c += WORKGROUP_SIZE) {
        sum += read_partials(tensor.first_chunk + c);
    }
    return workgroup_sum(local, sum);
}

// The four per-tensor scalars at the start of a tensor's aux region.
fn write_tensor_scalars(tensor: Tensor, value: vec4<f32>) {
    aux[tensor.aux] = value.x;
    aux[tensor.aux + 1u] = value.y;
    aux[tensor.aux + 2u] = value.z;
    aux[tensor.aux + 3u] = value.w;
}

fn tensor_scalars(tensor: Tensor) -> vec4<f32> {
    return vec4<f32>(aux[tensor.aux], aux[tensor.aux + 1u], aux[tensor.aux + 2u], aux[tensor.aux + 3u]);
}

