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
    let int8 = precision(Dtype::F32, false, Dtype::F32, Dtype::Int8, Rounding::NearestEven);
    let lean = precision(Dtype::Bf16, true, Dtype::Bf16, Dtype::Int8, Rounding::NearestEven);
    for p in [Precision::default(), precision(Dtype::Bf16, true, Dtype::Bf16, Dtype::Bf16, Rounding::NearestEven), int8, lean] {
        let mut params = Parameters::new();
        let w = params.zeros("w", &[512, 512]).unwrap();
        let options = OptimizerOptions { precision: p, ..Default::default() };
        let opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(AdamW::default(), [w])], options).unwrap();
        let memory = opt.memory();
        println!("{memory}");
        let role = |name: &str| memory.buffers.iter().find(|b| b.role == name).map(|b| (b.dtype, b.bytes));
        let n = 512 * 512;
        if p.state == Dtype::Int8 {
            assert_eq!(role("exp_avg"), Some((Some(Dtype::Int8), n)));
            // Codes (1 B each) + two alternating block scales (8 B per 256 elements), per array.
            assert_eq!(memory.state_bytes_per_parameter(), 2.0 * (1.0 + 8.0 / 256.0));
        } else if p.is_f32() {
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
    // The goals: 8-bit AdamW state <= 2.1 B per parameter; bf16 parameters + f32
    // master + bf16 gradients + 8-bit state <= 10.1 B in all (bookkeeping aside, see above).
    assert!(bytes[2] > 10.09 && bytes[2] < 10.45, "f32 parameters and gradients + int8 state: {}", bytes[2]);
    assert!(bytes[3] > 10.09 && bytes[3] < 10.45, "bf16 + master + bf16 grads + int8 state: {}", bytes[3]);

    // From 1M f32 elements on, each arena buffer ends with a page that staggers it from the
    // next one; the report keeps it out of the roles, and the tensor reads back whole.
    let mut params = Parameters::new();
    let w = params.add("w", &[1024, 1024], (0..1 << 20).map(|k| k as f32).collect()).unwrap();
    let opt = Optimizer::new(gpu, params, vec![ParamGroup::new(AdamW::default(), [w])]).unwrap();
    let memory = opt.memory();
    let role = |name: &str| memory.buffers.iter().find(|b| b.role == name).map(|b| b.bytes);
    assert_eq!(role("param"), Some(4 << 20));
    assert_eq!(memory.state_bytes_per_parameter(), 8.0);
    assert_eq!(role("pages staggering large arena buffers"), Some(4 * 4096), "{memory}");
    assert_eq!(opt.read_param(w).unwrap(), (0..1 << 20).map(|k| k as f32).collect::<Vec<_>>());
}

