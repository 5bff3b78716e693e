//! Checkpoints: the whole optimizer as one safetensors file, with PyTorch's state key names.
//!
//! Tensors: each parameter under its name, its state as `<name>.<key>` (`exp_avg`, `sum`, ...),
//! and, as 0-d float32 tensors like torch's, `<name>.step` and NAdam's `<name>.mu_product`.
//! Metadata (JSON strings in the safetensors header): `format` = "wgpu-optim-checkpoint",
//! `version`, `optimizer`, `param_groups` (tensor names and hyper-parameters of each group),
//! `counters` (steps recorded, applied, skipped; loss-scale state), `gradients` (the gradient
//! conditioning) and `schedule` (whatever state the caller's schedule saved, or null).
//!
//! Loading checks everything before changing anything: a checkpoint of another optimizer,
//! other tensor names, shapes or groups, other kernel flags (e.g. amsgrad), a corrupt or
//! truncated file or a newer format version is rejected with an error that says what differs.
//! Resuming is bit-exact: N steps straight equal k steps, save, load, N − k steps.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gradients::GradientOptions;
use crate::tensor_file::{read_safetensors_bytes, serialize_safetensors, write_file, NamedTensor};
use crate::rules::{self, UpdateRule};
use crate::storage::{Dtype, Precision};

/// The `format` metadata value that marks a wgpu-optim checkpoint.
pub const CHECKPOINT_FORMAT: &str = "wgpu-optim-checkpoint";
/// 2: each group records its own rule (`optimizer`); version-1 files (one rule) still load.
pub const CHECKPOINT_VERSION: u32 = 2;

/// One parameter group as saved: its rule, tensors and hyper-parameters (torch names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRecord {
    /// The group's rule (its torch class name); absent in version-1 files, whose groups all
    /// use the checkpoint's `optimizer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<String>,
    /// The group's tensor names, in group order.
    pub params: Vec<String>,
    /// The rule's hyper-parameters, by torch's names (as `UpdateRule::hyperparameters`).
    pub hyperparameters: serde_json::Value,
    /// The rule's running values after the applied steps, by the reference's group keys
    /// (Schedule-Free's `weight_sum` and `lr_max`); absent for rules without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<std::collections::BTreeMap<String, f64>>,
    /// Whether the parameters hold the training or the evaluation point (rules with a mode
    /// switch, Schedule-Free); absent for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_mode: Option<bool>,
    /// The optimizer's applied steps when the group was added (`add_param_group`): its own
    /// step count is the applied steps less this. Absent for groups built with the optimizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_offset: Option<u64>,
    /// Gradient presence: per tensor of the group that sat out steps without a gradient, how
    /// many (its `step` is the group's less these). Absent when none did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<std::collections::BTreeMap<String, u64>>,
}

impl GroupRecord {
    /// A group's record: `running` are the values of [`UpdateRule::running_keys`] after the
    /// applied steps, `train_mode` its mode when its rule switches modes, `step_offset` the
    /// applied steps when it was added.
    pub(crate) fn of(rule: &dyn UpdateRule, params: Vec<String>, running: [f64; 2], train_mode: bool, step_offset: u64) -> Self {
        let keys = rule.running_keys();
        GroupRecord {
            step_offset: (step_offset > 0).then_some(step_offset),
            optimizer: Some(rule.name().to_string()),
            params,
            hyperparameters: rule.hyperparameters(),
            running: (!keys.is_empty()).then(|| keys.iter().zip(running).map(|(k, v)| (k.to_string(), v)).collect()),
            train_mode: rule.kernel().mode_switch.is_some().then_some(train_mode),
            missed: None,
        }
    }
}

/// The optimizer's counters as saved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterRecord {
    /// Steps recorded: the applied plus the skipped steps.
    pub steps_recorded: u64,
    /// Updates applied: torch's `state["step"]`.
    pub applied_steps: u64,
    /// Steps skipped because a gradient was not finite.
    pub skipped_steps: u64,
    /// The scale the next backward pass multiplies the loss by (1 without loss scaling).
    pub loss_scale: f32,
    /// Saved rather than recomputed so a restored run unscales exactly as the GPU did.
    pub inv_scale: f32,
    /// Good steps since the loss scale last changed; below the growth interval.
    pub growth_tracker: u32,
}

