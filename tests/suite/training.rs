//! The training example's GPU model (examples/train/: its WGSL forward and backward kernels
//! and their host code, compiled in here from the same files) on a few dozen real digits:
//! gradients written into the optimizer's arenas match a CPU backward pass, and a few steps of
//! AdamW lower the loss; bound to L-BFGS's views instead (with the L2 penalty its runs add), the
//! same kernels write its loss and gradients, and a few full-batch L-BFGS steps lower the loss.

#[allow(dead_code)]
#[path = "../../examples/train/data.rs"]
mod data;
#[allow(dead_code)]
#[path = "../../examples/train/model.rs"]
mod model;

use std::path::Path;

use wgpu_optim::rules::AdamW;
use wgpu_optim::{read_views, Lbfgs, LbfgsOptions, LineSearch, Optimizer, ParamGroup, TensorView};

use crate::common::gpus;
use data::{Split, CLASSES};
use model::{Bindings, Kernels, Layer, Mlp};

const SIZES: [usize; 4] = [64, 24, 16, CLASSES];
const BATCH: usize = 16;

/// The first `train` and the next `test` samples of the digits' training split.
fn digits(train: usize, test: usize) -> (Split, Split) {
    let all = data::digits(Path::new(data::DIGITS_PATH)).expect("the committed digits data set loads").train;
    let f = all.features;
    let take = |from: usize, n: usize| Split {
        features: f,
        x: all.x[from * f..(from + n) * f].to_vec(),
        y: all.y[from..from + n].to_vec(),
    };
    (take(0, train), take(train, test))
}

fn optimizer(gpu: &wgpu_optim::GpuContext, lr: f64) -> (Optimizer, Vec<Layer>) {
    optimizer_in(gpu, lr, wgpu_optim::Precision::default())
}

/// With the parameters and state in the types of `precision`.
fn optimizer_in(gpu: &wgpu_optim::GpuContext, lr: f64, precision: wgpu_optim::Precision) -> (Optimizer, Vec<Layer>) {
    let (params, layers) = model::init_parameters(&SIZES, 7).unwrap();
    let rule = AdamW { lr, ..AdamW::default() };
    let groups = vec![
        ParamGroup::new(rule.clone(), layers.iter().map(|l| l.w)),
        ParamGroup::new(AdamW { weight_decay: 0.0, ..rule }, layers.iter().map(|l| l.b)),
    ];
    let options = wgpu_optim::OptimizerOptions { precision, ..Default::default() };
    (Optimizer::with_options(gpu, params, groups, options).unwrap(), layers)
}

/// Per layer: weights and bias.
type LayerValues<T> = (Vec<T>, Vec<T>);

/// Mean cross-entropy and its gradient for every layer (dW, db), in f64 on the CPU.
fn cpu_backward(params: &[LayerValues<f32>], x: &[f32], y: &[u32]) -> (f64, Vec<LayerValues<f64>>) {
    let rows = y.len();
    let mut acts: Vec<Vec<f64>> = vec![x.iter().map(|&v| f64::from(v)).collect()];
    for (k, (w, b)) in params.iter().enumerate() {
        let (inputs, outputs) = (SIZES[k], SIZES[k + 1]);
        let input = &acts[k];
        let mut out = vec![0.0; rows * outputs];
        for r in 0..rows {
            for o in 0..outputs {
                let z: f64 = (0..inputs).map(|i| input[r * inputs + i] * f64::from(w[o * inputs + i])).sum::<f64>() + f64::from(b[o]);
                out[r * outputs + o] = if k + 1 < params.len() { z.max(0.0) } else { z };
            }
        }
        acts.push(out);
    }
    let logits = acts.last().unwrap();
    let mut delta = vec![0.0; rows * CLASSES];
    let mut loss = 0.0;
    for r in 0..rows {
        let row = &logits[r * CLASSES..(r + 1) * CLASSES];
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|z| (z - m).exp()).sum();
        loss += s.ln() + m - row[y[r] as usize];
        for c in 0..CLASSES {
            let onehot = if c == y[r] as usize { 1.0 } else { 0.0 };
            delta[r * CLASSES + c] = ((row[c] - m).exp() / s - onehot) / rows as f64;
        }
    }
    let mut grads = vec![(Vec::new(), Vec::new()); params.len()];
    for k in (0..params.len()).rev() {
        let (inputs, outputs) = (SIZES[k], SIZES[k + 1]);
        let input = &acts[k];
        let mut dw = vec![0.0; outputs * inputs];
        let mut db = vec![0.0; outputs];
        for r in 0..rows {
            for o in 0..outputs {
                let d = delta[r * outputs + o];
                db[o] += d;
                for i in 0..inputs {
                    dw[o * inputs + i] += d * input[r * inputs + i];
                }
            }
        }
        let mut previous = vec![0.0; rows * inputs];
        for r in 0..rows {
            for i in 0..inputs {
                if input[r * inputs + i] > 0.0 {
                    previous[r * inputs + i] = (0..outputs).map(|o| delta[r * outputs + o] * f64::from(params[k].0[o * inputs + i])).sum();
                }
            }
        }
        grads[k] = (dw, db);
        delta = previous;
    }
    (loss / rows as f64, grads)
}

