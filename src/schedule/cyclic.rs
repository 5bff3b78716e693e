//! `CyclicLR`, which also cycles momentum; the momentum set-up it shares with `OneCycleLR`
//! (`one_cycle.rs`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lambda::EpochFn;
use super::leaf::{leaf_scheduler, Epochs, Law, Leaf, Update};
use super::{parse_args, parse_state, state_fields, take_last_epoch, LearningRates, PerGroup, Scheduler};
use crate::error::{Error, Result};
use crate::rules::Check;

/// torch's `cycle_momentum` set-up, shared by both schedulers: checks that the optimizer has a
/// momentum to cycle (returns torch's `use_beta1`) and sets it to `max_momentum`, as torch's
/// constructor does, after trying `base_momentum` so that a bound the optimizer rejects fails
/// here rather than mid-cycle.
pub(super) fn start_momentum_cycle(
    scheduler: &str,
    opt: &mut dyn LearningRates,
    base_momentums: &[f64],
    max_momentums: &[f64],
) -> Result<bool> {
    let Some(momentum) = opt.cycled_momentum(0) else {
        return Err(Error::Config(format!(
            "{scheduler}: the optimizer must support momentum or beta1 with the cycle_momentum option \
             enabled (Adagrad and Adadelta have neither); pass cycle_momentum = false"
        )));
    };
    for (group, (&base, &max)) in base_momentums.iter().zip(max_momentums).enumerate() {
        opt.set_cycled_momentum(group, base)?;
        opt.set_cycled_momentum(group, max)?;
    }
    Ok(momentum.key == "betas[0]")
}

pub(super) fn check_finite_non_negative(check: &Check, name: &'static str, values: &[f64]) -> Result<()> {
    values.iter().try_for_each(|&v| check.non_negative(name, v))
}

pub(super) fn check_finite(check: &Check, name: &'static str, values: &[f64]) -> Result<()> {
    values.iter().try_for_each(|&v| check.finite(name, v))
}

fn check_len(scheduler: &str, name: &str, values: &[f64], groups: usize) -> Result<()> {
    if values.len() == groups {
        Ok(())
    } else {
        Err(Error::Config(format!("{scheduler}: {name} holds {} values for {groups} parameter groups", values.len())))
    }
}

/// `CyclicLR`'s amplitude policy (torch's `mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CyclicMode {
    /// A constant amplitude.
    #[default]
    #[serde(rename = "triangular")]
    Triangular,
    /// The amplitude halves every cycle.
    #[serde(rename = "triangular2")]
    Triangular2,
    /// The amplitude is scaled by `gamma^iteration`.
    #[serde(rename = "exp_range")]
    ExpRange,
}

/// What `CyclicLR`'s scale function is evaluated on (torch's `scale_mode`); only a custom
/// scale function uses it, the built-in modes have their own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScaleMode {
    /// The cycle number (from 1).
    #[default]
    #[serde(rename = "cycle")]
    Cycle,
    /// The iteration (`last_epoch`).
    #[serde(rename = "iterations")]
    Iterations,
}

/// `CyclicLR`'s arguments, with torch's names and defaults; `base_lr` and `max_lr` have none.
/// `CyclicLRArgs::new(base_lr, max_lr)` gives the defaults for the rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CyclicLRArgs {
    /// The lower bound of each group's learning rate, one value or one per group.
    pub base_lr: PerGroup,
    /// The upper bound, one value or one per group.
    pub max_lr: PerGroup,
    /// Iterations in the increasing half of a cycle (default 2000).
    #[serde(default = "default_step_size_up")]
    pub step_size_up: u64,
    /// Iterations in the decreasing half (default: `step_size_up`).
    #[serde(default)]
    pub step_size_down: Option<u64>,
    /// The amplitude policy (default `triangular`).
    #[serde(default)]
    pub mode: CyclicMode,
    /// `exp_range`'s base (default 1.0).
    #[serde(default = "one")]
    pub gamma: f64,
    /// What the scale function is evaluated on (default `cycle`); only a custom scale function
    /// reads it.
    #[serde(default)]
    pub scale_mode: ScaleMode,
    /// Cycle `momentum` or `betas[0]` inversely to the learning rate (default true).
    #[serde(default = "yes")]
    pub cycle_momentum: bool,
    /// The momentum at the peak learning rate (default 0.8).
    #[serde(default = "default_cyclic_base_momentum")]
    pub base_momentum: PerGroup,
    /// The momentum at `base_lr` (default 0.9).
    #[serde(default = "default_cyclic_max_momentum")]
    pub max_momentum: PerGroup,
}

