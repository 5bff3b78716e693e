//! Trains a multi-layer perceptron on real data entirely on the GPU: the forward and backward
//! passes are this example's WGSL kernels (examples/train/*.wgsl), which read the parameters
//! from the optimizer's arenas and write the gradients into its gradient arenas; the library's
//! optimizer then steps the parameters in place. No tensor goes to the CPU during training:
//! the per-step loss and parameter norm collect in a GPU buffer read every few steps.
//!
//! ```text
//! cargo run --release --example train                          # AdamW on the UCI digits, plots in target/train/
//! cargo run --release --example train -- --optimizer sgd:momentum=0.9:nesterov=true --lr 0.05
//! cargo run --release --example train -- --compare adamw,adam:weight_decay=0.1,sgd
//! cargo run --release --example train -- --mnist ~/data/mnist --hidden 256,128 --epochs 5
//! python3 examples/train_torch.py && cargo run --release --example train -- --reference target/train/torch.json
//! ```
//!
//! Model: inputs → hidden (ReLU) → ... → 10 logits, softmax cross-entropy. Default: 64 → 128 →
//! 64 → 10 on the 8×8 digits, AdamW (weight decay on the weights only: biases are a second
//! parameter group), linear warmup then cosine decay, minibatches of 64 for 30 epochs.

mod data;
mod lr;
mod model;
mod plot;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use wgpu_optim::rules::{self, UpdateRule};
use wgpu_optim::{BackendChoice, GpuContext, Optimizer, ParamGroup};

use data::Dataset;
use model::{Kernels, Layer, Mlp};

/// Steps recorded per submission; the host reads their losses back after each. At most the
/// optimizer's `steps_in_flight` (64 by default).
const STEPS_PER_SUBMIT: usize = 32;

/// Hyper-parameters per rule for this problem (learning rates from a sweep with
/// examples/train_torch.py, 3 seeds each); the same table as DEFAULTS there. Weight decay never
/// applies to the biases.
fn defaults(rule: &str) -> Value {
    match rule {
        "SGD" => json!({"lr": 0.1, "momentum": 0.9}),
        "Adagrad" => json!({"lr": 0.1}),
        "RMSprop" => json!({"lr": 3e-3}),
        "Adadelta" => json!({"lr": 3.0}),
        "Adam" => json!({"lr": 1e-2}),
        "AdamW" => json!({"lr": 1e-2, "weight_decay": 0.1}),
        "NAdam" => json!({"lr": 1e-2}),
        _ => json!({}),
    }
}

#[derive(Parser, Debug)]
#[command(about = "Train an MLP on the GPU with wgpu-optim (forward and backward passes in WGSL).")]
struct Args {
    /// Adapter's graphics API: auto, vulkan, gl, metal, dx12 [default: $WGPU_OPTIM_BACKEND, else auto]
    #[arg(long)]
    backend: Option<String>,
    /// Update rule: a torch.optim class the library implements (any case), optionally with
    /// hyper-parameters: NAME[:key=value...], e.g. sgd:momentum=0.9:nesterov=true or
    /// adam:betas=[0.9,0.95]. Unset ones take this example's per-rule defaults, then torch's.
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// Train the same model with several rules (comma-separated, each as --optimizer takes it)
    /// and plot their curves together, e.g. adamw,adam:weight_decay=1e-3,sgd,nadam
    #[arg(long)]
    compare: Option<String>,
    /// Peak learning rate (overrides the per-rule default)
    #[arg(long)]
    lr: Option<f64>,
    /// Weight decay of the weights (biases never decay)
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Minibatch size; each epoch drops its last partial batch
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Hidden layer widths, comma-separated
    #[arg(long, default_value = "128,64")]
    hidden: String,
    /// Linear warmup steps (torch's LinearLR), then cosine decay to 0 (CosineAnnealingLR)
    #[arg(long, default_value_t = 50)]
    warmup_steps: usize,
    /// Learning-rate factor at the first warmup step (LinearLR's start_factor)
    #[arg(long, default_value_t = 0.01)]
    warmup_start: f64,
    /// Seed of the initial weights; the minibatch order uses seed + 1
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on MNIST instead: the directory of its four idx files (optionally .gz)
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// Where the metrics (JSON) and plots (PNG) go
    #[arg(long, default_value = "target/train")]
    out: PathBuf,
    /// A run of the same model by examples/train_torch.py (its JSON) to plot and compare
    /// against; may be repeated
    #[arg(long)]
    reference: Vec<PathBuf>,
    /// TrueType font for the plots' text [default: DejaVu Sans or Arial where installed]
    #[arg(long)]
    font: Option<PathBuf>,
}

