//! L-BFGS checkpoints: the parameters and torch's state, as one safetensors file.
//!
//! Tensors: every parameter under its name; torch's flat vectors, unpadded as torch's `cat`
//! of the parameters: `d`, `prev_flat_grad`, `old_dirs` and `old_stps` (`[len(history), n]`,
//! oldest first), `ro`, `al` (`[len(history)]`) and `H_diag` (0-d). Metadata `lbfgs`: the
//! hyper-parameters, `func_evals`, `n_iter`, `t` (with whether torch holds it as a tensor) and
//! `prev_loss`. Restoring it continues a run exactly: the next steps equal those of the run
//! that saved it, bit for bit.

use std::collections::HashMap;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::scalar::Scalar;
use super::vectors::{register, Vector, Vectors};
use super::{Driver, LbfgsOptions};
use crate::error::{Error, Result};
#[cfg(not(target_arch = "wasm32"))]
use crate::tensor_file::write_file;
use crate::tensor_file::{read_safetensors_bytes, serialize_safetensors, NamedTensor};

/// The metadata of an L-BFGS checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    hyperparameters: LbfgsOptions,
    func_evals: u64,
    n_iter: u64,
    /// `t` and whether torch holds it as a 0-dim tensor.
    t: Option<(f64, bool)>,
    prev_loss: Option<f64>,
}

const METADATA_KEY: &str = "lbfgs";

impl<B: Vectors> Driver<B> {
    /// The checkpoint's bytes (safetensors).
    pub async fn checkpoint_async(&mut self) -> Result<Vec<u8>> {
        let param = self.vectors.read_vector(Vector::Param).await?;
        let mut tensors: Vec<NamedTensor> = self
            .tensors
            .iter()
            .map(|(name, shape, offset)| NamedTensor { name: name.clone(), shape: shape.clone(), data: param[*offset..*offset + shape.iter().product::<usize>()].to_vec(), dtype: crate::storage::Dtype::F32 })
            .collect();
        let n = self.tensors.iter().map(|(_, shape, _)| shape.iter().product::<usize>()).sum::<usize>();
        let registers = self.vectors.read_registers().await?;
        if self.state.n_iter > 0 {
            let d = self.vectors.read_vector(self.direction).await?;
            tensors.push(NamedTensor { name: "d".into(), shape: vec![n], data: self.unpad(&d), dtype: crate::storage::Dtype::F32 });
            tensors.push(NamedTensor { name: "H_diag".into(), shape: vec![], data: vec![registers[register::H_DIAG]], dtype: crate::storage::Dtype::F32 });
            let (mut dirs, mut stps, mut ro, mut al) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for slot in self.state.history.clone() {
                let (y, s) = self.ring[slot];
                let (dir, stp) = (self.vectors.read_vector(y).await?, self.vectors.read_vector(s).await?);
                dirs.extend(self.unpad(&dir));
                stps.extend(self.unpad(&stp));
                ro.push(registers[self.vectors.ro_base() + slot]);
                al.push(registers[self.vectors.al_base() + slot]);
            }
            let m = self.state.history.len();
            tensors.push(NamedTensor { name: "old_dirs".into(), shape: vec![m, n], data: dirs, dtype: crate::storage::Dtype::F32 });
            tensors.push(NamedTensor { name: "old_stps".into(), shape: vec![m, n], data: stps, dtype: crate::storage::Dtype::F32 });
            tensors.push(NamedTensor { name: "ro".into(), shape: vec![m], data: ro, dtype: crate::storage::Dtype::F32 });
            tensors.push(NamedTensor { name: "al".into(), shape: vec![m], data: al, dtype: crate::storage::Dtype::F32 });
        }
        if let Some(prev) = self.state.prev_flat_grad {
            let values = self.vectors.read_vector(prev).await?;
            tensors.push(NamedTensor { name: "prev_flat_grad".into(), shape: vec![n], data: self.unpad(&values), dtype: crate::storage::Dtype::F32 });
        }
        let header = Header {
            hyperparameters: self.options.clone(),
            func_evals: self.state.func_evals,
            n_iter: self.state.n_iter,
            t: self.state.t.map(|t| (t.to_f64(), t.is_tensor())),
            prev_loss: self.state.prev_loss,
        };
        let metadata = HashMap::from([(METADATA_KEY.to_string(), serde_json::to_string(&header).expect("the header serializes"))]);
        serialize_safetensors(&tensors, metadata)
    }

