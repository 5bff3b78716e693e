//! Lion (`lion_pytorch.Lion`, the reference implementation of Chen et al., "Symbolic Discovery
//! of Optimization Algorithms"); kernel: `shaders/lion.wgsl`.
//!
//! ```text
//! input: lr, betas (beta1, beta2), weight_decay
//! for t = 1, 2, ...:
//!     p = p * (1 - lr*weight_decay)                   # decoupled ("stepweight") decay
//!     c = m*beta1 + (1 - beta1)*g
//!     p = p + (-lr)*sign(c)
//!     m = m*beta2 + (1 - beta2)*g                     # exp_avg
//! ```
//! As lion-pytorch's plain PyTorch `update_fn` does it: `exp_avg.clone().mul_(beta1).add(grad,
//! alpha=1 - beta1).sgn_()` (a multiply, then a multiply-add; not `lerp`), `p.add_(update,
//! alpha=-lr)`, `exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)`, and the decay factor
//! `1 - lr*wd` in Python floats (the multiply by 1 is exact when weight_decay is 0). Its
//! `decoupled_weight_decay=True` option (weight_decay divided by the constructor's lr) and
//! `use_triton` are not supported: `deny_unknown_fields` rejects them. No step terms are
//! needed; the step tag is still checked when the step count lives on the GPU.

use serde::{Deserialize, Serialize};

use super::{CpuTensor, step_tag, Check, Kernel, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `lion_pytorch.Lion`, with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lion {
    /// Learning rate: the size of every element's signed step. Default 1e-4; finite, >= 0
    /// (lion-pytorch asserts `lr > 0` at construction only; a scheduler may reach 0).
    pub lr: f64,
    /// Coefficients of the interpolation whose sign is the update (`betas[0]`) and of the running
    /// average of the gradient (`exp_avg`, `betas[1]`). Default (0.9, 0.99); each in [0, 1].
    pub betas: (f64, f64),
    /// Decoupled weight decay: each step multiplies the parameters by `1 - lr*weight_decay`.
    /// Default 0; any finite value.
    pub weight_decay: f64,
}

impl Default for Lion {
    fn default() -> Self {
        Lion { lr: 1e-4, betas: (0.9, 0.99), weight_decay: 0.0 }
    }
}

/// Mirrors `struct LionTerms` in `shaders/lion.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LionTerms {
    step: u32,
    _padding: [f32; 3],
}

/// Mirrors `struct LionScalars` in `shaders/lion.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LionScalars {
    terms: LionTerms,
    decay_factor: f32,
    neg_lr: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    _padding: [f32; 6],
}

impl UpdateRule for Lion {
    fn name(&self) -> &'static str {
        "Lion"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("Lion");
        // lion-pytorch: `assert all([0. <= beta <= 1. for beta in betas])`, and `assert lr > 0.`
        // on the constructor's lr only: a group's own lr and a scheduler's (CosineAnnealingLR
        // reaches exactly 0) are not checked. `validate` also runs on every scheduled lr, so
        // it accepts 0 as those paths do, and rejects what is negative or not finite.
        check.non_negative("lr", self.lr)?;
        check.unit_interval_closed("betas[0]", self.betas.0)?;
        check.unit_interval_closed("betas[1]", self.betas.1)?;
        // Not checked by lion-pytorch; NaN or infinity would poison every parameter.
        check.finite("weight_decay", self.weight_decay)
    }

    fn kernel(&self) -> Kernel {
        Kernel::element_wise("lion", include_str!("../../shaders/lion.wgsl"), &["exp_avg"], Vec::new())
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "exp_avg", init: 0.0, nonnegative: false }]
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        bytemuck::cast(LionTerms { step: step_tag(step), _padding: [0.0; 3] })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let (beta1, beta2) = self.betas;
        StepScalars::of(&LionScalars {
            terms: bytemuck::cast(terms),
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            neg_lr: (-self.lr) as f32,
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            _padding: [0.0; 6],
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { param, grad, mut state, .. } = tensor;
        let s: LionScalars = scalars.get();
        let exp_avg = &mut state[0];
        for i in 0..param.len() {
            let g = grad[i];
            let mut p = param[i] * s.decay_factor;
            let c = exp_avg[i] * s.beta1 + s.one_minus_beta1 * g;
            let update = if c > 0.0 {
                1.0
            } else if c < 0.0 {
                -1.0
            } else {
                0.0
            };
            p += s.neg_lr * update;
            param[i] = p;
            exp_avg[i] = exp_avg[i] * s.beta2 + s.one_minus_beta2 * g;
        }
    }

    beta1_cycled_momentum!();

    common_rule_methods!();
}
