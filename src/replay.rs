//! Replay: apply an optimizer to recorded gradients, for cross-framework checks.
//!
//! Inputs (the `wgpu-optim replay` interface):
//! - `run.json`: `{"optimizer": "AdamW", "hyperparameters": {...torch names...},
//!   "param_groups": [{"params": ["w1", "b1"], ...overrides}]}`; `param_groups` is optional
//!   (default: one group with every tensor, in name order). A group may name its own rule,
//!   `{"params": [...], "optimizer": "Muon", ...}`: its hyper-parameters are then that rule's
//!   defaults and the group's own keys, not the top-level `hyperparameters`;
//! - params: the initial float32 tensors by name;
//! - grads: for each parameter `w` a float32 tensor `w` of shape `[steps, *shape(w)]`. A
//!   parameter whose rule takes sparse gradients (SparseAdam) has them in this form too, zero
//!   outside the touched rows, plus `w.rows`, float32 `[steps, rows]`: 1 where the step's
//!   sparse gradient touches the row, 0 elsewhere. A row is a row of the last dimension (torch's
//!   `sparse_dim = ndim - 1`, an embedding's rows), or one element of a vector
//!   ([`crate::rules::sparse_rows`]). A parameter may also have `w.present`, float32
//!   `[steps]`: 0 on the steps where torch's `grad` is None (the tensor is skipped; the
//!   replay then tracks gradient presence), 1 elsewhere.
//!
//! Rules with training and evaluation points (Schedule-Free) start in train mode; run.json's
//! `"eval_every": K` calls `eval()` then `train()` after every K-th step, as a training loop
//! that evaluates does, and `"eval_at_end": true` calls `eval()` after the last step (the
//! output's parameters are then the evaluation point).
//!
//! Output: the final parameters under their names and the optimizer state as
//! `<name>.<key>` with torch's state keys (`exp_avg`, `mu_product`, ...), all float32; as in
//! torch, no state for a tensor that never had a gradient.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::checkpoint::Checkpoint;
use crate::context::BackendChoice;
#[cfg(not(target_arch = "wasm32"))]
use crate::context::GpuContext;
use crate::cpu::CpuOptimizer;
use crate::error::{Error, Result};
use crate::gradients::{ClipGradNorm, GradientOptions, LossScale};
#[cfg(not(target_arch = "wasm32"))]
use crate::optimizer::{Optimizer, OptimizerOptions};
use crate::params::{ParamGroup, Parameters, TensorId};
use crate::rules;
use crate::schedule::{self, LearningRates};
pub use crate::tensor_file::{read_safetensors, write_safetensors, NamedTensor};

/// The contents of `run.json`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The rule's torch class name (e.g. "AdamW").
    pub optimizer: String,
    /// Hyper-parameters by torch's names; the rule's defaults fill the rest.
    #[serde(default)]
    pub hyperparameters: serde_json::Map<String, serde_json::Value>,
    /// Torch-style groups: each a `"params"` list of tensor names plus overrides (and
    /// optionally its own `"optimizer"`); absent: one group of every tensor, in name order.
    #[serde(default)]
    pub param_groups: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
    /// `{"name": "<torch scheduler>", ...arguments}`, stepped after every optimizer step.
    #[serde(default)]
    pub scheduler: Option<serde_json::Value>,
    /// `{"max_norm": ..., "norm_type": 2 | "inf", "error_if_nonfinite": false}`, applied to
    /// all gradients together before each step.
    #[serde(default)]
    pub clip_grad_norm: Option<ClipGradNorm>,
    /// `clip_grad_value_` before each step (before norm clipping).
    #[serde(default)]
    pub clip_grad_value: Option<f64>,
    /// Skip steps whose gradients are not all finite.
    #[serde(default)]
    pub skip_nonfinite: bool,
    /// Dynamic loss scaling: the recorded gradients are scaled.
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
    /// `eval()` then `train()` after every K-th step (rules with a mode switch, Schedule-Free).
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// `eval()` after the last step.
    #[serde(default)]
    pub eval_at_end: bool,
}

impl RunConfig {
    /// Parses `run.json` and validates its gradient conditioning; a malformed file is an
    /// [`Error::Config`].
    pub fn from_json(text: &str) -> Result<Self> {
        let config: RunConfig = serde_json::from_str(text).map_err(|e| Error::Config(format!("run.json: {e}")))?;
        config.gradient_options().validate()?;
        Ok(config)
    }

