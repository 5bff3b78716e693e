//! Optimizer trajectories on 2-D test functions: what the browser demo (`web/`) and the
//! `wgpu-optim trajectories` command both run, so that their paths can be compared number for
//! number.
//!
//! N start points of one optimizer are one parameter tensor of 2N elements (`xy`, pairs
//! `(x, y)`). Every rule is element-wise, so the N runs are independent and a step of all of
//! them is one gradient dispatch (`shaders/functions.wgsl`, writing into the optimizer's
//! gradient view) followed by the optimizer's own dispatch, both in one compute pass. Up to
//! [`MAX_STEPS_PER_SUBMISSION`] steps are recorded into one submission (each keeps its scalars
//! in its own slot of the optimizer's ring, [`OptimizerOptions::steps_in_flight`]); positions
//! are copied on the GPU into a history buffer at the sampled steps and read back once.
//!
//! A learning-rate schedule reaches a run as the learning rate of every step: before recording
//! step `t` the runner calls `Optimizer::set_lr(0, lr[t-1])` (the step's scalars are captured
//! when it is recorded, so this works inside one submission). [`learning_rates`] turns a run's
//! `schedule` (a [`crate::schedule`] configuration, torch's `lr_scheduler` semantics) into that
//! list; a run may also give the list itself ([`RunSpec::lr`]).
//!
//! [`CpuRunner`] does the same with the CPU reference ([`CpuOptimizer`]) and
//! [`TestFunction::gradient_f32`], the scalar mirror of the WGSL: the browser's fallback when it
//! has no WebGPU.
//!
//! Beyond the update rules, a run may use more than the gradient ([`Method`]): Newton's method,
//! plain (`"Newton"`) or damped (`"DampedNewton"`, Levenberg–Marquardt), with the functions'
//! analytic Hessians in WGSL beside their gradients ([`newton`]: one dispatch per step, every
//! start point independent); and L-BFGS (`"LBFGS"`, torch.optim.LBFGS through the library's
//! [`crate::Lbfgs`], one per start point: [`lbfgs`]).

pub mod lbfgs;
pub mod newton;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::context::{GpuContext, PipelineKey};
use crate::cpu::CpuOptimizer;
use crate::error::{Error, Result};
use crate::lbfgs::LbfgsOptions;
use crate::optimizer::{read_views, MemoryReport, Optimizer, OptimizerOptions, TensorView};
use crate::storage::{Dtype, Precision, Rounding};
use crate::params::{ParamGroup, Parameters, TensorId};
use crate::rules::{self, CycledMomentum, UpdateRule};
use crate::schedule::{self, LearningRates};
pub use newton::{DampedNewtonOptions, NewtonMethod, NewtonOptions, NewtonStats};

/// The gradient kernel of every test function; `override function_id` picks the function.
pub const FUNCTIONS_WGSL: &str = include_str!("../shaders/functions.wgsl");

/// Invocations per workgroup of the gradient kernel (`GRAD_WORKGROUP_SIZE` in the WGSL).
const GRAD_WORKGROUP_SIZE: u32 = 256;

/// Most steps recorded into one submission (the optimizer's scalar ring has this many slots).
pub const MAX_STEPS_PER_SUBMISSION: u32 = 1000;
/// Most steps of one run.
pub const MAX_STEPS: u32 = 100_000;
/// Most start points of one run (a 1024 × 1024 basin map).
pub const MAX_STARTS: usize = 1 << 20;
/// Largest position history kept on the GPU and read back, in bytes.
pub const MAX_HISTORY_BYTES: u64 = 256 << 20;

/// A 2-D test function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestFunction {
    /// `(1 − x)² + 100 (y − x²)²`: a curved valley; minimum 0 at (1, 1).
    Rosenbrock,
    /// `(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²`; minimum 0 at (3, 0.5).
    Beale,
    /// `(x² + y − 11)² + (x + y² − 7)²`: four minima of value 0.
    Himmelblau,
    /// `20 + x² − 10 cos 2πx + y² − 10 cos 2πy`: local minima near every integer point;
    /// global minimum 0 at (0, 0).
    Rastrigin,
    /// `x² − y²`: a saddle at (0, 0), unbounded below.
    Saddle,
    /// `(x² + 100 y²) / 2`: a quadratic of condition number 100; minimum 0 at (0, 0).
    IllConditioned,
    /// `(x + 2y − 7)² + (2x + y − 5)²`; minimum 0 at (1, 3).
    Booth,
}

/// A rectangle of the plane: `x` and `y` ranges.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Domain {
    /// `[min, max]` of x.
    pub x: [f64; 2],
    /// `[min, max]` of y.
    pub y: [f64; 2],
}

impl Domain {
    /// `resolution × resolution` cell centres, row by row from the bottom (`y` ascending).
    pub fn grid(&self, resolution: usize) -> Vec<[f32; 2]> {
        let r = resolution as f64;
        let mut points = Vec::with_capacity(resolution * resolution);
        for j in 0..resolution {
            let y = self.y[0] + (self.y[1] - self.y[0]) * (j as f64 + 0.5) / r;
            for i in 0..resolution {
                let x = self.x[0] + (self.x[1] - self.x[0]) * (i as f64 + 0.5) / r;
                points.push([x as f32, y as f32]);
            }
        }
        points
    }

    fn check(&self) -> Result<()> {
        let ok = |[a, b]: [f64; 2]| a.is_finite() && b.is_finite() && a < b;
        if ok(self.x) && ok(self.y) {
            Ok(())
        } else {
            Err(Error::Config(format!("invalid domain {self:?}: each range must be finite and increasing")))
        }
    }
}

impl TestFunction {
    /// Every function, in the order of the kernel's `function_id`.
    pub const ALL: [TestFunction; 7] = [
        TestFunction::Rosenbrock,
        TestFunction::Beale,
        TestFunction::Himmelblau,
        TestFunction::Rastrigin,
        TestFunction::Saddle,
        TestFunction::IllConditioned,
        TestFunction::Booth,
    ];

