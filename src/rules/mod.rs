//! Update rules. Each file holds one `torch.optim` class: its hyper-parameters with torch's
//! names and defaults, torch's validation, the per-step scalars computed on the CPU in f64 (as
//! torch does with Python floats), and a scalar CPU reference that follows the same formula as
//! the WGSL kernel in `shaders/<rule>.wgsl`.
//!
//! The dispatcher sees a rule only through [`UpdateRule`]; it imports no rule.

use std::fmt;

use crate::error::{Error, Result};

/// The [`UpdateRule`] methods that read every rule's `lr` field and serde derive.
macro_rules! common_rule_methods {
    () => {
        fn lr(&self) -> f64 {
            self.lr
        }

        fn set_lr(&mut self, lr: f64) {
            self.lr = lr;
        }

        fn hyperparameters(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("hyper-parameters are plain numbers and flags")
        }

        fn clone_box(&self) -> Box<dyn UpdateRule> {
            Box::new(self.clone())
        }
    };
}

/// The [`UpdateRule`] momentum methods of rules with `betas`: torch's `CyclicLR` and
/// `OneCycleLR` cycle `betas[0]` (any value in [0, 1) suits the kernel; `validate` checks it).
macro_rules! beta1_cycled_momentum {
    () => {
        fn cycled_momentum(&self) -> Option<super::CycledMomentum> {
            Some(super::CycledMomentum { key: "betas[0]", value: self.betas.0 })
        }

        fn set_cycled_momentum(&mut self, value: f64) -> crate::error::Result<()> {
            self.betas.0 = value;
            Ok(())
        }
    };
}

/// The step tag of a [`StepTerms`]: kernels compare it with the GPU's step count.
pub(crate) fn step_tag(step: u64) -> u32 {
    u32::try_from(step).expect("fewer than 2^32 steps")
}

mod adadelta;
mod adafactor;
mod adagrad;
mod adam;
mod adamax;
mod adan;
mod asgd;
mod lamb;
mod lion;
mod muon;
mod nadam;
mod radam;
mod reduce;
mod rmsprop;
mod rprop;
mod schedulefree;
mod sgd;
mod sparse_adam;

pub use adadelta::Adadelta;
pub use adafactor::Adafactor;
pub use adagrad::Adagrad;
pub use adam::{Adam, AdamW};
pub use adamax::Adamax;
pub use adan::Adan;
pub use asgd::Asgd;
pub use lamb::Lamb;
pub use lion::Lion;
pub use muon::{AdjustLr, Muon, NsPrecision};
pub use nadam::NAdam;
pub use radam::RAdam;
pub use rmsprop::RMSprop;
pub use rprop::Rprop;
pub use schedulefree::AdamWScheduleFree;
pub use sgd::Sgd;
pub use sparse_adam::SparseAdam;

/// WGSL shared by every kernel; prepended to each rule's source.
pub const COMMON_WGSL: &str = concat!(include_str!("../../shaders/control.wgsl"), "\n", include_str!("../../shaders/common.wgsl"));

/// Elements one kernel invocation updates (one `vec4<f32>`).
pub const ELEMENTS_PER_INVOCATION: u32 = 4;
/// Invocations per workgroup; must equal `WORKGROUP_SIZE` in `shaders/common.wgsl`.
pub const WORKGROUP_SIZE: u32 = 256;
/// Elements one workgroup of a [`Scope::Elements`] pass covers: a *chunk*. Rules that work per
/// tensor ([`Kernel::per_tensor`]) get every tensor started at a chunk boundary, so that no
/// workgroup straddles two tensors.
pub const CHUNK_ELEMENTS: u32 = WORKGROUP_SIZE * ELEMENTS_PER_INVOCATION;
/// Bytes of a group's per-step scalars: the uniform slot each recorded step gets (WebGPU's
/// `min_uniform_buffer_offset_alignment`, so a smaller slot would save nothing).
pub const SCALARS_BYTES: usize = 256;

