//! Shared test helpers: the machine's adapters, a deterministic RNG, and runners that apply
//! the same steps on a GPU and on the CPU reference.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard, OnceLock};

use wgpu_optim::{BackendChoice, CpuOptimizer, GpuContext, Optimizer, OptimizerOptions, ParamGroup, Parameters, TensorId};

/// Every adapter of the machine (one per backend), opened once for the whole test binary,
/// held exclusively by the calling test while the returned guard lives.
///
/// Tests run on several threads, but the adapters are shared: wgpu's GL backend lets one
/// thread hold the GL context at a time and gives up after 6 s, which a long llvmpipe dispatch
/// on a loaded machine exceeds. So GPU tests take turns; CPU-only tests still run in parallel.
pub fn gpus() -> Gpus {
    thread_local!(static HELD: Cell<u32> = const { Cell::new(0) });
    static TURN: Mutex<()> = Mutex::new(());
    let turn = (HELD.get() == 0).then(|| TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    HELD.set(HELD.get() + 1);
    Gpus { contexts: adapters(), _turn: turn, release: || HELD.set(HELD.get() - 1) }
}

/// The adapters, with this test's turn on them (see [`gpus`]).
pub struct Gpus {
    contexts: &'static [GpuContext],
    _turn: Option<MutexGuard<'static, ()>>,
    release: fn(),
}

impl Drop for Gpus {
    fn drop(&mut self) {
        (self.release)();
    }
}

impl std::ops::Deref for Gpus {
    type Target = [GpuContext];
    fn deref(&self) -> &[GpuContext] {
        self.contexts
    }
}

/// `for gpu in gpus() { ... }` holds the turn for the whole loop.
impl IntoIterator for Gpus {
    type Item = &'static GpuContext;
    type IntoIter = GpusIter;
    fn into_iter(self) -> GpusIter {
        GpusIter { iter: self.contexts.iter(), _gpus: self }
    }
}

pub struct GpusIter {
    iter: std::slice::Iter<'static, GpuContext>,
    _gpus: Gpus,
}

impl Iterator for GpusIter {
    type Item = &'static GpuContext;
    fn next(&mut self) -> Option<&'static GpuContext> {
        self.iter.next()
    }
}

fn adapters() -> &'static [GpuContext] {
    static GPUS: OnceLock<Vec<GpuContext>> = OnceLock::new();
    GPUS.get_or_init(|| {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into()));
        let mut gpus = Vec::new();
        for choice in [BackendChoice::Vulkan, BackendChoice::Gl, BackendChoice::Metal, BackendChoice::Dx12] {
            if let Ok(gpu) = GpuContext::new(choice) {
                eprintln!("test adapter: {}", gpu.adapter());
                gpus.push(gpu);
            }
        }
        assert!(
            !gpus.is_empty(),
            "no GPU adapter found; GPU tests fail rather than skip. {}",
            GpuContext::new(BackendChoice::Auto).expect_err("no adapter")
        );
        if let Ok(required) = std::env::var("WGPU_OPTIM_REQUIRE_BACKENDS") {
            for name in required.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let choice: BackendChoice = name.parse().expect("backend name");
                assert!(
                    gpus.iter().any(|g| choice.backends().contains(g.adapter().backend.into())),
                    "WGPU_OPTIM_REQUIRE_BACKENDS names {name}, but no such adapter was found"
                );
            }
        }
        gpus
    })
}

/// SplitMix64: small, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform() * scale).collect()
    }
}

