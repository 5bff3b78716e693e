//! Shader portability without the hardware: every kernel, under every combination of its
//! flags, is parsed and validated by naga and translated to SPIR-V (Vulkan), MSL (Metal),
//! HLSL (DX12) and GLSL (GL), and checked against WebGPU's default limits.


use crate::error::{Error, Result};
use crate::rules::Kernel;

/// WebGPU's default limits the kernels must stay within, so the same WGSL runs in every browser.
pub const WEBGPU_MAX_STORAGE_BUFFERS_PER_STAGE: usize = 8;
pub const WEBGPU_MAX_INVOCATIONS_PER_WORKGROUP: u32 = 256;

/// One kernel variant translated to every target language.
#[derive(Clone, Debug)]
pub struct Translation {
    pub label: &'static str,
    pub entry_point: String,
    pub flags: Vec<(String, bool)>,
    pub spirv_words: usize,
    pub msl: String,
    pub hlsl: String,
    pub glsl: String,
}

fn fail(label: &str, stage: &str, error: impl std::fmt::Display) -> Error {
    Error::Gpu { context: format!("{stage} of the {label} kernel"), message: error.to_string() }
}

/// Translates every flag combination of an update rule's kernel.
pub fn translate_all(kernel: &Kernel) -> Result<Vec<Translation>> {
    translate(kernel.label, &kernel.wgsl(), &kernel.entry_points())
}

/// Translates the gradient-conditioning kernels (norm pass and finalize).
pub fn translate_gradients() -> Result<Vec<Translation>> {
    translate("gradients", &crate::gradients::gradients_wgsl(), &["norm_partials", "finalize", "advance", "count_missed"])
}

/// Translates every flag combination of `source`, for each entry point.
fn translate(label: &'static str, source: &str, entry_points: &[&str]) -> Result<Vec<Translation>> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| fail(label, "parsing", e.emit_to_string(source)))?;
    // The boolean overrides are the flags; the others (e.g. a workgroup size derived from
    // them) keep their initializers.
    let flag_names: Vec<String> = module
        .overrides
        .iter()
        .filter(|(_, o)| matches!(module.types[o.ty].inner, naga::TypeInner::Scalar(naga::Scalar::BOOL)))
        .filter_map(|(_, o)| o.name.clone())
        .collect();
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty());
    let info = validator.validate(&module).map_err(|e| fail(label, "validation", e.emit_to_string(source)))?;
    check_webgpu_limits(label, &module)?;

    let combinations = (0..1u32 << flag_names.len()).flat_map(|bits| entry_points.iter().map(move |&entry| (bits, entry)));
    combinations
        .map(|(bits, entry_point)| {
            let flags: Vec<(String, bool)> =
                flag_names.iter().enumerate().map(|(k, name)| (name.clone(), bits & (1 << k) != 0)).collect();
            let constants: naga::back::PipelineConstants =
                flags.iter().map(|(name, on)| (name.clone(), f64::from(u8::from(*on)))).collect();
            let entry = (naga::ShaderStage::Compute, entry_point);
            let (module, info) = naga::back::pipeline_constants::process_overrides(&module, &info, Some(entry), &constants)
                .map_err(|e| fail(label, "applying flags", e))?;

            let spirv = naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
                .map_err(|e| fail(label, "SPIR-V translation", e))?;

            let msl_pipeline = naga::back::msl::PipelineOptions {
                entry_point: Some((entry.0, entry.1.to_string())),
                ..Default::default()
            };
            let (msl, _) = naga::back::msl::write_string(&module, &info, &naga::back::msl::Options::default(), &msl_pipeline)
                .map_err(|e| fail(label, "MSL translation", e))?;

            let hlsl_options = naga::back::hlsl::Options {
                // num_workgroups comes from a constant buffer on DX12, as wgpu binds it.
                special_constants_binding: Some(naga::back::hlsl::BindTarget { space: 1, register: 0, ..Default::default() }),
                ..Default::default()
            };
            let hlsl_pipeline = naga::back::hlsl::PipelineOptions { entry_point: Some((entry.0, entry.1.to_string())) };
            let mut hlsl = String::new();
            naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline)
                .write(&module, &info, None)
                .map_err(|e| fail(label, "HLSL translation", e))?;

            let glsl_options = naga::back::glsl::Options {
                version: naga::back::glsl::Version::Embedded { version: 310, is_webgl: false },
                ..Default::default()
            };
            let glsl_pipeline = naga::back::glsl::PipelineOptions {
                shader_stage: entry.0,
                entry_point: entry.1.to_string(),
                multiview: None,
            };
            let mut glsl = String::new();
            naga::back::glsl::Writer::new(&mut glsl, &module, &info, &glsl_options, &glsl_pipeline, Default::default())
                .and_then(|mut w| w.write())
                .map_err(|e| fail(label, "GLSL translation", e))?;

            Ok(Translation { label, entry_point: entry_point.to_string(), flags, spirv_words: spirv.len(), msl, hlsl, glsl })
        })
        .collect()
}

fn check_webgpu_limits(label: &str, module: &naga::Module) -> Result<()> {
    let storage = module
        .global_variables
        .iter()
        .filter(|(_, v)| matches!(v.space, naga::AddressSpace::Storage { .. }))
        .count();
    if storage > WEBGPU_MAX_STORAGE_BUFFERS_PER_STAGE {
        return Err(fail(
            label,
            "the WebGPU limit check",
            format!("{storage} storage buffers; WebGPU allows {WEBGPU_MAX_STORAGE_BUFFERS_PER_STAGE} per stage"),
        ));
    }
    for entry in &module.entry_points {
        let invocations: u32 = entry.workgroup_size.iter().product();
        if invocations > WEBGPU_MAX_INVOCATIONS_PER_WORKGROUP {
            return Err(fail(
                label,
                "the WebGPU limit check",
                format!("{invocations} invocations per workgroup; WebGPU allows {WEBGPU_MAX_INVOCATIONS_PER_WORKGROUP}"),
            ));
        }
    }
    Ok(())
}
