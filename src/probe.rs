//! What an adapter's f32 arithmetic does, measured: whether the driver fuses `a * b + c` into one
//! rounding, and how far its division and square root are from correctly rounded.
//!
//! Every rule's CPU twin rounds each operation on its own, as llvmpipe does, so the two agree bit
//! for bit there. A driver that contracts multiply-adds into FMA (WGSL allows it, and NVIDIA's
//! Vulkan driver does) or approximates division and square root (Vulkan allows 2.5 and 3 ulps)
//! agrees to a few ulps instead, and `wgpu-optim adapters --probe` says which of these it is.

use crate::context::GpuContext;
use crate::error::Result;
use crate::optimizer::{read_views, TensorView};
use wgpu::util::DeviceExt;

/// Elements probed: enough random operands that every effect shows many times.
pub const PROBE_ELEMENTS: usize = 1 << 16;

/// The probe's findings on one adapter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FloatSemantics {
    /// Elements where the fused and the separately rounded `a * b + c` differ.
    pub multiply_add_cases: usize,
    /// Of those, how many the adapter computed fused (one rounding).
    pub multiply_add_fused: usize,
    /// Of those, how many it computed with two roundings, as the CPU twins do.
    pub multiply_add_separate: usize,
    /// Divisions that differ from the correctly rounded quotient.
    pub division_inexact: usize,
    /// The largest distance of a quotient from the correctly rounded one, in ulps.
    pub division_max_ulps: u32,
    /// Square roots that differ from the correctly rounded root.
    pub sqrt_inexact: usize,
    /// The largest distance of a root from the correctly rounded one, in ulps.
    pub sqrt_max_ulps: u32,
    /// Products that differ from the correctly rounded product (IEEE requires none).
    pub multiply_inexact: usize,
}

impl FloatSemantics {
    /// True when the adapter rounds as the CPU twins do: no fusion, exact `/`, `sqrt` and `*`.
    pub fn matches_cpu(&self) -> bool {
        self.multiply_add_fused == 0 && self.division_inexact == 0 && self.sqrt_inexact == 0 && self.multiply_inexact == 0
    }
}

impl std::fmt::Display for FloatSemantics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fma = if self.multiply_add_fused == 0 && self.multiply_add_separate == self.multiply_add_cases {
            format!("a*b+c rounded twice, as the CPU twins ({} cases where fusing differs)", self.multiply_add_cases)
        } else if self.multiply_add_fused == self.multiply_add_cases {
            format!("a*b+c fused into one FMA ({} cases where fusing differs)", self.multiply_add_cases)
        } else {
            format!("a*b+c fused in {} of {} cases", self.multiply_add_fused, self.multiply_add_cases)
        };
        let exact = |inexact: usize, ulps: u32| {
            if inexact == 0 {
                "correctly rounded".to_string()
            } else {
                format!("{inexact} of {PROBE_ELEMENTS} off, up to {ulps} ulp")
            }
        };
        write!(
            f,
            "{fma}; division {}; sqrt {}",
            exact(self.division_inexact, self.division_max_ulps),
            exact(self.sqrt_inexact, self.sqrt_max_ulps)
        )?;
        if self.multiply_inexact > 0 {
            write!(f, "; multiplication {} of {PROBE_ELEMENTS} off", self.multiply_inexact)?;
        }
        Ok(())
    }
}

/// The probe's operands: a spread of magnitudes and signs, deterministic.
pub fn probe_operands() -> [Vec<f32>; 3] {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut operand = |signed: bool| {
        (0..PROBE_ELEMENTS)
            .map(|_| {
                let bits = next();
                let mantissa = 1.0 + (bits >> 40) as f32 / (1u64 << 24) as f32;
                let exponent = ((bits >> 8) % 32) as i32 - 16;
                let sign = if signed && bits & 1 == 1 { -1.0 } else { 1.0 };
                sign * mantissa * 2f32.powi(exponent)
            })
            .collect::<Vec<f32>>()
    };
    [operand(false), operand(true), operand(true)]
}

/// Distance in units in the last place between two finite f32 of the same sign.
fn ulps(x: f32, y: f32) -> u32 {
    let key = |v: f32| {
        let bits = v.to_bits() as i64;
        if bits < 0x8000_0000 { bits } else { 0x8000_0000 - bits }
    };
    (key(x) - key(y)).unsigned_abs().min(u32::MAX as u64) as u32
}

/// Runs the probe on the adapter and compares with correctly rounded results: f64 holds the
/// exact product of two f32, and rounding an f64 quotient or root to f32 is correct rounding.
pub async fn probe_float_semantics(gpu: &GpuContext) -> Result<FloatSemantics> {
    let device = gpu.device();
    let [a, b, c] = probe_operands();
    let input = |data: &[f32], label| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let (a_buffer, b_buffer, c_buffer) = (input(&a, "probe a"), input(&b, "probe b"), input(&c, "probe c"));
    let results = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("probe results"),
        size: (PROBE_ELEMENTS * 16) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let pipeline = gpu
        .checked("creating the float probe", || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("float probe"),
                source: wgpu::ShaderSource::Wgsl(include_str!("../shaders/float_probe.wgsl").into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("float probe"),
                layout: None,
                module: &module,
                entry_point: Some("probe"),
                compilation_options: Default::default(),
                cache: None,
            })
        })
        .await?;
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("float probe"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[&a_buffer, &b_buffer, &c_buffer, &results]
            .iter()
            .enumerate()
            .map(|(i, buffer)| wgpu::BindGroupEntry { binding: i as u32, resource: buffer.as_entire_binding() })
            .collect::<Vec<_>>(),
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("float probe") });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("float probe"), timestamp_writes: None });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups((PROBE_ELEMENTS / 64) as u32, 1, 1);
    }
    gpu.queue().submit([encoder.finish()]);
    let view = TensorView { buffer: results, offset: 0, len: PROBE_ELEMENTS * 4, dtype: crate::storage::Dtype::F32 };
    let got = read_views(gpu, &[view]).await?.remove(0);
    Ok(compare(&a, &b, &c, &got))
}

/// Compares the adapter's results (four per element, as the kernel writes them: a*b+c, a/b,
/// sqrt(a), a*c) with the CPU's.
pub fn compare(a: &[f32], b: &[f32], c: &[f32], got: &[f32]) -> FloatSemantics {
    let mut found = FloatSemantics::default();
    for i in 0..a.len() {
        let [multiply_add, quotient, root, product] = [got[4 * i], got[4 * i + 1], got[4 * i + 2], got[4 * i + 3]];
        let separate = a[i] * b[i] + c[i];
        let fused = a[i].mul_add(b[i], c[i]);
        if separate != fused {
            found.multiply_add_cases += 1;
            found.multiply_add_fused += (multiply_add == fused) as usize;
            found.multiply_add_separate += (multiply_add == separate) as usize;
        }
        let exact_quotient = (a[i] as f64 / b[i] as f64) as f32;
        if quotient != exact_quotient {
            found.division_inexact += 1;
            found.division_max_ulps = found.division_max_ulps.max(ulps(quotient, exact_quotient));
        }
        let exact_root = (a[i] as f64).sqrt() as f32;
        if root != exact_root {
            found.sqrt_inexact += 1;
            found.sqrt_max_ulps = found.sqrt_max_ulps.max(ulps(root, exact_root));
        }
        found.multiply_inexact += (product != a[i] * c[i]) as usize;
    }
    found
}
