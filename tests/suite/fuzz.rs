//! A fuzz harness for the readers of untrusted files, on stable Rust: checkpoints
//! (`Checkpoint::from_bytes`, then restored into a CPU optimizer and its scheduler, and stepped
//! when accepted), safetensors files (`parse_safetensors`, then a replay of them) and run.json
//! (`RunConfig::from_json`, then a replay). Each input is a seed of the committed corpus
//! (tests/fuzz/corpus/, see `fuzz/corpus.rs`) with a few stacked mutations (`fuzz/mutate.rs`).
//!
//! Every input must either be accepted or rejected with a `wgpu_optim::Error` whose message
//! says something; a panic, an empty message or a rejected restore that changed the optimizer or
//! the scheduler fails the test, naming the input's index. A sample of mutated checkpoints is
//! also restored into a real GPU optimizer, whose parameters and state must read back
//! bit-identical after a rejection.
//!
//! - `WGPU_OPTIM_FUZZ_INPUTS=N`: inputs per reader (default 50,000: 10 to 20 s for the three
//!   readers in the dev profile on 2 shared cores; 1,000,000 took 192 s);
//! - `WGPU_OPTIM_FUZZ_GPU_INPUTS=N`: restores per adapter in the GPU sample (default 300);
//! - `WGPU_OPTIM_FUZZ_SEED=S`: another series of inputs (default 0);
//! - `WGPU_OPTIM_FUZZ_REPRO=<reader>:<index>`: runs that one input without catching its panic,
//!   for a backtrace (a failure prints this line);
//! - `WGPU_OPTIM_FUZZ_REASONS=N`: how many kinds of rejection to list (default 12; shown with
//!   `--nocapture`);
//! - `WGPU_OPTIM_FUZZ_WRITE_CORPUS=1`: rewrites the corpus from its generator.

mod corpus;
mod mutate;

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::replay::{NamedTensor, ReplayCase, RunConfig};
use wgpu_optim::tensor_file::parse_safetensors;
use wgpu_optim::{CpuOptimizer, Error, Optimizer, OptimizerOptions, Scheduler, TensorId};

use crate::common::gpus;
use corpus::{checkpoint_cases, corpus_dir, replay_cases, CheckpointCase};
use mutate::{mutate, Dice, Format};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn inputs_per_reader() -> usize {
    env_number("WGPU_OPTIM_FUZZ_INPUTS", 50_000) as usize
}

/// The dice of input `index` of `reader`: independent of every other input, so one input is
/// reproduced from its index alone.
fn dice_for(reader: &str, index: usize) -> Dice {
    let series = env_number("WGPU_OPTIM_FUZZ_SEED", 0);
    let name = reader.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    Dice::new(series.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ name ^ (index as u64).wrapping_mul(0xd134_2543_de82_ef95))
}

// ---- panics -------------------------------------------------------------------------------

thread_local! {
    /// Set while this thread runs fuzz inputs: its panics are recorded here, not printed.
    static FUZZING: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// A panic hook that keeps fuzz inputs' panics quiet (thousands would flood the output) and
/// leaves every other thread's panics to the previous hook.
fn quiet_panics_while_fuzzing() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FUZZING.get() {
                LAST_PANIC.with_borrow_mut(|last| *last = info.to_string());
            } else {
                previous(info);
            }
        }));
    });
}

// ---- the driver ---------------------------------------------------------------------------

/// What a reader made of an input.
enum Verdict {
    Accepted,
    Rejected(Error),
}

impl From<wgpu_optim::Result<()>> for Verdict {
    fn from(result: wgpu_optim::Result<()>) -> Self {
        result.map_or_else(Verdict::Rejected, |()| Verdict::Accepted)
    }
}

/// A fuzzed reader: its corpus and what it does with one input. `check` returns the verdict,
/// or a broken promise (a rejection that changed something) as `Err`.
struct Reader<'a> {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    format: Format,
    check: Box<dyn FnMut(usize, &[u8]) -> Result<Verdict, String> + 'a>,
    /// Rebuilds the reader's state after a panic left it half-changed.
    reset: Box<dyn FnMut() + 'a>,
}

#[derive(Default, Debug)]
struct Tally {
    inputs: usize,
    accepted: usize,
    rejected: usize,
    longest_message: usize,
    /// Rejections by their message's start, digits dropped: what the inputs reach.
    reasons: std::collections::HashMap<String, usize>,
    failures: Vec<String>,
}

