//! Parity with PyTorch: replay every golden case (recorded from `torch.optim` by
//! `tests/golden/generate.py`) on a backend and compare with what torch produced.
//!
//! Errors are measured per tensor against its scale (see [`crate::compare::Difference`]) and
//! expressed in float32 ulps of that scale. The tolerance is per rule:
//!
//! | rule | ulps | why |
//! |---|---|---|
//! | SGD | 8 | a few multiply-adds per step; torch's CPU kernels may fuse a*b+c (FMA) where we round twice |
//! | ASGD | 8 | as SGD: two multiply-adds per step (`p*(1 - lambd*eta) - eta*g`, `ax + (p - ax)*mu`) that torch's vectorized `add(alpha=)` may fuse (FMA) where we round twice, and `1 - lambd*eta` formed in f32 where torch forms it in f64; `eta` and `mu` are rounded from f64 as torch rounds them, so they match exactly (measured 2 on the CPU reference, 2–4 on Vulkan and GL depending on whether the driver fuses, on the parameters and `ax`) |
//! | SparseAdam | 4 | torch's own arithmetic in torch's order (`m + (g - m)*(1-beta1)`, the numerator `m_update + m_old`, `sqrt(v_update + v_old) + eps`), the step size rounded from f64 as torch rounds it; one sqrt and one division per step (measured 1 on every backend); untouched rows are bit-identical |
//! | AdamWScheduleFree | 16 | as Adam: a sqrt and a division per step, a lerp and two `add(alpha=)` torch's vectorized kernels may fuse (FMA), and the factor `lr_t*(beta1*(1 - ckp1) - 1)` formed in f32 where the reference forms it in f64 (measured 4 on every backend) |
//! | Rprop | 2 | every operation is exact (signs, clamps, `p ± step_size`) or one correctly rounded product (`step_size*eta`), so no ulp is lost (measured 0 on every backend); a differing sign of `g*prev` would cost thousands |
//! | Adam, AdamW, Adagrad | 16 | plus a sqrt and a division per step, and the step size `lr / (1 - beta1^t)` or `lr / (1 + (t-1)*lr_decay)` formed in f32 (so that lr and t can change apart) where torch divides in f64: up to an ulp per step (measured 10 for Adagrad) |
//! | RAdam | 16 | as Adam: a sqrt, a reciprocal and a division per step; the bias corrections and rect are rounded from f64 as torch's Python floats are, the products taken in torch's order (measured 2) |
//! | Lion | 16 | two multiply-adds per step (`m*beta1 + (1-beta1)*g`, `m*beta2 + (1-beta2)*g`) that torch's vectorized `add(alpha=)` fuses (FMA) where we round twice; the update itself is `±lr`, exact, and a flipped sign would cost thousands of ulps (measured 6–8, on `exp_avg`) |
//! | Adamax | 48 | the step size `lr / (1 - beta1^t)` formed in f32 (as Adam's, so that lr and t can change apart) where torch divides in f64: Adamax's update `m/u` is about ±1 whatever the gradient's scale, so every step moves a parameter by about the step size and its rounding accumulates in tensors that move far relative to their scale (measured 25.5 on `adamax-wd-max-magnitudes`, ≤ 2 elsewhere; a float32 emulation of torch's order there gives 10.5 ulps with the f64 step size and 25.5 with the f32 one, the rest being torch's fused `g + wd*p`) |
//! | Adadelta | 24 | two square roots, a division and a product feed `acc_delta` each step (measured 18) |
//! | NAdam | 64 | torch's own single-tensor and foreach NAdam differ by 7.6e-6 (≈ 64 ulps) on the `magnitudes` case |
//! | RMSprop | 160 | centered RMSprop with momentum on gradients near eps divides by sqrt(var) + eps, amplifying rounding ~1/eps; torch's FMA rounding gives ≈ 130 ulps there |
//! | Lamb | 16 | two per-tensor norms (the trust ratio) and the global gradient norm, summed in another order than torch's (measured 3) |
//! | Adan | 32 | three moving averages per step (`m*beta1 + (1-beta1)*g`, `d*beta2 + (1-beta2)*(g - g_prev)`, `v*beta3 + ((1-beta3)*n)*n`) whose `add(alpha=)`/`addcmul` torch's vectorized kernels may fuse (FMA) where we round twice, a sqrt and two divisions, and the step sizes `lr / (1 - beta1^t)`, `lr*beta2 / (1 - beta2^t)` formed in f32 (as Adam's) where the reference divides in f64; `exp_avg_diff` averages gradient differences, which cancel, so its largest magnitude is small against the terms it sums and each rounding weighs more there (measured 22 on every backend, on `exp_avg_diff` of `adan-default-groups`; 4.5 on the parameters of `adan-default-long`) |
//! | Adafactor | 32 | per-tensor norms and row/column norms summed in another order, and alpha and the step size formed in f32 where torch uses Python floats from `.item()` (measured 10) |
//! | Muon (f32) | 16 | five Newton–Schulz iterations of matrix products accumulated in index order where torch's BLAS blocks them (measured 4); also mixed Muon + AdamW groups (measured 7) |
//! | Muon (bf16) | 32,768 | against torch's own bfloat16 Newton–Schulz: both round every product to bfloat16 (2^16 f32 ulps apart), and the f32 sums before rounding differ in order, so single elements of the update land one bfloat16 ulp apart; the bound is half a bfloat16 ulp of each parameter's scale (measured 8,281, a relative 5.0e-4; the exact f32 mode is 1.8e-3 from torch's bfloat16) |
//!
//! A wrong constant or formula shows up as thousands of ulps or more.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::compare::compare;
use crate::error::{Error, Result};
use crate::replay::ReplayCase;
use crate::tensor_file::{read_safetensors, NamedTensor};

