//! Linear warmup then cosine decay, computed the way torch's
//! `SequentialLR([LinearLR(start_factor, total_iters=warmup), CosineAnnealingLR(T_max=total-warmup)],
//! milestones=[warmup])` computes it: torch's recursive (chainable) forms in f64, so the learning
//! rates equal torch's bit for bit, not just to rounding.
//!
//! PLUG-IN (schedule): this stands in for the library's `src/schedule.rs`, which is being
//! written; once it lands, main.rs builds that schedule instead and this file goes.

use std::f64::consts::PI;

#[derive(Clone, Debug)]
pub struct WarmupCosine {
    warmup: usize,
    total: usize,
    start_factor: f64,
    /// Per parameter group: the peak learning rate and the one the next step uses.
    base: Vec<f64>,
    current: Vec<f64>,
    /// Scheduler steps taken (torch's `last_epoch` of the SequentialLR).
    epoch: usize,
}

impl WarmupCosine {
    /// `warmup` steps rising from `start_factor·lr` to `lr`, then a cosine down to 0 at `total`.
    pub fn new(base: Vec<f64>, warmup: usize, total: usize, start_factor: f64) -> Result<Self, String> {
        if warmup >= total {
            return Err(format!("warmup ({warmup} steps) must be shorter than the run ({total} steps)"));
        }
        // LinearLR's own check.
        if warmup > 0 && !(start_factor > 0.0 && start_factor <= 1.0) {
            return Err(format!("warmup start factor {start_factor} must be in (0, 1]"));
        }
        let current = if warmup > 0 { base.iter().map(|lr| lr * start_factor).collect() } else { base.clone() };
        Ok(WarmupCosine { warmup, total, start_factor, base, current, epoch: 0 })
    }

    /// The learning rate of each group for the next optimizer step.
    pub fn lrs(&self) -> &[f64] {
        &self.current
    }

    /// Advances one step (torch: `scheduler.step()` after `optimizer.step()`).
    pub fn step(&mut self) {
        const ETA_MIN: f64 = 0.0;
        self.epoch += 1;
        let e = self.epoch;
        let t_max = (self.total - self.warmup) as f64;
        for (lr, &base) in self.current.iter_mut().zip(&self.base) {
            *lr = if e < self.warmup {
                // LinearLR.get_lr, end_factor 1.
                let (start, end) = (self.start_factor, 1.0);
                *lr * (1.0 + (end - start) / (self.warmup as f64 * start + (e - 1) as f64 * (end - start)))
            } else if e == self.warmup {
                // SequentialLR hands over at the milestone with CosineAnnealingLR's closed form at 0.
                ETA_MIN + (base - ETA_MIN) * (1.0 + (PI * 0.0 / t_max).cos()) / 2.0
            } else if e - self.warmup <= self.total - self.warmup {
                // CosineAnnealingLR.get_lr, recursive form.
                let k = (e - self.warmup) as f64;
                (1.0 + (PI * k / t_max).cos()) / (1.0 + (PI * (k - 1.0) / t_max).cos()) * (*lr - ETA_MIN) + ETA_MIN
            } else {
                *lr // past the end of the run: hold
            };
        }
    }
}
