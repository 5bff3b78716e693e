//! The `precision` section: AdamW's memory (bytes per parameter, from `Optimizer::memory`) and
//! step time for each storage-type combination on one layout (GPT-2 small by default), in one
//! run on one adapter.

use std::time::Instant;

use serde::Serialize;
use wgpu_optim::rules::AdamW;
use wgpu_optim::{Dtype, Optimizer, OptimizerOptions, Precision, Rounding, UpdateRule};

use crate::gpu::{median, Bench};
use crate::layouts::Layout;

#[derive(Clone, Debug, Serialize)]
pub struct PrecisionRow {
    pub combination: String,
    /// Every buffer the optimizer owns, per parameter.
    pub bytes_per_parameter: f64,
    /// The optimizer state's buffers, per parameter.
    pub state_bytes_per_parameter: f64,
    /// Median wall time of a step (recorded, submitted and waited for), milliseconds.
    pub step_ms: f64,
}

/// The combinations timed, from f32 to the leanest.
pub fn combinations() -> Vec<Precision> {
    use Dtype::*;
    let p = |params, master_weights, grads, state, rounding| Precision { params, master_weights, grads, state, rounding };
    let (rne, sr) = (Rounding::NearestEven, Rounding::Stochastic { seed: 1 });
    vec![
        Precision::default(),
        p(F32, false, F32, Bf16, rne),
        p(F32, false, F32, Bf16, sr),
        p(Bf16, true, Bf16, F32, rne),
        p(Bf16, true, Bf16, Bf16, sr),
        p(Bf16, false, Bf16, Bf16, sr),
        p(F16, true, F16, Bf16, sr),
        p(F32, false, F32, Int8, rne),
        p(Bf16, true, Bf16, Int8, rne),
    ]
}

pub fn describe(p: &Precision) -> String {
    let master = if p.master_weights { " + f32 master" } else { "" };
    let rounding = match p.rounding {
        Rounding::NearestEven => "nearest",
        Rounding::Stochastic { .. } => "stochastic",
    };
    format!("params {}{master}, grads {}, state {} ({rounding})", p.params, p.grads, p.state)
}

pub fn precision_section(bench: &Bench, layout: &Layout, steps: usize) -> Result<Vec<PrecisionRow>, String> {
    let layout = layout.one_group();
    let mut rows = Vec::new();
    for precision in combinations() {
        let rules: Vec<Box<dyn UpdateRule>> = vec![Box::new(AdamW::default())];
        let (params, groups) = layout.build(&rules);
        let options = OptimizerOptions { precision, ..Default::default() };
        let mut opt = Optimizer::with_options(&bench.gpu, params, groups, options).map_err(|e| e.to_string())?;
        let memory = opt.memory();
        let mut times = Vec::new();
        for k in 0..steps + 1 {
            let start = Instant::now();
            opt.step_and_submit().map_err(|e| e.to_string())?;
            bench.wait();
            if k > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let row = PrecisionRow {
            combination: describe(&precision),
            bytes_per_parameter: memory.bytes_per_parameter(),
            state_bytes_per_parameter: memory.state_bytes_per_parameter(),
            step_ms: median(&times),
        };
        println!("  {:<62} {:>7.2} B/param  (state {:>5.2})  {:>9.2} ms/step", row.combination, row.bytes_per_parameter, row.state_bytes_per_parameter, row.step_ms);
        rows.push(row);
    }
    Ok(rows)
}
