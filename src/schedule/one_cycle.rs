//! `OneCycleLR`, which also cycles momentum (its set-up shared with `CyclicLR` in `cyclic.rs`).

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::cyclic::{check_finite, check_finite_non_negative, start_momentum_cycle, yes};
use super::leaf::{leaf_scheduler, Epochs, Law, Leaf, Update};
use super::{parse_args, parse_state, state_fields, take_last_epoch, LearningRates, PerGroup, Scheduler};
use crate::error::{Error, Result};
use crate::rules::Check;

/// `OneCycleLR`'s annealing (torch's `anneal_strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnnealStrategy {
    /// Cosine annealing (`"cos"`, the default).
    #[default]
    #[serde(rename = "cos")]
    Cos,
    /// Linear annealing (`"linear"`).
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
    /// Steps in the cycle, at least 1; give it, or both `epochs` and `steps_per_epoch` (default
    /// none).
    #[serde(default)]
    pub total_steps: Option<u64>,
    /// Epochs to train for, at least 1; with `steps_per_epoch` it gives
    /// `total_steps = epochs · steps_per_epoch` (default none).
    #[serde(default)]
    pub epochs: Option<u64>,
    /// Steps per epoch, at least 1; see `epochs` (default none).
    #[serde(default)]
    pub steps_per_epoch: Option<u64>,
    /// The fraction of the cycle spent increasing the learning rate (default 0.3).
    #[serde(default = "default_pct_start")]
    pub pct_start: f64,
    /// How the learning rate and momentum are annealed within each phase (default `cos`).
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

pub(crate) fn from_config(name: &str, mut args: Map<String, Value>, opt: &mut dyn LearningRates) -> Result<Box<dyn Scheduler>> {
    take_last_epoch(name, &mut args)?;
    let args: OneCycleLRArgs = parse_args(name, args)?;
    Ok(Box::new(OneCycleLR::new(opt, args)?))
}
