//! The vector operations of an L-BFGS step, and their CPU twin.
//!
//! [`Vectors`] is what the algorithm ([`super::Driver`]) asks of the place the vectors live:
//! the GPU ([`super::gpu::GpuVectors`], kernels in `shaders/lbfgs.wgsl`) or the CPU
//! ([`CpuVectors`], here). Both compute the same float32 operations in the same order,
//! reductions included (blocks of 1,024 elements, a halving tree in each, then the blocks in a
//! fixed order), so the CPU twin equals the GPU bit for bit on IEEE adapters.

use crate::error::{Error, Result};

/// Register indices (`shaders/lbfgs.wgsl` names the same).
pub(crate) mod register {
    /// The closure's loss.
    pub const LOSS: usize = 0;
    /// max |g| of the last gathered gradient.
    pub const MAX_G: usize = 1;
    /// Σ |g| of the last gathered gradient.
    pub const SUM_G: usize = 2;
    /// g · d of the last gathered gradient.
    pub const GTD_NEW: usize = 3;
    /// y · s of the last history pair.
    pub const YS: usize = 4;
    /// y · y of the last history pair.
    pub const YY: usize = 5;
    /// The scale of the initial inverse Hessian.
    pub const H_DIAG: usize = 6;
    /// flat_grad · d of the new direction.
    pub const GTD: usize = 7;
    /// max |d| of the new direction.
    pub const D_NORM: usize = 8;
    /// al[i] − be_i of the second loop.
    pub const COEF: usize = 9;
    /// Registers read back by [`super::Vectors::read`]; `ro` and `al` follow.
    pub const HEADER: usize = 16;
    /// The `op.coef_register` meaning "no register".
    pub const NONE: u32 = u32::MAX;
}

/// Invocations per workgroup.
pub(crate) const WORKGROUP: usize = 256;

/// A flat vector of the step: the parameters, the gradient the closure writes, or a work
/// vector (`d`, `q`, a history entry, a gathered gradient, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vector {
    Param,
    Grad,
    Work(usize),
}

/// A coefficient: `scale`, or `scale · registers[register]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coef {
    pub scale: f32,
    pub register: Option<usize>,
}

impl Coef {
    pub fn constant(scale: f32) -> Self {
        Coef {
            scale,
            register: None,
        }
    }

    pub fn register(register: usize, scale: f32) -> Self {
        Coef {
            scale,
            register: Some(register),
        }
    }

    pub(crate) fn value(self, registers: &[f32]) -> f32 {
        match self.register {
            None => self.scale,
            Some(r) => self.scale * registers[r],
        }
    }
}

/// What `finalize` writes from a reduction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Finalize {
    /// `SUM_G`, `GTD_NEW`, `MAX_G`.
    Gather,
    /// `YS`, `YY`; and when `ys > 1e-10`, `ro[slot] = 1 / ys` and `H_DIAG = ys / yy`.
    History(usize),
    /// `al[slot] = dot · ro[slot]`.
    Alpha(usize),
    /// `COEF = al[slot] − dot · ro[slot]`.
    Beta(usize),
    /// `GTD`, `D_NORM`.
    Direction,
}

impl Finalize {
    pub(crate) fn code(self) -> u32 {
        match self {
            Finalize::Gather => 0,
            Finalize::History(_) => 1,
            Finalize::Alpha(_) => 2,
            Finalize::Beta(_) => 3,
            Finalize::Direction => 4,
        }
    }

    pub(crate) fn slot(self) -> u32 {
        match self {
            Finalize::History(slot) | Finalize::Alpha(slot) | Finalize::Beta(slot) => slot as u32,
            Finalize::Gather | Finalize::Direction => 0,
        }
    }