/// Everything needed to resume an optimizer exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The optimizer's rule (torch class name; the first group's rule when groups differ).
    pub optimizer: String,
    /// The parameter groups, in order.
    pub groups: Vec<GroupRecord>,
    /// Step counters and loss-scale state.
    pub counters: CounterRecord,
    /// The gradient conditioning the optimizer was built with; a restore requires the same.
    pub gradients: GradientOptions,
    /// The caller's schedule state (e.g. `Scheduler::state()`), restored by the caller.
    pub schedule: Option<serde_json::Value>,
    /// Parameters, state, `step` and scalar state, by torch's names, each in the type the
    /// optimizer keeps it in.
    pub tensors: Vec<NamedTensor>,
    /// The storage types the optimizer was built with (stochastic rounding's seed included);
    /// a restore requires the same. All f32 in checkpoints written before storage types.
    pub precision: Precision,
}

fn corrupt(origin: &str, message: impl std::fmt::Display) -> Error {
    Error::Checkpoint(format!("{origin}: {message}"))
}

impl Checkpoint {
    /// Writes the checkpoint (through a temporary file: a failure leaves no partial file).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes().map_err(|e| match e {
            Error::Safetensors { message, .. } => Error::Safetensors { path: path.display().to_string(), message },
            other => other,
        })?;
        write_file(path, &bytes)
    }

    /// The checkpoint as the bytes of its safetensors file, for where there is no file
    /// system (the web: IndexedDB, a download); [`Checkpoint::from_bytes`] reads them back.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let metadata: HashMap<String, String> = [
            ("format", CHECKPOINT_FORMAT.to_string()),
            ("version", CHECKPOINT_VERSION.to_string()),
            ("optimizer", self.optimizer.clone()),
            ("param_groups", to_json(&self.groups)),
            ("counters", to_json(&self.counters)),
            ("gradients", to_json(&self.gradients)),
            ("schedule", to_json(&self.schedule)),
            ("precision", to_json(&self.precision)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        serialize_safetensors(&self.tensors, metadata)
    }

    /// Reads and checks a checkpoint file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        Self::decode(&bytes, &path.display().to_string())
    }

    /// [`Checkpoint::load`] of bytes already in memory (errors begin with "checkpoint: ").
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::decode(bytes, "checkpoint")
    }

    /// `origin` (the file name) prefixes every error.
    fn decode(bytes: &[u8], origin: &str) -> Result<Self> {
        let (tensors, metadata) = read_safetensors_bytes(bytes).map_err(|e| corrupt(origin, e))?;
        let field = |name: &str| {
            metadata
                .get(name)
                .ok_or_else(|| corrupt(origin, format!("not a wgpu-optim checkpoint (no {name:?} in its metadata)")))
        };
        if field("format")? != CHECKPOINT_FORMAT {
            return Err(corrupt(origin, format!("format {:?} is not {CHECKPOINT_FORMAT:?}", field("format")?)));
        }
        let version: u32 = field("version")?.parse().map_err(|_| corrupt(origin, "unreadable format version"))?;
        if version > CHECKPOINT_VERSION {
            return Err(corrupt(
                origin,
                format!("format version {version} is newer than this build reads ({CHECKPOINT_VERSION}); upgrade wgpu-optim"),
            ));
        }
        let parse = |name: &str| -> Result<serde_json::Value> {
            serde_json::from_str(field(name)?).map_err(|e| corrupt(origin, format!("metadata {name:?}: {e}")))
        };
        fn typed<T: serde::de::DeserializeOwned>(origin: &str, name: &str, value: serde_json::Value) -> Result<T> {
            serde_json::from_value(value).map_err(|e| corrupt(origin, format!("metadata {name:?}: {e}")))
        }
        Ok(Checkpoint {
            optimizer: field("optimizer")?.clone(),
            groups: typed(origin, "param_groups", parse("param_groups")?)?,
            counters: typed(origin, "counters", parse("counters")?)?,
            gradients: typed(origin, "gradients", parse("gradients")?)?,
            schedule: typed(origin, "schedule", parse("schedule")?)?,
            precision: match metadata.get("precision") {
                Some(_) => typed(origin, "precision", parse("precision")?)?,
                None => Precision::default(),
            },
            tensors,
        })
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("checkpoint metadata is plain data")
}

