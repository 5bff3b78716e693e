//! Schedules given as functions of the epoch: `LambdaLR` and `MultiplicativeLR`. They take Rust
//! closures, so they are built in code only (not from a configuration).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::leaf::{leaf_scheduler, Epochs, Law, Leaf, Update};
use super::LearningRates;
use crate::error::{Error, Result};

/// A function of the epoch (torch's `lr_lambda`), shared between a scheduler and its copies.
pub type EpochFn = Arc<dyn Fn(u64) -> f64 + Send + Sync>;

/// One function per parameter group.
#[derive(Clone)]
pub(crate) struct Lambdas(Vec<EpochFn>);

impl Lambdas {
    fn check(&self, scheduler: &str, groups: usize) -> Result<()> {
        if self.0.len() == groups {
            Ok(())
        } else {
            Err(Error::Config(format!("{scheduler}: expected {groups} lr_lambdas (one per parameter group), got {}", self.0.len())))
        }
    }

    /// torch saves a plain function as `None`: the state says only how many there are.
    fn save(&self) -> Map<String, Value> {
        Map::from_iter([("lr_lambdas".to_string(), Value::Array(vec![Value::Null; self.0.len()]))])
    }

    fn load(&self, scheduler: &str, state: &Map<String, Value>) -> Result<()> {
        match state.get("lr_lambdas") {
            Some(Value::Array(entries)) if entries.len() == self.0.len() && entries.iter().all(Value::is_null) => Ok(()),
            other => Err(Error::Config(format!(
                "{scheduler} state: lr_lambdas must be a list of {} nulls (functions are not saved), not {}",
                self.0.len(),
                other.map_or("nothing".to_string(), Value::to_string)
            ))),
        }
    }
}

#[derive(Clone)]
pub(crate) struct LambdaLaw(Lambdas);

impl Law for LambdaLaw {
    const NAME: &'static str = "LambdaLR";

    fn validate(&self, groups: usize) -> Result<()> {
        self.0.check(Self::NAME, groups)
    }

    fn get_lr(&self, epochs: &Epochs, _is_initial: bool, _lrs: &[f64]) -> Result<Update> {
        let epoch = epochs.epoch();
        Ok(epochs.base_lrs.iter().zip(&self.0 .0).map(|(base, lambda)| base * lambda(epoch)).collect::<Vec<_>>().into())
    }

    fn save(&self) -> Map<String, Value> {
        self.0.save()
    }

    fn load(&mut self, state: &Map<String, Value>) -> Result<()> {
        self.0.load(Self::NAME, state)
    }
}

/// `torch.optim.lr_scheduler.LambdaLR`: each learning rate is its initial value times
/// `lr_lambda(epoch)`.
///
/// ```
/// use wgpu_optim::schedule::{LambdaLR, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let mut schedule = LambdaLR::new(&mut opt, |epoch| 0.5f64.powf(epoch as f64))?;
/// schedule.step(&mut opt)?;
/// schedule.step(&mut opt)?;
/// assert_eq!(schedule.last_lr(), [0.25]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct LambdaLR(Leaf<LambdaLaw>);
leaf_scheduler!(LambdaLR);

impl LambdaLR {
    /// One function for every parameter group.
    pub fn new(opt: &mut dyn LearningRates, lr_lambda: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Result<Self> {
        let lambdas = vec![Arc::new(lr_lambda) as EpochFn; opt.group_count()];
        Self::per_group(opt, lambdas)
    }

    /// One function per parameter group (torch's list of `lr_lambda`); another count is an error.
    pub fn per_group(opt: &mut dyn LearningRates, lr_lambdas: Vec<EpochFn>) -> Result<Self> {
        Ok(LambdaLR(Leaf::new(opt, LambdaLaw(Lambdas(lr_lambdas)))?))
    }
}

#[derive(Clone)]
pub(crate) struct MultiplicativeLaw(Lambdas);

impl Law for MultiplicativeLaw {
    const NAME: &'static str = "MultiplicativeLR";

    fn validate(&self, groups: usize) -> Result<()> {
        self.0.check(Self::NAME, groups)
    }

    fn get_lr(&self, epochs: &Epochs, is_initial: bool, lrs: &[f64]) -> Result<Update> {
        if is_initial {
            return Ok(lrs.to_vec().into());
        }
        let epoch = epochs.epoch();
        Ok(lrs.iter().zip(&self.0 .0).map(|(lr, lambda)| lr * lambda(epoch)).collect::<Vec<_>>().into())
    }

    fn save(&self) -> Map<String, Value> {
        self.0.save()
    }

    fn load(&mut self, state: &Map<String, Value>) -> Result<()> {
        self.0.load(Self::NAME, state)
    }
}

/// `torch.optim.lr_scheduler.MultiplicativeLR`: multiplies each learning rate by
/// `lr_lambda(epoch)` at every step (not at construction).
///
/// ```
/// use wgpu_optim::schedule::{MultiplicativeLR, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let mut schedule = MultiplicativeLR::new(&mut opt, |_epoch| 0.5)?;
/// assert_eq!(schedule.last_lr(), [1.0]);
/// schedule.step(&mut opt)?;
/// assert_eq!(schedule.last_lr(), [0.5]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct MultiplicativeLR(Leaf<MultiplicativeLaw>);
leaf_scheduler!(MultiplicativeLR);

impl MultiplicativeLR {
    /// One function for every parameter group.
    pub fn new(opt: &mut dyn LearningRates, lr_lambda: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Result<Self> {
        let lambdas = vec![Arc::new(lr_lambda) as EpochFn; opt.group_count()];
        Self::per_group(opt, lambdas)
    }

    /// One function per parameter group (torch's list of `lr_lambda`); another count is an error.
    pub fn per_group(opt: &mut dyn LearningRates, lr_lambdas: Vec<EpochFn>) -> Result<Self> {
        Ok(MultiplicativeLR(Leaf::new(opt, MultiplicativeLaw(Lambdas(lr_lambdas)))?))
    }
}
