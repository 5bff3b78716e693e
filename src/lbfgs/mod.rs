//! `torch.optim.LBFGS` (2.15) on the GPU: limited-memory BFGS with torch's names, defaults,
//! state and branches, and optionally its strong-Wolfe line search.
//!
//! ```text
//! step(closure):
//!   loss, g ← closure()                                     one read: loss, max|g|, Σ|g|
//!   if max|g| ≤ tolerance_grad: return loss
//!   repeat up to max_iter times:
//!     if first iteration ever: d ← −g, H_diag ← 1
//!     else:
//!       y ← g − g_prev,  s ← d·t,  ys ← y·s                 one read: ys
//!       if ys > 1e-10: push (y, s, ro = 1/ys) into the history (drop the oldest beyond
//!                      history_size), H_diag ← ys / y·y
//!       q ← −g
//!       for i = newest … oldest:  al_i ← ro_i · s_i·q,  q ← q − al_i·y_i
//!       d ← r ← H_diag·q
//!       for i = oldest … newest:  be_i ← ro_i · y_i·r,  r ← r + (al_i − be_i)·s_i
//!     g_prev ← g;  t ← min(1, 1/Σ|g|)·lr on the first iteration ever, else lr
//!     gtd ← g·d                                              one read: gtd, max|d|
//!     if gtd > −tolerance_change: stop
//!     strong_wolfe: t, loss, g ← the line search along d    one read per evaluation
//!     or none:      x ← x + t·d;  loss, g ← closure()        one read
//!     stop on max_iter, max_eval, max|g| ≤ tolerance_grad, max|d·t| ≤ tolerance_change,
//!       or |loss − prev_loss| < tolerance_change
//! ```
//!
//! The history (`old_dirs` y, `old_stps` s) lives in GPU buffers; every line above that
//! touches a vector is one kernel of `shaders/lbfgs.wgsl` over the flat parameters of all
//! tensors, fused with the dot product the next line needs. A step's dispatch count depends
//! on the history's length and the evaluations, never on the number of tensors. The CPU reads
//! back only what torch's own code turns into Python numbers to branch on (its `.item()` and
//! `float()` calls): [`LbfgsStep`] reports how many reads a step made.
//!
//! The closure records the user's forward and backward into the command encoder it is given:
//! it reads the parameters through [`Lbfgs::param`], overwrites the gradients through
//! [`Lbfgs::grad`] and writes the loss (one `f32`) into [`Lbfgs::loss_view`].
//! [`CpuLbfgs`] is the CPU twin: the same algorithm over the same float32 operations in the same
//! order, equal to the GPU bit for bit on IEEE adapters.

mod checkpoint;
mod gpu;
pub(crate) mod line_search;
pub(crate) mod scalar;
pub(crate) mod vectors;

use serde::{Deserialize, Serialize};

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::optimizer::TensorView;
use crate::params::{CollectionTag, Parameters, TensorId};

pub use gpu::{GpuVectors, LBFGS_WGSL};
use line_search::Gradient;
pub use scalar::Scalar;
use vectors::{register, Coef, Finalize, Vector, Vectors};
pub use vectors::{CpuEvaluation, CpuVectors};

/// Every tensor starts at a multiple of this many elements (256 bytes), so a tensor's view
/// can be bound by the user's kernels.
const TENSOR_ALIGN: usize = 64;

/// The line search of `line_search_fn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineSearch {
    /// `"strong_wolfe"`: torch's `_strong_wolfe` (c1 = 1e-4, c2 = 0.9).
    #[serde(rename = "strong_wolfe")]
    StrongWolfe,
}

