//! Composition: `SequentialLR` (one scheduler after another, switching at milestones) and
//! `ChainedScheduler` (every scheduler at every step).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::leaf::LeafHooks;
use super::{
    bisect_right, check_group_count, check_state_keys, current_lrs, parse_args, parse_state, single_from_config, split_config,
    take_last_epoch, LearningRates, Scheduler,
};
use crate::error::{Error, Result};

/// Checks the children of a composite and replays their construction on `opt` in order, as
/// torch built them: every child's `base_lrs` then come from the `initial_lr` the first child
/// recorded (torch's `setdefault`), not from the learning rates an earlier child applied.
/// Returns the groups' `initial_lr` afterwards.
fn replay_construction(composite: &str, opt: &mut dyn LearningRates, schedulers: &mut [Box<dyn Scheduler>]) -> Result<Vec<f64>> {
    if schedulers.is_empty() {
        return Err(Error::Config(format!("{composite} expects at least one scheduler, but got none")));
    }
    let groups = opt.group_count();
    let mut hooks = Vec::with_capacity(schedulers.len());
    for (index, scheduler) in schedulers.iter_mut().enumerate() {
        let name = scheduler.name();
        let Some(leaf) = scheduler.leaf_hooks() else {
            return Err(Error::Config(format!(
                "{composite}: the scheduler at index {index} is a {name}; nested composites are not supported \
                 (torch's SequentialLR cannot restart one at a milestone either)"
            )));
        };
        if leaf.lrs_before_construction().len() != groups {
            return Err(Error::Config(format!(
                "{composite}: the scheduler at index {index} ({name}) was built for {} parameter groups, the \
                 optimizer has {groups}; all schedulers must belong to the same optimizer",
                leaf.lrs_before_construction().len()
            )));
        }
        if !leaf.is_fresh() {
            return Err(Error::Config(format!(
                "{composite}: the scheduler at index {index} ({name}) has already stepped; pass schedulers \
                 just built"
            )));
        }
        hooks.push(leaf);
    }
    let before = hooks[0].lrs_before_construction().to_vec();
    for (group, &lr) in before.iter().enumerate() {
        opt.set_lr(group, lr)?;
    }
    let mut initial: Option<Vec<f64>> = None;
    for leaf in hooks {
        initial = Some(leaf.attach(opt, initial.as_deref())?);
    }
    Ok(initial.unwrap_or(before))
}

fn leaf(scheduler: &mut Box<dyn Scheduler>) -> &mut dyn LeafHooks {
    scheduler.leaf_hooks().unwrap_or_else(|| unreachable!("composites hold only single schedulers (checked at construction)"))
}

/// Loads each child's saved state, all or none.
fn load_children(composite: &str, schedulers: &mut [Box<dyn Scheduler>], states: &Value) -> Result<()> {
    let Value::Array(states) = states else {
        return Err(Error::Config(format!("{composite} state: _schedulers must be a list, not {states}")));
    };
    if states.len() != schedulers.len() {
        return Err(Error::Config(format!(
            "{composite} state holds {} schedulers, this one has {}",
            states.len(),
            schedulers.len()
        )));
    }
    let saved: Vec<Value> = schedulers.iter().map(|s| s.state()).collect();
    for (index, state) in states.iter().enumerate() {
        if let Err(error) = schedulers[index].load_state(state) {
            for (scheduler, old) in schedulers.iter_mut().zip(&saved).take(index) {
                scheduler.load_state(old)?;
            }
            return Err(error);
        }
    }
    Ok(())
}

// ---- SequentialLR ----

