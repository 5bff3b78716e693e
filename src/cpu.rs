//! The CPU reference backend: the same parameter groups and step semantics as [`Optimizer`],
//! computed by each rule's scalar `cpu_update`. It is the oracle of the GPU tests and the
//! `cpu` backend of the command line.
//!
//! [`Optimizer`]: crate::Optimizer

use crate::checkpoint::{self, Checkpoint, CounterRecord, GroupRecord};
use crate::error::{Error, Result};
use crate::gradients::{Control, GradientOptions, StepCounters};
use crate::params::{
    check_added_group, check_groups, check_sparse_conditioning, dense_refused, no_such_group, sparse_gradient, CollectionTag, ParamGroup, Parameters, TensorId,
    TensorSpec,
};
use crate::rules::{self, CpuTensor, StateSlot, TermsMemo, UpdateRule};
use crate::storage::{Dtype, Precision, RoundingSite};

struct Tensor {
    name: String,
    shape: Vec<usize>,
    group: usize,
    param: Vec<f32>,
    grad: Vec<f32>,
    state: Vec<Vec<f32>>,
    /// Per-tensor state ([`UpdateRule::tensor_state`]), with its keys and shapes.
    tensor_state: Vec<(&'static str, Vec<usize>, Vec<f32>)>,
    /// The mask of the rows its sparse gradient touches (rules with sparse gradients; else empty).
    grad_rows: Vec<u32>,
    /// Whether it has a gradient this step (torch: `grad` is not None).
    present: bool,
    /// The steps of its group it sat out without a gradient.
    missed: u64,
    /// Int8 state: per state array, the codes and block scales its values are the
    /// dequantization of (None while kept in f32 or not int8).
    int8: Vec<Option<(Vec<u8>, Vec<f32>)>>,
}

struct CpuGroup {
    rule: Box<dyn UpdateRule>,
    slots: Vec<StateSlot>,
    tensors: Vec<TensorId>,
    memo: TermsMemo,
    sparse: bool,
    /// Its rule has training and evaluation points (a mode switch).
    switches: bool,
    /// Whether the parameters hold the training point (rules with a mode switch).
    train_mode: bool,
    /// The applied steps when the group was added: its own step count is the total less this.
    step_offset: u64,
    /// Per state slot: its kernel binding's number in stochastic rounding's hash (1 + k for
    /// the k-th state array the kernel declares).
    hash_buffers: Vec<u32>,
}

impl CpuGroup {
    fn new(group: ParamGroup, step_offset: u64) -> Self {
        let kernel = group.rule.kernel();
        let slots = group.rule.state_slots();
        CpuGroup {
            hash_buffers: slots
                .iter()
                .map(|slot| 1 + kernel.state_bindings.iter().position(|b| *b == slot.key).unwrap_or(0) as u32)
                .collect(),
            slots: group.rule.state_slots(),
            sparse: kernel.sparse_rows,
            switches: kernel.mode_switch.is_some(),
            rule: group.rule,
            tensors: group.tensors,
            memo: TermsMemo::default(),
            train_mode: true,
            step_offset,
        }
    }
}

impl Tensor {
    /// A tensor of group `g`, with its initial values and fresh state.
    fn new(spec: TensorSpec, group: &CpuGroup, g: usize) -> Self {
        Tensor {
            grad: vec![0.0; spec.data.len()],
            state: group.slots.iter().map(|slot| vec![slot.init; spec.data.len()]).collect(),
            tensor_state: group
                .rule
                .tensor_state(&spec.shape)
                .into_iter()
                .map(|slot| (slot.key, slot.shape.clone(), vec![slot.init; slot.len()]))
                .collect(),
            grad_rows: if group.sparse { vec![0; rules::sparse_rows(&spec.shape).0] } else { Vec::new() },
            present: true,
            missed: 0,
            int8: vec![None; group.slots.len()],
            name: spec.name,
            shape: spec.shape,
            group: g,
            param: spec.data,
        }
    }
}

/// An optimizer that runs on the CPU, one element at a time.
///
/// ```
/// use wgpu_optim::{rules::Sgd, CpuOptimizer, ParamGroup, Parameters};
/// let mut params = Parameters::new();
/// let w = params.add("w", &[2], vec![1.0, 2.0])?;
/// let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(Sgd { lr: 0.5, ..Sgd::default() }, [w])])?;
/// opt.write_grad(w, &[1.0, -1.0])?;
/// opt.step();
/// assert_eq!(opt.param(w)?, [0.5, 2.5]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct CpuOptimizer {
    tensors: Vec<Tensor>,
    groups: Vec<CpuGroup>,
    gradients: GradientOptions,
    control: Control,
    /// Gradients are conditioned (and the norm computed) before each step.
    conditioned: bool,
    /// The [`Parameters`] collection whose ids name these tensors.
    tag: CollectionTag,
    /// The storage types it rounds to, as the GPU keeps them.
    precision: Precision,
}

