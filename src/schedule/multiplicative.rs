//! Schedules that scale the current learning rate by a factor each epoch (torch's chainable
//! forms): `ConstantLR`, `LinearLR`, `StepLR`, `MultiStepLR`, `ExponentialLR`, `PolynomialLR`,
//! and `InverseTimeLR` (not in torch).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::leaf::{leaf_scheduler, serde_law_state, Epochs, Law, Leaf, Update};
use super::{parse_args, take_last_epoch, LearningRates, Scheduler};
use crate::error::{Error, Result};
use crate::rules::Check;

fn scaled(lrs: &[f64], factor: f64) -> Update {
    lrs.iter().map(|lr| lr * factor).collect::<Vec<_>>().into()
}

fn unchanged(lrs: &[f64]) -> Update {
    lrs.to_vec().into()
}

/// torch divides by `total_iters` in these closed forms (a `ZeroDivisionError` there).
fn zero_total_iters(scheduler: &str) -> Error {
    Error::Config(format!(
        "{scheduler} with total_iters = 0 cannot be restarted by SequentialLR at a milestone: its closed \
         form divides by total_iters (torch raises ZeroDivisionError)"
    ))
}

// ---- ConstantLR ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ConstantLaw {
    factor: f64,
    total_iters: u64,
}

impl Law for ConstantLaw {
    const NAME: &'static str = "ConstantLR";

    fn validate(&self, _groups: usize) -> Result<()> {
        // torch accepts 0 but then divides by it at total_iters.
        Check(Self::NAME).require(
            self.factor > 0.0 && self.factor <= 1.0,
            "factor",
            self.factor,
            "must be in (0, 1] (torch accepts 0, then divides by it at total_iters)",
        )
    }

    fn get_lr(&self, epochs: &Epochs, _is_initial: bool, lrs: &[f64]) -> Result<Update> {
        Ok(if epochs.last_epoch == 0 {
            scaled(lrs, self.factor)
        } else if epochs.epoch() != self.total_iters {
            unchanged(lrs)
        } else {
            scaled(lrs, 1.0 / self.factor)
        })
    }

    fn closed_form(&self, epochs: &Epochs) -> Option<Result<Vec<f64>>> {
        // torch: factor + (last_epoch >= total_iters) * (1 - factor)
        let restored = if epochs.epoch() >= self.total_iters { 1.0 - self.factor } else { 0.0 };
        Some(Ok(epochs.base_lrs.iter().map(|base| base * (self.factor + restored)).collect()))
    }

    serde_law_state!();
}

/// `torch.optim.lr_scheduler.ConstantLR`: multiplies the learning rates by `factor` until epoch
/// `total_iters`, then restores them (torch's defaults: `factor = 1/3`, `total_iters = 5`).
///
/// ```
/// use wgpu_optim::schedule::{ConstantLR, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 0.1, ..Sgd::default() }, [w])])?;
/// let mut schedule = ConstantLR::new(&mut opt, 0.5, 2)?; // lr 0.1 → 0.05 at once
/// assert_eq!(schedule.last_lr(), [0.05]);
/// schedule.step(&mut opt)?;
/// schedule.step(&mut opt)?;
/// assert_eq!(schedule.last_lr(), [0.1]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct ConstantLR(Leaf<ConstantLaw>);
leaf_scheduler!(ConstantLR);

impl ConstantLR {
    /// Errors unless `0 < factor <= 1`.
    pub fn new(opt: &mut dyn LearningRates, factor: f64, total_iters: u64) -> Result<Self> {
        Ok(ConstantLR(Leaf::new(opt, ConstantLaw { factor, total_iters })?))
    }
}

// ---- LinearLR ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LinearLaw {
    start_factor: f64,
    end_factor: f64,
    total_iters: u64,
}

impl Law for LinearLaw {
    const NAME: &'static str = "LinearLR";

    fn validate(&self, _groups: usize) -> Result<()> {
        let check = Check(Self::NAME);
        check.require(
            self.start_factor > 0.0 && self.start_factor <= 1.0,
            "start_factor",
            self.start_factor,
            "must be in (0, 1]",
        )?;
        check.unit_interval_closed("end_factor", self.end_factor)
    }

