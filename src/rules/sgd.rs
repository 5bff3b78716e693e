//! SGD (`torch.optim.SGD`); kernel: `shaders/sgd.wgsl`.
//!
//! ```text
//! input: lr, momentum, dampening, weight_decay, nesterov, maximize
//! for t = 1, 2, ...:
//!     g = -g                                          if maximize
//!     g = g + weight_decay*p                          if weight_decay != 0
//!     if momentum != 0:
//!         b = g                                       if t == 1 (momentum_buffer)
//!         b = b*momentum + (1 - dampening)*g          otherwise
//!         g = g + momentum*b                          if nesterov; else g = b
//!     p = p + (-lr)*g
//! ```
//! The textbook form v = mu*v - lr*g (the seed articles) is the same update with the
//! learning rate folded into the buffer; torch's form keeps lr outside, so that a schedule
//! changing lr does not rescale the accumulated momentum.

use serde::{Deserialize, Serialize};

use super::{CpuTensor, step_tag, Check, CycledMomentum, Kernel, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `torch.optim.SGD`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sgd {
    /// Learning rate. Default 1e-3; finite, >= 0.
    pub lr: f64,
    /// Momentum factor: the decay of the `momentum_buffer`. Default 0 (no buffer); finite, >= 0.
    /// Zero or non-zero selects the kernel variant, so a scheduler cycles it only between non-zero
    /// values.
    pub momentum: f64,
    /// Dampening of the gradient's share of the momentum buffer (`(1 - dampening)*g`). Default 0;
    /// any finite value.
    pub dampening: f64,
    /// Weight decay: the L2 penalty added to the gradient (`g + weight_decay*p`). Default 0;
    /// finite, >= 0.
    pub weight_decay: f64,
    /// Nesterov momentum: steps along `g + momentum*b` instead of `b`. Default false; needs
    /// `momentum > 0` and `dampening == 0`.
    pub nesterov: bool,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

/// Mirrors `struct SgdTerms` in `shaders/sgd.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SgdTerms {
    step: u32,
    _padding: [f32; 3],
}

/// Mirrors `struct SgdScalars` in `shaders/sgd.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SgdScalars {
    terms: SgdTerms,
    neg_lr: f32,
    weight_decay: f32,
    momentum: f32,
    one_minus_dampening: f32,
    _padding: [f32; 8],
}

impl UpdateRule for Sgd {
    fn name(&self) -> &'static str {
        "SGD"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("SGD");
        check.non_negative("lr", self.lr)?;
        check.non_negative("momentum", self.momentum)?;
        check.finite("dampening", self.dampening)?;
        check.non_negative("weight_decay", self.weight_decay)?;
        check.require(
            !self.nesterov || (self.momentum > 0.0 && self.dampening == 0.0),
            "nesterov",
            self.momentum,
            "Nesterov momentum requires a momentum and zero dampening",
        )
    }

    fn kernel(&self) -> Kernel {
        Kernel::element_wise("sgd", include_str!("../../shaders/sgd.wgsl"), &["momentum_buffer"], vec![
                ("maximize", self.maximize),
                ("has_momentum", self.momentum != 0.0),
                ("nesterov", self.nesterov),
            ])
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        if self.momentum != 0.0 {
            vec![StateSlot { key: "momentum_buffer", init: 0.0, nonnegative: false }]
        } else {
            Vec::new()
        }
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        bytemuck::cast(SgdTerms { step: step_tag(step), _padding: [0.0; 3] })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        StepScalars::of(&SgdScalars {
            terms: bytemuck::cast(terms),
            neg_lr: (-self.lr) as f32,
            weight_decay: self.weight_decay as f32,
            momentum: self.momentum as f32,
            one_minus_dampening: (1.0 - self.dampening) as f32,
            _padding: [0.0; 8],
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { param, grad, mut state, .. } = tensor;
        let s: SgdScalars = scalars.get();
        for i in 0..param.len() {
            let p = param[i];
            let mut g = grad[i];
            if self.maximize {
                g = -g;
            }
            if s.weight_decay != 0.0 {
                g += s.weight_decay * p;
            }
            if self.momentum != 0.0 {
                let buffer = &mut state[0][i];
                let b = if s.terms.step == 1 { g } else { *buffer * s.momentum + s.one_minus_dampening * g };
                *buffer = b;
                g = if self.nesterov { g + s.momentum * b } else { b };
            }
            param[i] = p + s.neg_lr * g;
        }
    }

    fn cycled_momentum(&self) -> Option<CycledMomentum> {
        Some(CycledMomentum { key: "momentum", value: self.momentum })
    }

    fn set_cycled_momentum(&mut self, value: f64) -> Result<()> {
        // momentum != 0 selects the kernel variant and the momentum_buffer state at construction.
        Check("SGD").require(
            (value != 0.0) == (self.momentum != 0.0),
            "momentum",
            value,
            "cannot switch between zero and non-zero once the optimizer is built (it selects the kernel \
             variant and the momentum_buffer state); build SGD with momentum > 0 to cycle it, or use \
             cycle_momentum = false",
        )?;
        self.momentum = value;
        Ok(())
    }

    common_rule_methods!();
}
