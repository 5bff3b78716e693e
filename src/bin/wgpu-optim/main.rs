//! The `wgpu-optim` command line.

mod plot;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wgpu_optim::compare::compare;
use wgpu_optim::replay::{read_safetensors, write_safetensors, ReplayBackend, ReplayCase, ReplayOptions};
use wgpu_optim::{BackendChoice, GpuContext};

#[derive(Parser)]
#[command(name = "wgpu-optim", version, about = "PyTorch-compatible optimizers on any GPU, through wgpu")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply an optimizer to recorded gradients and write the final parameters and state.
    Replay {
        /// run.json: {"optimizer": ..., "hyperparameters": {...}, "param_groups": [...]}
        #[arg(long)]
        config: PathBuf,
        /// Initial parameters (float32 safetensors).
        #[arg(long)]
        params: PathBuf,
        /// Gradients: for each parameter w, a tensor w of shape [steps, *shape(w)].
        #[arg(long)]
        grads: PathBuf,
        /// Where to write the final parameters and optimizer state.
        #[arg(long)]
        out: PathBuf,
        /// auto, vulkan, gl, metal, dx12 or cpu (the CPU reference). Default: $WGPU_OPTIM_BACKEND or auto.
        #[arg(long)]
        backend: Option<String>,
        /// Also compare the output with these tensors (e.g. what torch produced) and fail if a
        /// tensor's error relative to its largest magnitude (max|a-e| / max|e|) exceeds --tolerance.
        #[arg(long)]
        expected: Option<PathBuf>,
        /// Relative tolerance for --expected.
        #[arg(long, default_value_t = 1e-6)]
        tolerance: f64,
        /// Save a checkpoint every K steps (with --checkpoint-dir).
        #[arg(long, value_name = "K", requires = "checkpoint_dir")]
        save_every: Option<usize>,
        /// Where --save-every writes step-NNNNNN.safetensors.
        #[arg(long, value_name = "D", requires = "save_every")]
        checkpoint_dir: Option<PathBuf>,
        /// Continue from a checkpoint, replaying the steps after it.
        #[arg(long, value_name = "FILE")]
        resume: Option<PathBuf>,
    },
    /// Replay every golden case (recorded from torch.optim) and report the error per rule and backend.
    Parity {
        /// cpu, auto, vulkan, gl, metal, dx12, or all (the CPU reference and every adapter).
        #[arg(long, default_value = "all")]
        backend: String,
        /// Directory of golden cases.
        #[arg(long, default_value = "tests/golden/cases")]
        cases: PathBuf,
        /// Also write every case's result as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write the table as Markdown.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// List the GPU adapters this machine offers.
    Adapters {
        /// Also measure each usable adapter's f32 arithmetic: whether it fuses a*b+c into an
        /// FMA, and how far its division and square root are from correctly rounded.
        #[arg(long)]
        probe: bool,
    },
    /// Run an optimizer (LBFGS or any first-order rule) for K `step(closure)` calls on a built-in
    /// problem in N dimensions; write the final point and each step's loss.
    Minimize(MinimizeArgs),
    /// Optimizer paths on a 2-D test function (the browser demo's runs, natively): writes the
    /// positions at every sampled step as JSON, and optionally a PNG plot.
    Trajectories(TrajectoriesArgs),
}

#[derive(clap::Args)]
struct MinimizeArgs {
    /// rosenbrock (scipy.optimize.rosen) or quadratic (½·Σ c_i·x_i², c_i = 1000^(i/(N−1))).
    #[arg(long)]
    problem: String,
    /// The dimension N.
    #[arg(long)]
    dim: usize,
    /// safetensors holding x (float32, [N]).
    #[arg(long)]
    start: PathBuf,
    /// LBFGS or a torch.optim class name (SGD, Adam, AdamW, ...).
    #[arg(long)]
    optimizer: String,
    /// torch keyword arguments as JSON, e.g. '{"history_size": 10, "line_search_fn": "strong_wolfe"}'.
    #[arg(long, default_value = "{}")]
    hyperparameters: String,
    /// Calls of step(closure).
    #[arg(long)]
    steps: usize,
    /// Where to write x (float32, [N]) and loss (float32, [K]).
    #[arg(long)]
    out: PathBuf,
    /// auto, vulkan, gl, metal, dx12 or cpu (the CPU twins). Default: $WGPU_OPTIM_BACKEND or auto.
    #[arg(long)]
    backend: Option<String>,
}