    /// Writes the registers from a reduction's total `(sum, sum, max, max)`.
    pub(crate) fn apply(
        self,
        total: [f32; 4],
        registers: &mut [f32],
        ro_base: usize,
        al_base: usize,
    ) {
        use register::*;
        match self {
            Finalize::Gather => {
                registers[SUM_G] = total[0];
                registers[GTD_NEW] = total[1];
                registers[MAX_G] = total[2];
            }
            Finalize::History(slot) => {
                let (ys, yy) = (total[0], total[1]);
                registers[YS] = ys;
                registers[YY] = yy;
                if ys > 1e-10 {
                    registers[ro_base + slot] = 1.0 / ys;
                    registers[H_DIAG] = ys / yy;
                }
            }
            Finalize::Alpha(slot) => {
                registers[al_base + slot] = total[0] * registers[ro_base + slot]
            }
            Finalize::Beta(slot) => {
                let be = total[0] * registers[ro_base + slot];
                registers[COEF] = registers[al_base + slot] - be;
            }
            Finalize::Direction => {
                registers[GTD] = total[0];
                registers[D_NORM] = total[2];
            }
        }
    }
}

/// Where the vectors of a step live, and the operations the algorithm records on them.
/// Operations run in the order they are recorded; [`Vectors::read`] waits for them.
#[allow(async_fn_in_trait)]
pub trait Vectors {
    /// What the user's closure receives to evaluate the loss and the gradient.
    type Evaluation<'a>
    where
        Self: 'a;

    /// Elements of every vector (the tensors, each padded to 64 elements).
    fn len(&self) -> usize;
    /// A new work vector, zeroed.
    fn allocate(&mut self) -> Result<usize>;
    /// Work vectors allocated so far.
    fn work_vectors(&self) -> usize;
    /// Where `ro` and `al` start in the registers.
    fn ro_base(&self) -> usize;
    fn al_base(&self) -> usize;

    /// `x = sign · grad`; reduces `Σ|x|`, `x · direction`, `max|x|` into [`Finalize::Gather`].
    fn gather(&mut self, x: Vector, sign: f32, direction: Vector);
    /// `y = g − prev`, `s = d · t`; reduces `y·s`, `y·y` into [`Finalize::History`].
    fn history_pair(
        &mut self,
        y: Vector,
        s: Vector,
        g: Vector,
        prev: Vector,
        d: Vector,
        t: f32,
        slot: usize,
    );
    /// `x = c · v`, then optionally reduces `w · x`, `max|x|`.
    fn scale(&mut self, x: Vector, v: Vector, c: Coef, reduce: Option<(Vector, Finalize)>);
    /// `x = x + c·v` (torch's `x.add_(v, alpha=c)`), then optionally reduces `w · x`, `max|x|`.
    fn axpy(&mut self, x: Vector, v: Vector, c: Coef, reduce: Option<(Vector, Finalize)>);
    /// `registers[index] = value`, in order with the operations.
    fn set_register(&mut self, index: usize, value: f32);
    /// `to = from`.
    fn copy(&mut self, from: Vector, to: Vector);
    /// Runs (or records) the user's closure.
    fn evaluate<F>(&mut self, closure: &mut F) -> Result<()>
    where
        F: for<'a> FnMut(&mut Self::Evaluation<'a>) -> Result<()>;
    /// Submits what is recorded (the step's last parameter update), so that the caller's
    /// own commands see it.
    fn submit(&mut self);
    /// Waits for every operation and returns the header registers: one read.
    async fn read(&mut self) -> Result<[f32; register::HEADER]>;

    /// A vector's values (checkpoints).
    async fn read_vector(&mut self, v: Vector) -> Result<Vec<f32>>;
    /// Every register (checkpoints).
    async fn read_registers(&mut self) -> Result<Vec<f32>>;
    /// Writes a vector (restore); `values.len()` must be [`Vectors::len`].
    fn write_vector(&mut self, v: Vector, values: &[f32]) -> Result<()>;
    /// Writes every register (restore).
    fn write_registers(&mut self, values: &[f32]) -> Result<()>;
    /// Operations recorded since the last call (GPU dispatches; the CPU twin counts the same).
    fn take_dispatches(&mut self) -> usize;
}

