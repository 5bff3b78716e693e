//! Rules with structure (per-tensor reductions, factored state, matrix passes): Lamb,
//! Adafactor and Muon, alone and in mixed-rule optimizers. GPU (every adapter) against the CPU
//! reference, dispatch counts, bit-exact checkpoint resume, and bad input.
//!
//! Tolerance: as in `rules.rs` (2e-6 of each tensor's scale). The kernels and the CPU
//! references sum norms, rows, columns and matrix products in the same order
//! (`src/rules/reduce.rs`), so they differ only where the GPU rounds a division or a square
//! root differently. For Muon in bfloat16 such a difference can move an element across a
//! bfloat16 rounding boundary (2^-8 relative), so its GPU-vs-CPU bound is looser: 1e-4 of the
//! parameter's scale (measured: see the printed table).

use std::path::PathBuf;

use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::rules::{Adafactor, AdamW, AdjustLr, Lamb, Muon, NsPrecision};
use wgpu_optim::{
    ClipGradNorm, CpuOptimizer, GpuContext, GradientOptions, LossScale, Optimizer, OptimizerOptions, ParamGroup, Parameters,
    TensorId, UpdateRule,
};

use crate::common::{gpus, max_normwise_difference, snapshot_cpu, snapshot_gpu, Rng, Snapshot};
use crate::rules::GPU_VS_CPU_TOLERANCE;

/// The shapes the issue names: 1×n, n×1, 3×1000, 17×33, 512×512, and 5×7×9 (Adafactor only).
const MATRICES: &[&[usize]] = &[&[1, 40], &[40, 1], &[3, 1000], &[17, 33], &[33, 17]];
const BIG: &[usize] = &[512, 512];

fn model(shapes: &[&[usize]], seed: u64) -> (Parameters, Vec<TensorId>) {
    let mut rng = Rng::new(seed);
    let mut params = Parameters::new();
    let ids = shapes
        .iter()
        .enumerate()
        .map(|(k, shape)| params.add(&format!("t{k}"), shape, rng.vec(shape.iter().product(), 1.0)).unwrap())
        .collect();
    (params, ids)
}

type Groups = dyn Fn(&[TensorId]) -> Vec<ParamGroup>;

fn gradient(step: usize, id: TensorId, len: usize, gradients: &GradientOptions) -> Vec<f32> {
    let scale = gradients.loss_scale.as_ref().map_or(1.0, |s| s.init_scale as f32);
    let mut g = Rng::new(7919 * step as u64 + id.index() as u64).vec(len, scale);
    if gradients.skip_nonfinite && step == 2 && id.index() == 0 {
        g[0] = f32::INFINITY; // a skipped step
    }
    g
}

fn cpu_snapshot(shapes: &[&[usize]], groups: &Groups, gradients: &GradientOptions, steps: usize) -> Snapshot {
    let (params, ids) = model(shapes, 11);
    let mut opt = CpuOptimizer::with_gradients(params, groups(&ids), gradients.clone()).unwrap();
    for step in 0..steps {
        for &id in &ids {
            let len = opt.param(id).unwrap().len();
            opt.write_grad(id, &gradient(step, id, len, gradients)).unwrap();
        }
        opt.step();
    }
    snapshot_cpu(&opt, &ids)
}

fn gpu_optimizer(gpu: &GpuContext, shapes: &[&[usize]], groups: &Groups, gradients: &GradientOptions) -> (Optimizer, Vec<TensorId>) {
    let (params, ids) = model(shapes, 11);
    let options = OptimizerOptions { gradients: gradients.clone(), ..Default::default() };
    (Optimizer::with_options(gpu, params, groups(&ids), options).unwrap(), ids)
}

fn gpu_snapshot(gpu: &GpuContext, shapes: &[&[usize]], groups: &Groups, gradients: &GradientOptions, steps: usize) -> Snapshot {
    let (mut opt, ids) = gpu_optimizer(gpu, shapes, groups, gradients);
    for step in 0..steps {
        for &id in &ids {
            opt.write_grad(id, &gradient(step, id, opt.param(id).unwrap().len, gradients)).unwrap();
        }
        opt.step_and_submit().unwrap();
    }
    snapshot_gpu(&opt, &ids)
}

fn one_group(rule: impl UpdateRule + Clone + 'static) -> Box<Groups> {
    Box::new(move |ids: &[TensorId]| vec![ParamGroup::new(rule.clone(), ids.iter().copied())])
}

