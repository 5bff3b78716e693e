//! Storage types (src/storage.rs): f16/bf16 parameters with and without f32 master weights,
//! f16/bf16 gradients, bf16 state rounded to nearest or stochastically. The CPU twin rounds as
//! the kernels do, so every combination is compared bit for bit on every adapter.

use wgpu_optim::rules::{Adagrad, Adam, AdamW, Lion, Muon, RMSprop, Sgd};
use wgpu_optim::storage::rounding_random;
use wgpu_optim::{CpuOptimizer, Dtype, Error, Optimizer, OptimizerOptions, ParamGroup, Parameters, Precision, Rounding, TensorId, UpdateRule};

use crate::common::{gpus, Rng};

/// Tensor sizes: odd lengths, a tensor of several chunks, one below a vec4.
const SIZES: [usize; 4] = [1000, 37, 4099, 3];

fn model(seed: u64) -> (Parameters, Vec<TensorId>) {
    let mut rng = Rng::new(seed);
    let mut params = Parameters::new();
    let ids = SIZES.iter().enumerate().map(|(k, &n)| params.add(&format!("t{k}"), &[n], rng.vec(n, 1.0)).unwrap()).collect();
    (params, ids)
}

fn precision(params: Dtype, master_weights: bool, grads: Dtype, state: Dtype, rounding: Rounding) -> Precision {
    Precision { params, master_weights, grads, state, rounding }
}

/// The combinations the twin test covers: each parameter form, each gradient type and each
/// state type, under both roundings.
fn combinations() -> Vec<Precision> {
    use Dtype::*;
    let sr = Rounding::Stochastic { seed: 12345 };
    let rne = Rounding::NearestEven;
    vec![
        precision(F32, false, F32, Bf16, rne),
        precision(F32, false, F32, Bf16, sr),
        precision(Bf16, true, Bf16, F32, rne),
        precision(F16, true, F16, Bf16, sr),
        precision(Bf16, false, F32, Bf16, rne),
        precision(Bf16, false, Bf16, Bf16, sr),
        precision(F16, false, F32, F32, sr),
        precision(Bf16, true, Bf16, Bf16, sr),
        precision(F32, false, F32, Int8, rne),
        precision(Bf16, true, Bf16, Int8, sr),
    ]
}

fn rules() -> Vec<Box<dyn UpdateRule>> {
    vec![
        Box::new(AdamW { lr: 1e-2, ..AdamW::default() }),
        Box::new(Adam { lr: 1e-2, amsgrad: true, weight_decay: 0.01, ..Adam::default() }),
        Box::new(Sgd { lr: 1e-2, momentum: 0.9, nesterov: true, ..Sgd::default() }),
        Box::new(Lion { lr: 1e-3, ..Lion::default() }),
        Box::new(RMSprop { lr: 1e-3, momentum: 0.5, centered: true, ..RMSprop::default() }),
        Box::new(Adagrad { lr: 1e-2, initial_accumulator_value: 0.1, ..Adagrad::default() }),
    ]
}

fn gradient(rng: &mut Rng, len: usize, step: usize) -> Vec<f32> {
    rng.vec(len, 1.0 / (1.0 + step as f32)).into_iter().map(|g| g * 3.0).collect()
}

/// Bit-for-bit equality, reporting the first differing element and how many differ.
fn assert_same(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    let differing: Vec<usize> = (0..actual.len()).filter(|&k| actual[k].to_bits() != expected[k].to_bits()).collect();
    if let Some(&k) = differing.first() {
        let first: Vec<usize> = differing.iter().take(12).copied().collect();
        panic!("{what}: {} of {} elements differ, at {first:?}...; first: {:e} against {:e}", differing.len(), actual.len(), actual[k], expected[k]);
    }
}