    /// The name used in specs, URLs and on the command line, e.g. `"ill_conditioned"`.
    pub fn name(self) -> &'static str {
        match self {
            TestFunction::Rosenbrock => "rosenbrock",
            TestFunction::Beale => "beale",
            TestFunction::Himmelblau => "himmelblau",
            TestFunction::Rastrigin => "rastrigin",
            TestFunction::Saddle => "saddle",
            TestFunction::IllConditioned => "ill_conditioned",
            TestFunction::Booth => "booth",
        }
    }

    /// A human title, e.g. `"Ill-conditioned quadratic"`.
    pub fn title(self) -> &'static str {
        match self {
            TestFunction::Rosenbrock => "Rosenbrock",
            TestFunction::Beale => "Beale",
            TestFunction::Himmelblau => "Himmelblau",
            TestFunction::Rastrigin => "Rastrigin",
            TestFunction::Saddle => "Saddle",
            TestFunction::IllConditioned => "Ill-conditioned quadratic",
            TestFunction::Booth => "Booth",
        }
    }

    /// The formula, as text.
    pub fn formula(self) -> &'static str {
        match self {
            TestFunction::Rosenbrock => "(1 − x)² + 100 (y − x²)²",
            TestFunction::Beale => "(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²",
            TestFunction::Himmelblau => "(x² + y − 11)² + (x + y² − 7)²",
            TestFunction::Rastrigin => "20 + x² − 10 cos 2πx + y² − 10 cos 2πy",
            TestFunction::Saddle => "x² − y²",
            TestFunction::IllConditioned => "(x² + 100 y²) / 2",
            TestFunction::Booth => "(x + 2y − 7)² + (2x + y − 5)²",
        }
    }

    fn id(self) -> u32 {
        Self::ALL.iter().position(|&f| f == self).expect("every function is in ALL") as u32
    }

    /// f(x, y), in f64 (for losses and contour maps).
    pub fn value(self, x: f64, y: f64) -> f64 {
        match self {
            TestFunction::Rosenbrock => (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2),
            TestFunction::Beale => {
                (1.5 - x + x * y).powi(2) + (2.25 - x + x * y * y).powi(2) + (2.625 - x + x * y * y * y).powi(2)
            }
            TestFunction::Himmelblau => (x * x + y - 11.0).powi(2) + (x + y * y - 7.0).powi(2),
            TestFunction::Rastrigin => {
                let tau = std::f64::consts::TAU;
                20.0 + x * x - 10.0 * (tau * x).cos() + y * y - 10.0 * (tau * y).cos()
            }
            TestFunction::Saddle => x * x - y * y,
            TestFunction::IllConditioned => 0.5 * (x * x + 100.0 * y * y),
            TestFunction::Booth => (x + 2.0 * y - 7.0).powi(2) + (2.0 * x + y - 5.0).powi(2),
        }
    }

    /// The gradient in f32, following `shaders/functions.wgsl` operation by operation (the
    /// CPU reference's gradient).
    pub fn gradient_f32(self, x: f32, y: f32) -> [f32; 2] {
        const TWO_PI: f32 = std::f32::consts::TAU;
        match self {
            TestFunction::Rosenbrock => {
                let r = y - x * x;
                [-2.0 * (1.0 - x) - 400.0 * x * r, 200.0 * r]
            }
            TestFunction::Beale => {
                let y2 = y * y;
                let y3 = y2 * y;
                let a = 1.5 - x + x * y;
                let b = 2.25 - x + x * y2;
                let c = 2.625 - x + x * y3;
                let dx = 2.0 * a * (y - 1.0) + 2.0 * b * (y2 - 1.0) + 2.0 * c * (y3 - 1.0);
                let dy = 2.0 * a * x + 4.0 * b * x * y + 6.0 * c * x * y2;
                [dx, dy]
            }
            TestFunction::Himmelblau => {
                let a = x * x + y - 11.0;
                let b = x + y * y - 7.0;
                [4.0 * x * a + 2.0 * b, 2.0 * a + 4.0 * y * b]
            }
            TestFunction::Rastrigin => [
                2.0 * x + 10.0 * TWO_PI * (TWO_PI * x).sin(),
                2.0 * y + 10.0 * TWO_PI * (TWO_PI * y).sin(),
            ],
            TestFunction::Saddle => [2.0 * x, -2.0 * y],
            TestFunction::IllConditioned => [x, 100.0 * y],
            TestFunction::Booth => {
                let a = x + 2.0 * y - 7.0;
                let b = 2.0 * x + y - 5.0;
                [2.0 * a + 4.0 * b, 4.0 * a + 2.0 * b]
            }
        }
    }

    /// f(x, y) in f32, following `value_at` in `shaders/functions.wgsl` operation by operation
    /// (the loss of L-BFGS's closure and damped Newton's acceptance test on the CPU).
    pub fn value_f32(self, x: f32, y: f32) -> f32 {
        const TWO_PI: f32 = std::f32::consts::TAU;
        match self {
            TestFunction::Rosenbrock => {
                let a = 1.0 - x;
                let r = y - x * x;
                (100.0 * r) * r + a * a
            }
            TestFunction::Beale => {
                let y2 = y * y;
                let a = 1.5 - x + x * y;
                let b = 2.25 - x + x * y2;
                let c = 2.625 - x + x * (y2 * y);
                a * a + b * b + c * c
            }
            TestFunction::Himmelblau => {
                let a = x * x + y - 11.0;
                let b = x + y * y - 7.0;
                a * a + b * b
            }
            TestFunction::Rastrigin => {
                20.0 + x * x - 10.0 * (TWO_PI * x).cos() + y * y - 10.0 * (TWO_PI * y).cos()
            }
            TestFunction::Saddle => x * x - y * y,
            TestFunction::IllConditioned => 0.5 * (x * x + 100.0 * y * y),
            TestFunction::Booth => {
                let a = x + 2.0 * y - 7.0;
                let b = 2.0 * x + y - 5.0;
                a * a + b * b
            }
        }
    }

    /// The analytic Hessian `[f_xx, f_xy, f_yy]` in f32, following `hessian_at` in
    /// `shaders/functions.wgsl` operation by operation (Newton's method on the CPU).
    pub fn hessian_f32(self, x: f32, y: f32) -> [f32; 3] {
        const TWO_PI: f32 = std::f32::consts::TAU;
        match self {
            TestFunction::Rosenbrock => {
                let r = y - x * x;
                [2.0 - 400.0 * r + 800.0 * x * x, -400.0 * x, 200.0]
            }
            TestFunction::Beale => {
                let y2 = y * y;
                let y3 = y2 * y;
                let a = 1.5 - x + x * y;
                let b = 2.25 - x + x * y2;
                let c = 2.625 - x + x * y3;
                // First derivatives of the three residuals.
                let (ax, bx, cx) = (y - 1.0, y2 - 1.0, y3 - 1.0);
                let (ay, by, cy) = (x, 2.0 * x * y, 3.0 * x * y2);
                let xx = 2.0 * (ax * ax + bx * bx + cx * cx);
                let xy = 2.0 * (ay * ax + a)
                    + 2.0 * (by * bx + 2.0 * y * b)
                    + 2.0 * (cy * cx + 3.0 * y2 * c);
                let yy = 2.0 * (ay * ay)
                    + 2.0 * (by * by + 2.0 * x * b)
                    + 2.0 * (cy * cy + 6.0 * x * y * c);
                [xx, xy, yy]
            }
            TestFunction::Himmelblau => {
                let a = x * x + y - 11.0;
                let b = x + y * y - 7.0;
                [
                    4.0 * a + 8.0 * x * x + 2.0,
                    4.0 * (x + y),
                    2.0 + 4.0 * b + 8.0 * y * y,
                ]
            }
            TestFunction::Rastrigin => {
                let k = 10.0 * TWO_PI * TWO_PI;
                [
                    2.0 + k * (TWO_PI * x).cos(),
                    0.0,
                    2.0 + k * (TWO_PI * y).cos(),
                ]
            }
            TestFunction::Saddle => [2.0, 0.0, -2.0],
            TestFunction::IllConditioned => [1.0, 0.0, 100.0],
            TestFunction::Booth => [10.0, 8.0, 10.0],
        }
    }

    /// The region the demo shows.
    pub fn domain(self) -> Domain {
        let square = |h: f64| Domain { x: [-h, h], y: [-h, h] };
        match self {
            TestFunction::Rosenbrock => Domain { x: [-2.0, 2.0], y: [-1.0, 3.0] },
            TestFunction::Beale => square(4.5),
            TestFunction::Himmelblau => square(5.0),
            TestFunction::Rastrigin => square(5.12),
            TestFunction::Saddle => square(2.0),
            TestFunction::IllConditioned => square(3.0),
            TestFunction::Booth => square(10.0),
        }
    }

    /// A start point that shows the function's character.
    pub fn default_start(self) -> [f32; 2] {
        match self {
            TestFunction::Rosenbrock => [-1.5, 2.0],
            TestFunction::Beale => [1.0, 1.5],
            TestFunction::Himmelblau => [0.0, 0.0],
            TestFunction::Rastrigin => [2.6, -3.3],
            TestFunction::Saddle => [-1.8, 0.05],
            TestFunction::IllConditioned => [-2.5, 1.5],
            TestFunction::Booth => [-8.0, -6.0],
        }
    }

    /// The minima a run can end in (global and the local ones worth naming); empty for the
    /// saddle, which has none, and for Rastrigin, whose local minima lie near every point of
    /// the integer lattice (see [`basin`](Self::basin)).
    pub fn minima(self) -> &'static [[f64; 2]] {
        match self {
            TestFunction::Rosenbrock => &[[1.0, 1.0]],
            TestFunction::Beale => &[[3.0, 0.5]],
            TestFunction::Himmelblau => &[
                [3.0, 2.0],
                [-2.805_118, 3.131_312],
                [-3.779_310, -3.283_186],
                [3.584_428, -1.848_126],
            ],
            TestFunction::Rastrigin | TestFunction::Saddle => &[],
            TestFunction::IllConditioned => &[[0.0, 0.0]],
            TestFunction::Booth => &[[1.0, 3.0]],
        }
    }

    /// The smallest value of f (`None` for the saddle, unbounded below).
    pub fn min_value(self) -> Option<f64> {
        match self {
            TestFunction::Saddle => None,
            _ => Some(0.0),
        }
    }

    /// Whether contour maps and loss charts should use a log scale (values spanning many
    /// decades around a minimum of 0).
    pub fn log_scale(self) -> bool {
        !matches!(self, TestFunction::Saddle | TestFunction::Rastrigin)
    }

    /// The value drawn on maps: `log10(f − min + 1e-3)` on log-scaled functions, else f.
    pub fn display_level(self, value: f64) -> f64 {
        if self.log_scale() {
            ((value - self.min_value().unwrap_or(0.0)).max(0.0) + 1e-3).log10()
        } else {
            value
        }
    }

    /// Where a run that ended at (x, y) went: `-2` diverged (not finite); `-1` nowhere named;
    /// otherwise the index of the minimum in [`minima`](Self::minima) it is within 2 % of the
    /// domain's width of. Rastrigin: the lattice point `(i, j)` it is within 0.25 of, as
    /// `(i + 64) * 128 + (j + 64)`. Saddle: 0 escaped upwards (y > 0.5), 1 downwards, -1 still
    /// near the saddle line.
    pub fn basin(self, x: f32, y: f32) -> i32 {
        if !x.is_finite() || !y.is_finite() {
            return -2;
        }
        let (x, y) = (f64::from(x), f64::from(y));
        match self {
            TestFunction::Saddle => {
                if y > 0.5 {
                    0
                } else if y < -0.5 {
                    1
                } else {
                    -1
                }
            }
            TestFunction::Rastrigin => {
                let (i, j) = (x.round(), y.round());
                if (x - i).hypot(y - j) < 0.25 && i.abs() < 64.0 && j.abs() < 64.0 {
                    (i as i32 + 64) * 128 + (j as i32 + 64)
                } else {
                    -1
                }
            }
            _ => {
                let domain = self.domain();
                let radius = 0.02 * (domain.x[1] - domain.x[0]);
                self.minima()
                    .iter()
                    .position(|m| (x - m[0]).hypot(y - m[1]) < radius)
                    .map_or(-1, |i| i as i32)
            }
        }
    }
}

