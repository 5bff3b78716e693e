//! The model on the GPU: a ReLU multi-layer perceptron whose forward and backward passes are
//! this example's WGSL kernels. They read the parameters from the optimizer's arenas and write
//! the gradients into the optimizer's gradient arenas (`opt.param(id)` / `opt.grad(id)`), so a
//! training step never copies a tensor to or from the CPU: the loss and the parameter norm of
//! every step go into a GPU history buffer that the host reads every few steps.
//!
//! The kernels bind [`TensorView`]s ([`Bindings`]), so the same model also trains with
//! [`Lbfgs`]: its closure records the forward and backward over the whole training set, writing
//! the gradients into `lbfgs.grad(id)` and the loss into `lbfgs.loss_view()`.

use std::fmt;

use wgpu::util::DeviceExt;
use wgpu_optim::{read_views, Dtype, GpuContext, Lbfgs, Optimizer, Parameters, TensorId, TensorView};

use super::data::{Split, SplitMix64, CLASSES};

/// Invocations per workgroup of the element-wise kernels (ELEMENT_WORKGROUP in common.wgsl).
const ELEMENT_WORKGROUP: u32 = 64;

const COMMON_WGSL: &str = include_str!("common.wgsl");
const DATA_WGSL: &str = include_str!("data.wgsl");
const LAYERS_WGSL: &str = include_str!("layers.wgsl");
const LOSS_WGSL: &str = include_str!("loss.wgsl");
const NORM_WGSL: &str = include_str!("norm.wgsl");

#[derive(Debug)]
pub struct ModelError(pub String);

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ModelError {}

impl From<wgpu_optim::Error> for ModelError {
    fn from(e: wgpu_optim::Error) -> Self {
        ModelError(e.to_string())
    }
}

/// One fully connected layer: weights `[outputs, inputs]` (torch's nn.Linear layout), bias `[outputs]`.
#[derive(Clone, Copy, Debug)]
pub struct Layer {
    pub w: TensorId,
    pub b: TensorId,
    pub inputs: usize,
    pub outputs: usize,
}

/// The parameters of an MLP of layer widths `sizes` (inputs, hidden..., classes), drawn as
/// nn.Linear draws them, U(-1/√fan_in, 1/√fan_in) for weights and biases, but from
/// SplitMix64(`seed`) in the order w1, b1, w2, b2, ... so that train_torch.py gets the same numbers.
pub fn init_parameters(sizes: &[usize], seed: u64) -> Result<(Parameters, Vec<Layer>), ModelError> {
    if sizes.len() < 2 || sizes.contains(&0) {
        return Err(ModelError(format!("layer widths {sizes:?}: need at least inputs and outputs, none zero")));
    }
    let mut rng = SplitMix64::new(seed);
    let mut params = Parameters::new();
    let mut layers = Vec::new();
    for (k, pair) in sizes.windows(2).enumerate() {
        let (inputs, outputs) = (pair[0], pair[1]);
        let bound = (1.0 / (inputs as f64).sqrt()) as f32;
        let mut draw = |n: usize| (0..n).map(|_| rng.uniform() * bound).collect::<Vec<f32>>();
        let w = params.add(&format!("w{}", k + 1), &[outputs, inputs], draw(outputs * inputs))?;
        let b = params.add(&format!("b{}", k + 1), &[outputs], draw(outputs))?;
        layers.push(Layer { w, b, inputs, outputs });
    }
    Ok((params, layers))
}

/// Where the model's kernels read the parameters and write the gradients and the loss: an
/// [`Optimizer`]'s arenas, or [`Lbfgs`]'s flat vectors and loss register.
pub struct Bindings {
    /// Per layer: weights and bias.
    pub params: Vec<(TensorView, TensorView)>,
    /// Per layer: the gradients of weights and bias (overwritten by every backward pass).
    pub grads: Vec<(TensorView, TensorView)>,
    /// Where the training loss (one `f32`) goes instead of the per-step metrics, whose history
    /// then holds only the parameter norm: L-BFGS's `loss_view()`.
    pub loss: Option<TensorView>,
    /// An L2 penalty λ: the training loss gains λ/2·Σ‖W‖² over the weights (not the biases),
    /// each weight's gradient λ·W. 0: none (the minibatch optimizers decay weights themselves).
    pub l2: f32,
}

