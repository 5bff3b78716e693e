//! Schedule-Free AdamW's two points: `train()` and `eval()` move the parameters between y and
//! x on the GPU as the CPU reference does, only in the groups whose rule has them; they do
//! nothing before the first step; a step in eval mode goes back to y first; and the running
//! `weight_sum` and `lr_max` survive a checkpoint taken in eval mode under a changing lr.

use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::rules::{AdamW, AdamWScheduleFree};
use wgpu_optim::{CpuOptimizer, Optimizer, ParamGroup, Parameters, TensorId};

use crate::common::{gpus, Rng};

fn model() -> (Parameters, Vec<ParamGroup>, Vec<TensorId>) {
    let mut rng = Rng::new(5);
    let mut params = Parameters::new();
    let w = params.add("w", &[9, 7], rng.vec(63, 1.0)).unwrap();
    let b = params.add("b", &[7], rng.vec(7, 1.0)).unwrap();
    let other = params.add("other", &[10], rng.vec(10, 1.0)).unwrap();
    let groups = vec![
        ParamGroup::new(AdamWScheduleFree { lr: 0.02, warmup_steps: 4, weight_decay: 1e-2, ..AdamWScheduleFree::default() }, [w]),
        ParamGroup::new(AdamWScheduleFree { lr: 0.01, betas: (0.8, 0.99), r: 1.0, ..AdamWScheduleFree::default() }, [b]),
        ParamGroup::new(AdamW { lr: 0.01, ..AdamW::default() }, [other]),
    ];
    (params, groups, vec![w, b, other])
}

fn gradient(step: usize, id: TensorId, len: usize) -> Vec<f32> {
    Rng::new(77 * step as u64 + id.index() as u64).vec(len, 1.0)
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| x.to_bits()).collect()
}

/// What happens, in order: `Step(k)` steps k times (with the lr changed before each step),
/// `Eval`, `Train`, `Check` records every parameter.
#[derive(Clone, Copy)]
enum Action {
    Step(usize),
    Eval,
    Train,
    Check,
}

const SCRIPT: &[Action] = {
    use Action::*;
    &[Eval, Check, Train, Check, Step(6), Eval, Check, Eval, Check, Train, Check, Step(3), Eval, Step(2), Check, Eval, Check]
};

/// The lr of group 0 before step `step`: it changes, so `lr_max` and `weight_sum` follow a history.
fn lr_at(step: usize) -> f64 {
    0.02 * (1.0 + (step % 5) as f64 * 0.3)
}

fn cpu_script() -> Vec<Vec<Vec<f32>>> {
    let (params, groups, ids) = model();
    let lens: Vec<usize> = ids.iter().map(|&id| params.spec(id).unwrap().data.len()).collect();
    let mut opt = CpuOptimizer::new(params, groups).unwrap();
    let mut steps = 0;
    let mut checks = Vec::new();
    for action in SCRIPT {
        match *action {
            Action::Step(k) => {
                for _ in 0..k {
                    for (&id, &len) in ids.iter().zip(&lens) {
                        opt.write_grad(id, &gradient(steps, id, len)).unwrap();
                    }
                    opt.set_lr(0, lr_at(steps)).unwrap();
                    opt.step();
                    steps += 1;
                }
            }
            Action::Eval => opt.eval(),
            Action::Train => opt.train(),
            Action::Check => checks.push(ids.iter().map(|&id| opt.param(id).unwrap().to_vec()).collect()),
        }
    }
    checks
}

#[test]
fn train_and_eval_match_the_cpu_reference() {
    let expected = cpu_script();
    let (initial, _, ids) = model();
    // Before the first step both switches leave the parameters as they are.
    for id in 0..2 {
        assert_eq!(bits(&expected[0][id]), bits(&initial.spec(ids[id]).unwrap().data), "eval before any step");
        assert_eq!(bits(&expected[1][id]), bits(&expected[0][id]), "train before any step");
    }
    // eval() moves y to x in the Schedule-Free groups only; a second eval() does nothing.
    assert_ne!(bits(&expected[2][0]), bits(&expected[1][0]));
    assert_eq!(bits(&expected[3][0]), bits(&expected[2][0]), "eval() twice");
    assert_eq!(bits(&expected[2][2]), bits(&expected[3][2]), "AdamW's group has no second point");
    for gpu in gpus() {
        let (params, groups, ids) = model();
        let lens: Vec<usize> = ids.iter().map(|&id| params.spec(id).unwrap().data.len()).collect();
        let mut opt = Optimizer::new(gpu, params, groups).unwrap();
        let mut steps = 0;
        let mut checks = Vec::new();
        for action in SCRIPT {
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            match *action {
                Action::Step(k) => {
                    for _ in 0..k {
                        for (&id, &len) in ids.iter().zip(&lens) {
                            opt.write_grad(id, &gradient(steps, id, len)).unwrap();
                        }
                        opt.set_lr(0, lr_at(steps)).unwrap();
                        opt.step_and_submit().unwrap();
                        steps += 1;
                    }
                }
                Action::Eval => {
                    opt.eval(&mut encoder);
                }
                Action::Train => {
                    opt.train(&mut encoder);
                }
                Action::Check => {}
            }
            gpu.queue().submit([encoder.finish()]);
            if let Action::Check = action {
                checks.push(ids.iter().map(|&id| opt.read_param(id).unwrap()).collect::<Vec<_>>());
            }
        }
        assert!(!opt.is_train_mode(0) && opt.is_train_mode(2), "eval mode at the end; AdamW's group is always in train mode");
        for (k, (actual, expected)) in checks.iter().zip(&expected).enumerate() {
            for (t, (a, e)) in actual.iter().zip(expected).enumerate() {
                let worst = a.iter().zip(e).map(|(a, e)| (a - e).abs()).fold(0.0f32, f32::max);
                let scale = e.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                assert!(worst <= 2e-6 * scale, "check {k}, tensor {t}: {worst:e} from the CPU reference on {}", gpu.adapter());
            }
        }
    }
}

