//! Named parameter tensors and parameter groups, before they are placed in GPU arenas.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::rules::UpdateRule;

/// Handle of a registered tensor: its registration index and the [`Parameters`] that issued
/// it (and its clones), so an id from another collection is an error, not another tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub(crate) usize, pub(crate) CollectionTag);

/// Which [`Parameters`] issued a [`TensorId`].
pub(crate) type CollectionTag = u32;

impl TensorId {
    /// Registration order, from 0.
    pub fn index(self) -> usize {
        self.0
    }

    /// The entry this id names in `tensors`, the registration-ordered tensors of the
    /// collection tagged `tag`; [`Error::ForeignTensor`] for an id another collection issued.
    pub(crate) fn lookup<T>(self, tag: CollectionTag, tensors: &[T]) -> Result<&T> {
        let foreign = Error::ForeignTensor { index: self.0 };
        if self.1 != tag {
            return Err(foreign);
        }
        tensors.get(self.0).ok_or(foreign)
    }
}

/// The error for a parameter group index past the `count` groups an optimizer has.
pub(crate) fn no_such_group(group: usize, count: usize) -> Error {
    Error::Config(format!("parameter group {group} does not exist (there are {count})"))
}

/// A tag no other [`Parameters`] of this process has.
fn new_collection_tag() -> CollectionTag {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A registered tensor: name, shape and initial values.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    /// Its unique, non-empty name (the checkpoint and `.safetensors` key).
    pub name: String,
    /// Its shape, as torch's `tensor.shape`.
    pub shape: Vec<usize>,
    /// Its initial values, row-major; as many as the product of `shape`.
    pub data: Vec<f32>,
}

/// The model's parameter tensors with their initial values, by name.
///
/// ```
/// use wgpu_optim::Parameters;
/// let mut params = Parameters::new();
/// let w = params.add("w", &[2, 3], vec![0.1; 6])?;
/// let b = params.zeros("b", &[3])?;
/// assert_eq!(params.id("b"), Some(b));
/// assert_eq!(params.spec(w)?.shape, [2, 3]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Parameters {
    tensors: Vec<TensorSpec>,
    by_name: HashMap<String, TensorId>,
    tag: CollectionTag,
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters { tensors: Vec::new(), by_name: HashMap::new(), tag: new_collection_tag() }
    }
}