/// Runs `inputs` mutated inputs through the reader; fails on a panic, an empty message or a
/// broken promise, after listing them.
fn fuzz(mut reader: Reader, inputs: usize) -> Tally {
    quiet_panics_while_fuzzing();
    let repro = std::env::var("WGPU_OPTIM_FUZZ_REPRO").ok();
    let only: Option<usize> = repro.as_deref().and_then(|r| r.strip_prefix(reader.name)?.strip_prefix(':')?.parse().ok());
    if repro.is_some() && only.is_none() {
        return Tally::default();
    }
    let started = Instant::now();
    let mut tally = Tally::default();
    for index in only.map_or(0..inputs, |i| i..i + 1) {
        let mut dice = dice_for(reader.name, index);
        let seed = dice.below(reader.seeds.len());
        let input = mutate(&reader.seeds[seed], &reader.seeds, reader.format, &mut dice);
        let outcome = if only.is_some() {
            Ok((reader.check)(seed, &input)) // a panic surfaces with its backtrace
        } else {
            FUZZING.set(true);
            let outcome = catch_unwind(AssertUnwindSafe(|| (reader.check)(seed, &input)));
            FUZZING.set(false);
            outcome
        };
        tally.inputs += 1;
        let failure = match outcome {
            Err(_) => {
                (reader.reset)();
                Some(format!("panicked: {}", LAST_PANIC.with_borrow(String::clone)))
            }
            Ok(Err(broken)) => Some(broken),
            Ok(Ok(Verdict::Accepted)) => {
                tally.accepted += 1;
                None
            }
            Ok(Ok(Verdict::Rejected(error))) => {
                tally.rejected += 1;
                let message = error.to_string();
                tally.longest_message = tally.longest_message.max(message.len());
                let reason: String = message.chars().filter(|c| !c.is_ascii_digit()).take(60).collect();
                *tally.reasons.entry(reason).or_default() += 1;
                (message.trim().is_empty() || message.trim_end().ends_with(':'))
                    .then(|| format!("rejected without saying why: {error:?}"))
            }
        };
        if let Some(failure) = failure {
            let saved = std::env::temp_dir().join(format!("wgpu-optim-fuzz-{}-{index}.bin", reader.name));
            std::fs::write(&saved, &input).ok();
            tally.failures.push(format!(
                "{} input {index} (seed {seed}, saved as {}): {failure}\n  reproduce: WGPU_OPTIM_FUZZ_SEED={} WGPU_OPTIM_FUZZ_REPRO={}:{index} cargo test --test suite fuzz_{}",
                reader.name,
                saved.display(),
                env_number("WGPU_OPTIM_FUZZ_SEED", 0),
                reader.name,
                reader.name
            ));
        }
    }
    eprintln!(
        "fuzz {}: {} inputs in {:.1} s: {} accepted, {} rejected with an error (longest message {} bytes), {} failures",
        reader.name,
        tally.inputs,
        started.elapsed().as_secs_f64(),
        tally.accepted,
        tally.rejected,
        tally.longest_message,
        tally.failures.len()
    );
    let mut reasons: Vec<_> = tally.reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1));
    for (reason, count) in reasons.iter().take(env_number("WGPU_OPTIM_FUZZ_REASONS", 12) as usize) {
        eprintln!("  {count:>7}  {reason}");
    }
    eprintln!("  ({} kinds of rejection)", reasons.len());
    assert!(
        tally.failures.is_empty(),
        "{} of {} inputs broke the reader's promise:\n{}",
        tally.failures.len(),
        tally.inputs,
        tally.failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    tally
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e} (the fuzz corpus; see tests/suite/fuzz/corpus.rs)", path.display()))
}

// ---- checkpoints ----------------------------------------------------------------------------

/// Everything a restore may change, bit for bit: tensors, counters, groups (rules,
/// hyper-parameters, running values, mode).
fn fingerprint(checkpoint: &Checkpoint) -> String {
    let c = &checkpoint.counters;
    let tensors: Vec<(&str, &[usize], Vec<u32>)> =
        checkpoint.tensors.iter().map(|t| (t.name.as_str(), t.shape.as_slice(), t.data.iter().map(|x| x.to_bits()).collect())).collect();
    format!(
        "{} {:?} [{} {} {} {:#x} {:#x} {}] {:?} {tensors:?}",
        checkpoint.optimizer,
        checkpoint.groups,
        c.steps_recorded,
        c.applied_steps,
        c.skipped_steps,
        c.loss_scale.to_bits(),
        c.inv_scale.to_bits(),
        c.growth_tracker,
        checkpoint.gradients
    )
}