impl fmt::Display for TestFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TestFunction {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        let wanted = name.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        let wanted = if wanted == "quadratic" { "ill_conditioned".to_string() } else { wanted };
        Self::ALL.into_iter().find(|f| f.name() == wanted).ok_or_else(|| {
            Error::Config(format!(
                "unknown test function {name:?}: expected one of {}",
                Self::ALL.map(TestFunction::name).join(", ")
            ))
        })
    }
}

// ---- specs and reports ----

/// One optimizer configuration racing in a [`TrajectorySpec`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// A torch class name: `SGD`, `Adagrad`, `RMSprop`, `Adadelta`, `Adam`, `AdamW`, `NAdam`, ... (any of
    /// [`crate::rules::OPTIMIZER_NAMES`]), or one of [`SECOND_ORDER_NAMES`]: `Newton`,
    /// `DampedNewton`, `LBFGS` (see [`Method`]).
    pub optimizer: String,
    /// torch keyword arguments; missing ones take torch's defaults.
    #[serde(default)]
    pub hyperparameters: serde_json::Map<String, serde_json::Value>,
    /// A learning-rate schedule (see [`learning_rates`]); `null` or absent: constant `lr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<serde_json::Value>,
    /// Explicit learning rate of every step (`lr[t-1]` for step `t`), instead of a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<Vec<f64>>,
    /// The type an update rule keeps its state in: `f32` (default), `bf16` (stochastic
    /// rounding, seed 0) or `int8` (8-bit blockwise; tensors of fewer than 4,096 elements, i.e.
    /// fewer than 2,048 start points, stay f32). See [`crate::storage`].
    #[serde(default, skip_serializing_if = "is_f32")]
    pub state_dtype: Dtype,
}

fn is_f32(dtype: &Dtype) -> bool {
    *dtype == Dtype::F32
}

/// The storage types of a run whose state is kept in `state`: f32 parameters and gradients
/// (the gradient kernel reads and writes f32), stochastic rounding for bf16.
pub fn state_precision(state: Dtype) -> Result<Precision> {
    let rounding = if state == Dtype::Bf16 { Rounding::Stochastic { seed: 0 } } else { Rounding::NearestEven };
    let precision = Precision { state, rounding, ..Precision::default() };
    precision.validate()?;
    Ok(precision)
}

impl RunSpec {
    /// The rule, validated as torch validates it (an error for the methods that are not update
    /// rules: see [`RunSpec::method`]).
    pub fn rule(&self) -> Result<Box<dyn UpdateRule>> {
        rules::from_config(&self.optimizer, &serde_json::Value::Object(self.hyperparameters.clone()))
    }

    /// The method: an update rule, Newton's method or L-BFGS, its hyper-parameters validated.
    pub fn method(&self) -> Result<Method> {
        Method::from_config(&self.optimizer, &serde_json::Value::Object(self.hyperparameters.clone()))
    }

    /// Checks the method and the learning rates of `steps` steps; returns the method and the
    /// learning rate of each step (`None`: constant). Newton and L-BFGS take no schedule.
    pub fn checked(&self, steps: u32) -> Result<(Method, Option<Vec<f64>>)> {
        let method = self.method()?;
        let lr = match &method {
            Method::Rule(rule) => self.learning_rates(rule.as_ref(), steps)?,
            other => {
                if self.schedule.as_ref().is_some_and(|s| !s.is_null()) || self.lr.is_some() {
                    return Err(Error::Config(format!(
                        "{} takes no learning-rate schedule or per-step \"lr\" (only the update rules do)",
                        other.name()
                    )));
                }
                None
            }
        };
        Ok((method, lr))
    }

    /// The learning rate of each of `steps` steps, or `None` for a constant one.
    pub fn learning_rates(&self, rule: &dyn UpdateRule, steps: u32) -> Result<Option<Vec<f64>>> {
        match (&self.lr, &self.schedule) {
            (Some(_), Some(_)) => Err(Error::Config("a run takes either \"lr\" (one per step) or \"schedule\", not both".into())),
            (Some(lr), None) => {
                if lr.len() != steps as usize {
                    return Err(Error::Config(format!("\"lr\" lists {} learning rates for {steps} steps", lr.len())));
                }
                Ok(Some(lr.clone()))
            }
            (None, schedule) => learning_rates(schedule.as_ref(), rule, steps),
        }
    }
}

/// The learning rate of every step that a run's `schedule` gives, or `None` for a constant
/// learning rate (no schedule, or `null`).
///
/// `schedule` is a [`crate::schedule::from_config`] configuration (torch's `lr_scheduler`
/// names and semantics), e.g. `{"name": "CosineAnnealingLR", "T_max": 500}` or a warm-up
/// `{"name": "SequentialLR", "schedulers": [{"name": "LinearLR", "start_factor": 0.1,
/// "total_iters": 50}, {"name": "CosineAnnealingLR", "T_max": 450}], "milestones": [50]}`.
/// As in a torch training loop, step `t` runs with the learning rate the scheduler has set
/// after `t − 1` calls of `scheduler.step()` (construction sets step 1's). Momentum cycling
/// (`CyclicLR`, `OneCycleLR` with `cycle_momentum`) is refused, as the GPU optimizer refuses it.
pub fn learning_rates(schedule: Option<&serde_json::Value>, rule: &dyn UpdateRule, steps: u32) -> Result<Option<Vec<f64>>> {
    let config = match schedule {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(config) => config,
    };
    let mut recorder = LrRecorder { rule: rule.clone_box() };
    let mut scheduler = schedule::from_config(config, &mut recorder)?;
    let mut lrs = Vec::with_capacity(steps as usize);
    for t in 0..steps {
        if t > 0 {
            scheduler.step(&mut recorder)?;
        }
        lrs.push(recorder.rule.lr());
    }
    Ok(Some(lrs))
}