/// Muon for the 2-D tensors, AdamW for the rest (weight decay off for vectors).
fn muon_and_adamw(muon: Muon, shapes: &'static [&'static [usize]]) -> Box<Groups> {
    Box::new(move |ids: &[TensorId]| {
        let (matrices, rest): (Vec<_>, Vec<_>) = ids.iter().zip(shapes).partition(|(_, shape)| shape.len() == 2);
        vec![
            ParamGroup::new(muon.clone(), matrices.into_iter().map(|(&id, _)| id)),
            ParamGroup::new(AdamW { lr: 0.01, weight_decay: 0.0, ..AdamW::default() }, rest.into_iter().map(|(&id, _)| id)),
        ]
    })
}

fn conditioned() -> GradientOptions {
    GradientOptions {
        clip_grad_norm: Some(ClipGradNorm { max_norm: 5.0, norm_type: 2.0, error_if_nonfinite: false }),
        skip_nonfinite: true,
        loss_scale: Some(LossScale { init_scale: 8.0, growth_interval: 3, ..LossScale::default() }),
        ..Default::default()
    }
}

fn check(label: &str, shapes: &'static [&'static [usize]], groups: &Groups, gradients: &GradientOptions, steps: usize, tolerance: f64) -> f64 {
    let expected = cpu_snapshot(shapes, groups, gradients, steps);
    let mut worst = 0.0f64;
    for gpu in gpus() {
        let actual = gpu_snapshot(gpu, shapes, groups, gradients, steps);
        let (difference, tensor) = max_normwise_difference(&actual, &expected);
        assert!(difference <= tolerance, "{label} on {}: {tensor} differs from the CPU reference by {difference:.3e} (tolerance {tolerance:.0e})", gpu.adapter());
        worst = worst.max(difference);
    }
    eprintln!("{label}: worst GPU-vs-CPU difference {worst:.2e}");
    worst
}

const ALL_SHAPES: &[&[usize]] = &[&[1, 40], &[40, 1], &[3, 1000], &[17, 33], &[5, 7, 9], &[7], &[130]];
const MIXED_SHAPES: &[&[usize]] = &[&[1, 40], &[40, 1], &[3, 1000], &[17, 33], &[33, 17], &[7], &[130]];

#[test]
fn lamb_matches_cpu_reference() {
    for (k, rule) in [
        Lamb { lr: 0.01, ..Lamb::default() },
        Lamb { lr: 0.01, max_grad_norm: None, trust_clip: true, ..Lamb::default() },
        Lamb { lr: 0.01, decoupled_decay: true, grad_averaging: false, ..Lamb::default() },
        Lamb { lr: 0.01, weight_decay: 0.0, always_adapt: true, bias_correction: false, max_grad_norm: Some(0.5), ..Lamb::default() },
        Lamb { lr: 0.01, weight_decay: 0.0, ..Lamb::default() },
    ]
    .into_iter()
    .enumerate()
    {
        let gradients = if k == 0 { conditioned() } else { GradientOptions::default() };
        check(&format!("{rule:?}"), ALL_SHAPES, one_group(rule).as_ref(), &gradients, 12, GPU_VS_CPU_TOLERANCE);
    }
}

/// Lamb's per-tensor pass reads only chunk partials, so a tensor larger than one binding is
/// swept in windows (here 16K-element windows over a 40,000-element tensor).
#[test]
fn lamb_sweeps_a_tensor_larger_than_one_binding_in_windows() {
    const SHAPES: &[&[usize]] = &[&[40_000], &[200, 3]];
    let groups = one_group(Lamb { lr: 0.01, ..Lamb::default() });
    let expected = cpu_snapshot(SHAPES, groups.as_ref(), &GradientOptions::default(), 5);
    for gpu in gpus() {
        let (params, ids) = model(SHAPES, 11);
        let options = OptimizerOptions { max_arena_elements: Some(16 * 1024), ..Default::default() };
        let mut opt = Optimizer::with_options(gpu, params, groups(&ids), options).unwrap();
        assert_eq!(opt.arenas()[0].windows, 3, "the big tensor's arena is swept in three windows");
        for step in 0..5 {
            for &id in &ids {
                opt.write_grad(id, &gradient(step, id, opt.param(id).unwrap().len, &GradientOptions::default())).unwrap();
            }
            opt.step_and_submit().unwrap();
        }
        let (difference, tensor) = max_normwise_difference(&snapshot_gpu(&opt, &ids), &expected);
        assert!(difference <= GPU_VS_CPU_TOLERANCE, "{tensor}: {difference:.3e} on {}", gpu.adapter());
    }
}