/// A fresh CPU optimizer and scheduler of a corpus case, with their fingerprints.
struct CpuTarget {
    opt: CpuOptimizer,
    scheduler: Option<Box<dyn Scheduler>>,
    /// Each tensor and its length, for the steps after a restore.
    tensors: Vec<(TensorId, usize)>,
    before: String,
    schedule_before: Option<serde_json::Value>,
}

impl CpuTarget {
    fn new(case: &CheckpointCase) -> Self {
        let (opt, scheduler, ids) = case.fresh_cpu();
        let tensors = ids.into_iter().zip(case.lengths()).collect();
        let before = fingerprint(&opt.checkpoint(None));
        let schedule_before = scheduler.as_ref().map(|s| s.state());
        CpuTarget { opt, scheduler, tensors, before, schedule_before }
    }

    /// What a resumed training loop does next: two steps, the scheduler stepped after each.
    /// Errors are allowed (a restored loss scale may make a step non-finite); panics are not.
    fn resume(&mut self) {
        for step in 0..2 {
            for &(id, len) in &self.tensors {
                self.opt.write_grad(id, &vec![0.5 - step as f32; len]).unwrap();
            }
            self.opt.step();
            let _ = self.opt.counters();
            if let Some(scheduler) = &mut self.scheduler {
                let _ = scheduler.step(&mut self.opt);
            }
        }
    }
}

#[test]
fn fuzz_checkpoint() {
    let cases = checkpoint_cases();
    let targets = RefCell::new(cases.iter().map(CpuTarget::new).collect::<Vec<_>>());
    let restored = Cell::new(0);
    let reader = Reader {
        name: "checkpoint",
        seeds: cases.iter().map(|case| read(&case.path())).collect(),
        format: Format::Safetensors { metadata_json: true },
        check: Box::new(|seed, input| {
            let checkpoint = match Checkpoint::from_bytes(input) {
                Ok(checkpoint) => checkpoint,
                Err(error) => return Ok(Verdict::Rejected(error)),
            };
            let mut targets = targets.borrow_mut();
            let target = &mut targets[seed];
            let verdict = match target.opt.restore(&checkpoint) {
                Ok(_) => {
                    restored.set(restored.get() + 1);
                    Verdict::Accepted
                }
                Err(error) => {
                    if fingerprint(&target.opt.checkpoint(None)) != target.before {
                        return Err(format!("a rejected restore changed the optimizer ({error})"));
                    }
                    Verdict::Rejected(error)
                }
            };
            // The schedule state, loaded into the case's scheduler as a resumed run does.
            let mut loaded = false;
            if let (Some(scheduler), Some(state)) = (&mut target.scheduler, &checkpoint.schedule) {
                match scheduler.load_state(state) {
                    Ok(()) => loaded = true,
                    Err(error) if error.to_string().trim().is_empty() => return Err(format!("load_state rejected without saying why: {error:?}")),
                    Err(error) if Some(scheduler.state()) != target.schedule_before => {
                        return Err(format!("a rejected schedule state changed the scheduler ({error}): {state}"))
                    }
                    Err(_) => {}
                }
            }
            if matches!(verdict, Verdict::Accepted) || loaded {
                target.resume();
                *target = CpuTarget::new(&cases[seed]); // fresh for the next input of this seed
            }
            Ok(verdict)
        }),
        reset: Box::new(|| *targets.borrow_mut() = cases.iter().map(CpuTarget::new).collect()),
    };
    let tally = fuzz(reader, inputs_per_reader());
    eprintln!("fuzz checkpoint: {} parsed checkpoints restored into a CPU optimizer, then stepped", restored.get());
    assert!(tally.inputs < 1000 || tally.accepted > 0, "no mutated checkpoint was ever accepted: the mutations are too coarse");
}