    /// The gradient conditioning the config asks for.
    pub fn gradient_options(&self) -> GradientOptions {
        GradientOptions {
            clip_grad_norm: self.clip_grad_norm.clone(),
            clip_grad_value: self.clip_grad_value,
            skip_nonfinite: self.skip_nonfinite,
            loss_scale: self.loss_scale.clone(),
        }
    }

    /// Torch-style parameter groups over `params`: each group's overrides merged over the
    /// top-level hyper-parameters, validated. A group with its own `"optimizer"` takes that
    /// rule's defaults and its own keys only (torch would need a second optimizer for it).
    pub fn groups(&self, params: &Parameters) -> Result<Vec<ParamGroup>> {
        let build = |overrides: &serde_json::Map<String, serde_json::Value>, names: Vec<String>| {
            let mut overrides = overrides.clone();
            let own = match overrides.remove("optimizer") {
                None => None,
                Some(serde_json::Value::String(name)) => Some(name),
                Some(other) => return Err(Error::Config(format!("a parameter group's \"optimizer\" must be a class name, not {other}"))),
            };
            if let Some(name) = own {
                if !rules::OPTIMIZER_NAMES.contains(&name.as_str()) {
                    return Err(Error::UnknownOptimizer(name, rules::OPTIMIZER_NAMES.join(", ")));
                }
                let rule = rules::from_config(&name, &serde_json::Value::Object(overrides))?;
                return Ok(ParamGroup::from_boxed(rule, self.ids(params, &names)?));
            }
            let mut merged = self.hyperparameters.clone();
            merged.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
            // torch.optim.Adagrad fills every group's `sum` from the constructor's
            // initial_accumulator_value; a group's own value is accepted and ignored.
            if self.optimizer == "Adagrad" {
                match self.hyperparameters.get("initial_accumulator_value") {
                    Some(top) => merged.insert("initial_accumulator_value".into(), top.clone()),
                    None => merged.remove("initial_accumulator_value"),
                };
            }
            let rule = rules::from_config(&self.optimizer, &serde_json::Value::Object(merged))?;
            Ok(ParamGroup::from_boxed(rule, self.ids(params, &names)?))
        };
        match &self.param_groups {
            None => {
                let mut names: Vec<String> = params.iter().map(|(_, t)| t.name.clone()).collect();
                names.sort();
                Ok(vec![build(&serde_json::Map::new(), names)?])
            }
            Some(groups) => groups
                .iter()
                .enumerate()
                .map(|(g, group)| {
                    let mut overrides = group.clone();
                    let names = overrides
                        .remove("params")
                        .ok_or_else(|| Error::Config(format!("param_groups[{g}] has no \"params\" list")))?;
                    let names: Vec<String> = serde_json::from_value(names)
                        .map_err(|e| Error::Config(format!("param_groups[{g}].params must be a list of tensor names: {e}")))?;
                    build(&overrides, names)
                })
                .collect(),
        }
    }
}

impl RunConfig {
    fn ids(&self, params: &Parameters, names: &[String]) -> Result<Vec<TensorId>> {
        names
            .iter()
            .map(|name| {
                params.id(name).ok_or_else(|| Error::Config(format!("param_groups names {name:?}, which is not in the params file")))
            })
            .collect()
    }
}

/// A replay, loaded and checked: parameters, per-step gradients and groups.
#[derive(Debug)]
pub struct ReplayCase {
    /// The parsed `run.json`.
    pub config: RunConfig,
    /// The initial parameters; `grads` and `grad_rows` follow their order.
    pub params: Vec<NamedTensor>,
    /// `grads[k]` is the gradient of `params[k]` for every step, step-major.
    pub grads: Vec<Vec<f32>>,
    /// `grad_rows[k]`: for a sparse gradient, the mask of its touched rows, step-major.
    pub grad_rows: Vec<Option<Vec<f32>>>,
    /// `present[k]`: per step, 0 where `params[k]` has no gradient (torch's None).
    pub present: Vec<Option<Vec<f32>>>,
    /// Steps recorded: the first dimension of every gradient.
    pub steps: usize,
}

impl ReplayCase {
    /// Loads the three inputs and checks that they fit together.
    pub fn load(config: &Path, params: &Path, grads: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(config).map_err(|source| Error::Io { path: config.display().to_string(), source })?;
        Self::new(RunConfig::from_json(&text)?, read_safetensors(params)?, read_safetensors(grads)?)
    }

