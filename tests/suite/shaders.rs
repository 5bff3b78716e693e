//! naga parses and validates every shader and translates every flag combination to SPIR-V,
//! MSL, HLSL and GLSL; the kernels stay within WebGPU's default limits.

#[cfg(feature = "portability")]
use wgpu_optim::{
    portability::{translate_all, translate_gradients},
    rules::kernels,
};

#[test]
#[cfg(feature = "portability")]
fn every_kernel_translates_to_every_backend_language() {
    let kernels = kernels();
    assert_eq!(kernels.len(), 17, "one shader per rule (AdamW shares Adam's)");
    for kernel in &kernels {
        let variants = translate_all(kernel).unwrap_or_else(|e| panic!("{e}"));
        // The rule's flags, plus `conditioned` (gradient conditioning on the GPU),
        // `gradient_presence` and `cpu_adapter` from common.wgsl.
        assert_eq!(
            variants.len(),
            kernel.entry_points().len() << (kernel.flags.len() + 3),
            "{}: one translation per entry point and flag combination",
            kernel.label
        );
        for v in &variants {
            assert!(v.spirv_words > 100, "{}: SPIR-V", v.label);
            assert!(v.msl.contains("kernel void"), "{}: MSL has a kernel entry point", v.label);
            // Muon's products take 16 invocations per workgroup on a CPU adapter.
            let size = if v.entry_point == "matmul" && v.flags.contains(&("cpu_adapter".to_string(), true)) { 16 } else { 256 };
            assert!(v.hlsl.contains(&format!("[numthreads({size}, 1, 1)]")), "{}: HLSL entry point", v.label);
            assert!(v.glsl.contains(&format!("layout(local_size_x = {size}")), "{}: GLSL workgroup size", v.label);
        }
    }
}

#[test]
#[cfg(feature = "portability")]
fn the_gradient_kernels_translate_to_every_backend_language() {
    let variants = translate_gradients().unwrap_or_else(|e| panic!("{e}"));
    let entry_points: Vec<&str> = variants.iter().map(|v| v.entry_point.as_str()).collect();
    for entry in ["norm_partials", "finalize", "advance", "count_missed"] {
        assert!(entry_points.contains(&entry), "{entry}: {entry_points:?}");
    }
    for v in &variants {
        assert!(v.spirv_words > 100 && v.msl.contains("kernel void") && v.hlsl.contains("numthreads") && v.glsl.contains("local_size_x"));
    }
}

#[test]
#[cfg(feature = "portability")]
fn a_broken_shader_is_reported_not_panicked() {
    let mut kernel = kernels().remove(0);
    kernel.source = "fn main( { }";
    let error = translate_all(&kernel).unwrap_err().to_string();
    assert!(error.contains("parsing of the sgd kernel"), "{error}");
}

/// The float probe tells fused from twice-rounded multiply-adds and exact from approximate
/// division: checked on synthetic adapter results, then on every adapter. Software adapters
/// (llvmpipe) round as the CPU twins do, which is why the twins match them bit for bit.
#[test]
fn the_float_probe_sees_how_each_adapter_rounds() {
    use crate::common::gpus;
    use wgpu_optim::probe::{compare, probe_float_semantics, probe_operands, PROBE_ELEMENTS};
    let [a, b, c] = probe_operands();
    let results = |fuse: bool, approximate_division: bool| -> Vec<f32> {
        (0..PROBE_ELEMENTS)
            .flat_map(|i| {
                let multiply_add = if fuse { a[i].mul_add(b[i], c[i]) } else { a[i] * b[i] + c[i] };
                let quotient = if approximate_division { a[i] * (1.0 / b[i]) } else { a[i] / b[i] };
                [multiply_add, quotient, a[i].sqrt(), a[i] * c[i]]
            })
            .collect()
    };
    let exact = compare(&a, &b, &c, &results(false, false));
    assert!(exact.matches_cpu(), "{exact:?}");
    assert!(exact.multiply_add_cases > 1000, "the operands must show fusion often: {exact:?}");
    assert_eq!(exact.multiply_add_separate, exact.multiply_add_cases);
    let fused = compare(&a, &b, &c, &results(true, true));
    assert_eq!(fused.multiply_add_fused, fused.multiply_add_cases, "{fused:?}");
    assert!(fused.division_inexact > 0 && fused.division_max_ulps >= 1, "{fused:?}");
    assert!(!fused.matches_cpu());

    for gpu in gpus() {
        let found = pollster::block_on(probe_float_semantics(gpu)).unwrap();
        println!("{}: {found}", gpu.adapter());
        assert_eq!(found.multiply_inexact, 0, "{}: IEEE multiplication is exact: {found:?}", gpu.adapter());
        assert!(found.multiply_add_fused + found.multiply_add_separate <= found.multiply_add_cases);
        if gpu.adapter().device_type == wgpu::DeviceType::Cpu {
            assert!(found.matches_cpu(), "{}: {found}", gpu.adapter());
        }
    }
}
