//! Cyclical schedules, which also cycle momentum: `CyclicLR` and `OneCycleLR`.

use std::f64::consts::PI;
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
fn start_momentum_cycle(
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

fn check_finite_non_negative(check: &Check, name: &'static str, values: &[f64]) -> Result<()> {
    values.iter().try_for_each(|&v| check.non_negative(name, v))
}

fn check_finite(check: &Check, name: &'static str, values: &[f64]) -> Result<()> {
    values.iter().try_for_each(|&v| check.finite(name, v))
}

fn check_len(scheduler: &str, name: &str, values: &[f64], groups: usize) -> Result<()> {
    if values.len() == groups {
        Ok(())
    } else {
        Err(Error::Config(format!("{scheduler}: {name} holds {} values for {groups} parameter groups", values.len())))
    }
}

// ---- CyclicLR ----

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
    #[serde(default)]
    pub mode: CyclicMode,
    /// `exp_range`'s base (default 1.0).
    #[serde(default = "one")]
    pub gamma: f64,
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

fn yes() -> bool {
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

// ---- OneCycleLR ----

/// `OneCycleLR`'s annealing (torch's `anneal_strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnnealStrategy {
    #[default]
    #[serde(rename = "cos")]
    Cos,
    #[serde(rename = "linear")]
    Linear,
}

impl AnnealStrategy {
    /// torch's `_annealing_cos` and `_annealing_linear`, from `start` to `end` as `pct` goes 0 → 1.
    fn anneal(self, start: f64, end: f64, pct: f64) -> f64 {
        match self {
            AnnealStrategy::Cos => {
                let cos_out = (PI * pct).cos() + 1.0;
                end + (start - end) / 2.0 * cos_out
            }
            AnnealStrategy::Linear => (end - start) * pct + start,
        }
    }
}

/// `OneCycleLR`'s arguments, with torch's names and defaults; `max_lr` has none, and either
/// `total_steps` or both `epochs` and `steps_per_epoch` must be given.
/// `OneCycleLRArgs::new(max_lr, total_steps)` gives the defaults for the rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneCycleLRArgs {
    /// The peak learning rate, one value or one per group.
    pub max_lr: PerGroup,
    #[serde(default)]
    pub total_steps: Option<u64>,
    #[serde(default)]
    pub epochs: Option<u64>,
    #[serde(default)]
    pub steps_per_epoch: Option<u64>,
    /// The fraction of the cycle spent increasing the learning rate (default 0.3).
    #[serde(default = "default_pct_start")]
    pub pct_start: f64,
    #[serde(default)]
    pub anneal_strategy: AnnealStrategy,
    /// Cycle `momentum` or `betas[0]` inversely to the learning rate (default true).
    #[serde(default = "yes")]
    pub cycle_momentum: bool,
    /// The momentum at the peak learning rate (default 0.85).
    #[serde(default = "default_one_cycle_base_momentum")]
    pub base_momentum: PerGroup,
    /// The momentum at the start and end (default 0.95).
    #[serde(default = "default_one_cycle_max_momentum")]
    pub max_momentum: PerGroup,
    /// initial_lr = max_lr / div_factor (default 25).
    #[serde(default = "default_div_factor")]
    pub div_factor: f64,
    /// min_lr = initial_lr / final_div_factor (default 1e4).
    #[serde(default = "default_final_div_factor")]
    pub final_div_factor: f64,
    /// Three phases (up, down to initial_lr, down to min_lr) instead of two (default false).
    #[serde(default)]
    pub three_phase: bool,
}

impl OneCycleLRArgs {
    /// The given peak and length, and torch's defaults for every other argument.
    pub fn new(max_lr: impl Into<PerGroup>, total_steps: u64) -> Self {
        OneCycleLRArgs {
            max_lr: max_lr.into(),
            total_steps: Some(total_steps),
            epochs: None,
            steps_per_epoch: None,
            pct_start: default_pct_start(),
            anneal_strategy: AnnealStrategy::default(),
            cycle_momentum: true,
            base_momentum: default_one_cycle_base_momentum(),
            max_momentum: default_one_cycle_max_momentum(),
            div_factor: default_div_factor(),
            final_div_factor: default_final_div_factor(),
            three_phase: false,
        }
    }
}