#[derive(clap::Args)]
struct TrajectoriesArgs {
    /// A spec as JSON (what the web page's "export" gives): {"function", "steps",
    /// "sample_every", "starts": [[x, y]], "runs": [{"optimizer", "hyperparameters", "lr"}]}.
    /// Replaces --function, --optimizer, --hyperparameters, --start, --steps, --sample-every.
    #[arg(long)]
    config: Option<PathBuf>,
    /// rosenbrock, beale, himmelblau, rastrigin, saddle, ill_conditioned or booth.
    #[arg(long, default_value = "rosenbrock")]
    function: String,
    /// A torch.optim class name (SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, NAdam, Adamax, RAdam, Rprop, ...,
    /// LBFGS) or Newton / DampedNewton (with the function's analytic Hessian); repeat to race several.
    #[arg(long = "optimizer", default_value = "Adam")]
    optimizers: Vec<String>,
    /// torch keyword arguments as JSON, e.g. '{"lr": 0.05}'; the n-th applies to the n-th --optimizer.
    #[arg(long = "hyperparameters")]
    hyperparameters: Vec<String>,
    /// A start point x,y; repeat for several (default: the function's own).
    #[arg(long = "start", allow_hyphen_values = true)]
    starts: Vec<String>,
    #[arg(long, default_value_t = 500)]
    steps: u32,
    /// Keep every k-th position (and always the last).
    #[arg(long, default_value_t = 1)]
    sample_every: u32,
    /// auto, vulkan, gl, metal, dx12 or cpu (the CPU reference). Default: $WGPU_OPTIM_BACKEND or auto.
    #[arg(long)]
    backend: Option<String>,
    /// Instead of paths: a basin map of the first optimizer from an N x N grid of starts
    /// over the function's domain (end points, losses, basins).
    #[arg(long)]
    basin: Option<u32>,
    /// Where to write the JSON report.
    #[arg(long)]
    out: PathBuf,
    /// Also draw the paths over a contour map into this PNG file.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Width and height of the PNG, in pixels.
    #[arg(long, default_value_t = 640)]
    png_size: u32,
}

