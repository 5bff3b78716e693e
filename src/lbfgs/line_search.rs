//! torch's `_strong_wolfe` and `_cubic_interpolate` (ported by torch from minFunc's
//! `lswolfe.lua` and `polyinterp.lua`), line for line over [`Scalar`]s, so that each branch is
//! taken on the values torch would compare.
//!
//! A gradient here is a handle: the vector it was gathered into on the GPU plus the two
//! scalars the search reads of it, `g·d` and `max|g|`. torch clones gradient tensors where the
//! search keeps them; a gathered vector is never written again while a handle to it is live,
//! so a handle is its clone.

use super::scalar::Scalar;
use super::vectors::{Vector, Vectors};
use super::Driver;
use crate::error::Result;

/// A gathered gradient: where it is, `g · d` and `max |g|`.
#[derive(Clone, Copy, Debug)]
pub struct Gradient {
    pub vector: Vector,
    pub gtd: Scalar,
    pub max_abs: f32,
}

/// The minimizer of the cubic through `(x1, f1)` and `(x2, f2)` with slopes `g1`, `g2`, within
/// `bounds` (default: between the points).
pub(crate) fn cubic_interpolate(
    x1: Scalar,
    f1: Scalar,
    g1: Scalar,
    x2: Scalar,
    f2: Scalar,
    g2: Scalar,
    bounds: Option<(Scalar, Scalar)>,
) -> Scalar {
    let (xmin_bound, xmax_bound) = match bounds {
        Some(bounds) => bounds,
        None if x1.le(x2) => (x1, x2),
        None => (x2, x1),
    };
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2_square = d1 * d1 - g1 * g2;
    if d2_square.ge(Scalar::Float(0.0)) {
        let d2 = d2_square.sqrt();
        let min_pos = if x1.le(x2) {
            x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        } else {
            x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
        };
        min_pos.max(xmin_bound).min(xmax_bound)
    } else {
        (xmin_bound + xmax_bound) / 2.0
    }
}

/// What the search returns: the loss, gradient and step length of the point it chose, and
/// the closure evaluations it made.
pub(crate) struct Found {
    pub loss: Scalar,
    pub grad: Gradient,
    pub t: Scalar,
    pub evaluations: u64,
}

const C1: f64 = 1e-4;
const C2: f64 = 0.9;
const TOLERANCE_CHANGE: f64 = 1e-9;

