//! RAdam (`torch.optim.RAdam`); kernel: `shaders/radam.wgsl`.
//!
//! ```text
//! input: lr, betas (beta1, beta2), eps, weight_decay, decoupled_weight_decay, maximize
//! rho_inf = 2/(1 - beta2) - 1
//! for t = 1, 2, ...:
//!     g = -g                                          if maximize
//!     if weight_decay != 0:
//!         p = p * (1 - lr*weight_decay)               if decoupled_weight_decay
//!         g = g + weight_decay*p                      otherwise
//!     m = lerp(m, g, 1 - beta1)                       # exp_avg
//!     v = v*beta2 + (1 - beta2)*g*g                   # exp_avg_sq
//!     m_hat = m / (1 - beta1^t)
//!     rho_t = rho_inf - 2*t*beta2^t/(1 - beta2^t)
//!     if rho_t > 5:
//!         rect = sqrt((rho_t - 4)(rho_t - 2)rho_inf / ((rho_inf - 4)(rho_inf - 2)rho_t))
//!         adaptive = (1/(sqrt(v) + eps)) * sqrt(1 - beta2^t)
//!         p = p - ((m_hat*lr)*adaptive)*rect
//!     else:
//!         p = p - m_hat*lr
//! ```
//! Everything that depends on the step alone (the bias corrections, rho_t, the switch and
//! rect) is computed on the CPU in f64, as torch computes it in Python floats, and rounded to
//! f32 into the step terms: `1 - beta1^t`, `sqrt(1 - beta2^t)` and `rect`. The switch needs no
//! fourth word: `rect` is positive whenever rho_t > 5 (every factor under the root is then
//! positive), so the terms carry `rect = 0` for the unrectified steps and the kernel branches on
//! `rect > 0`. The step count can thus live on the GPU (gradient conditioning), the terms coming
//! from the ring like Adam's.
//!
//! torch evaluates `(bias_correction2 ** 0.5) / exp_avg_sq_sqrt` as `Tensor.__rtruediv__`,
//! i.e. `exp_avg_sq_sqrt.reciprocal() * sqrt(bias_correction2)`, and the update as
//! `bias_corrected_exp_avg * lr * adaptive * rect`, left to right; the kernel does the same.

use serde::{Deserialize, Serialize};

use super::{CpuTensor, lerp, step_tag, Check, Kernel, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `torch.optim.RAdam`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RAdam {
    /// Learning rate. Default 1e-3; finite, >= 0.
    pub lr: f64,
    /// Coefficients of the running averages of the gradient (`exp_avg`, torch's `betas[0]`) and of
    /// its square (`exp_avg_sq`, `betas[1]`). Default (0.9, 0.999); each in [0, 1).
    pub betas: (f64, f64),
    /// Added to the root of the second moment in the denominator, for numerical stability. Default
    /// 1e-8; finite, >= 0.
    pub eps: f64,
    /// Weight decay. Coupled (L2, `g + weight_decay*p`) by default; with `decoupled_weight_decay`,
    /// AdamW's `p*(1 - lr*weight_decay)`. Default 0; finite, >= 0.
    pub weight_decay: f64,
    /// Applies `weight_decay` to the parameters (`p*(1 - lr*weight_decay)`, as AdamW) instead of
    /// adding it to the gradient. Default false.
    pub decoupled_weight_decay: bool,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for RAdam {
    fn default() -> Self {
        RAdam {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

/// Mirrors `struct RadamTerms` in `shaders/radam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RadamTerms {
    step: u32,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
    rect: f32,
}

/// Mirrors `struct RadamScalars` in `shaders/radam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RadamScalars {
    terms: RadamTerms,
    lr: f32,
    weight_decay: f32,
    decay_factor: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    _padding: [f32; 5],
}

impl RAdam {
    /// The variance rectification term of step t, as torch computes it in Python floats;
    /// 0 when torch takes the unrectified branch (rho_t <= 5).
    fn rect(&self, t: f64) -> f64 {
        let beta2 = self.betas.1;
        let bias_correction2 = 1.0 - beta2.powf(t);
        let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * beta2.powf(t) / bias_correction2;
        if rho_t > 5.0 {
            ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)).powf(0.5)
        } else {
            0.0
        }
    }
}

impl UpdateRule for RAdam {
    fn name(&self) -> &'static str {
        "RAdam"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("RAdam");
        check.non_negative("lr", self.lr)?;
        check.non_negative("eps", self.eps)?;
        check.unit_interval_open("betas[0]", self.betas.0)?;
        check.unit_interval_open("betas[1]", self.betas.1)?;
        check.non_negative("weight_decay", self.weight_decay)
    }

    fn kernel(&self) -> Kernel {
        Kernel::element_wise("radam", include_str!("../../shaders/radam.wgsl"), &["exp_avg", "exp_avg_sq"], vec![
            ("maximize", self.maximize),
            ("decoupled_weight_decay", self.decoupled_weight_decay),
        ])
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "exp_avg", init: 0.0, nonnegative: false }, StateSlot { key: "exp_avg_sq", init: 0.0, nonnegative: true }]
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        let t = step as f64;
        let (beta1, beta2) = self.betas;
        bytemuck::cast(RadamTerms {
            step: step_tag(step),
            bias_correction1: (1.0 - beta1.powf(t)) as f32,
            bias_correction2_sqrt: (1.0 - beta2.powf(t)).powf(0.5) as f32,
            rect: self.rect(t) as f32,
        })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let (beta1, beta2) = self.betas;
        StepScalars::of(&RadamScalars {
            terms: bytemuck::cast(terms),
            lr: self.lr as f32,
            weight_decay: self.weight_decay as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
            _padding: [0.0; 5],
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { param, grad, mut state, .. } = tensor;
        let s: RadamScalars = scalars.get();
        let [exp_avg, exp_avg_sq] = state.as_mut_slice() else { panic!("RAdam keeps exp_avg and exp_avg_sq") };
        for i in 0..param.len() {
            let mut p = param[i];
            let mut g = grad[i];
            if self.maximize {
                g = -g;
            }
            if s.weight_decay != 0.0 {
                if self.decoupled_weight_decay {
                    p *= s.decay_factor;
                } else {
                    g += s.weight_decay * p;
                }
            }
            let m = lerp(exp_avg[i], g, s.one_minus_beta1);
            let v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * g * g;
            exp_avg[i] = m;
            exp_avg_sq[i] = v;
            let m_hat = m / s.terms.bias_correction1;
            if s.terms.rect > 0.0 {
                let adaptive = (1.0 / (v.sqrt() + s.eps)) * s.terms.bias_correction2_sqrt;
                param[i] = p - m_hat * s.lr * adaptive * s.terms.rect;
            } else {
                param[i] = p - m_hat * s.lr;
            }
        }
    }

    beta1_cycled_momentum!();

    common_rule_methods!();
}