/// The reduction order of `shaders/lbfgs.wgsl`: per vec4 index `e`, `value(e)` is an
/// invocation's `(sum, sum, max, max)`; blocks of 256 are tree-reduced, then the blocks are
/// combined by 256 strided accumulators and one more tree.
pub(crate) fn reduce(vec4s: usize, value: impl Fn(usize) -> [f32; 4]) -> [f32; 4] {
    let blocks = vec4s.div_ceil(WORKGROUP);
    let mut partials = Vec::with_capacity(blocks);
    let mut lanes = [[0.0f32; 4]; WORKGROUP];
    for block in 0..blocks {
        for (lid, lane) in lanes.iter_mut().enumerate() {
            let e = block * WORKGROUP + lid;
            *lane = if e < vec4s { value(e) } else { [0.0; 4] };
        }
        partials.push(tree(&mut lanes));
    }
    for (lid, lane) in lanes.iter_mut().enumerate() {
        let mut acc = [0.0f32; 4];
        for partial in partials.iter().skip(lid).step_by(WORKGROUP) {
            acc = combine(acc, *partial);
        }
        *lane = acc;
    }
    tree(&mut lanes)
}

fn combine(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    [a[0] + b[0], a[1] + b[1], a[2].max(b[2]), a[3].max(b[3])]
}

fn tree(lanes: &mut [[f32; 4]; WORKGROUP]) -> [f32; 4] {
    let mut stride = WORKGROUP / 2;
    while stride > 0 {
        for lid in 0..stride {
            lanes[lid] = combine(lanes[lid], lanes[lid + stride]);
        }
        stride /= 2;
    }
    lanes[0]
}

pub(crate) fn lane_sum(p: [f32; 4]) -> f32 {
    ((p[0] + p[1]) + p[2]) + p[3]
}

pub(crate) fn lane_max(p: [f32; 4]) -> f32 {
    p[0].max(p[1]).max(p[2].max(p[3]))
}

fn vec4(values: &[f32], e: usize) -> [f32; 4] {
    [
        values[4 * e],
        values[4 * e + 1],
        values[4 * e + 2],
        values[4 * e + 3],
    ]
}

fn mul4(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    [a[0] * b[0], a[1] * b[1], a[2] * b[2], a[3] * b[3]]
}

fn abs4(a: [f32; 4]) -> [f32; 4] {
    a.map(f32::abs)
}

/// What a [`CpuVectors`] closure receives: the parameters to evaluate at, and where the
/// gradient and the loss go. Slices are by tensor, through [`super::Driver::tensor_range`].
pub struct CpuEvaluation<'a> {
    /// The flat parameters (tensors at their offsets).
    pub params: &'a [f32],
    /// The flat gradient, to be overwritten (not accumulated) by the closure.
    pub grad: &'a mut [f32],
    /// The loss, to be set by the closure.
    pub loss: &'a mut f32,
}

/// The CPU twin of the GPU's vectors.
pub struct CpuVectors {
    len: usize,
    param: Vec<f32>,
    grad: Vec<f32>,
    work: Vec<Vec<f32>>,
    registers: Vec<f32>,
    ring_slots: usize,
    dispatches: usize,
}

impl CpuVectors {
    pub(crate) fn new(param: Vec<f32>, ring_slots: usize) -> Self {
        let len = param.len();
        CpuVectors {
            len,
            grad: vec![0.0; len],
            param,
            work: Vec::new(),
            registers: vec![0.0; register::HEADER + 2 * ring_slots],
            ring_slots,
            dispatches: 0,
        }
    }

    pub(crate) fn params(&self) -> &[f32] {
        &self.param
    }

    fn get(&self, v: Vector) -> &[f32] {
        match v {
            Vector::Param => &self.param,
            Vector::Grad => &self.grad,
            Vector::Work(k) => &self.work[k],
        }
    }