#[test]
fn adafactor_matches_cpu_reference() {
    for (k, rule) in [
        Adafactor::default(),
        Adafactor { weight_decay: 0.1, maximize: true, ..Adafactor::default() },
        Adafactor { lr: 0.05, eps: (Some(1e-3), 1e-2), d: 2.0, beta2_decay: -0.5, ..Adafactor::default() },
    ]
    .into_iter()
    .enumerate()
    {
        let gradients = if k == 0 { conditioned() } else { GradientOptions::default() };
        check(&format!("{rule:?}"), ALL_SHAPES, one_group(rule).as_ref(), &gradients, 12, GPU_VS_CPU_TOLERANCE);
    }
    check("Adafactor 512x512", &[BIG], one_group(Adafactor::default()).as_ref(), &GradientOptions::default(), 2, GPU_VS_CPU_TOLERANCE);
    // Rows longer than one 1,024-element segment and columns longer than one 256-row segment,
    // with rows of whole vec4s (2,048) and not (2,051), as the kernel sums them in pieces.
    check(
        "Adafactor, multi-segment sums",
        &[&[3, 2048], &[2, 3, 2051], &[600, 12], &[300, 5]],
        one_group(Adafactor::default()).as_ref(),
        &GradientOptions::default(),
        3,
        GPU_VS_CPU_TOLERANCE,
    );
}

#[test]
fn muon_matches_cpu_reference() {
    for precision in [NsPrecision::Float32, NsPrecision::Bfloat16] {
        let tolerance = if precision == NsPrecision::Float32 { GPU_VS_CPU_TOLERANCE } else { 1e-4 };
        for (nesterov, adjust_lr_fn, weight_decay) in
            [(true, None, 0.1), (false, Some(AdjustLr::MatchRmsAdamw), 0.0), (true, Some(AdjustLr::SpectralUnclamped), 0.1)]
        {
            let muon = Muon { lr: 0.02, nesterov, adjust_lr_fn, weight_decay, ns_precision: precision, ..Muon::default() };
            check(&format!("{muon:?}"), MATRICES, one_group(muon).as_ref(), &GradientOptions::default(), 6, tolerance);
        }
        let muon = Muon { lr: 0.02, ns_steps: 2, ns_precision: precision, ..Muon::default() };
        check("Muon 512x512", &[BIG], one_group(muon).as_ref(), &GradientOptions::default(), 1, tolerance);
    }
}

/// Muon's products have two kernel shapes (`GpuContext::with_cpu_kernels`): tiles staged in
/// workgroup memory for a GPU, 16 x 16 register blocks for a CPU adapter. Both sum every output
/// in index order, so on one adapter they agree bit for bit, at edges that are no multiple of
/// 4, 16 or 64 in either direction.
#[test]
fn muon_kernel_shapes_agree_bit_for_bit() {
    const SHAPES: &[&[usize]] = &[&[1, 40], &[40, 1], &[3, 1000], &[17, 33], &[70, 130], &[130, 70], &[64, 64]];
    for ns_precision in [NsPrecision::Float32, NsPrecision::Bfloat16] {
        let groups = one_group(Muon { lr: 0.02, ns_precision, ..Muon::default() });
        for gpu in gpus() {
            let [tiles, blocks] =
                [false, true].map(|cpu| gpu_snapshot(&gpu.clone().with_cpu_kernels(cpu), SHAPES, groups.as_ref(), &GradientOptions::default(), 3));
            for ((name, a), (_, b)) in tiles.iter().zip(&blocks) {
                let differing = a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
                assert_eq!(differing, 0, "{name} ({ns_precision:?}) on {}: {differing} elements differ between the kernel shapes", gpu.adapter());
            }
        }
    }
}

#[test]
fn muon_and_adamw_in_one_optimizer_share_the_gradient_conditioning() {
    let muon = Muon { lr: 0.02, ns_precision: NsPrecision::Float32, ..Muon::default() };
    check("Muon + AdamW, clipped and loss-scaled", MIXED_SHAPES, muon_and_adamw(muon.clone(), MIXED_SHAPES).as_ref(), &conditioned(), 8, GPU_VS_CPU_TOLERANCE);
    for gpu in gpus() {
        let (mut opt, ids) = gpu_optimizer(gpu, MIXED_SHAPES, muon_and_adamw(muon.clone(), MIXED_SHAPES).as_ref(), &conditioned());
        for step in 0..4 {
            for &id in &ids {
                opt.write_grad(id, &gradient(step, id, opt.param(id).unwrap().len, &conditioned())).unwrap();
            }
            opt.step_and_submit().unwrap();
        }
        let counters = opt.counters().unwrap();
        assert_eq!((counters.applied_steps, counters.skipped_steps), (3, 1), "one skip decision for both groups");
        assert_eq!(opt.rule(0).name(), "Muon");
        assert_eq!(opt.rule(1).name(), "AdamW");
    }
}

