//! Schedule-Free AdamW (`schedulefree.AdamWScheduleFree`, Meta's `schedulefree` 1.4.1, its
//! single-tensor path); kernel: `shaders/schedulefree.wgsl`.
//!
//! ```text
//! input: lr, betas (beta1, beta2), eps, weight_decay, warmup_steps, r, weight_lr_power
//! weight_sum = 0;  lr_max = -1                            (per group)
//! for t = 1, 2, ...:                                      (k = t - 1, the reference's counter)
//!     lr_t = lr * min(1, t / warmup_steps)                 (lr while t > warmup_steps)
//!     lr_max = max(lr_t, lr_max)
//!     weight = t^r * lr_max^weight_lr_power;  weight_sum = weight_sum + weight
//!     ckp1 = weight / weight_sum                           (0 when weight_sum is 0)
//!     z = y                                                at t = 1 (the reference clones p)
//!     v = v*beta2 + (1 - beta2)*g*g                        # exp_avg_sq
//!     u = g / (sqrt(v / (1 - beta2^t)) + eps)
//!     u = u + weight_decay*y                               if weight_decay != 0
//!     y = lerp(y, z, ckp1) + lr_t*(beta1*(1 - ckp1) - 1) * u
//!     z = z - lr_t*u
//! train(): p = lerp(p, z, 1 - beta1)      (x to y)      eval(): p = lerp(p, z, 1 - 1/beta1)   (y to x)
//! ```
//! The parameters hold y in train mode (where every step must be taken) and x in eval mode;
//! [`crate::Optimizer::train`] and [`crate::Optimizer::eval`] switch them. The optimizer starts
//! in train mode (the reference starts in eval mode and raises if a step comes before
//! `train()`; both switches do nothing before the first step, so the two agree on every run
//! that calls `train()` first).
//!
//! `lr_t`, `lr_max`, `weight_sum`, `ckp1` and `1 - beta2^t` are computed on the CPU in f64, as
//! the reference computes them in Python floats, and rounded to f32 where torch rounds its
//! scalar arguments; `lr_max` and `weight_sum` follow the history of the lr, so they are
//! running values ([`TermsMemo`]) that checkpoints keep under the reference's group keys. The
//! factor `lr_t*(beta1*(1 - ckp1) - 1)` is formed in f32 (within a few ulps of the reference's
//! f64 product), so that the step terms fit the GPU's ring.

use serde::{Deserialize, Serialize};

use super::{
    lerp, step_tag, Check, CpuTensor, Kernel, ModeSwitch, Pass, Scope, StateSlot, StepScalars, StepTerms, TermsMemo,
    UpdateRule,
};
use crate::error::Result;

/// `schedulefree.AdamWScheduleFree`, with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWScheduleFree {
    /// Learning rate. Default 0.0025; finite, >= 0.
    pub lr: f64,
    /// Interpolation of the point the gradient is taken at, `y = beta1*x + (1 - beta1)*z`
    /// (`betas[0]`), and coefficient of the running average of the squared gradient (`exp_avg_sq`,
    /// `betas[1]`). Default (0.9, 0.999); `betas[0]` in (0, 1), `betas[1]` in [0, 1).
    pub betas: (f64, f64),
    /// Added to the root of the second moment in the denominator, for numerical stability. Default
    /// 1e-8; finite, >= 0.
    pub eps: f64,
    /// Weight decay, added to the normalized update at y (`u + weight_decay*y`). Default 0;
    /// finite, >= 0.
    pub weight_decay: f64,
    /// Steps of linear learning-rate warm-up: `lr_t = lr*min(1, t/warmup_steps)`. Default 0.
    pub warmup_steps: u64,
    /// Power of t in the averaging weight `t^r * lr_max^weight_lr_power`. Default 0; any finite
    /// value.
    pub r: f64,
    /// Power of the largest learning rate so far in the averaging weight. Default 2; any finite
    /// value.
    pub weight_lr_power: f64,
}

impl Default for AdamWScheduleFree {
    fn default() -> Self {
        AdamWScheduleFree {
            lr: 0.0025,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            r: 0.0,
            weight_lr_power: 2.0,
        }
    }
}

/// `weight_sum` and `lr_max` before the first step.
const INITIAL_RUNNING: [f64; 2] = [0.0, -1.0];

/// Mirrors `struct ScheduleFreeTerms` in `shaders/schedulefree.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScheduleFreeTerms {
    step: u32,
    ckp1: f32,
    lr: f32,
    bias_correction2: f32,
}

/// Mirrors `struct ScheduleFreeScalars` in `shaders/schedulefree.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScheduleFreeScalars {
    terms: ScheduleFreeTerms,
    beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    _padding: [f32; 3],
}