/// The allowed error of a rule, in ulps of each tensor's largest magnitude.
pub fn tolerance_ulps(rule: &str) -> f64 {
    match rule {
        "SGD" | "ASGD" => 8.0,
        "Rprop" => 2.0,
        "SparseAdam" => 4.0,
        "AdamWScheduleFree" => 16.0,
        "Adam" | "AdamW" | "Adagrad" | "Lamb" | "Muon (f32)" | "Muon (f32) + AdamW" | "RAdam" | "Lion" => 16.0,
        "Adamax" => 48.0,
        "Adadelta" => 24.0,
        "Adafactor" | "Adan" => 32.0,
        "NAdam" => 64.0,
        "RMSprop" => 160.0,
        "Muon (bf16)" => 32768.0,
        _ => 0.0,
    }
}

/// The row a case belongs to in the parity table: its rule, with Muon's Newton–Schulz
/// precision, and the other rules of mixed-rule cases (`"Muon (f32) + AdamW"`).
pub fn rule_label(config: &crate::replay::RunConfig) -> String {
    let label = |optimizer: &str, hyperparameters: &serde_json::Map<String, serde_json::Value>| {
        if optimizer == "Muon" {
            let f32 = hyperparameters.get("ns_precision").and_then(|v| v.as_str()) == Some("float32");
            format!("Muon ({})", if f32 { "f32" } else { "bf16" })
        } else {
            optimizer.to_string()
        }
    };
    let mut labels = vec![label(&config.optimizer, &config.hyperparameters)];
    for group in config.param_groups.iter().flatten() {
        if let Some(other) = group.get("optimizer").and_then(|v| v.as_str()) {
            let other = label(other, group);
            if !labels.contains(&other) {
                labels.push(other);
            }
        }
    }
    labels.join(" + ")
}

/// The outcome of one golden case on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub optimizer: String,
    pub backend: String,
    pub steps: usize,
    /// Largest normwise relative error over the case's tensors.
    pub max_rel: f64,
    /// Largest error in ulps of a tensor's scale.
    pub max_ulps: f64,
    pub worst_tensor: String,
    pub tolerance_ulps: f64,
    pub pass: bool,
}

/// The golden case directories under `dir` (each holds a `run.json`), sorted.
pub fn case_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.display().to_string(), source })?;
    let mut cases: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("run.json").is_file())
        .collect();
    cases.sort();
    if cases.is_empty() {
        return Err(Error::Config(format!("{} holds no golden cases (directories with a run.json)", dir.display())));
    }
    Ok(cases)
}

/// Replays one case with `run` and compares with its `expected.safetensors`.
pub fn check_case(
    dir: &Path,
    backend: &str,
    run: &dyn Fn(&ReplayCase) -> Result<Vec<NamedTensor>>,
) -> Result<CaseResult> {
    let case = ReplayCase::load(&dir.join("run.json"), &dir.join("params.safetensors"), &dir.join("grads.safetensors"))?;
    let expected = read_safetensors(&dir.join("expected.safetensors"))?;
    let actual = run(&case)?;
    let differences = compare(&actual, &expected)?;
    let worst = differences
        .iter()
        .max_by(|a, b| a.scaled_ulps.total_cmp(&b.scaled_ulps))
        .expect("every case expects tensors");
    let rule = rule_label(&case.config);
    let tolerance = tolerance_ulps(&rule);
    Ok(CaseResult {
        case: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        optimizer: rule,
        backend: backend.to_string(),
        steps: case.steps,
        max_rel: differences.iter().map(|d| d.max_rel).fold(0.0, f64::max),
        max_ulps: worst.scaled_ulps,
        worst_tensor: worst.name.clone(),
        tolerance_ulps: tolerance,
        pass: worst.scaled_ulps <= tolerance,
    })
}

/// One row of the parity table: a rule on a backend, over all its cases.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub optimizer: String,
    pub backend: String,
    pub cases: usize,
    pub max_rel: f64,
    pub max_ulps: f64,
    pub tolerance_ulps: f64,
    pub pass: bool,
}

/// Rolls case results up into rule × backend rows, in first-seen order.
pub fn summarize(results: &[CaseResult]) -> Vec<Summary> {
    let mut rows: Vec<Summary> = Vec::new();
    for r in results {
        let row = match rows.iter_mut().position(|s| s.optimizer == r.optimizer && s.backend == r.backend) {
            Some(i) => &mut rows[i],
            None => {
                rows.push(Summary {
                    optimizer: r.optimizer.clone(),
                    backend: r.backend.clone(),
                    cases: 0,
                    max_rel: 0.0,
                    max_ulps: 0.0,
                    tolerance_ulps: r.tolerance_ulps,
                    pass: true,
                });
                rows.last_mut().expect("just pushed")
            }
        };
        row.cases += 1;
        row.max_rel = row.max_rel.max(r.max_rel);
        row.max_ulps = row.max_ulps.max(r.max_ulps);
        row.pass &= r.pass;
    }
    rows
}

/// The parity table as Markdown.
pub fn markdown(adapters: &[String], rows: &[Summary]) -> String {
    let mut out = String::new();
    for adapter in adapters {
        out.push_str(&format!("- {adapter}\n"));
    }
    out.push_str("\n| rule | backend | cases | max rel. error | max ulps | tolerance (ulps) | result |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2e} | {:.1} | {} | {} |\n",
            r.optimizer,
            r.backend,
            r.cases,
            r.max_rel,
            r.max_ulps,
            r.tolerance_ulps,
            if r.pass { "pass" } else { "FAIL" }
        ));
    }
    out
}