impl CyclicLRArgs {
    /// The given bounds and torch's defaults for every other argument.
    pub fn new(base_lr: impl Into<PerGroup>, max_lr: impl Into<PerGroup>) -> Self {
        CyclicLRArgs {
            base_lr: base_lr.into(),
            max_lr: max_lr.into(),
            step_size_up: default_step_size_up(),
            step_size_down: None,
            mode: CyclicMode::default(),
            gamma: 1.0,
            scale_mode: ScaleMode::default(),
            cycle_momentum: true,
            base_momentum: default_cyclic_base_momentum(),
            max_momentum: default_cyclic_max_momentum(),
        }
    }
}

fn default_step_size_up() -> u64 {
    2000
}

fn one() -> f64 {
    1.0
}

pub(super) fn yes() -> bool {
    true
}

fn default_cyclic_base_momentum() -> PerGroup {
    PerGroup::All(0.8)
}

fn default_cyclic_max_momentum() -> PerGroup {
    PerGroup::All(0.9)
}

/// The part of `CyclicLR` that torch's `state_dict` holds, under its names.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CyclicState {
    max_lrs: Vec<f64>,
    total_size: f64,
    step_ratio: f64,
    mode: CyclicMode,
    gamma: f64,
    scale_mode: ScaleMode,
    cycle_momentum: bool,
    /// These three exist only with `cycle_momentum`, as in torch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    use_beta1: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_momentums: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_momentums: Option<Vec<f64>>,
}

#[derive(Clone)]
pub(crate) struct CyclicLaw {
    state: CyclicState,
    /// The `base_lr` argument, which replaces `base_lrs` after the constructor's step.
    base_lrs: Vec<f64>,
    scale_fn: Option<EpochFn>,
}

impl CyclicLaw {
    fn new(args: CyclicLRArgs, scale_fn: Option<EpochFn>, groups: usize) -> Result<Self> {
        const NAME: &str = "CyclicLR";
        let step_size_up = args.step_size_up as f64;
        let step_size_down = args.step_size_down.map_or(step_size_up, |down| down as f64);
        let total_size = step_size_up + step_size_down;
        // torch fixes the scale mode of its built-in modes and keeps the given one for a custom function.
        let scale_mode = match (&scale_fn, args.mode) {
            (Some(_), _) => args.scale_mode,
            (None, CyclicMode::Triangular | CyclicMode::Triangular2) => ScaleMode::Cycle,
            (None, CyclicMode::ExpRange) => ScaleMode::Iterations,
        };
        let momenta = args.cycle_momentum.then_some(());
        let law = CyclicLaw {
            state: CyclicState {
                max_lrs: args.max_lr.resolve(NAME, "max_lr", groups)?,
                total_size,
                step_ratio: step_size_up / total_size,
                mode: args.mode,
                gamma: args.gamma,
                scale_mode,
                cycle_momentum: args.cycle_momentum,
                use_beta1: momenta.map(|()| false),
                base_momentums: momenta.map(|()| args.base_momentum.resolve(NAME, "base_momentum", groups)).transpose()?,
                max_momentums: momenta.map(|()| args.max_momentum.resolve(NAME, "max_momentum", groups)).transpose()?,
            },
            base_lrs: args.base_lr.resolve(NAME, "base_lr", groups)?,
            scale_fn,
        };
        // torch divides by step_size_up through step_ratio (ZeroDivisionError at construction).
        Check(NAME).require(args.step_size_up >= 1, "step_size_up", step_size_up, "must be >= 1")?;
        Ok(law)
    }

