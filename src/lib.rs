//! # wgpu-optim
//!
//! PyTorch-compatible neural-network optimizers as WGSL compute shaders, driven through wgpu:
//! one code base for Vulkan, Metal, DX12, GL and WebGPU.
//!
//! - [`GpuContext`] opens an adapter (or adopts a host application's device and queue).
//! - [`Parameters`] and [`ParamGroup`] describe the model's tensors and per-group
//!   hyper-parameters, as torch's `param_groups` do.
//! - [`Optimizer`] packs them into flat GPU arenas and records a step as one dispatch per
//!   arena window, whatever the number of tensors (plus one that counts the step on the GPU).
//! - [`rules`] holds the update rules (`SGD`, `Adagrad`, `RMSprop`, `Adadelta`, `Adam`,
//!   `AdamW`, `NAdam`, `Adamax`, `RAdam`, `Rprop`, `ASGD`, `Adafactor`, `Muon`, timm's `Lamb`,
//!   lion-pytorch's `Lion` and the Adan authors' `Adan`), each with the reference's names, defaults and validation, a WGSL kernel and a
//!   scalar CPU reference; [`CpuOptimizer`] runs the references.
//! - [`Lbfgs`] is torch's `LBFGS` (history on the GPU, torch's strong-Wolfe line search) with its
//!   CPU twin [`CpuLbfgs`]; [`newton`] is Newton's method with a dense Hessian, plain or damped;
//!   [`minimize`] runs any of them on the built-in [`problems`] (the `wgpu-optim minimize` command).
//! - [`storage`] gives each buffer its type ([`OptimizerOptions::precision`]): f16/bf16
//!   parameters with or without f32 master weights, f16/bf16 gradients, bf16 state rounded to
//!   nearest or stochastically, 8-bit blockwise state as bitsandbytes keeps it;
//!   [`Optimizer::memory`] reports the bytes.
//! - [`replay`] applies an optimizer to recorded gradients (the `wgpu-optim replay` command).
//! - [`schedule`] holds torch's learning-rate schedulers (`StepLR`, `CosineAnnealingLR`,
//!   `OneCycleLR`, `SequentialLR`, `ReduceLROnPlateau`, ...) with their exact step semantics.
//!
//! ```no_run
//! use wgpu_optim::{rules::Adam, BackendChoice, GpuContext, Optimizer, ParamGroup, Parameters};
//! let gpu = GpuContext::new(BackendChoice::Auto)?;
//! let mut params = Parameters::new();
//! let w = params.add("w", &[3], vec![1.0, 2.0, 3.0])?;
//! let mut opt = Optimizer::new(&gpu, params, vec![ParamGroup::new(Adam { lr: 0.1, ..Adam::default() }, [w])])?;
//! for _ in 0..100 {
//!     let p = opt.read_param(w)?;                       // or compute the gradient on the GPU
//!     opt.write_grad(w, &p.iter().map(|x| 2.0 * x).collect::<Vec<_>>())?;
//!     opt.step_and_submit()?;
//! }
//! # Ok::<(), wgpu_optim::Error>(())
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
pub mod context;
pub mod cpu;
pub mod error;
pub mod gradients;
mod layout;
pub mod lbfgs;
pub mod minimize;
pub mod newton;
pub mod newton_cg;
pub mod optimizer;
pub mod params;
pub mod problems;
pub mod probe;
pub mod replay;
pub mod rules;
pub mod schedule;
pub mod storage;
mod quantization_maps;
pub mod tensor_file;
pub mod trajectories;

// These serve the command line and the test suite: not part of the library's API, and not
// covered by semver.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod compare;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod parity;
#[cfg(feature = "portability")]
#[doc(hidden)]
pub mod portability;

/// The wgpu this crate is built against, so a host application uses the same version.
pub use wgpu;

pub use context::{AdapterReport, BackendChoice, GpuContext, BACKEND_ENV};
pub use cpu::CpuOptimizer;
pub use error::{Error, Result};
pub use gradients::{ClipGradNorm, GradientOptions, LossScale, StepCounters};
pub use lbfgs::{CpuLbfgs, Lbfgs, LbfgsOptions, LbfgsStep, LineSearch};
pub use optimizer::{read_views, ArenaInfo, BufferMemory, MemoryReport, Optimizer, OptimizerOptions, TensorView, SCALAR_RING_STEPS, STEP_TERMS_RING};
pub use params::{ParamGroup, Parameters, TensorId, TensorSpec};
pub use rules::UpdateRule;
pub use schedule::{LearningRates, Scheduler};
pub use storage::{Dtype, Precision, Rounding};
