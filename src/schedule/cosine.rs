//! Cosine schedules: `CosineAnnealingLR` (torch's chainable recurrence) and
//! `CosineAnnealingWarmRestarts` (SGDR).

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::leaf::{leaf_scheduler, serde_law_state, Epochs, Law, Leaf, Update};
use super::{parse_args, take_last_epoch, LearningRates, Scheduler};
use crate::error::{Error, Result};
use crate::rules::Check;

// ---- CosineAnnealingLR ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CosineLaw {
    #[serde(rename = "T_max")]
    t_max: u64,
    eta_min: f64,
}

impl Law for CosineLaw {
    const NAME: &'static str = "CosineAnnealingLR";

    fn validate(&self, _groups: usize) -> Result<()> {
        let check = Check(Self::NAME);
        check.require(self.t_max >= 1, "T_max", self.t_max as f64, "must be >= 1")?;
        check.non_negative("eta_min", self.eta_min)
    }

    fn get_lr(&self, epochs: &Epochs, is_initial: bool, lrs: &[f64]) -> Result<Update> {
        let (epoch, t_max, eta_min) = (epochs.last_epoch, self.t_max as f64, self.eta_min);
        let lrs: Vec<f64> = if is_initial {
            lrs.to_vec()
        } else if epochs.step_count == 1 && epoch > 0 {
            // torch's branch for a scheduler resumed at last_epoch > 0.
            let cosine = (epoch as f64 * PI / t_max).cos();
            epochs.base_lrs.iter().map(|base| eta_min + (base - eta_min) * (1.0 + cosine) / 2.0).collect()
        } else if (i128::from(epoch) - 1 - i128::from(self.t_max)).rem_euclid(2 * i128::from(self.t_max)) == 0 {
            // The step after a minimum, where the ratio below would divide by 1 + cos(π) = 0.
            // (In i128: T_max is any u64 a run.json or checkpoint gives, and 2·T_max must not overflow.)
            let one_minus_cosine = 1.0 - (PI / t_max).cos();
            lrs.iter().zip(&epochs.base_lrs).map(|(lr, base)| lr + (base - eta_min) * one_minus_cosine / 2.0).collect()
        } else {
            let ratio = (1.0 + (PI * epoch as f64 / t_max).cos()) / (1.0 + (PI * (epoch - 1) as f64 / t_max).cos());
            lrs.iter().map(|lr| ratio * (lr - eta_min) + eta_min).collect()
        };
        Ok(lrs.into())
    }

    fn closed_form(&self, epochs: &Epochs) -> Option<Result<Vec<f64>>> {
        let cosine = (PI * epochs.last_epoch as f64 / self.t_max as f64).cos();
        Some(Ok(epochs.base_lrs.iter().map(|base| self.eta_min + (base - self.eta_min) * (1.0 + cosine) / 2.0).collect()))
    }

    serde_law_state!();
}

/// `torch.optim.lr_scheduler.CosineAnnealingLR`: anneals each learning rate from its initial
/// value to `eta_min` (torch's default 0) along half a cosine over `T_max` epochs.
///
/// Like torch, `step` follows the chainable recurrence
/// `lr_t = eta_min + (lr_{t−1} − eta_min)·(1 + cos(πt/T_max)) / (1 + cos(π(t−1)/T_max))`,
/// so past `T_max` the learning rate rises again (period `2·T_max`), and a learning rate changed
/// by someone else is annealed from its new value.
///
/// ```
/// use wgpu_optim::schedule::{CosineAnnealingLR, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let mut schedule = CosineAnnealingLR::new(&mut opt, 2, 0.0)?;
/// schedule.step(&mut opt)?;
/// assert!((schedule.last_lr()[0] - 0.5).abs() < 1e-15);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct CosineAnnealingLR(Leaf<CosineLaw>);
leaf_scheduler!(CosineAnnealingLR);

impl CosineAnnealingLR {
    /// Errors unless `t_max >= 1` and `eta_min` is finite and `>= 0`.
    pub fn new(opt: &mut dyn LearningRates, t_max: u64, eta_min: f64) -> Result<Self> {
        Ok(CosineAnnealingLR(Leaf::new(opt, CosineLaw { t_max, eta_min })?))
    }
}

// ---- CosineAnnealingWarmRestarts ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WarmRestartsLaw {
    #[serde(rename = "T_0")]
    t_0: u64,
    /// The length of the current cycle.
    #[serde(rename = "T_i")]
    t_i: u64,
    #[serde(rename = "T_mult")]
    t_mult: u64,
    eta_min: f64,
    /// Epochs since the last restart; -1 before the constructor's step, as in torch.
    #[serde(rename = "T_cur")]
    t_cur: i64,
}