    /// Runs `op(e, x, registers)` over every vec4 of `x`, each returning its reduction value,
    /// then reduces and finalizes when asked.
    fn sweep(
        &mut self,
        x: Vector,
        reduce_into: Option<Finalize>,
        op: impl Fn(usize, &[f32], &[Vec<f32>], &[f32], &[f32]) -> ([f32; 4], [f32; 4]),
    ) {
        let vec4s = self.len / 4;
        let mut out = std::mem::take(match x {
            Vector::Param => &mut self.param,
            Vector::Grad => &mut self.grad,
            Vector::Work(k) => &mut self.work[k],
        });
        let mut values = vec![[0.0f32; 4]; vec4s];
        for (e, value) in values.iter_mut().enumerate() {
            let (written, reduced) = op(e, &out, &self.work, &self.param, &self.grad);
            out[4 * e..4 * e + 4].copy_from_slice(&written);
            *value = reduced;
        }
        match x {
            Vector::Param => self.param = out,
            Vector::Grad => self.grad = out,
            Vector::Work(k) => self.work[k] = out,
        }
        self.dispatches += 1;
        if let Some(finalize) = reduce_into {
            let total = reduce(vec4s, |e| values[e]);
            finalize.apply(
                total,
                &mut self.registers,
                register::HEADER,
                register::HEADER + self.ring_slots,
            );
            self.dispatches += 1;
        }
    }
}

/// A vector by reference from the parts of [`CpuVectors`] (`sweep` holds its output apart).
fn part<'a>(v: Vector, work: &'a [Vec<f32>], param: &'a [f32], grad: &'a [f32]) -> &'a [f32] {
    match v {
        Vector::Param => param,
        Vector::Grad => grad,
        Vector::Work(k) => &work[k],
    }
}

impl Vectors for CpuVectors {
    type Evaluation<'a> = CpuEvaluation<'a>;

    fn len(&self) -> usize {
        self.len
    }

    fn allocate(&mut self) -> Result<usize> {
        self.work.push(vec![0.0; self.len]);
        Ok(self.work.len() - 1)
    }

    fn work_vectors(&self) -> usize {
        self.work.len()
    }

    fn ro_base(&self) -> usize {
        register::HEADER
    }

    fn al_base(&self) -> usize {
        register::HEADER + self.ring_slots
    }

    fn gather(&mut self, x: Vector, sign: f32, direction: Vector) {
        self.sweep(x, Some(Finalize::Gather), |e, _, work, param, grad| {
            let g = vec4(grad, e).map(|value| sign * value);
            let d = vec4(part(direction, work, param, grad), e);
            (
                g,
                [
                    lane_sum(abs4(g)),
                    lane_sum(mul4(g, d)),
                    lane_max(abs4(g)),
                    0.0,
                ],
            )
        });
    }

    fn history_pair(
        &mut self,
        y: Vector,
        s: Vector,
        g: Vector,
        prev: Vector,
        d: Vector,
        t: f32,
        slot: usize,
    ) {
        let vec4s = self.len / 4;
        let mut values = vec![[0.0f32; 4]; vec4s];
        let (gv, pv, dv) = (
            self.get(g).to_vec(),
            self.get(prev).to_vec(),
            self.get(d).to_vec(),
        );
        let (mut yv, mut sv) = (vec![0.0; self.len], vec![0.0; self.len]);
        for (e, value) in values.iter_mut().enumerate() {
            let yy: [f32; 4] = std::array::from_fn(|k| gv[4 * e + k] - pv[4 * e + k]);
            let ss: [f32; 4] = std::array::from_fn(|k| dv[4 * e + k] * t);
            yv[4 * e..4 * e + 4].copy_from_slice(&yy);
            sv[4 * e..4 * e + 4].copy_from_slice(&ss);
            *value = [lane_sum(mul4(yy, ss)), lane_sum(mul4(yy, yy)), 0.0, 0.0];
        }
        for (target, values) in [(y, yv), (s, sv)] {
            match target {
                Vector::Work(k) => self.work[k] = values,
                _ => unreachable!("history pairs are work vectors"),
            }
        }
        let total = reduce(vec4s, |e| values[e]);
        Finalize::History(slot).apply(
            total,
            &mut self.registers,
            register::HEADER,
            register::HEADER + self.ring_slots,
        );
        self.dispatches += 2;
    }