/// torch.optim.LBFGS's hyper-parameters, with its names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LbfgsOptions {
    /// Step length (default 1).
    pub lr: f64,
    /// Most iterations per `step` (default 20).
    pub max_iter: u64,
    /// Most closure evaluations per `step` (default `max_iter * 5 / 4`).
    pub max_eval: Option<u64>,
    /// Stop when `max|g| ≤ tolerance_grad` (default 1e-7).
    pub tolerance_grad: f64,
    /// Stop when a change in loss or position is below this (default 1e-9).
    pub tolerance_change: f64,
    /// Pairs (y, s) kept (default 100).
    pub history_size: usize,
    /// `None` (torch's `None`: fixed step `lr`) or `Some(LineSearch::StrongWolfe)`.
    pub line_search_fn: Option<LineSearch>,
    /// Maximize the closure's value instead (default false).
    pub maximize: bool,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        LbfgsOptions {
            lr: 1.0,
            max_iter: 20,
            max_eval: None,
            tolerance_grad: 1e-7,
            tolerance_change: 1e-9,
            history_size: 100,
            line_search_fn: None,
            maximize: false,
        }
    }
}

impl LbfgsOptions {
    /// torch's `max_eval`: as given, or `max_iter * 5 // 4`.
    pub fn max_eval(&self) -> u64 {
        self.max_eval.unwrap_or(self.max_iter * 5 / 4)
    }

    /// From torch's keyword arguments as JSON (`{"history_size": 10, "line_search_fn":
    /// "strong_wolfe"}`); unknown keys and invalid values are errors.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let options: LbfgsOptions = serde_path_to_error::deserialize(value.clone())
            .map_err(|e| Error::Config(format!("LBFGS hyper-parameters: {e} (at {})", e.path())))?;
        options.validate()?;
        Ok(options)
    }

    /// torch's check (`0 ≤ lr`) and what its code needs to run: finite tolerances, a history
    /// of at least one pair, and with a line search at least one evaluation.
    pub fn validate(&self) -> Result<()> {
        let invalid = |name: &'static str, value: String, requirement: &'static str| {
            Err(Error::InvalidHyperparameter {
                optimizer: "LBFGS",
                name,
                value,
                requirement,
            })
        };
        if !(self.lr >= 0.0) || !self.lr.is_finite() {
            return invalid("lr", self.lr.to_string(), "must be finite and >= 0");
        }
        if !self.tolerance_grad.is_finite() {
            return invalid(
                "tolerance_grad",
                self.tolerance_grad.to_string(),
                "must be finite",
            );
        }
        if !self.tolerance_change.is_finite() {
            return invalid(
                "tolerance_change",
                self.tolerance_change.to_string(),
                "must be finite",
            );
        }
        if self.history_size == 0 {
            return invalid("history_size", "0".into(), "must be at least 1");
        }
        if self.line_search_fn.is_some() && self.max_eval() == 0 {
            return invalid(
                "max_eval",
                "0".into(),
                "must be at least 1 with line_search_fn=\"strong_wolfe\"",
            );
        }
        Ok(())
    }
}

/// What one `step` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LbfgsStep {
    /// Times the CPU waited for scalars from the GPU (one `map_async` each).
    pub reads: usize,
    /// Kernel dispatches of the optimizer (not counting the closure's own).
    pub dispatches: usize,
    /// Closure evaluations (torch's `current_evals`).
    pub evaluations: u64,
    /// Iterations (torch's local `n_iter`).
    pub iterations: u64,
    /// The closure's loss where the step ended (torch's local `loss`, as the closure returned
    /// it): already read, so free. After an iteration without a line search that stopped at
    /// `max_iter`, the point moved once more without an evaluation (as in torch); this is then
    /// the loss before that move.
    pub last_loss: f32,
}

/// torch's state of an L-BFGS run, beyond the vectors: `func_evals`, `n_iter`, `t`,
/// `prev_loss`, and the history's order.
#[derive(Clone, Debug, Default, PartialEq)]
struct State {
    func_evals: u64,
    n_iter: u64,
    t: Option<Scalar>,
    prev_loss: Option<f64>,
    /// History slots, oldest first (`old_dirs`, `old_stps`, `ro`).
    history: Vec<usize>,
    prev_flat_grad: Option<Vector>,
}

