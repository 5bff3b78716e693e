//! The library's error type: everything a user can get wrong is an `Error`, never a panic.

/// Errors returned by wgpu-optim.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter of the requested backend exists on this machine.
    #[error("no {requested} GPU adapter found (adapters present: {present}). {hint}")]
    NoAdapter {
        /// The requested [`BackendChoice`](crate::BackendChoice), as its name.
        requested: String,
        /// The adapters of every backend, as `name via backend` (`none` when there is none).
        present: String,
        /// How to get an adapter (which drivers to install).
        hint: &'static str,
    },
    /// The adapter exists but cannot run compute shaders (e.g. a desktop OpenGL 3.3 context).
    #[error("{adapter} cannot run compute shaders, which every optimizer step needs. {reason}")]
    NoComputeShaders {
        /// The adapter, as [`AdapterReport`](crate::AdapterReport) displays it.
        adapter: String,
        /// Why, and what to use instead.
        reason: &'static str,
    },
    /// `wgpu::Adapter::request_device` failed.
    #[error("could not open the GPU device: {0}")]
    RequestDevice(String),
    /// A backend name that is not one of auto, vulkan, gl, metal, dx12 (or cpu where allowed).
    #[error("unknown backend {0:?}: expected one of auto, vulkan, gl, metal, dx12")]
    UnknownBackend(String),
    /// A hyper-parameter value that torch.optim would reject (or a non-finite one).
    #[error("{optimizer}: invalid {name} value: {value} ({requirement})")]
    InvalidHyperparameter {
        /// The torch class name of the rule (e.g. `"Adam"`).
        optimizer: &'static str,
        /// The hyper-parameter under torch's name (e.g. `"betas[0]"`).
        name: &'static str,
        /// The rejected value, formatted (a pair as `a, b`).
        value: String,
        /// The condition the value must meet (e.g. `"must be in [0, 1)"`).
        requirement: &'static str,
    },
    /// An optimizer name the library does not implement.
    #[error("unknown optimizer {0:?}: expected one of {1}")]
    UnknownOptimizer(String, String),
    /// A step that cannot be taken as asked (a singular Hessian, no damped step that lowers
    /// the loss); the parameters are unchanged.
    #[error("{0}")]
    Numerical(String),
    /// Malformed or unknown configuration (replay `run.json`, hyper-parameter objects).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Tensors registered or addressed inconsistently.
    #[error("{0}")]
    Tensor(String),
    /// Data whose length does not match the tensor it is written to.
    #[error("size mismatch for {what}: expected {expected} elements, got {actual}")]
    SizeMismatch {
        /// What was written (e.g. `gradient of "w"`).
        what: String,
        /// The elements the destination holds.
        expected: usize,
        /// The elements given.
        actual: usize,
    },
    /// A wgpu validation or out-of-memory error caught in an error scope.
    #[error("GPU error while {context}: {message}")]
    Gpu {
        /// What the library was doing (e.g. `compiling the adam kernel (main)`).
        context: String,
        /// wgpu's error message.
        message: String,
    },
    /// `clip_grad_norm` with `error_if_nonfinite`: a step's total gradient norm was NaN or
    /// infinite. The step was skipped, so nothing changed.
    #[error("the total norm of the gradients is non-finite, so it cannot be clipped (error_if_nonfinite); the step was skipped")]
    NonFiniteGradNorm,
    /// More steps were skipped on the GPU between two reads of the counters than the ring of
    /// step terms covers, or (gradient presence) a tensor got a gradient again after missing
    /// more steps than the ring holds.
    #[error("{0}")]
    StepTermsLost(String),
    /// A step was recorded while every slot of the scalar ring still belonged to a step that
    /// was recorded but not submitted. Nothing was recorded.
    #[error(
        "{in_flight} steps are recorded but not yet submitted, as many as the ring of step scalars holds \
         (OptimizerOptions::steps_in_flight): submit the encoders holding them first, or raise steps_in_flight"
    )]
    StepsInFlight {
        /// The ring's slots, all taken.
        in_flight: u64,
    },
    /// A [`TensorId`](crate::TensorId) that another [`Parameters`](crate::Parameters) issued.
    #[error("tensor id {index} was issued by another Parameters than this optimizer's")]
    ForeignTensor {
        /// The id's registration index in the collection that issued it.
        index: usize,
    },
    /// A checkpoint that cannot be read or does not fit the optimizer.
    #[error("{0}")]
    Checkpoint(String),
    /// Reading a buffer back from the GPU failed.
    #[error("GPU read-back failed: {0}")]
    ReadBack(String),
    /// Reading or writing safetensors data failed.
    #[error("safetensors {path}: {message}")]
    Safetensors {
        /// The file (or other origin) of the data.
        path: String,
        /// The safetensors library's or the layout check's message.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for `Result<T, wgpu_optim::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
