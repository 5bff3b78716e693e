//! The `wgpu-optim` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wgpu_optim::compare::compare;
use wgpu_optim::replay::{read_safetensors, write_safetensors, ReplayBackend, ReplayCase};
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
    Adapters,
}

fn main() -> ExitCode {
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
        Command::Adapters => {
            let adapters = pollster::block_on(GpuContext::adapters(BackendChoice::Auto));
            if adapters.is_empty() {
                // Produces the error that says what to install.
                GpuContext::new(BackendChoice::Auto)?;
            }
            for adapter in adapters {
                println!("{}", wgpu_optim::AdapterReport::from(&adapter.get_info()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { config, params, grads, out, backend, expected, tolerance } => {
            let backend = match backend {
                Some(name) => name.parse()?,
                None => ReplayBackend::Gpu(BackendChoice::from_env()?.unwrap_or(BackendChoice::Auto)),
            };
            let case = ReplayCase::load(&config, &params, &grads)?;
            let expected = expected.map(|path| read_safetensors(&path)).transpose()?;
            let output = match backend {
                ReplayBackend::Cpu => {
                    println!("adapter: CPU reference");
                    case.run_cpu()?
                }
                ReplayBackend::Gpu(choice) => {
                    let gpu = GpuContext::new(choice)?;
                    println!("adapter: {}", gpu.adapter());
                    case.run_gpu(&gpu)?
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
            backends.push(Some(pollster::block_on(GpuContext::from_adapter(adapter))?));
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