/// What an optimizer looks like, for checking that a checkpoint fits it.
pub(crate) struct Target<'a> {
    pub optimizer: &'a str,
    /// Per group: (tensor name, shape) in group order, and the group's rule.
    pub groups: Vec<(Vec<(&'a str, &'a [usize])>, &'a dyn UpdateRule)>,
    pub gradients: &'a GradientOptions,
    /// Whether the optimizer tracks gradient presence (tensors may have missed steps).
    pub presence: bool,
}

impl<'a> Target<'a> {
    /// From each group's tensors and rule, and each tensor's name and shape.
    pub fn new(
        groups: impl Iterator<Item = (&'a [crate::params::TensorId], &'a dyn UpdateRule)>,
        tensor: impl Fn(crate::params::TensorId) -> (&'a str, &'a [usize]),
        gradients: &'a GradientOptions,
        presence: bool,
    ) -> Self {
        let groups: Vec<_> = groups.map(|(ids, rule)| (ids.iter().map(|&id| tensor(id)).collect(), rule)).collect();
        let optimizer = groups.first().map_or("", |(_, rule): &(Vec<_>, &dyn UpdateRule)| rule.name());
        Target { optimizer, groups, gradients, presence }
    }
}

/// A checkpoint checked against a target: the rules to install and, per tensor name, the
/// values to write (parameter first, then state in the rule's slot order).
pub(crate) struct Restore {
    pub rules: Vec<Box<dyn UpdateRule>>,
    /// Per group: its running values after the applied steps, and its mode (train: true).
    pub running: Vec<[f64; 2]>,
    pub train_modes: Vec<bool>,
    /// Per group: the applied steps when it was added.
    pub step_offsets: Vec<u64>,
    /// Per tensor name: the steps it missed without a gradient (gradient presence), if any.
    pub missed: HashMap<String, u64>,
    pub values: HashMap<String, Vec<Vec<f32>>>,
    /// Int8 state (`name.key`): the block scales of the codes in `values`.
    pub absmax: HashMap<String, Vec<f32>>,
}