#[test]
fn checkpoints_keep_each_buffer_in_its_type_and_resume_bit_exact() {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-precision-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bf16 = precision(Dtype::Bf16, true, Dtype::Bf16, Dtype::Bf16, Rounding::Stochastic { seed: 77 });
    let int8 = precision(Dtype::Bf16, true, Dtype::Bf16, Dtype::Int8, Rounding::NearestEven);
    let rule = || ParamGroup::new(AdamW { lr: 1e-2, ..AdamW::default() }, []);
    let gradients = |step: usize| {
        let mut rng = Rng::new(step as u64);
        SIZES.iter().map(|&n| gradient(&mut rng, n, step)).collect::<Vec<_>>()
    };
    for gpu in gpus() {
        for p in [bf16, int8] {
            let build = |precision: Precision| {
                let (params, ids) = model(4);
                let options = OptimizerOptions { precision, ..Default::default() };
                (Optimizer::with_options(gpu, params, vec![ParamGroup { tensors: ids.clone(), ..rule() }], options), ids)
            };
            let feed = |opt: &mut Optimizer, ids: &[TensorId], steps: std::ops::Range<usize>| {
                for step in steps {
                    for (&id, g) in ids.iter().zip(gradients(step)) {
                        opt.write_grad(id, &g).unwrap();
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
            let path = dir.join("typed.safetensors");
            first.save_checkpoint(&path, None).unwrap();
            // The file keeps master weights in F32, the state in its type (int8: U8 codes and
            // F32 block scales; a tensor below 4,096 elements keeps F32 state).
            let file = wgpu_optim::checkpoint::Checkpoint::load(&path).unwrap();
            assert_eq!(file.tensor("t0").unwrap().dtype, Dtype::F32);
            assert_eq!(file.precision, p);
            if p.state == Dtype::Int8 {
                assert_eq!(file.tensor("t2.exp_avg").unwrap().dtype, Dtype::Int8);
                assert_eq!(file.tensor("t2.exp_avg.absmax").unwrap().shape, [17]);
                assert_eq!(file.tensor("t0.exp_avg").unwrap().dtype, Dtype::F32);
            } else {
                assert_eq!(file.tensor("t0.exp_avg").unwrap().dtype, Dtype::Bf16);
            }
            let (resumed, resumed_ids) = build(p);
            let mut resumed = resumed.unwrap();
            resumed.load_checkpoint(&path).unwrap();
            feed(&mut resumed, &resumed_ids, 3..6);
            // The CPU twin's checkpoint of the same 3 steps, resumed on the GPU, too.
            let (params, twin_ids) = model(4);
            let mut twin = CpuOptimizer::new(params, vec![ParamGroup { tensors: twin_ids.clone(), ..rule() }]).unwrap().with_precision(p).unwrap();
            for step in 0..3 {
                for (&id, g) in twin_ids.iter().zip(gradients(step)) {
                    twin.write_grad(id, &g).unwrap();
                }
                twin.step();
            }
            let (from_twin, from_twin_ids) = build(p);
            let mut from_twin = from_twin.unwrap();
            from_twin.restore(&twin.checkpoint(None)).unwrap();
            feed(&mut from_twin, &from_twin_ids, 3..6);
            let master = |opt: &Optimizer, id| opt.read(&opt.master_param(id).unwrap()).unwrap();
            for ((&id, &r), &c) in ids.iter().zip(&resumed_ids).zip(&from_twin_ids) {
                for (opt, id2, what) in [(&resumed, r, "resumed"), (&from_twin, c, "resumed from the twin")] {
                    let what = format!("{p:?} on {}: {what}", gpu.adapter());
                    assert_same(&opt.read_param(id2).unwrap(), &straight.read_param(id).unwrap(), &format!("{what}: param"));
                    assert_same(&master(opt, id2), &master(&straight, id), &format!("{what}: master"));
                    for key in ["exp_avg", "exp_avg_sq"] {
                        assert_same(&opt.read_state(id2, key).unwrap(), &straight.read_state(id, key).unwrap(), &format!("{what}: {key}"));
                    }
                }
            }
            // Another precision (another seed, another state type) refuses it, and changes nothing.
            let other_precision = match p.state {
                Dtype::Int8 => Precision { state: Dtype::Bf16, ..p },
                _ => Precision { rounding: Rounding::Stochastic { seed: 78 }, ..p },
            };
            let (other, other_ids) = build(other_precision);
            let mut other = other.unwrap();
            let before = other.read_param(other_ids[0]).unwrap();
            let error = other.load_checkpoint(&path).unwrap_err();
            assert!(matches!(error, Error::Checkpoint(_)) && error.to_string().contains("storage types"), "{error}");
            assert_eq!(other.read_param(other_ids[0]).unwrap(), before);
        }
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
    let int8 = precision(Dtype::F32, false, Dtype::F32, Dtype::Int8, Rounding::NearestEven);
    let lamb = build(int8, Box::new(wgpu_optim::rules::Lamb::default())).unwrap_err().to_string();
    assert!(lamb.contains("int8") && lamb.contains("per tensor"), "{lamb}");
    let int8_params = precision(Dtype::Int8, false, Dtype::F32, Dtype::F32, Rounding::NearestEven);
    assert!(build(int8_params, Box::new(Sgd::default())).unwrap_err().to_string().contains("optimizer state only"));
    let mut params = Parameters::new();
    let w = params.zeros("w", &[8]).unwrap();
    let options = OptimizerOptions { precision: int8, gradient_presence: true, ..Default::default() };
    let presence = Optimizer::with_options(gpu, params, vec![ParamGroup::new(Sgd { momentum: 0.9, ..Sgd::default() }, [w])], options).unwrap_err();
    assert!(presence.to_string().contains("gradient presence"), "{presence}");
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
    const N: usize = 8192;
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
        (precision(F32, false, F32, Int8, rne), 5e-3, 4e-2),
        (precision(Bf16, true, Bf16, Int8, rne), 5e-3, 4e-2),
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

/// The 8-bit scheme against bitsandbytes 0.50.2 (tests/golden/quantization, written by its
/// generate.py): the maps bit for bit, and the codes, block scales and dequantized values of
/// its reference quantizer on whole and partial blocks at three scales.
#[test]
fn int8_quantization_matches_bitsandbytes() {
    use wgpu_optim::storage::{int8_map, quantize_block, INT8_BLOCK};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/quantization/maps.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        let view = file.tensor(name).unwrap();
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    for (name, nonnegative) in [("signed", false), ("unsigned", true)] {
        let map = int8_map(nonnegative);
        assert_eq!(bits(&map), bits(&f32s(&format!("{name}.code"))), "{name} map");
    }
    let mut cases = 0;
    for name in file.names() {
        let Some(case) = name.strip_suffix(".input") else { continue };
        let map = int8_map(case.starts_with("unsigned"));
        let input = f32s(name);
        let codes = file.tensor(&format!("{case}.codes")).unwrap().data().to_vec();
        let (mut ours, mut scales) = (Vec::new(), Vec::new());
        for (b, block) in input.chunks(INT8_BLOCK).enumerate() {
            let (block_codes, absmax) = quantize_block(block, &map, (b + 1) * INT8_BLOCK > input.len());
            ours.extend(block_codes);
            scales.push(absmax);
        }
        assert_eq!(ours, codes, "{case}: codes");
        assert_eq!(bits(&scales), bits(&f32s(&format!("{case}.absmax"))), "{case}: absmax");
        let dequantized: Vec<f32> = ours.iter().enumerate().map(|(k, &q)| map[q as usize] * scales[k / INT8_BLOCK]).collect();
        assert_eq!(bits(&dequantized), bits(&f32s(&format!("{case}.dequantized"))), "{case}: dequantized");
        cases += 1;
    }
    assert_eq!(cases, 12, "the golden file's cases");
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| x.to_bits()).collect()
}

/// Against torch: fused AdamW on bf16 parameters (CPU; tests/golden/precision, written by its
/// generate.py) keeps bf16 state and rounds each stored value once from f32, as wgpu-optim
/// does with bf16 parameters without a master copy, bf16 gradients and bf16 state rounded to
/// nearest. After 10 steps on 3,000 elements the parameters and both moments equal torch's
/// bit for bit (the printout says how many differ and by how much, should that change).
#[test]
fn bf16_adamw_agrees_with_torchs_fused_adamw() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/precision/adamw_bf16.safetensors");
    let golden = wgpu_optim::tensor_file::read_safetensors(&path).unwrap();
    let tensor = |name: &str| {
        let t = golden.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{name} in the golden file"));
        assert_eq!(t.dtype, Dtype::Bf16, "{name}");
        t.data.clone()
    };
    let steps = golden.iter().filter(|t| t.name.starts_with("grad.")).count();
    let initial = tensor("param.initial");
    let p = precision(Dtype::Bf16, false, Dtype::Bf16, Dtype::Bf16, Rounding::NearestEven);
    let rule = AdamW { lr: 1e-2, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-2, ..AdamW::default() };
    let mut params = Parameters::new();
    let w = params.add("w", &[initial.len()], initial.clone()).unwrap();
    let mut twin = CpuOptimizer::new(params, vec![ParamGroup::new(rule.clone(), [w])]).unwrap().with_precision(p).unwrap();
    for step in 0..steps {
        twin.write_grad(w, &tensor(&format!("grad.{step}"))).unwrap();
        twin.step();
    }
    // In bf16 units (ulps) of torch's value: how many elements differ, and the largest gap.
    let compare = |ours: &[f32], torch: &[f32], what: &str| {
        let ulps = |a: f32, b: f32| (Dtype::Bf16.nearest_bits(a) as i32 - Dtype::Bf16.nearest_bits(b) as i32).unsigned_abs();
        let differing = ours.iter().zip(torch).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        let worst = ours.iter().zip(torch).map(|(&a, &b)| ulps(a, b)).max().unwrap();
        println!("{what}: {differing} of {} elements differ from torch's, by at most {worst} bf16 ulp", ours.len());
        (differing as f64 / ours.len() as f64, worst)
    };
    let results = [
        compare(twin.param(w).unwrap(), &tensor("param.final"), "param"),
        compare(twin.state(w, "exp_avg").unwrap(), &tensor("exp_avg"), "exp_avg"),
        compare(twin.state(w, "exp_avg_sq").unwrap(), &tensor("exp_avg_sq"), "exp_avg_sq"),
    ];
    for (fraction, worst) in results {
        assert!(fraction == 0.0 && worst == 0, "{fraction} of the elements differ from torch's, by up to {worst} ulp");
    }
    // The GPU equals the twin bit for bit (see every_combination_equals_the_cpu_twin_bit_for_bit).
    for gpu in gpus() {
        let mut params = Parameters::new();
        let g = params.add("w", &[initial.len()], initial.clone()).unwrap();
        let options = OptimizerOptions { precision: p, ..Default::default() };
        let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(rule.clone(), [g])], options).unwrap();
        for step in 0..steps {
            opt.write_grad(g, &tensor(&format!("grad.{step}"))).unwrap();
            opt.step_and_submit().unwrap();
        }
        assert_same(&opt.read_param(g).unwrap(), twin.param(w).unwrap(), &format!("bf16 AdamW on {}", gpu.adapter()));
    }
}

/// f16 buffers use WGSL's `f16` where the device has `shader-f16` (llvmpipe's Vulkan) and
/// packed `u32` words where it does not (llvmpipe's GL); both store the same bits, which
/// `every_combination_equals_the_cpu_twin_bit_for_bit` checks on each adapter.
#[test]
fn f16_takes_the_native_path_where_the_adapter_has_it() {
    let mut paths = Vec::new();
    for gpu in gpus() {
        let info = gpu.adapter();
        println!("{info}: f16 {}", if gpu.native_f16() { "native (enable f16)" } else { "packed in u32" });
        paths.push((format!("{:?}", info.backend), gpu.native_f16()));
        // The same f16 step on this adapter's path equals the twin.
        let mut params = Parameters::new();
        let w = params.add("w", &[4096 + 5], Rng::new(3).vec(4096 + 5, 1.0)).unwrap();
        let p = precision(Dtype::F16, false, Dtype::F16, Dtype::F32, Rounding::Stochastic { seed: 9 });
        let options = OptimizerOptions { precision: p, ..Default::default() };
        let rule = Adam { lr: 1e-2, ..Adam::default() };
        let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(rule.clone(), [w])], options).unwrap();
        let mut twin_params = Parameters::new();
        let t = twin_params.add("w", &[4096 + 5], Rng::new(3).vec(4096 + 5, 1.0)).unwrap();
        let mut twin = CpuOptimizer::new(twin_params, vec![ParamGroup::new(rule, [t])]).unwrap().with_precision(p).unwrap();
        for step in 0..3 {
            let g = gradient(&mut Rng::new(step), 4096 + 5, step as usize);
            opt.write_grad(w, &g).unwrap();
            twin.write_grad(t, &g).unwrap();
            opt.step_and_submit().unwrap();
            twin.step();
        }
        assert_same(&opt.read_param(w).unwrap(), twin.param(t).unwrap(), &format!("f16 Adam on {info}"));
    }
    if let Some((_, native)) = paths.iter().find(|(backend, _)| backend == "Gl") {
        assert!(!native, "llvmpipe's GL has no shader-f16");
    }
}

