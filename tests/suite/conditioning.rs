//! Gradient conditioning on the GPU (loss-scale unscaling, value and norm clipping, skipping
//! non-finite steps, dynamic loss scale) against the CPU reference; skipped steps leave
//! everything bit-identical and do not advance the step count; many steps recorded into one
//! submission equal steps submitted one by one.

use wgpu_optim::rules::{Adadelta, Adagrad, Adam, AdamW, Adamax, Adan, Asgd, Lion, NAdam, RAdam, RMSprop, Rprop, Sgd};
use wgpu_optim::{
    ClipGradNorm, CpuOptimizer, Error, GpuContext, GradientOptions, LossScale, Optimizer, OptimizerOptions, ParamGroup,
    Parameters, StepCounters, TensorId, UpdateRule,
};

use crate::common::{gpus, max_normwise_difference, snapshot_gpu, Rng, Snapshot};
use crate::rules::GPU_VS_CPU_TOLERANCE;

const SIZES: [usize; 3] = [1, 1000, 4099];

fn rules() -> Vec<Box<dyn UpdateRule>> {
    vec![
        Box::new(Sgd { lr: 0.05, momentum: 0.9, nesterov: true, ..Sgd::default() }),
        Box::new(Adagrad { lr: 0.05, lr_decay: 1e-2, ..Adagrad::default() }),
        Box::new(RMSprop { lr: 0.01, momentum: 0.9, centered: true, ..RMSprop::default() }),
        Box::new(Adadelta::default()),
        Box::new(Adam { lr: 0.01, amsgrad: true, ..Adam::default() }),
        Box::new(AdamW { lr: 0.01, ..AdamW::default() }),
        Box::new(NAdam { lr: 0.01, ..NAdam::default() }),
        Box::new(Adamax { lr: 0.01, ..Adamax::default() }),
        Box::new(RAdam { lr: 0.01, ..RAdam::default() }),
        Box::new(Rprop { lr: 0.01, ..Rprop::default() }),
        Box::new(Lion { lr: 1e-3, weight_decay: 0.1, ..Lion::default() }),
        Box::new(Asgd { lr: 0.01, lambd: 0.5, t0: 4.0, ..Asgd::default() }),
        Box::new(Adan { lr: 0.01, no_prox: true, weight_decay: 0.02, ..Adan::default() }),
    ]
}

fn conditionings() -> Vec<(&'static str, GradientOptions)> {
    vec![
        ("clip norm 2", GradientOptions { clip_grad_norm: Some(ClipGradNorm { max_norm: 5.0, norm_type: 2.0, error_if_nonfinite: false }), ..Default::default() }),
        ("clip norm inf", GradientOptions { clip_grad_norm: Some(ClipGradNorm { max_norm: 0.5, norm_type: f64::INFINITY, error_if_nonfinite: false }), ..Default::default() }),
        ("clip value + skip", GradientOptions { clip_grad_value: Some(0.3), skip_nonfinite: true, ..Default::default() }),
        (
            "loss scale + clip",
            GradientOptions {
                loss_scale: Some(LossScale { init_scale: 1024.0, growth_interval: 3, ..LossScale::default() }),
                clip_grad_norm: Some(ClipGradNorm { max_norm: 10.0, norm_type: 2.0, error_if_nonfinite: false }),
                ..Default::default()
            },
        ),
    ]
}

fn params(rng: &mut Rng) -> (Parameters, Vec<TensorId>) {
    let mut params = Parameters::new();
    let ids = SIZES.iter().enumerate().map(|(t, &len)| params.add(&format!("t{t}"), &[len], rng.vec(len, 1.0)).unwrap()).collect();
    (params, ids)
}

/// Gradients of step `k`: scaled by `scale`; with `poison`, a NaN at step 4 and an infinity
/// at step 9 (only where steps with them are skipped: otherwise torch, too, goes NaN).
fn gradients(rng: &mut Rng, k: usize, scale: f32, poison: bool) -> Vec<Vec<f32>> {
    SIZES
        .iter()
        .enumerate()
        .map(|(t, &len)| {
            let mut g: Vec<f32> = rng.vec(len, 1.0).into_iter().map(|x| x * scale).collect();
            if poison && t == 1 && k == 4 {
                g[17] = f32::NAN;
            }
            if poison && t == 2 && k == 9 {
                g[4098] = f32::INFINITY;
            }
            g
        })
        .collect()
}