    /// torch's `scale_fn`.
    fn scale(&self, x: u64) -> f64 {
        match (&self.scale_fn, self.state.mode) {
            (Some(custom), _) => custom(x),
            (None, CyclicMode::Triangular) => 1.0,
            (None, CyclicMode::Triangular2) => 1.0 / 2.0f64.powf((x as i64 - 1) as f64),
            (None, CyclicMode::ExpRange) => self.state.gamma.powf(x as f64),
        }
    }
}

impl Law for CyclicLaw {
    const NAME: &'static str = "CyclicLR";

    fn validate(&self, groups: usize) -> Result<()> {
        let check = Check(Self::NAME);
        let s = &self.state;
        check_len(Self::NAME, "max_lrs", &s.max_lrs, groups)?;
        check_finite_non_negative(&check, "max_lr", &s.max_lrs)?;
        check_finite_non_negative(&check, "base_lr", &self.base_lrs)?;
        check.require(s.total_size.is_finite() && s.total_size > 0.0, "total_size", s.total_size, "must be > 0")?;
        check.require(s.step_ratio > 0.0 && s.step_ratio <= 1.0, "step_ratio", s.step_ratio, "must be in (0, 1]")?;
        check.non_negative("gamma", s.gamma)?;
        match (s.cycle_momentum, s.use_beta1, &s.base_momentums, &s.max_momentums) {
            (false, None, None, None) => Ok(()),
            (true, Some(_), Some(base), Some(max)) => {
                check_len(Self::NAME, "base_momentums", base, groups)?;
                check_len(Self::NAME, "max_momentums", max, groups)?;
                check_finite(&check, "base_momentum", base)?;
                check_finite(&check, "max_momentum", max)
            }
            _ => Err(Error::Config(format!(
                "{}: use_beta1, base_momentums and max_momentums are present exactly when cycle_momentum is true",
                Self::NAME
            ))),
        }
    }

    fn prepare(&mut self, opt: &mut dyn LearningRates, inherited: Option<&[f64]>) -> Result<Vec<f64>> {
        for (group, &lr) in self.base_lrs.iter().enumerate() {
            opt.set_lr(group, lr)?;
        }
        if let (Some(base), Some(max)) = (&self.state.base_momentums, &self.state.max_momentums) {
            self.state.use_beta1 = Some(start_momentum_cycle(Self::NAME, opt, base, max)?);
        }
        Ok(inherited.map_or_else(|| self.base_lrs.clone(), <[f64]>::to_vec))
    }

    fn finish_construction(&self, epochs: &mut Epochs) {
        epochs.base_lrs = self.base_lrs.clone();
    }

    fn get_lr(&self, epochs: &Epochs, _is_initial: bool, _lrs: &[f64]) -> Result<Update> {
        let s = &self.state;
        let iteration = epochs.last_epoch as f64;
        let cycle = (1.0 + iteration / s.total_size).floor();
        let x = 1.0 + iteration / s.total_size - cycle;
        let scale_factor = if x <= s.step_ratio { x / s.step_ratio } else { (x - 1.0) / (s.step_ratio - 1.0) };
        let scale_at = match s.scale_mode {
            ScaleMode::Cycle => cycle as u64,
            ScaleMode::Iterations => epochs.epoch(),
        };
        let lrs = epochs
            .base_lrs
            .iter()
            .zip(&s.max_lrs)
            .map(|(base, max)| base + (max - base) * scale_factor * self.scale(scale_at))
            .collect();
        let momenta = match (&s.base_momentums, &s.max_momentums) {
            (Some(base), Some(max)) => Some(
                base.iter().zip(max).map(|(base, max)| max - (max - base) * scale_factor * self.scale(scale_at)).collect(),
            ),
            _ => None,
        };
        Ok(Update { lrs, momenta })
    }

