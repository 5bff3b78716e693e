//! The fuzz corpus under tests/fuzz/corpus/: valid checkpoints (several rules, flags, gradient
//! conditioning, schedule state, train and eval mode), the safetensors files and run.json of a
//! few replays. [`generate`] makes every file, so the corpus is reproducible: the test
//! `fuzz_corpus_matches_its_generator` fails when the committed files differ from what it makes,
//! and `WGPU_OPTIM_FUZZ_WRITE_CORPUS=1 cargo test --test suite fuzz_corpus` rewrites them.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::replay::NamedTensor;
use wgpu_optim::rules::{Adafactor, Adam, AdamW, AdamWScheduleFree, Asgd, Lion, Muon, NAdam, Rprop, Sgd};
use wgpu_optim::schedule;
use wgpu_optim::{ClipGradNorm, CpuOptimizer, GradientOptions, LossScale, ParamGroup, Parameters, TensorId, UpdateRule};

use crate::common::Rng;

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus")
}

/// Tensor names and shapes of one parameter group.
type Tensors = &'static [(&'static str, &'static [usize])];

/// An optimizer saved into the corpus: its groups and options, so the fuzzer can build a
/// fresh one to restore mutated copies into.
pub struct CheckpointCase {
    pub name: &'static str,
    pub groups: Vec<(Box<dyn UpdateRule>, Tensors)>,
    pub gradients: GradientOptions,
    /// The scheduler stepped with the optimizer; its state is saved in the checkpoint.
    pub scheduler: Option<Value>,
    /// Steps taken before saving; a NaN gradient at step 1 when the conditioning skips steps.
    steps: usize,
    /// Saved in eval mode (Schedule-Free).
    eval: bool,
    /// The last group joins (`add_param_group`) after this many steps, so it saves a step offset.
    last_group_added_after: Option<usize>,
    /// Some gradients are absent (gradient presence: tensor k on the steps where (step + k) % 3
    /// is 0), so the checkpoint saves each tensor's missed steps.
    pub absent_gradients: bool,
}

impl CheckpointCase {
    /// The parameters (the same values every call) and groups, all from the start (as a
    /// restore needs them).
    pub fn model(&self) -> (Parameters, Vec<ParamGroup>, Vec<TensorId>) {
        model_of(&self.groups)
    }

    /// Each tensor's number of elements, in the order of [`CheckpointCase::model`]'s ids.
    pub fn lengths(&self) -> Vec<usize> {
        self.groups.iter().flat_map(|(_, tensors)| tensors.iter().map(|(_, shape)| shape.iter().product())).collect()
    }

    /// A fresh CPU optimizer of this case, its scheduler (built on it) and its tensors.
    pub fn fresh_cpu(&self) -> (CpuOptimizer, Option<Box<dyn wgpu_optim::Scheduler>>, Vec<TensorId>) {
        let (params, groups, ids) = self.model();
        let mut opt = CpuOptimizer::with_gradients(params, groups, self.gradients.clone()).unwrap();
        let scheduler = self.scheduler.as_ref().map(|config| schedule::from_config(config, &mut opt).unwrap());
        (opt, scheduler, ids)
    }

    /// The checkpoint: `steps` steps on the CPU reference, then saved.
    pub fn checkpoint(&self) -> Checkpoint {
        let late = self.last_group_added_after.map_or(0, |_| 1);
        let (params, groups, mut ids) = model_of(&self.groups[..self.groups.len() - late]);
        let lens = self.lengths();
        let mut opt = CpuOptimizer::with_gradients(params, groups, self.gradients.clone()).unwrap();
        let mut scheduler = self.scheduler.as_ref().map(|config| schedule::from_config(config, &mut opt).unwrap());
        for step in 0..self.steps {
            if self.last_group_added_after == Some(step) {
                let (params, _, _) = model_of(&self.groups[self.groups.len() - 1..]);
                ids.extend(opt.add_param_group(params, self.groups[self.groups.len() - 1].0.clone_box()).unwrap());
            }
            for (k, (&id, &len)) in ids.iter().zip(&lens).enumerate() {
                let mut grad = Rng::new(1000 * step as u64 + k as u64).vec(len, 1.0);
                if step == 1 && k == 0 && self.gradients.skip_nonfinite {
                    grad[0] = f32::NAN;
                }
                opt.write_grad(id, &grad).unwrap();
                if self.absent_gradients && (step + k) % 3 == 0 {
                    opt.set_gradient_present(id, false).unwrap();
                }
            }
            opt.step();
            if let Some(scheduler) = &mut scheduler {
                scheduler.step(&mut opt).unwrap();
            }
        }
        if self.eval {
            opt.eval();
        }
        opt.counters().unwrap();
        opt.checkpoint(scheduler.map(|s| s.state()))
    }