impl Law for WarmRestartsLaw {
    const NAME: &'static str = "CosineAnnealingWarmRestarts";

    fn validate(&self, _groups: usize) -> Result<()> {
        let check = Check(Self::NAME);
        check.require(self.t_0 >= 1, "T_0", self.t_0 as f64, "must be a positive integer")?;
        check.require(self.t_mult >= 1, "T_mult", self.t_mult as f64, "must be an integer >= 1")?;
        check.require(self.t_i >= 1, "T_i", self.t_i as f64, "must be a positive integer")?;
        super::leaf::check_loaded_steps(Self::NAME, "T_cur", self.t_cur.into())?;
        check.non_negative("eta_min", self.eta_min)
    }

    /// torch overrides `step` here: it never counts `_step_count`, and restarts the cycle when
    /// `T_cur` reaches `T_i`.
    fn advance(&mut self, epochs: &mut Epochs) -> Result<()> {
        if epochs.last_epoch < 0 {
            self.t_i = self.t_0;
            self.t_cur = 0;
            epochs.last_epoch = 0;
            return Ok(());
        }
        epochs.last_epoch += 1;
        self.t_cur += 1;
        if self.t_cur >= self.t_i as i64 {
            self.t_cur %= self.t_i as i64;
            self.t_i = self.t_i.checked_mul(self.t_mult).ok_or_else(|| {
                Error::Config(format!("{}: the cycle length T_i · T_mult overflows", Self::NAME))
            })?;
        }
        Ok(())
    }

    fn get_lr(&self, epochs: &Epochs, _is_initial: bool, _lrs: &[f64]) -> Result<Update> {
        let cosine = (PI * self.t_cur as f64 / self.t_i as f64).cos();
        Ok(epochs
            .base_lrs
            .iter()
            .map(|base| self.eta_min + (base - self.eta_min) * (1.0 + cosine) / 2.0)
            .collect::<Vec<_>>()
            .into())
    }

    serde_law_state!();
}

/// `torch.optim.lr_scheduler.CosineAnnealingWarmRestarts` (SGDR): cosine annealing from each
/// initial learning rate to `eta_min` over `T_0` epochs, then restarts, each cycle `T_mult`
/// times longer than the one before (torch's defaults: `T_mult = 1`, `eta_min = 0`).
///
/// ```
/// use wgpu_optim::schedule::{CosineAnnealingWarmRestarts, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let mut schedule = CosineAnnealingWarmRestarts::new(&mut opt, 2, 2, 0.0)?;
/// schedule.step(&mut opt)?;
/// schedule.step(&mut opt)?; // restart: a cycle of 4 epochs begins
/// assert_eq!(schedule.last_lr(), [1.0]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct CosineAnnealingWarmRestarts(Leaf<WarmRestartsLaw>);
leaf_scheduler!(CosineAnnealingWarmRestarts);

impl CosineAnnealingWarmRestarts {
    /// Errors unless `t_0 >= 1`, `t_mult >= 1` and `eta_min` is finite and `>= 0`.
    pub fn new(opt: &mut dyn LearningRates, t_0: u64, t_mult: u64, eta_min: f64) -> Result<Self> {
        let law = WarmRestartsLaw { t_0, t_i: t_0, t_mult, eta_min, t_cur: -1 };
        Ok(CosineAnnealingWarmRestarts(Leaf::new(opt, law)?))
    }
}

// ---- configuration ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CosineArgs {
    #[serde(rename = "T_max")]
    t_max: u64,
    #[serde(default)]
    eta_min: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmRestartsArgs {
    #[serde(rename = "T_0")]
    t_0: u64,
    #[serde(rename = "T_mult", default = "one")]
    t_mult: u64,
    #[serde(default)]
    eta_min: f64,
}

fn one() -> u64 {
    1
}

pub(crate) fn from_config(name: &str, mut args: Map<String, Value>, opt: &mut dyn LearningRates) -> Result<Box<dyn Scheduler>> {
    take_last_epoch(name, &mut args)?;
    Ok(match name {
        "CosineAnnealingLR" => {
            let a: CosineArgs = parse_args(name, args)?;
            Box::new(CosineAnnealingLR::new(opt, a.t_max, a.eta_min)?)
        }
        "CosineAnnealingWarmRestarts" => {
            let a: WarmRestartsArgs = parse_args(name, args)?;
            Box::new(CosineAnnealingWarmRestarts::new(opt, a.t_0, a.t_mult, a.eta_min)?)
        }
        _ => unreachable!("schedule::single_from_config routes only these names here"),
    })
}
