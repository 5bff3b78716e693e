//! Rules with structure, on a GPT-2-shaped model: one step of Muon on the hidden matrices plus
//! AdamW for the rest against AdamW alone (step time, dispatches), and the optimizer state each
//! choice keeps per parameter (AdamW, Adafactor, Muon + AdamW), read from the optimizer's own
//! state tensors.

use serde::Serialize;
use wgpu_optim::rules::{Adafactor, AdamW, Muon, NsPrecision};
use wgpu_optim::{CpuOptimizer, Optimizer, OptimizerOptions, UpdateRule};

use crate::gpu::{measure, Bench, Plan, Step, Workload};
use crate::layouts::{Gpt2Dims, Layout};
use crate::{build_optimizer, layout_rules, same_clock, CheckRow, Measured};

/// What the section measures.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// The model whose step is timed.
    pub timed: Gpt2Dims,
    pub timed_name: String,
    /// The model whose state is counted (GPT-2 small, or the quick run's tiny model).
    pub counted: Gpt2Dims,
    pub counted_name: String,
    /// Newton–Schulz iterations of the timed Muon steps (one row per value and precision).
    pub ns_steps: Vec<u32>,
    pub precisions: Vec<NsPrecision>,
}

/// torch's default Newton–Schulz iterations: the state table's Muon configuration.
pub const TORCH_NS_STEPS: u32 = 5;

impl Config {
    /// A model small enough for `--quick` and for the checks: width 64, 2 blocks.
    pub const TINY: Gpt2Dims = Gpt2Dims {
        width: 64,
        vocab: 1000,
        context: 64,
        layers: 2,
    };
}

/// Muon (lr 0.02, torch's other defaults) on group 0, AdamW (nanoGPT's lr and betas, no weight
/// decay) on group 1: the rules of [`Layout::hidden_matrices_apart`].
pub fn muon_and_adamw(ns_steps: u32, ns_precision: NsPrecision) -> Vec<Box<dyn UpdateRule>> {
    vec![
        Box::new(Muon {
            lr: 0.02,
            ns_steps,
            ns_precision,
            ..Muon::default()
        }),
        Box::new(AdamW {
            lr: 6e-4,
            betas: (0.9, 0.95),
            weight_decay: 0.0,
            ..AdamW::default()
        }),
    ]
}

pub fn precision_name(precision: NsPrecision) -> &'static str {
    match precision {
        NsPrecision::Bfloat16 => "bfloat16",
        NsPrecision::Float32 => "float32",
    }
}

pub fn parse_precision(text: &str) -> Result<NsPrecision, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "bfloat16" | "bf16" => Ok(NsPrecision::Bfloat16),
        "float32" | "f32" => Ok(NsPrecision::Float32),
        other => Err(format!(
            "unknown Newton–Schulz precision {other:?}; use bfloat16 or float32"
        )),
    }
}

/// Multiply-adds of one step's Newton–Schulz iterations over the 2-D tensors of `group`:
/// per matrix (m ≤ n) and iteration, X Xᵀ (m·m·n), A A (m·m·m) and B X (m·m·n).
fn newton_schulz_macs(layout: &Layout, group: usize, ns_steps: u32) -> f64 {
    layout
        .tensors
        .iter()
        .filter(|(_, shape, g)| *g == group && shape.len() == 2)
        .map(|(_, shape, _)| {
            let (m, n) = (shape[0].min(shape[1]) as f64, shape[0].max(shape[1]) as f64);
            f64::from(ns_steps) * (2.0 * m * m * n + m * m * m)
        })
        .sum()
}

fn group_elements(layout: &Layout, group: usize) -> usize {
    layout
        .tensors
        .iter()
        .filter(|(_, _, g)| *g == group)
        .map(|(_, shape, _)| shape.iter().product::<usize>())
        .sum()
}

#[derive(Serialize)]
pub struct StepRow {
    pub rules: String,
    pub layout: String,
    pub parameters: usize,
    /// Matrices and parameters updated by Muon (0 for AdamW alone).
    pub muon_matrices: usize,
    pub muon_parameters: usize,
    pub ns_steps: Option<u32>,
    pub ns_precision: Option<&'static str>,
    /// Newton–Schulz multiply-adds per step.
    pub ns_macs: f64,
    pub groups: usize,
    pub arenas: usize,
    pub dispatches: usize,
    pub step: Measured,
    /// This step's time over AdamW alone's, same clock (> 1: slower).
    pub vs_adamw: f64,
    pub clock: &'static str,
}

/// A timed optimizer: its label, Muon's (ns_steps, precision) if it has a Muon group, itself.
type Labelled = (String, Option<(u32, NsPrecision)>, Optimizer);

