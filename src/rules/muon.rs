//! Muon (`torch.optim.Muon`, torch 2.15); kernel: `shaders/muon.wgsl`. 2-D parameters only;
//! pair it with AdamW for the rest (a parameter group may use another rule).
//!
//! ```text
//! input: lr, weight_decay, momentum, nesterov, ns_coefficients (a, b, c), eps, ns_steps,
//!        adjust_lr_fn, ns_precision (ours: "bfloat16", torch's, or "float32")
//! for t = 1, 2, ...:
//!     buf = lerp(buf, g, 1 - momentum)                        # momentum_buffer
//!     X = lerp(g, buf, momentum) if nesterov, else buf
//!     X = Xᵀ                                                  if rows > cols
//!     X = X / max(‖X‖, eps)
//!     repeat ns_steps times:
//!         A = X Xᵀ
//!         B = b*A + c*(A A)
//!         X = a*X + B X
//!     X = Xᵀ                                                  if rows > cols
//!     p = p*(1 - lr*weight_decay)
//!     p = p + (-lr*ratio)*X        ratio: sqrt(max(1, rows/cols)) ("original", the default),
//!                                  0.2*sqrt(max(rows, cols)) ("match_rms_adamw"), sqrt(rows/cols)
//! ```
//! torch runs Newton–Schulz in bfloat16: X is rounded to bfloat16 after each operation, and
//! products accumulate in f32. `ns_precision: "bfloat16"` (the default) rounds where torch
//! does; `"float32"` keeps every value in f32. The matrices of a step are processed in batches
//! of the same shape, each pass one dispatch per batch, so dispatches grow with the number of
//! distinct shapes. A matrix whose Newton–Schulz scratch (2mn + 2m² floats, m ≤ n) exceeds one
//! storage binding is rejected when the optimizer is built.
//!
//! The products take two shapes, which add every output's products in the same order and so
//! agree bit for bit: 64 × 64 tiles staged in workgroup memory on a GPU, and 16 × 16 register
//! blocks per invocation on a CPU adapter such as llvmpipe, 5.7× faster there
//! ([`GpuContext::with_cpu_kernels`](crate::GpuContext::with_cpu_kernels)).

use serde::{Deserialize, Serialize};

use super::reduce::strided_sum;
use super::{lerp, step_tag, Check, CpuTensor, Kernel, Pass, Scope, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::{Error, Result};

/// torch's `adjust_lr_fn`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdjustLr {
    /// `sqrt(max(1, rows/cols))` (torch's default).
    #[serde(rename = "original")]
    Original,
    /// `0.2*sqrt(max(rows, cols))`: matches the update's RMS to AdamW's.
    #[serde(rename = "match_rms_adamw")]
    MatchRmsAdamw,
    /// `sqrt(rows/cols)`.
    #[serde(rename = "spectral_unclamped")]
    SpectralUnclamped,
}

/// The arithmetic of the Newton–Schulz iteration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum NsPrecision {
    /// Round to bfloat16 where torch's bfloat16 tensors are (torch's behaviour).
    #[default]
    #[serde(rename = "bfloat16")]
    Bfloat16,
    /// Exact f32 throughout.
    #[serde(rename = "float32")]
    Float32,
}

/// `torch.optim.Muon`, with torch's defaults, plus `ns_precision`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Muon {
    /// Learning rate, scaled by `adjust_lr_fn`'s ratio. Default 1e-3; finite, >= 0.
    pub lr: f64,
    /// Decoupled weight decay: each step multiplies the parameters by `1 - lr*weight_decay`.
    /// Default 0.1; finite, >= 0.
    pub weight_decay: f64,
    /// Momentum factor: the decay of the `momentum_buffer`. Default 0.95; finite, >= 0.
    pub momentum: f64,
    /// Orthogonalizes the Nesterov look-ahead `lerp(g, buf, momentum)` instead of the buffer.
    /// Default true.
    pub nesterov: bool,
    /// The coefficients (a, b, c) of the quintic Newton–Schulz iteration. Default
    /// (3.4445, -4.775, 2.0315); each finite.
    pub ns_coefficients: (f64, f64, f64),
    /// Lower bound of the norm that the update is divided by before Newton–Schulz. Default 1e-7;
    /// any finite value.
    pub eps: f64,
    /// Newton–Schulz iterations per step. Default 5; < 100.
    pub ns_steps: u32,
    /// `None` (JSON null) is "original".
    pub adjust_lr_fn: Option<AdjustLr>,
    /// The arithmetic of the Newton–Schulz iteration (not a torch argument). Default bfloat16, as
    /// torch.
    pub ns_precision: NsPrecision,
}

