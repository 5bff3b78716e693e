//! The machinery every single (non-composite) scheduler shares: torch's `LRScheduler`
//! constructor, `step`, `_initial_step` and `_update_lr`, around a [`Law`] that says how one
//! scheduler computes its learning rates (torch's `get_lr` and `_get_closed_form_lr`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{check_state_keys, current_lrs, parse_state, LearningRates};
use crate::error::{Error, Result};

/// torch's `LRScheduler` bookkeeping, under torch's `state_dict` names.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Epochs {
    pub base_lrs: Vec<f64>,
    pub last_epoch: i64,
    #[serde(rename = "_step_count")]
    pub step_count: u64,
    #[serde(rename = "_last_lr")]
    pub last_lr: Vec<f64>,
}

/// The most steps a loaded state may have counted: 2^53, the integers an f64 holds exactly,
/// beyond any run and far enough from the integer limits that stepping on cannot overflow.
pub(crate) const MAX_LOADED_STEPS: i64 = 1 << 53;

/// Rejects a loaded step counter outside `-1..=MAX_LOADED_STEPS` (states come from files).
pub(crate) fn check_loaded_steps(scheduler: &str, name: &str, value: i128) -> Result<()> {
    if (-1..=i128::from(MAX_LOADED_STEPS)).contains(&value) {
        Ok(())
    } else {
        Err(Error::Config(format!("{scheduler} state: {name} = {value} is not a step count (-1 to 2^53)")))
    }
}

impl Epochs {
    /// `last_epoch` as the non-negative epoch index `get_lr` sees (it is never negative there).
    pub fn epoch(&self) -> u64 {
        u64::try_from(self.last_epoch).unwrap_or(0)
    }
}

/// What one step sets: the learning rates and, for schedulers cycling momentum, the
/// `momentum` or `betas[0]` of each group.
pub(crate) struct Update {
    pub lrs: Vec<f64>,
    pub momenta: Option<Vec<f64>>,
}

impl From<Vec<f64>> for Update {
    fn from(lrs: Vec<f64>) -> Self {
        Update { lrs, momenta: None }
    }
}

/// How one scheduler computes its learning rates.
pub(crate) trait Law: Clone + Send + Sync + 'static {
    /// The torch class name.
    const NAME: &'static str;

    /// Rejects what the constructor rejects; `groups` is the number of parameter groups.
    fn validate(&self, groups: usize) -> Result<()>;

    /// torch's `__init__` before `super().__init__()`: side effects on the optimizer, then the
    /// groups' `initial_lr`, which become `base_lrs`. torch uses `setdefault`, so an `initial_lr`
    /// left by a scheduler built earlier on the same optimizer (`inherited`) wins over the
    /// current learning rates.
    fn prepare(&mut self, opt: &mut dyn LearningRates, inherited: Option<&[f64]>) -> Result<Vec<f64>> {
        Ok(inherited.map_or_else(|| current_lrs(opt), <[f64]>::to_vec))
    }

    /// After `super().__init__()` (CyclicLR replaces `base_lrs` with its own `base_lr`).
    fn finish_construction(&self, _epochs: &mut Epochs) {}

    /// torch's `step()` up to `get_lr`: counts the step and advances `last_epoch`.
    fn advance(&mut self, epochs: &mut Epochs) -> Result<()> {
        epochs.step_count += 1;
        epochs.last_epoch += 1;
        Ok(())
    }

    /// torch's chainable `get_lr`, from the groups' current learning rates `lrs`;
    /// `is_initial` is torch's `_is_initial` (true during the constructor's step).
    fn get_lr(&self, epochs: &Epochs, is_initial: bool, lrs: &[f64]) -> Result<Update>;

    /// torch's `_get_closed_form_lr`, where torch has one.
    fn closed_form(&self, _epochs: &Epochs) -> Option<Result<Vec<f64>>> {
        None
    }

    /// The scheduler's own `state_dict` entries (besides [`Epochs`]).
    fn save(&self) -> Map<String, Value>;

    /// Replaces the entries [`save`](Self::save) writes; the caller validates afterwards.
    fn load(&mut self, state: &Map<String, Value>) -> Result<()>;
}

