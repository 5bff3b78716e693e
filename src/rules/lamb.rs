//! LAMB (`timm.optim.Lamb`, timm 1.0.31, its `_single_tensor_lamb`); kernel: `shaders/lamb.wgsl`.
//!
//! ```text
//! input: lr, bias_correction, betas (beta1, beta2), eps, weight_decay, grad_averaging,
//!        max_grad_norm, trust_clip, always_adapt, decoupled_decay
//! clip = max(‖g‖ / max_grad_norm, 1)                     ‖g‖: every group's gradients; if max_grad_norm
//! for t = 1, 2, ...:
//!     g = g / clip
//!     m = lerp(m, g, 1 - beta1)                           if grad_averaging (beta3 = 1 - beta1)
//!     m = m*beta1 + g                                     otherwise (beta3 = 1)
//!     v = v*beta2 + (1 - beta2)*g*g
//!     u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)         bc = 1 - beta^t if bias_correction, else 1
//!     if weight_decay != 0:
//!         p = p + p*(-lr*weight_decay)                    if decoupled_decay
//!         u = u + weight_decay*p                          otherwise
//!     if weight_decay != 0 or always_adapt:
//!         r = ‖p‖ / ‖u‖, or 1 where either norm is 0;  r = min(r, 1) if trust_clip
//!         u = u*r
//!     p = p + (-lr)*u
//! ```
//! Passes: `moments` (every element: the moments, and the chunk partials of ‖p‖² and ‖u‖²),
//! `trust_ratio` (per tensor), `apply` (every element, recomputing u from the new moments).
//! timm reads `max_grad_norm` from the optimizer's defaults; here each group's value applies to
//! its tensors, and the norm is the optimizer's (all groups), after any gradient clipping.
//! `caution` and `corrected_weight_decay` are not implemented and are rejected when set.

use serde::{Deserialize, Serialize};

use super::reduce::tensor_sum;
use super::{step_tag, Check, CpuTensor, Kernel, Pass, Scope, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `timm.optim.Lamb`, with timm's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lamb {
    /// Learning rate. Default 1e-3; finite, >= 0.
    pub lr: f64,
    /// Divides the moments by their bias corrections `1 - beta^t`. Default true.
    pub bias_correction: bool,
    /// Coefficients of the running averages of the gradient (`exp_avg`, torch's `betas[0]`) and of
    /// its square (`exp_avg_sq`, `betas[1]`). Default (0.9, 0.999); each in [0, 1) (timm checks
    /// neither).
    pub betas: (f64, f64),
    /// Added to the root of the second moment in the denominator, for numerical stability. Default
    /// 1e-6; finite, >= 0.
    pub eps: f64,
    /// Weight decay: added to the update (`u + weight_decay*p`), or applied to the parameters with
    /// `decoupled_decay`; non-zero also turns the trust ratio on. Default 0.01; finite, >= 0.
    pub weight_decay: f64,
    /// Weights the gradient by `1 - beta1` in the first moment; without it `m = m*beta1 + g`.
    /// Default true.
    pub grad_averaging: bool,
    /// `None` (JSON null) turns the global-norm clip off.
    pub max_grad_norm: Option<f64>,
    /// Clips the trust ratio `‖p‖ / ‖u‖` at 1. Default false.
    pub trust_clip: bool,
    /// Applies the trust ratio even when `weight_decay` is 0. Default false.
    pub always_adapt: bool,
    /// Applies `weight_decay` to the parameters (`p + p*(-lr*weight_decay)`) instead of adding it
    /// to the update. Default false.
    pub decoupled_decay: bool,
    /// Not implemented: must be false.
    pub caution: bool,
    /// Not implemented: must be false.
    pub corrected_weight_decay: bool,
}

impl Default for Lamb {
    fn default() -> Self {
        Lamb {
            lr: 1e-3,
            bias_correction: true,
            betas: (0.9, 0.999),
            eps: 1e-6,
            weight_decay: 0.01,
            grad_averaging: true,
            max_grad_norm: Some(1.0),
            trust_clip: false,
            always_adapt: false,
            decoupled_decay: false,
            caution: false,
            corrected_weight_decay: false,
        }
    }
}

/// Mirrors `struct LambTerms` in `shaders/lamb.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LambTerms {
    step: u32,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
    _padding: f32,
}

/// Mirrors `struct LambScalars` in `shaders/lamb.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LambScalars {
    terms: LambTerms,
    lr: f32,
    neg_lr: f32,
    beta1: f32,
    beta3: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    neg_lr_weight_decay: f32,
    max_grad_norm: f32,
}

impl Lamb {
    fn beta3(&self) -> f64 {
        if self.grad_averaging {
            1.0 - self.betas.0
        } else {
            1.0
        }
    }

    fn adapts(&self, s: &LambScalars) -> bool {
        s.weight_decay != 0.0 || self.always_adapt
    }

    /// The gradient as the kernel's `lamb_gradient` forms it.
    fn gradient(&self, s: &LambScalars, g: f32, grad_norm: f32) -> f32 {
        match self.max_grad_norm {
            Some(_) => g / (grad_norm / s.max_grad_norm).max(1.0),
            None => g,
        }
    }