/// A sample of mutated checkpoints that parse, restored into a GPU optimizer: a rejection
/// leaves its parameters, state and counters bit-identical.
#[test]
fn fuzz_checkpoint_restore_on_gpu() {
    let sample = env_number("WGPU_OPTIM_FUZZ_GPU_INPUTS", 300) as usize;
    let cases = checkpoint_cases();
    let seeds: Vec<Vec<u8>> = cases.iter().map(|case| read(&case.path())).collect();
    for gpu in gpus() {
        let started = Instant::now();
        let (mut rejected, mut accepted) = (0, 0);
        let mut optimizers: Vec<(Optimizer, Checkpoint, String)> = cases
            .iter()
            .zip(&seeds)
            .map(|(case, seed)| {
                let (params, groups, _) = case.model();
                let options = OptimizerOptions {
                    gradients: case.gradients.clone(),
                    gradient_presence: case.absent_gradients,
                    ..Default::default()
                };
                let mut opt = Optimizer::with_options(gpu, params, groups, options).unwrap();
                let original = Checkpoint::from_bytes(seed).unwrap();
                opt.restore(&original).unwrap();
                let before = fingerprint(&opt.checkpoint(None).unwrap());
                (opt, original, before)
            })
            .collect();
        let mut index = 0;
        while rejected + accepted < sample {
            index += 1;
            let mut dice = dice_for("gpu", index);
            let seed = dice.below(seeds.len());
            let input = mutate(&seeds[seed], &seeds, Format::Safetensors { metadata_json: true }, &mut dice);
            let Ok(checkpoint) = Checkpoint::from_bytes(&input) else { continue };
            let (opt, original, before) = &mut optimizers[seed];
            match opt.restore(&checkpoint) {
                Err(error) => {
                    rejected += 1;
                    assert!(!error.to_string().trim().is_empty());
                    let after = fingerprint(&opt.checkpoint(None).unwrap());
                    assert!(
                        after == *before,
                        "{:?}: mutated checkpoint {index} (gpu series) was rejected ({error}) but changed the optimizer",
                        gpu.adapter().backend
                    );
                }
                Ok(_) => {
                    accepted += 1;
                    opt.restore(original).unwrap();
                    *before = fingerprint(&opt.checkpoint(None).unwrap());
                }
            }
        }
        eprintln!(
            "fuzz gpu ({:?}): {} parsed mutated checkpoints restored in {:.1} s ({rejected} rejected, unchanged bit for bit; {accepted} accepted), from {index} mutated inputs",
            gpu.adapter().backend,
            rejected + accepted,
            started.elapsed().as_secs_f64()
        );
    }
}

/// What the fuzzer found, each now a clear error (or, for T_max, a correct schedule) instead
/// of a panic or a silently broken optimizer.
#[test]
fn fuzz_findings_stay_fixed() {
    let conditioned = checkpoint_cases().into_iter().find(|case| case.gradients.loss_scale.is_some()).unwrap();
    let corrupt = |change: &dyn Fn(&mut wgpu_optim::checkpoint::CounterRecord), expected: &str| {
        let mut checkpoint = conditioned.checkpoint();
        change(&mut checkpoint.counters);
        let (mut opt, _, _) = conditioned.fresh_cpu();
        let before = fingerprint(&opt.checkpoint(None));
        let error = opt.restore(&checkpoint).expect_err(expected).to_string();
        assert!(error.contains(expected), "{error}");
        assert_eq!(fingerprint(&opt.checkpoint(None)), before);
    };
    // applied + skipped overflowed u64 in the counters' check.
    corrupt(&|c| (c.applied_steps, c.skipped_steps) = (u64::MAX, 1), "corrupt counters");
    // A growth tracker past the growth interval was restored, and the next step overflowed it.
    corrupt(&|c| c.growth_tracker = u32::MAX, "growth_tracker = 4294967295");
    // A non-finite loss scale was restored, and would have scaled every gradient by it.
    corrupt(&|c| c.loss_scale = f32::INFINITY, "loss_scale = inf");
    corrupt(&|c| c.inv_scale = f32::NAN, "inv_scale = NaN");
    // Schedule states whose step counters were near the integer limits: the next step overflowed.
    for (case, key) in [("adam-amsgrad-steplr", "last_epoch"), ("adam-amsgrad-steplr", "_step_count"),
                        ("nadam-decoupled-warm-restarts", "T_cur"), ("muon-adamw-sequential", "last_epoch")] {
        let case = checkpoint_cases().into_iter().find(|c| c.name == case).unwrap();
        let mut state = case.checkpoint().schedule.unwrap();
        state[key] = serde_json::json!(i64::MAX);
        let (_, scheduler, _) = case.fresh_cpu();
        let mut scheduler = scheduler.unwrap();
        let before = scheduler.state();
        let error = scheduler.load_state(&state).expect_err(key).to_string();
        assert!(error.contains(&format!("{key} = {}", i64::MAX)), "{error}");
        assert_eq!(scheduler.state(), before);
    }
    // CosineAnnealingLR computed 2·T_max in i64.
    let replay = &replays()[0];
    let mut run: serde_json::Value = serde_json::from_str(&replay.run).unwrap();
    run["scheduler"] = serde_json::json!({"name": "CosineAnnealingLR", "T_max": u64::MAX});
    assert!(matches!(self::replay(&run.to_string(), replay.params.clone(), replay.grads.clone()), Verdict::Accepted));
}

// ---- safetensors and run.json ----------------------------------------------------------------

/// The replays of the corpus, read back from their committed files.
struct Replay {
    run: String,
    params: Vec<NamedTensor>,
    grads: Vec<NamedTensor>,
}