impl Parameters {
    /// No tensors yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a tensor and returns its handle.
    ///
    /// Errors: [`Error::Tensor`] for an empty name, a name registered before or a shape with no
    /// elements; [`Error::SizeMismatch`] when `data.len()` is not the product of `shape`.
    pub fn add(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> Result<TensorId> {
        if name.is_empty() {
            return Err(Error::Tensor("a tensor name must not be empty".into()));
        }
        if self.by_name.contains_key(name) {
            return Err(Error::Tensor(format!("tensor {name:?} is registered twice")));
        }
        let len: usize = shape.iter().product();
        if data.len() != len {
            return Err(Error::SizeMismatch {
                what: format!("tensor {name:?} of shape {shape:?}"),
                expected: len,
                actual: data.len(),
            });
        }
        if len == 0 {
            return Err(Error::Tensor(format!("tensor {name:?} has no elements (shape {shape:?})")));
        }
        let id = TensorId(self.tensors.len(), self.tag);
        self.tensors.push(TensorSpec { name: name.to_string(), shape: shape.to_vec(), data });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// Registers a tensor of zeros.
    pub fn zeros(&mut self, name: &str, shape: &[usize]) -> Result<TensorId> {
        self.add(name, shape, vec![0.0; shape.iter().product()])
    }

    /// The handle of the tensor named `name`, if one is registered.
    pub fn id(&self, name: &str) -> Option<TensorId> {
        self.by_name.get(name).copied()
    }

    /// A tensor's name, shape and initial values; an id from another collection is
    /// [`Error::ForeignTensor`].
    pub fn spec(&self, id: TensorId) -> Result<&TensorSpec> {
        self.check(id)?;
        Ok(&self.tensors[id.0])
    }

    /// Whether this collection (or the one it was cloned from) issued `id`.
    pub(crate) fn check(&self, id: TensorId) -> Result<()> {
        id.lookup(self.tag, &self.tensors).map(drop)
    }

    pub(crate) fn tag(&self) -> CollectionTag {
        self.tag
    }

    /// An empty collection whose ids carry `tag` (an optimizer rebuilt with more tensors
    /// keeps the ids it issued).
    pub(crate) fn with_tag(tag: CollectionTag) -> Self {
        Parameters { tag, ..Parameters::default() }
    }

    /// The number of registered tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor is registered.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// All tensors in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (TensorId, &TensorSpec)> {
        self.tensors.iter().enumerate().map(|(i, t)| (TensorId(i, self.tag), t))
    }

    pub(crate) fn into_specs(self) -> Vec<TensorSpec> {
        self.tensors
    }
}

/// A parameter group: tensors updated by one rule with one set of hyper-parameters
/// (torch's `{"params": [...], "weight_decay": 0.0, ...}`).
#[derive(Clone, Debug)]
pub struct ParamGroup {
    /// The update rule and its hyper-parameters.
    pub rule: Box<dyn UpdateRule>,
    /// The tensors it updates; each tensor belongs to exactly one group of an optimizer.
    pub tensors: Vec<TensorId>,
}

impl ParamGroup {
    /// A group updating `tensors` with `rule`. Nothing is checked until an optimizer is built
    /// from it, which rejects invalid hyper-parameters, an empty group, and a tensor in no group
    /// or in two.
    ///
    /// ```
    /// use wgpu_optim::{rules::{AdamW, Sgd}, ParamGroup, Parameters};
    /// let mut params = Parameters::new();
    /// let w = params.zeros("w", &[4, 4])?;
    /// let b = params.zeros("b", &[4])?;
    /// let groups = vec![
    ///     ParamGroup::new(AdamW::default(), [w]),
    ///     ParamGroup::new(Sgd { lr: 0.1, ..Sgd::default() }, [b]),
    /// ];
    /// assert_eq!(groups[1].rule.name(), "SGD");
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn new(rule: impl UpdateRule + 'static, tensors: impl IntoIterator<Item = TensorId>) -> Self {
        Self::from_boxed(Box::new(rule), tensors)
    }