/// The per-step scalars of one parameter group, as the kernel's uniform block sees them: the
/// step's [`StepTerms`] first, then what depends on the learning rate and hyper-parameters.
/// Each rule writes its own `#[repr(C)]` struct (at most [`SCALARS_BYTES`]) with
/// [`StepScalars::of`] and reads it back with [`StepScalars::get`].
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepScalars(pub [u32; SCALARS_BYTES / 4]);

impl Default for StepScalars {
    fn default() -> Self {
        StepScalars([0; SCALARS_BYTES / 4])
    }
}

impl StepScalars {
    /// The scalars holding `value` (zero-padded).
    pub fn of<T: bytemuck::Pod>(value: &T) -> Self {
        let bytes = bytemuck::bytes_of(value);
        assert!(bytes.len() <= SCALARS_BYTES, "a rule's scalars exceed {SCALARS_BYTES} bytes");
        let mut scalars = StepScalars::default();
        bytemuck::bytes_of_mut(&mut scalars)[..bytes.len()].copy_from_slice(bytes);
        scalars
    }

    /// The rule's struct back.
    pub fn get<T: bytemuck::Pod>(&self) -> T {
        bytemuck::pod_read_unaligned(&bytemuck::bytes_of(self)[..std::mem::size_of::<T>()])
    }
}

/// What depends on the step number t alone (bias corrections, NAdam's momentum products,
/// Adagrad's decay), 16 bytes: t as a `u32`, then three rule-specific values. When the step
/// count lives on the GPU (gradient conditioning with skipped steps), kernels look these up
/// by t in a ring the CPU fills ahead, and check the tag.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepTerms(pub [u32; 4]);

/// Running values carried from step t to t+1 so that [`UpdateRule::step_terms`] costs O(1)
/// per step: NAdam's float32 `mu_product`, Schedule-Free's `weight_sum` and `lr_max`.
/// `values` hold what they are after step `step` (`step == 0`: nothing computed yet, the
/// rule's initial values apply), `previous` what they were after step `step - 1`, so that a
/// step's terms can be computed again with a new lr.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TermsMemo {
    /// The last step whose values are recorded (0: none yet).
    pub step: u64,
    /// The running values after step `step`.
    pub values: [f64; 2],
    /// The running values after step `step - 1`.
    pub previous: [f64; 2],
}

impl TermsMemo {
    /// The values after step `step - 1` (those step `step` starts from), when known.
    pub fn before(&self, step: u64) -> Option<[f64; 2]> {
        if self.step + 1 == step {
            Some(self.values)
        } else if self.step == step && step >= 2 {
            Some(self.previous)
        } else {
            None
        }
    }

    /// Records the values after step `step`, computed from `base` (the values after `step - 1`).
    pub fn advance(&mut self, step: u64, base: [f64; 2], values: [f64; 2]) {
        *self = TermsMemo { step, values, previous: base };
    }
}

/// Where a pass runs, and so how the dispatcher sizes its grid.
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    /// One invocation per `vec4` of every arena window: the element-wise sweep, one dispatch
    /// per window whatever the number of tensors in it.
    Elements,
    /// One workgroup per tensor: an arena's dispatch has as many workgroups as the arena has
    /// tensors (the finish of a per-tensor reduction, a loop over a matrix's rows).
    Tensors,
    /// Over batches of same-shape matrices: `grid(shape)` workgroups per matrix, times the
    /// matrices of the batch (the grid's z). Dispatches grow with the number of distinct
    /// shapes, not with the number of tensors.
    Matrices {
        /// The (x, y) workgroup grid of one matrix of the given shape.
        grid: fn(&[usize]) -> (u32, u32),
    },
    /// One workgroup, once per step and group.
    Once,
}

/// One pass of a rule: a WGSL entry point and where it runs. A rule's passes run in order,
/// each seeing what the previous ones wrote.
#[derive(Clone, Debug)]
pub struct Pass {
    /// The WGSL entry point (`@compute fn`) the pass dispatches.
    pub entry: &'static str,
    /// Where the pass runs, which sizes its grid.
    pub scope: Scope,
    /// Eight words the pass reads as `dispatch.args` (e.g. which scratch matrices a
    /// multiplication reads and writes, and its coefficients as `f32` bits).
    pub args: [u32; 8],
}