impl CpuOptimizer {
    /// Builds the optimizer without gradient conditioning. Errors as torch's constructor does
    /// for invalid hyper-parameters ([`Error::InvalidHyperparameter`]), and with
    /// [`Error::Tensor`] for groups that leave a tensor out, name it twice or are empty.
    pub fn new(params: Parameters, groups: Vec<ParamGroup>) -> Result<Self> {
        Self::with_gradients(params, groups, GradientOptions::default())
    }

    /// With gradient conditioning (clipping, loss scaling, skipping non-finite steps), computed
    /// as `shaders/gradients.wgsl` does.
    pub fn with_gradients(params: Parameters, groups: Vec<ParamGroup>, gradients: GradientOptions) -> Result<Self> {
        check_groups(&params, &groups)?;
        gradients.validate()?;
        let conditioned = gradients.is_active() || groups.iter().any(|g| g.rule.needs_grad_norm());
        check_sparse_conditioning(&groups, conditioned)?;
        let mut owner = vec![0; params.len()];
        for (g, group) in groups.iter().enumerate() {
            for id in &group.tensors {
                owner[id.0] = g;
            }
        }
        let groups: Vec<CpuGroup> = groups.into_iter().map(|group| CpuGroup::new(group, 0)).collect();
        let tag = params.tag();
        let tensors = params.into_specs().into_iter().zip(owner).map(|(spec, g)| Tensor::new(spec, &groups[g], g)).collect();
        let control = Control::new(&gradients);
        Ok(CpuOptimizer { tensors, groups, gradients, control, conditioned, tag, precision: Precision::default() })
    }