/// One step of AdamW alone (nanoGPT's two groups) and of Muon + AdamW in each precision, on the
/// same model, interleaved.
pub fn step_section(
    bench: &Bench,
    plan: &Plan,
    options: &OptimizerOptions,
    config: &Config,
) -> Result<Vec<StepRow>, String> {
    let layout = Layout::gpt2(&config.timed_name, config.timed);
    let split = layout.hidden_matrices_apart();
    let mut labelled: Vec<Labelled> = Vec::new();
    eprintln!(
        "structured: building AdamW on {} (load average {:?})",
        layout.name,
        crate::gpu::load_average()
    );
    labelled.push((
        "AdamW".into(),
        None,
        build_optimizer(bench, &layout, &layout_rules(true), options)?,
    ));
    for &ns_steps in &config.ns_steps {
        for &precision in &config.precisions {
            eprintln!(
                "structured: building Muon ({}, ns_steps {ns_steps}) + AdamW on {}",
                precision_name(precision),
                layout.name
            );
            let rules = muon_and_adamw(ns_steps, precision);
            labelled.push((
                format!("Muon ({}) + AdamW", precision_name(precision)),
                Some((ns_steps, precision)),
                build_optimizer(bench, &split, &rules, options)?,
            ));
        }
    }
    eprintln!(
        "structured: timing {} optimizers, {} rounds (load average {:?})",
        labelled.len(),
        plan.reps,
        crate::gpu::load_average()
    );
    let timings = {
        let mut steps: Vec<Step> = labelled.iter_mut().map(|(_, _, opt)| Step::new(opt)).collect();
        let mut workloads: Vec<&mut dyn Workload> = steps.iter_mut().map(|s| s as &mut dyn Workload).collect();
        measure(bench, plan, &mut workloads)
    };
    let measured: Vec<Measured> = timings.into_iter().map(Measured::new).collect();
    let adamw = measured[0].clone();
    let muon_matrices = split.tensors.iter().filter(|(_, _, g)| *g == 0).count();
    Ok(labelled
        .iter()
        .zip(measured)
        .map(|((label, muon_config, opt), step)| {
            let (s, adamw_s, clock) = same_clock(&step, &adamw);
            let muon = muon_config.is_some();
            StepRow {
                rules: label.clone(),
                layout: layout.name.clone(),
                parameters: layout.elements(),
                muon_matrices: if muon { muon_matrices } else { 0 },
                muon_parameters: if muon { group_elements(&split, 0) } else { 0 },
                ns_steps: muon_config.map(|(n, _)| n),
                ns_precision: muon_config.map(|(_, p)| precision_name(p)),
                ns_macs: muon_config.map_or(0.0, |(n, _)| newton_schulz_macs(&split, 0, n)),
                groups: opt.group_count(),
                arenas: opt.arenas().len(),
                dispatches: opt.dispatches_per_step(),
                vs_adamw: s / adamw_s,
                clock,
                step,
            }
        })
        .collect())
}

/// State tensors of an optimizer: how many, their `f32` elements, and the distinct keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StateCount {
    pub tensors: usize,
    pub floats: usize,
    pub keys: Vec<&'static str>,
}

impl StateCount {
    fn add(&mut self, key: &'static str, len: usize) {
        self.tensors += 1;
        self.floats += len;
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }
}

/// From the optimizer's own state tensors: `state_keys` and the `len` of each `state` view.
pub fn state_from_views(opt: &Optimizer) -> Result<StateCount, String> {
    let mut count = StateCount::default();
    for id in opt.tensor_ids() {
        for key in opt.state_keys(id).map_err(|e| e.to_string())? {
            count.add(key, opt.state(id, key).map_err(|e| e.to_string())?.len);
        }
    }
    Ok(count)
}

/// From the rules' declared state: per-element slots (the tensor's size each) and per-tensor
/// slots (their own shapes), for layouts the optimizer cannot be built on.
pub fn state_from_shapes(layout: &Layout, rules: &[Box<dyn UpdateRule>]) -> StateCount {
    let mut count = StateCount::default();
    for (_, shape, group) in &layout.tensors {
        let rule = &rules[*group];
        for slot in rule.state_slots() {
            count.add(slot.key, shape.iter().product());
        }
        for slot in rule.tensor_state(shape) {
            count.add(slot.key, slot.len());
        }
    }
    count
}