fn replays() -> Vec<Replay> {
    replay_cases()
        .iter()
        .map(|case| {
            let tensors = |file: &str| parse_safetensors(&read(&case.dir().join(file)), file).unwrap();
            Replay {
                run: String::from_utf8(read(&case.dir().join("run.json"))).unwrap(),
                params: tensors("params.safetensors"),
                grads: tensors("grads.safetensors"),
            }
        })
        .collect()
}

/// Loads a replay as `wgpu-optim replay` does, and runs it on the CPU reference.
fn replay(run: &str, params: Vec<NamedTensor>, grads: Vec<NamedTensor>) -> Verdict {
    let run = || -> wgpu_optim::Result<()> {
        ReplayCase::new(RunConfig::from_json(run)?, params, grads)?.run_cpu()?;
        Ok(())
    };
    run().into()
}

#[test]
fn fuzz_safetensors() {
    let replays = replays();
    // Seeds: each replay's params and grads files, then the checkpoints (read, not replayed).
    let mut seeds = Vec::new();
    for case in replay_cases() {
        seeds.push(read(&case.dir().join("params.safetensors")));
        seeds.push(read(&case.dir().join("grads.safetensors")));
    }
    seeds.extend(checkpoint_cases().iter().map(|case| read(&case.path())));
    let reader = Reader {
        name: "safetensors",
        seeds,
        format: Format::Safetensors { metadata_json: false },
        check: Box::new(|seed, input| {
            let tensors = match parse_safetensors(input, "fuzz input") {
                Ok(tensors) => tensors,
                Err(error) => return Ok(Verdict::Rejected(error)),
            };
            let Some(replay) = replays.get(seed / 2) else { return Ok(Verdict::Accepted) };
            Ok(if seed % 2 == 0 {
                self::replay(&replay.run, tensors, replay.grads.clone())
            } else {
                self::replay(&replay.run, replay.params.clone(), tensors)
            })
        }),
        reset: Box::new(|| {}),
    };
    fuzz(reader, inputs_per_reader());
}

#[test]
fn fuzz_run_json() {
    let replays = replays();
    let reader = Reader {
        name: "run_json",
        seeds: replays.iter().map(|r| r.run.clone().into_bytes()).collect(),
        format: Format::Json,
        check: Box::new(|seed, input| {
            let replay = &replays[seed];
            // `wgpu-optim replay` reads run.json as UTF-8 text: invalid bytes are an I/O error
            // there; here they become replacement characters so the JSON parser still sees them.
            Ok(self::replay(&String::from_utf8_lossy(input), replay.params.clone(), replay.grads.clone()))
        }),
        reset: Box::new(|| {}),
    };
    fuzz(reader, inputs_per_reader());
}

// ---- the corpus -----------------------------------------------------------------------------

#[test]
fn fuzz_corpus_matches_its_generator() {
    if std::env::var_os("WGPU_OPTIM_FUZZ_WRITE_CORPUS").is_some() {
        corpus::generate();
    }
    let mut expected = Vec::new();
    for case in checkpoint_cases() {
        let committed = Checkpoint::from_bytes(&read(&case.path())).unwrap();
        // The safetensors metadata is a hash map, written in no fixed order: compare contents
        // (tensors are read back sorted by name).
        let mut generated = case.checkpoint();
        generated.tensors.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(fingerprint(&committed), fingerprint(&generated), "{}", case.path().display());
        assert_eq!(committed.schedule, generated.schedule, "{}", case.path().display());
        expected.push(case.path());
    }
    for case in replay_cases() {
        let text = serde_json::to_string_pretty(&case.run).unwrap() + "\n";
        assert_eq!(String::from_utf8(read(&case.dir().join("run.json"))).unwrap(), text, "{}", case.name);
        for (file, tensors) in [("params.safetensors", &case.params), ("grads.safetensors", &case.grads)] {
            let mut tensors = tensors.clone();
            tensors.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(parse_safetensors(&read(&case.dir().join(file)), file).unwrap(), tensors, "{} {file}", case.name);
            expected.push(case.dir().join(file));
        }
        expected.push(case.dir().join("run.json"));
    }
    let mut committed = Vec::new();
    let mut total = 0;
    let mut walk = vec![corpus_dir()];
    while let Some(dir) = walk.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk.push(path);
            } else {
                total += std::fs::metadata(&path).unwrap().len();
                committed.push(path);
            }
        }
    }
    committed.sort();
    expected.sort();
    assert_eq!(committed, expected, "the corpus holds exactly the generated files");
    assert!(total < 200_000, "the corpus stays small: {total} bytes");
}