    /// Keeps parameters, gradients and state in the storage types of `precision`, rounding
    /// exactly as the GPU's kernels do (see [`crate::storage`]): the twin of
    /// [`OptimizerOptions::precision`](crate::OptimizerOptions::precision). Call it before the
    /// first step; the parameters and state are rounded to their types now.
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        precision.validate()?;
        self.precision = precision;
        if precision.state == Dtype::Int8 {
            for group in &self.groups {
                let kernel = group.rule.kernel();
                if !kernel.is_element_wise() || kernel.mode_switch.is_some() {
                    return Err(Error::Config(format!("{} cannot keep int8 (8-bit blockwise) state yet", group.rule.name())));
                }
            }
        }
        for tensor in &mut self.tensors {
            round_to_storage(tensor, &self.groups[tensor.group].slots, &precision);
        }
        Ok(self)
    }

    /// The storage types it keeps.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// A tensor's parameters as the model reads them: with master weights, the master copy
    /// ([`CpuOptimizer::param`]) rounded to the parameters' type; else the parameters.
    pub fn model_param(&self, id: TensorId) -> Result<Vec<f32>> {
        let param = &self.tensor(id)?.param;
        Ok(param.iter().map(|&x| self.precision.params.round(x)).collect())
    }

    /// One step of every group (skipped, with gradient conditioning, when a gradient is not
    /// finite). Dense gradients are left as written; sparse gradients' row masks are consumed.
    /// A group in eval mode is switched back to train mode first (see [`CpuOptimizer::train`]).
    pub fn step(&mut self) {
        self.train();
        let mut conditioned: Vec<Vec<f32>> = Vec::new();
        if self.conditioned {
            conditioned = self.tensors.iter().map(|t| t.grad.clone()).collect();
            // torch's norm and non-finite check take only the gradients that are not None.
            let present = self.tensors.iter().map(|t| t.present);
            let mut views: Vec<&mut [f32]> =
                conditioned.iter_mut().zip(present).filter(|(_, present)| *present).map(|(g, _)| g.as_mut_slice()).collect();
            if self.control.condition(&self.gradients, &mut views) {
                return;
            }
        } else {
            self.control.step += 1;
        }
        let applied = u64::from(self.control.step);
        for group in &mut self.groups {
            let step = applied - group.step_offset;
            let scalars = group.rule.step_scalars(group.rule.step_terms(step, &mut group.memo));
            for id in &group.tensors {
                let tensor = &mut self.tensors[id.0];
                // torch skips a tensor whose grad is None: nothing of it changes (a sparse
                // gradient's row mask is consumed all the same, as on the GPU).
                if !tensor.present {
                    tensor.missed += 1;
                    tensor.grad_rows.fill(0);
                    continue;
                }
                let taken = step - tensor.missed;
                // A rule counting steps per tensor uses the tensor's own step's terms (the
                // group's memo is not advanced by them).
                let own_scalars = (group.rule.counts_steps_per_tensor() && taken != step).then(|| {
                    let mut memo = group.memo;
                    group.rule.step_scalars(group.rule.step_terms(taken, &mut memo))
                });
                let grad = if conditioned.is_empty() { &tensor.grad } else { &conditioned[id.0] };
                let cpu_tensor = CpuTensor {
                    shape: &tensor.shape,
                    param: &mut tensor.param,
                    grad,
                    state: tensor.state.iter_mut().map(Vec::as_mut_slice).collect(),
                    tensor_state: tensor.tensor_state.iter_mut().map(|(_, _, values)| values.as_mut_slice()).collect(),
                    grad_norm: self.control.grad_norm * self.control.clip_coefficient,
                    grad_rows: &tensor.grad_rows,
                    first_step: taken == 1,
                };
                group.rule.cpu_update(own_scalars.as_ref().unwrap_or(&scalars), cpu_tensor);
                tensor.grad_rows.fill(0);
                store_rounded(&self.precision, group, id.0, tensor, step);
            }
        }
    }

    /// Switches every group whose rule has training and evaluation points (Schedule-Free) to
    /// the training point, as the reference's `optimizer.train()`; others are untouched.
    pub fn train(&mut self) {
        self.switch_mode(true);
    }

    /// Switches every group whose rule has training and evaluation points (Schedule-Free) to
    /// the evaluation point, as the reference's `optimizer.eval()`; others are untouched.
    pub fn eval(&mut self) {
        self.switch_mode(false);
    }

    /// Whether group `group` is in train mode (always, for rules without a mode switch).
    pub fn is_train_mode(&self, group: usize) -> bool {
        self.groups[group].train_mode
    }

    fn switch_mode(&mut self, to_train: bool) {
        for group in &mut self.groups {
            if group.train_mode == to_train || !group.switches {
                continue;
            }
            group.train_mode = to_train;
            if u64::from(self.control.step) == group.step_offset {
                continue; // nothing to move toward before the group's first step creates the state
            }
            for id in &group.tensors {
                let tensor = &mut self.tensors[id.0];
                let taken = u64::from(self.control.step) - group.step_offset - tensor.missed;
                if taken == 0 {
                    continue; // its state does not exist yet
                }
                let cpu_tensor = CpuTensor {
                    shape: &tensor.shape,
                    param: &mut tensor.param,
                    grad: &tensor.grad,
                    state: tensor.state.iter_mut().map(Vec::as_mut_slice).collect(),
                    tensor_state: Vec::new(),
                    grad_norm: 0.0,
                    grad_rows: &[],
                    first_step: false,
                };
                group.rule.cpu_switch_mode(to_train, cpu_tensor);
                store_rounded(&self.precision, group, id.0, tensor, u64::from(self.control.step) - group.step_offset);
            }
        }
    }

    /// Applied and skipped steps, loss scale, last gradient norm; reports the error torch
    /// would have raised (a non-finite norm with `error_if_nonfinite`) once.
    pub fn counters(&mut self) -> Result<StepCounters> {
        self.control.take_error()?;
        Ok(self.control.counters())
    }

    /// The id of the tensor registered as `name`.
    pub fn tensor_id(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name).map(|i| TensorId(i, self.tag))
    }

    /// The tensor an id names here; [`Error::ForeignTensor`] for an id another
    /// [`Parameters`] issued (as for every method taking a [`TensorId`]).
    fn tensor(&self, id: TensorId) -> Result<&Tensor> {
        id.lookup(self.tag, &self.tensors)
    }

    /// The name a tensor was registered under.
    pub fn tensor_name(&self, id: TensorId) -> Result<&str> {
        Ok(&self.tensor(id)?.name)
    }

    /// A tensor's shape.
    pub fn tensor_shape(&self, id: TensorId) -> Result<&[usize]> {
        Ok(&self.tensor(id)?.shape)
    }

    /// The parameter group a tensor belongs to.
    pub fn group_of(&self, id: TensorId) -> Result<usize> {
        Ok(self.tensor(id)?.group)
    }

    /// The number of parameter groups.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// State keys kept for a tensor: per-element state, then per-tensor state.
    pub fn state_keys(&self, id: TensorId) -> Result<Vec<&'static str>> {
        let tensor = self.tensor(id)?;
        let element = self.groups[tensor.group].slots.iter().map(|s| s.key);
        Ok(element.chain(tensor.tensor_state.iter().map(|(key, _, _)| *key)).collect())
    }

    /// A tensor's current parameter values (at the training point unless [`CpuOptimizer::eval`]
    /// was called).
    pub fn param(&self, id: TensorId) -> Result<&[f32]> {
        Ok(&self.tensor(id)?.param)
    }

    /// A tensor's gradient as last written (dense; a sparse gradient's untouched rows keep
    /// their earlier values).
    pub fn grad(&self, id: TensorId) -> Result<&[f32]> {
        Ok(&self.tensor(id)?.grad)
    }

    /// A state tensor by torch's key (per-element or per-tensor state); [`Error::Tensor`]
    /// naming the keys this tensor has when it has no `key`.
    pub fn state(&self, id: TensorId, key: &str) -> Result<&[f32]> {
        let tensor = self.tensor(id)?;
        let slots = &self.groups[tensor.group].slots;
        let per_tensor = tensor.tensor_state.iter().find(|(name, _, _)| *name == key);
        match slots.iter().position(|s| s.key == key) {
            Some(k) => Ok(&tensor.state[k]),
            None if per_tensor.is_some() => Ok(&per_tensor.expect("checked").2),
            None => Err(Error::Tensor(format!(
                "tensor {:?} has no state {key:?}; it has {:?}",
                tensor.name,
                self.state_keys(id)?
            ))),
        }
    }

    /// A group's update rule and hyper-parameters.
    pub fn rule(&self, group: usize) -> &dyn UpdateRule {
        self.groups[group].rule.as_ref()
    }

    /// Sets a group's `momentum` or `betas[0]`, the hyper-parameter that torch's `CyclicLR` and
    /// `OneCycleLR` cycle (see [`UpdateRule::cycled_momentum`]); takes effect at the next step.
    pub fn set_cycled_momentum(&mut self, group: usize, value: f64) -> Result<()> {
        let group = &mut self.groups[group];
        group.rule = rules::changed(group.rule.as_ref(), |rule| rule.set_cycled_momentum(value))?;
        Ok(())
    }

    /// Sets a group's learning rate, as a scheduler does; takes effect at the next step. A
    /// value the rule rejects ([`Error::InvalidHyperparameter`]) leaves the rule as it was.
    pub fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        let group = &mut self.groups[group];
        group.rule = rules::changed(group.rule.as_ref(), |rule| {
            rule.set_lr(lr);
            Ok(())
        })?;
        Ok(())
    }

    /// Changes a group's hyper-parameters between steps, as
    /// [`Optimizer::set_hyperparameters`](crate::Optimizer::set_hyperparameters) does (the
    /// same checks); a refused change leaves the group as it was.
    pub fn set_hyperparameters(&mut self, group: usize, changes: serde_json::Value) -> Result<()> {
        let count = self.groups.len();
        let current = self.groups.get(group).ok_or_else(|| no_such_group(group, count))?;
        let rule = rules::with_changes(current.rule.as_ref(), &changes)?;
        let tensors: Vec<(&str, &[usize])> =
            current.tensors.iter().map(|id| (self.tensors[id.0].name.as_str(), self.tensors[id.0].shape.as_slice())).collect();
        rules::check_rule_change(current.rule.as_ref(), rule.as_ref(), &tensors)?;
        self.groups[group].rule = rule;
        Ok(())
    }

    /// torch's `add_param_group`, as [`Optimizer::add_param_group`](crate::Optimizer::add_param_group)
    /// does: `params`' tensors form a new group under `rule`, counting their steps from here.
    /// Returns their ids in this optimizer (those `params` issued are not this optimizer's).
    pub fn add_param_group(&mut self, params: Parameters, rule: Box<dyn UpdateRule>) -> Result<Vec<TensorId>> {
        check_added_group(|name| self.tensors.iter().any(|t| t.name == name), &params, rule.as_ref(), self.conditioned)?;
        let g = self.groups.len();
        let first = self.tensors.len();
        let ids: Vec<TensorId> = (first..first + params.len()).map(|i| TensorId(i, self.tag)).collect();
        let group = CpuGroup::new(ParamGroup { rule, tensors: ids.clone() }, u64::from(self.control.step));
        self.tensors.extend(params.into_specs().into_iter().map(|spec| Tensor::new(spec, &group, g)));
        self.groups.push(group);
        // The new tensors in the storage types, as the GPU uploads them.
        let precision = self.precision;
        for tensor in &mut self.tensors[first..] {
            round_to_storage(tensor, &self.groups[g].slots, &precision);
        }
        Ok(ids)
    }

    /// Everything needed to resume exactly (see [`crate::checkpoint`]).
    pub fn checkpoint(&self, schedule: Option<serde_json::Value>) -> Checkpoint {
        let mut tensors = Vec::new();
        let mut groups = Vec::new();
        for group in &self.groups {
            let applied = u64::from(self.control.step) - group.step_offset;
            let running = rules::running_after(group.rule.as_ref(), applied, &group.memo);
            let mut missed = std::collections::BTreeMap::new();
            for id in &group.tensors {
                let t = &self.tensors[id.0];
                let element = group.slots.iter().zip(&t.state).zip(&t.int8).map(|((slot, values), int8)| match int8 {
                    Some((codes, _)) => (slot.key, t.shape.clone(), codes.iter().map(|&q| f32::from(q)).collect(), Dtype::Int8),
                    None if self.precision.state == Dtype::Int8 => (slot.key, t.shape.clone(), values.clone(), Dtype::F32),
                    None => (slot.key, t.shape.clone(), values.clone(), self.precision.state),
                });
                let tensor_state = t.tensor_state.iter().map(|(key, shape, values)| (*key, shape.clone(), values.clone(), Dtype::F32));
                let state = element.chain(tensor_state).collect();
                let taken = applied - t.missed;
                let tensor_running = if taken == applied { running } else { rules::running_after(group.rule.as_ref(), taken, &group.memo) };
                let rule = group.rule.as_ref();
                let param = (t.param.clone(), self.precision.updated_params());
                tensors.extend(checkpoint::tensors_of(&t.name, &t.shape, rule, taken, tensor_running, param, state));
                for (slot, int8) in group.slots.iter().zip(&t.int8) {
                    if let Some((_, scales)) = int8 {
                        tensors.push(crate::tensor_file::NamedTensor::f32(format!("{}.{}.absmax", t.name, slot.key), vec![scales.len()], scales.clone()));
                    }
                }
                if t.missed > 0 {
                    missed.insert(t.name.clone(), t.missed);
                }
            }
            let names = group.tensors.iter().map(|id| self.tensors[id.0].name.clone()).collect();
            let record = GroupRecord::of(group.rule.as_ref(), names, running, group.train_mode, group.step_offset);
            groups.push(GroupRecord { missed: (!missed.is_empty()).then_some(missed), ..record });
        }
        Checkpoint {
            optimizer: self.groups[0].rule.name().to_string(),
            groups,
            counters: CounterRecord::of(&self.control),
            gradients: self.gradients.clone(),
            schedule,
            tensors,
            precision: self.precision,
        }
    }

    /// Restores a checkpoint; returns the saved schedule state. One that does not fit
    /// changes nothing.
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<Option<serde_json::Value>> {
        let target = checkpoint::Target::new(
            self.groups.iter().map(|g| (g.tensors.as_slice(), g.rule.as_ref())),
            |id| (self.tensors[id.0].name.as_str(), self.tensors[id.0].shape.as_slice()),
            &self.gradients,
            true,
        );
        if checkpoint.precision != self.precision {
            return Err(Error::Checkpoint(format!(
                "the checkpoint was saved with storage types {:?}; this optimizer keeps {:?}",
                checkpoint.precision, self.precision
            )));
        }
        let mut restore = checkpoint::check(checkpoint, &target)?;
        self.control = checkpoint.counters.control(&self.gradients)?;
        let applied = u64::from(self.control.step);
        for (g, (group, rule)) in self.groups.iter_mut().zip(restore.rules).enumerate() {
            group.step_offset = restore.step_offsets[g];
            group.memo = rules::resumed_memo(rule.as_ref(), applied - group.step_offset, restore.running[g]);
            group.rule = rule;
            group.train_mode = restore.train_modes[g];
        }
        for tensor in &mut self.tensors {
            let mut values = restore.values.remove(&tensor.name).expect("checked").into_iter();
            tensor.param = values.next().expect("the parameter");
            let slots = &self.groups[tensor.group].slots;
            for ((state, slot), int8) in tensor.state.iter_mut().zip(slots).zip(&mut tensor.int8) {
                *state = values.next().expect("checked: one value per state slot");
                // Int8 state: codes, dequantized with their saved block scales.
                if let Some(scales) = restore.absmax.remove(&format!("{}.{}", tensor.name, slot.key)) {
                    let map = crate::storage::int8_map(slot.nonnegative);
                    let codes: Vec<u8> = state.iter().map(|&q| q as u8).collect();
                    *state = codes.iter().enumerate().map(|(k, &q)| map[q as usize] * scales[k / crate::storage::INT8_BLOCK]).collect();
                    *int8 = Some((codes, scales));
                }
            }
            for (_, _, state) in &mut tensor.tensor_state {
                *state = values.next().expect("checked: one value per per-tensor state slot");
            }
            tensor.missed = restore.missed.get(&tensor.name).copied().unwrap_or(0);
        }
        Ok(checkpoint.schedule.clone())
    }

    /// Writes a dense gradient; tensors whose rule takes sparse gradients refuse one, as torch does.
    pub fn write_grad(&mut self, id: TensorId, data: &[f32]) -> Result<()> {
        let group = &self.groups[self.tensor(id)?.group];
        if group.sparse {
            return Err(dense_refused(group.rule.name(), &self.tensors[id.0].name));
        }
        let tensor = &mut self.tensors[id.0];
        if data.len() != tensor.grad.len() {
            return Err(Error::SizeMismatch {
                what: format!("gradient of {:?}", tensor.name),
                expected: tensor.grad.len(),
                actual: data.len(),
            });
        }
        tensor.grad.copy_from_slice(data);
        round_all(&mut tensor.grad, self.precision.grads);
        tensor.present = true;
        Ok(())
    }

    /// torch's `zero_grad()` (`set_to_none=True`): every gradient zeroed and marked absent, so
    /// a tensor given none before the next step is skipped as torch skips a `grad` of None
    /// (the twin of [`Optimizer::zero_grad_set_to_none`](crate::Optimizer::zero_grad_set_to_none)).
    pub fn zero_grad_set_to_none(&mut self) {
        for tensor in &mut self.tensors {
            tensor.grad.fill(0.0);
            tensor.grad_rows.fill(0);
            tensor.present = false;
        }
    }

    /// Marks whether a tensor has a gradient for the next step; [`CpuOptimizer::write_grad`]
    /// marks it present itself.
    pub fn set_gradient_present(&mut self, id: TensorId, present: bool) -> Result<()> {
        self.tensor(id)?;
        self.tensors[id.0].present = present;
        Ok(())
    }

    /// Per tensor (by [`TensorId::index`]): the steps it has taken, torch's `state['step']`.
    pub fn tensor_steps(&self) -> Vec<u64> {
        let applied = u64::from(self.control.step);
        self.tensors.iter().map(|t| applied - self.groups[t.group].step_offset - t.missed).collect()
    }

    /// Writes a row-sparse gradient (rules with sparse gradients, SparseAdam): the touched
    /// rows' indices and their values, row after row (see [`crate::rules::sparse_rows`]). A row
    /// listed twice gets the sum of its values, as torch's `coalesce` gives it.
    pub fn write_sparse_grad(&mut self, id: TensorId, rows: &[u32], values: &[f32]) -> Result<()> {
        let tensor = self.tensor(id)?;
        let (mask, dense) = sparse_gradient(self.groups[tensor.group].sparse, &tensor.name, &tensor.shape, rows, values)?;
        let tensor = &mut self.tensors[id.0];
        let (_, row_length) = rules::sparse_rows(&tensor.shape);
        for (row, touched) in mask.iter().enumerate().filter(|(_, &t)| t != 0) {
            let at = row * row_length;
            tensor.grad[at..at + row_length].copy_from_slice(&dense[at..at + row_length]);
            tensor.grad_rows[row] = *touched;
        }
        tensor.present = true;
        Ok(())
    }
}