/// Newton–Schulz scratch of the Muon group (group 0): batches of same-shape matrices in one
/// arena share one binding's worth of scratch, so the aux buffer holds the largest batch. The
/// library's planner does this (`plan_layout`); this repeats its rule from `arenas()` and
/// `tensor_scratch`, for the table only. Not optimizer state: a workspace reused every step.
fn muon_scratch_floats(opt: &Optimizer, bench: &Bench) -> usize {
    let budget = bench.binding_elements() / 4 * 4;
    let rule = opt.rule(0);
    let mut largest = 0;
    for arena in opt.arenas().iter().filter(|a| a.group == 0) {
        let mut shapes: Vec<Vec<usize>> = Vec::new();
        for &id in &arena.tensors {
            let shape = opt.tensor_shape(id).expect("the optimizer's own tensor").to_vec();
            if !shapes.contains(&shape) {
                shapes.push(shape);
            }
        }
        for shape in shapes {
            let need = rule.tensor_scratch(&shape).next_multiple_of(4);
            let count = arena
                .tensors
                .iter()
                .filter(|&&id| opt.tensor_shape(id).expect("the optimizer's own tensor") == shape.as_slice())
                .count();
            let per_batch = (budget / need.max(1)).max(1);
            largest = largest.max(count.min(per_batch) * need);
        }
    }
    largest
}

#[derive(Serialize)]
pub struct StateRow {
    pub rules: String,
    pub layout: String,
    pub parameters: usize,
    /// "state views" (the built optimizer's `state`) or "state shapes" (the rules' declared
    /// slots, where the optimizer cannot be built on this adapter).
    pub source: &'static str,
    pub state: StateCount,
    pub bytes_per_parameter: f64,
    /// Muon's Newton–Schulz workspace, not state (see [`muon_scratch_floats`]).
    pub scratch_bytes: Option<u64>,
    /// `dispatches_per_step()` of the optimizer built on this layout (none from shapes).
    pub dispatches: Option<usize>,
}

impl StateRow {
    fn new(
        rules: &str,
        layout: &Layout,
        source: &'static str,
        state: StateCount,
        scratch_floats: Option<usize>,
        dispatches: Option<usize>,
    ) -> Self {
        StateRow {
            dispatches,
            rules: rules.into(),
            layout: layout.name.clone(),
            parameters: layout.elements(),
            source,
            bytes_per_parameter: state.floats as f64 * 4.0 / layout.elements() as f64,
            state,
            scratch_bytes: scratch_floats.map(|f| f as u64 * 4),
        }
    }
}

/// Builds the optimizer (no gradients written, nothing run) and counts its state tensors,
/// checking the count against the rules' declared shapes.
fn counted(bench: &Bench, layout: &Layout, rules: &[Box<dyn UpdateRule>]) -> Result<(StateCount, Optimizer), String> {
    let (params, groups) = layout.build(rules);
    let opt =
        Optimizer::with_options(&bench.gpu, params, groups, OptimizerOptions::default()).map_err(|e| e.to_string())?;
    let views = state_from_views(&opt)?;
    let shapes = state_from_shapes(layout, rules);
    if views != shapes {
        return Err(format!(
            "{}: the optimizer's state views ({views:?}) differ from the rules' declared state ({shapes:?})",
            layout.name
        ));
    }
    Ok((views, opt))
}

/// Optimizer state per parameter: AdamW, Muon (torch's 5 Newton–Schulz iterations) + AdamW and
/// Adafactor on the counted model, from
/// the built optimizers' state views; where a tensor exceeds one storage binding (GPT-2's `wte`
/// on llvmpipe) Adafactor cannot be built, so its row for the whole model comes from the
/// declared state shapes, with a measured row for the model without those tensors.
pub fn state_section(bench: &Bench, config: &Config) -> Result<Vec<StateRow>, String> {
    let layout = Layout::gpt2(&config.counted_name, config.counted);
    let mut rows = Vec::new();

    eprintln!("structured: counting AdamW state on {}", layout.name);
    let adamw = layout_rules(true);
    let (count, opt) = counted(bench, &layout, &adamw)?;
    let dispatches = opt.dispatches_per_step();
    drop(opt);
    rows.push(StateRow::new(
        "AdamW",
        &layout,
        "state views",
        count,
        None,
        Some(dispatches),
    ));

    eprintln!("structured: counting Muon + AdamW state on {}", layout.name);
    let split = layout.hidden_matrices_apart();
    let muon = muon_and_adamw(TORCH_NS_STEPS, NsPrecision::Bfloat16);
    let (count, opt) = counted(bench, &split, &muon)?;
    let scratch = muon_scratch_floats(&opt, bench);
    let dispatches = opt.dispatches_per_step();
    drop(opt);
    rows.push(StateRow::new(
        "Muon + AdamW",
        &split,
        "state views",
        count,
        Some(scratch),
        Some(dispatches),
    ));

    eprintln!("structured: counting Adafactor state on {}", layout.name);
    let whole = layout.one_group();
    let adafactor: Vec<Box<dyn UpdateRule>> = vec![Box::new(Adafactor::default())];
    let too_big: Vec<String> = whole
        .tensors
        .iter()
        .filter(|(_, shape, _)| shape.iter().product::<usize>() > bench.binding_elements())
        .map(|(name, _, _)| name.clone())
        .collect();
    if too_big.is_empty() {
        let (count, opt) = counted(bench, &whole, &adafactor)?;
        rows.push(StateRow::new(
            "Adafactor",
            &whole,
            "state views",
            count,
            None,
            Some(opt.dispatches_per_step()),
        ));
    } else {
        let mut fits = whole.clone();
        for name in &too_big {
            fits = fits.without(name);
        }
        let (count, opt) = counted(bench, &fits, &adafactor)?;
        let dispatches = opt.dispatches_per_step();
        drop(opt);
        rows.push(StateRow::new(
            "Adafactor",
            &fits,
            "state views",
            count,
            None,
            Some(dispatches),
        ));
        rows.push(StateRow::new(
            "Adafactor",
            &whole,
            "state shapes",
            state_from_shapes(&whole, &adafactor),
            None,
            None,
        ));
    }
    Ok(rows)
}