/// `torch.optim.lr_scheduler.SequentialLR`: runs `schedulers[0]` until `milestones[0]`, then
/// `schedulers[1]`, ... Each scheduler after the first starts at its milestone from epoch 0 (its
/// closed form there, as torch's `_update_lr(0)`).
///
/// Build the children on the optimizer one after another, then pass them here, as in torch;
/// construction replays theirs (see the [module docs](super)) and applies the first active
/// child's epoch 0. A failing step leaves the composite unchanged.
///
/// ```
/// use wgpu_optim::schedule::{ExponentialLR, LinearLR, Scheduler, SequentialLR};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let warmup = LinearLR::new(&mut opt, 0.5, 1.0, 2)?;
/// let decay = ExponentialLR::new(&mut opt, 0.5)?;
/// let mut schedule = SequentialLR::new(&mut opt, vec![Box::new(warmup), Box::new(decay)], vec![2])?;
/// let mut lrs = vec![schedule.last_lr()[0]];
/// for _ in 0..4 {
///     schedule.step(&mut opt)?;
///     lrs.push(schedule.last_lr()[0]);
/// }
/// assert_eq!(lrs, [0.5, 0.75, 1.0, 0.5, 0.25]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct SequentialLR {
    schedulers: Vec<Box<dyn Scheduler>>,
    milestones: Vec<u64>,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl SequentialLR {
    /// Errors: no schedulers, `milestones.len() != schedulers.len() - 1`, milestones out of
    /// order, a composite or already stepped child, a child of another optimizer.
    pub fn new(opt: &mut dyn LearningRates, mut schedulers: Vec<Box<dyn Scheduler>>, milestones: Vec<u64>) -> Result<Self> {
        const NAME: &str = "SequentialLR";
        if schedulers.is_empty() {
            return Err(Error::Config(format!("{NAME} expects at least one scheduler, but got none")));
        }
        if milestones.len() + 1 != schedulers.len() {
            return Err(Error::Config(format!(
                "{NAME} expects one more scheduler than milestones, but got {} schedulers and {} milestones",
                schedulers.len(),
                milestones.len()
            )));
        }
        if milestones.windows(2).any(|pair| pair[0] > pair[1]) {
            return Err(Error::Config(format!("{NAME}: milestones must be in increasing order, got {milestones:?}")));
        }
        let initial = replay_construction(NAME, opt, &mut schedulers)?;
        // torch: reset to initial_lr, undo every child's initial step, redo the first active one's.
        for (group, &lr) in initial.iter().enumerate() {
            opt.set_lr(group, lr)?;
        }
        for scheduler in &mut schedulers {
            leaf(scheduler).undo_initial_step();
        }
        let active = bisect_right(&milestones, 0);
        leaf(&mut schedulers[active]).initial_step(opt)?;
        let last_lr = schedulers[active].last_lr().to_vec();
        Ok(SequentialLR { schedulers, milestones, last_epoch: 0, last_lr })
    }

    /// The children, in order.
    pub fn schedulers(&self) -> &[Box<dyn Scheduler>] {
        &self.schedulers
    }
}

impl Scheduler for SequentialLR {
    fn name(&self) -> &'static str {
        "SequentialLR"
    }

    fn step(&mut self, opt: &mut dyn LearningRates) -> Result<()> {
        let epoch = self.last_epoch + 1;
        let active = bisect_right(&self.milestones, epoch);
        let scheduler = &mut self.schedulers[active];
        if active > 0 && i128::from(self.milestones[active - 1]) == i128::from(epoch) {
            leaf(scheduler).restart_at_epoch_zero(opt)?;
        } else {
            scheduler.step(opt)?;
        }
        self.last_lr = scheduler.last_lr().to_vec();
        self.last_epoch = epoch;
        Ok(())
    }

    fn last_lr(&self) -> &[f64] {
        &self.last_lr
    }

    fn state(&self) -> Value {
        Value::Object(Map::from_iter([
            ("_milestones".to_string(), Value::from(self.milestones.clone())),
            ("last_epoch".to_string(), Value::from(self.last_epoch)),
            ("_last_lr".to_string(), Value::from(self.last_lr.clone())),
            ("_schedulers".to_string(), Value::Array(self.schedulers.iter().map(|s| s.state()).collect())),
        ]))
    }

    fn load_state(&mut self, state: &Value) -> Result<()> {
        #[derive(Deserialize)]
        struct Own {
            #[serde(rename = "_milestones")]
            milestones: Vec<u64>,
            last_epoch: i64,
            #[serde(rename = "_last_lr")]
            last_lr: Vec<f64>,
            #[serde(rename = "_schedulers")]
            schedulers: Value,
        }
        let map = check_state_keys(self.name(), state, &self.state())?;
        let own: Own = parse_state(self.name(), map)?;
        if own.milestones.len() != self.milestones.len() || own.milestones.windows(2).any(|pair| pair[0] > pair[1]) {
            return Err(Error::Config(format!(
                "SequentialLR state: _milestones must be {} increasing epochs, got {:?}",
                self.milestones.len(),
                own.milestones
            )));
        }
        check_group_count("SequentialLR", own.last_lr.len(), self.last_lr.len())?;
        super::leaf::check_loaded_steps("SequentialLR", "last_epoch", own.last_epoch.into())?;
        load_children("SequentialLR", &mut self.schedulers, &own.schedulers)?;
        self.milestones = own.milestones;
        self.last_epoch = own.last_epoch;
        self.last_lr = own.last_lr;
        Ok(())
    }
}