/// Largest difference relative to the largest reference magnitude.
fn scaled_error(gpu: &[f32], cpu: &[f64]) -> f64 {
    let scale = cpu.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    gpu.iter().zip(cpu).map(|(&g, &c)| (f64::from(g) - c).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn kernels_write_the_gradient_into_the_optimizers_arenas() {
    use wgpu_optim::Dtype;
    // The model reads its parameters in each type (f16 and bf16: the master weights' copy,
    // which its kernels unpack); the CPU backward takes the same rounded values.
    for (gpu, dtype) in gpus().into_iter().flat_map(|gpu| [Dtype::F32, Dtype::Bf16, Dtype::F16].map(move |d| (gpu, d))) {
        let (train, test) = digits(BATCH, 20);
        let precision = wgpu_optim::Precision { params: dtype, master_weights: dtype != Dtype::F32, ..Default::default() };
        let (opt, layers) = optimizer_in(gpu, 1e-2, precision);
        let kernels = Kernels::new(gpu, dtype).unwrap();
        let order: Vec<u32> = (0..BATCH as u32).rev().collect(); // a permuted batch: exercises the gather
        let mlp = Mlp::new(&opt, &kernels, &layers, BATCH, &train, &test, &order).unwrap();
        let params: Vec<LayerValues<f32>> =
            layers.iter().map(|l| (opt.read_param(l.w).unwrap(), opt.read_param(l.b).unwrap())).collect();

        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        mlp.record_forward_backward(&mut encoder, 0).unwrap();
        mlp.record_metrics(&mut encoder, 0).unwrap();
        gpu.queue().submit([encoder.finish()]);
        let (gpu_loss, gpu_norm) = mlp.read_history(0, 1).unwrap()[0];

        let x: Vec<f32> = order.iter().flat_map(|&r| train.x[r as usize * 64..(r as usize + 1) * 64].to_vec()).collect();
        let y: Vec<u32> = order.iter().map(|&r| train.y[r as usize]).collect();
        let (cpu_loss, cpu_grads) = cpu_backward(&params, &x, &y);
        assert!((f64::from(gpu_loss) - cpu_loss).abs() < 1e-5 * cpu_loss, "{}: loss {gpu_loss} vs {cpu_loss}", gpu.adapter());
        let cpu_norm = params.iter().flat_map(|(w, b)| w.iter().chain(b)).map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        assert!((gpu_norm - cpu_norm).abs() < 1e-5 * cpu_norm, "{}: parameter norm {gpu_norm} vs {cpu_norm}", gpu.adapter());
        for (layer, (dw, db)) in layers.iter().zip(&cpu_grads) {
            let (gw, gb) = (opt.read_grad(layer.w).unwrap(), opt.read_grad(layer.b).unwrap());
            // f32 sums of a few dozen terms against f64: a few ulps of the gradient's scale.
            assert!(scaled_error(&gw, dw) < 1e-5, "{}: dW of a {}×{} layer off by {:e}", gpu.adapter(), layer.outputs, layer.inputs, scaled_error(&gw, dw));
            assert!(scaled_error(&gb, db) < 1e-5, "{}: db of a {}-wide layer off by {:e}", gpu.adapter(), layer.outputs, scaled_error(&gb, db));
        }
    }
}

#[test]
fn a_few_adamw_steps_lower_the_loss() {
    const SAMPLES: usize = 48;
    const EPOCHS: usize = 8;
    let steps_per_epoch = SAMPLES / BATCH;
    for gpu in gpus() {
        let (train, test) = digits(SAMPLES, 40);
        let (mut opt, layers) = optimizer(gpu, 3e-2);
        let kernels = Kernels::new(gpu, wgpu_optim::Dtype::F32).unwrap();
        let order = data::batch_order(SAMPLES, BATCH, EPOCHS, 3);
        let mlp = Mlp::new(&opt, &kernels, &layers, BATCH, &train, &test, &order).unwrap();
        let (_, accuracy_before) = mlp.evaluate().unwrap();

        // Every step recorded into one submission: no CPU round trip between steps.
        let steps = steps_per_epoch * EPOCHS;
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        for step in 0..steps {
            mlp.record_forward_backward(&mut encoder, step).unwrap();
            opt.step(&mut encoder).unwrap();
            mlp.record_metrics(&mut encoder, step).unwrap();
        }
        gpu.queue().submit([encoder.finish()]);
        let losses: Vec<f32> = mlp.read_history(0, steps).unwrap().iter().map(|&(loss, _)| loss).collect();
        let epoch_mean = |e: usize| losses[e * steps_per_epoch..(e + 1) * steps_per_epoch].iter().sum::<f32>() / steps_per_epoch as f32;
        let (first, last) = (epoch_mean(0), epoch_mean(EPOCHS - 1));
        assert!(losses.iter().all(|l| l.is_finite()), "{}: {losses:?}", gpu.adapter());
        assert!(last < 0.5 * first, "{}: mean loss {first} in the first epoch, {last} in the last: {losses:?}", gpu.adapter());
        let (test_loss, accuracy_after) = mlp.evaluate().unwrap();
        assert!(test_loss.is_finite() && (0.0..=1.0).contains(&accuracy_after), "{}: {test_loss} {accuracy_after}", gpu.adapter());
        assert!(accuracy_after > accuracy_before, "{}: test accuracy {accuracy_before} -> {accuracy_after}", gpu.adapter());
    }
}

#[test]
fn a_batch_order_past_the_training_set_is_an_error() {
    let gpu = &gpus()[0];
    let (train, test) = digits(BATCH, 8);
    let (opt, layers) = optimizer(gpu, 1e-2);
    let kernels = Kernels::new(gpu, wgpu_optim::Dtype::F32).unwrap();
    let order = vec![BATCH as u32; BATCH];
    let Err(error) = Mlp::new(&opt, &kernels, &layers, BATCH, &train, &test, &order) else {
        panic!("index 16 of 16 samples was accepted");
    };
    assert!(error.to_string().contains("past the 16 training samples"), "{error}");
    let mlp = Mlp::new(&opt, &kernels, &layers, BATCH, &train, &test, &[0; BATCH]).unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    assert!(mlp.record_forward_backward(&mut encoder, 1).is_err(), "the order holds one step");
}

#[test]
fn a_few_full_batch_lbfgs_steps_lower_the_loss() {
    const SAMPLES: usize = 48;
    const L2: f32 = 1e-3;
    for gpu in gpus() {
        let (train, test) = digits(SAMPLES, 40);
        let (params, layers) = model::init_parameters(&SIZES, 7).unwrap();
        let options = LbfgsOptions { max_iter: 10, history_size: 10, line_search_fn: Some(LineSearch::StrongWolfe), ..LbfgsOptions::default() };
        let mut lbfgs = Lbfgs::new(gpu, params, options).unwrap();
        let kernels = Kernels::new(gpu, wgpu_optim::Dtype::F32).unwrap();
        let bindings = Bindings::lbfgs(&lbfgs, &layers, L2).unwrap();
        let everything: Vec<u32> = (0..SAMPLES as u32).collect();
        let mlp = Mlp::with_bindings(gpu, &bindings, &kernels, &layers, SAMPLES, &train, &test, &everything).unwrap();
        let (_, accuracy_before) = mlp.evaluate().unwrap();

        // What the closure writes: the mean loss plus λ/2·Σ‖W‖² into loss_view(), the gradients
        // (λ·W added to the weights') into grad(id).
        let params: Vec<LayerValues<f32>> =
            layers.iter().map(|l| (lbfgs.read_param(l.w).unwrap(), lbfgs.read_param(l.b).unwrap())).collect();
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        mlp.record_forward_backward(&mut encoder, 0).unwrap();
        gpu.queue().submit([encoder.finish()]);
        let views: Vec<TensorView> = std::iter::once(lbfgs.loss_view())
            .chain(layers.iter().flat_map(|l| [lbfgs.grad(l.w).unwrap(), lbfgs.grad(l.b).unwrap()]))
            .collect();
        let written = pollster::block_on(read_views(gpu, &views)).unwrap();
        let (cross_entropy, cpu_grads) = cpu_backward(&params, &train.x, &train.y);
        let penalty: f64 = params.iter().flat_map(|(w, _)| w).map(|&v| 0.5 * f64::from(L2) * f64::from(v).powi(2)).sum();
        let (gpu_loss, cpu_loss) = (f64::from(written[0][0]), cross_entropy + penalty);
        assert!((gpu_loss - cpu_loss).abs() < 1e-5 * cpu_loss, "{}: loss {gpu_loss} vs {cpu_loss}", gpu.adapter());
        for (k, (layer, (dw, db))) in layers.iter().zip(&cpu_grads).enumerate() {
            let dw: Vec<f64> = dw.iter().zip(&params[k].0).map(|(g, &w)| g + f64::from(L2) * f64::from(w)).collect();
            let (gw, gb) = (&written[1 + 2 * k], &written[2 + 2 * k]);
            assert!(scaled_error(gw, &dw) < 1e-5, "{}: dW of a {}×{} layer off by {:e}", gpu.adapter(), layer.outputs, layer.inputs, scaled_error(gw, &dw));
            assert!(scaled_error(gb, db) < 1e-5, "{}: db of a {}-wide layer off by {:e}", gpu.adapter(), layer.outputs, scaled_error(gb, db));
        }

        // Each step calls the closure (forward and backward over all 48 samples) as its line
        // search needs; the loss it returns is the one before the step.
        let mut losses = Vec::new();
        for _ in 0..4 {
            let loss = lbfgs.step(|encoder| mlp.record_forward_backward(encoder, 0).map_err(|e| wgpu_optim::Error::Tensor(e.0))).unwrap();
            let report = lbfgs.last_step();
            assert!(report.evaluations >= 1 && report.reads >= report.evaluations as usize, "{}: {report:?}", gpu.adapter());
            losses.push(loss);
        }
        assert!((f64::from(losses[0]) - cpu_loss).abs() < 1e-5 * cpu_loss, "{}: first step's loss {} vs {cpu_loss}", gpu.adapter(), losses[0]);
        assert!(losses.iter().all(|l| l.is_finite()) && losses.windows(2).all(|w| w[1] <= w[0]), "{}: {losses:?}", gpu.adapter());
        assert!(losses[3] < 0.5 * losses[0], "{}: loss {losses:?}", gpu.adapter());
        assert!(lbfgs.func_evals() > 4 && lbfgs.n_iter() > 4, "{}: {} evaluations, {} iterations", gpu.adapter(), lbfgs.func_evals(), lbfgs.n_iter());
        let (test_loss, accuracy_after) = mlp.evaluate().unwrap();
        assert!(test_loss.is_finite() && (0.0..=1.0).contains(&accuracy_after), "{}: {test_loss} {accuracy_after}", gpu.adapter());
        assert!(accuracy_after > accuracy_before, "{}: test accuracy {accuracy_before} -> {accuracy_after}", gpu.adapter());
    }
}