    /// Continues from a checkpoint of an optimizer over the same tensors (names and shapes)
    /// with the same `history_size`: parameters, state and hyper-parameters. A checkpoint that
    /// does not fit is an error and changes nothing.
    pub async fn restore_async(&mut self, bytes: &[u8]) -> Result<()> {
        let corrupt = |message: String| Error::Safetensors { path: "L-BFGS checkpoint".into(), message };
        let (tensors, metadata) = read_safetensors_bytes(bytes).map_err(corrupt)?;
        let header: Header = metadata
            .get(METADATA_KEY)
            .ok_or_else(|| corrupt(format!("no {METADATA_KEY:?} metadata: not an L-BFGS checkpoint")))
            .and_then(|text| serde_json::from_str(text).map_err(|e| corrupt(format!("its {METADATA_KEY:?} metadata: {e}"))))?;
        header.hyperparameters.validate()?;
        if header.hyperparameters.history_size != self.options.history_size {
            return Err(Error::Config(format!(
                "the checkpoint's history_size is {}, this optimizer's {}: build it with the checkpoint's",
                header.hyperparameters.history_size, self.options.history_size
            )));
        }
        let n = self.tensors.iter().map(|(_, shape, _)| shape.iter().product::<usize>()).sum::<usize>();
        let find = |name: &str| tensors.iter().find(|t| t.name == name);
        let take = |name: &str, shape: &[usize]| -> Result<Option<&NamedTensor>> {
            match find(name) {
                Some(t) if t.shape == shape => Ok(Some(t)),
                Some(t) => Err(corrupt(format!("tensor {name:?} has shape {:?}, expected {shape:?}", t.shape))),
                None => Ok(None),
            }
        };
        // Check everything before writing anything.
        let mut params = Vec::new();
        for (name, shape, offset) in &self.tensors {
            let tensor = take(name, shape)?.ok_or_else(|| corrupt(format!("no parameter tensor {name:?}")))?;
            params.push((*offset, &tensor.data));
        }
        let started = header.n_iter > 0;
        let d = if started { Some(take("d", &[n])?.ok_or_else(|| corrupt("no \"d\" after an iteration".into()))?) } else { None };
        let h_diag = if started { Some(take("H_diag", &[])?.ok_or_else(|| corrupt("no \"H_diag\"".into()))?) } else { None };
        let m = find("ro").map_or(0, |t| t.data.len());
        if m > self.options.history_size {
            return Err(corrupt(format!("{m} history pairs, more than history_size {}", self.options.history_size)));
        }
        let history = if started {
            let get = |name: &str, shape: &[usize]| take(name, shape)?.ok_or_else(|| corrupt(format!("no {name:?}")));
            Some((get("old_dirs", &[m, n])?, get("old_stps", &[m, n])?, get("ro", &[m])?, get("al", &[m])?))
        } else {
            None
        };
        let prev = take("prev_flat_grad", &[n])?;
        if started && (prev.is_none() || header.t.is_none() || header.prev_loss.is_none()) {
            return Err(corrupt("a started run needs prev_flat_grad, t and prev_loss".into()));
        }

        let mut flat = vec![0.0f32; self.vectors.len()];
        for (offset, data) in params {
            flat[offset..offset + data.len()].copy_from_slice(data);
        }
        self.vectors.write_vector(Vector::Param, &flat)?;
        let mut registers = self.vectors.read_registers().await?;
        self.state = super::State {
            func_evals: header.func_evals,
            n_iter: header.n_iter,
            t: header.t.map(|(value, tensor)| if tensor { Scalar::Tensor(value as f32) } else { Scalar::Float(value) }),
            prev_loss: header.prev_loss,
            history: Vec::new(),
            prev_flat_grad: None,
        };
        if let Some(d) = d {
            let padded = self.pad(&d.data);
            self.vectors.write_vector(self.direction, &padded)?;
        }
        if let Some(h) = h_diag {
            registers[register::H_DIAG] = h.data[0];
        }
        if let Some((dirs, stps, ro, al)) = history {
            for k in 0..m {
                let slot = self.free_slot()?;
                let (y, s) = self.ring[slot];
                let (dir, stp) = (self.pad(&dirs.data[k * n..(k + 1) * n]), self.pad(&stps.data[k * n..(k + 1) * n]));
                self.vectors.write_vector(y, &dir)?;
                self.vectors.write_vector(s, &stp)?;
                registers[self.vectors.ro_base() + slot] = ro.data[k];
                registers[self.vectors.al_base() + slot] = al.data[k];
                self.state.history.push(slot);
            }
        }
        if let Some(prev) = prev {
            let vector = self.fresh_gradient(&[])?;
            let padded = self.pad(&prev.data);
            self.vectors.write_vector(vector, &padded)?;
            self.state.prev_flat_grad = Some(vector);
        }
        self.vectors.write_registers(&registers)?;
        self.options = header.hyperparameters;
        Ok(())
    }

    /// Writes [`Driver::checkpoint_async`] to a file (through a temporary file).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint(&mut self, path: &Path) -> Result<()> {
        let bytes = pollster::block_on(self.checkpoint_async())?;
        write_file(path, &bytes)
    }

    /// [`Driver::restore_async`] from a file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        pollster::block_on(self.restore_async(&bytes)).map_err(|e| match e {
            Error::Safetensors { message, .. } => Error::Safetensors { path: path.display().to_string(), message },
            other => other,
        })
    }

    /// torch's flat vector (the tensors back to back) of a padded vector.
    fn unpad(&self, padded: &[f32]) -> Vec<f32> {
        let mut flat = Vec::new();
        for (_, shape, offset) in &self.tensors {
            flat.extend_from_slice(&padded[*offset..*offset + shape.iter().product::<usize>()]);
        }
        flat
    }

    /// The padded vector of torch's flat one.
    fn pad(&self, flat: &[f32]) -> Vec<f32> {
        let mut padded = vec![0.0; self.vectors.len()];
        let mut at = 0;
        for (_, shape, offset) in &self.tensors {
            let len: usize = shape.iter().product();
            padded[*offset..*offset + len].copy_from_slice(&flat[at..at + len]);
            at += len;
        }
        padded
    }
}