/// The one-group optimizer a schedule drives while [`learning_rates`] records it.
struct LrRecorder {
    rule: Box<dyn UpdateRule>,
}

impl LearningRates for LrRecorder {
    fn group_count(&self) -> usize {
        1
    }

    fn lr(&self, _group: usize) -> f64 {
        self.rule.lr()
    }

    fn set_lr(&mut self, _group: usize, lr: f64) -> Result<()> {
        self.rule = rules::changed(self.rule.as_ref(), |rule| {
            rule.set_lr(lr);
            Ok(())
        })?;
        Ok(())
    }

    fn cycled_momentum(&self, _group: usize) -> Option<CycledMomentum> {
        self.rule.cycled_momentum()
    }

    fn set_cycled_momentum(&mut self, _group: usize, _value: f64) -> Result<()> {
        Err(Error::Config(
            "trajectories change only the learning rate from step to step (the GPU optimizer cannot \
             change momentum or betas once built); give CyclicLR or OneCycleLR cycle_momentum = false"
                .into(),
        ))
    }
}

fn default_sample_every() -> u32 {
    1
}

/// What to run: optimizers racing on one function from the same start points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrajectorySpec {
    /// The function every run descends.
    pub function: TestFunction,
    /// Optimizer steps of each run, 1 to [`MAX_STEPS`].
    pub steps: u32,
    /// Keep every k-th position (and always the last).
    #[serde(default = "default_sample_every")]
    pub sample_every: u32,
    /// Start points; empty: the function's default start.
    #[serde(default)]
    pub starts: Vec<[f32; 2]>,
    /// The optimizers, each run from every start point; at least one.
    pub runs: Vec<RunSpec>,
}

impl TrajectorySpec {
    /// Parses a spec's JSON and [`check`](Self::check)s it; a malformed spec is an
    /// [`Error::Config`].
    pub fn from_json(text: &str) -> Result<Self> {
        let spec: Self = serde_json::from_str(text).map_err(|e| Error::Config(format!("trajectory spec: {e}")))?;
        spec.check()?;
        Ok(spec)
    }

    /// Start points (the function's default one when none were given).
    pub fn start_points(&self) -> Vec<[f32; 2]> {
        if self.starts.is_empty() {
            vec![self.function.default_start()]
        } else {
            self.starts.clone()
        }
    }

    /// Checks the step count, `sample_every`, the start points (1 to [`MAX_STARTS`], finite)
    /// and every run's rule and learning rates, as [`run_spec`] would meet them.
    pub fn check(&self) -> Result<()> {
        check_steps(self.steps, self.sample_every)?;
        if self.runs.is_empty() {
            return Err(Error::Config("a trajectory spec needs at least one run".into()));
        }
        check_starts(&self.start_points())?;
        let starts = self.start_points().len();
        for run in &self.runs {
            let (method, _) = run.checked(self.steps)?;
            method.check_starts(starts)?;
        }
        Ok(())
    }
}

fn check_steps(steps: u32, sample_every: u32) -> Result<()> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(Error::Config(format!("steps must be in 1..={MAX_STEPS}, got {steps}")));
    }
    if sample_every == 0 {
        return Err(Error::Config("sample_every must be at least 1".into()));
    }
    Ok(())
}

fn check_history(steps: u32, sample_every: u32, starts: usize) -> Result<()> {
    let bytes = sampled_steps(steps, sample_every).len() as u64 * starts as u64 * 8;
    if bytes > MAX_HISTORY_BYTES {
        return Err(Error::Config(format!(
            "the position history would take {bytes} bytes (at most {MAX_HISTORY_BYTES}); sample less often"
        )));
    }
    Ok(())
}

fn check_starts(starts: &[[f32; 2]]) -> Result<()> {
    if starts.is_empty() || starts.len() > MAX_STARTS {
        return Err(Error::Config(format!("between 1 and {MAX_STARTS} start points, got {}", starts.len())));
    }
    if let Some(p) = starts.iter().find(|p| !p[0].is_finite() || !p[1].is_finite()) {
        return Err(Error::Config(format!("start point {p:?} is not finite")));
    }
    Ok(())
}

/// The steps at which positions are kept: 0 (the start), every `sample_every`-th, and `steps`.
pub fn sampled_steps(steps: u32, sample_every: u32) -> Vec<u32> {
    let mut samples: Vec<u32> = (0..=steps).step_by(sample_every.max(1) as usize).collect();
    if samples.last() != Some(&steps) {
        samples.push(steps);
    }
    samples
}

/// Positions of N runs at the sampled steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Paths {
    /// N, the number of runs (start points).
    pub starts: usize,
    /// The steps at which positions were kept ([`sampled_steps`]).
    pub sampled_steps: Vec<u32>,
    /// `[sample][start][x, y]`, flattened.
    pub positions: Vec<f32>,
}

impl Paths {
    /// Position of run `start` at sample `sample`.
    pub fn at(&self, sample: usize, start: usize) -> [f32; 2] {
        let i = (sample * self.starts + start) * 2;
        [self.positions[i], self.positions[i + 1]]
    }

    /// Path of one start, sample by sample.
    pub fn path(&self, start: usize) -> Vec<[f32; 2]> {
        (0..self.sampled_steps.len()).map(|s| self.at(s, start)).collect()
    }

    /// The last positions, `[start][x, y]` flattened.
    pub fn last(&self) -> &[f32] {
        &self.positions[self.positions.len() - self.starts * 2..]
    }
}

/// The result of one run of a [`TrajectorySpec`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    /// The run's torch class name, as the spec gave it.
    pub optimizer: String,
    /// Every hyper-parameter, defaults included.
    pub hyperparameters: serde_json::Value,
    /// The spec's learning-rate schedule, if it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<serde_json::Value>,
    /// Learning rate of each step, when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<Vec<f64>>,
    /// `[start][sample] = [x, y]` (non-finite coordinates are written as `null`).
    pub paths: Vec<Vec<[f32; 2]>>,
    /// f at each position, `[start][sample]`.
    pub losses: Vec<Vec<f64>>,
    /// Wall time of the run on the device: recording, submission, waiting and reading back
    /// (optimizer and pipeline creation excluded), in milliseconds.
    pub elapsed_ms: f64,
    /// Dispatches recorded (gradient + optimizer, per step; Newton: one per step; L-BFGS: its
    /// own and one per closure evaluation).
    pub dispatches: usize,
    /// L-BFGS: closure evaluations (each one gradient, torch's `func_evals`) made by each
    /// sampled step, `[start][sample]`. Absent for the other methods: an update rule evaluates
    /// one gradient per step, Newton one gradient and Hessian per step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluations: Option<Vec<Vec<u64>>>,
    /// Newton and DampedNewton: per start, singular Hessians, rejected steps and the damping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newton: Option<Vec<NewtonStats>>,
    /// Set when the run did not execute on the report's backend, and why: in a browser, an
    /// L-BFGS run whose GPU execution WebGPU rejected ran on the CPU twin instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// The type the update rule kept its state in (see [`RunSpec::state_dtype`]).
    #[serde(default, skip_serializing_if = "is_f32")]
    pub state_dtype: Dtype,
    /// An update rule on a GPU: the bytes of its optimizer's buffers ([`Optimizer::memory`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_bytes: Option<u64>,
    /// The same: its state's bytes per parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_bytes_per_parameter: Option<f64>,
}

/// The result of a [`TrajectorySpec`]: the JSON of `wgpu-optim trajectories --out`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrajectoryReport {
    /// The function the runs descended.
    pub function: TestFunction,
    /// `cpu` (the CPU reference) or the wgpu backend, e.g. `vulkan`, `browserwebgpu`.
    pub backend: String,
    /// The adapter's description ([`Device::adapter_name`]).
    pub adapter: String,
    /// Optimizer steps of each run.
    pub steps: u32,
    /// The steps at which positions were kept ([`sampled_steps`]): one per entry of each run's
    /// `paths[start]` and `losses[start]`.
    pub sampled_steps: Vec<u32>,
    /// The start points every run began from.
    pub starts: Vec<[f32; 2]>,
    /// One report per run, in the spec's order.
    pub runs: Vec<RunReport>,
}