/// A model layout: tensor sizes per parameter group.
pub type Layout<'a> = &'a [&'a [usize]];

pub fn parameters(layout: Layout, rng: &mut Rng) -> (Parameters, Vec<Vec<TensorId>>) {
    let mut params = Parameters::new();
    let groups = layout
        .iter()
        .enumerate()
        .map(|(g, sizes)| {
            sizes
                .iter()
                .enumerate()
                .map(|(t, &len)| params.add(&format!("g{g}t{t}"), &[len], rng.vec(len, 1.0)).unwrap())
                .collect()
        })
        .collect();
    (params, groups)
}

/// Final parameters and state (in `state_keys` order) of every tensor.
pub type Snapshot = Vec<(String, Vec<f32>)>;

/// Runs `steps` steps with the same pseudo-random gradients on the CPU reference.
pub fn run_cpu(layout: Layout, groups: &dyn Fn(&[Vec<TensorId>]) -> Vec<ParamGroup>, steps: usize, seed: u64) -> Snapshot {
    let mut rng = Rng::new(seed);
    let (params, ids) = parameters(layout, &mut rng);
    let all: Vec<TensorId> = ids.iter().flatten().copied().collect();
    let lens: Vec<usize> = all.iter().map(|&id| params.spec(id).unwrap().data.len()).collect();
    let mut opt = CpuOptimizer::new(params, groups(&ids)).unwrap();
    for _ in 0..steps {
        for (&id, &len) in all.iter().zip(&lens) {
            opt.write_grad(id, &rng.vec(len, 1.0)).unwrap();
        }
        opt.step();
    }
    snapshot_cpu(&opt, &all)
}

/// Every parameter and state tensor of `ids` on the CPU reference, by name (`w`, `w.exp_avg`).
pub fn snapshot_cpu(opt: &CpuOptimizer, ids: &[TensorId]) -> Snapshot {
    let mut out = Vec::new();
    for &id in ids {
        let name = opt.tensor_name(id).unwrap();
        out.push((name.to_string(), opt.param(id).unwrap().to_vec()));
        for key in opt.state_keys(id).unwrap() {
            out.push((format!("{name}.{key}"), opt.state(id, key).unwrap().to_vec()));
        }
    }
    out
}

/// The same as [`run_cpu`] on a GPU.
pub fn run_gpu(
    gpu: &GpuContext,
    layout: Layout,
    groups: &dyn Fn(&[Vec<TensorId>]) -> Vec<ParamGroup>,
    steps: usize,
    seed: u64,
    options: OptimizerOptions,
) -> Snapshot {
    let mut rng = Rng::new(seed);
    let (params, ids) = parameters(layout, &mut rng);
    let all: Vec<TensorId> = ids.iter().flatten().copied().collect();
    let lens: Vec<usize> = all.iter().map(|&id| params.spec(id).unwrap().data.len()).collect();
    let mut opt = Optimizer::with_options(gpu, params, groups(&ids), options).unwrap();
    for _ in 0..steps {
        for (&id, &len) in all.iter().zip(&lens) {
            opt.write_grad(id, &rng.vec(len, 1.0)).unwrap();
        }
        opt.step_and_submit().unwrap();
    }
    snapshot_gpu(&opt, &all)
}

/// Every parameter and state tensor of `ids`, read back from the GPU, by name (`w`, `w.exp_avg`).
pub fn snapshot_gpu(opt: &Optimizer, ids: &[TensorId]) -> Snapshot {
    let mut views = Vec::new();
    let mut names = Vec::new();
    for &id in ids {
        let name = opt.tensor_name(id).unwrap();
        views.push(opt.param(id).unwrap());
        names.push(name.to_string());
        for key in opt.state_keys(id).unwrap() {
            views.push(opt.state(id, key).unwrap());
            names.push(format!("{name}.{key}"));
        }
    }
    names.into_iter().zip(opt.read_many(&views).unwrap()).collect()
}

/// Largest normwise relative difference (max|a-e| / max|e| per tensor) between snapshots.
pub fn max_normwise_difference(actual: &Snapshot, expected: &Snapshot) -> (f64, String) {
    assert_eq!(actual.len(), expected.len(), "snapshots hold different tensors");
    let mut worst = (0.0, String::new());
    for ((name_a, a), (name_e, e)) in actual.iter().zip(expected) {
        assert_eq!(name_a, name_e);
        assert_eq!(a.len(), e.len(), "{name_a}: length");
        let scale = e.iter().fold(0.0f64, |m, &y| m.max(f64::from(y).abs()));
        let max_abs = a.iter().zip(e).fold(0.0f64, |m, (&x, &y)| {
            let d = (f64::from(x) - f64::from(y)).abs();
            m.max(if d.is_nan() { f64::INFINITY } else { d })
        });
        let rel = if scale > 0.0 { max_abs / scale } else { max_abs };
        if rel > worst.0 {
            worst = (rel, name_a.clone());
        }
    }
    worst
}
