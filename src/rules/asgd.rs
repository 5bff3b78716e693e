//! ASGD (`torch.optim.ASGD`, torch 2.15, `_single_tensor_asgd`); kernel: `shaders/asgd.wgsl`.
//!
//! ```text
//! input: lr, lambd, alpha, t0, weight_decay, maximize
//! eta = lr (the group's lr at the first step);  mu = 1;  ax = 0
//! for t = 1, 2, ...:
//!     g = -g                                          if maximize
//!     g = g + weight_decay*p                          if weight_decay != 0
//!     p = p * (1 - lambd*eta)
//!     p = p + (-eta)*g
//!     ax = ax + (p - ax)*mu                           if mu != 1
//!     ax = p                                          otherwise
//!     eta = lr_t / (1 + lambd*lr_t*t)^alpha           # with this step's lr, after the update
//!     mu = 1 / max(1, t - t0)
//! ```
//! `eta` and `mu` are per-tensor 0-d state ([`TensorSlot`]s of shape `[]` in the aux buffer,
//! torch's keys), `ax` per-element state. The `eta` a step uses comes from the previous step's
//! lr, so it is state, not a function of the step: pass `update` (every element) reads `eta`
//! and `mu` from the tensor's aux region and updates `p` and `ax`; pass `schedule` (per
//! tensor) then writes the next `eta` and `mu`. Both are computed on the CPU in f64, as torch
//! computes them in Python floats, and rounded to f32 as torch's `eta.copy_` and `mu.copy_`
//! round them: `mu` (a function of t) travels in the step terms; the next `eta` (a function of
//! t and the step's lr) travels in the step scalars, for the CPU's step t and the 15 before it,
//! so that when the step count lives on the GPU (gradient conditioning) a step that follows up
//! to 15 skipped steps not yet read back still gets the exact value from this step's lr (the
//! terms ring carries a fallback computed with the lr of when it was filled).
//!
//! torch creates `eta` at the first step from the group's lr then (`torch.as_tensor(lr)`), so
//! a scheduler's initial scaling counts: at t = 1 the kernel takes `eta = lr` (this step's) and
//! `mu = 1` instead of reading them (the slots' `init` values are the lr at construction and
//! 1, what a checkpoint taken before the first step holds). The decay factor `1 - lambd*eta` is
//! formed in f32 where torch forms it in f64 from the f32 `eta`.

use serde::{Deserialize, Serialize};

use super::{step_tag, Check, CpuTensor, Kernel, Pass, Scope, StateSlot, StepScalars, StepTerms, TensorSlot, TermsMemo, UpdateRule};
use crate::error::Result;

/// Steps before the CPU's step count whose next `eta` the scalars carry.
const ETA_CANDIDATES: usize = 16;

/// `torch.optim.ASGD`, with torch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Asgd {
    /// Learning rate; the step size `eta` starts at the lr of the first step. Default 1e-2;
    /// finite, >= 0.
    pub lr: f64,
    /// Decay term: each step multiplies the parameters by `1 - lambd*eta`, and `eta` decays as
    /// `lr / (1 + lambd*lr*t)^alpha`. Default 1e-4; any finite value.
    pub lambd: f64,
    /// Power of the decay of `eta`. Default 0.75; any finite value.
    pub alpha: f64,
    /// The step at which averaging starts: `ax` averages the iterates with weight
    /// `mu = 1 / max(1, t - t0)`. Default 1e6; any finite value.
    pub t0: f64,
    /// Weight decay: the L2 penalty added to the gradient (`g + weight_decay*p`). Default 0;
    /// finite, >= 0.
    pub weight_decay: f64,
    /// Maximizes the objective instead of minimizing it (negates the gradient). Default false.
    pub maximize: bool,
}

impl Default for Asgd {
    fn default() -> Self {
        Asgd { lr: 1e-2, lambd: 1e-4, alpha: 0.75, t0: 1e6, weight_decay: 0.0, maximize: false }
    }
}

/// Mirrors `struct AsgdTerms` in `shaders/asgd.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AsgdTerms {
    step: u32,
    /// The next eta with the lr of when the terms were computed (a fallback, see the module doc).
    eta_next: f32,
    mu_next: f32,
    _padding: f32,
}