/// Where the runs execute.
#[derive(Clone, Debug)]
pub enum Device {
    /// A GPU, through wgpu.
    Gpu(GpuContext),
    /// The CPU reference.
    Cpu,
}

impl Device {
    /// `cpu`, or the wgpu backend's name in lower case (e.g. `vulkan`).
    pub fn backend_name(&self) -> String {
        match self {
            Device::Gpu(gpu) => format!("{:?}", gpu.adapter().backend).to_lowercase(),
            Device::Cpu => "cpu".into(),
        }
    }

    /// The GPU adapter's description, or `CPU reference (scalar Rust)`.
    pub fn adapter_name(&self) -> String {
        match self {
            Device::Gpu(gpu) => gpu.adapter().to_string(),
            Device::Cpu => "CPU reference (scalar Rust)".into(),
        }
    }

    /// Runs `rule` from every start for `steps` steps.
    /// Returns the paths, the milliseconds, the dispatches and (on a GPU) the optimizer's memory.
    pub async fn run(&self, function: TestFunction, run: &RunInput, clock: &dyn Fn() -> f64) -> Result<(Paths, f64, usize, Option<MemoryReport>)> {
        match self {
            Device::Gpu(gpu) => {
                let runner = GpuRunner::new(gpu, function, run).await?;
                let dispatches = runner.dispatches();
                let memory = runner.opt.memory();
                let start = clock();
                let paths = runner.run().await?;
                Ok((paths, clock() - start, dispatches, Some(memory)))
            }
            Device::Cpu => {
                let runner = CpuRunner::new(function, run)?;
                let start = clock();
                let paths = runner.run()?;
                Ok((paths, clock() - start, 0, None))
            }
        }
    }

    /// Runs any [`Method`] from every start: an update rule through [`Device::run`], Newton's
    /// method through [`newton`]'s runners, L-BFGS through [`lbfgs`]'s.
    pub async fn run_method(&self, function: TestFunction, input: &MethodInput, clock: &dyn Fn() -> f64) -> Result<MethodRun> {
        input.check()?;
        let (starts, steps, every) = (&input.starts[..], input.steps, input.sample_every);
        let run = match (&input.method, self) {
            (Method::Rule(rule), _) => {
                let rule_input =
                    RunInput { rule: rule.clone(), starts: starts.to_vec(), steps, sample_every: every, lr: input.lr.clone(), precision: input.precision };
                let (paths, elapsed_ms, dispatches, memory) = self.run(function, &rule_input, clock).await?;
                MethodRun { paths, elapsed_ms, dispatches, evaluations: None, newton: None, fallback: None, memory }
            }
            (Method::Newton(method), Device::Gpu(gpu)) => {
                let runner = newton::GpuNewtonRunner::new(gpu, function, method, starts, steps, every).await?;
                let dispatches = runner.dispatches();
                let start = clock();
                let (paths, stats) = runner.run().await?;
                MethodRun { paths, elapsed_ms: clock() - start, dispatches, evaluations: None, newton: Some(stats), fallback: None, memory: None }
            }
            (Method::Newton(method), Device::Cpu) => {
                let start = clock();
                let (paths, stats) = newton::run_cpu(function, method, starts, steps, every)?;
                MethodRun { paths, elapsed_ms: clock() - start, dispatches: 0, evaluations: None, newton: Some(stats), fallback: None, memory: None }
            }
            (Method::Lbfgs(options), device) => {
                #[cfg_attr(not(target_arch = "wasm32"), allow(unused_mut))]
                let mut fallback = None;
                let run = match device {
                    Device::Gpu(gpu) => match lbfgs::run_gpu(gpu, function, options, starts, steps, every, clock).await {
                        Ok(run) => run,
                        // In a browser only: WebGPU validates what wgpu natively does not (a
                        // storage buffer bound writable twice in one bind group, as src/lbfgs's
                        // placeholder buffer is), so the library's GPU L-BFGS may fail there. The
                        // page then runs its CPU twin, and says so (`RunReport::fallback`).
                        #[cfg(target_arch = "wasm32")]
                        Err(Error::Gpu { message, .. }) => {
                            let first = message.lines().next().unwrap_or_default();
                            fallback = Some(format!("the GPU L-BFGS failed on this adapter ({first}); this run is its CPU twin"));
                            lbfgs::run_cpu(function, options, starts, steps, every, clock)?
                        }
                        Err(error) => return Err(error),
                    },
                    Device::Cpu => lbfgs::run_cpu(function, options, starts, steps, every, clock)?,
                };
                MethodRun {
                    paths: run.paths,
                    elapsed_ms: run.elapsed_ms,
                    dispatches: run.dispatches,
                    evaluations: Some(run.evaluations),
                    newton: None,
                    fallback,
                    memory: None,
                }
            }
        };
        Ok(run)
    }
}

/// The names of the methods that are not update rules: Newton's method (plain and damped) and
/// L-BFGS.
pub const SECOND_ORDER_NAMES: [&str; 3] = ["Newton", "DampedNewton", "LBFGS"];

/// What a run executes: one of the library's first-order update rules, Newton's method with
/// the function's analytic Hessian ([`newton`]), or torch's L-BFGS ([`lbfgs`]).
#[derive(Clone, Debug)]
pub enum Method {
    /// An update rule ([`crate::rules::OPTIMIZER_NAMES`]).
    Rule(Box<dyn UpdateRule>),
    /// `"Newton"` or `"DampedNewton"`.
    Newton(NewtonMethod),
    /// `"LBFGS"`: torch.optim.LBFGS's keyword arguments.
    Lbfgs(LbfgsOptions),
}

impl Method {
    /// From a name (an update rule's torch class name or one of [`SECOND_ORDER_NAMES`]) and
    /// its hyper-parameters as a JSON object; unknown names, unknown keys and invalid values
    /// are errors.
    pub fn from_config(name: &str, hyperparameters: &serde_json::Value) -> Result<Method> {
        match name {
            "Newton" => Ok(Method::Newton(NewtonMethod::Plain(NewtonOptions::from_json(hyperparameters)?))),
            "DampedNewton" => Ok(Method::Newton(NewtonMethod::Damped(DampedNewtonOptions::from_json(hyperparameters)?))),
            "LBFGS" => Ok(Method::Lbfgs(LbfgsOptions::from_json(hyperparameters)?)),
            _ => rules::from_config(name, hyperparameters).map(Method::Rule).map_err(|e| match e {
                Error::UnknownOptimizer(name, known) => {
                    Error::UnknownOptimizer(name, format!("{known}, {}", SECOND_ORDER_NAMES.join(", ")))
                }
                other => other,
            }),
        }
    }