#[test]
fn every_combination_equals_the_cpu_twin_bit_for_bit() {
    const STEPS: usize = 4;
    for gpu in gpus() {
        for rule in rules() {
            for p in combinations() {
                let what = format!("{} {:?} on {}", rule.name(), p, gpu.adapter());
                let (params, ids) = model(1);
                let options = OptimizerOptions { precision: p, ..Default::default() };
                let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::from_boxed(rule.clone_box(), ids.clone())], options).unwrap();
                let (params, ids_cpu) = model(1);
                let mut twin = CpuOptimizer::new(params, vec![ParamGroup::from_boxed(rule.clone_box(), ids_cpu.clone())]).unwrap().with_precision(p).unwrap();
                let mut rng = Rng::new(99);
                for step in 0..STEPS {
                    for ((&id, &twin_id), &n) in ids.iter().zip(&ids_cpu).zip(&SIZES) {
                        let g = gradient(&mut rng, n, step);
                        opt.write_grad(id, &g).unwrap();
                        twin.write_grad(twin_id, &g).unwrap();
                    }
                    opt.step_and_submit().unwrap();
                    twin.step();
                }
                for (&id, &twin_id) in ids.iter().zip(&ids_cpu) {
                    let name = opt.tensor_name(id).unwrap().to_string();
                    let model_param = opt.read_param(id).unwrap();
                    assert_same(&model_param, &twin.model_param(twin_id).unwrap(), &format!("{what}: {name} as the model reads it"));
                    let updated = if p.master_weights { opt.read(&opt.master_param(id).unwrap()).unwrap() } else { model_param.clone() };
                    assert_same(&updated, twin.param(twin_id).unwrap(), &format!("{what}: {name} as the step updates it"));
                    for key in opt.state_keys(id).unwrap() {
                        let state = opt.read_state(id, key).unwrap();
                        assert_same(&state, twin.state(twin_id, key).unwrap(), &format!("{what}: {name}.{key}"));
                        if p.state == Dtype::Bf16 {
                            assert!(state.iter().all(|&x| p.state.round(x).to_bits() == x.to_bits()), "{what}: {key} holds {} values", p.state);
                        }
                    }
                    assert!(model_param.iter().all(|&x| p.params.round(x).to_bits() == x.to_bits()), "{what}: params hold {} values", p.params);
                }
            }
        }
    }
}

#[test]
fn conversions_match_the_half_crate() {
    // Every 2^-12 of the f32 bit patterns' range, plus the edges of f16's range.
    let mut patterns: Vec<u32> = (0..(1u32 << 20)).map(|k| k.wrapping_mul(4093).wrapping_add(k >> 7)).collect();
    patterns.extend([0x477f_e000, 0x477f_efff, 0x477f_f000, 0x3880_0000, 0x387f_ffff, 0x3300_0000, 0x3300_0001, 0x7f80_0000, 0x7fc0_0000, 0x8000_0000]);
    for &b in &patterns {
        for bits in [b, b | 0x8000_0000] {
            let x = f32::from_bits(bits);
            let f16 = half::f16::from_f32(x);
            let bf16 = half::bf16::from_f32(x);
            if x.is_nan() {
                assert!(Dtype::F16.round(x).is_nan() && Dtype::Bf16.round(x).is_nan());
                continue;
            }
            assert_eq!(Dtype::F16.nearest_bits(x), u32::from(f16.to_bits()), "f16 of {x:e} ({bits:#x})");
            assert_eq!(Dtype::Bf16.nearest_bits(x), u32::from(bf16.to_bits()), "bf16 of {x:e} ({bits:#x})");
            assert_eq!(Dtype::F16.value(u32::from(f16.to_bits())).to_bits(), f16.to_f32().to_bits(), "f16 value {:#x}", f16.to_bits());
            assert_eq!(Dtype::Bf16.value(u32::from(bf16.to_bits())).to_bits(), bf16.to_f32().to_bits());
        }
    }
}