/// Mirrors `struct AsgdScalars` in `shaders/asgd.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AsgdScalars {
    terms: AsgdTerms,
    lr: f32,
    lambd: f32,
    weight_decay: f32,
    /// The step these scalars were recorded for: `terms.step` as the CPU wrote it (the GPU
    /// replaces `terms` by its own step's when that differs).
    recorded_step: u32,
    /// The next eta after step `recorded_step - j`, with this step's lr, at `[j]`.
    eta_next: [f32; ETA_CANDIDATES],
}

impl Asgd {
    /// torch's `lr / ((1 + lambd * lr * step) ** alpha)`, rounded as `eta.copy_` rounds it.
    fn eta_after(&self, step: u64) -> f32 {
        (self.lr / (1.0 + self.lambd * self.lr * step as f64).powf(self.alpha)) as f32
    }
}

impl UpdateRule for Asgd {
    fn name(&self) -> &'static str {
        "ASGD"
    }

    fn validate(&self) -> Result<()> {
        let check = Check("ASGD");
        check.non_negative("lr", self.lr)?;
        check.non_negative("weight_decay", self.weight_decay)?;
        check.finite("lambd", self.lambd)?;
        check.finite("alpha", self.alpha)?;
        check.finite("t0", self.t0)
    }

    fn kernel(&self) -> Kernel {
        Kernel {
            label: "asgd",
            source: include_str!("../../shaders/asgd.wgsl"),
            state_bindings: &["ax"],
            flags: vec![("maximize", self.maximize)],
            passes: vec![Pass::new("update", Scope::Elements), Pass::new("schedule", Scope::Tensors)],
            per_tensor: true,
            whole_tensors: false,
            mode_switch: None,
            sparse_rows: false,
        }
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "ax", init: 0.0, nonnegative: false }]
    }

    /// torch's 0-d `eta` and `mu`.
    fn tensor_state(&self, _shape: &[usize]) -> Vec<TensorSlot> {
        vec![
            TensorSlot { key: "eta", shape: Vec::new(), init: self.lr as f32 },
            TensorSlot { key: "mu", shape: Vec::new(), init: 1.0 },
        ]
    }

    fn step_terms(&self, step: u64, _: &mut TermsMemo) -> StepTerms {
        bytemuck::cast(AsgdTerms {
            step: step_tag(step),
            eta_next: self.eta_after(step),
            mu_next: (1.0 / (step as f64 - self.t0).max(1.0)) as f32,
            _padding: 0.0,
        })
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let terms: AsgdTerms = bytemuck::cast(terms);
        let mut eta_next = [0.0f32; ETA_CANDIDATES];
        for (j, eta) in eta_next.iter_mut().enumerate() {
            if let Some(step) = u64::from(terms.step).checked_sub(j as u64).filter(|&t| t >= 1) {
                *eta = self.eta_after(step);
            }
        }
        StepScalars::of(&AsgdScalars {
            terms,
            lr: self.lr as f32,
            lambd: self.lambd as f32,
            weight_decay: self.weight_decay as f32,
            recorded_step: terms.step,
            eta_next,
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { param, grad, mut state, mut tensor_state, .. } = tensor;
        let s: AsgdScalars = scalars.get();
        let [ax] = state.as_mut_slice() else { panic!("ASGD keeps ax") };
        let [eta_state, mu_state] = tensor_state.as_mut_slice() else { panic!("ASGD keeps eta and mu") };
        let (eta, mu) = if s.terms.step == 1 { (s.lr, 1.0) } else { (eta_state[0], mu_state[0]) };
        let decay = 1.0 - s.lambd * eta;
        for i in 0..param.len() {
            let mut p = param[i];
            let mut g = grad[i];
            if self.maximize {
                g = -g;
            }
            if s.weight_decay != 0.0 {
                g += s.weight_decay * p;
            }
            p *= decay;
            p += -eta * g;
            param[i] = p;
            ax[i] = if mu != 1.0 { ax[i] + (p - ax[i]) * mu } else { p };
        }
        eta_state[0] = s.eta_next[0];
        mu_state[0] = s.terms.mu_next;
    }

    common_rule_methods!();
}
