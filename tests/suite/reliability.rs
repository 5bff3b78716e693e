//! Reliability over long runs, the quick mode of `examples/reliability` (README: "Reliability,
//! measured"): 2,000 AdamW steps on each GPU against the CPU reference with the same
//! gradients, and host and GPU memory over 1,000 steps. The full run (100,000 and 10,000
//! steps) is `cargo run --release --example reliability`; CI does not run it.

#[path = "../../examples/reliability/measure.rs"]
#[allow(dead_code)] // `open` and the process-wide counts serve the example
mod measure;

use crate::common::gpus;
use crate::rules::GPU_VS_CPU_TOLERANCE;

/// Counts this binary's host allocations (per thread, so other tests running at the same time
/// do not show in a test's counts); the cost is two thread-local additions per allocation.
#[global_allocator]
static ALLOCATOR: measure::CountingAllocator = measure::CountingAllocator;

/// Live bytes the measuring thread may gain between step 100 and step 1,000 (wgpu's own
/// containers settle in the first steps; llvmpipe Vulkan: +576 bytes). A step that leaked even
/// its 24-byte completion callback would gain 21,600.
const LIVE_BYTES_SLACK: i64 = 4096;

#[test]
fn gpu_gradients_of_the_long_run_equal_the_cpu_reference() {
    for gpu in gpus() {
        let result = measure::check_gradients(gpu).unwrap();
        assert_eq!(result, Ok(()), "{}", gpu.adapter());
    }
}

#[test]
fn drift_over_2000_adamw_steps_stays_within_the_gpu_vs_cpu_tolerance() {
    for gpu in gpus() {
        let drift = measure::drift(gpu, &[100, 2_000]).unwrap();
        for row in &drift.rows {
            for (kind, difference) in &row.tensors {
                assert!(
                    difference.normwise <= GPU_VS_CPU_TOLERANCE,
                    "{kind} after {} steps: normwise difference {:e} ({} ulps at most) on {}",
                    row.step,
                    difference.normwise,
                    difference.max_ulps,
                    gpu.adapter()
                );
            }
        }
        let kinds: Vec<&str> = drift.rows[0].tensors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"], "every state of AdamW is compared");
        eprintln!("{}: drift after 2,000 steps {:e}", gpu.adapter(), drift.rows[1].worst());
    }
}

#[test]
fn memory_stays_flat_over_1000_steps() {
    assert!(measure::counting_is_active(), "the counting allocator is not this binary's global allocator");
    for gpu in gpus() {
        let memory = measure::memory(gpu, None, &[100, 1_000]).unwrap();
        let [first, last] = [&memory.samples[0], &memory.samples[1]];
        let gained = last.host.live_bytes - first.host.live_bytes;
        assert!(
            gained <= LIVE_BYTES_SLACK,
            "{} live bytes gained on the host between step 100 and step 1,000 on {}",
            gained,
            gpu.adapter()
        );
        // wgpu's allocator report (Vulkan, DX12): the same allocations, bytes and blocks.
        assert_eq!(first.gpu, last.gpu, "GPU memory between step 100 and step 1,000 on {}", gpu.adapter());
        let (per_step, gradients) = memory.allocations_per_step(0, 1);
        assert!(per_step > 0.0, "the steps' allocations were counted");
        eprintln!(
            "{}: {per_step:.2} host allocations per step ({:.2} the optimizer's), live bytes {gained:+}, GPU {:?}",
            gpu.adapter(),
            per_step - gradients,
            last.gpu.allocator
        );
    }
}