impl AdamWScheduleFree {
    /// Step `step`'s terms and the running `[weight_sum, lr_max]` after it, from those after
    /// the step before, as the reference's `step` computes them.
    fn advance(&self, step: u64, [weight_sum, lr_max]: [f64; 2]) -> (ScheduleFreeTerms, [f64; 2]) {
        let k = step - 1;
        let sched = if k < self.warmup_steps { (k + 1) as f64 / self.warmup_steps as f64 } else { 1.0 };
        let bias_correction2 = 1.0 - self.betas.1.powf((k + 1) as f64);
        let lr = self.lr * sched;
        let lr_max = lr.max(lr_max);
        let weight = ((k + 1) as f64).powf(self.r) * lr_max.powf(self.weight_lr_power);
        let weight_sum = weight_sum + weight;
        let ckp1 = if weight_sum == 0.0 { 0.0 } else { weight / weight_sum };
        let terms = ScheduleFreeTerms {
            step: step_tag(step),
            ckp1: ckp1 as f32,
            lr: lr as f32,
            bias_correction2: bias_correction2 as f32,
        };
        (terms, [weight_sum, lr_max])
    }

    /// The interpolation weight of a mode switch, as the reference's `lerp_` rounds it.
    fn switch(weight: f64) -> Pass {
        Pass::new("switch_mode", Scope::Elements).with_args([(weight as f32).to_bits(), 0, 0, 0, 0, 0, 0, 0])
    }
}

impl UpdateRule for AdamWScheduleFree {
    fn name(&self) -> &'static str {
        "AdamWScheduleFree"
    }

    /// The reference validates nothing; these are the values its arithmetic survives
    /// (`eval()` divides by `betas[0]`).
    fn validate(&self) -> Result<()> {
        let check = Check("AdamWScheduleFree");
        check.non_negative("lr", self.lr)?;
        check.non_negative("eps", self.eps)?;
        check.require(self.betas.0 > 0.0 && self.betas.0 < 1.0, "betas[0]", self.betas.0, "must be in (0, 1): eval() divides by it")?;
        check.unit_interval_open("betas[1]", self.betas.1)?;
        check.non_negative("weight_decay", self.weight_decay)?;
        check.finite("r", self.r)?;
        check.finite("weight_lr_power", self.weight_lr_power)
    }

    fn kernel(&self) -> Kernel {
        let beta1 = self.betas.0;
        Kernel {
            mode_switch: Some(ModeSwitch { to_train: Self::switch(1.0 - beta1), to_eval: Self::switch(1.0 - 1.0 / beta1) }),
            ..Kernel::element_wise("schedulefree", include_str!("../../shaders/schedulefree.wgsl"), &["z", "exp_avg_sq"], Vec::new())
        }
    }

    fn state_slots(&self) -> Vec<StateSlot> {
        vec![StateSlot { key: "z", init: 0.0, nonnegative: false }, StateSlot { key: "exp_avg_sq", init: 0.0, nonnegative: true }]
    }

    fn running_keys(&self) -> &'static [&'static str] {
        &["weight_sum", "lr_max"]
    }

    /// Per group: the reference keeps `k` in the param group, and it advances on every step.
    fn counts_steps_per_tensor(&self) -> bool {
        false
    }

    fn step_terms(&self, step: u64, memo: &mut TermsMemo) -> StepTerms {
        let base = if step == 1 {
            INITIAL_RUNNING
        } else {
            memo.before(step).unwrap_or_else(|| (1..step).fold(INITIAL_RUNNING, |running, t| self.advance(t, running).1))
        };
        let (terms, after) = self.advance(step, base);
        memo.advance(step, base, after);
        bytemuck::cast(terms)
    }

    fn step_scalars(&self, terms: StepTerms) -> StepScalars {
        let (beta1, beta2) = self.betas;
        StepScalars::of(&ScheduleFreeScalars {
            terms: bytemuck::cast(terms),
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            _padding: [0.0; 3],
        })
    }

    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>) {
        let CpuTensor { param, grad, mut state, first_step, .. } = tensor;
        let s: ScheduleFreeScalars = scalars.get();
        let t = s.terms;
        let [z, exp_avg_sq] = state.as_mut_slice() else { panic!("AdamWScheduleFree keeps z and exp_avg_sq") };
        for i in 0..param.len() {
            let y = param[i];
            let g = grad[i];
            let base = if first_step { y } else { z[i] };
            let v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * g * g;
            exp_avg_sq[i] = v;
            let mut u = g / ((v / t.bias_correction2).sqrt() + s.eps);
            if s.weight_decay != 0.0 {
                u += s.weight_decay * y;
            }
            let y_coefficient = t.lr * (s.beta1 * (1.0 - t.ckp1) - 1.0);
            param[i] = lerp(y, base, t.ckp1) + y_coefficient * u;
            z[i] = base - t.lr * u;
        }
    }

    fn cpu_switch_mode(&self, to_train: bool, tensor: CpuTensor<'_>) {
        let CpuTensor { param, state, .. } = tensor;
        let switch = self.kernel().mode_switch.expect("Schedule-Free switches modes");
        let weight = f32::from_bits(if to_train { switch.to_train } else { switch.to_eval }.args[0]);
        for (p, &z) in param.iter_mut().zip(state[0].iter()) {
            *p = lerp(*p, z, weight);
        }
    }

    common_rule_methods!();
}