impl Bindings {
    /// The optimizer's arenas; the loss goes to the per-step metrics.
    pub fn optimizer(opt: &Optimizer, layers: &[Layer]) -> Result<Self, ModelError> {
        Ok(Bindings {
            params: layers.iter().map(|l| Ok((opt.param(l.w)?, opt.param(l.b)?))).collect::<Result<_, ModelError>>()?,
            grads: layers.iter().map(|l| Ok((opt.grad(l.w)?, opt.grad(l.b)?))).collect::<Result<_, ModelError>>()?,
            loss: None,
            l2: 0.0,
        })
    }

    /// L-BFGS's parameters, gradients and loss register, with an L2 penalty `l2` in the loss.
    pub fn lbfgs(lbfgs: &Lbfgs, layers: &[Layer], l2: f32) -> Result<Self, ModelError> {
        if !(l2 >= 0.0 && l2.is_finite()) {
            return Err(ModelError(format!("the L2 penalty must be finite and >= 0, not {l2}")));
        }
        Ok(Bindings {
            params: layers.iter().map(|l| Ok((lbfgs.param(l.w)?, lbfgs.param(l.b)?))).collect::<Result<_, ModelError>>()?,
            grads: layers.iter().map(|l| Ok((lbfgs.grad(l.w)?, lbfgs.grad(l.b)?))).collect::<Result<_, ModelError>>()?,
            loss: Some(lbfgs.loss_view()),
            l2,
        })
    }
}

/// Outputs per side of the tile one layer-kernel invocation computes (TILE in layers.wgsl).
const TILE: usize = 4;

fn tiles(n: usize) -> usize {
    n.div_ceil(TILE)
}

/// The shape uniform of one dispatch (`Dims` in common.wgsl).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    rows: u32,
    inputs: u32,
    outputs: u32,
    flag: u32,
}

fn dims(rows: usize, inputs: usize, outputs: usize, flag: bool) -> Dims {
    Dims { rows: rows as u32, inputs: inputs as u32, outputs: outputs as u32, flag: u32::from(flag) }
}

/// Runs `create` inside wgpu error scopes, so that a validation or out-of-memory error comes
/// back as an error instead of wgpu's default panic.
fn checked<T>(device: &wgpu::Device, what: &str, create: impl FnOnce() -> T) -> Result<T, ModelError> {
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let value = create();
    let memory_error = pollster::block_on(memory.pop());
    let validation_error = pollster::block_on(validation.pop());
    match memory_error.or(validation_error) {
        None => Ok(value),
        Some(e) => Err(ModelError(format!("GPU error while {what}: {e}"))),
    }
}

/// The compute pipelines, compiled once per device and shared by every model built on it.
pub struct Kernels {
    gather: wgpu::ComputePipeline,
    forward: wgpu::ComputePipeline,
    grad_weights: wgpu::ComputePipeline,
    grad_input: wgpu::ComputePipeline,
    cross_entropy: wgpu::ComputePipeline,
    evaluate: wgpu::ComputePipeline,
    param_norm: wgpu::ComputePipeline,
    l2_penalty: wgpu::ComputePipeline,
}