    pub fn path(&self) -> PathBuf {
        corpus_dir().join("checkpoint").join(format!("{}.safetensors", self.name))
    }
}

/// Parameters (the same values every call), groups and tensor ids of `groups`.
fn model_of(groups: &[(Box<dyn UpdateRule>, Tensors)]) -> (Parameters, Vec<ParamGroup>, Vec<TensorId>) {
    let mut params = Parameters::new();
    let mut param_groups = Vec::new();
    let mut all = Vec::new();
    for (rule, tensors) in groups {
        let ids: Vec<TensorId> = tensors
            .iter()
            .map(|(name, shape)| {
                let len = shape.iter().product();
                params.add(name, shape, Rng::new(name.len() as u64 * 31 + len as u64).vec(len, 1.0)).unwrap()
            })
            .collect();
        all.extend(&ids);
        param_groups.push(ParamGroup::from_boxed(rule.clone_box(), ids));
    }
    (params, param_groups, all)
}

fn conditioned() -> GradientOptions {
    GradientOptions {
        clip_grad_norm: Some(ClipGradNorm { max_norm: 1.0, norm_type: 2.0, error_if_nonfinite: false }),
        skip_nonfinite: true,
        loss_scale: Some(LossScale { init_scale: 1024.0, growth_interval: 2, ..LossScale::default() }),
        ..GradientOptions::default()
    }
}

pub fn checkpoint_cases() -> Vec<CheckpointCase> {
    const W_B: Tensors = &[("layer.w", &[3, 4]), ("layer.b", &[4])];
    const V: Tensors = &[("v", &[5])];
    vec![
        CheckpointCase {
            name: "adam-amsgrad-steplr",
            groups: vec![
                (Box::new(Adam { lr: 0.01, amsgrad: true, ..Adam::default() }), W_B),
                (Box::new(Adam { lr: 0.005, amsgrad: true, ..Adam::default() }), V),
            ],
            gradients: GradientOptions::default(),
            scheduler: Some(json!({"name": "StepLR", "step_size": 2, "gamma": 0.5})),
            steps: 3,
            eval: false,
            last_group_added_after: None,
            absent_gradients: false,
        },
        CheckpointCase {
            name: "adamw-conditioned-onecycle",
            groups: vec![(Box::new(AdamW { lr: 0.01, ..AdamW::default() }), W_B)],
            gradients: conditioned(),
            scheduler: Some(json!({"name": "OneCycleLR", "max_lr": 0.05, "total_steps": 10})),
            steps: 4,
            eval: false,
            last_group_added_after: None,
            absent_gradients: false,
        },
        CheckpointCase {
            name: "nadam-decoupled-warm-restarts",
            groups: vec![(
                Box::new(NAdam { lr: 0.01, decoupled_weight_decay: true, weight_decay: 0.01, ..NAdam::default() }),
                W_B,
            )],
            gradients: GradientOptions { clip_grad_value: Some(0.5), ..GradientOptions::default() },
            scheduler: Some(json!({"name": "CosineAnnealingWarmRestarts", "T_0": 3, "T_mult": 2})),
            steps: 5,
            eval: false,
            last_group_added_after: None,
            absent_gradients: false,
        },
        CheckpointCase {
            name: "schedulefree-eval",
            groups: vec![(Box::new(AdamWScheduleFree { lr: 0.01, warmup_steps: 2, ..AdamWScheduleFree::default() }), W_B)],
            gradients: GradientOptions::default(),
            scheduler: None,
            steps: 3,
            eval: true,
            last_group_added_after: None,
            absent_gradients: false,
        },
        CheckpointCase {
            name: "muon-adamw-sequential",
            groups: vec![
                (Box::new(Muon { lr: 0.02, ..Muon::default() }), &[("m", &[4, 3])]),
                (Box::new(AdamW { lr: 0.01, ..AdamW::default() }), V),
            ],
            gradients: GradientOptions::default(),
            scheduler: Some(json!({"name": "SequentialLR", "milestones": [2], "schedulers": [
                {"name": "LinearLR", "start_factor": 0.5, "total_iters": 2},
                {"name": "ExponentialLR", "gamma": 0.9}]})),
            steps: 3,
            eval: false,
            last_group_added_after: None,
            absent_gradients: false,
        },
        CheckpointCase {
            name: "adafactor-asgd-cyclic",
            groups: vec![
                (Box::new(Adafactor::default()), &[("f", &[3, 5])]),
                (Box::new(Asgd { lr: 0.01, t0: 2.0, ..Asgd::default() }), V),
            ],
            gradients: conditioned(),
            scheduler: Some(json!({"name": "CyclicLR", "base_lr": 0.001, "max_lr": 0.01, "step_size_up": 2, "cycle_momentum": false})),
            steps: 3,
            eval: false,
            last_group_added_after: None,
            absent_gradients: false,
        },
        CheckpointCase {
            name: "sgd-rprop-multistep",
            groups: vec![
                (Box::new(Sgd { lr: 0.05, momentum: 0.9, nesterov: true, ..Sgd::default() }), W_B),
                (Box::new(Rprop::default()), V),
            ],
            gradients: GradientOptions {
                clip_grad_norm: Some(ClipGradNorm { max_norm: 0.5, norm_type: f64::INFINITY, error_if_nonfinite: true }),
                ..GradientOptions::default()
            },
            scheduler: Some(json!({"name": "MultiStepLR", "milestones": [1, 3], "gamma": 0.1})),
            steps: 4,
            eval: false,
            last_group_added_after: None,
            absent_gradients: false,
        },
        CheckpointCase {
            name: "adamw-lion-added-later",
            groups: vec![
                (Box::new(AdamW { lr: 0.01, ..AdamW::default() }), W_B),
                (Box::new(Lion { lr: 0.001, weight_decay: 0.1, ..Lion::default() }), V),
            ],
            gradients: GradientOptions::default(),
            scheduler: None,
            steps: 4,
            eval: false,
            last_group_added_after: Some(2),
            absent_gradients: false,
        },
        CheckpointCase {
            name: "adam-nadam-absent-gradients",
            groups: vec![
                (Box::new(Adam { lr: 0.01, ..Adam::default() }), W_B),
                (Box::new(NAdam { lr: 0.01, ..NAdam::default() }), V),
            ],
            gradients: GradientOptions::default(),
            scheduler: None,
            steps: 5,
            eval: false,
            last_group_added_after: None,
            absent_gradients: true,
        },
    ]
}