    /// Every method's name: the update rules, then [`SECOND_ORDER_NAMES`].
    pub fn names() -> Vec<&'static str> {
        rules::OPTIMIZER_NAMES.iter().copied().chain(SECOND_ORDER_NAMES).collect()
    }

    /// The name, e.g. `"Adam"`, `"DampedNewton"`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Rule(rule) => rule.name(),
            Method::Newton(method) => method.name(),
            Method::Lbfgs(_) => "LBFGS",
        }
    }

    /// Every hyper-parameter, defaults included, as JSON.
    pub fn hyperparameters(&self) -> serde_json::Value {
        match self {
            Method::Rule(rule) => rule.hyperparameters(),
            Method::Newton(method) => method.hyperparameters(),
            Method::Lbfgs(options) => serde_json::to_value(options).expect("plain data"),
        }
    }

    /// Whether a basin map (thousands of independent start points) can run it: the
    /// element-wise rules and Newton's methods (one invocation per start point), not the rules
    /// that work per tensor nor L-BFGS (one optimizer per start point).
    pub fn basin(&self) -> bool {
        match self {
            Method::Rule(rule) => rule.kernel().is_element_wise(),
            Method::Newton(_) => true,
            Method::Lbfgs(_) => false,
        }
    }

    /// Whether it takes a learning-rate schedule (the update rules do).
    pub fn schedulable(&self) -> bool {
        matches!(self, Method::Rule(_))
    }

    /// Checks the number of start points: at most [`MAX_TENSOR_STARTS`] for methods that give
    /// each start an optimizer or a tensor of its own.
    pub fn check_starts(&self, starts: usize) -> Result<()> {
        if self.basin() || starts <= MAX_TENSOR_STARTS {
            return Ok(());
        }
        let why = match self {
            Method::Lbfgs(_) => "couples every element of its parameters, so each start point has an L-BFGS of its own",
            _ => "works per tensor, so each start point is a 1×2 tensor of its own",
        };
        Err(Error::Config(format!(
            "{} {why}; at most {MAX_TENSOR_STARTS} start points (got {starts}). Basin maps take {}",
            self.name(),
            basin_methods().join(", ")
        )))
    }
}

/// What [`Device::run_method`] runs: a method from N starts.
#[derive(Clone, Debug)]
pub struct MethodInput {
    /// The method, with its hyper-parameters.
    pub method: Method,
    /// The start points, one run each.
    pub starts: Vec<[f32; 2]>,
    /// Steps (`step(closure)` calls for L-BFGS), 1 to [`MAX_STEPS`].
    pub steps: u32,
    /// Keep every k-th position (and always the first and the last).
    pub sample_every: u32,
    /// An update rule's learning rate of each step, or `None`.
    pub lr: Option<Vec<f64>>,
    /// An update rule's storage types (see [`state_precision`]); Newton and L-BFGS keep f32.
    pub precision: Precision,
}

impl MethodInput {
    fn check(&self) -> Result<()> {
        check_steps(self.steps, self.sample_every)?;
        check_starts(&self.starts)?;
        self.method.check_starts(self.starts.len())?;
        if self.lr.is_some() && !self.method.schedulable() {
            return Err(Error::Config(format!("{} takes no per-step learning rates", self.method.name())));
        }
        if !self.precision.is_f32() && !matches!(self.method, Method::Rule(_)) {
            return Err(Error::Config(format!("{} keeps its state in f32 only", self.method.name())));
        }
        check_history(self.steps, self.sample_every, self.starts.len())
    }
}

/// What [`Device::run_method`] produced.
#[derive(Clone, Debug)]
pub struct MethodRun {
    /// The positions at the sampled steps.
    pub paths: Paths,
    /// As [`RunReport::elapsed_ms`].
    pub elapsed_ms: f64,
    /// As [`RunReport::dispatches`].
    pub dispatches: usize,
    /// As [`RunReport::evaluations`].
    pub evaluations: Option<Vec<Vec<u64>>>,
    /// As [`RunReport::newton`].
    pub newton: Option<Vec<NewtonStats>>,
    /// As [`RunReport::fallback`].
    pub fallback: Option<String>,
    /// An update rule on the GPU: its optimizer's buffers.
    pub memory: Option<MemoryReport>,
}

/// The methods a basin map takes ([`Method::basin`]): the element-wise rules
/// ([`basin_rules`]), `Newton` and `DampedNewton`.
pub fn basin_methods() -> Vec<&'static str> {
    let mut names = basin_rules();
    names.extend(["Newton", "DampedNewton"]);
    names
}

/// Start points of a run of a rule that works per tensor (each start is a 1×2 tensor).
pub const MAX_TENSOR_STARTS: usize = 64;

/// The rules a basin map offers: the element-wise ones, whose thousands of start points can be
/// rows of one tensor. Rules that work per tensor (Lamb's trust ratio, Adafactor's factored
/// moments, Muon's orthogonalization) would couple rows of one tensor, so the runner gives each
/// start point a 1×2 tensor of its own, which suits a few trajectories but not a basin map.
pub fn basin_rules() -> Vec<&'static str> {
    crate::rules::OPTIMIZER_NAMES
        .iter()
        .copied()
        .filter(|name| crate::rules::from_config(name, &serde_json::json!({})).is_ok_and(|rule| rule.kernel().is_element_wise()))
        .collect()
}

/// The start points as parameters: rows of one `[starts, 2]` tensor for element-wise rules,
/// else one `[1, 2]` tensor per start (a rule that works per tensor must not couple runs).
fn start_parameters(run: &RunInput) -> Result<(Parameters, Vec<TensorId>)> {
    let mut params = Parameters::new();
    let ids = if run.rule.kernel().is_element_wise() {
        vec![params.add("xy", &[run.starts.len(), 2], run.flat_starts())?]
    } else {
        let ids: Result<Vec<TensorId>> = run.starts.iter().enumerate().map(|(k, p)| params.add(&format!("xy{k}"), &[1, 2], p.to_vec())).collect();
        ids?
    };
    Ok((params, ids))
}

/// One optimizer from N starts: what a runner needs.
#[derive(Clone, Debug)]
pub struct RunInput {
    /// The optimizer's rule, with its hyper-parameters.
    pub rule: Box<dyn UpdateRule>,
    /// The start points, one run each.
    pub starts: Vec<[f32; 2]>,
    /// Optimizer steps, 1 to [`MAX_STEPS`].
    pub steps: u32,
    /// Keep every k-th position (and always the first and the last).
    pub sample_every: u32,
    /// Learning rate of each step (a schedule), or `None` for the rule's constant `lr`.
    pub lr: Option<Vec<f64>>,
    /// The optimizer's storage types (see [`state_precision`]).
    pub precision: Precision,
}

impl RunInput {
    fn check(&self) -> Result<()> {
        check_steps(self.steps, self.sample_every)?;
        check_starts(&self.starts)?;
        self.rule.validate()?;
        if !self.rule.kernel().is_element_wise() && self.starts.len() > MAX_TENSOR_STARTS {
            return Err(Error::Config(format!(
                "{} works per tensor, so each start point is a 1×2 tensor of its own; at most {MAX_TENSOR_STARTS} start points \
                 (got {}). Basin maps take the element-wise rules: {}",
                self.rule.name(),
                self.starts.len(),
                basin_rules().join(", ")
            )));
        }
        if let Some(lr) = &self.lr {
            if lr.len() != self.steps as usize {
                return Err(Error::Config(format!("{} learning rates for {} steps", lr.len(), self.steps)));
            }
        }
        check_history(self.steps, self.sample_every, self.starts.len())
    }

    fn flat_starts(&self) -> Vec<f32> {
        self.starts.iter().flatten().copied().collect()
    }
}

/// Runs every run of a spec on `device`; `clock` gives milliseconds (`performance.now()` on
/// the web, an `Instant` natively).
pub async fn run_spec(device: &Device, spec: &TrajectorySpec, clock: &dyn Fn() -> f64) -> Result<TrajectoryReport> {
    spec.check()?;
    let starts = spec.start_points();
    let mut runs = Vec::with_capacity(spec.runs.len());
    for run in &spec.runs {
        let (method, lr) = run.checked(spec.steps)?;
        let hyperparameters = method.hyperparameters();
        let precision = state_precision(run.state_dtype)?;
        let input = MethodInput { method, starts: starts.clone(), steps: spec.steps, sample_every: spec.sample_every, lr: lr.clone(), precision };
        let MethodRun { paths, elapsed_ms, dispatches, evaluations, newton, fallback, memory } = device.run_method(spec.function, &input, clock).await?;
        let paths: Vec<Vec<[f32; 2]>> = (0..starts.len()).map(|s| paths.path(s)).collect();
        let losses = paths
            .iter()
            .map(|path| path.iter().map(|p| spec.function.value(f64::from(p[0]), f64::from(p[1]))).collect())
            .collect();
        runs.push(RunReport {
            optimizer: run.optimizer.clone(),
            hyperparameters,
            schedule: run.schedule.clone(),
            lr,
            paths,
            losses,
            elapsed_ms,
            dispatches,
            evaluations,
            newton,
            fallback,
            state_dtype: run.state_dtype,
            gpu_bytes: memory.as_ref().map(MemoryReport::total_bytes),
            state_bytes_per_parameter: memory.as_ref().map(MemoryReport::state_bytes_per_parameter),
        });
    }
    Ok(TrajectoryReport {
        function: spec.function,
        backend: device.backend_name(),
        adapter: device.adapter_name(),
        steps: spec.steps,
        sampled_steps: sampled_steps(spec.steps, spec.sample_every),
        starts,
        runs,
    })
}