fn default_pct_start() -> f64 {
    0.3
}

fn default_one_cycle_base_momentum() -> PerGroup {
    PerGroup::All(0.85)
}

fn default_one_cycle_max_momentum() -> PerGroup {
    PerGroup::All(0.95)
}

fn default_div_factor() -> f64 {
    25.0
}

fn default_final_div_factor() -> f64 {
    1e4
}

/// A per-group value a phase starts or ends at (torch's `param_group` keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum GroupValue {
    InitialLr,
    MaxLr,
    MinLr,
    MaxMomentum,
    BaseMomentum,
}

/// One phase of torch's `_schedule_phases`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Phase {
    end_step: f64,
    start_lr: GroupValue,
    end_lr: GroupValue,
    start_momentum: GroupValue,
    end_momentum: GroupValue,
}

/// The per-group values torch keeps in the optimizer's `param_groups`.
#[derive(Clone, Debug)]
struct OneCycleGroup {
    initial_lr: f64,
    max_lr: f64,
    min_lr: f64,
    max_momentum: f64,
    base_momentum: f64,
}

impl OneCycleGroup {
    fn get(&self, value: GroupValue) -> f64 {
        match value {
            GroupValue::InitialLr => self.initial_lr,
            GroupValue::MaxLr => self.max_lr,
            GroupValue::MinLr => self.min_lr,
            GroupValue::MaxMomentum => self.max_momentum,
            GroupValue::BaseMomentum => self.base_momentum,
        }
    }
}

/// The part of `OneCycleLR` that torch's `state_dict` holds, under its names.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OneCycleState {
    total_steps: u64,
    #[serde(rename = "_schedule_phases")]
    schedule_phases: Vec<Phase>,
    #[serde(rename = "_anneal_func_type")]
    anneal_func_type: AnnealStrategy,
    cycle_momentum: bool,
    /// Exists only with `cycle_momentum`, as in torch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    use_beta1: Option<bool>,
}

#[derive(Clone)]
pub(crate) struct OneCycleLaw {
    state: OneCycleState,
    groups: Vec<OneCycleGroup>,
}

impl OneCycleLaw {
    fn new(args: OneCycleLRArgs, groups: usize) -> Result<Self> {
        const NAME: &str = "OneCycleLR";
        let check = Check(NAME);
        let total_steps = match (args.total_steps, args.epochs, args.steps_per_epoch) {
            (Some(total), _, _) => {
                check.require(total >= 1, "total_steps", total as f64, "must be a positive integer")?;
                total
            }
            (None, Some(epochs), Some(steps_per_epoch)) => {
                check.require(epochs >= 1, "epochs", epochs as f64, "must be a positive integer")?;
                check.require(steps_per_epoch >= 1, "steps_per_epoch", steps_per_epoch as f64, "must be a positive integer")?;
                epochs.checked_mul(steps_per_epoch).ok_or_else(|| {
                    Error::Config(format!("{NAME}: epochs · steps_per_epoch overflows"))
                })?
            }
            _ => {
                return Err(Error::Config(format!(
                    "{NAME}: you must define either total_steps OR (epochs AND steps_per_epoch)"
                )))
            }
        };
        check.unit_interval_closed("pct_start", args.pct_start)?;
        check.require(args.div_factor.is_finite() && args.div_factor > 0.0, "div_factor", args.div_factor, "must be finite and > 0")?;
        check.require(
            args.final_div_factor.is_finite() && args.final_div_factor > 0.0,
            "final_div_factor",
            args.final_div_factor,
            "must be finite and > 0",
        )?;
        let max_lrs = args.max_lr.resolve(NAME, "max_lr", groups)?;
        check_finite_non_negative(&check, "max_lr", &max_lrs)?;
        let base_momentums = args.base_momentum.resolve(NAME, "base_momentum", groups)?;
        let max_momentums = args.max_momentum.resolve(NAME, "max_momentum", groups)?;
        check_finite(&check, "base_momentum", &base_momentums)?;
        check_finite(&check, "max_momentum", &max_momentums)?;

        use GroupValue::*;
        let phase = |end_step, start_lr, end_lr, start_momentum, end_momentum| Phase {
            end_step,
            start_lr,
            end_lr,
            start_momentum,
            end_momentum,
        };
        let up_end = args.pct_start * total_steps as f64 - 1.0;
        let last = (total_steps - 1) as f64;
        let schedule_phases = if args.three_phase {
            vec![
                phase(up_end, InitialLr, MaxLr, MaxMomentum, BaseMomentum),
                phase(2.0 * args.pct_start * total_steps as f64 - 2.0, MaxLr, InitialLr, BaseMomentum, MaxMomentum),
                phase(last, InitialLr, MinLr, MaxMomentum, MaxMomentum),
            ]
        } else {
            vec![phase(up_end, InitialLr, MaxLr, MaxMomentum, BaseMomentum), phase(last, MaxLr, MinLr, BaseMomentum, MaxMomentum)]
        };
        let groups = (0..groups)
            .map(|g| {
                let initial_lr = max_lrs[g] / args.div_factor;
                OneCycleGroup {
                    initial_lr,
                    max_lr: max_lrs[g],
                    min_lr: initial_lr / args.final_div_factor,
                    max_momentum: max_momentums[g],
                    base_momentum: base_momentums[g],
                }
            })
            .collect();
        Ok(OneCycleLaw {
            state: OneCycleState {
                total_steps,
                schedule_phases,
                anneal_func_type: args.anneal_strategy,
                cycle_momentum: args.cycle_momentum,
                use_beta1: args.cycle_momentum.then_some(false),
            },
            groups,
        })
    }
}