#[test]
fn stochastic_rounding_is_unbiased_and_keeps_small_updates() {
    // Unbiased: the mean of many roundings of x is x (to the sampling error), for both types.
    for dtype in [Dtype::Bf16, Dtype::F16] {
        for x in [1.0f32 + 1.0 / 3.0, -0.1, 3.0e-6, 1000.7] {
            let n = 20_000;
            let mean: f64 = (0..n).map(|k| f64::from(dtype.value(dtype.stochastic_bits(x, rounding_random(5, 1, 0, 0, k))))).sum::<f64>() / f64::from(n);
            let unit = f64::from((dtype.round(x) - dtype.value(dtype.nearest_bits(x) + 1)).abs());
            assert!((mean - f64::from(x)).abs() < 0.02 * unit, "{dtype} {x}: mean {mean}, unit {unit}");
        }
    }
    // bf16 parameters without a master copy: SGD steps of 1e-4 on parameters of 1.0 (half a
    // bf16 unit is 2^-8 = 0.0039) are lost to nearest rounding, kept on average by stochastic.
    for gpu in gpus() {
        let mut finals = Vec::new();
        for rounding in [Rounding::NearestEven, Rounding::Stochastic { seed: 3 }] {
            let mut params = Parameters::new();
            let w = params.add("w", &[4096], vec![1.0; 4096]).unwrap();
            let p = precision(Dtype::Bf16, false, Dtype::F32, Dtype::F32, rounding);
            let options = OptimizerOptions { precision: p, ..Default::default() };
            let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(Sgd { lr: 1e-4, ..Sgd::default() }, [w])], options).unwrap();
            opt.write_grad(w, &[1.0; 4096]).unwrap();
            for _ in 0..200 {
                opt.step_and_submit().unwrap();
            }
            let values = opt.read_param(w).unwrap();
            finals.push(values.iter().map(|&x| f64::from(x)).sum::<f64>() / 4096.0);
        }
        assert_eq!(finals[0], 1.0, "nearest rounding loses every step");
        assert!((finals[1] - 0.98).abs() < 0.002, "stochastic rounding keeps them on average: mean {} (exact 0.98)", finals[1]);
    }
}

#[test]
fn memory_reports_bytes_per_parameter() {
    let gpus = gpus();
    let gpu = &gpus[0];
    let mut bytes = Vec::new();
    for p in [Precision::default(), precision(Dtype::Bf16, true, Dtype::Bf16, Dtype::Bf16, Rounding::NearestEven)] {
        let mut params = Parameters::new();
        let w = params.zeros("w", &[512, 512]).unwrap();
        let options = OptimizerOptions { precision: p, ..Default::default() };
        let opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(AdamW::default(), [w])], options).unwrap();
        let memory = opt.memory();
        println!("{memory}");
        let role = |name: &str| memory.buffers.iter().find(|b| b.role == name).map(|b| (b.dtype, b.bytes));
        let n = 512 * 512;
        if p.is_f32() {
            assert_eq!(role("param"), Some((Some(Dtype::F32), 4 * n)));
            assert_eq!(role("exp_avg_sq"), Some((Some(Dtype::F32), 4 * n)));
            assert_eq!(memory.state_bytes_per_parameter(), 8.0);
        } else {
            assert_eq!(role("master param"), Some((Some(Dtype::F32), 4 * n)));
            assert_eq!(role("param"), Some((Some(Dtype::Bf16), 2 * n)));
            assert_eq!(role("grad"), Some((Some(Dtype::Bf16), 2 * n)));
            assert_eq!(role("exp_avg"), Some((Some(Dtype::Bf16), 2 * n)));
            assert_eq!(memory.state_bytes_per_parameter(), 4.0);
        }
        bytes.push(memory.bytes_per_parameter());
    }
    // Beyond the arenas: the optimizer's tables and ring of step scalars (82 KB here, 0.31 B
    // per parameter of this small model).
    assert!(bytes[0] > 16.0 && bytes[0] < 16.35, "f32 AdamW: {}", bytes[0]);
    assert!(bytes[1] > 12.0 && bytes[1] < 12.35, "bf16 + master + bf16 grads + bf16 state: {}", bytes[1]);
}