    /// Checks that the inputs fit together: a gradient `[steps, *shape]` for every parameter,
    /// the same `steps` for all, row masks of shape `[steps, rows]`, no other tensors, and
    /// groups that name only parameters. A mismatch of tensors is an [`Error::Tensor`]; a bad
    /// group fails as in [`RunConfig::groups`].
    pub fn new(config: RunConfig, params: Vec<NamedTensor>, grads: Vec<NamedTensor>) -> Result<Self> {
        if params.is_empty() {
            return Err(Error::Tensor("the params file holds no tensors".into()));
        }
        let mut by_name: BTreeMap<String, NamedTensor> = grads.into_iter().map(|g| (g.name.clone(), g)).collect();
        let mut steps = None;
        let mut per_param = Vec::with_capacity(params.len());
        let mut grad_rows = Vec::with_capacity(params.len());
        let mut present = Vec::with_capacity(params.len());
        for p in &params {
            let g = by_name
                .remove(&p.name)
                .ok_or_else(|| Error::Tensor(format!("the grads file has no tensor {:?}", p.name)))?;
            if g.shape.len() != p.shape.len() + 1 || g.shape[1..] != p.shape[..] {
                return Err(Error::Tensor(format!(
                    "gradient {:?} has shape {:?}; expected [steps, {}]",
                    p.name,
                    g.shape,
                    p.shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
                )));
            }
            match steps {
                None => steps = Some(g.shape[0]),
                Some(s) if s != g.shape[0] => {
                    return Err(Error::Tensor(format!(
                        "gradient {:?} records {} steps but others record {s}",
                        p.name, g.shape[0]
                    )))
                }
                Some(_) => {}
            }
            per_param.push(g.data);
            let rows_name = format!("{}.rows", p.name);
            let rows = match by_name.remove(&rows_name) {
                Some(mask) => {
                    let (row_count, _) = rules::sparse_rows(&p.shape);
                    if mask.shape != [g.shape[0], row_count] {
                        return Err(Error::Tensor(format!(
                            "sparse gradient mask {rows_name:?} has shape {:?}; expected [steps, rows] = [{}, {row_count}]",
                            mask.shape, g.shape[0]
                        )));
                    }
                    Some(mask.data)
                }
                None => None,
            };
            grad_rows.push(rows);
            let present_name = format!("{}.present", p.name);
            present.push(match by_name.remove(&present_name) {
                Some(flags) if flags.shape != [g.shape[0]] => {
                    return Err(Error::Tensor(format!(
                        "gradient presence {present_name:?} has shape {:?}; expected [steps] = [{}]",
                        flags.shape, g.shape[0]
                    )))
                }
                Some(flags) => Some(flags.data),
                None => None,
            });
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(Error::Tensor(format!("the grads file has tensor {extra:?}, which is not a parameter")));
        }
        let case = ReplayCase { config, params, grads: per_param, grad_rows, present, steps: steps.unwrap_or(0) };
        case.config.groups(&case.parameters()?)?;
        Ok(case)
    }

    fn parameters(&self) -> Result<Parameters> {
        let mut params = Parameters::new();
        for p in &self.params {
            params.add(&p.name, &p.shape, p.data.clone())?;
        }
        Ok(params)
    }

    /// Runs every step on the CPU reference; returns parameters and state.
    pub fn run_cpu(&self) -> Result<Vec<NamedTensor>> {
        self.run_cpu_with(&ReplayOptions::default())
    }