    fn save(&self) -> Map<String, Value> {
        let mut state = state_fields(&self.state);
        state.insert("_scale_fn_custom".into(), Value::Null);
        state
    }

    fn load(&mut self, state: &Map<String, Value>) -> Result<()> {
        if state.get("_scale_fn_custom") != Some(&Value::Null) {
            return Err(Error::Config(format!(
                "{} state: _scale_fn_custom must be null (functions are not saved)",
                Self::NAME
            )));
        }
        let mut loaded: CyclicState = parse_state(Self::NAME, state)?;
        // torch's load_state_dict re-runs _init_scale_fn, which fixes a built-in mode's scale mode.
        if self.scale_fn.is_none() {
            loaded.scale_mode = if loaded.mode == CyclicMode::ExpRange { ScaleMode::Iterations } else { ScaleMode::Cycle };
        }
        self.state = loaded;
        Ok(())
    }
}

/// `torch.optim.lr_scheduler.CyclicLR`: cycles each learning rate between `base_lr` and
/// `max_lr` (Smith's cyclical learning rates), stepped after every batch, and with
/// `cycle_momentum` (torch's default) cycles `momentum` or `betas[0]` inversely between
/// `max_momentum` and `base_momentum` through [`LearningRates::set_cycled_momentum`].
///
/// ```
/// use wgpu_optim::schedule::{CyclicLR, CyclicLRArgs, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 0.1, momentum: 0.9, ..Sgd::default() }, [w])])?;
/// let args = CyclicLRArgs { step_size_up: 2, ..CyclicLRArgs::new(0.01, 0.05) };
/// let mut schedule = CyclicLR::new(&mut opt, args)?;
/// schedule.step(&mut opt)?;
/// schedule.step(&mut opt)?; // the peak: max_lr, base_momentum
/// assert_eq!(schedule.last_lr(), [0.05]);
/// assert_eq!(opt.rule(0).cycled_momentum().unwrap().value, 0.8);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct CyclicLR(Leaf<CyclicLaw>);
leaf_scheduler!(CyclicLR);

impl CyclicLR {
    /// Errors: per-group lists of the wrong length, `step_size_up = 0`, negative or non-finite
    /// bounds, and with `cycle_momentum` an optimizer without momentum or betas, or whose
    /// momentum cannot take the bounds (see [`LearningRates::set_cycled_momentum`]).
    pub fn new(opt: &mut dyn LearningRates, args: CyclicLRArgs) -> Result<Self> {
        let law = CyclicLaw::new(args, None, opt.group_count())?;
        Ok(CyclicLR(Leaf::new(opt, law)?))
    }

    /// With a custom scale function (torch's `scale_fn`), evaluated on the cycle number or the
    /// iteration as `args.scale_mode` says; `args.mode` is then ignored.
    pub fn with_scale_fn(
        opt: &mut dyn LearningRates,
        args: CyclicLRArgs,
        scale_fn: impl Fn(u64) -> f64 + Send + Sync + 'static,
    ) -> Result<Self> {
        let law = CyclicLaw::new(args, Some(Arc::new(scale_fn)), opt.group_count())?;
        Ok(CyclicLR(Leaf::new(opt, law)?))
    }
}

pub(crate) fn from_config(name: &str, mut args: Map<String, Value>, opt: &mut dyn LearningRates) -> Result<Box<dyn Scheduler>> {
    take_last_epoch(name, &mut args)?;
    match args.remove("scale_fn") {
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(Error::Config(
                "CyclicLR: scale_fn is a function, which a configuration cannot hold; use mode, or \
                 CyclicLR::with_scale_fn in code"
                    .into(),
            ))
        }
    }
    let args: CyclicLRArgs = parse_args(name, args)?;
    Ok(Box::new(CyclicLR::new(opt, args)?))
}