/// `source` reading the parameters `w` and `b` in `dtype`: f16 and bf16 arrive packed two to
/// a `u32` (see `wgpu_optim::storage`), so their declarations become `array<u32>` and each
/// `w[k]` a `w_at(k)` that unpacks element k, with the library's conversions.
fn with_param_dtype(source: &str, dtype: Dtype) -> String {
    if dtype == Dtype::F32 || !source.contains("var<storage, read> w: array<f32>;") {
        return source.to_string();
    }
    let mut out = source.replace("var<storage, read> w: array<f32>;", "var<storage, read> w: array<u32>;");
    out = out.replace("var<storage, read> b: array<f32>;", "var<storage, read> b: array<u32>;");
    for name in ["w", "b"] {
        let pattern = format!("{name}[");
        let mut rewritten = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(&pattern) {
            let before = rest[..at].chars().last();
            let is_name = before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let close = at + rest[at..].find(']').expect("a closing bracket");
            if is_name {
                rewritten.push_str(&rest[..at]);
                rewritten.push_str(&format!("{name}_at({})", &rest[at + pattern.len()..close]));
            } else {
                rewritten.push_str(&rest[..=close]);
            }
            rest = &rest[close + 1..];
        }
        rewritten.push_str(rest);
        out = rewritten;
    }
    let value = if dtype == Dtype::Bf16 { "bf16_value" } else { "f16_value" };
    format!(
        "{out}\n{}\nfn w_at(k: u32) -> f32 {{\n    return {value}((w[k / 2u] >> (16u * (k % 2u))) & 0xffffu);\n}}\n\
         fn b_at(k: u32) -> f32 {{\n    return {value}((b[k / 2u] >> (16u * (k % 2u))) & 0xffffu);\n}}\n",
        wgpu_optim::storage::STORAGE_WGSL
    )
}

impl Kernels {
    /// The kernels of a model whose parameters the optimizer keeps in `param_dtype` (what the
    /// forward and backward passes read; gradients are written in f32).
    pub fn new(gpu: &GpuContext, param_dtype: Dtype) -> Result<Self, ModelError> {
        let device = gpu.device();
        checked(device, "compiling the training kernels", || {
            let module = |label: &str, source: &str| {
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(label),
                    source: wgpu::ShaderSource::Wgsl(format!("{COMMON_WGSL}\n{}", with_param_dtype(source, param_dtype)).into()),
                })
            };
            let pipeline = |module: &wgpu::ShaderModule, entry: &str| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: None, // derived from the bindings this entry point uses
                    module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
            };
            let (data, layers, loss, norm) = (
                module("data.wgsl", DATA_WGSL),
                module("layers.wgsl", LAYERS_WGSL),
                module("loss.wgsl", LOSS_WGSL),
                module("norm.wgsl", NORM_WGSL),
            );
            Kernels {
                gather: pipeline(&data, "gather"),
                forward: pipeline(&layers, "forward"),
                grad_weights: pipeline(&layers, "grad_weights"),
                grad_input: pipeline(&layers, "grad_input"),
                cross_entropy: pipeline(&loss, "cross_entropy"),
                evaluate: pipeline(&loss, "evaluate"),
                param_norm: pipeline(&norm, "param_norm"),
                l2_penalty: pipeline(&norm, "l2_penalty"),
            }
        })
    }
}

/// One recorded dispatch: pipeline, bind group (with its own shape uniform) and grid.
struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
}

impl Dispatch {
    fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
    }
}

/// Builds dispatches on one device.
struct Builder<'a> {
    device: &'a wgpu::Device,
    max_per_dimension: u32,
}

impl Builder<'_> {
    /// A dispatch of `invocations` element-wise invocations (`None`: one reduction workgroup).
    fn dispatch(
        &self,
        pipeline: &wgpu::ComputePipeline,
        shape: Dims,
        bindings: Vec<(u32, wgpu::BindingResource<'_>)>,
        invocations: Option<usize>,
    ) -> Dispatch {
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("dims"),
            contents: bytemuck::bytes_of(&shape),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        entries.extend(bindings.into_iter().map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource }));
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let grid = match invocations {
            None => (1, 1),
            Some(n) => {
                let groups = (n as u64).div_ceil(u64::from(ELEMENT_WORKGROUP)).max(1);
                let x = groups.min(u64::from(self.max_per_dimension));
                (x as u32, groups.div_ceil(x) as u32)
            }
        };
        Dispatch { pipeline: pipeline.clone(), bind_group, grid }
    }

    fn storage(&self, label: &str, elements: usize, extra: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (elements.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | extra,
            mapped_at_creation: false,
        })
    }

    fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T], extra: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE | extra,
        })
    }
}