/// A tensor's values as the GPU first holds them in the storage types of `precision`.
fn round_to_storage(tensor: &mut Tensor, slots: &[StateSlot], precision: &Precision) {
    round_all(&mut tensor.param, precision.updated_params());
    for ((state, slot), int8) in tensor.state.iter_mut().zip(slots).zip(&mut tensor.int8) {
        match precision.state {
            Dtype::Int8 => *int8 = crate::storage::int8_round_trip(state, slot.nonnegative),
            dtype => round_all(state, dtype),
        }
    }
    round_all(&mut tensor.grad, precision.grads);
}

/// Rounds every value to `dtype` (to nearest even), as a CPU write into a GPU buffer does.
fn round_all(values: &mut [f32], dtype: Dtype) {
    if dtype != Dtype::F32 {
        values.iter_mut().for_each(|x| *x = dtype.round(*x));
    }
}

/// What the kernel's `store_` accessors write after a tensor's update at group step `step`:
/// its parameters (without a master copy) and per-element state, rounded to their types.
fn store_rounded(precision: &Precision, group: &CpuGroup, index: usize, tensor: &mut Tensor, step: u64) {
    let site = |buffer: u32, element: usize| RoundingSite { step: step as u32, tensor: index as u32, buffer, element: element as u32 };
    let params = precision.updated_params();
    if params != Dtype::F32 {
        for (k, x) in tensor.param.iter_mut().enumerate() {
            *x = precision.store(params, *x, site(0, k));
        }
    }
    if precision.state == Dtype::Int8 {
        for ((state, slot), int8) in tensor.state.iter_mut().zip(&group.slots).zip(&mut tensor.int8) {
            *int8 = crate::storage::int8_round_trip(state, slot.nonnegative);
        }
    } else if precision.state != Dtype::F32 {
        for (state, &buffer) in tensor.state.iter_mut().zip(&group.hash_buffers) {
            for (k, x) in state.iter_mut().enumerate() {
                *x = precision.store(precision.state, *x, site(buffer, k));
            }
        }
    }
}
