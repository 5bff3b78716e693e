//! NAdam (`torch.optim.NAdam`); kernel: `shaders/nadam.wgsl`.
//!
//! ```text
//! input: lr, betas (beta1, beta2), eps, weight_decay, momentum_decay (psi), decoupled_weight_decay, maximize
//! mu_product = 1
//! for t = 1, 2, ...:
//!     g = -g                                          if maximize
//!     if weight_decay != 0:
//!         p = p * (1 - lr*weight_decay)               if decoupled_weight_decay
//!         g = g + weight_decay*p                      otherwise
//!     mu_t = beta1*(1 - 0.5*0.96^(t*psi));  mu_next = beta1*(1 - 0.5*0.96^((t+1)*psi))
//!     mu_product = mu_product*mu_t                    # float32, as torch keeps it
//!     m = lerp(m, g, 1 - beta1)                       # exp_avg
//!     v = v*beta2 + (1 - beta2)*g*g                   # exp_avg_sq
//!     denom = sqrt(v/(1 - beta2^t)) + eps
//!     p = p + (-(lr*((1 - mu_t)/(1 - mu_product)))) * g / denom
//!     p = p + (-(lr*(mu_next/(1 - mu_product*mu_next)))) * m / denom
//! ```
//! The ratios are computed in f64 from the float32 `mu_product`, as torch does, rounded to
//! f32, and multiplied by lr in f32 (within an ulp of torch's f64 product).
//! Dozat's NAdam without momentum decay (psi = 0) is the textbook form of the seed articles.

use serde::{Deserialize, Serialize};

use super::{CpuTensor, lerp, step_tag, Check, Kernel, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `torch.optim.NAdam`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NAdam {
    /// Learning rate. Default 2e-3; finite, >= 0.
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
    /// Momentum decay psi of the momentum schedule `mu_t = beta1*(1 - 0.5*0.96^(t*psi))`; 0 gives
    /// Dozat's NAdam. Default 4e-3; finite, >= 0.
    pub momentum_decay: f64,
    /// Applies `weight_decay` to the parameters (`p*(1 - lr*weight_decay)`, as AdamW) instead of
    /// adding it to the gradient. Default false.
    pub decoupled_weight_decay: bool,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for NAdam {
    fn default() -> Self {
        NAdam {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

/// Mirrors `struct NadamTerms` in `shaders/nadam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NadamTerms {
    step: u32,
    bias_correction2: f32,
    grad_ratio: f32,
    exp_avg_ratio: f32,
}

/// Mirrors `struct NadamScalars` in `shaders/nadam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NadamScalars {
    terms: NadamTerms,
    lr: f32,
    weight_decay: f32,
    decay_factor: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    _padding: [f32; 5],
}

impl NAdam {
    /// mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))
    fn mu(&self, t: f64) -> f64 {
        self.betas.0 * (1.0 - 0.5 * 0.96f64.powf(t * self.momentum_decay))
    }

    /// torch's float32 `mu_product` after `step` steps, continuing from `memo` when it can.
    fn mu_product(&self, step: u64, memo: &mut TermsMemo) -> f32 {
        // Step `step` multiplies the product after step - 1 by its mu, with the current
        // betas[0]: computed again when the memo already holds step (the ring is filled ahead
        // of the step, and a scheduler may have changed betas[0] since).
        let base = match memo.before(step) {
            _ if step <= 1 => [1.0, 0.0],
            Some(base) => base,
            None => {
                if memo.step == 0 || memo.step >= step {
                    *memo = TermsMemo { step: 0, values: [1.0, 0.0], previous: [1.0, 0.0] };
                }
                while memo.step + 1 < step {
                    let product = memo.values[0] as f32 * self.mu((memo.step + 1) as f64) as f32;
                    memo.advance(memo.step + 1, memo.values, [f64::from(product), 0.0]);
                }
                memo.values
            }
        };
        let product = base[0] as f32 * self.mu(step as f64) as f32;
        memo.advance(step, base, [f64::from(product), 0.0]);
        product
    }
}

impl UpdateRule for NAdam {
    fn name(&self) -> &'static str {
        "NAdam"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("NAdam");
        check.non_negative("lr", self.lr)?;
        check.non_negative("eps", self.eps)?;
        check.unit_interval_open("betas[0]", self.betas.0)?;
        check.unit_interval_open("betas[1]", self.betas.1)?;
        check.non_negative("weight_decay", self.weight_decay)?;
        check.non_negative("momentum_decay", self.momentum_decay)
    }

    fn kernel(&self) -> Kernel {
        Kernel::element_wise("nadam", include_str!("../../shaders/nadam.wgsl"), &["exp_avg", "exp_avg_sq"], vec![
                ("maximize", self.maximize),
                ("decoupled_weight_decay", self.decoupled_weight_decay),
            ])
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "exp_avg", init: 0.0, nonnegative: false }, StateSlot { key: "exp_avg_sq", init: 0.0, nonnegative: true }]
    }

    /// torch's per-tensor `mu_product`: the group's running product.
    fn scalar_state(&self, running: [f64; 2]) -> Vec<(&'static str, f32)> {
        vec![("mu_product", running[0] as f32)]
    }

    fn running_keys(&self) -> &'static [&'static str] {
        &["mu_product"]
    }

    fn step_terms(&self, step: u64, memo: &mut TermsMemo) -> StepTerms {
        let t = step as f64;
        let mu = self.mu(t);
        let mu_next = self.mu(t + 1.0);
        let mu_product = f64::from(self.mu_product(step, memo));
        bytemuck::cast(NadamTerms {
            step: step_tag(step),
            bias_correction2: (1.0 - self.betas.1.powf(t)) as f32,
            grad_ratio: ((1.0 - mu) / (1.0 - mu_product)) as f32,
            exp_avg_ratio: (mu_next / (1.0 - mu_product * mu_next)) as f32,
        })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let (beta1, beta2) = self.betas;
        StepScalars::of(&NadamScalars {
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
        let s: NadamScalars = scalars.get();
        let [exp_avg, exp_avg_sq] = state.as_mut_slice() else { panic!("NAdam keeps exp_avg and exp_avg_sq") };
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
            let denom = (v / s.terms.bias_correction2).sqrt() + s.eps;
            let grad_coefficient = -(s.lr * s.terms.grad_ratio);
            let exp_avg_coefficient = -(s.lr * s.terms.exp_avg_ratio);
            p += grad_coefficient * g / denom;
            param[i] = p + exp_avg_coefficient * m / denom;
        }
    }

    beta1_cycled_momentum!();

    common_rule_methods!();
}