impl super::sealed::Sealed for SequentialLR {
    fn leaf_hooks(&mut self) -> Option<&mut dyn LeafHooks> {
        None
    }
}

impl std::fmt::Debug for SequentialLR {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequentialLR")
            .field("schedulers", &self.schedulers)
            .field("milestones", &self.milestones)
            .field("last_epoch", &self.last_epoch)
            .field("last_lr", &self.last_lr)
            .finish()
    }
}

// ---- ChainedScheduler ----

/// `torch.optim.lr_scheduler.ChainedScheduler`: steps every scheduler, in order, at each step,
/// so chainable (multiplicative) schedules compose, e.g. a warm-up factor on top of a decay.
///
/// Build the children on the optimizer one after another, then pass them here, as in torch;
/// construction replays theirs (see the [module docs](super)). A failing step restores every
/// child and the optimizer's learning rates and momenta to what they were before it.
///
/// ```
/// use wgpu_optim::schedule::{ChainedScheduler, ConstantLR, ExponentialLR, Scheduler};
/// # use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// # let mut params = Parameters::new();
/// # let w = params.add("w", &[1], vec![0.0])?;
/// # let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 1.0, ..Sgd::default() }, [w])])?;
/// let warmup = ConstantLR::new(&mut opt, 0.5, 2)?;
/// let decay = ExponentialLR::new(&mut opt, 0.5)?;
/// let mut schedule = ChainedScheduler::new(&mut opt, vec![Box::new(warmup), Box::new(decay)])?;
/// let mut lrs = vec![schedule.last_lr()[0]];
/// for _ in 0..3 {
///     schedule.step(&mut opt)?;
///     lrs.push(schedule.last_lr()[0]);
/// }
/// assert_eq!(lrs, [0.5, 0.25, 0.25, 0.125]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct ChainedScheduler {
    schedulers: Vec<Box<dyn Scheduler>>,
    last_lr: Vec<f64>,
}

impl ChainedScheduler {
    /// Errors: no schedulers, a composite or already stepped child, a child of another optimizer.
    pub fn new(opt: &mut dyn LearningRates, mut schedulers: Vec<Box<dyn Scheduler>>) -> Result<Self> {
        replay_construction("ChainedScheduler", opt, &mut schedulers)?;
        Ok(ChainedScheduler { schedulers, last_lr: current_lrs(opt) })
    }

    /// The children, in order.
    pub fn schedulers(&self) -> &[Box<dyn Scheduler>] {
        &self.schedulers
    }
}