/// One training run's curves, in the format examples/train_torch.py writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    #[serde(default)]
    pub label: String,
    pub trainer: String,
    #[serde(default)]
    pub data: String,
    pub optimizer: String,
    pub hyperparameters: Value,
    pub hidden: Vec<usize>,
    pub batch: usize,
    pub epochs: usize,
    pub warmup_steps: usize,
    pub warmup_start: f64,
    pub seed: u64,
    pub seconds: f64,
    pub steps: StepCurves,
    pub evals: EvalCurves,
}

/// Per optimizer step: minibatch loss (before the step), learning rate used, and parameter L2
/// norm after the step.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepCurves {
    pub loss: Vec<f64>,
    pub lr: Vec<f64>,
    pub param_norm: Vec<f64>,
}

/// Test-set evaluations: at step 0 and after every epoch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EvalCurves {
    pub step: Vec<usize>,
    pub test_loss: Vec<f64>,
    pub test_accuracy: Vec<f64>,
}

/// A rule as the command line names it: `NAME[:key=value...]`.
#[derive(Clone, Debug)]
struct RuleSpec {
    text: String,
    name: &'static str,
    hyper: Map<String, Value>,
}

impl RuleSpec {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split(':');
        let given = parts.next().unwrap_or_default().trim();
        let name = rules::OPTIMIZER_NAMES
            .iter()
            .copied()
            .find(|n| n.eq_ignore_ascii_case(given))
            .ok_or_else(|| format!("unknown optimizer {given:?}: expected one of {}", rules::OPTIMIZER_NAMES.join(", ")))?;
        let mut hyper = Map::new();
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{text:?}: {part:?} is not key=value"))?;
            let value: Value = serde_json::from_str(value.trim())
                .map_err(|_| format!("{text:?}: the value of {key} ({value:?}) is not a number, true/false or a [list]"))?;
            hyper.insert(key.trim().to_string(), value);
        }
        Ok(RuleSpec { text: text.to_string(), name, hyper })
    }

    /// The rules of the two parameter groups (weights, then biases without weight decay):
    /// per-rule defaults, then --lr/--weight-decay, then the spec's own values.
    fn rules(&self, lr: Option<f64>, weight_decay: Option<f64>) -> Result<[Box<dyn UpdateRule>; 2], Box<dyn Error>> {
        let mut hyper = match defaults(self.name) {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        if let Some(lr) = lr {
            hyper.insert("lr".into(), json!(lr));
        }
        if let Some(weight_decay) = weight_decay {
            hyper.insert("weight_decay".into(), json!(weight_decay));
        }
        hyper.extend(self.hyper.clone());
        let weights = rules::from_config(self.name, &Value::Object(hyper.clone()))?;
        hyper.insert("weight_decay".into(), json!(0.0));
        let biases = rules::from_config(self.name, &Value::Object(hyper))?;
        Ok([weights, biases])
    }
}

