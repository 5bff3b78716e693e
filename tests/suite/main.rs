//! The integration tests: one binary (wgpu is linked once), one module per concern.
//!
//! GPU tests run on every adapter the machine offers and fail when there is none.
//! `WGPU_OPTIM_REQUIRE_BACKENDS=vulkan,gl` (set by `.ci/run`) also fails them when one of the
//! named backends is missing.

mod common;

mod checkpoints;
#[cfg(feature = "cli")]
mod cli;
mod conditioning;
mod dispatch;
mod frameworks;
mod fuzz;
#[cfg(feature = "cli")]
mod golden;
mod large;
mod lbfgs;
mod newton;
mod precision;
mod presence;
mod reliability;
mod rules;
mod schedulefree;
mod schedules;
mod shaders;
mod sparse;
mod structured;
mod submission;
mod training;
mod trajectories;
mod validation;
