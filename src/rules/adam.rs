//! Adam and AdamW (`torch.optim.Adam`, `torch.optim.AdamW`); kernel: `shaders/adam.wgsl`.
//!
//! ```text
//! input: lr, betas (beta1, beta2), eps, weight_decay, amsgrad, maximize, decoupled_weight_decay
//! for t = 1, 2, ...:
//!     g = -g                                          if maximize
//!     if weight_decay != 0:
//!         p = p * (1 - lr*weight_decay)               if decoupled_weight_decay (AdamW)
//!         g = g + weight_decay*p                      otherwise (L2, coupled)
//!     m = lerp(m, g, 1 - beta1)                       # exp_avg
//!     v = v*beta2 + (1 - beta2)*g*g                   # exp_avg_sq
//!     v_max = max(v_max, v); v_hat = v_max            if amsgrad (max_exp_avg_sq); else v_hat = v
//!     p = p + (-(lr/(1 - beta1^t))) * m / (sqrt(v_hat)/sqrt(1 - beta2^t) + eps)
//! ```
//! The bias corrections are computed on the CPU in f64, as torch computes them in Python
//! floats, and rounded to f32; `lr / (1 - beta1^t)` is then formed in f32 (within an ulp of
//! torch's f64 quotient), so that the step number and the learning rate can change apart.

use serde::{Deserialize, Serialize};

use super::{CpuTensor, lerp, step_tag, Check, Kernel, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `torch.optim.Adam`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adam {
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
    /// AMSGrad: divides by the running maximum of `exp_avg_sq` (kept as `max_exp_avg_sq`) instead
    /// of `exp_avg_sq`. Default false.
    pub amsgrad: bool,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
    /// Applies `weight_decay` to the parameters (`p*(1 - lr*weight_decay)`, as AdamW) instead of
    /// adding it to the gradient. Default false. `AdamW` is Adam with this set.
    pub decoupled_weight_decay: bool,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
            decoupled_weight_decay: false,
        }
    }
}

/// `torch.optim.AdamW`: Adam with decoupled weight decay, default `weight_decay` 1e-2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamW {
    /// Learning rate. Default 1e-3; finite, >= 0.
    pub lr: f64,
    /// Coefficients of the running averages of the gradient (`exp_avg`, torch's `betas[0]`) and of
    /// its square (`exp_avg_sq`, `betas[1]`). Default (0.9, 0.999); each in [0, 1).
    pub betas: (f64, f64),
    /// Added to the root of the second moment in the denominator, for numerical stability. Default
    /// 1e-8; finite, >= 0.
    pub eps: f64,
    /// Decoupled weight decay: each step multiplies the parameters by `1 - lr*weight_decay`.
    /// Default 1e-2; finite, >= 0.
    pub weight_decay: f64,
    /// AMSGrad: divides by the running maximum of `exp_avg_sq` (kept as `max_exp_avg_sq`) instead
    /// of `exp_avg_sq`. Default false.
    pub amsgrad: bool,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
            maximize: false,
        }
    }
}

impl AdamW {
    fn as_adam(&self) -> Adam {
        Adam {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
            decoupled_weight_decay: true,
        }
    }
}

/// Mirrors `struct AdamTerms` in `shaders/adam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamTerms {
    step: u32,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
    _padding: f32,
}

/// Mirrors `struct AdamScalars` in `shaders/adam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamScalars {
    terms: AdamTerms,
    lr: f32,
    weight_decay: f32,
    decay_factor: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    _padding: [f32; 5],
}

impl Adam {
    fn check(&self, optimizer: &'static str) -> Result<()> {
        let check = Check(optimizer);
        check.non_negative("lr", self.lr)?;
        check.non_negative("eps", self.eps)?;
        check.unit_interval_open("betas[0]", self.betas.0)?;
        check.unit_interval_open("betas[1]", self.betas.1)?;
        check.non_negative("weight_decay", self.weight_decay)
    }
}

impl UpdateRule for Adam {
    fn name(&self) -> &'static str {
        "Adam"
    }

    fn validate(&self) -> Result<()> {
        self.check("Adam")
    }

    fn kernel(&self) -> Kernel {
        Kernel::element_wise("adam", include_str!("../../shaders/adam.wgsl"), &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"], vec![
                ("maximize", self.maximize),
                ("amsgrad", self.amsgrad),
                ("decoupled_weight_decay", self.decoupled_weight_decay),
            ])
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        let mut slots = vec![StateSlot { key: "exp_avg", init: 0.0, nonnegative: false }, StateSlot { key: "exp_avg_sq", init: 0.0, nonnegative: true }];
        if self.amsgrad {
            slots.push(StateSlot { key: "max_exp_avg_sq", init: 0.0, nonnegative: true });
        }
        slots
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        let t = step as f64;
        let (beta1, beta2) = self.betas;
        bytemuck::cast(AdamTerms {
            step: step_tag(step),
            bias_correction1: (1.0 - beta1.powf(t)) as f32,
            bias_correction2_sqrt: (1.0 - beta2.powf(t)).powf(0.5) as f32,
            _padding: 0.0,
        })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let (beta1, beta2) = self.betas;
        StepScalars::of(&AdamScalars {
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
        let s: AdamScalars = scalars.get();
        let (exp_avg, rest) = state.split_first_mut().expect("exp_avg");
        let (exp_avg_sq, rest) = rest.split_first_mut().expect("exp_avg_sq");
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
            let mut v_hat = v;
            if self.amsgrad {
                v_hat = rest[0][i].max(v);
                rest[0][i] = v_hat;
            }
            let denom = v_hat.sqrt() / s.terms.bias_correction2_sqrt + s.eps;
            let neg_step_size = -(s.lr / s.terms.bias_correction1);
            param[i] = p + neg_step_size * m / denom;
        }
    }

    beta1_cycled_momentum!();

    common_rule_methods!();
}

impl UpdateRule for AdamW {
    fn name(&self) -> &'static str {
        "AdamW"
    }

    fn validate(&self) -> Result<()> {
        self.as_adam().check("AdamW")
    }

    fn kernel(&self) -> Kernel {
        self.as_adam().kernel()
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        self.as_adam().state_slots()
    }

    fn step_terms(&self, step: u64, memo: &mut TermsMemo) -> StepTerms {
        self.as_adam().step_terms(step, memo)
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        self.as_adam().step_scalars(terms)
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        self.as_adam().cpu_update(scalars, tensor)
    }

    beta1_cycled_momentum!();

    common_rule_methods!();
}