/// L-BFGS over vectors `B`: [`Lbfgs`] on the GPU, [`CpuLbfgs`] on the CPU.
pub struct Driver<B: Vectors> {
    vectors: B,
    options: LbfgsOptions,
    tensors: Vec<(String, Vec<usize>, usize)>,
    tag: CollectionTag,
    state: State,
    /// d, q and (with a line search) x_init.
    direction: Vector,
    q: Vector,
    x_init: Option<Vector>,
    /// Per history slot: (y, s). history_size + 1 slots: a new pair is written before torch
    /// decides whether it joins the history.
    ring: Vec<(Vector, Vector)>,
    /// Vectors gradients are gathered into.
    gradients: Vec<Vector>,
    report: LbfgsStep,
}

/// torch.optim.LBFGS on the GPU.
///
/// ```no_run
/// use wgpu_optim::{BackendChoice, GpuContext, Lbfgs, LbfgsOptions, Parameters};
/// let gpu = GpuContext::new(BackendChoice::Auto)?;
/// let mut params = Parameters::new();
/// let x = params.add("x", &[2], vec![-1.2, 1.0])?;
/// let mut lbfgs = Lbfgs::new(&gpu, params, LbfgsOptions::default())?;
/// let (param, grad, loss) = (lbfgs.param(x)?, lbfgs.grad(x)?, lbfgs.loss_view());
/// # let record_rosenbrock = |_: &mut wgpu::CommandEncoder, _: &wgpu_optim::TensorView, _: &wgpu_optim::TensorView, _: &wgpu_optim::TensorView| {};
/// for _ in 0..10 {
///     // The closure records the forward and backward: reads `param`, writes `grad` and `loss`.
///     let loss = lbfgs.step(|encoder| Ok(record_rosenbrock(encoder, &param, &grad, &loss)))?;
///     println!("{loss} after {} reads", lbfgs.last_step().reads);
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub type Lbfgs = Driver<GpuVectors>;

/// torch.optim.LBFGS on the CPU: the twin of [`Lbfgs`].
pub type CpuLbfgs = Driver<CpuVectors>;

/// Places the tensors at 64-element boundaries: names, shapes, offsets, and the flat values.
fn pack(params: Parameters) -> Result<(Vec<(String, Vec<usize>, usize)>, Vec<f32>, CollectionTag)> {
    let tag = params.tag();
    let specs = params.into_specs();
    if specs.is_empty() {
        return Err(Error::Tensor(
            "L-BFGS needs at least one parameter tensor".into(),
        ));
    }
    let mut flat = Vec::new();
    let mut tensors = Vec::new();
    for spec in specs {
        let offset = flat.len();
        flat.extend_from_slice(&spec.data);
        flat.resize(
            offset + spec.data.len().div_ceil(TENSOR_ALIGN).max(1) * TENSOR_ALIGN,
            0.0,
        );
        tensors.push((spec.name, spec.shape, offset));
    }
    Ok((tensors, flat, tag))
}

impl Lbfgs {
    /// Places the parameters on the GPU and compiles the kernels.
    pub fn new(gpu: &GpuContext, params: Parameters, options: LbfgsOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(gpu, params, options))
    }

    /// [`Lbfgs::new`] for the browser.
    pub async fn new_async(
        gpu: &GpuContext,
        params: Parameters,
        options: LbfgsOptions,
    ) -> Result<Self> {
        options.validate()?;
        let (tensors, flat, tag) = pack(params)?;
        let vectors = GpuVectors::new(gpu, &flat, options.history_size + 1).await?;
        Driver::with_vectors(vectors, options, tensors, tag)
    }

    /// One step: `closure` records the loss and gradient at the current parameters into the
    /// encoder it is given. Returns the loss of the first evaluation, as torch's `step` does.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step<F>(&mut self, closure: F) -> Result<f32>
    where
        F: FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
    {
        pollster::block_on(self.step_async(closure))
    }

    /// [`Lbfgs::step`] for the browser.
    pub async fn step_async<F>(&mut self, closure: F) -> Result<f32>
    where
        F: FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
    {
        self.run_step(closure).await
    }

    /// The GPU context.
    pub fn gpu(&self) -> &GpuContext {
        self.vectors.gpu()
    }

    /// Where a parameter tensor lives (bindable: 256-byte aligned). The buffers behind
    /// `param`, `grad` and `loss_view` have usages `STORAGE | COPY_SRC | COPY_DST`.
    pub fn param(&self, id: TensorId) -> Result<TensorView> {
        let (offset, len) = self.placement(id)?;
        Ok(TensorView {
            buffer: self.vectors.param_buffer().clone(),
            offset: offset as u64 * 4,
            len,
            dtype: crate::storage::Dtype::F32,
        })
    }

    /// Where the closure writes a tensor's gradient (overwritten, not accumulated).
    pub fn grad(&self, id: TensorId) -> Result<TensorView> {
        let (offset, len) = self.placement(id)?;
        Ok(TensorView {
            buffer: self.vectors.grad_buffer().clone(),
            offset: offset as u64 * 4,
            len,
            dtype: crate::storage::Dtype::F32,
        })
    }

    /// Where the closure writes the loss: one `f32`.
    pub fn loss_view(&self) -> TensorView {
        TensorView {
            buffer: self.vectors.registers_buffer().clone(),
            offset: 0,
            len: 1,
            dtype: crate::storage::Dtype::F32,
        }
    }
}

