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