/// A basin map: one optimizer launched from a `resolution × resolution` grid of starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasinSpec {
    /// The function to descend.
    pub function: TestFunction,
    /// A torch class name of an element-wise rule, `Newton` or `DampedNewton` (see
    /// [`basin_methods`]).
    pub optimizer: String,
    /// torch keyword arguments; missing ones take torch's defaults.
    #[serde(default)]
    pub hyperparameters: serde_json::Map<String, serde_json::Value>,
    /// A learning-rate schedule, as [`RunSpec::schedule`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<serde_json::Value>,
    /// Explicit learning rate of every step, as [`RunSpec::lr`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<Vec<f64>>,
    /// Optimizer steps of each run, 1 to [`MAX_STEPS`].
    pub steps: u32,
    /// Start points per side of the grid, 1 to 1024.
    pub resolution: u32,
    /// The grid's rectangle; default: the function's domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
}

impl BasinSpec {
    /// The optimizer part, as a [`RunSpec`].
    pub fn run(&self) -> RunSpec {
        RunSpec {
            optimizer: self.optimizer.clone(),
            hyperparameters: self.hyperparameters.clone(),
            schedule: self.schedule.clone(),
            lr: self.lr.clone(),
            state_dtype: Dtype::F32,
        }
    }
}

/// Where each start of a basin map ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BasinReport {
    /// The function descended.
    pub function: TestFunction,
    /// The torch class name, as the spec gave it.
    pub optimizer: String,
    /// Every hyper-parameter, defaults included.
    pub hyperparameters: serde_json::Value,
    /// Optimizer steps of each run.
    pub steps: u32,
    /// Start points per side of the grid.
    pub resolution: u32,
    /// The grid's rectangle (the function's domain unless the spec gave one).
    pub domain: Domain,
    /// `cpu` or the wgpu backend ([`Device::backend_name`]).
    pub backend: String,
    /// The adapter's description ([`Device::adapter_name`]).
    pub adapter: String,
    /// Final positions, `[start][x, y]` flattened, starts row by row from the bottom.
    pub end: Vec<f32>,
    /// f at each final position.
    pub loss: Vec<f64>,
    /// [`TestFunction::basin`] of each final position.
    pub basin: Vec<i32>,
    /// Wall time of the run on the device, in milliseconds (as [`RunReport::elapsed_ms`]).
    pub elapsed_ms: f64,
}

/// Runs a basin map on `device`.
pub async fn run_basin(device: &Device, spec: &BasinSpec, clock: &dyn Fn() -> f64) -> Result<BasinReport> {
    let domain = spec.domain.unwrap_or_else(|| spec.function.domain());
    domain.check()?;
    let resolution = spec.resolution as usize;
    if resolution == 0 || resolution * resolution > MAX_STARTS {
        return Err(Error::Config(format!("resolution must be in 1..=1024, got {}", spec.resolution)));
    }
    check_steps(spec.steps, spec.steps)?;
    let (method, lr) = spec.run().checked(spec.steps)?;
    if !method.basin() {
        let why = match method {
            Method::Lbfgs(_) => "runs one L-BFGS per start point",
            _ => "works per tensor",
        };
        return Err(Error::Config(format!(
            "a basin map runs its start points as one tensor, so it takes the element-wise rules and Newton's methods ({}); {} {why}",
            basin_methods().join(", "),
            method.name()
        )));
    }
    let hyperparameters = method.hyperparameters();
    let input = MethodInput { method, starts: domain.grid(resolution), steps: spec.steps, sample_every: spec.steps, lr, precision: Precision::default() };
    let MethodRun { paths, elapsed_ms, .. } = device.run_method(spec.function, &input, clock).await?;
    let end = paths.last().to_vec();
    let loss = end.chunks(2).map(|p| spec.function.value(f64::from(p[0]), f64::from(p[1]))).collect();
    let basin = end.chunks(2).map(|p| spec.function.basin(p[0], p[1])).collect();
    Ok(BasinReport {
        function: spec.function,
        optimizer: spec.optimizer.clone(),
        hyperparameters,
        steps: spec.steps,
        resolution: spec.resolution,
        domain,
        backend: device.backend_name(),
        adapter: device.adapter_name(),
        end,
        loss,
        basin,
        elapsed_ms,
    })
}

// ---- runners ----

/// N runs of one optimizer on the GPU: gradient kernel and optimizer step recorded together,
/// many steps per submission, positions sampled into a history buffer on the GPU.
pub struct GpuRunner {
    gpu: GpuContext,
    opt: Optimizer,
    /// One `[starts, 2]` tensor, or one `[1, 2]` tensor per start.
    xy: Vec<TensorId>,
    starts: usize,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
    steps: u32,
    samples: Vec<u32>,
    lr: Option<Vec<f64>>,
    history: wgpu::Buffer,
    steps_per_submission: u32,
    /// Rules with sparse gradients (SparseAdam): each step's gradient touches every row, so
    /// before each step the row masks are filled from `ones`.
    row_masks: Vec<TensorView>,
    ones: Option<wgpu::Buffer>,
}

impl GpuRunner {
    /// Builds the optimizer over the start points and the gradient pipeline.
    pub async fn new(gpu: &GpuContext, function: TestFunction, run: &RunInput) -> Result<Self> {
        run.check()?;
        let starts = run.starts.len();
        let (params, xy) = start_parameters(run)?;
        let steps_per_submission = run.steps.min(MAX_STEPS_PER_SUBMISSION);
        let options =
            OptimizerOptions { steps_in_flight: Some(u64::from(steps_per_submission)), precision: run.precision, ..Default::default() };
        let opt = Optimizer::new_async(gpu, params, vec![ParamGroup::from_boxed(run.rule.clone(), xy.clone())], options).await?;
        if opt.arenas().len() != 1 {
            return Err(Error::Config("the start points do not fit one arena".into()));
        }
        // The positions the gradient kernel reads: from the first start to the last, `stride`
        // vec2 apart (1 for one tensor; the tensors' alignment for one tensor per start).
        let (first, last) = (opt.param(xy[0])?, opt.param(xy[xy.len() - 1])?);
        let stride = if xy.len() > 1 { (opt.param(xy[1])?.offset - first.offset) / 8 } else { 1 };
        let span = last.offset + last.byte_size() - first.offset;
        fn range(view: &TensorView, span: u64) -> wgpu::BindingResource<'_> {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &view.buffer, offset: view.offset, size: std::num::NonZeroU64::new(span) })
        }
        let grad_first = opt.grad(xy[0])?;

