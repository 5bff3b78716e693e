//! `ReduceLROnPlateau`: learning rates cut when a metric stops improving.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{check_group_count, check_state_keys, current_lrs, parse_args, parse_state, split_config, state_fields, LearningRates, PerGroup};
use crate::error::{Error, Result};
use crate::rules::Check;

/// Whether the monitored metric should go down (a loss) or up (an accuracy): torch's `mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlateauMode {
    /// The metric should decrease (a loss); the default.
    #[default]
    #[serde(rename = "min")]
    Min,
    /// The metric should increase (an accuracy).
    #[serde(rename = "max")]
    Max,
}

/// How `threshold` measures a significant improvement: torch's `threshold_mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThresholdMode {
    /// Relative to the best value: `best · (1 ∓ threshold)`.
    #[default]
    #[serde(rename = "rel")]
    Rel,
    /// Absolute: `best ∓ threshold`.
    #[serde(rename = "abs")]
    Abs,
}

/// `ReduceLROnPlateau`'s arguments, with torch's names and defaults (`Default` gives them all).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReduceLROnPlateauArgs {
    /// Whether the metric should decrease or increase (default `min`).
    pub mode: PlateauMode,
    /// new_lr = lr · factor (default 0.1).
    pub factor: f64,
    /// Epochs without improvement tolerated before a cut (default 10).
    pub patience: u64,
    /// What counts as an improvement (default 1e-4).
    pub threshold: f64,
    /// Whether `threshold` is relative or absolute (default `rel`).
    pub threshold_mode: ThresholdMode,
    /// Epochs to wait after a cut before counting bad epochs again (default 0).
    pub cooldown: u64,
    /// A lower bound on the learning rates, one value or one per group (default 0).
    pub min_lr: PerGroup,
    /// Cuts smaller than this are skipped (default 1e-8).
    pub eps: f64,
}

impl Default for ReduceLROnPlateauArgs {
    fn default() -> Self {
        ReduceLROnPlateauArgs {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: PerGroup::All(0.0),
            eps: 1e-8,
        }
    }
}

/// `f64` in JSON, with ±infinity as the strings `"inf"` and `"-inf"` (JSON has no infinity;
/// `best` starts there).
mod float_or_infinity {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        match *value {
            f64::INFINITY => serializer.serialize_str("inf"),
            f64::NEG_INFINITY => serializer.serialize_str("-inf"),
            finite => serializer.serialize_f64(finite),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(f64),
            Text(String),
        }
        match Repr::deserialize(deserializer)? {
            Repr::Number(value) => Ok(value),
            Repr::Text(text) if text == "inf" => Ok(f64::INFINITY),
            Repr::Text(text) if text == "-inf" => Ok(f64::NEG_INFINITY),
            Repr::Text(text) => Err(serde::de::Error::custom(format!("expected a number, \"inf\" or \"-inf\", not {text:?}"))),
        }
    }
}

/// Everything torch's `state_dict` holds, under its names.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PlateauState {
    factor: f64,
    default_min_lr: Option<f64>,
    min_lrs: Vec<f64>,
    patience: u64,
    cooldown: u64,
    eps: f64,
    last_epoch: i64,
    #[serde(rename = "_last_lr")]
    last_lr: Vec<f64>,
    #[serde(with = "float_or_infinity")]
    mode_worse: f64,
    mode: PlateauMode,
    threshold: f64,
    threshold_mode: ThresholdMode,
    #[serde(with = "float_or_infinity")]
    best: f64,
    cooldown_counter: u64,
    num_bad_epochs: u64,
}

impl PlateauState {
    fn validate(&self) -> Result<()> {
        let check = Check("ReduceLROnPlateau");
        check.require(self.factor >= 0.0 && self.factor < 1.0, "factor", self.factor, "must be in [0, 1)")?;
        check.finite("threshold", self.threshold)?;
        check.non_negative("eps", self.eps)?;
        self.min_lrs.iter().try_for_each(|&m| check.non_negative("min_lr", m))?;
        if let Some(default) = self.default_min_lr {
            check.non_negative("min_lr", default)?;
        }
        super::leaf::check_loaded_steps("ReduceLROnPlateau", "last_epoch", self.last_epoch.into())?;
        super::leaf::check_loaded_steps("ReduceLROnPlateau", "num_bad_epochs", self.num_bad_epochs.into())
    }

