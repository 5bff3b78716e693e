//! Every golden case recorded from torch.optim, replayed on the CPU reference and on every
//! adapter, within the per-rule tolerance of `wgpu_optim::parity` (justified there).

use std::path::Path;

use wgpu_optim::parity::{case_dirs, check_case, summarize, CaseResult};

use crate::common::gpus;

fn cases() -> Vec<std::path::PathBuf> {
    case_dirs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cases")).unwrap()
}

fn assert_all_pass(results: &[CaseResult]) {
    for row in summarize(results) {
        eprintln!(
            "{:<9} {:<7} {:>3} cases  max rel {:.2e}  max {:6.1} ulps (tolerance {})",
            row.optimizer, row.backend, row.cases, row.max_rel, row.max_ulps, row.tolerance_ulps
        );
    }
    let failures: Vec<String> = results
        .iter()
        .filter(|r| !r.pass)
        .map(|r| format!("{} on {}: {} off by {:.1} ulps (tolerance {})", r.case, r.backend, r.worst_tensor, r.max_ulps, r.tolerance_ulps))
        .collect();
    assert!(failures.is_empty(), "golden cases outside tolerance:\n{}", failures.join("\n"));
}

#[test]
fn golden_cases_cover_every_optimizer() {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cases/manifest.json")).unwrap(),
    )
    .unwrap();
    let cases = manifest["cases"].as_array().expect("manifest lists cases");
    assert_eq!(cases.len(), self::cases().len(), "manifest and case directories agree");
    for optimizer in wgpu_optim::rules::OPTIMIZER_NAMES {
        assert!(
            cases.iter().filter(|c| c["optimizer"] == *optimizer).count() >= 5,
            "{optimizer} has at least five golden cases"
        );
    }
}

#[test]
fn cpu_reference_matches_torch() {
    let results: Vec<CaseResult> =
        cases().iter().map(|dir| check_case(dir, "cpu", &|case| case.run_cpu()).unwrap()).collect();
    assert_all_pass(&results);
}

#[test]
fn every_adapter_matches_torch() {
    let mut results = Vec::new();
    for gpu in gpus() {
        let backend = format!("{:?}", gpu.adapter().backend).to_lowercase();
        for dir in cases() {
            results.push(check_case(&dir, &backend, &|case| case.run_gpu(gpu)).unwrap());
        }
    }
    assert_all_pass(&results);
}
