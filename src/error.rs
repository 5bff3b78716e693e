//! The library's error type: everything a user can get wrong is an `Error`, never a panic.

/// Errors returned by wgpu-optim.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter of the requested backend exists on this machine.
    #[error("no {requested} GPU adapter found (adapters present: {present}). {hint}")]
    NoAdapter {
        requested: String,
        present: String,
        hint: &'static str,
    },
    /// The adapter exists but cannot run compute shaders (e.g. a desktop OpenGL 3.3 context).
    #[error("{adapter} cannot run compute shaders, which every optimizer step needs. {reason}")]
    NoComputeShaders { adapter: String, reason: &'static str },
    /// `wgpu::Adapter::request_device` failed.
    #[error("could not open the GPU device: {0}")]
    RequestDevice(String),
    /// A backend name that is not one of auto, vulkan, gl, metal, dx12 (or cpu where allowed).
    #[error("unknown backend {0:?}: expected one of auto, vulkan, gl, metal, dx12")]
    UnknownBackend(String),
    /// A hyper-parameter value that torch.optim would reject (or a non-finite one).
    #[error("{optimizer}: invalid {name} value: {value} ({requirement})")]
    InvalidHyperparameter {
        optimizer: &'static str,
        name: &'static str,
        value: String,
        requirement: &'static str,
    },
    /// An optimizer name the library does not implement.
    #[error("unknown optimizer {0:?}: expected one of {1}")]
    UnknownOptimizer(String, String),
    /// Malformed or unknown configuration (replay `run.json`, hyper-parameter objects).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Tensors registered or addressed inconsistently.
    #[error("{0}")]
    Tensor(String),
    /// Data whose length does not match the tensor it is written to.
    #[error("size mismatch for {what}: expected {expected} elements, got {actual}")]
    SizeMismatch {
        what: String,
        expected: usize,
        actual: usize,
    },
    /// A wgpu validation or out-of-memory error caught in an error scope.
    #[error("GPU error while {context}: {message}")]
    Gpu { context: String, message: String },
    /// `clip_grad_norm` with `error_if_nonfinite`: a step's total gradient norm was NaN or
    /// infinite. The step was skipped, so nothing changed.
    #[error("the total norm of the gradients is non-finite, so it cannot be clipped (error_if_nonfinite); the step was skipped")]
    NonFiniteGradNorm,
    /// More steps were skipped on the GPU between two reads of the counters than the ring of
    /// step terms covers.
    #[error("{0}")]
    StepTermsLost(String),
    /// A checkpoint that cannot be read or does not fit the optimizer.
    #[error("{0}")]
    Checkpoint(String),
    /// Reading a buffer back from the GPU failed.
    #[error("GPU read-back failed: {0}")]
    ReadBack(String),
    /// Reading or writing safetensors data failed.
    #[error("safetensors {path}: {message}")]
    Safetensors { path: String, message: String },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for `Result<T, wgpu_optim::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
