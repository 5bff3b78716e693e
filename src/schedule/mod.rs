//! Learning-rate schedules with the names, arguments, defaults and step semantics of
//! `torch.optim.lr_scheduler` (PyTorch 2.15).
//!
//! A schedule drives the per-group learning rates of an [`Optimizer`] or a [`CpuOptimizer`]
//! through [`LearningRates`]. As in torch, building a schedule applies its epoch-0 learning
//! rates to the optimizer (torch's `_initial_step`), [`Scheduler::step`] advances one epoch
//! (torch's `scheduler.step()`, called after the optimizer's step) and
//! [`Scheduler::last_lr`] is `get_last_lr()`:
//!
//! ```
//! use wgpu_optim::schedule::{CosineAnnealingLR, LinearLR, Scheduler, SequentialLR};
//! use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
//!
//! let mut params = Parameters::new();
//! let w = params.add("w", &[2], vec![1.0, 2.0])?;
//! let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 0.1, ..Sgd::default() }, [w])])?;
//! // Linear warm-up over 5 epochs, then cosine annealing: torch's SequentialLR idiom.
//! let warmup = LinearLR::new(&mut opt, 0.1, 1.0, 5)?;
//! let cosine = CosineAnnealingLR::new(&mut opt, 95, 0.0)?;
//! let mut schedule = SequentialLR::new(&mut opt, vec![Box::new(warmup), Box::new(cosine)], vec![5])?;
//! assert_eq!(schedule.last_lr(), [0.1 * 0.1]);
//! for _epoch in 0..100 {
//!     opt.write_grad(w, &[0.5, -0.5])?;
//!     opt.step();
//!     schedule.step(&mut opt)?;
//! }
//! assert!(schedule.last_lr()[0] < 1e-12);
//! # Ok::<(), wgpu_optim::Error>(())
//! ```
//!
//! The replay command line builds schedules from JSON with [`from_config`]:
//! `{"name": "StepLR", "step_size": 30, "gamma": 0.1}`, or for composition
//! `{"name": "SequentialLR", "schedulers": [{...}, {...}], "milestones": [5]}`.
//!
//! # Exactness
//!
//! `scheduler.step()` in torch uses each scheduler's *chainable* form (`get_lr`, a recurrence
//! on the optimizer's current learning rate), not its closed form; the two differ in the last
//! bits and, for `CosineAnnealingLR`, by more. Every schedule here implements the chainable
//! recurrence in `f64` with torch's operation order (Python floats are `f64`; `math.cos` and
//! `**` are the C library's `cos` and `pow`, which Rust's `f64::cos` and `f64::powf` also call),
//! and the closed form only where torch uses it: when `SequentialLR` reaches a milestone
//! (torch's `_update_lr(0)`). Sequences match torch's to a few ulps over thousands of steps
//! (`tests/suite/schedules.rs`: bit-identical on glibc).
//!
//! # torch's quirks, reproduced
//!
//! - Construction performs the epoch-0 step (`_initial_step`): `ConstantLR` and `LinearLR`
//!   scale the learning rate at once, `CyclicLR` sets it to `base_lr`, `OneCycleLR` to
//!   `max_lr / div_factor`.
//! - Schedulers built one after another on one optimizer share torch's `initial_lr`: the second
//!   one's `base_lrs` are the learning rates from before the first was built, not the ones the
//!   first applied. [`SequentialLR::new`] and [`ChainedScheduler::new`] replay the construction
//!   of their children in order to reproduce this (including `OneCycleLR` overwriting
//!   `initial_lr` and `CyclicLR` computing its epoch-0 rate from the inherited `initial_lr`).
//! - `SequentialLR` resets the learning rates to `initial_lr`, steps back every child's
//!   `last_epoch` and re-runs only the first active child's initial step; at a milestone it
//!   restarts the next child with its closed form at epoch 0 (its `get_lr` where torch has no
//!   closed form), without counting a step.
//! - `CosineAnnealingLR` has three chainable branches (initial, `(last_epoch - 1 - T_max) %
//!   (2 T_max) == 0`, ratio of cosines), so past `T_max` it rises again as torch's does.
//! - `CosineAnnealingWarmRestarts` never increments `_step_count` (torch overrides `step`).
//! - `CyclicLR` and `OneCycleLR` with `cycle_momentum = true` (torch's default) cycle
//!   `momentum` (SGD, RMSprop) or `betas[0]` (Adam, AdamW, NAdam) through
//!   [`LearningRates::set_cycled_momentum`]; rules with neither are rejected as torch rejects
//!   them. One difference: an SGD or RMSprop built with momentum 0 cannot be cycled (its kernel
//!   variant and state have no momentum buffer), where torch would switch momentum on; build it
//!   with momentum > 0 or pass `cycle_momentum = false`.
//! - `OneCycleLR` fails when stepped more than `total_steps` times, as torch does. Its
//!   `total_steps`-th step extrapolates past the schedule; with linear annealing that is a
//!   negative learning rate, which torch applies and these optimizers refuse: that step is an
//!   error here (a loop of `total_steps` optimizer steps never uses its rate).
//! - `ReduceLROnPlateau` is fed a metric ([`ReduceLROnPlateau::step`]); it is not a
//!   [`Scheduler`] because its step needs that metric (torch's composites reject it too).
//!
//! Torch keeps `OneCycleLR`'s per-group bounds (`initial_lr`, `max_lr`, `min_lr`, momentum
//! bounds) in the optimizer's `param_groups`, where another cycling scheduler built later would
//! overwrite them; here each scheduler keeps its own. Learning rates are Python floats here, never
//! tensors. Torch's deprecated `step(epoch)` is not offered, and `last_epoch` other than -1 (which
//! resumes from an `initial_lr` stored in the optimizer, which these optimizers do not keep) is
//! refused: resume with [`Scheduler::load_state`] instead.
//!
//! # Checkpoints
//!
//! [`Scheduler::state`] is torch's `state_dict()` as JSON, with torch's keys (`last_epoch`,
//! `_step_count`, `base_lrs`, `_last_lr`, and each scheduler's own, e.g. `T_cur`, `milestones`,
//! `_schedule_phases`); infinities (`ReduceLROnPlateau`'s `best`) are the strings `"inf"` and
//! `"-inf"`. [`Scheduler::load_state`] into a scheduler built with the same arguments
//! continues exactly; it also accepts torch's own `state_dict()` written as JSON that way, whose
//! bookkeeping keys `_is_initial` and `_get_lr_called_within_step` it ignores.