    /// `raw_update` and `decayed` of the kernel, for one element.
    fn update(&self, s: &LambScalars, m: f32, v: f32, p: f32) -> (f32, f32) {
        let denom = v.sqrt() / s.terms.bias_correction2_sqrt + s.eps;
        let mut u = (m / s.terms.bias_correction1) / denom;
        let mut decayed = p;
        if s.weight_decay != 0.0 {
            if self.decoupled_decay {
                decayed = p + s.neg_lr_weight_decay * p;
            } else {
                u += s.weight_decay * p;
            }
        }
        (u, decayed)
    }
}

impl UpdateRule for Lamb {
    fn name(&self) -> &'static str {
        "Lamb"
    }

    fn validate(&self) -> Result<()> {
        // timm checks lr, eps and weight_decay >= 0; betas in [0, 1) keep the moments finite.
        let check = Check("Lamb");
        check.non_negative("lr", self.lr)?;
        check.non_negative("eps", self.eps)?;
        check.non_negative("weight_decay", self.weight_decay)?;
        check.unit_interval_open("betas[0]", self.betas.0)?;
        check.unit_interval_open("betas[1]", self.betas.1)?;
        if let Some(max) = self.max_grad_norm {
            check.require(max > 0.0 && max.is_finite(), "max_grad_norm", max, "must be finite and > 0, or null")?;
        }
        check.require(!self.caution, "caution", 1.0, "is not implemented; use false")?;
        check.require(!self.corrected_weight_decay, "corrected_weight_decay", 1.0, "is not implemented; use false")
    }

    fn kernel(&self) -> Kernel {
        Kernel {
            label: "lamb",
            source: concat!(include_str!("../../shaders/reduce.wgsl"), "\n", include_str!("../../shaders/lamb.wgsl")),
            state_bindings: &["exp_avg", "exp_avg_sq"],
            flags: vec![
                ("grad_averaging", self.grad_averaging),
                ("decoupled_decay", self.decoupled_decay),
                ("trust_clip", self.trust_clip),
                ("always_adapt", self.always_adapt),
                ("clip_global_norm", self.max_grad_norm.is_some()),
            ],
            passes: vec![
                Pass::new("moments", Scope::Elements),
                Pass::new("trust_ratio", Scope::Tensors),
                Pass::new("apply", Scope::Elements),
            ],
            per_tensor: true,
            whole_tensors: false,
            mode_switch: None,
            sparse_rows: false,
        }
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "exp_avg", init: 0.0, nonnegative: false }, StateSlot { key: "exp_avg_sq", init: 0.0, nonnegative: true }]
    }

    fn needs_grad_norm(&self) -> bool {
        self.max_grad_norm.is_some()
    }

    /// Per group: timm's Lamb keeps `step` in the param group, and it advances on every step.
    fn counts_steps_per_tensor(&self) -> bool {
        false
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        let t = step as f64;
        let (bias_correction1, bias_correction2) =
            if self.bias_correction { (1.0 - self.betas.0.powf(t), 1.0 - self.betas.1.powf(t)) } else { (1.0, 1.0) };
        bytemuck::cast(LambTerms {
            step: step_tag(step),
            bias_correction1: bias_correction1 as f32,
            bias_correction2_sqrt: bias_correction2.powf(0.5) as f32,
            _padding: 0.0,
        })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let (beta1, beta2) = self.betas;
        StepScalars::of(&LambScalars {
            terms: bytemuck::cast(terms),
            lr: self.lr as f32,
            neg_lr: -self.lr as f32,
            beta1: beta1 as f32,
            beta3: self.beta3() as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            neg_lr_weight_decay: (-self.lr * self.weight_decay) as f32,
            max_grad_norm: self.max_grad_norm.unwrap_or(1.0) as f32,
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let s: LambScalars = scalars.get();
        let CpuTensor { param, grad, mut state, grad_norm, .. } = tensor;
        let [exp_avg, exp_avg_sq] = state.as_mut_slice() else { panic!("Lamb keeps exp_avg and exp_avg_sq") };
        for i in 0..param.len() {
            let g = self.gradient(&s, grad[i], grad_norm);
            exp_avg[i] = if self.grad_averaging { super::lerp(exp_avg[i], g, s.beta3) } else { exp_avg[i] * s.beta1 + s.beta3 * g };
            exp_avg_sq[i] = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * g * g;
        }
        let [w_sq, u_sq] = tensor_sum(param.len(), |i| {
            let (u, decayed) = self.update(&s, exp_avg[i], exp_avg_sq[i], param[i]);
            [decayed * decayed, u * u]
        });
        let (w_norm, u_norm) = (w_sq.sqrt(), u_sq.sqrt());
        let mut ratio = 1.0;
        if self.adapts(&s) {
            ratio = w_norm / u_norm;
            if !(w_norm > 0.0) || !(u_norm > 0.0) {
                ratio = 1.0;
            }
            if self.trust_clip {
                ratio = ratio.min(1.0);
            }
        }
        for i in 0..param.len() {
            let (u, decayed) = self.update(&s, exp_avg[i], exp_avg_sq[i], param[i]);
            param[i] = decayed + s.neg_lr * (u * ratio);
        }
    }

    beta1_cycled_momentum!();

    common_rule_methods!();
}
