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
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub momentum_decay: f64,
    pub decoupled_weight_decay: bool,
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
        if memo.step == 0 || memo.step > step {
            *memo = TermsMemo { step: 0, values: [1.0, 0.0], previous: [1.0, 0.0] };
        }
        while memo.step < step {
            let product = memo.values[0] as f32 * self.mu((memo.step + 1) as f64) as f32;
            memo.advance(memo.step + 1, memo.values, [f64::from(product), 0.0]);
        }
        memo.values[0] as f32
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
        vec![StateSlot { key: "exp_avg", init: 0.0 }, StateSlot { key: "exp_avg_sq", init: 0.0 }]
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
