//! Rprop (`torch.optim.Rprop`); kernel: `shaders/rprop.wgsl`.
//!
//! ```text
//! input: lr, etas (etaminus, etaplus), step_sizes (step_size_min, step_size_max), maximize
//! prev = 0;  step_size = lr                           (at the first step, with the group's lr then)
//! for t = 1, 2, ...:
//!     g = -g                                          if maximize
//!     s = sign(g*prev)
//!     f = etaplus if s > 0, etaminus if s < 0, 1 otherwise
//!     step_size = clamp(step_size*f, step_size_min, step_size_max)
//!     g = 0                                           where f == etaminus
//!     p = p + (-sign(g))*step_size
//!     prev = g
//! ```
//! As torch's single-tensor path does: the sign of the float32 product `g*prev` (not the product
//! of the signs), the factors and clamp bounds rounded to f32 (torch's `sign` tensor and
//! `clamp_` scalars are float32), and the gradient zeroed where the factor equals etaminus
//! (`grad[sign.eq(etaminus)] = 0`). torch creates `step_size` at the first step, filled with the
//! group's lr at that time (`torch.full_like(grad, lr)`); the kernel likewise sets it to the
//! step's lr at step 1, so that a scheduler that changes the lr before the first step is
//! followed (the state slot also starts at the lr, for a checkpoint taken before any step).

use serde::{Deserialize, Serialize};

use super::{CpuTensor, step_tag, Check, Kernel, StateSlot, StepScalars, StepTerms, TermsMemo, UpdateRule};
use crate::error::Result;

/// `torch.optim.Rprop`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rprop {
    /// Learning rate: the initial step size of every element. Default 1e-2; finite, >= 0.
    pub lr: f64,
    /// Multiplicative decrease and increase factors (etaminus, etaplus) of the step size, where the
    /// gradient's sign flips or stays. Default (0.5, 1.2); `0 < etas[0] < 1 < etas[1]`, etaplus
    /// finite.
    pub etas: (f64, f64),
    /// Minimal and maximal step sizes. Default (1e-6, 50); each finite.
    pub step_sizes: (f64, f64),
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for Rprop {
    fn default() -> Self {
        Rprop { lr: 1e-2, etas: (0.5, 1.2), step_sizes: (1e-6, 50.0), maximize: false }
    }
}

/// Mirrors `struct RpropTerms` in `shaders/rprop.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RpropTerms {
    step: u32,
    _padding: [f32; 3],
}

/// Mirrors `struct RpropScalars` in `shaders/rprop.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RpropScalars {
    terms: RpropTerms,
    lr: f32,
    etaminus: f32,
    etaplus: f32,
    step_size_min: f32,
    step_size_max: f32,
    _padding: [f32; 7],
}

impl UpdateRule for Rprop {
    fn name(&self) -> &'static str {
        "Rprop"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("Rprop");
        check.non_negative("lr", self.lr)?;
        // torch: `if not 0.0 < etas[0] < 1.0 < etas[1]: raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")`
        // (and a finite etaplus, which torch does not check).
        let (etaminus, etaplus) = self.etas;
        let ok = 0.0 < etaminus && etaminus < 1.0 && 1.0 < etaplus && etaplus.is_finite();
        check.require_pair(ok, "etas", self.etas, "must satisfy 0 < etas[0] < 1 < etas[1]")?;
        // torch does not check the step-size bounds; NaN or infinity would poison every step size.
        check.finite("step_sizes[0]", self.step_sizes.0)?;
        check.finite("step_sizes[1]", self.step_sizes.1)
    }

    fn kernel(&self) -> Kernel {
        Kernel::element_wise("rprop", include_str!("../../shaders/rprop.wgsl"), &["prev", "step_size"], vec![(
            "maximize",
            self.maximize,
        )])
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "prev", init: 0.0, nonnegative: false }, StateSlot { key: "step_size", init: self.lr as f32, nonnegative: true }]
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        bytemuck::cast(RpropTerms { step: step_tag(step), _padding: [0.0; 3] })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        StepScalars::of(&RpropScalars {
            terms: bytemuck::cast(terms),
            lr: self.lr as f32,
            etaminus: self.etas.0 as f32,
            etaplus: self.etas.1 as f32,
            step_size_min: self.step_sizes.0 as f32,
            step_size_max: self.step_sizes.1 as f32,
            _padding: [0.0; 7],
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { param, grad, mut state, .. } = tensor;
        let s: RpropScalars = scalars.get();
        let [prev, step_size] = state.as_mut_slice() else { panic!("Rprop keeps prev and step_size") };
        for i in 0..param.len() {
            let p = param[i];
            let mut g = grad[i];
            if self.maximize {
                g = -g;
            }
            let mut size = step_size[i];
            if s.terms.step == 1 {
                size = s.lr;
            }
            let product = g * prev[i];
            let factor = if product > 0.0 {
                s.etaplus
            } else if product < 0.0 {
                s.etaminus
            } else {
                1.0
            };
            // clamp_(min, max) = min(max(x, min), max), as WGSL's clamp.
            size = (size * factor).max(s.step_size_min).min(s.step_size_max);
            if factor == s.etaminus {
                g = 0.0;
            }
            step_size[i] = size;
            param[i] = p + -sign(g) * size;
            prev[i] = g;
        }
    }

    common_rule_methods!();
}

/// torch.sign / WGSL `sign`: 0 for ±0.
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}