impl Law for OneCycleLaw {
    const NAME: &'static str = "OneCycleLR";

    fn validate(&self, groups: usize) -> Result<()> {
        let s = &self.state;
        let check = Check(Self::NAME);
        check.require(s.total_steps >= 1, "total_steps", s.total_steps as f64, "must be a positive integer")?;
        check.require(!s.schedule_phases.is_empty(), "_schedule_phases", 0.0, "must hold at least one phase")?;
        check.require(self.groups.len() == groups, "max_lr", self.groups.len() as f64, "needs one value per parameter group")?;
        if s.cycle_momentum != s.use_beta1.is_some() {
            return Err(Error::Config(format!("{}: use_beta1 is present exactly when cycle_momentum is true", Self::NAME)));
        }
        Ok(())
    }

    /// torch overwrites each group's `initial_lr` with `max_lr / div_factor`, whatever an
    /// earlier scheduler left there.
    fn prepare(&mut self, opt: &mut dyn LearningRates, _inherited: Option<&[f64]>) -> Result<Vec<f64>> {
        if self.state.cycle_momentum {
            let base: Vec<f64> = self.groups.iter().map(|g| g.base_momentum).collect();
            let max: Vec<f64> = self.groups.iter().map(|g| g.max_momentum).collect();
            self.state.use_beta1 = Some(start_momentum_cycle(Self::NAME, opt, &base, &max)?);
        }
        Ok(self.groups.iter().map(|g| g.initial_lr).collect())
    }

    fn get_lr(&self, epochs: &Epochs, _is_initial: bool, _lrs: &[f64]) -> Result<Update> {
        let s = &self.state;
        let step_num = epochs.last_epoch;
        if step_num > s.total_steps as i64 {
            return Err(Error::Config(format!(
                "{}: tried to step {step_num} times; the specified number of total steps is {}",
                Self::NAME,
                s.total_steps
            )));
        }
        let step = step_num as f64;
        let mut lrs = Vec::with_capacity(self.groups.len());
        let mut momenta = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let mut start_step = 0.0;
            for (i, phase) in s.schedule_phases.iter().enumerate() {
                let end_step = phase.end_step;
                if step <= end_step || i == s.schedule_phases.len() - 1 {
                    if end_step == start_step {
                        return Err(Error::Config(format!(
                            "{}: phase {i} of the schedule is empty (it ends at step {end_step}, where it starts), \
                             so torch divides by zero here; change pct_start or total_steps",
                            Self::NAME
                        )));
                    }
                    let pct = (step - start_step) / (end_step - start_step);
                    let anneal = s.anneal_func_type;
                    lrs.push(anneal.anneal(group.get(phase.start_lr), group.get(phase.end_lr), pct));
                    momenta.push(anneal.anneal(group.get(phase.start_momentum), group.get(phase.end_momentum), pct));
                    break;
                }
                start_step = end_step;
            }
        }
        if step_num == s.total_steps as i64 {
            if let Some((group, lr)) = lrs.iter().enumerate().find(|(_, lr)| **lr < 0.0) {
                return Err(Error::Config(format!(
                    "{}: step {step_num} (= total_steps) extrapolates past the end of the schedule, to a negative \
                     learning rate {lr} for parameter group {group}, which torch applies and these optimizers \
                     refuse; a loop of total_steps optimizer steps never uses this step's rate, so step the \
                     scheduler at most total_steps - 1 times",
                    Self::NAME
                )));
            }
        }
        Ok(Update { lrs, momenta: s.cycle_momentum.then_some(momenta) })
    }

    fn save(&self) -> Map<String, Value> {
        state_fields(&self.state)
    }

    fn load(&mut self, state: &Map<String, Value>) -> Result<()> {
        self.state = parse_state(Self::NAME, state)?;
        Ok(())
    }
}