    fn get_lr(&self, epochs: &Epochs, is_initial: bool, lrs: &[f64]) -> Result<Update> {
        let epoch = epochs.epoch();
        if epoch == 0 {
            return Ok(scaled(lrs, self.start_factor));
        }
        if is_initial || epoch > self.total_iters {
            return Ok(unchanged(lrs));
        }
        let slope = self.end_factor - self.start_factor;
        let denominator = self.total_iters as f64 * self.start_factor + (epochs.last_epoch - 1) as f64 * slope;
        Ok(scaled(lrs, 1.0 + slope / denominator))
    }

    fn closed_form(&self, epochs: &Epochs) -> Option<Result<Vec<f64>>> {
        if self.total_iters == 0 {
            return Some(Err(zero_total_iters(Self::NAME)));
        }
        let progress = (self.end_factor - self.start_factor) * self.total_iters.min(epochs.epoch()) as f64
            / self.total_iters as f64;
        Some(Ok(epochs.base_lrs.iter().map(|base| base * (self.start_factor + progress)).collect()))
    }

    serde_law_state!();
}

/// `torch.optim.lr_scheduler.LinearLR`: scales the learning rates by a factor going linearly
/// from `start_factor` to `end_factor` over `total_iters` epochs (torch's defaults: 1/3, 1.0, 5),
/// the usual warm-up.
///
/// ```
/// use wgpu_optim::schedule::{LinearLR, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let mut schedule = LinearLR::new(&mut opt, 0.25, 1.0, 3)?;
/// assert_eq!(schedule.last_lr(), [0.25]);
/// schedule.step(&mut opt)?;
/// assert_eq!(schedule.last_lr(), [0.5]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct LinearLR(Leaf<LinearLaw>);
leaf_scheduler!(LinearLR);

impl LinearLR {
    /// Errors unless `0 < start_factor <= 1` and `0 <= end_factor <= 1`, as torch.
    pub fn new(opt: &mut dyn LearningRates, start_factor: f64, end_factor: f64, total_iters: u64) -> Result<Self> {
        Ok(LinearLR(Leaf::new(opt, LinearLaw { start_factor, end_factor, total_iters })?))
    }
}

// ---- StepLR ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StepLaw {
    step_size: u64,
    gamma: f64,
}

impl Law for StepLaw {
    const NAME: &'static str = "StepLR";

    fn validate(&self, _groups: usize) -> Result<()> {
        let check = Check(Self::NAME);
        check.require(self.step_size >= 1, "step_size", self.step_size as f64, "must be >= 1")?;
        check.non_negative("gamma", self.gamma)
    }

    fn get_lr(&self, epochs: &Epochs, _is_initial: bool, lrs: &[f64]) -> Result<Update> {
        let epoch = epochs.epoch();
        Ok(if epoch == 0 || !epoch.is_multiple_of(self.step_size) { unchanged(lrs) } else { scaled(lrs, self.gamma) })
    }

    fn closed_form(&self, epochs: &Epochs) -> Option<Result<Vec<f64>>> {
        let decays = (epochs.epoch() / self.step_size) as f64;
        Some(Ok(epochs.base_lrs.iter().map(|base| base * self.gamma.powf(decays)).collect()))
    }

    serde_law_state!();
}

/// `torch.optim.lr_scheduler.StepLR`: multiplies the learning rates by `gamma` (torch's
/// default 0.1) every `step_size` epochs.
///
/// ```
/// use wgpu_optim::schedule::{Scheduler, StepLR};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 0.1, ..Sgd::default() }, [w])])?;
/// let mut schedule = StepLR::new(&mut opt, 2, 0.5)?;
/// schedule.step(&mut opt)?;
/// assert_eq!(schedule.last_lr(), [0.1]);
/// schedule.step(&mut opt)?;
/// assert_eq!(schedule.last_lr(), [0.05]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct StepLR(Leaf<StepLaw>);
leaf_scheduler!(StepLR);

