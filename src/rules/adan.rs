//! Adan (the authors' `adan.Adan`, sail-sg/Adan at commit 2c65bea, its single-tensor path
//! `_single_tensor_adan`: `foreach=False`, `fused=False`); kernel: `shaders/adan.wgsl`.
//!
//! ```text
//! input: lr, betas (beta1, beta2, beta3), eps, weight_decay, no_prox
//!        (max_grad_norm must be 0: the global clip is not supported)
//! for t = 1, 2, ...:
//!     neg_pre_grad = -g                               if t = 1
//!     n = neg_pre_grad + g                            # g - g_prev (0 at t = 1)
//!     m = m*beta1 + (1 - beta1)*g                     # exp_avg
//!     d = d*beta2 + (1 - beta2)*n                     # exp_avg_diff
//!     n = n*beta2 + g
//!     v = v*beta3 + ((1 - beta3)*n)*n                 # exp_avg_sq
//!     denom = sqrt(v) / sqrt(1 - beta3^t) + eps
//!     step_size = lr / (1 - beta1^t);  step_size_diff = lr*beta2 / (1 - beta2^t)
//!     if no_prox:
//!         p = p * (1 - lr*weight_decay)
//!         p = p + (-step_size)*(m/denom);  p = p + (-step_size_diff)*(d/denom)
//!     else:
//!         p = p + (-step_size)*(m/denom);  p = p + (-step_size_diff)*(d/denom)
//!         p = p / (1 + lr*weight_decay)
//!     neg_pre_grad = -g
//! ```
//! The bias corrections are computed on the CPU in f64, as the reference computes them in
//! Python floats, and rounded to f32 into the step terms; the step sizes are then formed in
//! f32 on the GPU (`lr / bc1`, `(lr*beta2) / bc2`), so that lr and t can change apart (as
//! Adam's). The reference keeps `step` in the parameter group, not in the state.
//!
//! Not supported, with an error: `max_grad_norm > 0` (the reference clips by the global norm of
//! every group's gradients with the last group's eps, and mutates `p.grad`; use the optimizer's
//! gradient clipping instead). The reference's `restart_opt()` (a method, not a constructor
//! option) has no counterpart; `foreach` and `fused` are not hyper-parameters here (the
//! single-tensor path is the one followed).

use serde::{Deserialize, Serialize};

use super::{step_tag, Check, CpuTensor, Kernel, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// The authors' `Adan`, with their defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adan {
    /// Learning rate. Default 1e-3; finite, >= 0.
    pub lr: f64,
    /// Coefficients of the running averages of the gradient (`exp_avg`, `betas[0]`), of the
    /// gradient difference (`exp_avg_diff`, `betas[1]`) and of the squared Nesterov-corrected
    /// gradient (`exp_avg_sq`, `betas[2]`). Default (0.98, 0.92, 0.99); each in [0, 1).
    pub betas: (f64, f64, f64),
    /// Added to the bias-corrected root of `exp_avg_sq` in the denominator, for numerical
    /// stability. Default 1e-8; finite, >= 0.
    pub eps: f64,
    /// Weight decay: proximal (`p / (1 + lr*weight_decay)` after the update), or decoupled before
    /// it with `no_prox`. Default 0; any finite value.
    pub weight_decay: f64,
    /// Must be 0 (no clip): the reference's global clip is not supported.
    pub max_grad_norm: f64,
    /// Decays the parameters as AdamW does (`p*(1 - lr*weight_decay)` before the update) instead of
    /// the proximal division after it. Default false.
    pub no_prox: bool,
}

impl Default for Adan {
    fn default() -> Self {
        Adan { lr: 1e-3, betas: (0.98, 0.92, 0.99), eps: 1e-8, weight_decay: 0.0, max_grad_norm: 0.0, no_prox: false }
    }
}

/// Mirrors `struct AdanTerms` in `shaders/adan.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdanTerms {
    step: u32,
    bias_correction1: f32,
    bias_correction2: f32,
    bias_correction3_sqrt: f32,
}

