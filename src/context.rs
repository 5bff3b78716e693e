//! The GPU context: which adapter runs the optimizer, the device and queue it opened, and the
//! compute pipelines compiled on it (cached per kernel variant and shared by every optimizer).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Environment variable read by [`GpuContext::from_env`] and the command line: `auto`, `vulkan`,
/// `gl`, `metal` or `dx12`.
pub const BACKEND_ENV: &str = "WGPU_OPTIM_BACKEND";

const INSTALL_HINT: &str = "Install a GPU driver for it; on a Debian or Ubuntu machine without a GPU, \
`apt-get install -y mesa-vulkan-drivers libvulkan1` gives a software Vulkan adapter (llvmpipe) \
and `apt-get install -y libegl1 libegl-mesa0 libgles2` a software GL one.";

const NO_COMPUTE_HINT: &str = "On OpenGL, compute needs GL 4.3 or GLES 3.1, and wgpu opens a desktop GL 3.3 \
context where the driver offers desktop OpenGL (NVIDIA's EGL does); use the same GPU through \
Vulkan (--backend vulkan).";

/// Which graphics API to open the GPU through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// Let wgpu pick the best adapter of any backend (Vulkan first on Linux).
    Auto,
    /// Vulkan (Linux, Windows, Android).
    Vulkan,
    /// OpenGL or OpenGL ES; compute shaders need GL 4.3 or GLES 3.1.
    Gl,
    /// Metal (macOS, iOS).
    Metal,
    /// Direct3D 12 (Windows).
    Dx12,
    /// The browser's WebGPU implementation (wasm only).
    BrowserWebGpu,
}

impl BackendChoice {
    /// The wgpu backends this choice searches.
    pub fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Auto => wgpu::Backends::all(),
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Gl => wgpu::Backends::GL,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::BrowserWebGpu => wgpu::Backends::BROWSER_WEBGPU,
        }
    }

    /// Reads [`BACKEND_ENV`]; `Ok(None)` when it is unset or empty.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(BACKEND_ENV) {
            Ok(value) if !value.trim().is_empty() => value.parse().map(Some),
            _ => Ok(None),
        }
    }
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "vulkan" | "vk" => Ok(BackendChoice::Vulkan),
            "gl" | "gles" | "opengl" => Ok(BackendChoice::Gl),
            "metal" => Ok(BackendChoice::Metal),
            "dx12" | "d3d12" => Ok(BackendChoice::Dx12),
            "webgpu" => Ok(BackendChoice::BrowserWebGpu),
            _ => Err(Error::UnknownBackend(name.to_string())),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Vulkan => "vulkan",
            BackendChoice::Gl => "gl",
            BackendChoice::Metal => "metal",
            BackendChoice::Dx12 => "dx12",
            BackendChoice::BrowserWebGpu => "webgpu",
        })
    }
}

/// What ran: the adapter's name, backend and driver, as reported by wgpu.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterReport {
    /// The adapter's name (e.g. `"NVIDIA GeForce RTX 4090"`, `"llvmpipe (LLVM 15.0.7, 256 bits)"`).
    pub name: String,
    /// The graphics API it is opened through.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: wgpu::DeviceType,
    /// The driver's name; may be empty.
    pub driver: String,
    /// The driver's version or other information; may be empty.
    pub driver_info: String,
}

impl From<&wgpu::AdapterInfo> for AdapterReport {
    fn from(info: &wgpu::AdapterInfo) -> Self {
        AdapterReport {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        }
    }
}

impl fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?}, {:?}", self.name, self.backend, self.device_type)?;
        let driver = [self.driver.as_str(), self.driver_info.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if !driver.is_empty() {
            write!(f, ", driver {driver}")?;
        }
        f.write_str(")")
    }
}

/// A kernel variant: the shader's label and its pipeline-overridable constants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    pub label: &'static str,
    /// The WGSL entry point (a rule's pass).
    pub entry: &'static str,
    pub constants: Vec<(&'static str, u64)>,
}