/// `add_param_group` lays the arenas out again: int8 codes, their block scales and 16-bit
/// values move over, and the new group's tensors start in the storage types, on the GPU as on
/// the twin.
#[test]
fn add_param_group_keeps_typed_and_int8_state() {
    for gpu in gpus() {
        for p in [
            precision(Dtype::Bf16, true, Dtype::Bf16, Dtype::Int8, Rounding::NearestEven),
            precision(Dtype::F16, false, Dtype::Bf16, Dtype::Bf16, Rounding::Stochastic { seed: 4 }),
        ] {
            let rule = || AdamW { lr: 1e-2, ..AdamW::default() };
            let (params, ids) = model(6);
            let options = OptimizerOptions { precision: p, ..Default::default() };
            let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(rule(), ids.clone())], options).unwrap();
            let (params, twin_ids) = model(6);
            let mut twin = CpuOptimizer::new(params, vec![ParamGroup::new(rule(), twin_ids.clone())]).unwrap().with_precision(p).unwrap();
            let feed = |opt: &mut Optimizer, twin: &mut CpuOptimizer, pairs: &[(TensorId, TensorId, usize)], step: usize| {
                let mut rng = Rng::new(step as u64 + 50);
                for &(id, twin_id, n) in pairs {
                    let g = gradient(&mut rng, n, step);
                    opt.write_grad(id, &g).unwrap();
                    twin.write_grad(twin_id, &g).unwrap();
                }
                opt.step_and_submit().unwrap();
                twin.step();
            };
            let mut pairs: Vec<(TensorId, TensorId, usize)> = ids.iter().zip(&twin_ids).zip(SIZES).map(|((&a, &b), n)| (a, b, n)).collect();
            for step in 0..3 {
                feed(&mut opt, &mut twin, &pairs, step);
            }
            let extra = || {
                let mut params = Parameters::new();
                params.add("late", &[5000], Rng::new(77).vec(5000, 1.0)).unwrap();
                params
            };
            let late = opt.add_param_group(extra(), Box::new(rule())).unwrap()[0];
            let twin_late = twin.add_param_group(extra(), Box::new(rule())).unwrap()[0];
            pairs.push((late, twin_late, 5000));
            for step in 3..6 {
                feed(&mut opt, &mut twin, &pairs, step);
            }
            for &(id, twin_id, _) in &pairs {
                let what = format!("{p:?} on {}: {}", gpu.adapter(), opt.tensor_name(id).unwrap());
                assert_same(&opt.read_param(id).unwrap(), &twin.model_param(twin_id).unwrap(), &what);
                for key in ["exp_avg", "exp_avg_sq"] {
                    assert_same(&opt.read_state(id, key).unwrap(), twin.state(twin_id, key).unwrap(), &format!("{what}.{key}"));
                }
            }
        }
    }
}