impl CpuLbfgs {
    /// The CPU twin of [`Lbfgs::new`].
    pub fn new(params: Parameters, options: LbfgsOptions) -> Result<Self> {
        options.validate()?;
        let (tensors, flat, tag) = pack(params)?;
        let vectors = CpuVectors::new(flat, options.history_size + 1);
        Driver::with_vectors(vectors, options, tensors, tag)
    }

    /// One step; `closure` reads `evaluation.params` and sets `evaluation.grad` and
    /// `evaluation.loss` (slices of a tensor through [`CpuLbfgs::tensor_range`]).
    pub fn step<F>(&mut self, closure: F) -> Result<f32>
    where
        F: FnMut(&mut CpuEvaluation<'_>) -> Result<()>,
    {
        pollster::block_on(self.run_step(closure))
    }

    /// The flat parameters (every tensor at its [`CpuLbfgs::tensor_range`]).
    pub fn params(&self) -> &[f32] {
        self.vectors.params()
    }
}

impl<B: Vectors> Driver<B> {
    fn with_vectors(
        mut vectors: B,
        options: LbfgsOptions,
        tensors: Vec<(String, Vec<usize>, usize)>,
        tag: CollectionTag,
    ) -> Result<Self> {
        let direction = Vector::Work(vectors.allocate()?);
        let q = Vector::Work(vectors.allocate()?);
        Ok(Driver {
            vectors,
            options,
            tensors,
            tag,
            state: State::default(),
            direction,
            q,
            x_init: None,
            ring: Vec::new(),
            gradients: Vec::new(),
            report: LbfgsStep::default(),
        })
    }

    /// The hyper-parameters.
    pub fn options(&self) -> &LbfgsOptions {
        &self.options
    }

    /// What the last `step` did: reads, dispatches, evaluations, iterations.
    pub fn last_step(&self) -> LbfgsStep {
        self.report
    }

    /// torch's `state["func_evals"]`: closure evaluations of every step so far.
    pub fn func_evals(&self) -> u64 {
        self.state.func_evals
    }

    /// torch's `state["n_iter"]`: iterations of every step so far.
    pub fn n_iter(&self) -> u64 {
        self.state.n_iter
    }

    /// Pairs in the history (`len(old_dirs)`).
    pub fn history_len(&self) -> usize {
        self.state.history.len()
    }

    /// Elements of every flat vector: the tensors, each padded to 64 elements.
    pub fn flat_len(&self) -> usize {
        self.vectors.len()
    }

    /// Bytes of GPU (or CPU) memory the vectors take now: parameters, gradient and the work
    /// vectors allocated so far (history, direction, gathered gradients).
    pub fn memory_bytes(&self) -> u64 {
        (2 + self.vectors.work_vectors()) as u64 * self.vectors.len() as u64 * 4
    }