    fn scale(&mut self, x: Vector, v: Vector, c: Coef, reduce: Option<(Vector, Finalize)>) {
        let c = c.value(&self.registers);
        let w = reduce.map(|(w, _)| w);
        self.sweep(x, reduce.map(|(_, f)| f), |e, _, work, param, grad| {
            let r = vec4(part(v, work, param, grad), e).map(|value| c * value);
            let reduced = match w {
                Some(w) => [
                    lane_sum(mul4(vec4(part(w, work, param, grad), e), r)),
                    0.0,
                    lane_max(abs4(r)),
                    0.0,
                ],
                None => [0.0; 4],
            };
            (r, reduced)
        });
    }

    fn axpy(&mut self, x: Vector, v: Vector, c: Coef, reduce: Option<(Vector, Finalize)>) {
        let c = c.value(&self.registers);
        let w = reduce.map(|(w, _)| w);
        self.sweep(x, reduce.map(|(_, f)| f), |e, out, work, param, grad| {
            let vv = vec4(part(v, work, param, grad), e);
            let r: [f32; 4] = std::array::from_fn(|k| out[4 * e + k] + c * vv[k]);
            let reduced = match w {
                Some(w) => [
                    lane_sum(mul4(vec4(part(w, work, param, grad), e), r)),
                    0.0,
                    lane_max(abs4(r)),
                    0.0,
                ],
                None => [0.0; 4],
            };
            (r, reduced)
        });
    }

    fn set_register(&mut self, index: usize, value: f32) {
        self.registers[index] = value;
        self.dispatches += 1;
    }

    fn copy(&mut self, from: Vector, to: Vector) {
        let values = self.get(from).to_vec();
        match to {
            Vector::Param => self.param = values,
            Vector::Grad => self.grad = values,
            Vector::Work(k) => self.work[k] = values,
        }
    }

    fn evaluate<F>(&mut self, closure: &mut F) -> Result<()>
    where
        F: for<'a> FnMut(&mut Self::Evaluation<'a>) -> Result<()>,
    {
        let (mut loss, rest) = (self.registers[register::LOSS], &mut self.registers);
        let mut evaluation = CpuEvaluation {
            params: &self.param,
            grad: &mut self.grad,
            loss: &mut loss,
        };
        closure(&mut evaluation)?;
        rest[register::LOSS] = loss;
        Ok(())
    }

    fn submit(&mut self) {}

    async fn read(&mut self) -> Result<[f32; register::HEADER]> {
        Ok(std::array::from_fn(|k| self.registers[k]))
    }

    async fn read_vector(&mut self, v: Vector) -> Result<Vec<f32>> {
        Ok(self.get(v).to_vec())
    }

    async fn read_registers(&mut self) -> Result<Vec<f32>> {
        Ok(self.registers.clone())
    }

    fn write_vector(&mut self, v: Vector, values: &[f32]) -> Result<()> {
        if values.len() != self.len {
            return Err(Error::SizeMismatch {
                what: "an L-BFGS vector".into(),
                expected: self.len,
                actual: values.len(),
            });
        }
        match v {
            Vector::Param => self.param = values.to_vec(),
            Vector::Grad => self.grad = values.to_vec(),
            Vector::Work(k) => self.work[k] = values.to_vec(),
        }
        Ok(())
    }

    fn write_registers(&mut self, values: &[f32]) -> Result<()> {
        if values.len() != self.registers.len() {
            return Err(Error::SizeMismatch {
                what: "the L-BFGS registers".into(),
                expected: self.registers.len(),
                actual: values.len(),
            });
        }
        self.registers = values.to_vec();
        Ok(())
    }

    fn take_dispatches(&mut self) -> usize {
        std::mem::take(&mut self.dispatches)
    }
}