    /// Runs every step on a GPU; returns parameters and state.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_gpu(&self, gpu: &GpuContext) -> Result<Vec<NamedTensor>> {
        self.run_gpu_with(gpu, &ReplayOptions::default())
    }

    /// [`ReplayCase::run_cpu`] with checkpointing options.
    pub fn run_cpu_with(&self, options: &ReplayOptions) -> Result<Vec<NamedTensor>> {
        let params = self.parameters()?;
        let groups = self.config.groups(&params)?;
        let mut opt = CpuOptimizer::with_gradients(params, groups, self.config.gradient_options())?;
        self.run(&mut opt, options)
    }

    /// [`ReplayCase::run_gpu`] with checkpointing options.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_gpu_with(&self, gpu: &GpuContext, options: &ReplayOptions) -> Result<Vec<NamedTensor>> {
        let params = self.parameters()?;
        let groups = self.config.groups(&params)?;
        let optimizer_options = OptimizerOptions {
            gradients: self.config.gradient_options(),
            gradient_presence: self.present.iter().any(Option::is_some),
            ..Default::default()
        };
        let mut opt = Optimizer::with_options(gpu, params, groups, optimizer_options)?;
        self.run(&mut opt, options)
    }

    /// The replay loop, as a torch training loop runs it: gradients, (clipping,) optimizer
    /// step, scheduler step; checkpoints every `save_every` steps; resumes from a checkpoint.
    fn run(&self, opt: &mut dyn ReplayTarget, options: &ReplayOptions) -> Result<Vec<NamedTensor>> {
        let mut scheduler = match &self.config.scheduler {
            Some(config) => Some(schedule::from_config(config, opt.learning_rates())?),
            None => None,
        };
        let mut first = 0;
        if let Some(path) = &options.resume {
            let checkpoint = Checkpoint::load(path)?;
            if checkpoint.counters.steps_recorded > self.steps as u64 {
                return Err(Error::Checkpoint(format!(
                    "{} was saved after {} steps; the gradients hold only {}",
                    path.display(),
                    checkpoint.counters.steps_recorded,
                    self.steps
                )));
            }
            match (&mut scheduler, &checkpoint.schedule) {
                (Some(scheduler), Some(state)) => scheduler.load_state(state)?,
                (None, None) => {}
                (Some(_), None) => return Err(Error::Checkpoint(format!("{} holds no scheduler state", path.display()))),
                (None, Some(_)) => return Err(Error::Checkpoint(format!("{} holds scheduler state but run.json has no scheduler", path.display()))),
            }
            opt.restore(&checkpoint)?;
            first = checkpoint.counters.steps_recorded as usize;
        }
        let ids: Vec<TensorId> = self.params.iter().map(|p| opt.id(&p.name)).collect();
        for step in first..self.steps {
            for (k, p) in self.params.iter().enumerate() {
                let len = p.data.len();
                let grad = &self.grads[k][step * len..(step + 1) * len];
                if self.present[k].as_ref().is_some_and(|flags| flags[step] == 0.0) {
                    opt.set_gradient_present(ids[k], false)?;
                    continue;
                }
                match &self.grad_rows[k] {
                    None => opt.write_grad(ids[k], grad)?,
                    Some(mask) => {
                        let (row_count, row_length) = rules::sparse_rows(&p.shape);
                        let mask = &mask[step * row_count..(step + 1) * row_count];
                        let rows: Vec<u32> = (0..row_count as u32).filter(|&r| mask[r as usize] != 0.0).collect();
                        let values: Vec<f32> =
                            rows.iter().flat_map(|&r| &grad[r as usize * row_length..(r as usize + 1) * row_length]).copied().collect();
                        opt.write_sparse_grad(ids[k], &rows, &values)?;
                    }
                }
            }
            opt.step()?;
            if let Some(scheduler) = &mut scheduler {
                scheduler.step(opt.learning_rates())?;
            }
            if self.config.eval_every.is_some_and(|every| every > 0 && (step + 1) % every == 0) {
                opt.switch_mode(false)?;
                opt.switch_mode(true)?;
            }
            if let (Some(every), Some(dir)) = (options.save_every, &options.checkpoint_dir) {
                if (step + 1) % every == 0 {
                    let path = dir.join(format!("step-{:06}.safetensors", step + 1));
                    opt.checkpoint(scheduler.as_ref().map(|s| s.state()))?.save(&path)?;
                }
            }
        }
        if self.config.eval_at_end {
            opt.switch_mode(false)?;
        }
        // The output holds torch's state keys without `step`, and no state for a tensor that
        // never stepped (torch creates it at the first gradient).
        let tensors = opt.checkpoint(None)?.tensors;
        let never_stepped: std::collections::HashSet<&str> =
            tensors.iter().filter(|t| t.data == [0.0]).filter_map(|t| t.name.strip_suffix(".step")).collect();
        let never_stepped: std::collections::HashSet<String> = never_stepped.into_iter().map(str::to_string).collect();
        let is_param = |name: &str| self.params.iter().any(|p| p.name == name);
        let kept = |name: &str| {
            is_param(name) || name.rsplit_once('.').is_some_and(|(base, key)| key != "step" && !never_stepped.contains(base))
        };
        Ok(tensors.into_iter().filter(|t| kept(&t.name)).collect())
    }
}