fn main() -> ExitCode {
    // libwayland, which the drivers load to look for a display, prints "XDG_RUNTIME_DIR is
    // invalid or not set" where it is unset (a fresh server or container). There is no display
    // to find either way; a set directory keeps the message away.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, wgpu_optim::Error> {
    match cli.command {
        Command::Parity { backend, cases, json, markdown } => parity(&backend, &cases, json, markdown),
        Command::Trajectories(args) => trajectories(args),
        Command::Minimize(args) => minimize(args),
        Command::Adapters { probe } => {
            let adapters = pollster::block_on(GpuContext::adapters(BackendChoice::Auto));
            if adapters.is_empty() {
                // Produces the error that says what to install.
                GpuContext::new(BackendChoice::Auto)?;
            }
            for adapter in adapters {
                let report = wgpu_optim::AdapterReport::from(&adapter.get_info());
                if let Some(error) = GpuContext::unusable(&adapter) {
                    println!("{report}: not usable: {error}");
                    continue;
                }
                if !probe {
                    println!("{report}");
                    continue;
                }
                match pollster::block_on(GpuContext::from_adapter(adapter)) {
                    Ok(gpu) => {
                        let found = pollster::block_on(wgpu_optim::probe::probe_float_semantics(&gpu))?;
                        println!("{report}\n  f32 arithmetic: {found}");
                    }
                    Err(error) => println!("{report}: not usable: {error}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { config, params, grads, out, backend, expected, tolerance, save_every, checkpoint_dir, resume } => {
            let backend = match backend {
                Some(name) => name.parse()?,
                None => ReplayBackend::Gpu(BackendChoice::from_env()?.unwrap_or(BackendChoice::Auto)),
            };
            let case = ReplayCase::load(&config, &params, &grads)?;
            let expected = expected.map(|path| read_safetensors(&path)).transpose()?;
            if save_every == Some(0) {
                return Err(wgpu_optim::Error::Config("--save-every must be at least 1".into()));
            }
            if let Some(dir) = &checkpoint_dir {
                std::fs::create_dir_all(dir).map_err(|source| wgpu_optim::Error::Io { path: dir.display().to_string(), source })?;
            }
            let options = ReplayOptions { save_every, checkpoint_dir, resume };
            let output = match backend {
                ReplayBackend::Cpu => {
                    println!("adapter: CPU reference");
                    case.run_cpu_with(&options)?
                }
                ReplayBackend::Gpu(choice) => {
                    let gpu = GpuContext::new(choice)?;
                    println!("adapter: {}", gpu.adapter());
                    case.run_gpu_with(&gpu, &options)?
                }
            };
            write_safetensors(&out, &output)?;
            println!(
                "{} {} step(s) over {} tensor(s); wrote {}",
                case.config.optimizer,
                case.steps,
                case.params.len(),
                out.display()
            );
            let Some(expected) = expected else { return Ok(ExitCode::SUCCESS) };
            let differences = compare(&output, &expected)?;
            let worst = differences.iter().map(|d| d.max_rel).fold(0.0, f64::max);
            for d in &differences {
                println!(
                    "  {:<32} rel {:.3e}  ({:.1} ulps of max|e|)  abs {:.3e}  element ulps {}",
                    d.name, d.max_rel, d.scaled_ulps, d.max_abs, d.max_ulps
                );
            }
            let pass = worst <= tolerance;
            println!("{}: max relative difference {worst:.3e} (tolerance {tolerance:.1e})", if pass { "PASS" } else { "FAIL" });
            Ok(if pass { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

fn minimize(args: MinimizeArgs) -> Result<ExitCode, wgpu_optim::Error> {
    use wgpu_optim::minimize::MinimizeSpec;
    use wgpu_optim::problems::Problem;
    use wgpu_optim::tensor_file::NamedTensor;
    // Everything is checked before anything runs; nothing is written on an error.
    let problem = Problem::new(args.problem.parse()?, args.dim)?;
    let hyperparameters: serde_json::Value = serde_json::from_str(&args.hyperparameters)
        .map_err(|e| wgpu_optim::Error::Config(format!("--hyperparameters is not JSON: {e}")))?;
    let start = read_safetensors(&args.start)?;
    let x = match start.iter().find(|t| t.name == "x") {
        Some(x) if x.shape == [args.dim] => x.data.clone(),
        Some(x) => {
            return Err(wgpu_optim::Error::Config(format!(
                "{}: x has shape {:?}, but --dim is {}",
                args.start.display(),
                x.shape,
                args.dim
            )))
        }
        None => return Err(wgpu_optim::Error::Config(format!("{} holds no tensor named x", args.start.display()))),
    };
    let spec = MinimizeSpec { problem, start: x, optimizer: args.optimizer, hyperparameters, steps: args.steps };
    spec.validate()?;
    let backend = match args.backend {
        Some(name) => name.parse()?,
        None => ReplayBackend::Gpu(BackendChoice::from_env()?.unwrap_or(BackendChoice::Auto)),
    };
    let result = match backend {
        ReplayBackend::Cpu => {
            println!("adapter: CPU twins");
            spec.run_cpu()?
        }
        ReplayBackend::Gpu(choice) => {
            let gpu = GpuContext::new(choice)?;
            println!("adapter: {}", gpu.adapter());
            pollster::block_on(spec.run_gpu(&gpu))?
        }
    };
    let steps = result.loss.len();
    let tensors = [
        NamedTensor { name: "x".into(), shape: vec![result.x.len()], data: result.x.clone(), dtype: wgpu_optim::Dtype::F32 },
        NamedTensor { name: "loss".into(), shape: vec![steps], data: result.loss.clone(), dtype: wgpu_optim::Dtype::F32 },
    ];
    write_safetensors(&args.out, &tensors)?;
    let last = result.loss.last().map_or("-".to_string(), |l| l.to_string());
    print!("{} {} step(s) on {} in {} dimensions: last step's loss {last}", spec.optimizer, steps, spec.problem.kind(), spec.problem.dim());
    if let (Some(evals), Some(iterations)) = (result.func_evals.last(), result.n_iter.last()) {
        let reads: usize = result.lbfgs_steps.iter().map(|s| s.reads).sum();
        print!(" ({evals} evaluations, {iterations} iterations, {reads} reads)");
    }
    println!("; wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn parity(
    backend: &str,
    cases: &std::path::Path,
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
) -> Result<ExitCode, wgpu_optim::Error> {
    use wgpu_optim::parity::{case_dirs, check_case, summarize};
    let dirs = case_dirs(cases)?;
    let mut backends: Vec<Option<GpuContext>> = Vec::new(); // None: the CPU reference
    if backend == "all" {
        backends.push(None);
        for adapter in pollster::block_on(GpuContext::adapters(BackendChoice::Auto)) {
            let report = wgpu_optim::AdapterReport::from(&adapter.get_info());
            match pollster::block_on(GpuContext::from_adapter(adapter)) {
                Ok(gpu) => backends.push(Some(gpu)),
                Err(error) => println!("skipped {report}: {error}"),
            }
        }
    } else {
        match backend.parse()? {
            ReplayBackend::Cpu => backends.push(None),
            ReplayBackend::Gpu(choice) => backends.push(Some(GpuContext::new(choice)?)),
        }
    }
    let mut adapters = Vec::new();
    let mut results = Vec::new();
    for gpu in &backends {
        let name = match gpu {
            None => "cpu".to_string(),
            Some(gpu) => format!("{:?}", gpu.adapter().backend).to_lowercase(),
        };
        adapters.push(match gpu {
            None => "cpu: the CPU reference (scalar Rust)".to_string(),
            Some(gpu) => format!("{name}: {}", gpu.adapter()),
        });
        for dir in &dirs {
            let result = check_case(dir, &name, &|case| match gpu {
                None => case.run_cpu(),
                Some(gpu) => case.run_gpu(gpu),
            })?;
            if !result.pass {
                eprintln!(
                    "FAIL {} on {}: {} is {:.1} ulps off (tolerance {})",
                    result.case, name, result.worst_tensor, result.max_ulps, result.tolerance_ulps
                );
            }
            results.push(result);
        }
    }
    let rows = summarize(&results);
    let table = wgpu_optim::parity::markdown(&adapters, &rows);
    println!("{table}");
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|source| wgpu_optim::Error::Io { path: path.display().to_string(), source })
    };
    if let Some(path) = json {
        let report = serde_json::json!({ "adapters": adapters, "summary": rows, "cases": results });
        write(&path, serde_json::to_string_pretty(&report).expect("plain data"))?;
    }
    if let Some(path) = markdown {
        write(&path, table)?;
    }
    let failed = results.iter().filter(|r| !r.pass).count();
    println!("{} case runs, {failed} failed", results.len());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn trajectories(args: TrajectoriesArgs) -> Result<ExitCode, wgpu_optim::Error> {
    use wgpu_optim::trajectories::{blocking, BasinSpec, Device, RunSpec, TrajectorySpec};
    use wgpu_optim::Error;
    let spec = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
            TrajectorySpec::from_json(&text)?
        }
        None => {
            if args.hyperparameters.len() > args.optimizers.len() {
                return Err(Error::Config(format!(
                    "{} --hyperparameters for {} --optimizer",
                    args.hyperparameters.len(),
                    args.optimizers.len()
                )));
            }
            let runs = args
                .optimizers
                .iter()
                .enumerate()
                .map(|(i, optimizer)| {
                    let hyperparameters = match args.hyperparameters.get(i) {
                        None => serde_json::Map::new(),
                        Some(text) => match serde_json::from_str(text) {
                            Ok(serde_json::Value::Object(map)) => map,
                            _ => return Err(Error::Config(format!("--hyperparameters {text:?} is not a JSON object"))),
                        },
                    };
                    Ok(RunSpec { optimizer: optimizer.clone(), hyperparameters, schedule: None, lr: None, state_dtype: Default::default() })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let starts = args
                .starts
                .iter()
                .map(|text| {
                    let xy: Vec<f32> = text.split(',').map(|v| v.trim().parse::<f32>()).collect::<Result<_, _>>().map_err(|_| {
                        Error::Config(format!("--start {text:?}: expected two numbers x,y"))
                    })?;
                    match xy[..] {
                        [x, y] => Ok([x, y]),
                        _ => Err(Error::Config(format!("--start {text:?}: expected two numbers x,y"))),
                    }
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let spec = TrajectorySpec {
                function: args.function.parse()?,
                steps: args.steps,
                sample_every: args.sample_every,
                starts,
                runs,
            };
            spec.check()?;
            spec
        }
    };
    let device = match args.backend.as_deref().map(str::parse).transpose()? {
        Some(ReplayBackend::Cpu) => Device::Cpu,
        Some(ReplayBackend::Gpu(choice)) => Device::Gpu(GpuContext::new(choice)?),
        None => Device::Gpu(GpuContext::from_env()?),
    };
    println!("adapter: {}", device.adapter_name());
    let write = |path: &PathBuf, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(|source| Error::Io { path: path.display().to_string(), source })
    };
    if let Some(resolution) = args.basin {
        let run = &spec.runs[0];
        let basin = BasinSpec {
            function: spec.function,
            optimizer: run.optimizer.clone(),
            hyperparameters: run.hyperparameters.clone(),
            schedule: run.schedule.clone(),
            lr: run.lr.clone(),
            steps: spec.steps,
            resolution,
            domain: None,
        };
        let report = blocking::run_basin(&device, &basin)?;
        let converged = report.basin.iter().filter(|&&b| b >= 0).count();
        let diverged = report.basin.iter().filter(|&&b| b == -2).count();
        println!(
            "basin map: {} starts x {} steps of {} on {}: {:.1} ms; {converged} ended at a named minimum, {diverged} diverged",
            report.end.len() / 2,
            report.steps,
            report.optimizer,
            report.function,
            report.elapsed_ms
        );
        write(&args.out, serde_json::to_string(&report).expect("plain data").as_bytes())?;
        println!("wrote {}", args.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let report = blocking::run_spec(&device, &spec)?;
    for run in &report.runs {
        for (k, (path, losses)) in run.paths.iter().zip(&run.losses).enumerate() {
            let (end, loss) = (path[path.len() - 1], losses[losses.len() - 1]);
            // What the second-order methods did beyond their paths.
            let mut extra = String::new();
            if let Some(evaluations) = &run.evaluations {
                extra += &format!(", {} closure evaluations", evaluations[k][evaluations[k].len() - 1]);
            }
            if let Some(stats) = run.newton.as_ref().map(|n| &n[k]) {
                if let Some(step) = stats.singular_at {
                    extra += &format!(", Hessian singular at step {step} (the point stayed)");
                }
                if let Some(damping) = stats.damping {
                    extra += &format!(", {} steps rejected, damping {damping:e}", stats.rejected);
                }
            }
            println!(
                "{:<8} {} steps: ({}, {}) -> ({}, {}), f = {loss:.6e}  [{:.1} ms, {} dispatches{extra}]",
                run.optimizer, report.steps, path[0][0], path[0][1], end[0], end[1], run.elapsed_ms, run.dispatches
            );
        }
    }
    write(&args.out, serde_json::to_string(&report).expect("plain data").as_bytes())?;
    println!("wrote {}", args.out.display());
    if let Some(png) = &args.png {
        let image = plot::png(&report, args.png_size)
            .map_err(|e| Error::Io { path: png.display().to_string(), source: std::io::Error::other(e.to_string()) })?;
        write(png, &image)?;
        println!("wrote {}", png.display());
    }
    Ok(ExitCode::SUCCESS)
}
