//! The `wgpu-optim replay` command end to end, and its error cases: a clear message, a
//! non-zero exit, and no output file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wgpu_optim::replay::{read_safetensors, write_safetensors, NamedTensor};

const CASE: &str = "tests/golden/cases/adamw-default-groups";

fn case_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(CASE).join(name)
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn replay(config: &Path, params: &Path, grads: &Path, out: &Path, extra: &[&str]) -> Output {
    let _turn = crate::common::gpus(); // fail, not skip, without an adapter; and take turns on it
    Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
        .args(["replay", "--config"])
        .arg(config)
        .arg("--params")
        .arg(params)
        .arg("--grads")
        .arg(grads)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn replay_reproduces_torch_on_every_backend() {
    let dir = scratch("ok");
    for backend in ["vulkan", "gl", "cpu"] {
        let out = dir.join(format!("{backend}.safetensors"));
        let expected = case_file("expected.safetensors");
        let output = replay(
            &case_file("run.json"),
            &case_file("params.safetensors"),
            &case_file("grads.safetensors"),
            &out,
            &["--backend", backend, "--expected", expected.to_str().unwrap()],
        );
        let log = text(&output);
        assert!(output.status.success(), "{backend}: {log}");
        assert!(log.contains("adapter: "), "prints the adapter: {log}");
        assert!(log.contains("PASS"), "{log}");
        let names: Vec<String> = read_safetensors(&out).unwrap().into_iter().map(|t| t.name).collect();
        let expected_names: Vec<String> = read_safetensors(&expected).unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, expected_names, "torch's tensor and state names");
    }
}

/// Writes a modified copy of the case and expects the command to fail with `message`.
fn rejects(test: &str, config: Option<&str>, params: Option<Vec<NamedTensor>>, grads: Option<Vec<NamedTensor>>, message: &str) {
    let dir = scratch(test);
    let config_path = match config {
        Some(text) => {
            std::fs::write(dir.join("run.json"), text).unwrap();
            dir.join("run.json")
        }
        None => case_file("run.json"),
    };
    let params_path = match params {
        Some(t) => {
            write_safetensors(&dir.join("params.safetensors"), &t).unwrap();
            dir.join("params.safetensors")
        }
        None => case_file("params.safetensors"),
    };
    let grads_path = match grads {
        Some(t) => {
            write_safetensors(&dir.join("grads.safetensors"), &t).unwrap();
            dir.join("grads.safetensors")
        }
        None => case_file("grads.safetensors"),
    };
    let out = dir.join("out.safetensors");
    let output = replay(&config_path, &params_path, &grads_path, &out, &["--backend", "cpu"]);
    let log = text(&output);
    assert!(!output.status.success(), "{test} should fail: {log}");
    assert!(log.contains(message), "{test}: expected {message:?} in {log}");
    assert!(!out.exists(), "{test}: no output file on error");
}

