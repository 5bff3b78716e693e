//! naga parses and validates every shader and translates every flag combination to SPIR-V,
//! MSL, HLSL and GLSL; the kernels stay within WebGPU's default limits.

use wgpu_optim::portability::{translate_all, translate_gradients};
use wgpu_optim::rules::kernels;

#[test]
fn every_kernel_translates_to_every_backend_language() {
    let kernels = kernels();
    assert_eq!(kernels.len(), 17, "one shader per rule (AdamW shares Adam's)");
    for kernel in &kernels {
        let variants = translate_all(kernel).unwrap_or_else(|e| panic!("{e}"));
        // The rule's flags, plus `conditioned` (gradient conditioning on the GPU) from common.wgsl.
        assert_eq!(
            variants.len(),
            kernel.entry_points().len() << (kernel.flags.len() + 1),
            "{}: one translation per entry point and flag combination",
            kernel.label
        );
        for v in &variants {
            assert!(v.spirv_words > 100, "{}: SPIR-V", v.label);
            assert!(v.msl.contains("kernel void"), "{}: MSL has a kernel entry point", v.label);
            assert!(v.hlsl.contains("[numthreads(256, 1, 1)]"), "{}: HLSL entry point", v.label);
            assert!(v.glsl.contains("layout(local_size_x = 256"), "{}: GLSL workgroup size", v.label);
        }
    }
}

#[test]
fn the_gradient_kernels_translate_to_every_backend_language() {
    let variants = translate_gradients().unwrap_or_else(|e| panic!("{e}"));
    let entry_points: Vec<&str> = variants.iter().map(|v| v.entry_point.as_str()).collect();
    assert!(entry_points.contains(&"norm_partials") && entry_points.contains(&"finalize"), "{entry_points:?}");
    for v in &variants {
        assert!(v.spirv_words > 100 && v.msl.contains("kernel void") && v.hlsl.contains("numthreads") && v.glsl.contains("local_size_x"));
    }
}

#[test]
fn a_broken_shader_is_reported_not_panicked() {
    let mut kernel = kernels().remove(0);
    kernel.source = "fn main( { }";
    let error = translate_all(&kernel).unwrap_err().to_string();
    assert!(error.contains("parsing of the sgd kernel"), "{error}");
}