/// A run that saves after this many steps does `eval()` there (the point a user saves), and
/// the run it is compared with does `eval()` then `train()` there.
const SAVED_AT: usize = 5;

/// Steps `range` with the changing lr, resuming from `resume` first, and `eval()` + `train()`
/// after step `SAVED_AT` when it lies inside; returns the checkpoint after a final `eval()`.
fn run_cpu(range: std::ops::Range<usize>, resume: Option<&Checkpoint>) -> Checkpoint {
    let (params, groups, ids) = model();
    let lens: Vec<usize> = ids.iter().map(|&id| params.spec(id).unwrap().data.len()).collect();
    let mut opt = CpuOptimizer::new(params, groups).unwrap();
    if let Some(checkpoint) = resume {
        opt.restore(checkpoint).unwrap();
    }
    for step in range.clone() {
        for (&id, &len) in ids.iter().zip(&lens) {
            opt.write_grad(id, &gradient(step, id, len)).unwrap();
        }
        opt.set_lr(0, lr_at(step)).unwrap();
        opt.step();
        if step + 1 == SAVED_AT && step + 1 < range.end {
            opt.eval();
            opt.train();
        }
    }
    opt.eval();
    opt.checkpoint(None)
}

fn run_gpu(gpu: &wgpu_optim::GpuContext, range: std::ops::Range<usize>, resume: Option<&Checkpoint>) -> Checkpoint {
    let (params, groups, ids) = model();
    let lens: Vec<usize> = ids.iter().map(|&id| params.spec(id).unwrap().data.len()).collect();
    let mut opt = Optimizer::new(gpu, params, groups).unwrap();
    if let Some(checkpoint) = resume {
        opt.restore(checkpoint).unwrap();
    }
    for step in range.clone() {
        for (&id, &len) in ids.iter().zip(&lens) {
            opt.write_grad(id, &gradient(step, id, len)).unwrap();
        }
        opt.set_lr(0, lr_at(step)).unwrap();
        opt.step_and_submit().unwrap();
        if step + 1 == SAVED_AT && step + 1 < range.end {
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            opt.eval(&mut encoder);
            opt.train(&mut encoder);
            gpu.queue().submit([encoder.finish()]);
        }
    }
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    opt.eval(&mut encoder);
    gpu.queue().submit([encoder.finish()]);
    opt.checkpoint(None).unwrap()
}

fn tensor_bits(checkpoint: &Checkpoint) -> Vec<(String, Vec<u32>)> {
    checkpoint.tensors.iter().map(|t| (t.name.clone(), bits(&t.data))).collect()
}

#[test]
fn running_values_and_the_mode_survive_a_checkpoint() {
    let straight = run_cpu(0..12, None);
    let saved = run_cpu(0..SAVED_AT, None);
    let group = &saved.groups[0];
    assert_eq!(group.train_mode, Some(false), "saved in eval mode");
    let running = group.running.as_ref().expect("Schedule-Free saves its running values");
    assert!(running["weight_sum"] > 0.0 && running["lr_max"] > 0.02, "{running:?}");
    assert_eq!(saved.groups[2].running, None, "AdamW keeps none");
    let resumed = run_cpu(SAVED_AT..12, Some(&saved));
    assert_eq!(tensor_bits(&resumed), tensor_bits(&straight), "CPU resume");
    assert_eq!(resumed.groups, straight.groups);
    // The resume continues the lr history: starting from fresh running values would differ.
    let mut forgotten = saved.clone();
    forgotten.groups[0].running = Some([("weight_sum".to_string(), 0.0), ("lr_max".to_string(), -1.0)].into_iter().collect());
    assert_ne!(tensor_bits(&run_cpu(SAVED_AT..12, Some(&forgotten))), tensor_bits(&straight));
    for gpu in gpus() {
        let straight_gpu = run_gpu(gpu, 0..12, None);
        let saved_gpu = run_gpu(gpu, 0..SAVED_AT, None);
        assert_eq!(saved_gpu.groups, saved.groups, "the GPU saves the same running values");
        let resumed_gpu = run_gpu(gpu, SAVED_AT..12, Some(&saved_gpu));
        assert_eq!(tensor_bits(&resumed_gpu), tensor_bits(&straight_gpu), "GPU resume on {}", gpu.adapter());
    }
}