    /// A tensor's element range in the flat vectors.
    pub fn tensor_range(&self, id: TensorId) -> Result<std::ops::Range<usize>> {
        let (offset, len) = self.placement(id)?;
        Ok(offset..offset + len)
    }

    fn placement(&self, id: TensorId) -> Result<(usize, usize)> {
        let (_, shape, offset) = id.lookup(self.tag, &self.tensors)?;
        Ok((*offset, shape.iter().product()))
    }

    /// Reads a parameter tensor back.
    pub async fn read_param_async(&mut self, id: TensorId) -> Result<Vec<f32>> {
        let (offset, len) = self.placement(id)?;
        let all = self.vectors.read_vector(Vector::Param).await?;
        Ok(all[offset..offset + len].to_vec())
    }

    /// Reads a parameter tensor back.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_param(&mut self, id: TensorId) -> Result<Vec<f32>> {
        pollster::block_on(self.read_param_async(id))
    }

    async fn read(&mut self) -> Result<[f32; register::HEADER]> {
        self.report.reads += 1;
        self.vectors.read().await
    }

    /// A gathered-gradient vector that no live handle (nor `prev_flat_grad`) refers to.
    fn fresh_gradient(&mut self, live: &[Vector]) -> Result<Vector> {
        let taken = |v: &Vector| live.contains(v) || self.state.prev_flat_grad == Some(*v);
        if let Some(free) = self.gradients.iter().find(|v| !taken(v)) {
            return Ok(*free);
        }
        let vector = Vector::Work(self.vectors.allocate()?);
        self.gradients.push(vector);
        Ok(vector)
    }

    /// A history slot not in the history, for the next pair.
    fn free_slot(&mut self) -> Result<usize> {
        if let Some(slot) = (0..self.ring.len()).find(|slot| !self.state.history.contains(slot)) {
            return Ok(slot);
        }
        let y = Vector::Work(self.vectors.allocate()?);
        let s = Vector::Work(self.vectors.allocate()?);
        self.ring.push((y, s));
        Ok(self.ring.len() - 1)
    }