/// Muon's dispatches grow with the number of distinct shapes, not with the number of tensors;
/// element-wise rules keep one dispatch per window; Lamb and Adafactor add per-tensor passes.
#[test]
fn dispatch_counts_follow_passes_and_shapes() {
    let muon = Muon::default();
    let passes = 2 + 3 * muon.ns_steps as usize + 1;
    for gpu in gpus() {
        for copies in [1, 8] {
            let mut params = Parameters::new();
            let mut matrices = Vec::new();
            for k in 0..copies {
                matrices.push(params.zeros(&format!("a{k}"), &[16, 24]).unwrap());
                matrices.push(params.zeros(&format!("b{k}"), &[24, 16]).unwrap());
            }
            let bias = params.zeros("bias", &[24]).unwrap();
            let groups = vec![ParamGroup::new(muon.clone(), matrices.clone()), ParamGroup::new(AdamW::default(), [bias])];
            let opt = Optimizer::new(gpu, params, groups).unwrap();
            assert_eq!(opt.dispatches_per_step(), 1 + 2 * passes + 1, "{copies} copies of two shapes: the step counter, two batches, plus AdamW's window");
        }
        let mut params = Parameters::new();
        let ids: Vec<TensorId> = (0..100).map(|k| params.zeros(&format!("t{k}"), &[3, 5 + k]).unwrap()).collect();
        let lamb = Optimizer::new(gpu, params.clone(), vec![ParamGroup::new(Lamb::default(), ids.clone())]).unwrap();
        assert_eq!(lamb.dispatches_per_step(), 2 + 3, "the global-norm pass and its finish, then moments, trust_ratio, apply");
        let adafactor = Optimizer::new(gpu, params.clone(), vec![ParamGroup::new(Adafactor::default(), ids.clone())]).unwrap();
        assert_eq!(adafactor.dispatches_per_step(), 1 + 5, "the step counter, then moments, factor, update_norm, step_size, apply");
        let adamw = Optimizer::new(gpu, params, vec![ParamGroup::new(AdamW::default(), ids)]).unwrap();
        assert_eq!(adamw.dispatches_per_step(), 1 + 1, "the step counter, then an element-wise rule: one dispatch for 100 tensors");
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-structured-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn bits(checkpoint: &Checkpoint) -> Vec<(String, Vec<u32>)> {
    checkpoint.tensors.iter().map(|t| (t.name.clone(), t.data.iter().map(|x| x.to_bits()).collect())).collect()
}

fn run_gpu_steps(gpu: &GpuContext, shapes: &[&[usize]], groups: &Groups, steps: std::ops::Range<usize>, resume: Option<&PathBuf>) -> Optimizer {
    let gradients = conditioned();
    let (mut opt, ids) = gpu_optimizer(gpu, shapes, groups, &gradients);
    if let Some(path) = resume {
        opt.load_checkpoint(path).unwrap();
    }
    for step in steps {
        for &id in &ids {
            opt.write_grad(id, &gradient(step, id, opt.param(id).unwrap().len, &gradients)).unwrap();
        }
        opt.step_and_submit().unwrap();
    }
    opt
}

#[test]
fn resuming_is_bit_exact_for_the_new_rules_and_mixed_groups() {
    let cases: Vec<(&str, &'static [&'static [usize]], Box<Groups>)> = vec![
        ("Lamb", ALL_SHAPES, one_group(Lamb { lr: 0.01, ..Lamb::default() })),
        ("Adafactor", ALL_SHAPES, one_group(Adafactor { weight_decay: 0.1, ..Adafactor::default() })),
        ("Muon (bf16)", MATRICES, one_group(Muon { lr: 0.02, ..Muon::default() })),
        ("Muon + AdamW", MIXED_SHAPES, muon_and_adamw(Muon { lr: 0.02, ns_precision: NsPrecision::Float32, ..Muon::default() }, MIXED_SHAPES)),
    ];
    for (label, shapes, groups) in &cases {
        for gpu in gpus() {
            let path = scratch(&format!("{label}-{:?}.safetensors", gpu.adapter().backend).replace(' ', "_"));
            let straight = run_gpu_steps(gpu, shapes, groups.as_ref(), 0..8, None).checkpoint(None).unwrap();
            run_gpu_steps(gpu, shapes, groups.as_ref(), 0..3, None).save_checkpoint(&path, None).unwrap();
            let resumed = run_gpu_steps(gpu, shapes, groups.as_ref(), 3..8, Some(&path)).checkpoint(None).unwrap();
            assert_eq!(bits(&resumed), bits(&straight), "{label} on {}", gpu.adapter());
            assert_eq!(straight.counters.skipped_steps, 1, "{label}: the infinite gradient's step was skipped");
            if *label == "Adafactor" {
                let names: Vec<&str> = straight.tensors.iter().map(|t| t.name.as_str()).collect();
                for key in ["t4.row_var", "t4.col_var", "t5.variance"] {
                    assert!(names.contains(&key), "{key} in {names:?}");
                }
                assert_eq!(straight.tensor("t4.row_var").unwrap().shape, [5, 7, 1]);
                assert_eq!(straight.tensor("t4.col_var").unwrap().shape, [5, 1, 9]);
            }
        }
    }
    // Another Muon configuration (other ns_steps: another pass list) does not load.
    for gpu in gpus() {
        let path = scratch(&format!("muon-steps-{:?}.safetensors", gpu.adapter().backend));
        run_gpu_steps(gpu, MATRICES, one_group(Muon::default()).as_ref(), 0..2, None).save_checkpoint(&path, None).unwrap();
        let (mut other, _) = gpu_optimizer(gpu, MATRICES, one_group(Muon { ns_steps: 3, ..Muon::default() }).as_ref(), &conditioned());
        let before = other.checkpoint(None).unwrap();
        let error = other.load_checkpoint(&path).unwrap_err().to_string();
        assert!(error.contains("needs other passes (such as Muon's ns_steps)"), "{error}");
        assert_eq!(bits(&other.checkpoint(None).unwrap()), bits(&before), "a rejected checkpoint changes nothing");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let (params, ids) = model(&[&[3, 4], &[4]], 1);
    let muon_on_a_vector = vec![ParamGroup::new(Muon::default(), ids.clone())];
    let error = CpuOptimizer::new(params.clone(), muon_on_a_vector.clone()).err().expect("rejected").to_string();
    assert!(error.contains("Muon only supports 2D parameters whereas we found a parameter with size: [4]"), "{error}");
    for gpu in gpus() {
        let error = Optimizer::new(gpu, params.clone(), muon_on_a_vector.clone()).err().expect("rejected").to_string();
        assert!(error.contains("Muon only supports 2D parameters"), "{error}");
    }
    for (rule, expected) in [
        (wgpu_optim::rules::from_config("Adafactor", &serde_json::json!({"eps": [-1.0, 1e-3]})), "invalid eps[0]"),
        (wgpu_optim::rules::from_config("Adafactor", &serde_json::json!({"eps": [null, -1e-3]})), "invalid eps[1]"),
        (wgpu_optim::rules::from_config("Adafactor", &serde_json::json!({"beta2_decay": 0.5})), "invalid beta2_decay"),
        (wgpu_optim::rules::from_config("Adafactor", &serde_json::json!({"d": 0.5})), "invalid d"),
        (wgpu_optim::rules::from_config("Muon", &serde_json::json!({"ns_steps": 100})), "less than 100"),
        (wgpu_optim::rules::from_config("Muon", &serde_json::json!({"adjust_lr_fn": "sideways"})), "unknown variant"),
        (wgpu_optim::rules::from_config("Lamb", &serde_json::json!({"caution": true})), "not implemented"),
        (wgpu_optim::rules::from_config("Lamb", &serde_json::json!({"max_grad_norm": 0.0})), "invalid max_grad_norm"),
    ] {
        let error = rule.err().expect("rejected").to_string();
        assert!(error.contains(expected), "{error} should say {expected:?}");
    }
    // A matrix larger than one binding (here a 64-KiB arena) is rejected, not split.
    for gpu in gpus() {
        let (params, ids) = model(&[&[100, 200]], 1);
        let options = OptimizerOptions { max_arena_elements: Some(16 * 1024), ..Default::default() };
        for rule in [Box::new(Muon::default()) as Box<dyn UpdateRule>, Box::new(Adafactor::default())] {
            let error = Optimizer::with_options(gpu, params.clone(), vec![ParamGroup::from_boxed(rule, ids.clone())], options.clone())
                .err()
                .expect("rejected")
                .to_string();
            assert!(error.contains("works on whole tensors, each within one storage binding"), "{error}");
        }
    }
    // An unknown per-group optimizer in run.json.
    let config = wgpu_optim::replay::RunConfig::from_json(
        r#"{"optimizer": "AdamW", "param_groups": [{"params": ["t0"], "optimizer": "Sophia"}, {"params": ["t1"]}]}"#,
    )
    .unwrap();
    let error = config.groups(&params).err().expect("rejected").to_string();
    assert!(error.contains("unknown optimizer \"Sophia\""), "{error}");
}