impl StepLR {
    /// Errors unless `step_size >= 1` and `gamma` is finite and `>= 0`.
    pub fn new(opt: &mut dyn LearningRates, step_size: u64, gamma: f64) -> Result<Self> {
        Ok(StepLR(Leaf::new(opt, StepLaw { step_size, gamma })?))
    }
}

// ---- MultiStepLR ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MultiStepLaw {
    /// torch's `Counter`: milestone → how many times it was given (JSON keys are strings).
    milestones: BTreeMap<u64, u64>,
    gamma: f64,
}

impl Law for MultiStepLaw {
    const NAME: &'static str = "MultiStepLR";

    fn validate(&self, _groups: usize) -> Result<()> {
        Check(Self::NAME).non_negative("gamma", self.gamma)
    }

    fn get_lr(&self, epochs: &Epochs, _is_initial: bool, lrs: &[f64]) -> Result<Update> {
        Ok(match self.milestones.get(&epochs.epoch()) {
            Some(&count) => scaled(lrs, self.gamma.powf(count as f64)),
            None => unchanged(lrs),
        })
    }

    fn closed_form(&self, epochs: &Epochs) -> Option<Result<Vec<f64>>> {
        let passed: u64 = self.milestones.range(..=epochs.epoch()).map(|(_, count)| count).sum();
        Some(Ok(epochs.base_lrs.iter().map(|base| base * self.gamma.powf(passed as f64)).collect()))
    }

    serde_law_state!();
}

/// `torch.optim.lr_scheduler.MultiStepLR`: multiplies the learning rates by `gamma` (torch's
/// default 0.1) at each milestone epoch; a milestone given twice multiplies by `gamma²`.
///
/// ```
/// use wgpu_optim::schedule::{MultiStepLR, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let mut schedule = MultiStepLR::new(&mut opt, [1, 3], 0.5)?;
/// schedule.step(&mut opt)?;
/// assert_eq!(schedule.last_lr(), [0.5]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct MultiStepLR(Leaf<MultiStepLaw>);
leaf_scheduler!(MultiStepLR);

impl MultiStepLR {
    /// Errors unless `gamma` is finite and `>= 0`. The milestones' order does not matter.
    pub fn new(opt: &mut dyn LearningRates, milestones: impl IntoIterator<Item = u64>, gamma: f64) -> Result<Self> {
        let mut counts = BTreeMap::new();
        for milestone in milestones {
            *counts.entry(milestone).or_insert(0) += 1;
        }
        Ok(MultiStepLR(Leaf::new(opt, MultiStepLaw { milestones: counts, gamma })?))
    }
}

// ---- ExponentialLR ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ExponentialLaw {
    gamma: f64,
}

impl Law for ExponentialLaw {
    const NAME: &'static str = "ExponentialLR";

    fn validate(&self, _groups: usize) -> Result<()> {
        Check(Self::NAME).non_negative("gamma", self.gamma)
    }

    fn get_lr(&self, _epochs: &Epochs, is_initial: bool, lrs: &[f64]) -> Result<Update> {
        Ok(if is_initial { unchanged(lrs) } else { scaled(lrs, self.gamma) })
    }

    fn closed_form(&self, epochs: &Epochs) -> Option<Result<Vec<f64>>> {
        let power = epochs.epoch() as f64;
        Some(Ok(epochs.base_lrs.iter().map(|base| base * self.gamma.powf(power)).collect()))
    }

    serde_law_state!();
}

/// `torch.optim.lr_scheduler.ExponentialLR`: multiplies the learning rates by `gamma` every
/// epoch.
///
/// ```
/// use wgpu_optim::schedule::{ExponentialLR, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let mut schedule = ExponentialLR::new(&mut opt, 0.5)?;
/// schedule.step(&mut opt)?;
/// schedule.step(&mut opt)?;
/// assert_eq!(schedule.last_lr(), [0.25]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct ExponentialLR(Leaf<ExponentialLaw>);
leaf_scheduler!(ExponentialLR);

