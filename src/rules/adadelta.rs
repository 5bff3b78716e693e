//! Adadelta (`torch.optim.Adadelta`); kernel: `shaders/adadelta.wgsl`.
//!
//! ```text
//! input: lr, rho, eps, weight_decay, maximize
//! for t = 1, 2, ...:
//!     g = -g                                          if maximize
//!     g = g + weight_decay*p                          if weight_decay != 0
//!     sq = sq*rho + (1 - rho)*g*g                     # square_avg
//!     delta = sqrt(acc + eps) / sqrt(sq + eps) * g
//!     acc = acc*rho + (1 - rho)*delta*delta           # acc_delta
//!     p = p + (-lr)*delta
//! ```
//! torch keeps a learning rate (default 1.0) that Zeiler's paper does not have, and puts eps
//! inside both square roots.

use serde::{Deserialize, Serialize};

use super::{CpuTensor, step_tag, Check, Kernel, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `torch.optim.Adadelta`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adadelta {
    /// Coefficient that scales the update `delta` before it is applied (Zeiler's paper has none).
    /// Default 1.0; finite, >= 0.
    pub lr: f64,
    /// Coefficient of the running averages of the squared gradient (`square_avg`) and of the
    /// squared update (`acc_delta`). Default 0.9; in [0, 1].
    pub rho: f64,
    /// Added inside both square roots, for numerical stability. Default 1e-6; finite, >= 0.
    pub eps: f64,
    /// Weight decay: the L2 penalty added to the gradient (`g + weight_decay*p`). Default 0;
    /// finite, >= 0.
    pub weight_decay: f64,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for Adadelta {
    fn default() -> Self {
        Adadelta {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Mirrors `struct AdadeltaScalars` in `shaders/adadelta.wgsl` (the terms carry only t).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdadeltaScalars {
    terms: StepTerms,
    neg_lr: f32,
    rho: f32,
    one_minus_rho: f32,
    eps: f32,
    weight_decay: f32,
    _padding: [f32; 7],
}

impl UpdateRule for Adadelta {
    fn name(&self) -> &'static str {
        "Adadelta"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("Adadelta");
        check.non_negative("lr", self.lr)?;
        check.unit_interval_closed("rho", self.rho)?;
        check.non_negative("eps", self.eps)?;
        check.non_negative("weight_decay", self.weight_decay)
    }

    fn kernel(&self) -> Kernel {
        Kernel::element_wise("adadelta", include_str!("../../shaders/adadelta.wgsl"), &["square_avg", "acc_delta"], vec![("maximize", self.maximize)])
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "square_avg", init: 0.0, nonnegative: true }, StateSlot { key: "acc_delta", init: 0.0, nonnegative: true }]
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        StepTerms([step_tag(step), 0, 0, 0])
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        StepScalars::of(&AdadeltaScalars {
            terms,
            neg_lr: (-self.lr) as f32,
            rho: self.rho as f32,
            one_minus_rho: (1.0 - self.rho) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            _padding: [0.0; 7],
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { param, grad, mut state, .. } = tensor;
        let s: AdadeltaScalars = scalars.get();
        let [square_avg, acc_delta] = state.as_mut_slice() else { panic!("Adadelta keeps square_avg and acc_delta") };
        for i in 0..param.len() {
            let p = param[i];
            let mut g = grad[i];
            if self.maximize {
                g = -g;
            }
            if s.weight_decay != 0.0 {
                g += s.weight_decay * p;
            }
            let sq = square_avg[i] * s.rho + s.one_minus_rho * g * g;
            square_avg[i] = sq;
            let std_dev = (sq + s.eps).sqrt();
            let delta = (acc_delta[i] + s.eps).sqrt() / std_dev * g;
            acc_delta[i] = acc_delta[i] * s.rho + s.one_minus_rho * delta * delta;
            param[i] = p + s.neg_lr * delta;
        }
    }

    common_rule_methods!();
}