/// Every combination of the storage types (parameters f32, f16 or bf16 with or without master
/// weights; gradients f32, f16 or bf16; state f32, bf16 or int8; nearest or stochastic
/// rounding: 90) on AdamW, GPU against the twin bit for bit on each adapter (the six-rule test
/// above covers the rules on a selection of them).
#[test]
fn every_storage_combination_of_adamw_equals_the_twin() {
    use Dtype::*;
    let mut combinations = Vec::new();
    for (params, master) in [(F32, false), (F16, true), (Bf16, true), (F16, false), (Bf16, false)] {
        for grads in [F32, F16, Bf16] {
            for state in [F32, Bf16, Int8] {
                for rounding in [Rounding::NearestEven, Rounding::Stochastic { seed: 21 }] {
                    combinations.push(precision(params, master, grads, state, rounding));
                }
            }
        }
    }
    assert_eq!(combinations.len(), 90);
    let sizes = [4099usize, 37];
    let rule = || AdamW { lr: 1e-2, ..AdamW::default() };
    for gpu in gpus() {
        for &p in &combinations {
            let build = || {
                let mut params = Parameters::new();
                let ids: Vec<TensorId> = sizes.iter().enumerate().map(|(k, &n)| params.add(&format!("t{k}"), &[n], Rng::new(k as u64).vec(n, 1.0)).unwrap()).collect();
                (params, ids)
            };
            let (params, ids) = build();
            let options = OptimizerOptions { precision: p, ..Default::default() };
            let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(rule(), ids.clone())], options).unwrap();
            let (params, twin_ids) = build();
            let mut twin = CpuOptimizer::new(params, vec![ParamGroup::new(rule(), twin_ids.clone())]).unwrap().with_precision(p).unwrap();
            for step in 0..3 {
                let mut rng = Rng::new(100 + step);
                for ((&id, &twin_id), &n) in ids.iter().zip(&twin_ids).zip(&sizes) {
                    let g = gradient(&mut rng, n, step as usize);
                    opt.write_grad(id, &g).unwrap();
                    twin.write_grad(twin_id, &g).unwrap();
                }
                opt.step_and_submit().unwrap();
                twin.step();
            }
            for (&id, &twin_id) in ids.iter().zip(&twin_ids) {
                let what = format!("{p:?} on {}", gpu.adapter());
                assert_same(&opt.read_param(id).unwrap(), &twin.model_param(twin_id).unwrap(), &what);
                assert_same(&opt.read_state(id, "exp_avg_sq").unwrap(), twin.state(twin_id, "exp_avg_sq").unwrap(), &format!("{what}: exp_avg_sq"));
            }
        }
    }
}