/// The section's configurations on the tiny model: state views agree with the declared state
/// shapes (AdamW, Muon + AdamW, Adafactor), and one step of Muon + AdamW in each precision
/// matches the CPU reference (2e-6 of each tensor's scale in float32; in bfloat16, one bfloat16
/// step of the scale, 2^-7: a different rounding of an f32 sum, such as a hardware driver's fused
/// multiply-add, can move an element across a bfloat16 boundary).
/// One bfloat16 step (2^-7) of a tensor's scale.
pub const BF16_CHECK_TOLERANCE: f64 = 1.0 / 128.0;

pub fn checks(bench: &Bench, tolerance: f64) -> Result<Vec<CheckRow>, String> {
    let layout = Layout::gpt2("tiny GPT-2", Config::TINY);
    let split = layout.hidden_matrices_apart();
    let mut rows = Vec::new();
    let mut state_ok = true;
    for (label, layout, rules) in [
        ("AdamW", &layout, layout_rules(true)),
        ("Muon + AdamW", &split, muon_and_adamw(5, NsPrecision::Bfloat16)),
        (
            "Adafactor",
            &layout.one_group(),
            vec![Box::new(Adafactor::default()) as Box<dyn UpdateRule>],
        ),
    ] {
        if let Err(message) = counted(bench, layout, &rules) {
            println!("check state of {label}: {message}");
            state_ok = false;
        }
    }
    rows.push(CheckRow {
        kernel: "state views = declared state (tiny GPT-2)".into(),
        max_error: if state_ok { 0.0 } else { 1.0 },
        passed: state_ok,
    });

    for precision in [NsPrecision::Float32, NsPrecision::Bfloat16] {
        let rules = muon_and_adamw(5, precision);
        let mut opt = build_optimizer(bench, &split, &rules, &OptimizerOptions::default())?;
        let mut encoder = bench.device().create_command_encoder(&Default::default());
        opt.step(&mut encoder).map_err(|e| e.to_string())?;
        bench.queue().submit([encoder.finish()]);
        let (params, groups) = split.build(&rules);
        // The reference's own ids (ids name the tensors of one Parameters only), in layout order.
        let cpu_ids: Vec<_> = params.iter().map(|(id, _)| id).collect();
        let mut cpu = CpuOptimizer::new(params, groups).map_err(|e| e.to_string())?;
        for (t, &id) in cpu_ids.iter().enumerate() {
            cpu.write_grad(id, &split.grad(t)).map_err(|e| e.to_string())?;
        }
        cpu.step();
        let mut worst: f64 = 0.0;
        for (id, &cpu_id) in opt.tensor_ids().zip(&cpu_ids) {
            worst = worst.max(relative_error(
                &opt.read_param(id).map_err(|e| e.to_string())?,
                cpu.param(cpu_id).map_err(|e| e.to_string())?,
            ));
            for key in opt.state_keys(id).map_err(|e| e.to_string())? {
                let got = opt.read_state(id, key).map_err(|e| e.to_string())?;
                worst = worst.max(relative_error(&got, cpu.state(cpu_id, key).map_err(|e| e.to_string())?));
            }
        }
        let limit = if precision == NsPrecision::Float32 {
            tolerance
        } else {
            BF16_CHECK_TOLERANCE
        };
        rows.push(CheckRow {
            kernel: format!("Muon ({}) + AdamW, tiny GPT-2", precision_name(precision)),
            max_error: worst,
            passed: worst <= limit,
        });
    }
    Ok(rows)
}

/// Largest absolute difference over the largest magnitude of `want`.
fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE) as f64;
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max)
        / scale
}
