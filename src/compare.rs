//! Comparing tensors: largest absolute, relative and ulp differences, for parity checks.

use crate::error::{Error, Result};
use crate::tensor_file::NamedTensor;

/// Distance in units in the last place between two floats: how many representable `f32`
/// lie between them (0 when equal; +0 and -0 are equal; NaN against a number is `u32::MAX`).
pub fn ulps(a: f32, b: f32) -> u32 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() { 0 } else { u32::MAX };
    }
    // Map the sign-magnitude bit patterns onto a monotonic integer line.
    let key = |x: f32| {
        let bits = x.to_bits() as i64;
        if bits & 0x8000_0000 != 0 { -(bits & 0x7fff_ffff) } else { bits }
    };
    (key(a) - key(b)).unsigned_abs().min(u64::from(u32::MAX)) as u32
}

/// The spacing of `f32` values at magnitude `x` (the ulp of `x`).
pub fn ulp_at(x: f32) -> f64 {
    let x = x.abs();
    if !x.is_finite() {
        return f64::INFINITY;
    }
    f64::from(f32::from_bits(x.to_bits() + 1)) - f64::from(x)
}

/// How far one tensor is from its expected value.
///
/// Errors are measured against the tensor's scale, `max|e|`: an optimizer's rounding error
/// is relative to the magnitudes that were added, and an element that ends near zero by
/// cancellation (`p` crossing zero) carries the absolute error of its larger past values, so
/// its element-wise relative error says nothing about the kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    pub name: String,
    pub max_abs: f64,
    /// Normwise relative error: max |a - e| / max |e| (absolute when the tensor is all zeros).
    pub max_rel: f64,
    /// max |a - e| in ulps of max |e|: how many float32 steps at the tensor's scale.
    pub scaled_ulps: f64,
    /// Largest element-wise ulp distance (informative; large near zero crossings).
    pub max_ulps: u32,
}

/// Compares every expected tensor with the actual one of the same name; a missing tensor or a
/// shape mismatch is an error.
pub fn compare(actual: &[NamedTensor], expected: &[NamedTensor]) -> Result<Vec<Difference>> {
    expected
        .iter()
        .map(|e| {
            let a = actual
                .iter()
                .find(|a| a.name == e.name)
                .ok_or_else(|| Error::Tensor(format!("the output has no tensor {:?}", e.name)))?;
            if a.shape != e.shape {
                return Err(Error::Tensor(format!("{:?} has shape {:?}, expected {:?}", e.name, a.shape, e.shape)));
            }
            let scale = e.data.iter().fold(0.0f32, |m, y| m.max(y.abs()));
            let mut max_abs = 0.0f64;
            let mut max_ulps = 0;
            for (&x, &y) in a.data.iter().zip(&e.data) {
                let abs = (f64::from(x) - f64::from(y)).abs();
                max_abs = max_abs.max(if abs.is_nan() { f64::INFINITY } else { abs });
                max_ulps = max_ulps.max(ulps(x, y));
            }
            if max_ulps == 0 {
                max_abs = 0.0; // equal, including matching infinities
            }
            let max_rel = if scale > 0.0 { max_abs / f64::from(scale) } else { max_abs };
            let scaled_ulps = if max_abs == 0.0 { 0.0 } else { max_abs / ulp_at(scale.max(f32::MIN_POSITIVE)) };
            Ok(Difference { name: e.name.clone(), max_abs, max_rel, scaled_ulps, max_ulps })
        })
        .collect()
}