fn snapshot_cpu(opt: &CpuOptimizer, ids: &[TensorId]) -> Snapshot {
    let mut out = Vec::new();
    for &id in ids {
        let name = opt.tensor_name(id).unwrap();
        out.push((name.to_string(), opt.param(id).unwrap().to_vec()));
        for key in opt.state_keys(id).unwrap() {
            out.push((format!("{name}.{key}"), opt.state(id, key).unwrap().to_vec()));
        }
    }
    out
}

/// The normwise difference of each kind of tensor (parameters, `exp_avg`, ...) over the
/// whole model: the clip coefficient and loss scale are shared by all tensors, so their
/// rounding (the GPU sums squares in another order than the CPU) is relative to the model's
/// scale, not to a one-element tensor whose moment ended near zero.
fn model_wise(snapshot: &Snapshot) -> Snapshot {
    let mut kinds: Vec<(String, Vec<f32>)> = Vec::new();
    for (name, values) in snapshot {
        let kind = name.split_once('.').map_or("param", |(_, key)| key).to_string();
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, all)) => all.extend(values),
            None => kinds.push((kind, values.clone())),
        }
    }
    kinds
}

fn same_counters(gpu: StepCounters, cpu: StepCounters, context: &str) {
    assert_eq!((gpu.applied_steps, gpu.skipped_steps, gpu.growth_tracker), (cpu.applied_steps, cpu.skipped_steps, cpu.growth_tracker), "{context}");
    assert_eq!(gpu.loss_scale, cpu.loss_scale, "{context}");
    let norm_difference = (gpu.last_grad_norm - cpu.last_grad_norm).abs() / cpu.last_grad_norm.abs().max(1e-30);
    assert!(norm_difference < 1e-5, "{context}: grad norm {} vs {}", gpu.last_grad_norm, cpu.last_grad_norm);
}

#[test]
fn conditioned_steps_match_the_cpu_reference() {
    const STEPS: usize = 14;
    for rule in rules() {
        for (label, gradients_options) in conditionings() {
            let scale = gradients_options.loss_scale.as_ref().map_or(1.0, |s| s.init_scale as f32);
            let context = format!("{} with {label}", rule.name());
            let mut rng = Rng::new(5);
            let (p, ids) = params(&mut rng);
            let mut cpu = CpuOptimizer::with_gradients(p.clone(), vec![ParamGroup::from_boxed(rule.clone(), ids.clone())], gradients_options.clone()).unwrap();
            let poison = gradients_options.skip_nonfinite || gradients_options.loss_scale.is_some();
            let grads: Vec<Vec<Vec<f32>>> = (0..STEPS).map(|k| gradients(&mut rng, k, scale, poison)).collect();
            for g in &grads {
                for (&id, g) in ids.iter().zip(g) {
                    cpu.write_grad(id, g).unwrap();
                }
                cpu.step();
            }
            let expected = snapshot_cpu(&cpu, &ids);
            for gpu in gpus() {
                let options = OptimizerOptions { gradients: gradients_options.clone(), ..Default::default() };
                let mut opt = Optimizer::with_options(gpu, p.clone(), vec![ParamGroup::from_boxed(rule.clone(), ids.clone())], options).unwrap();
                // ASGD's update is two passes (the elements, then each tensor's eta and mu).
                let dispatches = 2 + rule.kernel().passes.len();
                assert_eq!(opt.dispatches_per_step(), dispatches, "the norm pass, the finalize pass and the update's passes: one dispatch each");
                for g in &grads {
                    for (&id, g) in ids.iter().zip(g) {
                        opt.write_grad(id, g).unwrap();
                    }
                    let mut encoder = gpu.device().create_command_encoder(&Default::default());
                    assert_eq!(opt.step(&mut encoder).unwrap(), dispatches, "norm pass, finalize, update");
                    gpu.queue().submit([encoder.finish()]);
                }
                let (difference, tensor) = max_normwise_difference(&model_wise(&snapshot_gpu(&opt, &ids)), &model_wise(&expected));
                assert!(difference <= GPU_VS_CPU_TOLERANCE, "{context} on {}: {tensor} off by {difference:e}", gpu.adapter());
                same_counters(opt.counters().unwrap(), cpu.counters().unwrap(), &context);
            }
        }
    }
}

fn adam_with(gpu: &GpuContext, params: Parameters, ids: &[TensorId], gradients: GradientOptions) -> Optimizer {
    let options = OptimizerOptions { gradients, ..Default::default() };
    Optimizer::with_options(gpu, params, vec![ParamGroup::new(Adam { lr: 0.05, ..Adam::default() }, ids.to_vec())], options).unwrap()
}