/// Checkpointing during a replay (`--save-every K --checkpoint-dir D`, `--resume FILE`).
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Save a checkpoint after every K-th step (with `checkpoint_dir`).
    pub save_every: Option<usize>,
    /// Where the checkpoints go, as `step-NNNNNN.safetensors` (the step count, zero-padded).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// A checkpoint to resume from: its recorded steps are not replayed again.
    pub resume: Option<std::path::PathBuf>,
}

/// What the replay loop needs of an optimizer, GPU or CPU.
trait ReplayTarget {
    fn learning_rates(&mut self) -> &mut dyn LearningRates;
    fn id(&self, name: &str) -> TensorId;
    fn write_grad(&mut self, id: TensorId, data: &[f32]) -> Result<()>;
    fn write_sparse_grad(&mut self, id: TensorId, rows: &[u32], values: &[f32]) -> Result<()>;
    fn set_gradient_present(&mut self, id: TensorId, present: bool) -> Result<()>;
    fn step(&mut self) -> Result<()>;
    /// `train()` (true) or `eval()` (false).
    fn switch_mode(&mut self, to_train: bool) -> Result<()>;
    fn checkpoint(&mut self, schedule: Option<serde_json::Value>) -> Result<Checkpoint>;
    fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()>;
}

impl ReplayTarget for CpuOptimizer {
    fn learning_rates(&mut self) -> &mut dyn LearningRates {
        self
    }
    fn id(&self, name: &str) -> TensorId {
        self.tensor_id(name).expect("registered from the same params")
    }
    fn write_grad(&mut self, id: TensorId, data: &[f32]) -> Result<()> {
        CpuOptimizer::write_grad(self, id, data)
    }
    fn set_gradient_present(&mut self, id: TensorId, present: bool) -> Result<()> {
        CpuOptimizer::set_gradient_present(self, id, present)
    }
    fn write_sparse_grad(&mut self, id: TensorId, rows: &[u32], values: &[f32]) -> Result<()> {
        CpuOptimizer::write_sparse_grad(self, id, rows, values)
    }
    fn step(&mut self) -> Result<()> {
        CpuOptimizer::step(self);
        Ok(())
    }
    fn switch_mode(&mut self, to_train: bool) -> Result<()> {
        if to_train {
            self.train();
        } else {
            self.eval();
        }
        Ok(())
    }
    fn checkpoint(&mut self, schedule: Option<serde_json::Value>) -> Result<Checkpoint> {
        self.counters()?;
        Ok(CpuOptimizer::checkpoint(self, schedule))
    }
    fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        CpuOptimizer::restore(self, checkpoint).map(drop)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ReplayTarget for Optimizer {
    fn learning_rates(&mut self) -> &mut dyn LearningRates {
        self
    }
    fn id(&self, name: &str) -> TensorId {
        self.tensor_id(name).expect("registered from the same params")
    }
    fn write_grad(&mut self, id: TensorId, data: &[f32]) -> Result<()> {
        Optimizer::write_grad(self, id, data)
    }
    fn set_gradient_present(&mut self, id: TensorId, present: bool) -> Result<()> {
        Optimizer::set_gradient_present(self, id, present)
    }
    fn write_sparse_grad(&mut self, id: TensorId, rows: &[u32], values: &[f32]) -> Result<()> {
        Optimizer::write_sparse_grad(self, id, rows, values)
    }
    fn step(&mut self) -> Result<()> {
        self.step_and_submit().map(drop)
    }
    fn switch_mode(&mut self, to_train: bool) -> Result<()> {
        let mut encoder = self.gpu().device().create_command_encoder(&Default::default());
        if to_train {
            self.train(&mut encoder);
        } else {
            self.eval(&mut encoder);
        }
        self.gpu().queue().submit([encoder.finish()]);
        Ok(())
    }
    fn checkpoint(&mut self, schedule: Option<serde_json::Value>) -> Result<Checkpoint> {
        Optimizer::checkpoint(self, schedule)
    }
    fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        Optimizer::restore(self, checkpoint).map(drop)
    }
}

/// Where a replay runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayBackend {
    /// A GPU, through the chosen wgpu backend.
    Gpu(BackendChoice),
    /// The CPU reference ([`CpuOptimizer`]).
    Cpu,
}

impl std::str::FromStr for ReplayBackend {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        if name.eq_ignore_ascii_case("cpu") {
            Ok(ReplayBackend::Cpu)
        } else {
            name.parse().map(ReplayBackend::Gpu)
        }
    }
}