    /// torch's `_is_better`.
    fn is_better(&self, metric: f64, best: f64) -> bool {
        match (self.mode, self.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => metric < best * (1.0 - self.threshold),
            (PlateauMode::Min, ThresholdMode::Abs) => metric < best - self.threshold,
            (PlateauMode::Max, ThresholdMode::Rel) => metric > best * (self.threshold + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => metric > best + self.threshold,
        }
    }
}

fn mode_worse(mode: PlateauMode) -> f64 {
    match mode {
        PlateauMode::Min => f64::INFINITY,
        PlateauMode::Max => f64::NEG_INFINITY,
    }
}

/// `torch.optim.lr_scheduler.ReduceLROnPlateau`: multiplies the learning rates by `factor`
/// (down to `min_lr`) when a metric has not improved for more than `patience` epochs.
///
/// Unlike the [`Scheduler`](super::Scheduler)s its step takes the metric, and it does not
/// change the learning rates at construction. Its state and `load_state` follow torch's
/// `state_dict` (`best` and `mode_worse` may be `"inf"` or `"-inf"`).
///
/// ```
/// use wgpu_optim::schedule::{ReduceLROnPlateau, ReduceLROnPlateauArgs};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let mut schedule = ReduceLROnPlateau::new(&mut opt, ReduceLROnPlateauArgs { patience: 1, factor: 0.5, ..Default::default() })?;
/// for validation_loss in [1.0, 0.9, 0.9, 0.9] {
///     schedule.step(&mut opt, validation_loss)?;
/// }
/// assert_eq!(schedule.last_lr(), [0.5]); // cut after two epochs without improvement
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ReduceLROnPlateau {
    state: PlateauState,
}

impl ReduceLROnPlateau {
    /// Errors: `factor` outside [0, 1), non-finite `threshold`, negative or non-finite
    /// `min_lr` or `eps`, a `min_lr` list of the wrong length.
    pub fn new(opt: &mut dyn LearningRates, args: ReduceLROnPlateauArgs) -> Result<Self> {
        let groups = opt.group_count();
        let (default_min_lr, min_lrs) = match &args.min_lr {
            PerGroup::All(value) => (Some(*value), vec![*value; groups]),
            each => (None, each.resolve("ReduceLROnPlateau", "min_lr", groups)?),
        };
        let state = PlateauState {
            factor: args.factor,
            default_min_lr,
            min_lrs,
            patience: args.patience,
            cooldown: args.cooldown,
            eps: args.eps,
            last_epoch: 0,
            last_lr: current_lrs(opt),
            mode_worse: mode_worse(args.mode),
            mode: args.mode,
            threshold: args.threshold,
            threshold_mode: args.threshold_mode,
            best: mode_worse(args.mode),
            cooldown_counter: 0,
            num_bad_epochs: 0,
        };
        state.validate()?;
        Ok(ReduceLROnPlateau { state })
    }

    /// From `{"name": "ReduceLROnPlateau", ...torch arguments}` (torch's defaults for the rest).
    /// [`from_config`](super::from_config) refuses this scheduler because replay has no metric
    /// to feed it; a caller that has one builds it here.
    pub fn from_config(value: &Value, opt: &mut dyn LearningRates) -> Result<Self> {
        let (name, args) = split_config(value)?;
        if name != "ReduceLROnPlateau" {
            return Err(Error::Config(format!("ReduceLROnPlateau::from_config was given a {name:?} configuration")));
        }
        Self::new(opt, parse_args(&name, args)?)
    }

    /// One epoch with its metric (torch's `step(metrics)`); may cut the learning rates.
    /// A NaN metric counts as no improvement, as in torch. On error nothing changes.
    pub fn step(&mut self, opt: &mut dyn LearningRates, metric: f64) -> Result<()> {
        let mut s = self.state.clone();
        s.last_epoch += 1;
        if s.is_better(metric, s.best) {
            s.best = metric;
            s.num_bad_epochs = 0;
        } else {
            s.num_bad_epochs += 1;
        }
        if s.cooldown_counter > 0 {
            s.cooldown_counter -= 1;
            s.num_bad_epochs = 0; // bad epochs in cooldown do not count
        }
        if s.num_bad_epochs > s.patience {
            Self::reduce_lr(&mut s, opt)?;
            s.cooldown_counter = s.cooldown;
            s.num_bad_epochs = 0;
        }
        s.last_lr = current_lrs(opt);
        self.state = s;
        Ok(())
    }

    /// torch's `_reduce_lr`.
    fn reduce_lr(s: &mut PlateauState, opt: &mut dyn LearningRates) -> Result<()> {
        let groups = opt.group_count();
        if s.min_lrs.len() != groups {
            match s.default_min_lr {
                Some(default) => s.min_lrs = vec![default; groups],
                None => {
                    return Err(Error::Config(format!(
                        "ReduceLROnPlateau: the optimizer has {groups} parameter groups, but min_lr was given for {}",
                        s.min_lrs.len()
                    )))
                }
            }
        }
        for (group, &min_lr) in s.min_lrs.iter().enumerate() {
            let old_lr = opt.lr(group);
            let reduced = old_lr * s.factor;
            // Python's max(reduced, min_lr) keeps the first of equal values.
            let new_lr = if min_lr > reduced { min_lr } else { reduced };
            if old_lr - new_lr > s.eps {
                opt.set_lr(group, new_lr)?;
            }
        }
        Ok(())
    }

    /// The learning rates after the last step, one per group (torch's `get_last_lr()`).
    pub fn last_lr(&self) -> &[f64] {
        &self.state.last_lr
    }

    /// The best metric seen so far (`inf` or `-inf` before the first step).
    pub fn best(&self) -> f64 {
        self.state.best
    }

    /// torch's `state_dict()` as JSON.
    pub fn state(&self) -> Value {
        Value::Object(state_fields(&self.state))
    }

    /// torch's `load_state_dict()`; invalid states are errors and change nothing.
    pub fn load_state(&mut self, state: &Value) -> Result<()> {
        const NAME: &str = "ReduceLROnPlateau";
        let map = check_state_keys(NAME, state, &self.state())?;
        let mut loaded: PlateauState = parse_state(NAME, map)?;
        // torch's load_state_dict re-runs _init_is_better, which recomputes mode_worse.
        loaded.mode_worse = mode_worse(loaded.mode);
        loaded.validate()?;
        check_group_count(NAME, loaded.last_lr.len(), self.state.last_lr.len())?;
        self.state = loaded;
        Ok(())
    }
}