/// Splits a comma-separated list, keeping commas inside [brackets] (betas=[0.9,0.95]).
fn split_list(text: &str) -> Vec<String> {
    let (mut items, mut current, mut depth) = (Vec::new(), String::new(), 0i32);
    for c in text.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// What every run of one invocation shares.
struct Setup {
    gpu: GpuContext,
    kernels: Kernels,
    data: Dataset,
    sizes: Vec<usize>,
    order: Vec<u32>,
    steps_per_epoch: usize,
    args: Args,
}

impl Setup {
    fn total_steps(&self) -> usize {
        self.steps_per_epoch * self.args.epochs
    }
}

/// Trains one model from the fixed initial weights with `spec`; `bar` shows progress.
fn train(setup: &Setup, spec: &RuleSpec, bar: &ProgressBar) -> Result<Run, Box<dyn Error>> {
    let args = &setup.args;
    let (params, layers) = model::init_parameters(&setup.sizes, args.seed)?;
    let [weight_rule, bias_rule] = spec.rules(args.lr, args.weight_decay)?;
    let hyperparameters = weight_rule.hyperparameters();
    let mut opt = Optimizer::new(
        &setup.gpu,
        params,
        vec![
            ParamGroup::from_boxed(weight_rule, layers.iter().map(|l: &Layer| l.w)),
            ParamGroup::from_boxed(bias_rule, layers.iter().map(|l: &Layer| l.b)),
        ],
    )?;
    let mlp = Mlp::new(&opt, &setup.kernels, &layers, args.batch, &setup.data.train, &setup.data.test, &setup.order)?;

    // PLUG-IN (schedule): replace with the library's warmup + cosine schedule (src/schedule.rs)
    // once it lands; this one computes torch's SequentialLR values in the example.
    let base_lrs = (0..opt.group_count()).map(|g| opt.rule(g).lr()).collect();
    let mut schedule = lr::WarmupCosine::new(base_lrs, args.warmup_steps, setup.total_steps(), args.warmup_start)?;

    // PLUG-IN (checkpoint, --resume): restore parameters, optimizer state, schedule and step
    // counter from the library's checkpoint here. The batch order depends only on the seed, so
    // a resumed run sees the same minibatches from the restored step on.

    let mut run = Run {
        label: spec.text.clone(),
        trainer: format!("wgpu-optim on {}", setup.gpu.adapter().name),
        data: setup.data.name.clone(),
        optimizer: spec.name.to_string(),
        hyperparameters,
        hidden: setup.sizes[1..setup.sizes.len() - 1].to_vec(),
        batch: args.batch,
        epochs: args.epochs,
        warmup_steps: args.warmup_steps,
        warmup_start: args.warmup_start,
        seed: args.seed,
        seconds: 0.0,
        steps: StepCurves::default(),
        evals: EvalCurves::default(),
    };
    let record_eval = |run: &mut Run, step: usize| -> Result<(), Box<dyn Error>> {
        let (loss, accuracy) = mlp.evaluate()?;
        run.evals.step.push(step);
        run.evals.test_loss.push(loss);
        run.evals.test_accuracy.push(accuracy);
        Ok(())
    };
    record_eval(&mut run, 0)?;
    if let Ok(mode) = std::env::var("PROFILE_MODE") {
        let t = Instant::now();
        let mut encoder = setup.gpu.device().create_command_encoder(&Default::default());
        for s in 0..200 {
            if mode.contains('f') { mlp.record_forward_backward(&mut encoder, s)?; }
            if mode.contains('o') { opt.step(&mut encoder); }
            if mode.contains('m') { mlp.record_metrics(&mut encoder, s)?; }
            if s % 32 == 31 { setup.gpu.queue().submit([std::mem::replace(&mut encoder, setup.gpu.device().create_command_encoder(&Default::default())).finish()]); }
        }
        setup.gpu.queue().submit([encoder.finish()]);
        mlp.read_history(0, 1)?;
        eprintln!("PROFILE {mode}: {:.3} s for 200 steps", t.elapsed().as_secs_f64());
        std::process::exit(0);
    }

    let device = setup.gpu.device();
    let start = Instant::now();
    let mut step = 0;
    for epoch in 0..args.epochs {
        let epoch_end = (epoch + 1) * setup.steps_per_epoch;
        while step < epoch_end {
            let chunk_end = (step + STEPS_PER_SUBMIT).min(epoch_end);
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("train") });
            for s in step..chunk_end {
                for (group, &lr) in schedule.lrs().iter().enumerate() {
                    opt.set_lr(group, lr)?;
                }
                run.steps.lr.push(schedule.lrs()[0]);
                mlp.record_forward_backward(&mut encoder, s)?;
                // PLUG-IN (clipping): global-norm gradient clipping goes here, between the
                // backward pass and the optimizer step, once the library clips on the GPU.
                opt.step(&mut encoder);
                mlp.record_metrics(&mut encoder, s)?;
                schedule.step();
            }
            setup.gpu.queue().submit([encoder.finish()]);
            let history = mlp.read_history(step, chunk_end)?;
            for (i, &(loss, norm)) in history.iter().enumerate() {
                if !loss.is_finite() {
                    return Err(format!("{}: the loss became {loss} at step {}; try a smaller --lr", spec.text, step + i + 1).into());
                }
                run.steps.loss.push(f64::from(loss));
                run.steps.param_norm.push(norm);
            }
            step = chunk_end;
            let recent = &run.steps.loss[run.steps.loss.len().saturating_sub(setup.steps_per_epoch)..];
            let samples_per_second = (step * args.batch) as f64 / start.elapsed().as_secs_f64();
            bar.set_position(step as u64);
            bar.set_message(format!(
                "loss {:.4} · test {:.2} % · {:.0} samples/s",
                recent.iter().sum::<f64>() / recent.len() as f64,
                run.evals.test_accuracy.last().copied().unwrap_or_default() * 100.0,
                samples_per_second
            ));
        }
        record_eval(&mut run, step)?;
        // PLUG-IN (checkpoint, --save): write the library's checkpoint (parameters, optimizer
        // state, schedule, step) here, at the end of the epoch.
        if bar.is_hidden() && ((epoch + 1) % 5 == 0 || epoch + 1 == args.epochs) {
            eprintln!(
                "{}: epoch {}/{}: train loss {:.4}, test loss {:.4}, test accuracy {:.2} %",
                spec.text,
                epoch + 1,
                args.epochs,
                epoch_mean(&run, epoch, setup.steps_per_epoch),
                run.evals.test_loss.last().copied().unwrap_or_default(),
                run.evals.test_accuracy.last().copied().unwrap_or_default() * 100.0
            );
        }
    }
    run.seconds = start.elapsed().as_secs_f64();
    bar.finish();
    Ok(run)
}

