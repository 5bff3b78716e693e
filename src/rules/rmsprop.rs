//! RMSprop (`torch.optim.RMSprop`); kernel: `shaders/rmsprop.wgsl`.
//!
//! ```text
//! input: lr, alpha, eps, weight_decay, momentum, centered, maximize
//! for t = 1, 2, ...:
//!     g = -g                                          if maximize
//!     g = g + weight_decay*p                          if weight_decay != 0
//!     sq = sq*alpha + (1 - alpha)*g*g                 # square_avg
//!     if centered:
//!         ga = lerp(ga, g, 1 - alpha)                 # grad_avg
//!         avg = sqrt(sq - ga*ga) + eps
//!     else:
//!         avg = sqrt(sq) + eps
//!     if momentum > 0:
//!         b = b*momentum + g/avg                      # momentum_buffer
//!         p = p + (-lr)*b
//!     else:
//!         p = p + (-lr)*g/avg
//! ```
//! torch adds eps outside the square root; some texts put it inside.

use serde::{Deserialize, Serialize};

use super::{CpuTensor, lerp, step_tag, Check, CycledMomentum, Kernel, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `torch.optim.RMSprop`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RMSprop {
    /// Learning rate. Default 1e-2; finite, >= 0.
    pub lr: f64,
    /// Smoothing constant: the decay of the running average of the squared gradient (`square_avg`).
    /// Default 0.99; finite, >= 0 (torch checks no upper bound).
    pub alpha: f64,
    /// Added to the root of the average (outside it), for numerical stability. Default 1e-8;
    /// finite, >= 0.
    pub eps: f64,
    /// Weight decay: the L2 penalty added to the gradient (`g + weight_decay*p`). Default 0;
    /// finite, >= 0.
    pub weight_decay: f64,
    /// Momentum factor: the decay of the `momentum_buffer`. Default 0 (no buffer); finite, >= 0.
    /// Zero or positive selects the kernel variant, so a scheduler cycles it only between positive
    /// values.
    pub momentum: f64,
    /// Normalizes by the estimated variance `square_avg - grad_avg^2` instead of the second moment
    /// (keeps a `grad_avg` state). Default false.
    pub centered: bool,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for RMSprop {
    fn default() -> Self {
        RMSprop {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

/// Mirrors `struct RmspropScalars` in `shaders/rmsprop.wgsl` (the terms carry only t).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RmspropScalars {
    terms: StepTerms,
    neg_lr: f32,
    alpha: f32,
    one_minus_alpha: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
    _padding: [f32; 6],
}

impl UpdateRule for RMSprop {
    fn name(&self) -> &'static str {
        "RMSprop"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("RMSprop");
        check.non_negative("lr", self.lr)?;
        check.non_negative("eps", self.eps)?;
        check.non_negative("momentum", self.momentum)?;
        check.non_negative("weight_decay", self.weight_decay)?;
        check.non_negative("alpha", self.alpha)
    }

    fn kernel(&self) -> Kernel {
        Kernel::element_wise("rmsprop", include_str!("../../shaders/rmsprop.wgsl"), &["square_avg", "momentum_buffer", "grad_avg"], vec![
                ("maximize", self.maximize),
                ("centered", self.centered),
                ("has_momentum", self.momentum > 0.0),
            ])
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        let mut slots = vec![StateSlot { key: "square_avg", init: 0.0, nonnegative: true }];
        if self.momentum > 0.0 {
            slots.push(StateSlot { key: "momentum_buffer", init: 0.0, nonnegative: false });
        }
        if self.centered {
            slots.push(StateSlot { key: "grad_avg", init: 0.0, nonnegative: false });
        }
        slots
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        StepTerms([step_tag(step), 0, 0, 0])
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        StepScalars::of(&RmspropScalars {
            terms,
            neg_lr: (-self.lr) as f32,
            alpha: self.alpha as f32,
            one_minus_alpha: (1.0 - self.alpha) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            momentum: self.momentum as f32,
            _padding: [0.0; 6],
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { param, grad, mut state, .. } = tensor;
        let s: RmspropScalars = scalars.get();
        let has_momentum = self.momentum > 0.0;
        let (square_avg, rest) = state.split_first_mut().expect("square_avg");
        let (momentum_buffer, rest) = if has_momentum { rest.split_first_mut().map(|(b, r)| (Some(b), r)).expect("momentum_buffer") } else { (None, rest) };
        let mut grad_avg = rest.first_mut();
        let mut momentum_buffer = momentum_buffer;
        for i in 0..param.len() {
            let p = param[i];
            let mut g = grad[i];
            if self.maximize {
                g = -g;
            }
            if s.weight_decay != 0.0 {
                g += s.weight_decay * p;
            }
            let sq = square_avg[i] * s.alpha + s.one_minus_alpha * g * g;
            square_avg[i] = sq;
            let avg = match grad_avg.as_deref_mut() {
                Some(grad_avg) if self.centered => {
                    let ga = lerp(grad_avg[i], g, s.one_minus_alpha);
                    grad_avg[i] = ga;
                    (sq - ga * ga).sqrt() + s.eps
                }
                _ => sq.sqrt() + s.eps,
            };
            match momentum_buffer.as_deref_mut() {
                Some(buffer) => {
                    let b = buffer[i] * s.momentum + g / avg;
                    buffer[i] = b;
                    param[i] = p + s.neg_lr * b;
                }
                None => param[i] = p + s.neg_lr * g / avg,
            }
        }
    }

    fn cycled_momentum(&self) -> Option<CycledMomentum> {
        Some(CycledMomentum { key: "momentum", value: self.momentum })
    }

    fn set_cycled_momentum(&mut self, value: f64) -> Result<()> {
        // momentum > 0 selects the kernel variant and the momentum_buffer state at construction.
        Check("RMSprop").require(
            (value > 0.0) == (self.momentum > 0.0),
            "momentum",
            value,
            "cannot switch between zero and positive once the optimizer is built (it selects the kernel \
             variant and the momentum_buffer state); build RMSprop with momentum > 0 to cycle it, or use \
             cycle_momentum = false",
        )?;
        self.momentum = value;
        Ok(())
    }

    common_rule_methods!();
}