/// The norm pass adds 16 chunks (16,384 elements) per workgroup: a gradient of many such runs,
/// swept in several windows and with grids made 2-D, gives the norm the CPU computes, with the
/// largest value in the last chunk (which a grid short of workgroups would miss).
#[test]
fn the_gradient_norm_covers_every_chunk_of_every_window() {
    const SIZES: [usize; 3] = [100_000, 2_100, 5];
    let mut rng = Rng::new(23);
    let grads: Vec<Vec<f32>> = SIZES
        .iter()
        .map(|&len| {
            let mut g = rng.vec(len, 1.0);
            g[len - 1] = if len == SIZES[0] { 30.0 } else { g[len - 1] };
            g
        })
        .collect();
    let sum_of_squares: f64 = grads.iter().flatten().map(|&x| f64::from(x) * f64::from(x)).sum();
    for gpu in gpus() {
        for (max_arena_elements, max_workgroups_per_dimension) in [(None, None), (Some(40 * 1024), Some(1))] {
            for (norm_type, expected) in [(2.0, sum_of_squares.sqrt()), (f64::INFINITY, 30.0)] {
                let mut params = Parameters::new();
                let ids: Vec<TensorId> = SIZES.iter().enumerate().map(|(k, &len)| params.add(&format!("t{k}"), &[len], vec![0.0; len]).unwrap()).collect();
                let gradients = GradientOptions { clip_grad_norm: Some(ClipGradNorm { max_norm: 1.0, norm_type, error_if_nonfinite: false }), ..Default::default() };
                let options = OptimizerOptions { gradients, max_arena_elements, max_workgroups_per_dimension, ..Default::default() };
                let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(Sgd::default(), ids.clone())], options).unwrap();
                for (&id, g) in ids.iter().zip(&grads) {
                    opt.write_grad(id, g).unwrap();
                }
                opt.step_and_submit().unwrap();
                let norm = f64::from(opt.counters().unwrap().last_grad_norm);
                let context = format!("norm_type {norm_type}, arena {max_arena_elements:?}, grid rows {max_workgroups_per_dimension:?} on {}", gpu.adapter());
                assert!((norm - expected).abs() <= 1e-5 * expected, "{context}: grad norm {norm}, expected {expected}");
            }
        }
    }
}

#[test]
fn a_skipped_step_changes_nothing_and_does_not_count() {
    let skip = GradientOptions { skip_nonfinite: true, ..Default::default() };
    for gpu in gpus() {
        let mut rng = Rng::new(9);
        let (p, ids) = params(&mut rng);
        let good: Vec<Vec<Vec<f32>>> = (0..4).map(|_| SIZES.iter().map(|&len| rng.vec(len, 1.0)).collect()).collect();
        let mut bad = good[0].clone();
        bad[2][100] = f32::NAN;

        // Three good steps, a bad one, the fourth good one...
        let mut skipping = adam_with(gpu, p.clone(), &ids, skip.clone());
        let step = |opt: &mut Optimizer, g: &[Vec<f32>]| {
            for (&id, g) in ids.iter().zip(g) {
                opt.write_grad(id, g).unwrap();
            }
            opt.step_and_submit().unwrap();
        };
        for g in &good[..3] {
            step(&mut skipping, g);
        }
        let before = snapshot_gpu(&skipping, &ids);
        step(&mut skipping, &bad);
        let after = snapshot_gpu(&skipping, &ids);
        for ((name, a), (_, b)) in after.iter().zip(&before) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b), "{name} is bit-identical after the skipped step on {}", gpu.adapter());
        }
        let counters = skipping.counters().unwrap();
        assert_eq!((counters.applied_steps, counters.skipped_steps), (3, 1));
        step(&mut skipping, &good[3]);

        // ...equal four good steps: the skipped step did not advance Adam's bias correction.
        let mut straight = adam_with(gpu, p.clone(), &ids, skip.clone());
        for g in &good {
            step(&mut straight, g);
        }
        assert_eq!(snapshot_gpu(&skipping, &ids), snapshot_gpu(&straight, &ids), "{}", gpu.adapter());
        assert_eq!(skipping.counters().unwrap().applied_steps, 4);
    }
}