#[test]
fn replay_errors_are_clear_and_leave_no_output() {
    let params = read_safetensors(&case_file("params.safetensors")).unwrap();
    let grads = read_safetensors(&case_file("grads.safetensors")).unwrap();

    let mut missing = grads.clone();
    let dropped = missing.remove(0).name;
    rejects("missing", None, None, Some(missing), &format!("the grads file has no tensor {dropped:?}"));

    let mut reshaped = grads.clone();
    reshaped[0].shape.push(1);
    rejects("shape", None, None, Some(reshaped), "has shape");

    let mut uneven = grads.clone();
    let steps = uneven[0].shape[0];
    let per_step = uneven[0].data.len() / steps;
    uneven[0].shape[0] -= 1;
    uneven[0].data.truncate(per_step * (steps - 1));
    rejects("steps", None, None, Some(uneven), "steps but others record");

    let mut extra = grads.clone();
    extra.push(NamedTensor { name: "ghost".into(), shape: vec![steps, 1], data: vec![0.0; steps], dtype: wgpu_optim::Dtype::F32 });
    rejects("extra", None, None, Some(extra), "\"ghost\", which is not a parameter");

    let mut renamed = params.clone();
    renamed[0].name = "other".into();
    rejects("param-name", None, Some(renamed), None, "the grads file has no tensor \"other\"");

    rejects("nan", Some(r#"{"optimizer": "AdamW", "hyperparameters": {"lr": NaN}}"#), None, None, "run.json");
    rejects("negative-lr", Some(r#"{"optimizer": "AdamW", "hyperparameters": {"lr": -0.1}}"#), None, None, "invalid lr value: -0.1");
    rejects("betas", Some(r#"{"optimizer": "Adam", "hyperparameters": {"betas": [0.9, 1.0]}}"#), None, None, "betas[1]");
    rejects("unknown-optimizer", Some(r#"{"optimizer": "Yogi", "hyperparameters": {}}"#), None, None, "unknown optimizer \"Yogi\"");
    rejects("unknown-hyper", Some(r#"{"optimizer": "SGD", "hyperparameters": {"lr": 0.1, "momentun": 0.9}}"#), None, None, "unknown field `momentun`");
    rejects("unknown-key", Some(r#"{"optimizer": "SGD", "hyperparameters": {}, "schedule": {}}"#), None, None, "unknown field `schedule`");
    rejects(
        "group-unknown-tensor",
        Some(r#"{"optimizer": "SGD", "hyperparameters": {}, "param_groups": [{"params": ["nope"]}]}"#),
        None,
        None,
        "\"nope\", which is not in the params file",
    );

    let dir = scratch("missing-file");
    let out = dir.join("out.safetensors");
    let output = replay(&dir.join("absent.json"), &case_file("params.safetensors"), &case_file("grads.safetensors"), &out, &[]);
    assert!(!output.status.success() && text(&output).contains("absent.json"), "{}", text(&output));
    assert!(!out.exists());
}

#[test]
fn an_unknown_backend_is_an_error() {
    let dir = scratch("backend");
    let out = dir.join("out.safetensors");
    let output = replay(&case_file("run.json"), &case_file("params.safetensors"), &case_file("grads.safetensors"), &out, &["--backend", "cuda"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("unknown backend \"cuda\""), "{}", text(&output));
    assert!(!out.exists());
}

#[test]
fn replay_resumes_from_its_checkpoints_exactly() {
    // A torch training loop (warm-up then cosine, norm clipping, three groups), saved every
    // 40 steps and resumed from step 80: the result equals the straight run bit for bit.
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cases/train-adamw-warmup-cosine-clip2");
    let dir = scratch("resume");
    for backend in ["vulkan", "cpu"] {
        let straight = dir.join(format!("straight-{backend}.safetensors"));
        let checkpoints = dir.join(format!("checkpoints-{backend}"));
        let run = |out: &Path, extra: &[&str]| {
            let mut args = vec!["--backend", backend];
            args.extend_from_slice(extra);
            let output = replay(&case.join("run.json"), &case.join("params.safetensors"), &case.join("grads.safetensors"), out, &args);
            assert!(output.status.success(), "{backend}: {}", text(&output));
        };
        run(&straight, &["--save-every", "40", "--checkpoint-dir", checkpoints.to_str().unwrap()]);
        let saved: Vec<String> = {
            let mut names: Vec<String> = std::fs::read_dir(&checkpoints).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            names
        };
        assert_eq!(saved, ["step-000040.safetensors", "step-000080.safetensors", "step-000120.safetensors"]);
        let resumed = dir.join(format!("resumed-{backend}.safetensors"));
        run(&resumed, &["--resume", checkpoints.join("step-000080.safetensors").to_str().unwrap()]);
        let bits = |path: &Path| -> Vec<(String, Vec<u32>)> {
            read_safetensors(path).unwrap().into_iter().map(|t| (t.name, t.data.iter().map(|x| x.to_bits()).collect())).collect()
        };
        assert_eq!(bits(&resumed), bits(&straight), "{backend}");

        // A checkpoint of another run is refused, and nothing is written.
        let other = Path::new(env!("CARGO_MANIFEST_DIR")).join(CASE);
        let out = dir.join(format!("refused-{backend}.safetensors"));
        let output = replay(
            &other.join("run.json"),
            &other.join("params.safetensors"),
            &other.join("grads.safetensors"),
            &out,
            &["--backend", backend, "--resume", checkpoints.join("step-000040.safetensors").to_str().unwrap()],
        );
        assert!(!output.status.success(), "{}", text(&output));
        assert!(text(&output).contains("holds scheduler state but run.json has no scheduler"), "{}", text(&output));
        assert!(!out.exists());
    }
}

#[test]
fn no_xdg_runtime_dir_message_on_a_fresh_machine() {
    let _turn = crate::common::gpus();
    let output = Command::new(env!("CARGO_BIN_EXE_wgpu-optim")).arg("adapters").env_remove("XDG_RUNTIME_DIR").output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(!text(&output).contains("XDG_RUNTIME_DIR"), "a driver's message leaks through: {}", text(&output));
}

const MINIMIZE_CASE: &str = "tests/golden/minimize/cases/lbfgs-rosenbrock-d10-h10-iter4-wolfe";

fn minimize(args: &[&str], start: &Path, out: &Path) -> Output {
    let _turn = crate::common::gpus();
    Command::new(env!("CARGO_BIN_EXE_wgpu-optim")).arg("minimize").args(args).arg("--start").arg(start).arg("--out").arg(out).output().unwrap()
}

/// `wgpu-optim minimize` reproduces a torch LBFGS golden run on every backend and the CPU.
#[test]
fn minimize_reproduces_torch_lbfgs_on_every_backend() {
    let dir = scratch("minimize");
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join(MINIMIZE_CASE);
    // The golden file also holds int64 counts, which read_safetensors (float32 only) refuses.
    let bytes = std::fs::read(case.join("expected.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let expected = |name: &str| -> Vec<f32> { bytemuck::pod_collect_to_vec(file.tensor(name).unwrap().data()) };
    for backend in ["cpu", "vulkan", "gl"] {
        let out = dir.join(format!("{backend}.safetensors"));
        let args = ["--problem", "rosenbrock", "--dim", "10", "--optimizer", "LBFGS", "--steps", "3", "--backend", backend];
        let hyperparameters = ["--hyperparameters", r#"{"lr": 1.0, "max_iter": 4, "history_size": 10, "line_search_fn": "strong_wolfe"}"#];
        let output = minimize(&[&args[..], &hyperparameters[..]].concat(), &case.join("start.safetensors"), &out);
        assert!(output.status.success(), "{backend}: {}", text(&output));
        let written = read_safetensors(&out).unwrap();
        for name in ["x", "loss"] {
            let got = &written.iter().find(|t| t.name == name).unwrap().data;
            let want = expected(name);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&want).fold(0.0f32, |m, (a, e)| m.max((a - e).abs())) / scale;
            assert!(got.len() == want.len() && worst < 1e-5, "{backend}: {name} differs from torch by {worst:e}");
        }
    }
}

#[test]
fn minimize_errors_are_clear_and_leave_no_output() {
    let dir = scratch("minimize-errors");
    let start = dir.join("start.safetensors");
    write_safetensors(&start, &[NamedTensor { name: "x".into(), shape: vec![4], data: vec![0.5; 4], dtype: wgpu_optim::Dtype::F32 }]).unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--problem", "rosenbrock", "--dim", "5", "--optimizer", "LBFGS", "--steps", "2"], "--dim is 5"),
        (&["--problem", "himmelblau", "--dim", "4", "--optimizer", "LBFGS", "--steps", "2"], "unknown problem"),
        (&["--problem", "quadratic", "--dim", "4", "--optimizer", "LBFGS", "--steps", "2", "--hyperparameters", r#"{"history_size": 0}"#], "history_size"),
        (&["--problem", "quadratic", "--dim", "4", "--optimizer", "Adam", "--steps", "2", "--hyperparameters", r#"{"lr": -1}"#], "lr"),
        (&["--problem", "quadratic", "--dim", "4", "--optimizer", "Newtonish", "--steps", "2"], "unknown optimizer"),
        (&["--problem", "quadratic", "--dim", "4", "--optimizer", "LBFGS", "--steps", "2", "--hyperparameters", "{lr: 1}"], "not JSON"),
    ];
    for (args, message) in cases {
        let out = dir.join("out.safetensors");
        let output = minimize(args, &start, &out);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(text(&output).contains(message), "{args:?}: expected {message:?} in {}", text(&output));
        assert!(!out.exists(), "{args:?}: no output file after an error");
    }
}