impl Pass {
    /// A pass of `entry` over `scope`, with its `dispatch.args` words zero.
    pub fn new(entry: &'static str, scope: Scope) -> Self {
        Pass { entry, scope, args: [0; 8] }
    }

    /// The pass with its `dispatch.args` words.
    pub fn with_args(mut self, args: [u32; 8]) -> Self {
        self.args = args;
        self
    }
}

/// The binding of a rule's first per-element state array (see `shaders/common.wgsl`).
pub const FIRST_STATE_BINDING: u32 = 6;

/// The kernel of a rule configuration: one WGSL source and the passes that run it.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// Shader label (e.g. `"adam"`).
    pub label: &'static str,
    /// The rule's WGSL (without [`COMMON_WGSL`]).
    pub source: &'static str,
    /// Per-element state arrays the shader declares, in binding order from
    /// [`FIRST_STATE_BINDING`]; a configuration binds those its [`UpdateRule::state_slots`] keeps.
    pub state_bindings: &'static [&'static str],
    /// Values of the shader's `override` flags for this configuration.
    pub flags: Vec<(&'static str, bool)>,
    /// The passes of one step, in order.
    pub passes: Vec<Pass>,
    /// Tensors start at chunk boundaries, and each gets reduction partials (one `vec4` per
    /// chunk) and four per-tensor scalars in the auxiliary buffer.
    pub per_tensor: bool,
    /// Its per-tensor or matrix passes read a tensor's elements (Adafactor's rows, Muon's
    /// matrices), so each tensor must lie in one storage binding. Without it (Lamb, whose
    /// per-tensor pass reads only partial sums) a tensor larger than a binding is swept in windows.
    pub whole_tensors: bool,
    /// The passes that switch the parameters the model reads between training and
    /// evaluation (Schedule-Free's y and x), run by `Optimizer::train` and `Optimizer::eval`.
    pub mode_switch: Option<ModeSwitch>,
    /// Gradients are row-sparse (SparseAdam): each tensor has a mask of the rows its gradient
    /// touches this step, one `u32` per row in the aux buffer (see [`sparse_rows`]), and the
    /// step leaves the other rows' parameters and state untouched.
    pub sparse_rows: bool,
}

/// The two passes of a [`Kernel::mode_switch`], each an element pass whose `dispatch.args`
/// the rule fills (e.g. the interpolation weight as `f32` bits).
#[derive(Clone, Debug)]
pub struct ModeSwitch {
    /// From evaluation to training parameters (Schedule-Free: x to y).
    pub to_train: Pass,
    /// From training to evaluation parameters (Schedule-Free: y to x).
    pub to_eval: Pass,
}

/// The rows of a tensor as a row-sparse gradient sees them: rows of its last dimension (an
/// embedding table's rows), or single elements for a vector. Returns (rows, row length).
pub fn sparse_rows(shape: &[usize]) -> (usize, usize) {
    let len: usize = shape.iter().product();
    match shape.len() {
        0 | 1 => (len, 1),
        n => (len / shape[n - 1].max(1), shape[n - 1]),
    }
}

impl Kernel {
    /// An element-wise rule: one pass, `main`, over every element.
    pub fn element_wise(
        label: &'static str,
        source: &'static str,
        state_bindings: &'static [&'static str],
        flags: Vec<(&'static str, bool)>,
    ) -> Self {
        Kernel {
            label,
            source,
            state_bindings,
            flags,
            passes: vec![Pass::new("main", Scope::Elements)],
            per_tensor: false,
            whole_tensors: false,
            mode_switch: None,
            sparse_rows: false,
        }
    }

    /// Whether every element is updated on its own (no per-tensor or matrix pass): a tensor
    /// may then hold independent problems, one per element (the trajectory demo's start points).
    pub fn is_element_wise(&self) -> bool {
        !self.per_tensor && self.passes.iter().all(|p| matches!(p.scope, Scope::Elements))
    }