#[test]
fn a_nonfinite_norm_with_error_if_nonfinite_is_reported_once_and_changes_nothing() {
    let options = GradientOptions { clip_grad_norm: Some(ClipGradNorm { max_norm: 1.0, norm_type: 2.0, error_if_nonfinite: true }), ..Default::default() };
    for gpu in gpus() {
        let mut rng = Rng::new(2);
        let (p, ids) = params(&mut rng);
        let mut opt = adam_with(gpu, p.clone(), &ids, options.clone());
        let mut cpu = CpuOptimizer::with_gradients(p.clone(), vec![ParamGroup::new(Adam { lr: 0.05, ..Adam::default() }, ids.clone())], options.clone()).unwrap();
        let before = snapshot_gpu(&opt, &ids);
        for (k, &id) in ids.iter().enumerate() {
            let mut g = rng.vec(SIZES[k], 1.0);
            g[0] = f32::INFINITY;
            opt.write_grad(id, &g).unwrap();
            cpu.write_grad(id, &g).unwrap();
        }
        opt.step_and_submit().unwrap();
        cpu.step();
        assert!(matches!(opt.counters(), Err(Error::NonFiniteGradNorm)));
        assert!(matches!(cpu.counters(), Err(Error::NonFiniteGradNorm)));
        assert_eq!(snapshot_gpu(&opt, &ids), before, "nothing changed");
        let counters = opt.counters().expect("reported once");
        assert_eq!((counters.applied_steps, counters.skipped_steps), (0, 1));
    }
}

#[test]
fn the_loss_scale_grows_and_backs_off_like_grad_scaler() {
    let options = GradientOptions {
        loss_scale: Some(LossScale { init_scale: 256.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2 }),
        ..Default::default()
    };
    for gpu in gpus() {
        let mut params = Parameters::new();
        let w = params.add("w", &[3], vec![1.0, 2.0, 3.0]).unwrap();
        let mut opt = adam_with(gpu, params, &[w], options.clone());
        let read_scale = |opt: &Optimizer| opt.read(&opt.loss_scale_view()).unwrap()[0];
        assert_eq!(read_scale(&opt), 256.0, "the backward pass reads the scale on the GPU");
        let mut scales = Vec::new();
        for grad in [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [f32::NAN, 0.0, 0.0], [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]] {
            opt.write_grad(w, &grad.map(|g| g * read_scale(&opt))).unwrap();
            opt.step_and_submit().unwrap();
            scales.push(read_scale(&opt));
        }
        assert_eq!(scales, [256.0, 512.0, 256.0, 256.0, 512.0]);
        let counters = opt.counters().unwrap();
        assert_eq!((counters.applied_steps, counters.skipped_steps, counters.loss_scale), (4, 1, 512.0));
    }
}

#[test]
fn many_steps_in_one_submission_equal_steps_submitted_one_by_one() {
    // PyTorch's `capturable`: the step count and learning rate of every step are on the GPU
    // when the submission runs; here 200 steps with a changing lr, with and without gradient
    // conditioning, against the same steps submitted and driven one at a time.
    const STEPS: u64 = 200;
    for gradients in [GradientOptions::default(), GradientOptions { clip_grad_norm: Some(ClipGradNorm { max_norm: 0.1, norm_type: 2.0, error_if_nonfinite: false }), ..Default::default() }] {
        for gpu in gpus() {
            let make = || {
                let mut params = Parameters::new();
                let w = params.add("w", &[2], vec![-1.5, 2.0]).unwrap();
                let options = OptimizerOptions { steps_in_flight: Some(STEPS), gradients: gradients.clone(), ..Default::default() };
                (Optimizer::with_options(gpu, params, vec![ParamGroup::new(NAdam { lr: 0.05, ..NAdam::default() }, [w])], options).unwrap(), w)
            };
            let lr = |k: u64| 0.05 * 0.5 * (1.0 + (std::f64::consts::PI * k as f64 / STEPS as f64).cos());
            let (mut captured, w) = make();
            captured.write_grad(w, &[0.3, -0.7]).unwrap();
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            for k in 0..STEPS {
                captured.set_lr(0, lr(k)).unwrap();
                captured.step(&mut encoder).unwrap();
            }
            gpu.queue().submit([encoder.finish()]);
            let (mut driven, w2) = make();
            driven.write_grad(w2, &[0.3, -0.7]).unwrap();
            for k in 0..STEPS {
                driven.set_lr(0, lr(k)).unwrap();
                driven.step_and_submit().unwrap();
                driven.read_param(w2).unwrap(); // a CPU round trip every step
            }
            assert_eq!(captured.read_param(w).unwrap(), driven.read_param(w2).unwrap(), "{}", gpu.adapter());
            assert_eq!(captured.counters().unwrap().applied_steps, STEPS);
        }
    }
}