/// A training run's GPU side: data, activations, the recorded dispatches of a training step,
/// of the per-step metrics and of an evaluation on the test set.
pub struct Mlp {
    gpu: GpuContext,
    batch: usize,
    steps: usize,
    order: wgpu::Buffer,
    batch_index: wgpu::Buffer,
    metrics: wgpu::Buffer,
    history: wgpu::Buffer,
    eval_metrics: wgpu::Buffer,
    test_len: usize,
    train_pass: Vec<Dispatch>,
    metrics_pass: Vec<Dispatch>,
    eval_pass: Vec<Dispatch>,
}

impl Mlp {
    /// `order` holds the training-sample indices of every step, `batch` per step, in order.
    /// The kernels bind the optimizer's arenas.
    pub fn new(
        opt: &Optimizer,
        kernels: &Kernels,
        layers: &[Layer],
        batch: usize,
        train: &Split,
        test: &Split,
        order: &[u32],
    ) -> Result<Self, ModelError> {
        let bindings = Bindings::optimizer(opt, layers)?;
        Self::with_bindings(opt.gpu(), &bindings, kernels, layers, batch, train, test, order)
    }

    /// [`Mlp::new`] with the kernels binding `bindings` (e.g. [`Bindings::lbfgs`]).
    #[allow(clippy::too_many_arguments)]
    pub fn with_bindings(
        gpu: &GpuContext,
        bindings: &Bindings,
        kernels: &Kernels,
        layers: &[Layer],
        batch: usize,
        train: &Split,
        test: &Split,
        order: &[u32],
    ) -> Result<Self, ModelError> {
        let gpu = gpu.clone();
        let device = gpu.device();
        if bindings.params.len() != layers.len() || bindings.grads.len() != layers.len() {
            return Err(ModelError(format!(
                "{} layers but bindings for {} parameters and {} gradients",
                layers.len(),
                bindings.params.len(),
                bindings.grads.len()
            )));
        }
        let last = layers.last().ok_or_else(|| ModelError("a model needs at least one layer".into()))?;
        if layers[0].inputs != train.features || train.features != test.features || last.outputs != CLASSES {
            return Err(ModelError(format!(
                "the model maps {} inputs to {} classes but the data has {} features and {CLASSES} classes",
                layers[0].inputs, last.outputs, train.features
            )));
        }
        if test.len() == 0 {
            return Err(ModelError("the test set is empty".into()));
        }
        if batch == 0 || order.is_empty() || !order.len().is_multiple_of(batch) {
            return Err(ModelError(format!("{} batch indices do not make whole batches of {batch}", order.len())));
        }
        if let Some(bad) = order.iter().find(|&&i| i as usize >= train.len()) {
            return Err(ModelError(format!("batch index {bad} is past the {} training samples", train.len())));
        }
        let samples = train.packed_rows();
        let limits = device.limits();
        let largest = (samples.len() * 4) as u64;
        let binding_limit = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        if largest > binding_limit {
            return Err(ModelError(format!(
                "the training set takes {largest} bytes but this adapter binds at most {binding_limit}"
            )));
        }
        let steps = order.len() / batch;
        let (params, grads) = (&bindings.params, &bindings.grads);

        checked(device, "building the model's buffers and bind groups", || {
            let build = Builder { device, max_per_dimension: limits.max_compute_workgroups_per_dimension };
            let none = wgpu::BufferUsages::empty();
            let copy = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
            let samples = build.upload("training samples", &samples, none);
            let order_buffer = build.upload("batch order", order, wgpu::BufferUsages::COPY_SRC);
            let batch_index = build.storage("batch index", batch, wgpu::BufferUsages::COPY_DST);
            let labels = build.storage("batch labels", batch, none);
            let metrics = build.storage("metrics", 2, copy);
            let history = build.storage("history", steps * 2, copy);
            let eval_metrics = build.storage("evaluation", 2, copy);
            let test_x = build.upload("test inputs", &test.x, none);
            let test_y = build.upload("test labels", &test.y, none);

            // Activations: acts[0] is the input batch, acts[k] the output of layer k (logits last);
            // deltas[k] is dloss/d(pre-activation) of layer k.
            let widths: Vec<usize> = std::iter::once(layers[0].inputs).chain(layers.iter().map(|l| l.outputs)).collect();
            let acts: Vec<wgpu::Buffer> = widths.iter().map(|&w| build.storage("activation", batch * w, none)).collect();
            let deltas: Vec<wgpu::Buffer> = widths.iter().map(|&w| build.storage("delta", batch * w, none)).collect();
            let eval_acts: Vec<wgpu::Buffer> =
                widths[1..].iter().map(|&w| build.storage("test activation", test.len() * w, none)).collect();

            let n = layers.len();
            // The training loss: into the per-step metrics, or where the bindings say.
            let loss_out = || match &bindings.loss {
                Some(view) => view.binding(),
                None => metrics.as_entire_binding(),
            };

            let mut train_pass = vec![build.dispatch(
                &kernels.gather,
                dims(batch, widths[0], 0, false),
                vec![
                    (1, samples.as_entire_binding()),
                    (2, batch_index.as_entire_binding()),
                    (3, acts[0].as_entire_binding()),
                    (4, labels.as_entire_binding()),
                ],
                Some(batch * (widths[0] + 1)),
            )];
            for (k, layer) in layers.iter().enumerate() {
                train_pass.push(build.dispatch(
                    &kernels.forward,
                    dims(batch, layer.inputs, layer.outputs, k + 1 < n),
                    vec![
                        (1, acts[k].as_entire_binding()),
                        (2, params[k].0.binding()),
                        (3, params[k].1.binding()),
                        (4, acts[k + 1].as_entire_binding()),
                    ],
                    Some(tiles(batch) * tiles(layer.outputs)),
                ));
            }
            train_pass.push(build.dispatch(
                &kernels.cross_entropy,
                dims(batch, 0, CLASSES, false),
                vec![
                    (1, acts[n].as_entire_binding()),
                    (2, labels.as_entire_binding()),
                    (3, deltas[n].as_entire_binding()),
                    (4, loss_out()),
                ],
                None,
            ));
            for (k, layer) in layers.iter().enumerate().rev() {
                let shape = dims(batch, layer.inputs, layer.outputs, false);
                train_pass.push(build.dispatch(
                    &kernels.grad_weights,
                    shape,
                    vec![
                        (1, acts[k].as_entire_binding()),
                        (5, deltas[k + 1].as_entire_binding()),
                        (6, grads[k].0.binding()),
                        (7, grads[k].1.binding()),
                    ],
                    Some(tiles(layer.outputs) * tiles(layer.inputs)),
                ));
                if k > 0 {
                    train_pass.push(build.dispatch(
                        &kernels.grad_input,
                        shape,
                        vec![
                            (1, acts[k].as_entire_binding()),
                            (2, params[k].0.binding()),
                            (5, deltas[k + 1].as_entire_binding()),
                            (8, deltas[k].as_entire_binding()),
                        ],
                        Some(tiles(batch) * tiles(layer.inputs)),
                    ));
                }
            }
            if bindings.l2 > 0.0 {
                // After the backward pass: λ·W onto the weights' gradients, λ/2·‖W‖² onto the loss.
                for (k, layer) in layers.iter().enumerate() {
                    train_pass.push(build.dispatch(
                        &kernels.l2_penalty,
                        Dims { rows: bindings.l2.to_bits(), ..dims(0, layer.inputs * layer.outputs, 0, false) },
                        vec![(1, params[k].0.binding()), (3, loss_out()), (4, grads[k].0.binding())],
                        None,
                    ));
                }
            }

            let metrics_pass = layers
                .iter()
                .enumerate()
                .map(|(k, layer)| {
                    build.dispatch(
                        &kernels.param_norm,
                        dims(0, layer.inputs * layer.outputs, layer.outputs, k > 0),
                        vec![
                            (1, params[k].0.binding()),
                            (2, params[k].1.binding()),
                            (3, metrics.as_entire_binding()),
                        ],
                        None,
                    )
                })
                .collect();

            let mut eval_pass = Vec::new();
            for (k, layer) in layers.iter().enumerate() {
                let input = if k == 0 { &test_x } else { &eval_acts[k - 1] };
                eval_pass.push(build.dispatch(
                    &kernels.forward,
                    dims(test.len(), layer.inputs, layer.outputs, k + 1 < n),
                    vec![
                        (1, input.as_entire_binding()),
                        (2, params[k].0.binding()),
                        (3, params[k].1.binding()),
                        (4, eval_acts[k].as_entire_binding()),
                    ],
                    Some(tiles(test.len()) * tiles(layer.outputs)),
                ));
            }
            eval_pass.push(build.dispatch(
                &kernels.evaluate,
                dims(test.len(), 0, CLASSES, false),
                vec![
                    (1, eval_acts[n - 1].as_entire_binding()),
                    (2, test_y.as_entire_binding()),
                    (4, eval_metrics.as_entire_binding()),
                ],
                None,
            ));

            Mlp {
                gpu: gpu.clone(),
                batch,
                steps,
                order: order_buffer,
                batch_index,
                metrics,
                history,
                eval_metrics,
                test_len: test.len(),
                train_pass,
                metrics_pass,
                eval_pass,
            }
        })
    }

