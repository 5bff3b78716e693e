//! Adafactor (`torch.optim.Adafactor`, torch 2.15); kernel: `shaders/adafactor.wgsl`.
//!
//! ```text
//! input: lr, beta2_decay, eps (eps1, eps2), d, weight_decay, maximize
//! eps1 = finfo(float32).eps                               if eps1 is None
//! for t = 1, 2, ...:
//!     g = -g                                              if maximize
//!     beta2_t = t^beta2_decay;  rho = min(lr, 1/sqrt(t))
//!     alpha = max(eps2, ‖p‖ / sqrt(n)) * rho
//!     p = p*(1 - lr*weight_decay)                         if weight_decay != 0
//!     if p has 2 or more dimensions (factored over the last two):
//!         row_var = lerp(row_var, ‖g‖²_rows / cols, beta2_t)      # shape [..., rows, 1]
//!         col_var = lerp(col_var, ‖g‖²_cols / rows, beta2_t)      # shape [..., 1, cols]
//!         est = (row_var @ col_var) / max(mean over rows of row_var, eps1)
//!     else:
//!         variance = lerp(variance, g*g, beta2_t);  est = variance
//!     u = (1/sqrt(max(est, eps1²))) * g
//!     p = p + (-alpha / max(1, ‖u‖ / (sqrt(n)*d))) * u
//! ```
//! Passes: `moments` (every element: the partials of ‖p‖², the row and column sums of squared
//! gradients in segments, one per invocation), `factor` (per tensor: ‖p‖, the row and column
//! moments from their segments, the row mean), `update_norm` (every
//! element: the variance of vectors, the partials of ‖u‖²), `step_size` (per tensor), `apply`
//! (every element). torch computes alpha and the step size in Python floats from `.item()`
//! norms; here they are f32 on the GPU, within a few ulps.

use serde::{Deserialize, Serialize};

use super::reduce::tensor_sum;
use super::{lerp, matrix_dims, step_tag, Check, CpuTensor, Kernel, Pass, Scope, StateSlot, StepScalars, StepTerms, TensorSlot, TermsMemo, UpdateRule};
use crate::error::Result;

/// Elements per segment of a row's sum of squared gradients (`ROW_SEGMENT` in the kernel).
const ROW_SEGMENT: usize = 1024;
/// Rows per segment of a column's sum (`COLUMN_SEGMENT` in the kernel).
const COLUMN_SEGMENT: usize = 256;

/// `torch.optim.Adafactor`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adafactor {
    /// Learning rate; the relative step size is `min(lr, 1/sqrt(t))`. Default 1e-2; finite, >= 0.
    pub lr: f64,
    /// Decay exponent of the second-moment averages: step t mixes the new squared gradient in with
    /// weight `t^beta2_decay`. Default -0.8; finite, <= 0.
    pub beta2_decay: f64,
    /// (eps1, eps2); eps1 `None` (JSON null) is float32's machine epsilon, as in torch.
    pub eps: (Option<f64>, f64),
    /// Clipping threshold of the update's root-mean-square. Default 1.0; finite, >= 1.
    pub d: f64,
    /// Decoupled weight decay: each step multiplies the parameters by `1 - lr*weight_decay`.
    /// Default 0; finite, >= 0.
    pub weight_decay: f64,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for Adafactor {
    fn default() -> Self {
        Adafactor { lr: 1e-2, beta2_decay: -0.8, eps: (None, 1e-3), d: 1.0, weight_decay: 0.0, maximize: false }
    }
}

/// Mirrors `struct AdafactorTerms` in `shaders/adafactor.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdafactorTerms {
    step: u32,
    beta2_t: f32,
    rsqrt_t: f32,
    _padding: f32,
}

/// Mirrors `struct AdafactorScalars` in `shaders/adafactor.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdafactorScalars {
    terms: AdafactorTerms,
    lr: f32,
    eps1: f32,
    eps1_squared: f32,
    eps2: f32,
    d: f32,
    weight_decay: f32,
    decay_factor: f32,
}

impl Adafactor {
    fn eps1(&self) -> f64 {
        self.eps.0.unwrap_or(f64::from(f32::EPSILON))
    }
}