fn epoch_mean(run: &Run, epoch: usize, steps_per_epoch: usize) -> f64 {
    let losses = &run.steps.loss[epoch * steps_per_epoch..(epoch + 1) * steps_per_epoch];
    losses.iter().sum::<f64>() / losses.len() as f64
}

fn progress_bar(steps: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    let style = ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] {bar:30.cyan/blue} {pos:>5}/{len} steps  {msg}")
        .expect("the template is valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

fn summary(run: &Run, setup: &Setup) -> String {
    let accuracy = run.evals.test_accuracy.last().copied().unwrap_or_default();
    let test_len = setup.data.test.len();
    let steps = run.steps.loss.len();
    format!(
        "test accuracy {:.2} % ({} of {test_len}), test loss {:.4}, train loss (last epoch) {:.4}; {steps} steps in {:.1} s ({:.0} samples/s)",
        accuracy * 100.0,
        (accuracy * test_len as f64).round(),
        run.evals.test_loss.last().copied().unwrap_or_default(),
        epoch_mean(run, run.epochs - 1, setup.steps_per_epoch),
        run.seconds,
        (steps * run.batch) as f64 / run.seconds
    )
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), Box<dyn Error>> {
    let text = serde_json::to_string(value)?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

fn plot_or_skip(font: bool, path: &Path, draw: impl FnOnce() -> Result<(), Box<dyn Error>>) -> Result<(), Box<dyn Error>> {
    if !font {
        return Ok(());
    }
    draw().map_err(|e| format!("plotting {}: {e}", path.display()))?;
    println!("plot: {}", path.display());
    Ok(())
}

/// How closely two runs of the same model agree, per step and per evaluation.
fn agreement(ours: &Run, other: &Run, steps_per_epoch: usize) -> Result<String, Box<dyn Error>> {
    let mut mismatches = Vec::new();
    let same = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    };
    if ours.optimizer != other.optimizer {
        mismatches.push(format!("optimizer {} vs {}", ours.optimizer, other.optimizer));
    }
    if let Value::Object(theirs) = &other.hyperparameters {
        for (key, value) in theirs {
            let mine = ours.hyperparameters.get(key).cloned().unwrap_or(Value::Null);
            let equal = match (&mine, value) {
                (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)),
                _ => same(&mine, value),
            };
            if !equal {
                mismatches.push(format!("{key} {mine} vs {value}"));
            }
        }
    }
    let pairs = [
        ("hidden", format!("{:?}", ours.hidden), format!("{:?}", other.hidden)),
        ("batch", ours.batch.to_string(), other.batch.to_string()),
        ("epochs", ours.epochs.to_string(), other.epochs.to_string()),
        ("warmup steps", ours.warmup_steps.to_string(), other.warmup_steps.to_string()),
        ("warmup start", ours.warmup_start.to_string(), other.warmup_start.to_string()),
        ("seed", ours.seed.to_string(), other.seed.to_string()),
        ("steps", ours.steps.loss.len().to_string(), other.steps.loss.len().to_string()),
    ];
    for (what, a, b) in pairs {
        if a != b {
            mismatches.push(format!("{what} {a} vs {b}"));
        }
    }
    if !other.data.is_empty() && other.data != ours.data {
        mismatches.push(format!("data {:?} vs {:?}", ours.data, other.data));
    }
    if !mismatches.is_empty() {
        return Err(format!("{} trained a different setup: {}", other.trainer, mismatches.join(", ")).into());
    }

    let max_abs = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let rel = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1e-30)).collect() };
    let (a, b) = (&ours.steps.loss, &other.steps.loss);
    let loss_rel = rel(a, b);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let epoch_means = |l: &[f64]| l.chunks(steps_per_epoch).map(mean).collect::<Vec<_>>();
    let epoch_rel = rel(&epoch_means(a), &epoch_means(b));
    let first_epoch = steps_per_epoch.min(loss_rel.len());
    let first_above = |limit: f64| loss_rel.iter().position(|&r| r > limit).map_or("never".into(), |s| format!("step {}", s + 1));
    let norm_rel = rel(&ours.steps.param_norm, &other.steps.param_norm);
    let accuracy = |r: &Run| r.evals.test_accuracy.last().copied().unwrap_or_default() * 100.0;
    let accuracy_diff = max_abs(&ours.evals.test_accuracy, &other.evals.test_accuracy) * 100.0;
    Ok(format!(
        "{} vs {}:\n\
         - learning rate: max |difference| {:.3e}\n\
         - minibatch loss: max relative difference {:.2e} over the first epoch, {:.2e} over the run \
         (mean {:.2e}; first above 1e-4: {}, above 1e-2: {})\n\
         - epoch-mean training loss: max relative difference {:.2e}\n\
         - parameter L2 norm: max relative difference {:.2e}\n\
         - test accuracy: {:.2} % vs {:.2} % at the end, max |difference| over epochs {:.2} points",
        ours.trainer,
        other.trainer,
        max_abs(&ours.steps.lr, &other.steps.lr),
        loss_rel[..first_epoch].iter().copied().fold(0.0, f64::max),
        loss_rel.iter().copied().fold(0.0, f64::max),
        mean(&loss_rel),
        first_above(1e-4),
        first_above(1e-2),
        epoch_rel.iter().copied().fold(0.0, f64::max),
        norm_rel.iter().copied().fold(0.0, f64::max),
        accuracy(ours),
        accuracy(other),
        accuracy_diff,
    ))
}