/// Checks everything a restore needs; changes nothing.
pub(crate) fn check(checkpoint: &Checkpoint, target: &Target) -> Result<Restore> {
    let mismatch = |message: String| Err(Error::Checkpoint(format!("checkpoint does not fit this optimizer: {message}")));
    if checkpoint.optimizer != target.optimizer {
        return mismatch(format!("it holds {} state, this optimizer is {}", checkpoint.optimizer, target.optimizer));
    }
    if checkpoint.groups.len() != target.groups.len() {
        return mismatch(format!("{} parameter groups, this optimizer has {}", checkpoint.groups.len(), target.groups.len()));
    }
    if &checkpoint.gradients != target.gradients {
        return mismatch(format!(
            "gradient conditioning {} differs from this optimizer's {}",
            serde_json::to_string(&checkpoint.gradients).unwrap_or_default(),
            serde_json::to_string(target.gradients).unwrap_or_default()
        ));
    }
    let mut rules = Vec::new();
    let mut running = Vec::new();
    let mut train_modes = Vec::new();
    let mut step_offsets = Vec::new();
    let mut missed = HashMap::new();
    let mut values = HashMap::new();
    let mut absmax = HashMap::new();
    let mut expected = std::collections::HashSet::new();
    for (g, (saved, (tensors, rule))) in checkpoint.groups.iter().zip(&target.groups).enumerate() {
        let names: Vec<&str> = tensors.iter().map(|(name, _)| *name).collect();
        if saved.params != names {
            return mismatch(format!("group {g} holds {:?}, this optimizer's holds {names:?}", saved.params));
        }
        let saved_rule = saved.optimizer.as_deref().unwrap_or(&checkpoint.optimizer);
        if saved_rule != rule.name() {
            return mismatch(format!("group {g} holds {saved_rule} state, this optimizer's group {g} is {}", rule.name()));
        }
        let restored = rules::from_config(saved_rule, &saved.hyperparameters)?;
        // Its hyper-parameters replace the group's, flags included (torch's load_state_dict),
        // as far as they keep the same state and passes.
        if let Err(error) = rules::check_rule_change(*rule, restored.as_ref(), tensors) {
            return mismatch(format!("group {g} was saved with hyper-parameters this optimizer cannot take: {error}"));
        }
        let keys = restored.running_keys();
        // Checkpoints written before NAdam kept `mu_product` as a running value hold it only
        // per tensor, where it is the same for the whole group.
        let from_tensors = || -> Option<std::collections::BTreeMap<String, f64>> {
            let first = names.first()?;
            keys.iter()
                .map(|key| {
                    let name = format!("{first}.{key}");
                    let tensor = checkpoint.tensors.iter().find(|t| t.name == name && t.data.len() == 1)?;
                    Some((key.to_string(), f64::from(tensor.data[0])))
                })
                .collect()
        };
        let saved_running = match &saved.running {
            Some(running) => running.clone(),
            None => from_tensors().unwrap_or_default(),
        };
        if saved_running.len() != keys.len() || keys.iter().any(|k| !saved_running.contains_key(*k)) {
            return mismatch(format!(
                "group {g} saved the running values {:?}; {} keeps {keys:?}",
                saved_running.keys().collect::<Vec<_>>(),
                rule.name()
            ));
        }
        let mut values_after = [0.0; 2];
        for (slot, key) in values_after.iter_mut().zip(keys) {
            *slot = saved_running[*key];
        }
        running.push(values_after);
        let switches = restored.kernel().mode_switch.is_some();
        if saved.train_mode.is_some() != switches {
            return mismatch(format!("group {g}'s mode (train or eval) is {:?}, which {} does not keep", saved.train_mode, rule.name()));
        }
        train_modes.push(saved.train_mode.unwrap_or(true));
        let step_offset = saved.step_offset.unwrap_or(0);
        if step_offset > checkpoint.counters.applied_steps {
            return mismatch(format!(
                "group {g} was added after {step_offset} steps, but only {} were applied",
                checkpoint.counters.applied_steps
            ));
        }
        step_offsets.push(step_offset);
        for (name, count) in saved.missed.iter().flatten() {
            if !names.contains(&name.as_str()) {
                return mismatch(format!("group {g} records missed steps of {name:?}, which it does not hold"));
            }
            if *count > checkpoint.counters.applied_steps - step_offset {
                return mismatch(format!("{name:?} missed {count} steps, more than its group applied"));
            }
            if *count > 0 && !target.presence {
                return mismatch(format!(
                    "{name:?} missed {count} steps without a gradient; restore it into an optimizer that tracks gradient \
                     presence (OptimizerOptions::gradient_presence)"
                ));
            }
            missed.insert(name.clone(), *count);
        }
        for (name, shape) in tensors {
            let mut tensor_values = Vec::new();
            let element = restored.state_slots().into_iter().map(|s| (format!(".{}", s.key), shape.to_vec()));
            let per_tensor = restored.tensor_state(shape).into_iter().map(|s| (format!(".{}", s.key), s.shape));
            let keys: Vec<(String, Vec<usize>)> = std::iter::once((String::new(), shape.to_vec())).chain(element).chain(per_tensor).collect();
            for (suffix, expected_shape) in keys {
                let key = format!("{name}{suffix}");
                let Some(saved) = checkpoint.tensor(&key) else {
                    return mismatch(format!("it has no tensor {key:?}"));
                };
                let expected_len: usize = expected_shape.iter().product();
                if saved.shape != expected_shape || saved.data.len() != expected_len {
                    return mismatch(format!(
                        "{key:?} has shape {:?}, this optimizer's has {expected_shape:?} (tensor {name:?} of shape {shape:?})",
                        saved.shape
                    ));
                }
                // Int8 state of a quantized tensor: codes, and their block scales beside them.
                let int8 = checkpoint.precision.state == Dtype::Int8
                    && !suffix.is_empty()
                    && restored.state_slots().iter().any(|s| suffix == format!(".{}", s.key))
                    && expected_len >= crate::storage::INT8_MIN_ELEMENTS;
                if int8 != (saved.dtype == Dtype::Int8) {
                    let want = if int8 { "int8 codes" } else { "f32, f16 or bf16 values" };
                    return mismatch(format!("{key:?} is {}, where {want} were expected", saved.dtype));
                }
                if int8 {
                    let scales_key = format!("{key}.absmax");
                    let blocks = expected_len.div_ceil(crate::storage::INT8_BLOCK);
                    match checkpoint.tensor(&scales_key) {
                        Some(t) if t.shape == [blocks] && t.dtype == Dtype::F32 && t.data.iter().all(|x| x.is_finite() && *x >= 0.0) => {
                            absmax.insert(key.clone(), t.data.clone());
                        }
                        _ => return mismatch(format!("{scales_key:?} is missing or not {blocks} non-negative f32 block scales")),
                    }
                    expected.insert(scales_key);
                }
                tensor_values.push(saved.data.clone());
                expected.insert(key);
            }
            expected.insert(format!("{name}.step"));
            expected.extend(restored.scalar_state([1.0, 0.0]).into_iter().map(|(key, _)| format!("{name}.{key}")));
            values.insert(name.to_string(), tensor_values);
        }
        rules.push(restored);
    }
    if let Some(extra) = checkpoint.tensors.iter().find(|t| !expected.contains(&t.name)) {
        return mismatch(format!("it has tensor {:?}, which this optimizer does not", extra.name));
    }
    let c = &checkpoint.counters;
    if c.applied_steps.checked_add(c.skipped_steps) != Some(c.steps_recorded) {
        return Err(Error::Checkpoint(format!(
            "corrupt counters: {} applied + {} skipped != {} recorded",
            c.applied_steps, c.skipped_steps, c.steps_recorded
        )));
    }
    Ok(Restore { rules, running, train_modes, step_offsets, missed, values, absmax })
}

