//! Adagrad (`torch.optim.Adagrad`); kernel: `shaders/adagrad.wgsl`.
//!
//! ```text
//! input: lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize
//! sum = initial_accumulator_value
//! for t = 1, 2, ...:
//!     g = -g                                          if maximize
//!     g = g + weight_decay*p                          if weight_decay != 0
//!     clr = lr / (1 + (t - 1)*lr_decay)
//!     sum = sum + g*g
//!     p = p + (-clr) * g / (sqrt(sum) + eps)
//! ```
//! `1 + (t - 1)*lr_decay` is computed in f64 and rounded; the quotient is formed in f32.

use serde::{Deserialize, Serialize};

use super::{CpuTensor, step_tag, Check, Kernel, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `torch.optim.Adagrad`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adagrad {
    /// Learning rate. Default 1e-2; finite, >= 0.
    pub lr: f64,
    /// Learning-rate decay: step t uses `lr / (1 + (t - 1)*lr_decay)`. Default 0; finite, >= 0.
    pub lr_decay: f64,
    /// Weight decay: the L2 penalty added to the gradient (`g + weight_decay*p`). Default 0;
    /// finite, >= 0.
    pub weight_decay: f64,
    /// The value every element of the `sum` state starts at. Default 0; finite, >= 0.
    pub initial_accumulator_value: f64,
    /// Added to `sqrt(sum)` in the denominator, for numerical stability. Default 1e-10; finite, >=
    /// 0.
    pub eps: f64,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for Adagrad {
    fn default() -> Self {
        Adagrad {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

/// Mirrors `struct AdagradTerms` in `shaders/adagrad.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdagradTerms {
    step: u32,
    lr_decay_denominator: f32,
    _padding: [f32; 2],
}

/// Mirrors `struct AdagradScalars` in `shaders/adagrad.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdagradScalars {
    terms: AdagradTerms,
    lr: f32,
    weight_decay: f32,
    eps: f32,
    _padding: [f32; 9],
}

impl UpdateRule for Adagrad {
    fn name(&self) -> &'static str {
        "Adagrad"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("Adagrad");
        check.non_negative("lr", self.lr)?;
        check.non_negative("lr_decay", self.lr_decay)?;
        check.non_negative("weight_decay", self.weight_decay)?;
        check.non_negative("initial_accumulator_value", self.initial_accumulator_value)?;
        check.non_negative("eps", self.eps)
    }

    fn kernel(&self) -> Kernel {
        Kernel::element_wise("adagrad", include_str!("../../shaders/adagrad.wgsl"), &["sum"], vec![("maximize", self.maximize)])
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "sum", init: self.initial_accumulator_value as f32, nonnegative: true }]
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        bytemuck::cast(AdagradTerms {
            step: step_tag(step),
            lr_decay_denominator: (1.0 + (step as f64 - 1.0) * self.lr_decay) as f32,
            _padding: [0.0; 2],
        })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        StepScalars::of(&AdagradScalars {
            terms: bytemuck::cast(terms),
            lr: self.lr as f32,
            weight_decay: self.weight_decay as f32,
            eps: self.eps as f32,
            _padding: [0.0; 9],
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { param, grad, mut state, .. } = tensor;
        let s: AdagradScalars = scalars.get();
        let sum = &mut state[0];
        for i in 0..param.len() {
            let p = param[i];
            let mut g = grad[i];
            if self.maximize {
                g = -g;
            }
            if s.weight_decay != 0.0 {
                g += s.weight_decay * p;
            }
            let acc = sum[i] + g * g;
            sum[i] = acc;
            let std_dev = acc.sqrt() + s.eps;
            let neg_clr = -(s.lr / s.terms.lr_decay_denominator);
            param[i] = p + neg_clr * g / std_dev;
        }
    }

    common_rule_methods!();
}