fn run() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    // Mesa's Vulkan loader wants it; harmless elsewhere.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let specs: Vec<RuleSpec> = match &args.compare {
        Some(list) => split_list(list).iter().map(|s| RuleSpec::parse(s)).collect::<Result<_, _>>()?,
        None => vec![RuleSpec::parse(&args.optimizer)?],
    };
    if specs.is_empty() {
        return Err("--compare needs at least one rule".into());
    }
    if args.compare.is_some() && !args.reference.is_empty() {
        return Err("--reference compares one run; it cannot be combined with --compare".into());
    }
    let hidden: Vec<usize> = split_list(&args.hidden)
        .iter()
        .map(|h| h.parse().ok().filter(|&h: &usize| h > 0).ok_or_else(|| format!("--hidden: {h:?} is not a positive width")))
        .collect::<Result<_, _>>()?;
    if args.epochs == 0 {
        return Err("--epochs must be at least 1".into());
    }
    let references: Vec<Run> = args
        .reference
        .iter()
        .map(|path| -> Result<Run, Box<dyn Error>> {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(serde_json::from_str(&text).map_err(|e| format!("{}: not a run of train_torch.py: {e}", path.display()))?)
        })
        .collect::<Result<_, _>>()?;

    let font = match plot::load_font(args.font.as_deref())? {
        Some(path) => {
            log::info!("plot font: {}", path.display());
            true
        }
        None => {
            eprintln!("warning: no font found for the plots' text, so no plots: install fonts-dejavu-core or pass --font FILE.ttf");
            false
        }
    };
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;

    let data = match &args.mnist {
        Some(dir) => data::mnist(dir)?,
        None => data::digits(Path::new(data::DIGITS_PATH))?,
    };
    let steps_per_epoch = data.train.len() / args.batch.max(1);
    if args.batch == 0 || steps_per_epoch == 0 {
        return Err(format!("--batch must be between 1 and the {} training samples", data.train.len()).into());
    }
    let sizes: Vec<usize> = std::iter::once(data.train.features).chain(hidden).chain([data::CLASSES]).collect();
    let order = data::batch_order(data.train.len(), args.batch, args.epochs, args.seed.wrapping_add(1));

    let backend = match &args.backend {
        Some(name) => name.parse()?,
        None => BackendChoice::from_env()?.unwrap_or(BackendChoice::Auto),
    };
    let gpu = GpuContext::new(backend)?;
    println!("adapter: {}", gpu.adapter());
    println!(
        "data: {}, {} training and {} test samples; model {}; batch {}, {} epochs ({} steps)",
        data.name,
        data.train.len(),
        data.test.len(),
        sizes.iter().map(ToString::to_string).collect::<Vec<_>>().join(" → "),
        args.batch,
        args.epochs,
        steps_per_epoch * args.epochs
    );
    let kernels = Kernels::new(&gpu)?;
    let setup = Setup { gpu, kernels, data, sizes, order, steps_per_epoch, args };
    let args = &setup.args;

    if args.compare.is_none() {
        let spec = &specs[0];
        let bar = progress_bar(setup.total_steps(), &spec.text);
        let run = train(&setup, spec, &bar)?;
        println!("{}: {}", spec.text, summary(&run, &setup));
        let metrics = args.out.join("metrics.json");
        write_json(&metrics, &run)?;
        println!("metrics: {}", metrics.display());
        let title = format!("{} · {} · {}", spec.text, setup.data.name, run.trainer);
        let path = args.out.join("train.png");
        plot_or_skip(font, &path, || plot::training(&path, &run, &title))?;
        if !references.is_empty() {
            for reference in &references {
                println!("{}", agreement(&run, reference, setup.steps_per_epoch)?);
            }
            for (i, a) in references.iter().enumerate() {
                for b in &references[i + 1..] {
                    println!("{}", agreement(a, b, setup.steps_per_epoch)?);
                }
            }
            let path = args.out.join("reference.png");
            let title = format!("{} on {}: wgpu-optim and PyTorch", spec.text, setup.data.name);
            plot_or_skip(font, &path, || plot::reference(&path, &run, &references, &title))?;
        }
        return Ok(());
    }

    let mut runs = Vec::new();
    for spec in &specs {
        let bar = progress_bar(setup.total_steps(), &spec.text);
        match train(&setup, spec, &bar) {
            Ok(run) => {
                println!("{}: {}", spec.text, summary(&run, &setup));
                runs.push(run);
            }
            // One rule diverging (a learning rate too large for it) should not lose the others.
            Err(e) => {
                bar.abandon();
                eprintln!("{}: {e}", spec.text);
            }
        }
    }
    if runs.is_empty() {
        return Err("no run finished".into());
    }
    println!("\n| rule | hyper-parameters | train loss (last epoch) | test loss | test accuracy | seconds |");
    println!("|---|---|---:|---:|---:|---:|");
    for run in &runs {
        println!(
            "| {} | {} | {:.4} | {:.4} | {:.2} % | {:.1} |",
            run.label,
            run.hyperparameters,
            epoch_mean(run, run.epochs - 1, setup.steps_per_epoch),
            run.evals.test_loss.last().copied().unwrap_or_default(),
            run.evals.test_accuracy.last().copied().unwrap_or_default() * 100.0,
            run.seconds
        );
    }
    let metrics = args.out.join("compare.json");
    write_json(&metrics, &runs)?;
    println!("metrics: {}", metrics.display());
    let path = args.out.join("compare.png");
    let title = format!("Update rules on {} ({} epochs, warmup + cosine)", setup.data.name, args.epochs);
    plot_or_skip(font, &path, || plot::comparison(&path, &runs, &title))
}

fn main() -> ExitCode {
    env_logger::init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