impl CounterRecord {
    pub(crate) fn of(control: &crate::gradients::Control) -> Self {
        CounterRecord {
            steps_recorded: u64::from(control.step) + u64::from(control.skipped),
            applied_steps: u64::from(control.step),
            skipped_steps: u64::from(control.skipped),
            loss_scale: control.loss_scale,
            inv_scale: control.inv_scale,
            growth_tracker: control.growth_tracker,
        }
    }

    /// The control block these counters describe.
    pub(crate) fn control(&self, gradients: &GradientOptions) -> Result<crate::gradients::Control> {
        let narrow = |what: &str, value: u64| {
            u32::try_from(value).map_err(|_| Error::Checkpoint(format!("corrupt counters: {what} = {value}")))
        };
        // A scale the GPU could have reached: finite (GradScaler never grows it to infinity)
        // and not negative; its reciprocal may be infinite only if the scale underflowed to 0.
        if !(self.loss_scale.is_finite() && self.loss_scale >= 0.0) || self.inv_scale.is_nan() || self.inv_scale < 0.0 {
            return Err(Error::Checkpoint(format!(
                "corrupt counters: loss_scale = {}, inv_scale = {}",
                self.loss_scale, self.inv_scale
            )));
        }
        // The tracker restarts at 0 when it reaches the growth interval; a larger one would
        // count past u32::MAX.
        if let Some(scale) = &gradients.loss_scale {
            if self.growth_tracker >= scale.growth_interval {
                return Err(Error::Checkpoint(format!(
                    "corrupt counters: growth_tracker = {} is not below the growth interval {}",
                    self.growth_tracker, scale.growth_interval
                )));
            }
        }
        let mut control = crate::gradients::Control::new(gradients);
        control.step = narrow("applied_steps", self.applied_steps)?;
        control.skipped = narrow("skipped_steps", self.skipped_steps)?;
        control.loss_scale = self.loss_scale;
        control.inv_scale = self.inv_scale;
        control.step_inv_scale = self.inv_scale;
        control.growth_tracker = self.growth_tracker;
        Ok(control)
    }
}

/// The tensors of a checkpoint: per tensor, its parameter, state (key, shape, values: the
/// per-element state, then the per-tensor state), `step` and scalar state.
pub(crate) fn tensors_of(
    name: &str,
    shape: &[usize],
    rule: &dyn UpdateRule,
    applied_steps: u64,
    running: [f64; 2],
    param: (Vec<f32>, Dtype),
    state: Vec<(&'static str, Vec<usize>, Vec<f32>, Dtype)>,
) -> Vec<NamedTensor> {
    let mut out = vec![NamedTensor { name: name.to_string(), shape: shape.to_vec(), data: param.0, dtype: param.1 }];
    for (key, shape, data, dtype) in state {
        out.push(NamedTensor { name: format!("{name}.{key}"), shape, data, dtype });
    }
    out.push(NamedTensor::f32(format!("{name}.step"), Vec::new(), vec![applied_steps as f32]));
    for (key, value) in rule.scalar_state(running) {
        out.push(NamedTensor::f32(format!("{name}.{key}"), Vec::new(), vec![value]));
    }
    out
}