impl ExponentialLR {
    /// Errors unless `gamma` is finite and `>= 0`.
    pub fn new(opt: &mut dyn LearningRates, gamma: f64) -> Result<Self> {
        Ok(ExponentialLR(Leaf::new(opt, ExponentialLaw { gamma })?))
    }
}

// ---- PolynomialLR ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PolynomialLaw {
    total_iters: u64,
    power: f64,
}

impl Law for PolynomialLaw {
    const NAME: &'static str = "PolynomialLR";

    fn validate(&self, _groups: usize) -> Result<()> {
        // A negative power would raise 0 to it at total_iters (torch: ZeroDivisionError).
        Check(Self::NAME).non_negative("power", self.power)
    }

    fn get_lr(&self, epochs: &Epochs, is_initial: bool, lrs: &[f64]) -> Result<Update> {
        let epoch = epochs.epoch();
        if is_initial || epoch > self.total_iters {
            return Ok(unchanged(lrs));
        }
        let total = self.total_iters as f64;
        let decay = ((1.0 - epoch as f64 / total) / (1.0 - (epochs.last_epoch - 1) as f64 / total)).powf(self.power);
        Ok(scaled(lrs, decay))
    }

    fn closed_form(&self, epochs: &Epochs) -> Option<Result<Vec<f64>>> {
        if self.total_iters == 0 {
            return Some(Err(zero_total_iters(Self::NAME)));
        }
        let remaining = 1.0 - self.total_iters.min(epochs.epoch()) as f64 / self.total_iters as f64;
        Some(Ok(epochs.base_lrs.iter().map(|base| base * remaining.powf(self.power)).collect()))
    }

    serde_law_state!();
}

/// `torch.optim.lr_scheduler.PolynomialLR`: decays the learning rates as
/// `base_lr · (1 − epoch / total_iters)^power` until `total_iters` (torch's defaults: 5, 1.0),
/// computed as torch's ratio of consecutive factors.
///
/// ```
/// use wgpu_optim::schedule::{PolynomialLR, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let mut schedule = PolynomialLR::new(&mut opt, 2, 2.0)?;
/// schedule.step(&mut opt)?;
/// assert_eq!(schedule.last_lr(), [0.25]);
/// schedule.step(&mut opt)?;
/// assert_eq!(schedule.last_lr(), [0.0]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct PolynomialLR(Leaf<PolynomialLaw>);
leaf_scheduler!(PolynomialLR);

impl PolynomialLR {
    /// Errors unless `power` is finite and `>= 0`.
    pub fn new(opt: &mut dyn LearningRates, total_iters: u64, power: f64) -> Result<Self> {
        Ok(PolynomialLR(Leaf::new(opt, PolynomialLaw { total_iters, power })?))
    }
}

// ---- InverseTimeLR ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct InverseTimeLaw {
    decay_rate: f64,
}

impl Law for InverseTimeLaw {
    const NAME: &'static str = "InverseTimeLR";

    fn validate(&self, _groups: usize) -> Result<()> {
        Check(Self::NAME).non_negative("decay_rate", self.decay_rate)
    }

    fn get_lr(&self, epochs: &Epochs, is_initial: bool, lrs: &[f64]) -> Result<Update> {
        if is_initial {
            return Ok(unchanged(lrs));
        }
        // Chainable like torch's schedulers: lr_t = lr_{t-1} · (1 + k(t−1)) / (1 + kt).
        let epoch = epochs.epoch();
        let previous = 1.0 + self.decay_rate * (epochs.last_epoch - 1) as f64;
        let current = 1.0 + self.decay_rate * epoch as f64;
        Ok(lrs.iter().map(|lr| lr * previous / current).collect::<Vec<_>>().into())
    }

    fn closed_form(&self, epochs: &Epochs) -> Option<Result<Vec<f64>>> {
        let current = 1.0 + self.decay_rate * epochs.epoch() as f64;
        Some(Ok(epochs.base_lrs.iter().map(|base| base / current).collect()))
    }

