//! safetensors files of named float32 tensors: what replays read and write, and what
//! checkpoints are made of (with their JSON metadata).

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::storage::Dtype as StorageType;

/// A named float32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// The tensor's name (its key in the file).
    pub name: String,
    /// Dimensions, outermost first; empty for a 0-d tensor.
    pub shape: Vec<usize>,
    /// The values in row-major order: the product of `shape` of them.
    pub data: Vec<f32>,
    /// The type it is stored in (f16 and bf16 values are exactly representable in `data`).
    pub dtype: StorageType,
}

impl NamedTensor {
    /// A float32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        NamedTensor { name: name.into(), shape, data, dtype: StorageType::F32 }
    }
}

/// Reads every tensor of a safetensors file; all must be float32.
pub fn read_safetensors(path: &Path) -> Result<Vec<NamedTensor>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    parse_safetensors(&bytes, &path.display().to_string())
}

/// [`read_safetensors`] of bytes already in memory; `origin` (e.g. the file name) prefixes errors.
pub fn parse_safetensors(bytes: &[u8], origin: &str) -> Result<Vec<NamedTensor>> {
    read_safetensors_bytes(bytes)
        .map(|(tensors, _)| tensors)
        .map_err(|message| Error::Safetensors { path: origin.to_string(), message })
}

/// The float32 tensors (sorted by name) and the metadata of safetensors bytes.
pub(crate) fn read_safetensors_bytes(bytes: &[u8]) -> Result<(Vec<NamedTensor>, HashMap<String, String>), String> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut tensors = Vec::new();
    for (name, view) in file.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => StorageType::F32,
            Dtype::F16 => StorageType::F16,
            Dtype::BF16 => StorageType::Bf16,
            Dtype::U8 => StorageType::Int8,
            other => return Err(format!("tensor {name:?} is {other:?}; only F32, F16, BF16 and U8 are supported")),
        };
        let len = view.shape().iter().product();
        let data = dtype.decode(view.data(), len);
        tensors.push(NamedTensor { name, shape: view.shape().to_vec(), data, dtype });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((tensors, metadata.metadata().clone().unwrap_or_default()))
}

/// Writes float32 tensors as safetensors, through a temporary file so a failure leaves no
/// partial output.
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor]) -> Result<()> {
    let bytes = serialize_safetensors(tensors, HashMap::new()).map_err(|e| match e {
        Error::Safetensors { message, .. } => Error::Safetensors { path: path.display().to_string(), message },
        other => other,
    })?;
    write_file(path, &bytes)
}

/// Writes `bytes` through a temporary file, so a failure leaves no partial output.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io { path: path.display().to_string(), source };
    let partial = path.with_extension("safetensors.partial");
    std::fs::write(&partial, bytes).map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// Float32 tensors and metadata as the bytes of a safetensors file.
pub(crate) fn serialize_safetensors(tensors: &[NamedTensor], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let fail = |e: safetensors::SafeTensorError| Error::Safetensors { path: "(in memory)".into(), message: e.to_string() };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| {
            let mut bytes = t.dtype.encode(&t.data);
            bytes.truncate(t.data.len() * t.dtype.bytes());
            bytes
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, bytes)| {
            let dtype = match t.dtype {
                StorageType::F32 => Dtype::F32,
                StorageType::F16 => Dtype::F16,
                StorageType::Bf16 => Dtype::BF16,
                StorageType::Int8 => Dtype::U8,
            };
            let view = safetensors::tensor::TensorView::new(dtype, t.shape.clone(), bytes).map_err(fail)?;
            Ok((t.name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = (!metadata.is_empty()).then_some(metadata);
    safetensors::serialize(views, metadata).map_err(fail)
}