    /// Whether it runs over batches of same-shape matrices (all its passes do, sharing scratch
    /// from one batch to the next).
    pub fn has_matrix_passes(&self) -> bool {
        self.passes.iter().any(|p| matches!(p.scope, Scope::Matrices { .. }))
    }

    /// Its step's passes, then its mode switch's (toward training, toward evaluation).
    pub fn passes_and_switches(&self) -> impl Iterator<Item = &Pass> {
        self.passes.iter().chain(self.mode_switch.iter().flat_map(|s| [&s.to_train, &s.to_eval]))
    }

    /// The distinct entry points of its passes (then of its mode switch), in order.
    pub fn entry_points(&self) -> Vec<&'static str> {
        let mut entries: Vec<&'static str> = Vec::new();
        for pass in self.passes_and_switches() {
            if !entries.contains(&pass.entry) {
                entries.push(pass.entry);
            }
        }
        entries
    }

    /// The complete shader: shared code followed by the rule's kernel.
    pub fn wgsl(&self) -> String {
        format!("{COMMON_WGSL}\n{}", self.source)
    }
}

/// The rows and columns a rule sees of a tensor (its last two dimensions; a vector is 1 × n)
/// and the number of such matrices (the product of the leading dimensions).
pub fn matrix_dims(shape: &[usize]) -> (usize, usize, usize) {
    match shape.len() {
        0 => (1, 1, 1),
        1 => (1, shape[0], 1),
        n => (shape[n - 2], shape[n - 1], shape[..n - 2].iter().product()),
    }
}

/// State a rule keeps per tensor in the auxiliary buffer, shaped by the tensor (Adafactor's
/// factored `row_var` and `col_var`): torch's key, shape and initial value.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSlot {
    /// Torch's state key (e.g. `"row_var"`).
    pub key: &'static str,
    /// The shape of the state, derived from the tensor's.
    pub shape: Vec<usize>,
    /// The value every element starts at.
    pub init: f32,
}

impl TensorSlot {
    /// Elements of the state: the product of its shape.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the state has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One tensor as a rule's CPU reference sees it: shape, parameter, (conditioned) gradient,
/// per-element state in [`UpdateRule::state_slots`] order, per-tensor state in
/// [`UpdateRule::tensor_state`] order, and the step's global gradient norm.
pub struct CpuTensor<'a> {
    /// The tensor's shape.
    pub shape: &'a [usize],
    /// The parameter, updated in place.
    pub param: &'a mut [f32],
    /// The gradient, after gradient conditioning.
    pub grad: &'a [f32],
    /// The per-element state, one slice per [`UpdateRule::state_slots`] entry, updated in place.
    pub state: Vec<&'a mut [f32]>,
    /// The per-tensor state, one slice per [`UpdateRule::tensor_state`] entry, updated in place.
    pub tensor_state: Vec<&'a mut [f32]>,
    /// The total norm of the step's gradients after gradient conditioning (clipped), as the
    /// GPU computes it; meaningful for rules whose [`UpdateRule::needs_grad_norm`] is true.
    pub grad_norm: f32,
    /// With [`Kernel::sparse_rows`]: the mask of the rows the gradient touches (non-zero:
    /// touched), one per row of [`sparse_rows`]; empty otherwise.
    pub grad_rows: &'a [u32],
    /// Whether this is the tensor's first step, which creates its state (with gradient
    /// presence tracked, a tensor may first get a gradient after its group's first step).
    pub first_step: bool,
}

/// A per-element state tensor a rule configuration keeps (torch's state key).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StateSlot {
    /// Torch's state key (e.g. `"exp_avg"`).
    pub key: &'static str,
    /// The value every element starts at (Adagrad's `initial_accumulator_value`; else 0).
    pub init: f32,
    /// Its values are never negative (second moments, accumulated squares, step sizes):
    /// 8-bit state then uses bitsandbytes' unsigned map, which spends its codes on one sign.
    pub nonnegative: bool,
}