mod composite;
mod cosine;
mod cyclic;
mod one_cycle;
mod lambda;
mod leaf;
mod multiplicative;
mod plateau;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cpu::CpuOptimizer;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::rules::CycledMomentum;

pub use composite::{ChainedScheduler, SequentialLR};
pub use cosine::{CosineAnnealingLR, CosineAnnealingWarmRestarts};
pub use cyclic::{CyclicLR, CyclicLRArgs, CyclicMode, ScaleMode};
pub use one_cycle::{AnnealStrategy, OneCycleLR, OneCycleLRArgs};
pub use lambda::{EpochFn, LambdaLR, MultiplicativeLR};
pub use multiplicative::{ConstantLR, ExponentialLR, InverseTimeLR, LinearLR, MultiStepLR, PolynomialLR, StepLR};
pub use plateau::{PlateauMode, ReduceLROnPlateau, ReduceLROnPlateauArgs, ThresholdMode};

/// The per-group learning rates (and the momentum that `CyclicLR` and `OneCycleLR` cycle) of
/// an optimizer: what a schedule drives. Implemented by [`Optimizer`] and [`CpuOptimizer`].
pub trait LearningRates {
    /// The number of parameter groups.
    fn group_count(&self) -> usize;
    /// The learning rate of parameter group `group` (`< group_count()`).
    fn lr(&self, group: usize) -> f64;
    /// Sets a group's learning rate; errors when the optimizer rejects it.
    fn set_lr(&mut self, group: usize, lr: f64) -> Result<()>;
    /// The group's `momentum` or `betas[0]`, if its update rule has one.
    fn cycled_momentum(&self, group: usize) -> Option<CycledMomentum>;
    /// Sets the group's `momentum` or `betas[0]`; errors when the optimizer cannot.
    fn set_cycled_momentum(&mut self, group: usize, value: f64) -> Result<()>;
}

impl LearningRates for CpuOptimizer {
    fn group_count(&self) -> usize {
        CpuOptimizer::group_count(self)
    }