#[test]
fn invalid_gradient_options_are_errors() {
    let mut params = Parameters::new();
    let w = params.add("w", &[1], vec![0.0]).unwrap();
    for (options, message) in [
        (GradientOptions { clip_grad_norm: Some(ClipGradNorm { max_norm: -1.0, norm_type: 2.0, error_if_nonfinite: false }), ..Default::default() }, "max_norm"),
        (GradientOptions { clip_grad_norm: Some(ClipGradNorm { max_norm: 1.0, norm_type: 1.0, error_if_nonfinite: false }), ..Default::default() }, "only 2 and inf"),
        (GradientOptions { clip_grad_value: Some(f64::NAN), ..Default::default() }, "clip_grad_value"),
        (GradientOptions { loss_scale: Some(LossScale { growth_factor: 0.5, ..LossScale::default() }), ..Default::default() }, "growth_factor"),
        (GradientOptions { loss_scale: Some(LossScale { backoff_factor: 1.0, ..LossScale::default() }), ..Default::default() }, "backoff_factor"),
        (GradientOptions { loss_scale: Some(LossScale { growth_interval: 0, ..LossScale::default() }), ..Default::default() }, "growth_interval"),
    ] {
        let cpu = CpuOptimizer::with_gradients(params.clone(), vec![ParamGroup::new(Sgd::default(), [w])], options.clone());
        assert!(cpu.err().expect("rejected").to_string().contains(message), "{message}");
        for gpu in gpus() {
            let opt = Optimizer::with_options(gpu, params.clone(), vec![ParamGroup::new(Sgd::default(), [w])], OptimizerOptions { gradients: options.clone(), ..Default::default() });
            assert!(opt.err().expect("rejected").to_string().contains(message), "{message}");
        }
    }
}

#[test]
fn asgd_eta_follows_the_lr_history_across_skipped_steps() {
    // ASGD's eta after step t is computed from step t's lr and t. With skipped steps the GPU's
    // t lags behind the CPU's count until the counters are read back; eta must still come from
    // the lr of the step that applied it (the scalars carry eta for the CPU's t and the 15
    // before it). The lr changes every step, and nothing is read back before the end.
    const STEPS: usize = 14;
    let rule = Asgd { lr: 0.01, lambd: 0.5, t0: 4.0, ..Asgd::default() };
    let lr = |k: usize| 0.01 * (1.0 + 0.25 * k as f64);
    let gradients_options = GradientOptions { skip_nonfinite: true, ..Default::default() };
    let mut rng = Rng::new(11);
    let (p, ids) = params(&mut rng);
    let mut cpu = CpuOptimizer::with_gradients(p.clone(), vec![ParamGroup::new(rule.clone(), ids.clone())], gradients_options.clone()).unwrap();
    let grads: Vec<Vec<Vec<f32>>> = (0..STEPS).map(|k| gradients(&mut rng, k, 1.0, true)).collect();
    for (k, g) in grads.iter().enumerate() {
        cpu.set_lr(0, lr(k)).unwrap();
        for (&id, g) in ids.iter().zip(g) {
            cpu.write_grad(id, g).unwrap();
        }
        cpu.step();
    }
    let expected = snapshot_cpu(&cpu, &ids);
    for gpu in gpus() {
        let options = OptimizerOptions { gradients: gradients_options.clone(), ..Default::default() };
        let mut opt = Optimizer::with_options(gpu, p.clone(), vec![ParamGroup::new(rule.clone(), ids.clone())], options).unwrap();
        for (k, g) in grads.iter().enumerate() {
            opt.set_lr(0, lr(k)).unwrap();
            for (&id, g) in ids.iter().zip(g) {
                opt.write_grad(id, g).unwrap();
            }
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            opt.step(&mut encoder).unwrap();
            gpu.queue().submit([encoder.finish()]);
        }
        let actual = snapshot_gpu(&opt, &ids);
        for ((name, a), (_, e)) in actual.iter().zip(&expected) {
            if name.ends_with(".eta") || name.ends_with(".mu") {
                assert_eq!(a, e, "{name} on {}", gpu.adapter());
            }
        }
        assert!(actual.iter().any(|(name, _)| name.ends_with(".eta")), "the snapshot holds eta");
        let (difference, tensor) = max_normwise_difference(&actual, &expected);
        assert!(difference <= GPU_VS_CPU_TOLERANCE, "{} : {tensor} off by {difference:e}", gpu.adapter());
        same_counters(opt.counters().unwrap(), cpu.counters().unwrap(), "ASGD with a changing lr");
    }
}