impl Default for Muon {
    fn default() -> Self {
        Muon {
            lr: 1e-3,
            weight_decay: 0.1,
            momentum: 0.95,
            nesterov: true,
            ns_coefficients: (3.4445, -4.775, 2.0315),
            eps: 1e-7,
            ns_steps: 5,
            adjust_lr_fn: None,
            ns_precision: NsPrecision::Bfloat16,
        }
    }
}

/// Mirrors `struct MuonTerms` in `shaders/muon.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MuonTerms {
    step: u32,
    _padding: [f32; 3],
}

/// Mirrors `struct MuonScalars` in `shaders/muon.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MuonScalars {
    terms: MuonTerms,
    lr: f32,
    decay_factor: f32,
    momentum: f32,
    one_minus_momentum: f32,
    a: f32,
    b: f32,
    c: f32,
    eps: f32,
    adjust: u32,
}

/// Scratch regions and products of the kernel's `matmul` pass (`shaders/muon.wgsl`).
const X: u32 = 0;
const Y: u32 = 1;
const A: u32 = 2;
const B: u32 = 3;
const NONE: u32 = 4;
const GRAM: u32 = 0;
const UPDATE: u32 = 1;
const COMBINE: u32 = 2;

/// The iterate's shape: m ≤ n.
fn iterate_dims(shape: &[usize]) -> (usize, usize) {
    (shape[0].min(shape[1]), shape[0].max(shape[1]))
}

fn workgroups(n: usize) -> (u32, u32) {
    let n = n.max(1);
    let x = n.min(65_535);
    (x as u32, n.div_ceil(x) as u32)
}

/// One invocation per `vec4` of the parameter.
fn vec4_grid(shape: &[usize]) -> (u32, u32) {
    workgroups((shape[0] * shape[1]).div_ceil(4).div_ceil(256))
}

fn one_workgroup(_: &[usize]) -> (u32, u32) {
    (1, 1)
}

/// 64 × 64 blocks of an m × m product (a workgroup's 256 invocations compute 4 × 4 each).
fn square_tiles(shape: &[usize]) -> (u32, u32) {
    let (m, _) = iterate_dims(shape);
    (m.div_ceil(64) as u32, m.div_ceil(64) as u32)
}

/// 64 × 64 blocks of an m × n product.
fn wide_tiles(shape: &[usize]) -> (u32, u32) {
    let (m, n) = iterate_dims(shape);
    (n.div_ceil(64) as u32, m.div_ceil(64) as u32)
}

fn matmul(grid: fn(&[usize]) -> (u32, u32), out: u32, left: u32, right: u32, add: u32, product: u32, alpha: f32, beta: f32) -> Pass {
    Pass::new("matmul", Scope::Matrices { grid }).with_args([out, left, right, add, product, alpha.to_bits(), beta.to_bits(), 0])
}

/// torch's bfloat16 conversion: round to nearest, ties to even.
pub(crate) fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    if bits & 0x7f80_0000 == 0x7f80_0000 {
        return x;
    }
    f32::from_bits((bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
}

impl Muon {
    fn round(&self, x: f32) -> f32 {
        match self.ns_precision {
            NsPrecision::Bfloat16 => round_bf16(x),
            NsPrecision::Float32 => x,
        }
    }

    /// `matmul` of the kernel: out = alpha*(left @ right) + beta*add, rows × cols, inner k.
    #[allow(clippy::too_many_arguments)]
    fn product(&self, left: &[f32], right: impl Fn(usize, usize) -> f32, add: Option<(&[f32], f32)>, rows: usize, cols: usize, inner: usize, alpha: f32) -> Vec<f32> {
        let mut out = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                let acc = (0..inner).fold(0.0f32, |acc, k| acc + left[i * inner + k] * right(k, j));
                let mut value = alpha * acc;
                if let Some((add, beta)) = add {
                    value += beta * add[i * cols + j];
                }
                out[i * cols + j] = self.round(value);
            }
        }
        out
    }
}