    fn lr(&self, group: usize) -> f64 {
        self.rule(group).lr()
    }

    fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        CpuOptimizer::set_lr(self, group, lr)
    }

    fn cycled_momentum(&self, group: usize) -> Option<CycledMomentum> {
        self.rule(group).cycled_momentum()
    }

    fn set_cycled_momentum(&mut self, group: usize, value: f64) -> Result<()> {
        CpuOptimizer::set_cycled_momentum(self, group, value)
    }
}

impl LearningRates for Optimizer {
    fn group_count(&self) -> usize {
        Optimizer::group_count(self)
    }

    fn lr(&self, group: usize) -> f64 {
        self.rule(group).lr()
    }

    fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        Optimizer::set_lr(self, group, lr)
    }

    fn cycled_momentum(&self, group: usize) -> Option<CycledMomentum> {
        self.rule(group).cycled_momentum()
    }

    fn set_cycled_momentum(&mut self, group: usize, value: f64) -> Result<()> {
        Optimizer::set_cycled_momentum(self, group, value)
    }
}

/// The learning rates of every group, in group order.
pub(crate) fn current_lrs(opt: &dyn LearningRates) -> Vec<f64> {
    (0..opt.group_count()).map(|g| opt.lr(g)).collect()
}

pub(crate) mod sealed {
    /// Keeps [`Scheduler`](super::Scheduler) implementable only here, and gives composites
    /// access to their children's construction hooks.
    pub trait Sealed {
        /// The hooks of a single scheduler; `None` for composites.
        fn leaf_hooks(&mut self) -> Option<&mut dyn super::leaf::LeafHooks>;
    }
}

/// A learning-rate schedule: torch's `LRScheduler` interface.
pub trait Scheduler: sealed::Sealed + Send + Sync {
    /// The torch class name, e.g. `"StepLR"`.
    fn name(&self) -> &'static str;
    /// Advances one epoch (torch's `scheduler.step()`) and sets the optimizer's learning rates.
    /// On error nothing changes (but a [`SequentialLR`] or [`ChainedScheduler`] child may have
    /// stepped; see their docs).
    fn step(&mut self, opt: &mut dyn LearningRates) -> Result<()>;
    /// The learning rates of the last step, one per group (torch's `get_last_lr()`).
    fn last_lr(&self) -> &[f64];
    /// torch's `state_dict()`, as JSON with torch's keys.
    fn state(&self) -> Value;
    /// torch's `load_state_dict()`: unknown or missing keys, ill-typed values, values the
    /// constructor would reject and a different number of parameter groups are errors, and leave
    /// the scheduler unchanged.
    fn load_state(&mut self, state: &Value) -> Result<()>;
}

impl std::fmt::Debug for dyn Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(self.name()).field("last_lr", &self.last_lr()).finish()
    }
}

/// A value given once for every parameter group or once per group, as torch accepts for
/// `CyclicLR`'s `base_lr`, `OneCycleLR`'s `max_lr`, `ReduceLROnPlateau`'s `min_lr`, ...
/// In JSON: a number or a list of numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerGroup {
    /// One value for every group (a JSON number).
    All(f64),
    /// One value per group, in group order (a JSON list); its length must be the number of groups.
    Each(Vec<f64>),
}

impl PerGroup {
    /// One value per group; a list of another length is an error, as in torch's `_format_param`.
    pub(crate) fn resolve(&self, scheduler: &'static str, name: &'static str, groups: usize) -> Result<Vec<f64>> {
        match self {
            PerGroup::All(value) => Ok(vec![*value; groups]),
            PerGroup::Each(values) if values.len() == groups => Ok(values.clone()),
            PerGroup::Each(values) => Err(Error::Config(format!(
                "{scheduler}: {name} must have the same length as the optimizer's parameter groups: \
                 {name} has {} values, there are {groups} groups",
                values.len()
            ))),
        }
    }
}

impl From<f64> for PerGroup {
    fn from(value: f64) -> Self {
        PerGroup::All(value)
    }
}

impl From<Vec<f64>> for PerGroup {
    fn from(values: Vec<f64>) -> Self {
        PerGroup::Each(values)
    }
}

impl<const N: usize> From<[f64; N]> for PerGroup {
    fn from(values: [f64; N]) -> Self {
        PerGroup::Each(values.to_vec())
    }
}