impl Scheduler for ChainedScheduler {
    fn name(&self) -> &'static str {
        "ChainedScheduler"
    }

    fn step(&mut self, opt: &mut dyn LearningRates) -> Result<()> {
        let saved: Vec<Value> = self.schedulers.iter().map(|s| s.state()).collect();
        let lrs = current_lrs(opt);
        let momenta: Vec<Option<f64>> = (0..opt.group_count()).map(|g| opt.cycled_momentum(g).map(|m| m.value)).collect();
        for index in 0..self.schedulers.len() {
            if let Err(error) = self.schedulers[index].step(opt) {
                // Undo the children that stepped, and what they set.
                for (scheduler, old) in self.schedulers.iter_mut().zip(&saved).take(index) {
                    scheduler.load_state(old)?;
                }
                for (group, (&lr, momentum)) in lrs.iter().zip(&momenta).enumerate() {
                    opt.set_lr(group, lr)?;
                    if let Some(momentum) = momentum {
                        if opt.cycled_momentum(group).map(|m| m.value) != Some(*momentum) {
                            opt.set_cycled_momentum(group, *momentum)?;
                        }
                    }
                }
                return Err(error);
            }
        }
        self.last_lr = current_lrs(opt);
        Ok(())
    }

    fn last_lr(&self) -> &[f64] {
        &self.last_lr
    }

    fn state(&self) -> Value {
        Value::Object(Map::from_iter([
            ("_last_lr".to_string(), Value::from(self.last_lr.clone())),
            ("_schedulers".to_string(), Value::Array(self.schedulers.iter().map(|s| s.state()).collect())),
        ]))
    }

    fn load_state(&mut self, state: &Value) -> Result<()> {
        #[derive(Deserialize)]
        struct Own {
            #[serde(rename = "_last_lr")]
            last_lr: Vec<f64>,
            #[serde(rename = "_schedulers")]
            schedulers: Value,
        }
        let map = check_state_keys(self.name(), state, &self.state())?;
        let own: Own = parse_state(self.name(), map)?;
        check_group_count("ChainedScheduler", own.last_lr.len(), self.last_lr.len())?;
        load_children("ChainedScheduler", &mut self.schedulers, &own.schedulers)?;
        self.last_lr = own.last_lr;
        Ok(())
    }
}

impl super::sealed::Sealed for ChainedScheduler {
    fn leaf_hooks(&mut self) -> Option<&mut dyn LeafHooks> {
        None
    }
}

impl std::fmt::Debug for ChainedScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainedScheduler").field("schedulers", &self.schedulers).field("last_lr", &self.last_lr).finish()
    }
}

// ---- configuration ----

/// The children of a composite configuration, built in list order.
fn build_children(composite: &str, configs: Vec<Value>, opt: &mut dyn LearningRates) -> Result<Vec<Box<dyn Scheduler>>> {
    let build = |config: &Value, opt: &mut dyn LearningRates| {
        let (name, args) = split_config(config)?;
        single_from_config(&name, args, opt)
    };
    configs
        .iter()
        .enumerate()
        .map(|(index, config)| {
            build(config, opt).map_err(|error| {
                let message = match error {
                    Error::Config(message) => message,
                    other => other.to_string(),
                };
                Error::Config(format!("{composite} schedulers[{index}]: {message}"))
            })
        })
        .collect()
}

pub(crate) fn sequential_from_config(mut args: Map<String, Value>, opt: &mut dyn LearningRates) -> Result<Box<dyn Scheduler>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SequentialArgs {
        schedulers: Vec<Value>,
        milestones: Vec<u64>,
    }
    take_last_epoch("SequentialLR", &mut args)?;
    let a: SequentialArgs = parse_args("SequentialLR", args)?;
    let schedulers = build_children("SequentialLR", a.schedulers, opt)?;
    Ok(Box::new(SequentialLR::new(opt, schedulers, a.milestones)?))
}

pub(crate) fn chained_from_config(args: Map<String, Value>, opt: &mut dyn LearningRates) -> Result<Box<dyn Scheduler>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ChainedArgs {
        schedulers: Vec<Value>,
    }
    let a: ChainedArgs = parse_args("ChainedScheduler", args)?;
    let schedulers = build_children("ChainedScheduler", a.schedulers, opt)?;
    Ok(Box::new(ChainedScheduler::new(opt, schedulers)?))
}
