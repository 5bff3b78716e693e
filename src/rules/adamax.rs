//! Adamax (`torch.optim.Adamax`); kernel: `shaders/adamax.wgsl`.
//!
//! ```text
//! input: lr, betas (beta1, beta2), eps, weight_decay, maximize
//! for t = 1, 2, ...:
//!     g = -g                                          if maximize
//!     g = g + weight_decay*p                          if weight_decay != 0
//!     m = lerp(m, g, 1 - beta1)                       # exp_avg
//!     u = max(u*beta2, |g| + eps)                     # exp_inf
//!     p = p + (-(lr/(1 - beta1^t))) * m / u
//! ```
//! torch's single-tensor path forms `exp_inf` as `torch.maximum(exp_inf.mul_(beta2),
//! grad.abs().add_(eps))` (eps added to |g| before the max, not after) and steps with
//! `param.addcdiv_(exp_avg, exp_inf, value=-clr)`, `clr = lr / (1 - beta1^t)`. The bias
//! correction is computed on the CPU in f64, as torch computes it in Python floats, and rounded
//! to f32; `lr / (1 - beta1^t)` is then formed in f32 (within an ulp of torch's f64 quotient),
//! so that the step number and the learning rate can change apart.

use serde::{Deserialize, Serialize};

use super::{CpuTensor, lerp, step_tag, Check, Kernel, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `torch.optim.Adamax`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adamax {
    /// Learning rate. Default 2e-3; finite, >= 0.
    pub lr: f64,
    /// Coefficient of the running average of the gradient (`exp_avg`, torch's `betas[0]`) and decay
    /// of the exponentially weighted infinity norm (`exp_inf`, `betas[1]`). Default (0.9, 0.999);
    /// each in [0, 1).
    pub betas: (f64, f64),
    /// Added to `|g|` before the maximum that forms `exp_inf`, for numerical stability. Default
    /// 1e-8; finite, >= 0.
    pub eps: f64,
    /// Weight decay: the L2 penalty added to the gradient (`g + weight_decay*p`). Default 0;
    /// finite, >= 0.
    pub weight_decay: f64,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for Adamax {
    fn default() -> Self {
        Adamax { lr: 2e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, maximize: false }
    }
}

/// Mirrors `struct AdamaxTerms` in `shaders/adamax.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamaxTerms {
    step: u32,
    bias_correction1: f32,
    _padding: [f32; 2],
}

/// Mirrors `struct AdamaxScalars` in `shaders/adamax.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamaxScalars {
    terms: AdamaxTerms,
    lr: f32,
    weight_decay: f32,
    one_minus_beta1: f32,
    beta2: f32,
    eps: f32,
    _padding: [f32; 7],
}

impl UpdateRule for Adamax {
    fn name(&self) -> &'static str {
        "Adamax"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("Adamax");
        check.non_negative("lr", self.lr)?;
        check.non_negative("eps", self.eps)?;
        check.unit_interval_open("betas[0]", self.betas.0)?;
        check.unit_interval_open("betas[1]", self.betas.1)?;
        check.non_negative("weight_decay", self.weight_decay)
    }

    fn kernel(&self) -> Kernel {
        Kernel::element_wise("adamax", include_str!("../../shaders/adamax.wgsl"), &["exp_avg", "exp_inf"], vec![(
            "maximize",
            self.maximize,
        )])
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "exp_avg", init: 0.0, nonnegative: false }, StateSlot { key: "exp_inf", init: 0.0, nonnegative: true }]
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        bytemuck::cast(AdamaxTerms {
            step: step_tag(step),
            bias_correction1: (1.0 - self.betas.0.powf(step as f64)) as f32,
            _padding: [0.0; 2],
        })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let (beta1, beta2) = self.betas;
        StepScalars::of(&AdamaxScalars {
            terms: bytemuck::cast(terms),
            lr: self.lr as f32,
            weight_decay: self.weight_decay as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            eps: self.eps as f32,
            _padding: [0.0; 7],
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { param, grad, mut state, .. } = tensor;
        let s: AdamaxScalars = scalars.get();
        let [exp_avg, exp_inf] = state.as_mut_slice() else { panic!("Adamax keeps exp_avg and exp_inf") };
        for i in 0..param.len() {
            let p = param[i];
            let mut g = grad[i];
            if self.maximize {
                g = -g;
            }
            if s.weight_decay != 0.0 {
                g += s.weight_decay * p;
            }
            let m = lerp(exp_avg[i], g, s.one_minus_beta1);
            let u = (exp_inf[i] * s.beta2).max(g.abs() + s.eps);
            exp_avg[i] = m;
            exp_inf[i] = u;
            let neg_clr = -(s.lr / s.terms.bias_correction1);
            param[i] = p + neg_clr * m / u;
        }
    }

    beta1_cycled_momentum!();

    common_rule_methods!();
}