impl UpdateRule for Adafactor {
    fn name(&self) -> &'static str {
        "Adafactor"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("Adafactor");
        check.non_negative("lr", self.lr)?;
        check.require(self.beta2_decay <= 0.0 && self.beta2_decay.is_finite(), "beta2_decay", self.beta2_decay, "must be <= 0")?;
        if let Some(eps1) = self.eps.0 {
            check.non_negative("eps[0]", eps1)?;
        }
        check.non_negative("eps[1]", self.eps.1)?;
        check.require(self.d >= 1.0 && self.d.is_finite(), "d", self.d, "must be >= 1 (the clipping threshold)")?;
        check.non_negative("weight_decay", self.weight_decay)
    }

    fn kernel(&self) -> Kernel {
        Kernel {
            label: "adafactor",
            source: concat!(include_str!("../../shaders/reduce.wgsl"), "\n", include_str!("../../shaders/adafactor.wgsl")),
            state_bindings: &[],
            flags: vec![("maximize", self.maximize)],
            passes: vec![
                Pass::new("moments", Scope::Elements),
                Pass::new("factor", Scope::Tensors),
                Pass::new("update_norm", Scope::Elements),
                Pass::new("step_size", Scope::Tensors),
                Pass::new("apply", Scope::Elements),
            ],
            per_tensor: true,
            whole_tensors: true,
            mode_switch: None,
            sparse_rows: false,
        }
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        Vec::new()
    }

    /// torch's shapes: `row_var` [..., rows, 1] and `col_var` [..., 1, cols] for tensors of 2 or
    /// more dimensions, else `variance` like the parameter.
    fn tensor_state(&self, shape: &[usize]) -> Vec<TensorSlot> {
        let n = shape.len();
        if n < 2 {
            return vec![TensorSlot { key: "variance", shape: shape.to_vec(), init: 0.0 }];
        }
        let mut row = shape.to_vec();
        row[n - 1] = 1;
        let mut col = shape.to_vec();
        col[n - 2] = 1;
        vec![TensorSlot { key: "row_var", shape: row, init: 0.0 }, TensorSlot { key: "col_var", shape: col, init: 0.0 }]
    }

    /// The row mean of `row_var`, one per matrix, then the segment sums of the rows' and
    /// columns' squared gradients.
    fn tensor_scratch(&self, shape: &[usize]) -> usize {
        if shape.len() < 2 {
            0
        } else {
            let (rows, cols, matrices) = matrix_dims(shape);
            matrices * (1 + rows * cols.div_ceil(ROW_SEGMENT) + cols * rows.div_ceil(COLUMN_SEGMENT))
        }
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        let t = step as f64;
        bytemuck::cast(AdafactorTerms {
            step: step_tag(step),
            beta2_t: t.powf(self.beta2_decay) as f32,
            rsqrt_t: (1.0 / t.powf(0.5)) as f32,
            _padding: 0.0,
        })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let eps1 = self.eps1();
        StepScalars::of(&AdafactorScalars {
            terms: bytemuck::cast(terms),
            lr: self.lr as f32,
            eps1: eps1 as f32,
            eps1_squared: (eps1 * eps1) as f32,
            eps2: self.eps.1 as f32,
            d: self.d as f32,
            weight_decay: self.weight_decay as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let s: AdafactorScalars = scalars.get();
        let CpuTensor { shape, param, grad, mut tensor_state, .. } = tensor;
        let g = |e: usize| if self.maximize { -grad[e] } else { grad[e] };
        let len = param.len();
        let [p_sq] = tensor_sum(len, |e| [param[e] * param[e]]);
        let p_norm = p_sq.sqrt();
        let (rows, cols, matrices) = matrix_dims(shape);
        let factored = shape.len() >= 2;
        let mut row_mean = Vec::new();
        if factored {
            let [row_var, col_var] = tensor_state.as_mut_slice() else { panic!("Adafactor keeps row_var and col_var") };
            // Each sum in segments, added in order (the kernel's moments and factor passes).
            let squares = |elements: &mut dyn Iterator<Item = usize>| elements.fold(0.0f32, |a, e| a + g(e) * g(e));
            for q in 0..matrices * rows {
                let norm = (0..cols.div_ceil(ROW_SEGMENT))
                    .map(|k| squares(&mut (k * ROW_SEGMENT..cols.min((k + 1) * ROW_SEGMENT)).map(|c| q * cols + c)))
                    .fold(0.0f32, |a, segment| a + segment)
                    .sqrt();
                row_var[q] = lerp(row_var[q], norm * norm / cols as f32, s.terms.beta2_t);
            }
            for q in 0..matrices * cols {
                let column = (q / cols) * rows * cols + q % cols;
                let norm = (0..rows.div_ceil(COLUMN_SEGMENT))
                    .map(|k| squares(&mut (k * COLUMN_SEGMENT..rows.min((k + 1) * COLUMN_SEGMENT)).map(|r| column + r * cols)))
                    .fold(0.0f32, |a, segment| a + segment)
                    .sqrt();
                col_var[q] = lerp(col_var[q], norm * norm / rows as f32, s.terms.beta2_t);
            }
            row_mean = (0..matrices).map(|b| ((0..rows).fold(0.0, |a, r| a + row_var[b * rows + r]) / rows as f32).max(s.eps1)).collect();
        } else {
            let [variance] = tensor_state.as_mut_slice() else { panic!("Adafactor keeps variance") };
            for e in 0..len {
                variance[e] = lerp(variance[e], g(e) * g(e), s.terms.beta2_t);
            }
        }
        let state = &tensor_state;
        let update = |e: usize| {
            let estimate = if factored {
                let (b, r, c) = (e / (rows * cols), (e / cols) % rows, e % cols);
                state[0][b * rows + r] * state[1][b * cols + c] / row_mean[b]
            } else {
                state[0][e]
            };
            (1.0 / estimate.max(s.eps1_squared).sqrt()) * g(e)
        };
        let [u_sq] = tensor_sum(len, |e| {
            let u = update(e);
            [u * u]
        });
        let sqrt_n = (len as f32).sqrt();
        let rho = s.lr.min(s.terms.rsqrt_t);
        let alpha = s.eps2.max(p_norm / sqrt_n) * rho;
        let denom = 1.0f32.max(u_sq.sqrt() / (sqrt_n * s.d));
        let coefficient = -alpha / denom;
        for e in 0..len {
            let mut p = param[e];
            if s.weight_decay != 0.0 {
                p *= s.decay_factor;
            }
            param[e] = p + coefficient * update(e);
        }
    }

    common_rule_methods!();
}
