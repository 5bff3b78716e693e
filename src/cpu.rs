//! The CPU reference backend: the same parameter groups and step semantics as [`Optimizer`],
//! computed by each rule's scalar `cpu_update`. It is the oracle of the GPU tests and the
//! `cpu` backend of the command line.
//!
//! [`Optimizer`]: crate::Optimizer

use crate::error::{Error, Result};
use crate::params::{check_groups, ParamGroup, Parameters, TensorId};
use crate::rules::{StateSlot, UpdateRule};

struct CpuTensor {
    name: String,
    shape: Vec<usize>,
    group: usize,
    param: Vec<f32>,
    grad: Vec<f32>,
    state: Vec<Vec<f32>>,
}

struct CpuGroup {
    rule: Box<dyn UpdateRule>,
    slots: Vec<StateSlot>,
    tensors: Vec<TensorId>,
    step: u64,
    scalar_keys: Vec<&'static str>,
    scalar_values: Vec<f32>,
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
/// assert_eq!(opt.param(w), [0.5, 2.5]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct CpuOptimizer {
    tensors: Vec<CpuTensor>,
    groups: Vec<CpuGroup>,
}

impl CpuOptimizer {
    pub fn new(params: Parameters, groups: Vec<ParamGroup>) -> Result<Self> {
        check_groups(&params, &groups)?;
        let mut owner = vec![0; params.len()];
        for (g, group) in groups.iter().enumerate() {
            for id in &group.tensors {
                owner[id.0] = g;
            }
        }
        let groups: Vec<CpuGroup> = groups
            .into_iter()
            .map(|group| {
                let (scalar_keys, scalar_values) = group.rule.scalar_state().into_iter().unzip();
                CpuGroup {
                    slots: group.rule.state_slots(),
                    rule: group.rule,
                    tensors: group.tensors,
                    step: 0,
                    scalar_keys,
                    scalar_values,
                }
            })
            .collect();
        let tensors = params
            .into_specs()
            .into_iter()
            .zip(owner)
            .map(|(spec, g)| CpuTensor {
                grad: vec![0.0; spec.data.len()],
                state: groups[g].slots.iter().map(|slot| vec![slot.init; spec.data.len()]).collect(),
                name: spec.name,
                shape: spec.shape,
                group: g,
                param: spec.data,
            })
            .collect();
        Ok(CpuOptimizer { tensors, groups })
    }

    /// One step of every group.
    pub fn step(&mut self) {
        for group in &mut self.groups {
            group.step += 1;
            let scalars = group.rule.step_scalars(group.step, &mut group.scalar_values);
            for id in &group.tensors {
                let tensor = &mut self.tensors[id.0];
                let mut state: Vec<&mut [f32]> = tensor.state.iter_mut().map(Vec::as_mut_slice).collect();
                group.rule.cpu_update(&scalars, &mut tensor.param, &tensor.grad, &mut state);
            }
        }
    }

    pub fn tensor_id(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name).map(TensorId)
    }

    pub fn tensor_name(&self, id: TensorId) -> &str {
        &self.tensors[id.0].name
    }

    pub fn tensor_shape(&self, id: TensorId) -> &[usize] {
        &self.tensors[id.0].shape
    }

    pub fn group_of(&self, id: TensorId) -> usize {
        self.tensors[id.0].group
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    pub fn step_count(&self, group: usize) -> u64 {
        self.groups[group].step
    }

    pub fn state_keys(&self, id: TensorId) -> Vec<&'static str> {
        self.groups[self.tensors[id.0].group].slots.iter().map(|s| s.key).collect()
    }

    pub fn param(&self, id: TensorId) -> &[f32] {
        &self.tensors[id.0].param
    }

    pub fn grad(&self, id: TensorId) -> &[f32] {
        &self.tensors[id.0].grad
    }

    pub fn state(&self, id: TensorId, key: &str) -> Result<&[f32]> {
        let tensor = &self.tensors[id.0];
        let slots = &self.groups[tensor.group].slots;
        match slots.iter().position(|s| s.key == key) {
            Some(k) => Ok(&tensor.state[k]),
            None => Err(Error::Tensor(format!(
                "tensor {:?} has no state {key:?}; it has {:?}",
                tensor.name,
                self.state_keys(id)
            ))),
        }
    }

    pub fn scalar_state(&self, group: usize) -> Vec<(&'static str, f32)> {
        let g = &self.groups[group];
        g.scalar_keys.iter().copied().zip(g.scalar_values.iter().copied()).collect()
    }

    /// A group's update rule and hyper-parameters.
    pub fn rule(&self, group: usize) -> &dyn UpdateRule {
        self.groups[group].rule.as_ref()
    }

    /// Sets a group's `momentum` or `betas[0]`, the hyper-parameter that torch's `CyclicLR` and
    /// `OneCycleLR` cycle (see [`UpdateRule::cycled_momentum`]); takes effect at the next step.
    pub fn set_cycled_momentum(&mut self, group: usize, value: f64) -> Result<()> {
        let mut rule = self.groups[group].rule.clone();
        rule.set_cycled_momentum(value)?;
        rule.validate()?;
        self.groups[group].rule = rule;
        Ok(())
    }

    pub fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        let mut rule = self.groups[group].rule.clone();
        rule.set_lr(lr);
        rule.validate()?;
        self.groups[group].rule = rule;
        Ok(())
    }

    pub fn write_grad(&mut self, id: TensorId, data: &[f32]) -> Result<()> {
        let tensor = &mut self.tensors[id.0];
        if data.len() != tensor.grad.len() {
            return Err(Error::SizeMismatch {
                what: format!("gradient of {:?}", tensor.name),
                expected: tensor.grad.len(),
                actual: data.len(),
            });
        }
        tensor.grad.copy_from_slice(data);
        Ok(())
    }
}