impl<B: Vectors> Driver<B> {
    /// torch's `_strong_wolfe(obj_func, x, t, d, f, g, gtd, max_ls=max_ls)`, with `x` saved in
    /// the driver's `x_init` vector and `d` in its direction vector.
    pub(crate) async fn strong_wolfe<F>(
        &mut self,
        closure: &mut F,
        mut t: Scalar,
        f: Scalar,
        g: Gradient,
        gtd: Scalar,
        d_norm: Scalar,
        max_ls: i64,
    ) -> Result<Found>
    where
        F: for<'a> FnMut(&mut B::Evaluation<'a>) -> Result<()>,
    {
        let mut live = vec![g.vector];
        let (mut f_new, mut g_new) = self.directional_evaluate(closure, t, &live).await?;
        let mut ls_func_evals = 1;
        let mut gtd_new = g_new.gtd;

        // bracket an interval containing a point satisfying the Wolfe criteria
        let (mut t_prev, mut f_prev, mut g_prev, mut gtd_prev) = (Scalar::Float(0.0), f, g, gtd);
        let mut done = false;
        let mut ls_iter = 0;
        let mut bracket: Vec<Scalar> = Vec::new();
        let mut bracket_f: Vec<Scalar> = Vec::new();
        let mut bracket_g: Vec<Gradient> = Vec::new();
        let mut bracket_gtd: Vec<Scalar> = Vec::new();
        while ls_iter < max_ls {
            // check conditions
            if f_new.gt(f + C1 * t * gtd) || (ls_iter > 1 && f_new.ge(f_prev)) {
                (bracket, bracket_f, bracket_g, bracket_gtd) = (
                    vec![t_prev, t],
                    vec![f_prev, f_new],
                    vec![g_prev, g_new],
                    vec![gtd_prev, gtd_new],
                );
                break;
            }
            if gtd_new.abs().le(-C2 * gtd) {
                (bracket, bracket_f, bracket_g) = (vec![t], vec![f_new], vec![g_new]);
                done = true;
                break;
            }
            if gtd_new.ge(Scalar::Float(0.0)) {
                (bracket, bracket_f, bracket_g, bracket_gtd) = (
                    vec![t_prev, t],
                    vec![f_prev, f_new],
                    vec![g_prev, g_new],
                    vec![gtd_prev, gtd_new],
                );
                break;
            }
            // interpolate
            let min_step = t + 0.01 * (t - t_prev);
            let max_step = t * 10.0;
            let tmp = t;
            t = cubic_interpolate(
                t_prev,
                f_prev,
                gtd_prev,
                t,
                f_new,
                gtd_new,
                Some((min_step, max_step)),
            );
            // next step
            t_prev = tmp;
            f_prev = f_new;
            g_prev = g_new;
            gtd_prev = gtd_new;
            live = vec![g.vector, g_prev.vector];
            (f_new, g_new) = self.directional_evaluate(closure, t, &live).await?;
            ls_func_evals += 1;
            gtd_new = g_new.gtd;
            ls_iter += 1;
        }
        // reached max number of iterations?
        if ls_iter == max_ls {
            (bracket, bracket_f, bracket_g) =
                (vec![Scalar::Float(0.0), t], vec![f, f_new], vec![g, g_new]);
        }

        // zoom phase: refine the bracket until a point satisfies the criteria
        let mut insuf_progress = false;
        let (mut low_pos, mut high_pos) = if bracket_f[0].le(*bracket_f.last().expect("a bracket"))
        {
            (0, 1)
        } else {
            (1, 0)
        };
        while !done && ls_iter < max_ls {
            // line-search bracket is so small
            if ((bracket[1] - bracket[0]).abs() * d_norm).lt(Scalar::Float(TOLERANCE_CHANGE)) {
                break;
            }
            // compute new trial value
            t = cubic_interpolate(
                bracket[0],
                bracket_f[0],
                bracket_gtd[0],
                bracket[1],
                bracket_f[1],
                bracket_gtd[1],
                None,
            );
            // test that we are making sufficient progress
            let (high, low) = (bracket[0].max(bracket[1]), bracket[0].min(bracket[1]));
            let eps = 0.1 * (high - low);
            if (high - t).min(t - low).lt(eps) {
                // interpolation close to boundary
                if insuf_progress || t.ge(high) || t.le(low) {
                    // evaluate at 0.1 away from boundary
                    t = if (t - high).abs().lt((t - low).abs()) {
                        high - eps
                    } else {
                        low + eps
                    };
                    insuf_progress = false;
                } else {
                    insuf_progress = true;
                }
            } else {
                insuf_progress = false;
            }
            // Evaluate new point
            live = vec![g.vector, bracket_g[0].vector, bracket_g[1].vector];
            (f_new, g_new) = self.directional_evaluate(closure, t, &live).await?;
            ls_func_evals += 1;
            gtd_new = g_new.gtd;
            ls_iter += 1;

            if f_new.gt(f + C1 * t * gtd) || f_new.ge(bracket_f[low_pos]) {
                // Armijo condition not satisfied or not lower than lowest point
                bracket[high_pos] = t;
                bracket_f[high_pos] = f_new;
                bracket_g[high_pos] = g_new;
                bracket_gtd[high_pos] = gtd_new;
                (low_pos, high_pos) = if bracket_f[0].le(bracket_f[1]) {
                    (0, 1)
                } else {
                    (1, 0)
                };
            } else {
                if gtd_new.abs().le(-C2 * gtd) {
                    // Wolfe conditions satisfied
                    done = true;
                } else if (gtd_new * (bracket[high_pos] - bracket[low_pos])).ge(Scalar::Float(0.0))
                {
                    // old high becomes new low
                    bracket[high_pos] = bracket[low_pos];
                    bracket_f[high_pos] = bracket_f[low_pos];
                    bracket_g[high_pos] = bracket_g[low_pos];
                    bracket_gtd[high_pos] = bracket_gtd[low_pos];
                }
                // new point becomes new low
                bracket[low_pos] = t;
                bracket_f[low_pos] = f_new;
                bracket_g[low_pos] = g_new;
                bracket_gtd[low_pos] = gtd_new;
            }
        }
        Ok(Found {
            loss: bracket_f[low_pos],
            grad: bracket_g[low_pos],
            t: bracket[low_pos],
            evaluations: ls_func_evals,
        })
    }
}