/// Waits until everything submitted to `device` has run, and runs the callbacks of finished
/// work. `PollType::wait_indefinitely` waits at most about 2 s on GL (wgpu-hal caps its fence
/// wait at `i32::MAX` nanoseconds) and then reports a timeout, which only means that the work
/// is still running: it waits again.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn wait_for_submitted_work(device: &wgpu::Device) -> std::result::Result<(), wgpu::PollError> {
    loop {
        match device.poll(wgpu::PollType::wait_indefinitely()) {
            Err(wgpu::PollError::Timeout) => continue,
            other => return other.map(|_| ()),
        }
    }
}

/// An opened GPU: device, queue, the adapter that backs them, and the pipeline cache.
///
/// Cloning is cheap and shares the device, the queue and the cache.
#[derive(Clone)]
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterReport,
    /// Kernels in their CPU-adapter shapes (see [`GpuContext::with_cpu_kernels`]).
    cpu_kernels: bool,
    /// Keyed by the variant and a hash of the full WGSL source, so that two rules with the same
    /// label but different shaders (a user's rule named like a built-in one) never share one.
    pipelines: Arc<Mutex<HashMap<(PipelineKey, u64), wgpu::ComputePipeline>>>,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuContext").field("adapter", &self.adapter).finish_non_exhaustive()
    }
}