/// The momentum-like hyper-parameter of a rule, as torch's `CyclicLR` and `OneCycleLR` see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CycledMomentum {
    /// `"momentum"` (SGD, RMSprop: torch finds `momentum` in the optimizer's defaults) or
    /// `"betas[0]"` (Adam, AdamW, NAdam, Adamax, RAdam, Lion, Adan: torch's `use_beta1`).
    pub key: &'static str,
    /// Its current value.
    pub value: f64,
}

/// One `torch.optim` update rule with its hyper-parameters, as one parameter group holds it.
pub trait UpdateRule: fmt::Debug + Send + Sync {
    /// The torch class name, e.g. `"AdamW"`.
    fn name(&self) -> &'static str;
    /// Rejects what torch rejects, and non-finite values.
    fn validate(&self) -> Result<()>;
    /// The kernel and flags for this configuration.
    fn kernel(&self) -> Kernel;
    /// The per-element state this configuration keeps, in the order `cpu_update` takes it.
    fn state_slots(&self) -> Vec<StateSlot>;
    /// State kept per tensor, shaped by the tensor, in the auxiliary buffer (Adafactor's
    /// `row_var`/`col_var`); empty for element-wise rules.
    fn tensor_state(&self, _shape: &[usize]) -> Vec<TensorSlot> {
        Vec::new()
    }
    /// Scratch elements one tensor needs during a step (Muon's Newton–Schulz matrices);
    /// batches of tensors processed one after another share it.
    fn tensor_scratch(&self, _shape: &[usize]) -> usize {
        0
    }
    /// Rejects a tensor this rule cannot update (Muon: not 2-D), with the reference's error.
    fn check_tensor(&self, _name: &str, _shape: &[usize]) -> Result<()> {
        Ok(())
    }
    /// Whether the step reads the global gradient norm (LAMB's `max_grad_norm`): the optimizer
    /// then computes it on the GPU before the step, as gradient clipping does.
    fn needs_grad_norm(&self) -> bool {
        false
    }
    /// Scalar state torch keeps per tensor, from the group's running values
    /// ([`running_keys`](Self::running_keys)): NAdam's `mu_product`.
    fn scalar_state(&self, _running: [f64; 2]) -> Vec<(&'static str, f32)> {
        Vec::new()
    }
    /// Torch's names of the running values the rule keeps in its [`TermsMemo`] that are not
    /// a function of the step alone (Schedule-Free's group keys `weight_sum` and `lr_max`;
    /// NAdam's `mu_product`, a product over steps whose `betas[0]` a scheduler may cycle):
    /// checkpoints save them, so a resume continues the same history. Empty for most rules.
    fn running_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether the step a tensor's update uses is its own (torch.optim's per-parameter
    /// `state['step']`, which does not advance on a step where its `grad` is None) rather
    /// than its group's (timm's Lamb, Adan and Schedule-Free keep the step in the group). It
    /// matters only with gradient presence tracked; the kernel uses `tensor_step` or
    /// `group_step_of` to match.
    fn counts_steps_per_tensor(&self) -> bool {
        true
    }
    /// The terms of step `step` (1-based).
    fn step_terms(&self, step: u64, memo: &mut TermsMemo) -> StepTerms;
    /// The scalars of a step: its terms and the current hyper-parameters.
    fn step_scalars(&self, terms: StepTerms) -> StepScalars;
    /// The CPU reference: one step on one tensor. The gradient is already conditioned
    /// (unscaled, clipped) when the optimizer does so.
    fn cpu_update(&self, scalars: &StepScalars, tensor: CpuTensor<'_>);
    /// The CPU twin of the [`Kernel::mode_switch`] pass toward training (`to_train`) or
    /// evaluation parameters, on one tensor; rules without one do nothing.
    fn cpu_switch_mode(&self, _to_train: bool, _tensor: CpuTensor<'_>) {}
    /// The learning rate (torch's `lr`).
    fn lr(&self) -> f64;
    /// Sets the learning rate, as a scheduler does; the caller validates the rule afterwards.
    fn set_lr(&mut self, lr: f64);
    /// The hyper-parameter that torch's `CyclicLR` and `OneCycleLR` cycle when
    /// `cycle_momentum=True`, with its value; `None` for rules that have neither `momentum` nor
    /// `betas` (Adagrad, Adadelta, Rprop, ASGD), which those schedulers reject as torch does. Rules with one
    /// override this and [`set_cycled_momentum`](Self::set_cycled_momentum).
    fn cycled_momentum(&self) -> Option<CycledMomentum> {
        None
    }
    /// Sets the hyper-parameter of [`cycled_momentum`](Self::cycled_momentum); the caller
    /// validates the rule afterwards. Errors for rules without one, and for values the kernel
    /// variant chosen at construction cannot express.
    fn set_cycled_momentum(&mut self, _value: f64) -> Result<()> {
        Err(Error::Config(format!(
            "{} has neither momentum nor betas, so a scheduler cannot cycle its momentum (torch rejects \
             cycle_momentum=True for it too); use cycle_momentum = false",
            self.name()
        )))
    }
    /// Hyper-parameters under torch's names.
    fn hyperparameters(&self) -> serde_json::Value;
    /// A boxed copy of the rule (what `Clone for Box<dyn UpdateRule>` calls).
    fn clone_box(&self) -> Box<dyn UpdateRule>;
}

impl Clone for Box<dyn UpdateRule> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// A copy of `rule` with `change` applied and validated as torch validates it. `rule` itself is
/// untouched, so a rejected change leaves the caller's rule as it was.
pub(crate) fn changed(
    rule: &dyn UpdateRule,
    change: impl FnOnce(&mut dyn UpdateRule) -> Result<()>,
) -> Result<Box<dyn UpdateRule>> {
    let mut rule = rule.clone_box();
    change(rule.as_mut())?;
    rule.validate()?;
    Ok(rule)
}

/// `rule` with `changes` (a JSON object of torch's hyper-parameter names and values) merged
/// into its hyper-parameters, validated; unknown names and ill-typed values are errors.
pub(crate) fn with_changes(rule: &dyn UpdateRule, changes: &serde_json::Value) -> Result<Box<dyn UpdateRule>> {
    let mut merged = rule.hyperparameters();
    let (Some(merged_keys), Some(changes)) = (merged.as_object_mut(), changes.as_object()) else {
        return Err(Error::Config(format!("{} hyper-parameter changes must be a JSON object, e.g. {{\"lr\": 0.01}}", rule.name())));
    };
    for (key, value) in changes {
        merged_keys.insert(key.clone(), value.clone());
    }
    from_config(rule.name(), &merged)
}

/// Whether a group running `old` may run `new` from the next step on (torch: assigning
/// `param_groups[g][key] = value` between steps): the same class, valid, keeping the same
/// state for each of the group's tensors (`(name, shape)`) and the same passes. Flags
/// (`maximize`, `nesterov`, ...) and pass words may differ: the optimizer then selects other
/// pipelines and rewrites its dispatch records.
pub(crate) fn check_rule_change(old: &dyn UpdateRule, new: &dyn UpdateRule, tensors: &[(&str, &[usize])]) -> Result<()> {
    let refuse = |what: String| Err(Error::Config(format!("{}: {what}; the group keeps its hyper-parameters", old.name())));
    if new.name() != old.name() {
        return refuse(format!("a parameter group cannot switch to {}", new.name()));
    }
    new.validate()?;
    let keys = |rule: &dyn UpdateRule| rule.state_slots().iter().map(|slot| slot.key).collect::<Vec<_>>();
    if keys(new) != keys(old) {
        return refuse(format!(
            "the change would keep the state {:?} instead of {:?}, but state is created once, at construction (torch \
             creates it at a parameter's first step and cannot change it either)",
            keys(new),
            keys(old)
        ));
    }
    // The state's keys and shapes (its initial values, such as ASGD's eta = lr, may differ).
    let slots = |rule: &dyn UpdateRule, shape| rule.tensor_state(shape).into_iter().map(|s| (s.key, s.shape)).collect::<Vec<_>>();
    for &(name, shape) in tensors {
        new.check_tensor(name, shape)?;
        if slots(new, shape) != slots(old, shape) || new.tensor_scratch(shape) != old.tensor_scratch(shape) {
            return refuse(format!("the change would reshape tensor {name:?}'s state or scratch"));
        }
    }
    if new.needs_grad_norm() != old.needs_grad_norm() {
        return refuse("whether the step reads the global gradient norm is chosen at construction".into());
    }
    let (a, b) = (old.kernel(), new.kernel());
    let passes = |k: &Kernel| k.passes_and_switches().map(|p| (p.entry, std::mem::discriminant(&p.scope))).collect::<Vec<_>>();
    let layout = |k: &Kernel| (k.label, k.state_bindings, k.per_tensor, k.whole_tensors, k.sparse_rows);
    if passes(&a) != passes(&b) || layout(&a) != layout(&b) {
        return refuse("the change needs other passes (such as Muon's ns_steps), which are chosen at construction".into());
    }
    Ok(())
}

/// The running values of `rule` after step `step` (see [`UpdateRule::running_keys`]), from
/// `memo` when it holds them, else computed again; `memo` is left as it was.
pub(crate) fn running_after(rule: &dyn UpdateRule, step: u64, memo: &TermsMemo) -> [f64; 2] {
    let mut probe = *memo;
    rule.step_terms(step + 1, &mut probe);
    probe.previous
}

/// The memo of a rule resumed after `step` applied steps with its saved running values
/// (rules without running values start from an empty memo, as they do after any jump).
pub(crate) fn resumed_memo(rule: &dyn UpdateRule, step: u64, running: [f64; 2]) -> TermsMemo {
    if rule.running_keys().is_empty() || step == 0 {
        TermsMemo::default()
    } else {
        TermsMemo { step, values: running, previous: running }
    }
}

/// The kernel of every rule (flags at their defaults), one per shader.
pub fn kernels() -> Vec<Kernel> {
    vec![
        Sgd::default().kernel(),
        Adagrad::default().kernel(),
        RMSprop::default().kernel(),
        Adadelta::default().kernel(),
        Adam::default().kernel(),
        NAdam::default().kernel(),
        Adafactor::default().kernel(),
        Muon::default().kernel(),
        Lamb::default().kernel(),
        Adamax::default().kernel(),
        RAdam::default().kernel(),
        Rprop::default().kernel(),
        Lion::default().kernel(),
        Asgd::default().kernel(),
        Adan::default().kernel(),
        SparseAdam::default().kernel(),
        AdamWScheduleFree::default().kernel(),
    ]
}

/// The optimizer names [`from_config`] accepts.
pub const OPTIMIZER_NAMES: &[&str] = &[
    "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "NAdam", "Adafactor", "Muon", "Lamb", "Adamax", "RAdam",
    "Rprop", "Lion", "ASGD", "Adan", "SparseAdam", "AdamWScheduleFree",
];

/// Builds a rule from its torch class name and a JSON object of torch keyword arguments.
/// Unknown names and unknown or ill-typed hyper-parameters are errors.
///
/// ```
/// let rule = wgpu_optim::rules::from_config("AdamW", &serde_json::json!({"lr": 3e-4, "betas": [0.9, 0.95]}))?;
/// assert_eq!(rule.name(), "AdamW");
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub fn from_config(optimizer: &str, hyperparameters: &serde_json::Value) -> Result<Box<dyn UpdateRule>> {
    fn parse<R>(optimizer: &str, value: &serde_json::Value) -> Result<Box<dyn UpdateRule>>
    where
        R: UpdateRule + serde::de::DeserializeOwned + 'static,
    {
        let rule: R = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let at = e.path().to_string();
            let place = if at == "." { String::new() } else { format!(" at {at:?}") };
            Error::Config(format!("{optimizer} hyper-parameters{place}: {}", e.into_inner()))
        })?;
        rule.validate()?;
        Ok(Box::new(rule))
    }
    match optimizer {
        "SGD" => parse::<Sgd>(optimizer, hyperparameters),
        "Adagrad" => parse::<Adagrad>(optimizer, hyperparameters),
        "RMSprop" => parse::<RMSprop>(optimizer, hyperparameters),
        "Adadelta" => parse::<Adadelta>(optimizer, hyperparameters),
        "Adam" => parse::<Adam>(optimizer, hyperparameters),
        "AdamW" => parse::<AdamW>(optimizer, hyperparameters),
        "NAdam" => parse::<NAdam>(optimizer, hyperparameters),
        "Adafactor" => parse::<Adafactor>(optimizer, hyperparameters),
        "Muon" => parse::<Muon>(optimizer, hyperparameters),
        "Lamb" => parse::<Lamb>(optimizer, hyperparameters),
        "Adamax" => parse::<Adamax>(optimizer, hyperparameters),
        "RAdam" => parse::<RAdam>(optimizer, hyperparameters),
        "Rprop" => parse::<Rprop>(optimizer, hyperparameters),
        "Lion" => parse::<Lion>(optimizer, hyperparameters),
        "ASGD" => parse::<Asgd>(optimizer, hyperparameters),
        "Adan" => parse::<Adan>(optimizer, hyperparameters),
        "SparseAdam" => parse::<SparseAdam>(optimizer, hyperparameters),
        "AdamWScheduleFree" => parse::<AdamWScheduleFree>(optimizer, hyperparameters),
        _ => Err(Error::UnknownOptimizer(optimizer.to_string(), OPTIMIZER_NAMES.join(", "))),
    }
}