    /// [`ParamGroup::new`] with a rule already boxed (e.g. from [`rules::from_config`]).
    ///
    /// [`rules::from_config`]: crate::rules::from_config
    pub fn from_boxed(rule: Box<dyn UpdateRule>, tensors: impl IntoIterator<Item = TensorId>) -> Self {
        ParamGroup { rule, tensors: tensors.into_iter().collect() }
    }
}

/// Checks what torch checks of param groups, plus completeness: every group's
/// hyper-parameters are valid, its rule accepts each of its tensors (Muon: 2-D only), and every
/// tensor is in exactly one group. Groups may use different rules (Muon for the hidden
/// matrices, AdamW for the rest), sharing one gradient conditioning and one checkpoint.
pub(crate) fn check_groups(params: &Parameters, groups: &[ParamGroup]) -> Result<()> {
    if groups.is_empty() {
        return Err(Error::Tensor("an optimizer needs at least one parameter group".into()));
    }
    let mut owner: Vec<Option<usize>> = vec![None; params.len()];
    for (g, group) in groups.iter().enumerate() {
        group.rule.validate()?;
        if group.tensors.is_empty() {
            return Err(Error::Tensor(format!("parameter group {g} has no tensors")));
        }
        for &id in &group.tensors {
            let spec = params.spec(id).map_err(|_| {
                Error::Tensor(format!("parameter group {g} names tensor id {}, which these Parameters did not issue", id.0))
            })?;
            let slot = &mut owner[id.0];
            if let Some(other) = slot {
                return Err(Error::Tensor(format!(
                    "tensor {:?} appears in parameter groups {other} and {g}; some parameters appear in more than one parameter group",
                    spec.name
                )));
            }
            *slot = Some(g);
            group.rule.check_tensor(&spec.name, &spec.shape)?;
        }
    }
    if let Some(missing) = owner.iter().position(Option::is_none) {
        return Err(Error::Tensor(format!(
            "tensor {:?} is in no parameter group",
            params.tensors[missing].name
        )));
    }
    Ok(())
}

/// Checks a group added after construction (torch's `add_param_group`): valid
/// hyper-parameters, at least one tensor, none already in the optimizer (`known`), each
/// accepted by the rule, and nothing the optimizer's gradient conditioning (chosen at
/// construction) cannot serve.
pub(crate) fn check_added_group(known: impl Fn(&str) -> bool, params: &Parameters, rule: &dyn UpdateRule, conditioned: bool) -> Result<()> {
    rule.validate()?;
    if params.is_empty() {
        return Err(Error::Tensor("add_param_group needs at least one tensor".into()));
    }
    for (_, spec) in params.iter() {
        if known(&spec.name) {
            return Err(Error::Tensor(format!(
                "tensor {:?} is already in a parameter group; some parameters appear in more than one parameter group",
                spec.name
            )));
        }
        rule.check_tensor(&spec.name, &spec.shape)?;
    }
    if rule.needs_grad_norm() && !conditioned {
        return Err(Error::Config(format!(
            "{} reads the global gradient norm, which this optimizer does not compute: that is chosen at construction \
             (with gradient conditioning, or a first group whose rule reads the norm)",
            rule.name()
        )));
    }
    if rule.kernel().sparse_rows && conditioned {
        return Err(Error::Config(format!(
            "{} takes sparse gradients, which this optimizer's gradient conditioning cannot read",
            rule.name()
        )));
    }
    Ok(())
}

/// torch's refusal of a dense gradient for SparseAdam.
pub(crate) fn dense_refused(rule: &str, tensor: &str) -> Error {
    Error::Tensor(format!(
        "{rule} does not support dense gradients, please consider Adam instead (tensor {tensor:?}: write its \
         gradient with write_sparse_grad, or its rows' mask with grad_rows)"
    ))
}

/// Rejects gradient conditioning when a rule takes sparse gradients: the norm and the
/// non-finite check would read the untouched rows of the dense buffer.
pub(crate) fn check_sparse_conditioning(groups: &[ParamGroup], conditioned: bool) -> Result<()> {
    match groups.iter().find(|g| g.rule.kernel().sparse_rows) {
        Some(group) if conditioned => Err(Error::Config(format!(
            "{} takes sparse gradients, which gradient conditioning (clipping, loss scaling, skipping non-finite \
             steps, a rule reading the global norm) cannot read yet; condition them in your own kernel",
            group.rule.name()
        ))),
        _ => Ok(()),
    }
}

/// A sparse gradient checked and laid out: the row mask (1: touched) and the dense values
/// (the rows' sums, zero elsewhere).
pub(crate) fn sparse_gradient(sparse: bool, name: &str, shape: &[usize], rows: &[u32], values: &[f32]) -> Result<(Vec<u32>, Vec<f32>)> {
    if !sparse {
        return Err(Error::Tensor(format!("tensor {name:?}'s rule takes dense gradients: use write_grad")));
    }
    let (row_count, row_length) = crate::rules::sparse_rows(shape);
    if values.len() != rows.len() * row_length {
        return Err(Error::SizeMismatch {
            what: format!("sparse gradient of {name:?} ({} rows of {row_length})", rows.len()),
            expected: rows.len() * row_length,
            actual: values.len(),
        });
    }
    if let Some(&row) = rows.iter().find(|&&r| r as usize >= row_count) {
        return Err(Error::Tensor(format!("sparse gradient of {name:?} names row {row}; the tensor has {row_count} rows")));
    }
    let mut mask = vec![0u32; row_count];
    let mut dense = vec![0.0f32; row_count * row_length];
    for (k, &row) in rows.iter().enumerate() {
        let at = row as usize * row_length;
        for (d, v) in dense[at..at + row_length].iter_mut().zip(&values[k * row_length..(k + 1) * row_length]) {
            *d = if mask[row as usize] == 0 { *v } else { *d + *v };
        }
        mask[row as usize] = 1;
    }
    Ok((mask, dense))
}