/// A recorded replay: run.json, initial parameters, per-step gradients.
pub struct ReplayCase {
    pub name: &'static str,
    pub run: Value,
    pub params: Vec<NamedTensor>,
    pub grads: Vec<NamedTensor>,
}

impl ReplayCase {
    pub fn dir(&self) -> PathBuf {
        corpus_dir().join("replay").join(self.name)
    }
}

const STEPS: usize = 4;

fn tensor(name: &str, shape: &[usize]) -> NamedTensor {
    let len = shape.iter().product();
    NamedTensor { name: name.to_string(), shape: shape.to_vec(), data: Rng::new(name.len() as u64 + 7 * len as u64).vec(len, 1.0), dtype: wgpu_optim::Dtype::F32 }
}

/// Gradients of `params` for [`STEPS`] steps: shape `[steps, *shape]`.
fn grads_of(params: &[NamedTensor]) -> Vec<NamedTensor> {
    params.iter().map(|p| tensor(&p.name, &[&[STEPS][..], &p.shape].concat())).collect()
}

pub fn replay_cases() -> Vec<ReplayCase> {
    let dense = vec![tensor("w", &[3, 4]), tensor("b", &[4]), tensor("v", &[5])];
    let matrix_and_vector = vec![tensor("m", &[4, 3]), tensor("b", &[3])];
    let embedding = vec![tensor("e", &[6, 3])];
    // The sparse gradient touches rows 0 and 4 at even steps, row 2 at odd ones.
    let rows = NamedTensor {
        name: "e.rows".into(),
        shape: vec![STEPS, 6],
        data: (0..STEPS).flat_map(|s| (0..6).map(move |r| if (s % 2 == 0 && r % 4 == 0) || (s % 2 == 1 && r == 2) { 1.0 } else { 0.0 })).collect(),
        dtype: wgpu_optim::Dtype::F32,
    };
    let mut sparse_grads = grads_of(&embedding);
    sparse_grads.push(rows);
    vec![
        ReplayCase {
            name: "adamw-groups-onecycle",
            run: json!({
                "optimizer": "AdamW",
                "hyperparameters": {"lr": 0.01, "weight_decay": 0.01},
                "param_groups": [{"params": ["w", "b"]}, {"params": ["v"], "lr": 0.005, "betas": [0.8, 0.99]}],
                "scheduler": {"name": "OneCycleLR", "max_lr": 0.02, "total_steps": 6},
                "clip_grad_norm": {"max_norm": 1.0, "norm_type": 2.0}
            }),
            grads: grads_of(&dense),
            params: dense.clone(),
        },
        ReplayCase {
            name: "sgd-sequential-conditioned",
            run: json!({
                "optimizer": "SGD",
                "hyperparameters": {"lr": 0.05, "momentum": 0.9, "nesterov": true},
                "scheduler": {"name": "SequentialLR", "milestones": [2], "schedulers": [
                    {"name": "LinearLR", "start_factor": 0.1, "total_iters": 2},
                    {"name": "CosineAnnealingLR", "T_max": 5}]},
                "clip_grad_value": 0.5,
                "skip_nonfinite": true,
                "loss_scale": {"init_scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2}
            }),
            grads: grads_of(&dense),
            params: dense.clone(),
        },
        ReplayCase {
            name: "schedulefree-muon-eval",
            run: json!({
                "optimizer": "AdamWScheduleFree",
                "hyperparameters": {"lr": 0.01, "warmup_steps": 2},
                "param_groups": [{"params": ["b"]}, {"params": ["m"], "optimizer": "Muon", "lr": 0.02}],
                "eval_every": 2,
                "eval_at_end": true
            }),
            grads: grads_of(&matrix_and_vector),
            params: matrix_and_vector,
        },
        ReplayCase {
            name: "rmsprop-cyclic-momentum",
            run: json!({
                "optimizer": "RMSprop",
                "hyperparameters": {"lr": 0.01, "momentum": 0.9, "centered": true},
                "param_groups": [{"params": ["w", "v"]}, {"params": ["b"], "alpha": 0.9}],
                "scheduler": {"name": "CyclicLR", "base_lr": [0.001, 0.002], "max_lr": 0.01, "step_size_up": 2,
                              "step_size_down": 1, "mode": "exp_range", "gamma": 0.9, "base_momentum": 0.8, "max_momentum": 0.95}
            }),
            grads: grads_of(&dense),
            params: dense.clone(),
        },
        ReplayCase {
            name: "lamb-lion-adan-chained",
            run: json!({
                "optimizer": "Lamb",
                "hyperparameters": {"lr": 0.01, "weight_decay": 0.01, "max_grad_norm": 1.0},
                "param_groups": [{"params": ["w"]}, {"params": ["b"], "optimizer": "Lion", "lr": 0.001},
                                 {"params": ["v"], "optimizer": "Adan", "lr": 0.01, "betas": [0.98, 0.92, 0.99]}],
                "scheduler": {"name": "ChainedScheduler", "schedulers": [
                    {"name": "ConstantLR", "factor": 0.5, "total_iters": 2},
                    {"name": "CosineAnnealingWarmRestarts", "T_0": 1, "T_mult": 2, "eta_min": 0.0001},
                    {"name": "MultiStepLR", "milestones": [1, 3], "gamma": 0.5},
                    {"name": "PolynomialLR", "total_iters": 3, "power": 2.0}]},
                "clip_grad_norm": {"max_norm": 0.5, "norm_type": "inf", "error_if_nonfinite": true}
            }),
            grads: grads_of(&dense),
            params: dense,
        },
        ReplayCase {
            name: "sparseadam-rows-cosine",
            run: json!({
                "optimizer": "SparseAdam",
                "hyperparameters": {"lr": 0.01},
                "scheduler": {"name": "CosineAnnealingLR", "T_max": 4, "eta_min": 0.001}
            }),
            grads: sparse_grads,
            params: embedding,
        },
    ]
}

/// Writes every corpus file (`WGPU_OPTIM_FUZZ_WRITE_CORPUS=1`).
pub fn generate() {
    for case in checkpoint_cases() {
        std::fs::create_dir_all(case.path().parent().unwrap()).unwrap();
        // The metadata is a hash map, saved in no fixed order: a checkpoint whose contents are
        // unchanged keeps its file.
        let mut checkpoint = case.checkpoint();
        checkpoint.tensors.sort_by(|a, b| a.name.cmp(&b.name));
        if Checkpoint::load(&case.path()).ok().as_ref() != Some(&checkpoint) {
            checkpoint.save(&case.path()).unwrap();
        }
    }
    for case in replay_cases() {
        std::fs::create_dir_all(case.dir()).unwrap();
        std::fs::write(case.dir().join("run.json"), serde_json::to_string_pretty(&case.run).unwrap() + "\n").unwrap();
        wgpu_optim::replay::write_safetensors(&case.dir().join("params.safetensors"), &case.params).unwrap();
        wgpu_optim::replay::write_safetensors(&case.dir().join("grads.safetensors"), &case.grads).unwrap();
    }
}