impl UpdateRule for Muon {
    fn name(&self) -> &'static str {
        "Muon"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("Muon");
        check.non_negative("lr", self.lr)?;
        check.non_negative("momentum", self.momentum)?;
        check.non_negative("weight_decay", self.weight_decay)?;
        check.finite("eps", self.eps)?;
        let (a, b, c) = self.ns_coefficients;
        for (name, value) in [("ns_coefficients[0]", a), ("ns_coefficients[1]", b), ("ns_coefficients[2]", c)] {
            check.finite(name, value)?;
        }
        check.require(
            self.ns_steps < 100,
            "ns_steps",
            f64::from(self.ns_steps),
            "Number of steps must be less than 100 for computational efficiency",
        )
    }

    fn check_tensor(&self, name: &str, shape: &[usize]) -> Result<()> {
        if shape.len() != 2 {
            return Err(Error::Tensor(format!(
                "Muon only supports 2D parameters whereas we found a parameter with size: {shape:?} (tensor {name:?}); \
                 put it in a parameter group of another rule, e.g. AdamW"
            )));
        }
        Ok(())
    }

    fn kernel(&self) -> Kernel {
        let matrices = |entry, grid| Pass::new(entry, Scope::Matrices { grid });
        let (a, b, c) = (self.ns_coefficients.0 as f32, self.ns_coefficients.1 as f32, self.ns_coefficients.2 as f32);
        let mut passes = vec![matrices("momentum", vec4_grid), matrices("normalize", one_workgroup)];
        let (mut x, mut y) = (X, Y);
        for _ in 0..self.ns_steps {
            passes.push(matmul(square_tiles, A, x, x, NONE, GRAM, 1.0, 0.0)); //      A = X Xᵀ
            passes.push(matmul(square_tiles, B, A, A, A, UPDATE, c, b)); //           B = b*A + c*(A A)
            passes.push(matmul(wide_tiles, y, B, x, x, COMBINE, 1.0, a)); //          Y = a*X + B X
            std::mem::swap(&mut x, &mut y);
        }
        passes.push(matrices("apply", vec4_grid).with_args([x, 0, 0, 0, 0, 0, 0, 0]));
        Kernel {
            label: "muon",
            source: concat!(include_str!("../../shaders/reduce.wgsl"), "\n", include_str!("../../shaders/muon.wgsl")),
            state_bindings: &["momentum_buffer"],
            flags: vec![("nesterov", self.nesterov), ("bfloat16", self.ns_precision == NsPrecision::Bfloat16)],
            passes,
            per_tensor: false,
            whole_tensors: true,
            mode_switch: None,
            sparse_rows: false,
        }
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "momentum_buffer", init: 0.0, nonnegative: false }]
    }

    /// The norm's four words, then X and Y (m × n) and A and B (m × m).
    fn tensor_scratch(&self, shape: &[usize]) -> usize {
        let (m, n) = iterate_dims(shape);
        4 + 2 * m * n + 2 * m * m
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        bytemuck::cast(MuonTerms { step: step_tag(step), _padding: [0.0; 3] })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let (a, b, c) = self.ns_coefficients;
        StepScalars::of(&MuonScalars {
            terms: bytemuck::cast(terms),
            lr: self.lr as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            momentum: self.momentum as f32,
            one_minus_momentum: (1.0 - self.momentum) as f32,
            a: a as f32,
            b: b as f32,
            c: c as f32,
            eps: self.eps as f32,
            adjust: match self.adjust_lr_fn {
                None | Some(AdjustLr::Original) => 0,
                Some(AdjustLr::MatchRmsAdamw) => 1,
                Some(AdjustLr::SpectralUnclamped) => 2,
            },
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let s: MuonScalars = scalars.get();
        let CpuTensor { shape, param, grad, mut state, .. } = tensor;
        let [buffer] = state.as_mut_slice() else { panic!("Muon keeps momentum_buffer") };
        let (rows, cols) = (shape[0], shape[1]);
        let (m, n) = iterate_dims(shape);
        let transposed = rows > cols;
        let at = |e: usize| if transposed { (e % cols) * rows + e / cols } else { e };
        let mut x = vec![0.0f32; m * n];
        for e in 0..param.len() {
            buffer[e] = lerp(buffer[e], grad[e], s.one_minus_momentum);
            let update = if self.nesterov { lerp(grad[e], buffer[e], s.momentum) } else { buffer[e] };
            x[at(e)] = self.round(update);
        }
        let norm = self.round(strided_sum(m * n, |q| x[q] * x[q]).sqrt());
        let scale = self.round(norm.max(s.eps));
        for value in &mut x {
            *value = self.round(*value / scale);
        }
        for _ in 0..self.ns_steps {
            let gram = self.product(&x, |k, j| x[j * n + k], None, m, m, n, 1.0);
            let update = self.product(&gram, |k, j| gram[k * m + j], Some((&gram, s.b)), m, m, m, s.c);
            x = self.product(&update, |k, j| x[k * n + j], Some((&x, s.a)), m, n, m, 1.0);
        }
        let (rows_f, cols_f) = (rows as f32, cols as f32);
        let ratio_lr = match s.adjust {
            1 => s.lr * (0.2 * rows_f.max(cols_f).sqrt()),
            2 => s.lr * (rows_f / cols_f).sqrt(),
            _ => s.lr * 1.0f32.max(rows_f / cols_f).sqrt(),
        };
        let step_size = -ratio_lr;
        for e in 0..param.len() {
            param[e] = param[e] * s.decay_factor + step_size * x[at(e)];
        }
    }

    fn cycled_momentum(&self) -> Option<super::CycledMomentum> {
        Some(super::CycledMomentum { key: "momentum", value: self.momentum })
    }

    fn set_cycled_momentum(&mut self, value: f64) -> Result<()> {
        self.momentum = value;
        Ok(())
    }

    common_rule_methods!();
}