/// Mirrors `struct AdanScalars` in `shaders/adan.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdanScalars {
    terms: AdanTerms,
    lr: f32,
    lr_beta2: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    beta3: f32,
    one_minus_beta3: f32,
    eps: f32,
    decay_factor: f32,
    prox_divisor: f32,
    _padding: f32,
}

impl UpdateRule for Adan {
    fn name(&self) -> &'static str {
        "Adan"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("Adan");
        check.non_negative("max_grad_norm", self.max_grad_norm)?;
        check.require(
            self.max_grad_norm == 0.0,
            "max_grad_norm",
            self.max_grad_norm,
            "must be 0: Adan's global gradient-norm clip is not supported (use the optimizer's gradient clipping)",
        )?;
        check.non_negative("lr", self.lr)?;
        check.non_negative("eps", self.eps)?;
        check.unit_interval_open("betas[0]", self.betas.0)?;
        check.unit_interval_open("betas[1]", self.betas.1)?;
        check.unit_interval_open("betas[2]", self.betas.2)?;
        check.finite("weight_decay", self.weight_decay)
    }

    fn kernel(&self) -> Kernel {
        Kernel::element_wise(
            "adan",
            include_str!("../../shaders/adan.wgsl"),
            &["exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad"],
            vec![("no_prox", self.no_prox)],
        )
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        ["exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad"].into_iter().map(|key| StateSlot { key, init: 0.0, nonnegative: key == "exp_avg_sq" }).collect()
    }

    /// Per group: the Adan reference keeps `step` in the param group, and it advances on every step.
    fn counts_steps_per_tensor(&self) -> bool {
        false
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        let t = step as f64;
        let (beta1, beta2, beta3) = self.betas;
        bytemuck::cast(AdanTerms {
            step: step_tag(step),
            bias_correction1: (1.0 - beta1.powf(t)) as f32,
            bias_correction2: (1.0 - beta2.powf(t)) as f32,
            bias_correction3_sqrt: (1.0 - beta3.powf(t)).sqrt() as f32,
        })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let (beta1, beta2, beta3) = self.betas;
        StepScalars::of(&AdanScalars {
            terms: bytemuck::cast(terms),
            lr: self.lr as f32,
            lr_beta2: (self.lr * beta2) as f32,
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            beta3: beta3 as f32,
            one_minus_beta3: (1.0 - beta3) as f32,
            eps: self.eps as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            prox_divisor: (1.0 + self.lr * self.weight_decay) as f32,
            _padding: 0.0,
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { param, grad, mut state, first_step, .. } = tensor;
        let s: AdanScalars = scalars.get();
        let [exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad] = state.as_mut_slice() else {
            panic!("Adan keeps exp_avg, exp_avg_sq, exp_avg_diff and neg_pre_grad")
        };
        let step_size = s.lr / s.terms.bias_correction1;
        let step_size_diff = s.lr_beta2 / s.terms.bias_correction2;
        for i in 0..param.len() {
            let g = grad[i];
            let pre = if first_step { -g } else { neg_pre_grad[i] };
            let n = pre + g;
            let m = exp_avg[i] * s.beta1 + s.one_minus_beta1 * g;
            let d = exp_avg_diff[i] * s.beta2 + s.one_minus_beta2 * n;
            let n = n * s.beta2 + g;
            let v = exp_avg_sq[i] * s.beta3 + s.one_minus_beta3 * n * n;
            exp_avg[i] = m;
            exp_avg_diff[i] = d;
            exp_avg_sq[i] = v;
            let denom = v.sqrt() / s.terms.bias_correction3_sqrt + s.eps;
            let mut p = param[i];
            if self.no_prox {
                p *= s.decay_factor;
                p += (-step_size) * (m / denom);
                p += (-step_size_diff) * (d / denom);
            } else {
                p += (-step_size) * (m / denom);
                p += (-step_size_diff) * (d / denom);
                p /= s.prox_divisor;
            }
            param[i] = p;
            neg_pre_grad[i] = -g;
        }
    }

    beta1_cycled_momentum!();

    common_rule_methods!();
}