    /// Records step `step`'s forward and backward passes: afterwards the optimizer's gradient
    /// arenas hold the gradient of the minibatch's mean loss (plus the bindings' L2 penalty),
    /// and the metrics or the bindings' loss view that loss.
    pub fn record_forward_backward(&self, encoder: &mut wgpu::CommandEncoder, step: usize) -> Result<(), ModelError> {
        if step >= self.steps {
            return Err(ModelError(format!("step {step} is past the {} steps of the batch order", self.steps)));
        }
        let bytes = (self.batch * 4) as u64;
        encoder.copy_buffer_to_buffer(&self.order, step as u64 * bytes, &self.batch_index, 0, bytes);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward+backward"), timestamp_writes: None });
        for dispatch in &self.train_pass {
            dispatch.record(&mut pass);
        }
        Ok(())
    }

    /// Records, after the optimizer step, the parameter norm and copies step `step`'s loss and
    /// squared norm into the history.
    pub fn record_metrics(&self, encoder: &mut wgpu::CommandEncoder, step: usize) -> Result<(), ModelError> {
        if step >= self.steps {
            return Err(ModelError(format!("step {step} is past the {} steps of the batch order", self.steps)));
        }
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("metrics"), timestamp_writes: None });
            for dispatch in &self.metrics_pass {
                dispatch.record(&mut pass);
            }
        }
        encoder.copy_buffer_to_buffer(&self.metrics, 0, &self.history, step as u64 * 8, 8);
        Ok(())
    }

    /// Loss and parameter L2 norm of steps `from..to` (blocking: waits for those steps).
    pub fn read_history(&self, from: usize, to: usize) -> Result<Vec<(f32, f64)>, ModelError> {
        if from >= to || to > self.steps {
            return Err(ModelError(format!("no history for steps {from}..{to} of {}", self.steps)));
        }
        let view = TensorView { buffer: self.history.clone(), offset: from as u64 * 8, len: (to - from) * 2, dtype: wgpu_optim::Dtype::F32 };
        let values = pollster::block_on(read_views(&self.gpu, &[view]))?.remove(0);
        Ok(values.chunks(2).map(|m| (m[0], f64::from(m[1]).sqrt())).collect())
    }

    /// Mean loss and accuracy on the test set with the current parameters (blocking).
    pub fn evaluate(&self) -> Result<(f64, f64), ModelError> {
        let mut encoder = self.gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("evaluate") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("evaluate"), timestamp_writes: None });
            for dispatch in &self.eval_pass {
                dispatch.record(&mut pass);
            }
        }
        self.gpu.queue().submit([encoder.finish()]);
        let view = TensorView { buffer: self.eval_metrics.clone(), offset: 0, len: 2, dtype: wgpu_optim::Dtype::F32 };
        let values = pollster::block_on(read_views(&self.gpu, &[view]))?.remove(0);
        Ok((f64::from(values[0]), f64::from(values[1]) / self.test_len as f64))
    }
}