/// Validation helpers shaped like torch's checks (`if not 0.0 <= lr: raise ValueError`);
/// NaN fails every one of them.
pub(crate) struct Check(pub &'static str);

impl Check {
    fn fail(&self, name: &'static str, value: f64, requirement: &'static str) -> Result<()> {
        Err(Error::InvalidHyperparameter {
            optimizer: self.0,
            name,
            value: value.to_string(),
            requirement,
        })
    }

    /// `0 <= value`, finite.
    pub fn non_negative(&self, name: &'static str, value: f64) -> Result<()> {
        if value >= 0.0 && value.is_finite() {
            Ok(())
        } else {
            self.fail(name, value, "must be finite and >= 0")
        }
    }

    /// `0 <= value < 1`.
    pub fn unit_interval_open(&self, name: &'static str, value: f64) -> Result<()> {
        if (0.0..1.0).contains(&value) {
            Ok(())
        } else {
            self.fail(name, value, "must be in [0, 1)")
        }
    }

    /// `0 <= value <= 1`.
    pub fn unit_interval_closed(&self, name: &'static str, value: f64) -> Result<()> {
        if (0.0..=1.0).contains(&value) {
            Ok(())
        } else {
            self.fail(name, value, "must be in [0, 1]")
        }
    }

    /// Any finite value (torch does not check it, but NaN or infinity would poison every parameter).
    pub fn finite(&self, name: &'static str, value: f64) -> Result<()> {
        if value.is_finite() {
            Ok(())
        } else {
            self.fail(name, value, "must be finite")
        }
    }

    /// A condition on a pair of values, reported with both as torch does (Rprop's
    /// `Invalid eta values: 1.0, 1.2`).
    pub fn require_pair(&self, ok: bool, name: &'static str, value: (f64, f64), requirement: &'static str) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidHyperparameter { optimizer: self.0, name, value: format!("{}, {}", value.0, value.1), requirement })
        }
    }

    /// A free-form rule violation (e.g. nesterov without momentum).
    pub fn require(&self, ok: bool, name: &'static str, value: f64, requirement: &'static str) -> Result<()> {
        if ok {
            Ok(())
        } else {
            self.fail(name, value, requirement)
        }
    }
}

/// torch.lerp(start, end, weight) for `f32`, computed from the nearer end as ATen does.
#[inline]
pub(crate) fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}