#[test]
fn checkpoints_keep_each_buffer_in_its_type_and_resume_bit_exact() {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-precision-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = precision(Dtype::Bf16, true, Dtype::Bf16, Dtype::Bf16, Rounding::Stochastic { seed: 77 });
    let rule = || ParamGroup::new(AdamW { lr: 1e-2, ..AdamW::default() }, []);
    for gpu in gpus() {
        let build = |precision: Precision| {
            let (params, ids) = model(4);
            let options = OptimizerOptions { precision, ..Default::default() };
            (Optimizer::with_options(gpu, params, vec![ParamGroup { tensors: ids.clone(), ..rule() }], options), ids)
        };
        let feed = |opt: &mut Optimizer, ids: &[TensorId], steps: std::ops::Range<usize>| {
            for step in steps {
                let mut rng = Rng::new(step as u64);
                for (&id, &n) in ids.iter().zip(&SIZES) {
                    opt.write_grad(id, &gradient(&mut rng, n, step)).unwrap();
                }
                opt.step_and_submit().unwrap();
            }
        };
        let (straight, ids) = build(p);
        let mut straight = straight.unwrap();
        feed(&mut straight, &ids, 0..6);
        let (first, first_ids) = build(p);
        let mut first = first.unwrap();
        feed(&mut first, &first_ids, 0..3);
        let path = dir.join("bf16.safetensors");
        first.save_checkpoint(&path, None).unwrap();
        // The file keeps master weights in F32 and the state in BF16.
        let file = wgpu_optim::checkpoint::Checkpoint::load(&path).unwrap();
        assert_eq!(file.tensor("t0").unwrap().dtype, Dtype::F32);
        assert_eq!(file.tensor("t0.exp_avg").unwrap().dtype, Dtype::Bf16);
        assert_eq!(file.precision, p);
        let (resumed, resumed_ids) = build(p);
        let mut resumed = resumed.unwrap();
        resumed.load_checkpoint(&path).unwrap();
        feed(&mut resumed, &resumed_ids, 3..6);
        for (&id, &r) in ids.iter().zip(&resumed_ids) {
            assert_same(&resumed.read_param(r).unwrap(), &straight.read_param(id).unwrap(), "resumed param");
            let master = |opt: &Optimizer, id| opt.read(&opt.master_param(id).unwrap()).unwrap();
            assert_same(&master(&resumed, r), &master(&straight, id), "resumed master");
            assert_same(&resumed.read_state(r, "exp_avg_sq").unwrap(), &straight.read_state(id, "exp_avg_sq").unwrap(), "resumed exp_avg_sq");
        }
        // Another precision (here another seed) refuses it, and changes nothing.
        let (other, other_ids) = build(Precision { rounding: Rounding::Stochastic { seed: 78 }, ..p });
        let mut other = other.unwrap();
        let before = other.read_param(other_ids[0]).unwrap();
        let error = other.load_checkpoint(&path).unwrap_err();
        assert!(matches!(error, Error::Checkpoint(_)) && error.to_string().contains("storage types"), "{error}");
        assert_eq!(other.read_param(other_ids[0]).unwrap(), before);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unsupported_precisions_are_clear_errors() {
    let gpus = gpus();
    let gpu = &gpus[0];
    let build = |p: Precision, rule: Box<dyn UpdateRule>| {
        let mut params = Parameters::new();
        let w = params.zeros("w", &[8, 8]).unwrap();
        let options = OptimizerOptions { precision: p, ..Default::default() };
        Optimizer::with_options(gpu, params, vec![ParamGroup::from_boxed(rule, vec![w])], options).map(|_| ())
    };
    let f32_master = precision(Dtype::F32, true, Dtype::F32, Dtype::F32, Rounding::NearestEven);
    assert!(build(f32_master, Box::new(Sgd::default())).unwrap_err().to_string().contains("master_weights"));
    let f16_state = precision(Dtype::F32, false, Dtype::F32, Dtype::F16, Rounding::NearestEven);
    assert!(build(f16_state, Box::new(Sgd::default())).unwrap_err().to_string().contains("bf16"));
    let bf16 = precision(Dtype::Bf16, false, Dtype::Bf16, Dtype::Bf16, Rounding::NearestEven);
    assert!(build(bf16, Box::new(Muon::default())).unwrap_err().to_string().contains("matrix passes"));
    // A gradient of the wrong length is refused whatever its type.
    let mut params = Parameters::new();
    let w = params.zeros("w", &[5]).unwrap();
    let options = OptimizerOptions { precision: bf16, ..Default::default() };
    let opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(Sgd::default(), [w])], options).unwrap();
    assert!(matches!(opt.write_grad(w, &[1.0; 4]), Err(Error::SizeMismatch { expected: 5, actual: 4, .. })));
    assert!(opt.master_param(w).unwrap_err().to_string().contains("no master copy"));
}