impl GpuContext {
    /// Opens the best adapter of the chosen backend (blocking; native only).
    ///
    /// ```no_run
    /// use wgpu_optim::{BackendChoice, GpuContext};
    /// let gpu = GpuContext::new(BackendChoice::Vulkan)?;
    /// println!("running on {}", gpu.adapter());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(choice: BackendChoice) -> Result<Self> {
        pollster::block_on(Self::new_async(choice))
    }

    /// Opens the adapter named by [`BACKEND_ENV`], or the best of any backend when it is unset.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_env() -> Result<Self> {
        Self::new(BackendChoice::from_env()?.unwrap_or(BackendChoice::Auto))
    }

    /// Opens the best adapter of the chosen backend.
    pub async fn new_async(choice: BackendChoice) -> Result<Self> {
        let adapter = Self::find_adapter(choice).await?;
        Self::from_adapter(adapter).await
    }

    /// Every adapter the machine offers for the chosen backend(s), best first: those that can
    /// run compute shaders before those that cannot (see [`GpuContext::unusable`]), then
    /// discrete, integrated, virtual and software adapters.
    pub async fn adapters(choice: BackendChoice) -> Vec<wgpu::Adapter> {
        let mut adapters = instance(choice.backends()).enumerate_adapters(choice.backends()).await;
        adapters.sort_by_key(|a| (Self::unusable(a).is_some(), device_type_rank(a.get_info().device_type)));
        adapters
    }

    /// Why the optimizer cannot run on this adapter, or `None` when it can. An adapter without
    /// compute shaders is listed by wgpu but fails at the first pipeline: NVIDIA's EGL offers
    /// desktop OpenGL, for which wgpu opens a GL 3.3 context, and compute needs GL 4.3.
    pub fn unusable(adapter: &wgpu::Adapter) -> Option<Error> {
        let flags = adapter.get_downlevel_capabilities().flags;
        (!flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)).then(|| Error::NoComputeShaders {
            adapter: AdapterReport::from(&adapter.get_info()).to_string(),
            reason: NO_COMPUTE_HINT,
        })
    }

    async fn find_adapter(choice: BackendChoice) -> Result<wgpu::Adapter> {
        if choice == BackendChoice::Auto {
            let options = wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            };
            if let Ok(adapter) = instance(choice.backends()).request_adapter(&options).await {
                if Self::unusable(&adapter).is_none() {
                    return Ok(adapter);
                }
            }
        }
        let adapters = Self::adapters(choice).await;
        if let Some(adapter) = adapters.iter().find(|a| Self::unusable(a).is_none()) {
            return Ok(adapter.clone());
        }
        if let Some(error) = adapters.first().and_then(Self::unusable) {
            return Err(error);
        }
        let present = Self::adapters(BackendChoice::Auto)
            .await
            .iter()
            .map(|a| {
                let info = a.get_info();
                format!("{} via {:?}", info.name, info.backend)
            })
            .collect::<Vec<_>>();
        Err(Error::NoAdapter {
            requested: choice.to_string(),
            present: if present.is_empty() { "none".into() } else { present.join(", ") },
            hint: INSTALL_HINT,
        })
    }

    /// Opens a device on the given adapter with every limit the adapter offers (the kernels
    /// themselves stay inside WebGPU's default limits).
    pub async fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        if let Some(error) = Self::unusable(&adapter) {
            return Err(error);
        }
        let (device, queue) = adapter
            .request_device(&Self::device_descriptor(&adapter))
            .await
            .map_err(|e| {
                let mut message = e.to_string();
                if adapter.get_info().backend == wgpu::Backend::Gl {
                    // wgpu's GL backend builds compute pipelines of its own when it opens the device.
                    message.push_str(". ");
                    message.push_str(NO_COMPUTE_HINT);
                }
                Error::RequestDevice(message)
            })?;
        Ok(Self::from_device(device, queue))
    }

    /// The device [`GpuContext::from_adapter`] requests: `shader-f16` where the adapter has it
    /// (f16 buffers are then read and written as WGSL's `f16`; without it, as packed `u32`
    /// words, with the same bytes and results), every limit the adapter offers. For hosts that
    /// open the device themselves.
    pub fn device_descriptor(adapter: &wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> {
        wgpu::DeviceDescriptor {
            label: Some("wgpu-optim"),
            required_features: adapter.features() & wgpu::Features::SHADER_F16,
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }
    }

    /// Shares a host application's device and queue, so the optimizer steps the same buffers
    /// its own kernels use.
    ///
    /// What the device needs:
    /// - no optional [`wgpu::Features`]: the kernels are plain WGSL compute shaders (with
    ///   `shader-f16`, f16 buffers use WGSL's `f16`; without, packed words);
    /// - WebGPU's default limits suffice for every rule: 256 invocations per workgroup, and 4
    ///   storage buffers per shader stage plus one per per-element state array (Adan's four use
    ///   all 8 of WebGPU's default). A device with fewer is refused with the count;
    /// - `max_storage_buffer_binding_size` and `max_buffer_size` bound an arena window: larger
    ///   groups are split into windows (one dispatch each), and a single tensor larger than
    ///   `max_buffer_size` is refused. Request the adapter's limits
    ///   ([`GpuContext::device_descriptor`]) to get the fewest dispatches;
    /// - compute shaders: on OpenGL, a GL 4.3 or GLES 3.1 context.
    ///
    /// The optimizer creates its own buffers, pipelines and bind groups on the device and
    /// submits only when asked (`step_and_submit`, reads, checkpoints); `step` records into the
    /// host's encoder.
    ///
    /// ```no_run
    /// # async fn host(adapter: wgpu::Adapter) -> Result<(), Box<dyn std::error::Error>> {
    /// let (device, queue) = adapter.request_device(&wgpu_optim::GpuContext::device_descriptor(&adapter)).await?;
    /// let gpu = wgpu_optim::GpuContext::from_device(device, queue);
    /// # Ok(()) }
    /// ```
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let adapter = AdapterReport::from(&device.adapter_info());
        let cpu_kernels = adapter.device_type == wgpu::DeviceType::Cpu;
        GpuContext { device, queue, adapter, cpu_kernels, pipelines: Arc::default() }
    }

    /// The same context with the adapter's name set, for hosts whose driver reports none
    /// (some browsers' WebGPU adapters).
    pub fn with_adapter_name(mut self, name: impl Into<String>) -> Self {
        self.adapter.name = name.into();
        self
    }

    /// The same context with kernels in the shapes chosen for a CPU adapter (`on`) or for a
    /// GPU. The default follows the adapter's device type (`Cpu`: llvmpipe, WARP, SwiftShader
    /// when it says so). A software adapter runs each invocation as a SIMD lane and pays a
    /// scalar load per lane for every storage access in a loop, so some kernels take another
    /// shape there: Muon's products (`shaders/muon.wgsl`, `matmul`). Both shapes compute the
    /// same values; set it for an adapter that misreports its type.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), wgpu_optim::Error> {
    /// let gpu = wgpu_optim::GpuContext::new(wgpu_optim::BackendChoice::Auto)?.with_cpu_kernels(true);
    /// assert!(gpu.cpu_kernels());
    /// # Ok(()) }
    /// ```
    pub fn with_cpu_kernels(mut self, on: bool) -> Self {
        self.cpu_kernels = on;
        self
    }

    /// Whether kernels take their CPU-adapter shapes ([`GpuContext::with_cpu_kernels`]).
    pub fn cpu_kernels(&self) -> bool {
        self.cpu_kernels
    }

    /// Whether the device runs WGSL's `f16` (`enable f16`): f16 buffers are then accessed as
    /// `array<vec4<f16>>`, else as packed `u32` words (see [`crate::storage`]).
    pub fn native_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// The device the optimizers create their buffers and pipelines on.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue the optimizers write and submit to.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter this context runs on.
    pub fn adapter(&self) -> &AdapterReport {
        &self.adapter
    }

    /// Runs `create`, turning any wgpu validation or out-of-memory error it raises into an
    /// [`Error::Gpu`] instead of wgpu's default panic.
    pub(crate) async fn checked<T>(&self, context: &str, create: impl FnOnce() -> T) -> Result<T> {
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let value = create();
        // Pop both scopes before awaiting: another task using the device (e.g. a second run
        // on a web page) must not push or pop between them.
        let memory_error = memory.pop();
        let validation_error = validation.pop();
        let (memory_error, validation_error) = (memory_error.await, validation_error.await);
        match memory_error.or(validation_error) {
            None => Ok(value),
            Some(error) => Err(Error::Gpu {
                context: context.to_string(),
                message: error.to_string(),
            }),
        }
    }

    /// The compute pipeline for a kernel variant, compiled once per context.
    pub(crate) async fn pipeline(
        &self,
        key: PipelineKey,
        source: &str,
        layout: &wgpu::PipelineLayout,
    ) -> Result<wgpu::ComputePipeline> {
        let cache_key = (key, source_hash(source));
        if let Some(pipeline) = self.pipelines.lock().expect("pipeline cache poisoned").get(&cache_key) {
            return Ok(pipeline.clone());
        }
        let key = &cache_key.0;
        let constants: Vec<(&str, f64)> =
            key.constants.iter().map(|&(name, bits)| (name, f64::from_bits(bits))).collect();
        let pipeline = self
            .checked(&format!("compiling the {} kernel ({})", key.label, key.entry), || {
                let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(key.label),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
                self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(key.label),
                    layout: Some(layout),
                    module: &module,
                    entry_point: Some(key.entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
            })
            .await?;
        self.pipelines
            .lock()
            .expect("pipeline cache poisoned")
            .insert(cache_key, pipeline.clone());
        Ok(pipeline)
    }
}

/// A hash of a shader's source for the pipeline cache (the same within a process).
fn source_hash(source: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut hasher);
    hasher.finish()
}

/// A compute-stage storage-buffer binding of a bind group layout.
pub(crate) fn storage_binding(binding: u32, read_only: bool, min_binding_size: u64) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: std::num::NonZeroU64::new(min_binding_size),
        },
        count: None,
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backends;
    wgpu::Instance::new(descriptor)
}

fn device_type_rank(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}
