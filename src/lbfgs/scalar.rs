//! The scalars of torch's L-BFGS step, which are of two kinds: Python floats (`loss`, `lr`,
//! the line search's constants) and 0-dim float32 tensors (`gtd`, `ys`, a step length `t`
//! computed from them). torch mixes them freely; the kind decides the rounding. A tensor
//! combined with a Python number is computed in float32, the number first cast to float32;
//! two Python numbers are computed in double precision. [`Scalar`] follows these rules so
//! that every branch torch takes on such values is taken here on the same bits.

use std::cmp::Ordering;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// A Python float or a 0-dim float32 tensor of torch's algorithm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    /// A Python `float` (double precision).
    Float(f64),
    /// A 0-dim `float32` tensor.
    Tensor(f32),
}

use Scalar::{Float, Tensor};

impl Scalar {
    /// The value as float32, as torch passes it to a kernel (`alpha=t`, `d.mul(t)`).
    pub fn to_f32(self) -> f32 {
        match self {
            Float(value) => value as f32,
            Tensor(value) => value,
        }
    }

    /// The value as a Python float would print it (a tensor's float32 value, widened).
    pub fn to_f64(self) -> f64 {
        match self {
            Float(value) => value,
            Tensor(value) => f64::from(value),
        }
    }

    /// Whether this is a tensor.
    pub fn is_tensor(self) -> bool {
        matches!(self, Tensor(_))
    }

    /// `abs(x)`.
    pub fn abs(self) -> Self {
        match self {
            Float(value) => Float(value.abs()),
            Tensor(value) => Tensor(value.abs()),
        }
    }

    /// `x.sqrt()` (torch calls it on tensors only).
    pub fn sqrt(self) -> Self {
        match self {
            Float(value) => Float(value.sqrt()),
            Tensor(value) => Tensor(value.sqrt()),
        }
    }

    /// Python's `max(a, b)`: `b` if `b > a`, else `a` (the value keeps its kind).
    pub fn max(self, other: Self) -> Self {
        if other.gt(self) {
            other
        } else {
            self
        }
    }

    /// Python's `min(a, b)`: `b` if `b < a`, else `a`.
    pub fn min(self, other: Self) -> Self {
        if other.lt(self) {
            other
        } else {
            self
        }
    }

    fn compare(self, other: Self) -> Option<Ordering> {
        match (self, other) {
            (Float(a), Float(b)) => a.partial_cmp(&b),
            (a, b) => a.to_f32().partial_cmp(&b.to_f32()),
        }
    }

    /// `self > other`.
    pub fn gt(self, other: Self) -> bool {
        self.compare(other) == Some(Ordering::Greater)
    }

    /// `self >= other`.
    pub fn ge(self, other: Self) -> bool {
        matches!(
            self.compare(other),
            Some(Ordering::Greater | Ordering::Equal)
        )
    }

    /// `self < other`.
    pub fn lt(self, other: Self) -> bool {
        self.compare(other) == Some(Ordering::Less)
    }

    /// `self <= other`.
    pub fn le(self, other: Self) -> bool {
        matches!(self.compare(other), Some(Ordering::Less | Ordering::Equal))
    }
}

impl From<f64> for Scalar {
    fn from(value: f64) -> Self {
        Float(value)
    }
}

macro_rules! binary {
    ($trait:ident, $method:ident, $op:tt) => {
        impl $trait for Scalar {
            type Output = Scalar;
            fn $method(self, other: Scalar) -> Scalar {
                match (self, other) {
                    (Float(a), Float(b)) => Float(a $op b),
                    (a, b) => Tensor(a.to_f32() $op b.to_f32()),
                }
            }
        }
        impl $trait<f64> for Scalar {
            type Output = Scalar;
            fn $method(self, other: f64) -> Scalar {
                self $op Float(other)
            }
        }
        impl $trait<Scalar> for f64 {
            type Output = Scalar;
            fn $method(self, other: Scalar) -> Scalar {
                Float(self) $op other
            }
        }
    };
}

binary!(Add, add, +);
binary!(Sub, sub, -);
binary!(Mul, mul, *);
binary!(Div, div, /);

impl Neg for Scalar {
    type Output = Scalar;
    fn neg(self) -> Scalar {
        match self {
            Float(value) => Float(-value),
            Tensor(value) => Tensor(-value),
        }
    }
}

#[cfg(test)]
mod promotion {
    use super::*;

    #[test]
    fn a_tensor_with_a_float_rounds_the_float_first_and_computes_in_float32() {
        let third = Tensor(1.0 / 3.0);
        // 0.1 as float32 times the float32 third, rounded once to float32.
        assert_eq!(third * 0.1, Tensor((1.0f32 / 3.0) * 0.1f32));
        assert_eq!(Float(0.1) * Float(3.0), Float(0.1 * 3.0));
        // Comparisons with a tensor happen in float32: 1e-10 and its float32 rounding agree here.
        assert!(Tensor(1e-10).le(Float(1e-10)) && Tensor(1e-10).ge(Float(1e-10)));
        assert!(Float(1e-10).lt(Float(1.0000000001e-10)));
        // Python's min and max keep the kind of the value they return.
        assert_eq!(Float(1.0).min(Tensor(0.5)), Tensor(0.5));
        assert_eq!(Float(1.0).min(Tensor(2.0)), Float(1.0));
        assert_eq!(
            Tensor(1.0).max(Float(1.0)),
            Tensor(1.0),
            "ties return the first argument"
        );
    }
}