/// `torch.optim.lr_scheduler.OneCycleLR`: Smith's 1cycle policy, stepped after every batch.
/// The learning rate rises from `max_lr / div_factor` to `max_lr` over `pct_start` of the
/// steps, then falls to `initial_lr / final_div_factor` (with `three_phase`, first back to
/// `initial_lr`); momentum (`momentum` or `betas[0]`) moves inversely between `max_momentum`
/// and `base_momentum` when `cycle_momentum` (torch's default). Stepping more than
/// `total_steps` times is an error, as in torch. torch allows the `total_steps`-th step, which
/// extrapolates past the last phase; with linear annealing that gives a negative learning rate,
/// which torch applies and this scheduler refuses (an error, nothing changed): a training loop
/// of `total_steps` optimizer steps never uses that step's rate.
///
/// Its state, like torch's, does not hold the per-group bounds (torch keeps them in the
/// optimizer's `param_groups`): load it into a scheduler built with the same arguments.
///
/// ```
/// use wgpu_optim::schedule::{OneCycleLR, OneCycleLRArgs, Scheduler};
/// # use wgpu_optim::{rules::Adam, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Adam::default(), [w])])?;
/// let mut schedule = OneCycleLR::new(&mut opt, OneCycleLRArgs::new(0.01, 100))?;
/// assert!((schedule.last_lr()[0] - 0.01 / 25.0).abs() < 1e-15);
/// assert_eq!(opt.rule(0).cycled_momentum().unwrap().value, 0.95); // Adam's betas[0]
/// for _ in 0..100 {
///     schedule.step(&mut opt)?;
/// }
/// assert!(schedule.step(&mut opt).is_err());
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct OneCycleLR(Leaf<OneCycleLaw>);
leaf_scheduler!(OneCycleLR);

impl OneCycleLR {
    /// Errors: neither `total_steps` nor `epochs` and `steps_per_epoch`, zero counts,
    /// `pct_start` outside [0, 1], non-positive division factors, per-group lists of the wrong
    /// length, a first step that falls in an empty phase, and with `cycle_momentum` an
    /// optimizer without momentum or betas, or whose momentum cannot take the bounds (see
    /// [`LearningRates::set_cycled_momentum`]).
    pub fn new(opt: &mut dyn LearningRates, args: OneCycleLRArgs) -> Result<Self> {
        let law = OneCycleLaw::new(args, opt.group_count())?;
        Ok(OneCycleLR(Leaf::new(opt, law)?))
    }
}

// ---- configuration ----

pub(crate) fn from_config(name: &str, mut args: Map<String, Value>, opt: &mut dyn LearningRates) -> Result<Box<dyn Scheduler>> {
    take_last_epoch(name, &mut args)?;
    Ok(match name {
        "CyclicLR" => {
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
            Box::new(CyclicLR::new(opt, args)?)
        }
        "OneCycleLR" => {
            let args: OneCycleLRArgs = parse_args(name, args)?;
            Box::new(OneCycleLR::new(opt, args)?)
        }
        _ => unreachable!("schedule::single_from_config routes only these names here"),
    })
}