/// The distance of each combination from the f32 path after 100 and 1,000 AdamW steps on a
/// quadratic whose gradient the model computes from the parameters it reads (so rounding
/// feeds back), on the CPU twin (the GPU equals it bit for bit, see above). Printed with
/// `--nocapture`; README quotes the table.
#[test]
fn distance_from_the_f32_path_after_100_and_1000_steps() {
    use Dtype::*;
    const N: usize = 4096;
    let mut rng = Rng::new(8);
    let target = rng.vec(N, 1.0);
    let curvature: Vec<f32> = (0..N).map(|k| 0.1 + 10.0 * (k as f32 / N as f32)).collect();
    let run = |p: Precision| -> Vec<Vec<f32>> {
        let mut params = Parameters::new();
        let w = params.add("w", &[N], Rng::new(9).vec(N, 2.0)).unwrap();
        let rule = AdamW { lr: 1e-3, ..AdamW::default() };
        let mut opt = CpuOptimizer::new(params, vec![ParamGroup::new(rule, [w])]).unwrap().with_precision(p).unwrap();
        let mut at = Vec::new();
        for step in 1..=1000 {
            let x = opt.model_param(w).unwrap();
            let g: Vec<f32> = (0..N).map(|k| curvature[k] * (x[k] - target[k])).collect();
            opt.write_grad(w, &g).unwrap();
            opt.step();
            if step == 100 || step == 1000 {
                at.push(opt.param(w).unwrap().to_vec());
            }
        }
        at
    };
    let reference = run(Precision::default());
    let sr = Rounding::Stochastic { seed: 1 };
    let rne = Rounding::NearestEven;
    println!("| params | grads | state | rounding | relative distance after 100 steps | after 1,000 |");
    let mut measured = Vec::new();
    // With bounds about twice the values measured (in README): a change that makes a
    // combination drift further from f32 fails here.
    for (p, bound_100, bound_1000) in [
        (precision(F32, false, F32, Bf16, rne), 1.5e-3, 0.25),
        (precision(F32, false, F32, Bf16, sr), 1e-3, 1.5e-2),
        (precision(Bf16, true, Bf16, F32, rne), 3e-4, 1e-3),
        (precision(Bf16, true, Bf16, Bf16, rne), 1.5e-3, 0.25),
        (precision(Bf16, true, Bf16, Bf16, sr), 1e-3, 1.5e-2),
        (precision(F16, true, F16, Bf16, sr), 1e-3, 1.5e-2),
        (precision(Bf16, false, Bf16, Bf16, rne), 0.16, 2.1),
        (precision(Bf16, false, Bf16, Bf16, sr), 4e-2, 0.12),
        (precision(F16, false, F16, F32, sr), 2.5e-3, 1.4e-2),
    ] {
        let got = run(p);
        let distance = |k: usize| {
            let num: f64 = got[k].iter().zip(&reference[k]).map(|(a, b)| f64::from(a - b).powi(2)).sum();
            let den: f64 = reference[k].iter().map(|b| f64::from(*b).powi(2)).sum();
            (num / den).sqrt()
        };
        let master = if p.master_weights { " + f32 master" } else { "" };
        println!("| {}{master} | {} | {} | {:?} | {:.2e} | {:.2e} |", p.params, p.grads, p.state, p.rounding, distance(0), distance(1));
        measured.push((p, distance(0), distance(1), bound_100, bound_1000));
    }
    for (p, after_100, after_1000, bound_100, bound_1000) in measured {
        assert!(after_100 < bound_100 && after_1000 < bound_1000, "{p:?}: {after_100} {after_1000}");
    }
}
