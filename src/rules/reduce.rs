//! The CPU twin of `shaders/reduce.wgsl`: sums in exactly the order the GPU forms them, so a
//! rule's CPU reference sees the same per-tensor norms as its kernels.
//!
//! An element pass gives each invocation one `vec4` (four consecutive elements) of a chunk
//! (1,024 elements); it adds its elements' values in order, then invocation 0 adds the 256
//! partials in invocation order. A per-tensor pass lets invocation `l` add the chunk partials
//! `l`, `l + 256`, ... in order, then folds the 256 sums the same way.

use super::{CHUNK_ELEMENTS, ELEMENTS_PER_INVOCATION, WORKGROUP_SIZE};

fn add<const N: usize>(a: [f32; N], b: [f32; N]) -> [f32; N] {
    std::array::from_fn(|k| a[k] + b[k])
}

/// The fold of `workgroup_sum`: the workgroup's values added in invocation order.
pub(crate) fn fold_workgroup<const N: usize>(values: Vec<[f32; N]>) -> [f32; N] {
    debug_assert_eq!(values.len(), WORKGROUP_SIZE as usize);
    values[1..].iter().fold(values[0], |sum, &v| add(sum, v))
}

/// The sum over a tensor of `len` elements of `value(e)` (zero past the end), as an element pass
/// writes chunk partials and a per-tensor pass adds them (`tensor_sum` in the shader).
pub(crate) fn tensor_sum<const N: usize>(len: usize, value: impl Fn(usize) -> [f32; N]) -> [f32; N] {
    let chunk = CHUNK_ELEMENTS as usize;
    let per_invocation = ELEMENTS_PER_INVOCATION as usize;
    let chunks = len.div_ceil(chunk);
    let partials: Vec<[f32; N]> = (0..chunks)
        .map(|c| {
            fold_workgroup(
                (0..WORKGROUP_SIZE as usize)
                    .map(|l| {
                        let first = c * chunk + l * per_invocation;
                        (first..first + per_invocation).filter(|&e| e < len).fold([0.0; N], |acc, e| add(acc, value(e)))
                    })
                    .collect(),
            )
        })
        .collect();
    fold_workgroup(
        (0..WORKGROUP_SIZE as usize)
            .map(|l| partials.iter().skip(l).step_by(WORKGROUP_SIZE as usize).fold([0.0; N], |acc, &p| add(acc, p)))
            .collect(),
    )
}

/// The sum of `value(i)` for i in 0..n as one workgroup loops over it: invocation `l` adds
/// items `l`, `l + 256`, ... in order, then the fold of `workgroup_sum` (the shader's `strided_sum`).
pub(crate) fn strided_sum(n: usize, value: impl Fn(usize) -> f32) -> f32 {
    fold_workgroup(
        (0..WORKGROUP_SIZE as usize)
            .map(|l| [(l..n).step_by(WORKGROUP_SIZE as usize).fold(0.0f32, |acc, i| acc + value(i))])
            .collect(),
    )[0]
}