/// The scheduler names [`from_config`] accepts.
pub const CONFIG_SCHEDULER_NAMES: &[&str] = &[
    "ConstantLR",
    "LinearLR",
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "OneCycleLR",
    "InverseTimeLR",
    "SequentialLR",
    "ChainedScheduler",
];

/// Builds a schedule on `opt` from `{"name": "<torch class>", ...torch keyword arguments}`,
/// with torch's defaults for the arguments left out, and applies its epoch-0 learning rates.
/// Composition: `{"name": "SequentialLR", "schedulers": [...], "milestones": [...]}` and
/// `{"name": "ChainedScheduler", "schedulers": [...]}`, children built in list order as torch
/// builds them. `last_epoch` is accepted where torch has it, and only as -1.
///
/// Errors: unknown names or arguments, ill-typed or invalid values; `LambdaLR` and
/// `MultiplicativeLR` (they take Rust closures: build them in code); `ReduceLROnPlateau` (it
/// needs a metric at every step, which replay does not have: use
/// [`ReduceLROnPlateau::from_config`] and feed it one); nested composites.
///
/// ```
/// use wgpu_optim::{rules::Sgd, schedule, CpuOptimizer, ParamGroup, Parameters};
/// let mut params = Parameters::new();
/// let w = params.add("w", &[1], vec![0.0])?;
/// let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 0.1, ..Sgd::default() }, [w])])?;
/// let config = serde_json::json!({"name": "StepLR", "step_size": 2, "gamma": 0.5});
/// let mut schedule = schedule::from_config(&config, &mut opt)?;
/// for _ in 0..4 {
///     schedule.step(&mut opt)?;
/// }
/// assert_eq!(schedule.last_lr(), [0.025]);
/// assert!(schedule::from_config(&serde_json::json!({"name": "StepLR", "step": 2}), &mut opt).is_err());
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub fn from_config(value: &Value, opt: &mut dyn LearningRates) -> Result<Box<dyn Scheduler>> {
    let (name, args) = split_config(value)?;
    match name.as_str() {
        "SequentialLR" => composite::sequential_from_config(args, opt),
        "ChainedScheduler" => composite::chained_from_config(args, opt),
        _ => single_from_config(&name, args, opt),
    }
}

/// A non-composite scheduler from its name and arguments (a composite's child).
pub(crate) fn single_from_config(name: &str, args: Map<String, Value>, opt: &mut dyn LearningRates) -> Result<Box<dyn Scheduler>> {
    match name {
        "ConstantLR" | "LinearLR" | "StepLR" | "MultiStepLR" | "ExponentialLR" | "PolynomialLR" | "InverseTimeLR" => {
            multiplicative::from_config(name, args, opt)
        }
        "CosineAnnealingLR" | "CosineAnnealingWarmRestarts" => cosine::from_config(name, args, opt),
        "CyclicLR" => cyclic::from_config(name, args, opt),
        "OneCycleLR" => one_cycle::from_config(name, args, opt),
        "SequentialLR" | "ChainedScheduler" => Err(Error::Config(format!(
            "{name} inside SequentialLR or ChainedScheduler: nested composites are not supported \
             (torch's SequentialLR cannot restart one at a milestone either)"
        ))),
        "LambdaLR" | "MultiplicativeLR" => Err(Error::Config(format!(
            "{name} takes a function of the epoch, which a configuration cannot hold; build it in code \
             with {name}::new and a Rust closure"
        ))),
        "ReduceLROnPlateau" => Err(Error::Config(
            "ReduceLROnPlateau needs a metric at every step, which replay does not have; build it with \
             ReduceLROnPlateau::from_config and call step(opt, metric)"
                .into(),
        )),
        _ => Err(Error::Config(format!(
            "unknown scheduler {name:?}: expected one of {}",
            CONFIG_SCHEDULER_NAMES.join(", ")
        ))),
    }
}