        let device = gpu.device();
        let storage = |binding, read_only| crate::context::storage_binding(binding, read_only, 8);
        let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("trajectory gradients"),
            entries: &[storage(0, true), storage(1, false)],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("trajectory gradients"),
            bind_group_layouts: &[Some(&bind_group_layout)],
            immediate_size: 0,
        });
        let key = PipelineKey {
            label: "trajectory-functions",
            entry: "main",
            constants: vec![("function_id", f64::from(function.id()).to_bits()), ("stride", (stride as f64).to_bits())],
        };
        let pipeline = gpu.pipeline(key, FUNCTIONS_WGSL, &layout).await?;
        let samples = sampled_steps(run.steps, run.sample_every);
        let (bind_group, history) = gpu
            .checked("allocating the trajectory buffers", || {
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("trajectory gradients"),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &[
                        wgpu::BindGroupEntry { binding: 0, resource: range(&first, span) },
                        wgpu::BindGroupEntry { binding: 1, resource: range(&grad_first, span) },
                    ],
                });
                let history = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("trajectory history"),
                    size: samples.len() as u64 * starts as u64 * 8,
                    usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                (bind_group, history)
            })
            .await?;
        let row_masks: Vec<TensorView> = xy.iter().filter_map(|&id| opt.grad_rows(id).ok()).collect();
        let ones = row_masks.iter().map(|m| m.len).max().map(|len| {
            use wgpu::util::DeviceExt;
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("trajectory row masks"),
                contents: bytemuck::cast_slice(&vec![1u32; len]),
                usage: wgpu::BufferUsages::COPY_SRC,
            })
        });
        let workgroups = (starts as u32).div_ceil(GRAD_WORKGROUP_SIZE);
        let max = device.limits().max_compute_workgroups_per_dimension.max(1);
        let x = workgroups.min(max);
        let grid = (x, workgroups.div_ceil(x));
        Ok(GpuRunner {
            gpu: gpu.clone(),
            opt,
            xy,
            starts,
            pipeline,
            bind_group,
            grid,
            steps: run.steps,
            samples,
            lr: run.lr.clone(),
            history,
            steps_per_submission,
            row_masks,
            ones,
        })
    }

    /// Dispatches the whole run records: one gradient dispatch and the optimizer's per step.
    pub fn dispatches(&self) -> usize {
        self.steps as usize * (1 + self.opt.dispatches_per_step())
    }

    /// Records every step, submits (at most [`MAX_STEPS_PER_SUBMISSION`] steps per
    /// submission), and reads the sampled positions back.
    pub async fn run(mut self) -> Result<Paths> {
        let views = self.xy.iter().map(|&id| self.opt.param(id)).collect::<Result<Vec<TensorView>>>()?;
        let row = (self.starts * 8) as u64;
        let sample = |encoder: &mut wgpu::CommandEncoder, history: &wgpu::Buffer, at: u64| {
            let mut to = at;
            for view in &views {
                encoder.copy_buffer_to_buffer(&view.buffer, view.offset, history, to, view.byte_size());
                to += view.byte_size();
            }
        };
        let device = self.gpu.device().clone();
        let new_encoder = || device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("trajectories") });
        let mut encoder = new_encoder();
        sample(&mut encoder, &self.history, 0);
        let mut next_sample = 1;
        let mut step = 0u32;
        while step < self.steps {
            // A segment: steps up to the next sample or the end of this submission.
            let submission_end = (step / self.steps_per_submission + 1) * self.steps_per_submission;
            let mut end = self.samples[next_sample].min(submission_end);
            if let Some(ones) = &self.ones {
                // A dense function's gradient touches every row; the step consumes the masks.
                end = step + 1;
                for mask in &self.row_masks {
                    encoder.copy_buffer_to_buffer(ones, 0, &mask.buffer, mask.offset, mask.byte_size());
                }
            }
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("trajectory steps"),
                    timestamp_writes: None,
                });
                while step < end {
                    if let Some(lr) = &self.lr {
                        self.opt.set_lr(0, lr[step as usize])?;
                    }
                    pass.set_pipeline(&self.pipeline);
                    pass.set_bind_group(0, &self.bind_group, &[]);
                    pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
                    self.opt.step_in_pass(&mut pass)?;
                    step += 1;
                }
            }
            if step == self.samples[next_sample] {
                sample(&mut encoder, &self.history, next_sample as u64 * row);
                next_sample += 1;
            }
            if step.is_multiple_of(self.steps_per_submission) && step < self.steps {
                self.gpu.queue().submit([std::mem::replace(&mut encoder, new_encoder()).finish()]);
                // The next submission reuses the scalar ring's slots, which the optimizer frees
                // from callbacks once these steps have run. Natively it polls the device for
                // them; in a browser the callbacks run only when the event loop does.
                #[cfg(target_arch = "wasm32")]
                submitted_work_done(&self.gpu).await;
            }
        }
        self.gpu.queue().submit([encoder.finish()]);
        let view = TensorView { buffer: self.history.clone(), offset: 0, len: self.samples.len() * self.starts * 2, dtype: crate::storage::Dtype::F32 };
        let positions = read_views(&self.gpu, &[view]).await?.remove(0);
        Ok(Paths { starts: self.starts, sampled_steps: self.samples, positions })
    }
}

/// Resolves once the work submitted so far has run (and the callbacks registered before it).
#[cfg(target_arch = "wasm32")]
async fn submitted_work_done(gpu: &GpuContext) {
    let (sender, receiver) = futures_channel::oneshot::channel();
    gpu.queue().on_submitted_work_done(move || {
        let _ = sender.send(());
    });
    let _ = receiver.await;
}

/// N runs of one optimizer on the CPU reference, with the f32 gradient mirror of the WGSL.
pub struct CpuRunner {
    function: TestFunction,
    opt: CpuOptimizer,
    xy: Vec<TensorId>,
    starts: usize,
    steps: u32,
    samples: Vec<u32>,
    lr: Option<Vec<f64>>,
    sparse: bool,
}

impl CpuRunner {
    /// Checks the run and builds the CPU optimizer over the start points; an invalid run is
    /// an [`Error::Config`] or the rule's validation error.
    pub fn new(function: TestFunction, run: &RunInput) -> Result<Self> {
        run.check()?;
        let (params, xy) = start_parameters(run)?;
        let opt = CpuOptimizer::new(params, vec![ParamGroup::from_boxed(run.rule.clone(), xy.clone())])?.with_precision(run.precision)?;
        Ok(CpuRunner {
            function,
            opt,
            xy,
            starts: run.starts.len(),
            steps: run.steps,
            samples: sampled_steps(run.steps, run.sample_every),
            lr: run.lr.clone(),
            sparse: run.rule.kernel().sparse_rows,
        })
    }

    /// Runs every step, keeping the positions at the sampled steps.
    pub fn run(mut self) -> Result<Paths> {
        let mut positions = Vec::with_capacity(self.samples.len() * self.starts * 2);
        for &id in &self.xy {
            positions.extend_from_slice(self.opt.param(id)?);
        }
        let mut next_sample = 1;
        for step in 1..=self.steps {
            if let Some(lr) = &self.lr {
                self.opt.set_lr(0, lr[step as usize - 1])?;
            }
            for &id in &self.xy {
                let grad: Vec<f32> = self.opt.param(id)?.chunks(2).flat_map(|p| self.function.gradient_f32(p[0], p[1])).collect();
                if self.sparse {
                    // A dense function's gradient touches every row.
                    let rows: Vec<u32> = (0..crate::rules::sparse_rows(self.opt.tensor_shape(id)?).0 as u32).collect();
                    self.opt.write_sparse_grad(id, &rows, &grad)?;
                } else {
                    self.opt.write_grad(id, &grad)?;
                }
            }
            self.opt.step();
            if step == self.samples[next_sample] {
                for &id in &self.xy {
                    positions.extend_from_slice(self.opt.param(id)?);
                }
                next_sample += 1;
            }
        }
        Ok(Paths { starts: self.starts, sampled_steps: self.samples, positions })
    }
}

/// Blocking forms of [`run_spec`] and [`run_basin`] (native only), timed with `Instant`.
#[cfg(not(target_arch = "wasm32"))]
pub mod blocking {
    use super::*;

    fn clock() -> impl Fn() -> f64 {
        let origin = std::time::Instant::now();
        move || origin.elapsed().as_secs_f64() * 1e3
    }

    /// [`super::run_spec`], blocking until it finishes.
    pub fn run_spec(device: &Device, spec: &TrajectorySpec) -> Result<TrajectoryReport> {
        pollster::block_on(super::run_spec(device, spec, &clock()))
    }

    /// [`super::run_basin`], blocking until it finishes.
    pub fn run_basin(device: &Device, spec: &BasinSpec) -> Result<BasinReport> {
        pollster::block_on(super::run_basin(device, spec, &clock()))
    }
}