/// Loss scaling, norm clipping and skipping non-finite steps read f16 and bf16 gradients as
/// they read f32 ones: on the GPU as on the twin, an inf in an f16 gradient skips the step and
/// backs the scale off.
#[test]
fn gradient_conditioning_reads_16_bit_gradients() {
    use wgpu_optim::{ClipGradNorm, GradientOptions, LossScale};
    let gradients = GradientOptions {
        clip_grad_norm: Some(ClipGradNorm { max_norm: 0.5, norm_type: 2.0, error_if_nonfinite: false }),
        loss_scale: Some(LossScale { init_scale: 1024.0, growth_interval: 2, ..LossScale::default() }),
        ..Default::default()
    };
    for gpu in gpus() {
        for grads in [Dtype::F16, Dtype::Bf16] {
            let p = precision(Dtype::F32, false, grads, Dtype::F32, Rounding::NearestEven);
            let (params, ids) = model(2);
            let options = OptimizerOptions { precision: p, gradients: gradients.clone(), ..Default::default() };
            let mut opt = Optimizer::with_options(gpu, params, vec![ParamGroup::new(Adam { lr: 1e-2, ..Adam::default() }, ids.clone())], options).unwrap();
            let (params, twin_ids) = model(2);
            let groups = vec![ParamGroup::new(Adam { lr: 1e-2, ..Adam::default() }, twin_ids.clone())];
            let mut twin = CpuOptimizer::with_gradients(params, groups, gradients.clone()).unwrap().with_precision(p).unwrap();
            for step in 0..5 {
                let mut rng = Rng::new(7 + step);
                for ((&id, &twin_id), &n) in ids.iter().zip(&twin_ids).zip(&SIZES) {
                    // Scaled gradients (as a backward of the scaled loss writes them); step 2's
                    // overflows f16 in one element (1e5 > 65504).
                    let mut g: Vec<f32> = gradient(&mut rng, n, step as usize).iter().map(|x| x * 1024.0).collect();
                    if step == 2 && n == 37 {
                        g[5] = if grads == Dtype::F16 { 1e5 } else { f32::INFINITY };
                    }
                    opt.write_grad(id, &g).unwrap();
                    twin.write_grad(twin_id, &g).unwrap();
                }
                opt.step_and_submit().unwrap();
                twin.step();
            }
            // The norm is a reduction, summed in another order on the GPU than on the CPU (as
            // in tests/suite/conditioning.rs): counters equal, the norm and the clipped steps
            // within a few ulps.
            let (a, b) = (opt.counters().unwrap(), twin.counters().unwrap());
            let what = format!("{grads} gradients on {}", gpu.adapter());
            assert_eq!(a.skipped_steps, 1, "{what}: the step with an inf gradient is skipped");
            assert_eq!((a.applied_steps, a.skipped_steps, a.loss_scale, a.growth_tracker), (b.applied_steps, b.skipped_steps, b.loss_scale, b.growth_tracker), "{what}");
            assert_eq!(a.loss_scale, 2048.0, "{what}: 1024 grown to 2048, backed off to 1024 by the inf, grown again");
            assert!((a.last_grad_norm - b.last_grad_norm).abs() <= 1e-5 * b.last_grad_norm, "{what}: {} {}", a.last_grad_norm, b.last_grad_norm);
            for (&id, &twin_id) in ids.iter().zip(&twin_ids) {
                let (x, y) = (opt.read_param(id).unwrap(), twin.param(twin_id).unwrap().to_vec());
                let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(worst <= 1e-5 * scale, "{what}: parameters off by {worst:e}");
            }
        }
    }
}