/// `save` and `load` for a law that is itself its saved state.
macro_rules! serde_law_state {
    () => {
        fn save(&self) -> serde_json::Map<String, serde_json::Value> {
            crate::schedule::state_fields(self)
        }

        fn load(&mut self, state: &serde_json::Map<String, serde_json::Value>) -> crate::error::Result<()> {
            *self = crate::schedule::parse_state(Self::NAME, state)?;
            Ok(())
        }
    };
}
pub(crate) use serde_law_state;

/// The construction hooks a composite drives on its children.
pub trait LeafHooks: Send + Sync {
    /// The learning rates the optimizer had before this scheduler was built.
    fn lrs_before_construction(&self) -> &[f64];
    /// Whether the scheduler has not stepped since it was built.
    fn is_fresh(&self) -> bool;
    /// Re-runs torch's constructor (see [`Law::prepare`]); returns the groups' `initial_lr`
    /// afterwards.
    fn attach(&mut self, opt: &mut dyn LearningRates, inherited: Option<&[f64]>) -> Result<Vec<f64>>;
    /// `SequentialLR`'s `recursive_undo`: `last_epoch -= 1`.
    fn undo_initial_step(&mut self);
    /// torch's `_initial_step`.
    fn initial_step(&mut self, opt: &mut dyn LearningRates) -> Result<()>;
    /// torch's `_update_lr(0)`, what `SequentialLR` calls at a milestone: `last_epoch = 0` and the
    /// closed form (else `get_lr`), without counting a step.
    fn restart_at_epoch_zero(&mut self, opt: &mut dyn LearningRates) -> Result<()>;
}

/// A single scheduler: a [`Law`] and torch's bookkeeping.
#[derive(Clone)]
pub(crate) struct Leaf<L: Law> {
    pub law: L,
    pub epochs: Epochs,
    lrs_before: Vec<f64>,
}

impl<L: Law> Leaf<L> {
    /// torch's constructor with `last_epoch = -1`: validates, then applies epoch 0.
    pub fn new(opt: &mut dyn LearningRates, law: L) -> Result<Self> {
        let groups = opt.group_count();
        law.validate(groups)?;
        let lrs_before = current_lrs(opt);
        let mut leaf = Leaf {
            law,
            epochs: Epochs { base_lrs: lrs_before.clone(), last_epoch: -1, step_count: 0, last_lr: lrs_before.clone() },
            lrs_before,
        };
        leaf.attach(opt, None)?;
        Ok(leaf)
    }

    fn check_groups(&self, opt: &dyn LearningRates) -> Result<()> {
        if opt.group_count() == self.epochs.base_lrs.len() {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "{} was built for {} parameter groups, but the optimizer has {}",
                L::NAME,
                self.epochs.base_lrs.len(),
                opt.group_count()
            )))
        }
    }

    /// torch's `step()` (`is_initial` within `_initial_step`); changes nothing on error.
    fn step_with(&mut self, opt: &mut dyn LearningRates, is_initial: bool) -> Result<()> {
        self.check_groups(opt)?;
        let mut law = self.law.clone();
        let mut epochs = self.epochs.clone();
        law.advance(&mut epochs)?;
        let update = law.get_lr(&epochs, is_initial, &current_lrs(opt))?;
        apply(opt, L::NAME, epochs.last_epoch, &update)?;
        epochs.last_lr = current_lrs(opt);
        self.law = law;
        self.epochs = epochs;
        Ok(())
    }

    pub fn step(&mut self, opt: &mut dyn LearningRates) -> Result<()> {
        self.step_with(opt, false)
    }

    pub fn state(&self) -> Value {
        let mut state = self.law.save();
        state.extend(super::state_fields(&self.epochs));
        Value::Object(state)
    }

    pub fn load_state(&mut self, state: &Value) -> Result<()> {
        let map = check_state_keys(L::NAME, state, &self.state())?;
        let epochs: Epochs = parse_state(L::NAME, map)?;
        check_loaded_steps(L::NAME, "last_epoch", epochs.last_epoch.into())?;
        check_loaded_steps(L::NAME, "_step_count", epochs.step_count.into())?;
        let mut law = self.law.clone();
        law.load(map)?;
        let groups = self.epochs.base_lrs.len();
        if epochs.base_lrs.len() != groups || epochs.last_lr.len() != groups {
            return Err(Error::Config(format!(
                "{} state holds {} base_lrs and {} _last_lr for a scheduler of {groups} parameter groups",
                L::NAME,
                epochs.base_lrs.len(),
                epochs.last_lr.len()
            )));
        }
        law.validate(groups)?;
        self.law = law;
        self.epochs = epochs;
        Ok(())
    }
}