    serde_law_state!();
}

/// The classic 1/t decay, `lr = lr0 / (1 + decay_rate · epoch)`. **Not in torch**; it follows
/// torch's conventions: epoch 0 applied at construction, chainable form
/// `lr_t = lr_{t−1} · (1 + k(t−1)) / (1 + kt)` in `step` (so it composes in
/// [`ChainedScheduler`](super::ChainedScheduler)), closed form at a `SequentialLR` milestone,
/// state `{decay_rate, base_lrs, last_epoch, _step_count, _last_lr}`; configuration
/// `{"name": "InverseTimeLR", "decay_rate": k, "last_epoch": -1}`.
///
/// ```
/// use wgpu_optim::schedule::{InverseTimeLR, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let mut schedule = InverseTimeLR::new(&mut opt, 0.5)?;
/// for _ in 0..4 {
///     schedule.step(&mut opt)?;
/// }
/// assert!((schedule.last_lr()[0] - 1.0 / 3.0).abs() < 1e-15);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct InverseTimeLR(Leaf<InverseTimeLaw>);
leaf_scheduler!(InverseTimeLR);

impl InverseTimeLR {
    /// Errors unless `decay_rate` is finite and `>= 0`.
    pub fn new(opt: &mut dyn LearningRates, decay_rate: f64) -> Result<Self> {
        Ok(InverseTimeLR(Leaf::new(opt, InverseTimeLaw { decay_rate })?))
    }
}

// ---- configuration ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConstantArgs {
    #[serde(default = "one_third")]
    factor: f64,
    #[serde(default = "five")]
    total_iters: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinearArgs {
    #[serde(default = "one_third")]
    start_factor: f64,
    #[serde(default = "one")]
    end_factor: f64,
    #[serde(default = "five")]
    total_iters: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepArgs {
    step_size: u64,
    #[serde(default = "one_tenth")]
    gamma: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MultiStepArgs {
    milestones: Vec<u64>,
    #[serde(default = "one_tenth")]
    gamma: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExponentialArgs {
    gamma: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolynomialArgs {
    #[serde(default = "five")]
    total_iters: u64,
    #[serde(default = "one")]
    power: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InverseTimeArgs {
    decay_rate: f64,
}

fn one_third() -> f64 {
    1.0 / 3.0
}

fn one() -> f64 {
    1.0
}

fn one_tenth() -> f64 {
    0.1
}

fn five() -> u64 {
    5
}

pub(crate) fn from_config(name: &str, mut args: Map<String, Value>, opt: &mut dyn LearningRates) -> Result<Box<dyn Scheduler>> {
    take_last_epoch(name, &mut args)?;
    Ok(match name {
        "ConstantLR" => {
            let a: ConstantArgs = parse_args(name, args)?;
            Box::new(ConstantLR::new(opt, a.factor, a.total_iters)?)
        }
        "LinearLR" => {
            let a: LinearArgs = parse_args(name, args)?;
            Box::new(LinearLR::new(opt, a.start_factor, a.end_factor, a.total_iters)?)
        }
        "StepLR" => {
            let a: StepArgs = parse_args(name, args)?;
            Box::new(StepLR::new(opt, a.step_size, a.gamma)?)
        }
        "MultiStepLR" => {
            let a: MultiStepArgs = parse_args(name, args)?;
            Box::new(MultiStepLR::new(opt, a.milestones, a.gamma)?)
        }
        "ExponentialLR" => {
            let a: ExponentialArgs = parse_args(name, args)?;
            Box::new(ExponentialLR::new(opt, a.gamma)?)
        }
        "PolynomialLR" => {
            let a: PolynomialArgs = parse_args(name, args)?;
            Box::new(PolynomialLR::new(opt, a.total_iters, a.power)?)
        }
        "InverseTimeLR" => {
            let a: InverseTimeArgs = parse_args(name, args)?;
            Box::new(InverseTimeLR::new(opt, a.decay_rate)?)
        }
        _ => unreachable!("schedule::single_from_config routes only these names here"),
    })
}