/// `{"name": ..., ...arguments}` → the name and the arguments.
pub(crate) fn split_config(value: &Value) -> Result<(String, Map<String, Value>)> {
    let Value::Object(map) = value else {
        return Err(Error::Config(format!(
            "a scheduler configuration is a JSON object with a \"name\", not {value}"
        )));
    };
    let mut args = map.clone();
    match args.remove("name") {
        Some(Value::String(name)) => Ok((name, args)),
        Some(other) => Err(Error::Config(format!("scheduler \"name\" must be a string, not {other}"))),
        None => Err(Error::Config(format!(
            "a scheduler configuration needs a \"name\" (one of {})",
            CONFIG_SCHEDULER_NAMES.join(", ")
        ))),
    }
}

/// Removes torch's `last_epoch` argument, accepting only its default -1: other values resume
/// from an `initial_lr` stored in torch's optimizer, which these optimizers do not keep.
pub(crate) fn take_last_epoch(scheduler: &str, args: &mut Map<String, Value>) -> Result<()> {
    match args.remove("last_epoch") {
        None => Ok(()),
        Some(value) if value.as_i64() == Some(-1) => Ok(()),
        Some(value) => Err(Error::Config(format!(
            "{scheduler}: last_epoch = {value} is not supported (torch resumes it from the optimizer's \
             initial_lr, which wgpu-optim optimizers do not store); build with last_epoch = -1 and \
             restore a checkpoint with load_state"
        ))),
    }
}

/// Deserializes a scheduler's arguments (a struct with `deny_unknown_fields`), naming the
/// offending argument in errors.
pub(crate) fn parse_args<T: serde::de::DeserializeOwned>(scheduler: &str, args: Map<String, Value>) -> Result<T> {
    serde_path_to_error::deserialize(Value::Object(args)).map_err(|e| {
        let at = e.path().to_string();
        let place = if at == "." { String::new() } else { format!(" at {at:?}") };
        Error::Config(format!("{scheduler} arguments{place}: {}", e.into_inner()))
    })
}

/// Deserializes one part of a saved state (a struct without `deny_unknown_fields`: the state
/// holds other parts' keys too; [`check_state_keys`] rejects unknown ones).
pub(crate) fn parse_state<T: serde::de::DeserializeOwned>(scheduler: &str, state: &Map<String, Value>) -> Result<T> {
    serde_path_to_error::deserialize(Value::Object(state.clone())).map_err(|e| {
        let at = e.path().to_string();
        let place = if at == "." { String::new() } else { format!(" at {at:?}") };
        Error::Config(format!("{scheduler} state{place}: {}", e.into_inner()))
    })
}

/// The fields of a serializable part of a state.
pub(crate) fn state_fields<T: Serialize>(part: &T) -> Map<String, Value> {
    match serde_json::to_value(part) {
        Ok(Value::Object(map)) => map,
        _ => unreachable!("scheduler states are structs of numbers, strings and lists"),
    }
}

/// torch's `state_dict()` bookkeeping keys, always False between calls, that loading ignores.
const IGNORED_TORCH_KEYS: &[&str] = &["_is_initial", "_get_lr_called_within_step"];

/// The state object, checked to hold no key that `expected` (the scheduler's own state) lacks.
pub(crate) fn check_state_keys<'a>(scheduler: &str, state: &'a Value, expected: &Value) -> Result<&'a Map<String, Value>> {
    let Value::Object(map) = state else {
        return Err(Error::Config(format!("{scheduler} state must be a JSON object, not {state}")));
    };
    let Value::Object(expected) = expected else {
        unreachable!("scheduler states are JSON objects")
    };
    if let Some(unknown) = map.keys().find(|k| !expected.contains_key(*k) && !IGNORED_TORCH_KEYS.contains(&k.as_str())) {
        return Err(Error::Config(format!(
            "{scheduler} state has an unknown key {unknown:?}; expected {:?}",
            expected.keys().collect::<Vec<_>>()
        )));
    }
    Ok(map)
}

/// A loaded state's `_last_lr` must hold one learning rate per parameter group of the scheduler.
pub(crate) fn check_group_count(scheduler: &str, loaded: usize, groups: usize) -> Result<()> {
    if loaded != groups {
        return Err(Error::Config(format!(
            "{scheduler} state holds {loaded} learning rates for {groups} parameter groups"
        )));
    }
    Ok(())
}

/// Python's `bisect_right` on a sorted list: how many milestones are `<= epoch`.
pub(crate) fn bisect_right(milestones: &[u64], epoch: i64) -> usize {
    milestones.partition_point(|&m| i128::from(m) <= i128::from(epoch))
}
