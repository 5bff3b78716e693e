//! SparseAdam (`torch.optim.SparseAdam`, torch 2.15, `_functional.sparse_adam`); kernel:
//! `shaders/sparse_adam.wgsl`.
//!
//! ```text
//! input: lr, betas (beta1, beta2), eps, maximize; gradients row-sparse
//! for t = 1, 2, ...:
//!     for every row the gradient touches (the others keep p, m and v bit for bit):
//!         g = -g                                          if maximize
//!         m_update = (g - m)*(1 - beta1);    m = m + m_update
//!         v_update = (g*g - v)*(1 - beta2);  v = v + v_update
//!         p = p + (-step_size) * ((m_update + m_old) / (sqrt(v_update + v_old) + eps))
//!     step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
//! ```
//! A sparse gradient reaches the GPU as its values, written into the dense gradient buffer
//! (`Optimizer::grad`), and a mask of the rows it touches (`Optimizer::grad_rows`, one `u32`
//! per row, non-zero: touched), written by the user's kernel or by
//! `Optimizer::write_sparse_grad`. A row is a row of the last dimension (an embedding's row:
//! torch's `sparse_dim = ndim - 1`), or one element of a vector. The step consumes the mask:
//! its second pass clears it, so the next step's gradient starts with no row touched. A row
//! touched with zero values is still updated (its moments decay), as in torch; a tensor with
//! no touched row is not updated, but its step still counts, as in torch.
//!
//! `step_size` is computed on the CPU in f64, as torch computes it in Python floats, and
//! rounded to f32 as torch's `-step_size * tensor` rounds it.

use serde::{Deserialize, Serialize};

use super::{sparse_rows, step_tag, Check, CpuTensor, Kernel, Pass, Scope, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `torch.optim.SparseAdam`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SparseAdam {
    /// Learning rate. Default 1e-3; finite, > 0.
    pub lr: f64,
    /// Coefficients of the running averages of the gradient (`exp_avg`, torch's `betas[0]`) and of
    /// its square (`exp_avg_sq`, `betas[1]`). Default (0.9, 0.999); each in [0, 1).
    pub betas: (f64, f64),
    /// Added to the root of the second moment in the denominator, for numerical stability. Default
    /// 1e-8; finite, > 0.
    pub eps: f64,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for SparseAdam {
    fn default() -> Self {
        SparseAdam { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, maximize: false }
    }
}

/// Mirrors `struct SparseAdamScalars` in `shaders/sparse_adam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SparseAdamScalars {
    /// The tag, then `-step_size`.
    terms: StepTerms,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    _padding: f32,
}

impl UpdateRule for SparseAdam {
    fn name(&self) -> &'static str {
        "SparseAdam"
    }

    /// torch's checks: `0 < lr`, `0 < eps` (strict, unlike Adam), betas in [0, 1).
    fn validate(&self) -> Result<()> {
        let check = Check("SparseAdam");
        check.require(self.lr > 0.0 && self.lr.is_finite(), "lr", self.lr, "must be finite and > 0")?;
        check.require(self.eps > 0.0 && self.eps.is_finite(), "eps", self.eps, "must be finite and > 0")?;
        check.unit_interval_open("betas[0]", self.betas.0)?;
        check.unit_interval_open("betas[1]", self.betas.1)
    }

    fn kernel(&self) -> Kernel {
        Kernel {
            passes: vec![Pass::new("update", Scope::Elements), Pass::new("clear_rows", Scope::Tensors)],
            per_tensor: true,
            sparse_rows: true,
            ..Kernel::element_wise(
                "sparse_adam",
                include_str!("../../shaders/sparse_adam.wgsl"),
                &["exp_avg", "exp_avg_sq"],
                vec![("maximize", self.maximize)],
            )
        }
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "exp_avg", init: 0.0, nonnegative: false }, StateSlot { key: "exp_avg_sq", init: 0.0, nonnegative: true }]
    }

    /// The step's tag and `-step_size` (it depends on t).
    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        let (beta1, beta2) = self.betas;
        let t = step as f64;
        let step_size = self.lr * (1.0 - beta2.powf(t)).sqrt() / (1.0 - beta1.powf(t));
        StepTerms([step_tag(step), ((-step_size) as f32).to_bits(), 0, 0])
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let (beta1, beta2) = self.betas;
        StepScalars::of(&SparseAdamScalars {
            terms,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
            _padding: 0.0,
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { shape, param, grad, mut state, grad_rows, .. } = tensor;
        let s: SparseAdamScalars = scalars.get();
        let [exp_avg, exp_avg_sq] = state.as_mut_slice() else { panic!("SparseAdam keeps exp_avg and exp_avg_sq") };
        let (_, row_length) = sparse_rows(shape);
        let neg_step_size = f32::from_bits(s.terms.0[1]);
        for i in 0..param.len() {
            if grad_rows[i / row_length] == 0 {
                continue;
            }
            let mut g = grad[i];
            if self.maximize {
                g = -g;
            }
            let (m_old, v_old) = (exp_avg[i], exp_avg_sq[i]);
            let m_update = (g - m_old) * s.one_minus_beta1;
            let v_update = (g * g - v_old) * s.one_minus_beta2;
            exp_avg[i] = m_old + m_update;
            exp_avg_sq[i] = v_old + v_update;
            let numer = m_update + m_old;
            let denom = (v_update + v_old).sqrt() + s.eps;
            param[i] += neg_step_size * (numer / denom);
        }
    }

    common_rule_methods!();
}