impl<L: Law> LeafHooks for Leaf<L> {
    fn lrs_before_construction(&self) -> &[f64] {
        &self.lrs_before
    }

    fn is_fresh(&self) -> bool {
        self.epochs.last_epoch == 0
    }

    fn attach(&mut self, opt: &mut dyn LearningRates, inherited: Option<&[f64]>) -> Result<Vec<f64>> {
        self.check_groups(opt)?;
        let initial = self.law.prepare(opt, inherited)?;
        self.epochs = Epochs { base_lrs: initial.clone(), last_epoch: -1, step_count: 0, last_lr: initial.clone() };
        self.initial_step(opt)?;
        self.law.finish_construction(&mut self.epochs);
        Ok(initial)
    }

    fn undo_initial_step(&mut self) {
        self.epochs.last_epoch -= 1;
    }

    fn initial_step(&mut self, opt: &mut dyn LearningRates) -> Result<()> {
        self.epochs.step_count = 0;
        self.step_with(opt, true)
    }

    fn restart_at_epoch_zero(&mut self, opt: &mut dyn LearningRates) -> Result<()> {
        self.check_groups(opt)?;
        let mut epochs = self.epochs.clone();
        epochs.last_epoch = 0;
        let update = match self.law.closed_form(&epochs) {
            Some(lrs) => Update::from(lrs?),
            None => self.law.get_lr(&epochs, false, &current_lrs(opt))?,
        };
        apply(opt, L::NAME, 0, &update)?;
        epochs.last_lr = current_lrs(opt);
        self.epochs = epochs;
        Ok(())
    }
}

/// Sets the learning rates (and momenta) of an update, after checking them all, so that a
/// schedule producing an invalid learning rate changes nothing.
pub(crate) fn apply(opt: &mut dyn LearningRates, scheduler: &str, epoch: i64, update: &Update) -> Result<()> {
    if let Some((group, lr)) = update.lrs.iter().enumerate().find(|(_, lr)| !(lr.is_finite() && **lr >= 0.0)) {
        return Err(Error::Config(format!(
            "{scheduler}: the learning rate of parameter group {group} at epoch {epoch} would be {lr}; \
             optimizers take finite learning rates >= 0"
        )));
    }
    if let Some(momenta) = &update.momenta {
        for (group, &momentum) in momenta.iter().enumerate() {
            opt.set_cycled_momentum(group, momentum)?;
        }
    }
    for (group, &lr) in update.lrs.iter().enumerate() {
        opt.set_lr(group, lr)?;
    }
    Ok(())
}

/// A public scheduler type wrapping `Leaf<$law>`: the [`Scheduler`](super::Scheduler) and
/// `Debug` implementations.
macro_rules! leaf_scheduler {
    ($name:ident) => {
        impl crate::schedule::Scheduler for $name {
            fn name(&self) -> &'static str {
                stringify!($name)
            }

            fn step(&mut self, opt: &mut dyn crate::schedule::LearningRates) -> crate::error::Result<()> {
                self.0.step(opt)
            }

            fn last_lr(&self) -> &[f64] {
                &self.0.epochs.last_lr
            }

            fn state(&self) -> serde_json::Value {
                self.0.state()
            }

            fn load_state(&mut self, state: &serde_json::Value) -> crate::error::Result<()> {
                self.0.load_state(state)
            }
        }

        impl crate::schedule::sealed::Sealed for $name {
            fn leaf_hooks(&mut self) -> Option<&mut dyn crate::schedule::leaf::LeafHooks> {
                Some(&mut self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("last_epoch", &self.0.epochs.last_epoch)
                    .field("last_lr", &self.0.epochs.last_lr)
                    .finish()
            }
        }
    };
}
pub(crate) use leaf_scheduler;