    /// Runs the closure and gathers its gradient (negated with `maximize`): returns the
    /// closure's loss as it wrote it, the gradient, and `Σ|g|`. One read.
    async fn evaluate<F>(
        &mut self,
        closure: &mut F,
        live: &[Vector],
    ) -> Result<(f32, Gradient, f32)>
    where
        F: for<'a> FnMut(&mut B::Evaluation<'a>) -> Result<()>,
    {
        self.vectors.evaluate(closure)?;
        self.gathered(live).await
    }

    async fn gathered(&mut self, live: &[Vector]) -> Result<(f32, Gradient, f32)> {
        let vector = self.fresh_gradient(live)?;
        let sign = if self.options.maximize { -1.0 } else { 1.0 };
        self.vectors.gather(vector, sign, self.direction);
        let registers = self.read().await?;
        let sum_abs = registers[register::SUM_G];
        // max() may drop a NaN where torch's propagates it; the sum keeps it.
        let max_abs = if sum_abs.is_nan() {
            f32::NAN
        } else {
            registers[register::MAX_G]
        };
        let gradient = Gradient {
            vector,
            gtd: Scalar::Tensor(registers[register::GTD_NEW]),
            max_abs,
        };
        Ok((registers[register::LOSS], gradient, sum_abs))
    }

    /// torch's `_directional_evaluate`: the loss (negated with `maximize`) and gradient at
    /// `x_init + t·d`, after which the parameters are `x_init` again.
    pub(crate) async fn directional_evaluate<F>(
        &mut self,
        closure: &mut F,
        t: Scalar,
        live: &[Vector],
    ) -> Result<(Scalar, Gradient)>
    where
        F: for<'a> FnMut(&mut B::Evaluation<'a>) -> Result<()>,
    {
        let x_init = self.x_init.expect("the line search saved x_init");
        self.vectors.axpy(
            Vector::Param,
            self.direction,
            Coef::constant(t.to_f32()),
            None,
        );
        self.vectors.evaluate(closure)?;
        let vector = self.fresh_gradient(live)?;
        let sign = if self.options.maximize { -1.0 } else { 1.0 };
        self.vectors.gather(vector, sign, self.direction);
        self.vectors.copy(x_init, Vector::Param);
        let registers = self.read().await?;
        let loss = self.signed_loss(registers[register::LOSS]);
        let sum_abs = registers[register::SUM_G];
        let max_abs = if sum_abs.is_nan() {
            f32::NAN
        } else {
            registers[register::MAX_G]
        };
        Ok((
            Scalar::Float(loss),
            Gradient {
                vector,
                gtd: Scalar::Tensor(registers[register::GTD_NEW]),
                max_abs,
            },
        ))
    }

    fn signed_loss(&self, loss: f32) -> f64 {
        if self.options.maximize {
            -f64::from(loss)
        } else {
            f64::from(loss)
        }
    }

    /// The two-loop recursion: `d ← −H·g` from the history, then `gtd = g·d`, `max|d|`.
    fn two_loop(&mut self, g: Vector) {
        let (d, q) = (self.direction, self.q);
        let history: Vec<usize> = self.state.history.clone();
        let al_base = self.vectors.al_base();
        let al = |slot: usize| Coef::register(al_base + slot, -1.0);
        let Some((&newest, _)) = history.split_last() else {
            self.vectors.scale(q, g, Coef::constant(-1.0), None);
            self.vectors.scale(
                d,
                q,
                Coef::register(register::H_DIAG, 1.0),
                Some((g, Finalize::Direction)),
            );
            return;
        };
        // q ← −g; al_i ← ro_i · s_i·q, q ← q − al_i·y_i, newest first.
        self.vectors.scale(
            q,
            g,
            Coef::constant(-1.0),
            Some((self.ring[newest].1, Finalize::Alpha(newest))),
        );
        for i in (0..history.len()).rev() {
            let slot = history[i];
            let next =
                (i > 0).then(|| (self.ring[history[i - 1]].1, Finalize::Alpha(history[i - 1])));
            self.vectors.axpy(q, self.ring[slot].0, al(slot), next);
        }
        // d ← r ← H_diag·q; be_i ← ro_i · y_i·r, r ← r + (al_i − be_i)·s_i, oldest first.
        let oldest = history[0];
        self.vectors.scale(
            d,
            q,
            Coef::register(register::H_DIAG, 1.0),
            Some((self.ring[oldest].0, Finalize::Beta(oldest))),
        );
        for i in 0..history.len() {
            let next = match history.get(i + 1) {
                Some(&slot) => (self.ring[slot].0, Finalize::Beta(slot)),
                None => (g, Finalize::Direction),
            };
            self.vectors.axpy(
                d,
                self.ring[history[i]].1,
                Coef::register(register::COEF, 1.0),
                Some(next),
            );
        }
    }

    async fn run_step<F>(&mut self, mut closure: F) -> Result<f32>
    where
        F: for<'a> FnMut(&mut B::Evaluation<'a>) -> Result<()>,
    {
        self.report = LbfgsStep::default();
        self.vectors.take_dispatches();
        let result = self.step_body(&mut closure).await;
        self.vectors.submit();
        self.report.dispatches = self.vectors.take_dispatches();
        result
    }

    async fn step_body<F>(&mut self, closure: &mut F) -> Result<f32>
    where
        F: for<'a> FnMut(&mut B::Evaluation<'a>) -> Result<()>,
    {
        use Scalar::{Float, Tensor};
        let o = self.options.clone();
        let max_eval = o.max_eval();

        // evaluate initial f(x) and df/dx
        let (orig_loss, mut flat_grad, flat_grad_sum) = self.evaluate(closure, &[]).await?;
        let mut loss = self.signed_loss(orig_loss);
        self.report.last_loss = orig_loss;
        let mut current_evals = 1;
        self.state.func_evals += 1;
        self.report.evaluations = current_evals;
        let mut opt_cond = Tensor(flat_grad.max_abs).le(Float(o.tolerance_grad));
        // optimal condition
        if opt_cond {
            return Ok(orig_loss);
        }

        let mut n_iter = 0;
        while n_iter < o.max_iter {
            n_iter += 1;
            self.state.n_iter += 1;
            self.report.iterations = n_iter;

            // compute gradient descent direction
            if self.state.n_iter == 1 {
                self.vectors.scale(
                    self.direction,
                    flat_grad.vector,
                    Coef::constant(-1.0),
                    Some((flat_grad.vector, Finalize::Direction)),
                );
                self.state.history.clear();
                self.vectors.set_register(register::H_DIAG, 1.0);
            } else {
                // do lbfgs update (update memory)
                let slot = self.free_slot()?;
                let (y, s) = self.ring[slot];
                let prev = self
                    .state
                    .prev_flat_grad
                    .expect("a previous gradient after the first iteration");
                let t = self
                    .state
                    .t
                    .expect("a step length after the first iteration");
                self.vectors.history_pair(
                    y,
                    s,
                    flat_grad.vector,
                    prev,
                    self.direction,
                    t.to_f32(),
                    slot,
                );
                let ys = self.read().await?[register::YS];
                if Tensor(ys).gt(Float(1e-10)) {
                    if self.state.history.len() == o.history_size {
                        self.state.history.remove(0);
                    }
                    self.state.history.push(slot);
                }
                self.two_loop(flat_grad.vector);
            }
            self.state.prev_flat_grad = Some(flat_grad.vector);
            let prev_loss = loss;
            self.state.prev_loss = Some(prev_loss);

            // compute step length
            let t = if self.state.n_iter == 1 {
                Float(1.0).min(1.0 / Tensor(flat_grad_sum)) * o.lr
            } else {
                Float(o.lr)
            };
            self.state.t = Some(t);

            // directional derivative
            let registers = self.read().await?;
            let gtd = Tensor(registers[register::GTD]);
            let d_norm = Tensor(registers[register::D_NORM]);
            if gtd.gt(Float(-o.tolerance_change)) {
                break;
            }

            let ls_func_evals;
            let mut t = t;
            if o.line_search_fn.is_some() {
                let x_init = match self.x_init {
                    Some(x) => x,
                    None => *self.x_init.insert(Vector::Work(self.vectors.allocate()?)),
                };
                self.vectors.copy(Vector::Param, x_init);
                let max_ls = max_eval as i64 - current_evals as i64;
                let found = self
                    .strong_wolfe(closure, t, Float(loss), flat_grad, gtd, d_norm, max_ls)
                    .await?;
                loss = found.loss.to_f64();
                flat_grad = found.grad;
                t = found.t;
                self.state.t = Some(t);
                self.vectors.axpy(
                    Vector::Param,
                    self.direction,
                    Coef::constant(t.to_f32()),
                    None,
                );
                opt_cond = Tensor(flat_grad.max_abs).le(Float(o.tolerance_grad));
                ls_func_evals = found.evaluations;
            } else {
                // no line search, simply move with fixed-step
                self.vectors.axpy(
                    Vector::Param,
                    self.direction,
                    Coef::constant(t.to_f32()),
                    None,
                );
                if n_iter != o.max_iter {
                    let (raw, gradient, _) = self.evaluate(closure, &[]).await?;
                    loss = self.signed_loss(raw);
                    flat_grad = gradient;
                    opt_cond = Tensor(flat_grad.max_abs).le(Float(o.tolerance_grad));
                    ls_func_evals = 1;
                } else {
                    ls_func_evals = 0;
                }
            }
            self.report.last_loss = self.signed_loss(loss as f32) as f32;
            // update func eval
            current_evals += ls_func_evals;
            self.state.func_evals += ls_func_evals;
            self.report.evaluations = current_evals;

            // check conditions
            if n_iter == o.max_iter || current_evals >= max_eval || opt_cond {
                break;
            }
            // lack of progress
            if (d_norm * t).abs().le(Float(o.tolerance_change)) {
                break;
            }
            if (loss - prev_loss).abs() < o.tolerance_change {
                break;
            }
        }
        Ok(orig_loss)
    }
}
