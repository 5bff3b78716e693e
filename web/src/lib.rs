//! The browser demo's wasm module: `wgpu_optim::trajectories` exported to JavaScript.
//!
//! Everything numeric happens here, in the library: the test functions, their gradients (WGSL
//! on the GPU), the optimizers (the library's WGSL kernels and dispatcher) and, when the
//! browser has no WebGPU, the library's CPU reference. `www/app.js` only draws.
//!
//! Specs and reports cross the boundary as JSON text (the same JSON as
//! `wgpu-optim trajectories --config/--out`).

use std::cell::{Cell, RefCell};

use wasm_bindgen::prelude::*;
use wgpu_optim::trajectories::{self, BasinSpec, Device, Method, RunSpec, TestFunction, TrajectorySpec};
use wgpu_optim::GpuContext;

thread_local! {
    static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
    /// Set while a run is in flight: wgpu's error scopes (which the library uses to turn GPU
    /// errors into `Error`s) must be popped in the order they were pushed, so two runs must
    /// not interleave on one device. `www/app.js` queues its runs; this turns a second
    /// concurrent call from elsewhere into an error instead of a panic inside wgpu.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Holds [`BUSY`] for one run.
struct Exclusive;

impl Exclusive {
    fn take() -> Result<Self, JsError> {
        if BUSY.with(|b| b.replace(true)) {
            return Err(JsError::new("another run is in progress on this device; await it first"));
        }
        Ok(Exclusive)
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(false));
    }
}

fn js_error(error: impl std::fmt::Display) -> JsError {
    JsError::new(&error.to_string())
}

fn device() -> Result<Device, JsError> {
    DEVICE
        .with(|d| d.borrow().clone())
        .ok_or_else(|| JsError::new("call init() first"))
}

/// Milliseconds from `performance.now()`, in a window or a worker.
fn now() -> f64 {
    let global = js_sys::global();
    if let Some(window) = global.dyn_ref::<web_sys::Window>() {
        if let Some(performance) = window.performance() {
            return performance.now();
        }
    }
    if let Some(worker) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
        if let Some(performance) = worker.performance() {
            return performance.now();
        }
    }
    js_sys::Date::now()
}

#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| web_sys::console::error_1(&format!("wgpu-optim panicked: {info}").into())));
}

/// Opens the browser's WebGPU adapter, or, when `use_gpu` is false or the browser has none,
/// selects the CPU reference. `adapter_label` names the adapter in reports when the browser's
/// `GPUAdapterInfo.description` is empty (wgpu reports only that), e.g. "google swiftshader".
/// Returns JSON: `{"backend": "browserwebgpu" | "cpu", "adapter": ..., "fallback_reason": ...}`.
#[wasm_bindgen]
pub async fn init(use_gpu: bool, adapter_label: &str) -> Result<String, JsError> {
    let mut reason = None;
    let device = if !use_gpu {
        reason = Some("WebGPU was turned off for this page (?cpu)".to_string());
        Device::Cpu
    } else {
        match open_webgpu(adapter_label).await {
            Ok(gpu) => Device::Gpu(gpu),
            Err(why) => {
                reason = Some(why);
                Device::Cpu
            }
        }
    };
    let info = serde_json::json!({
        "backend": device.backend_name(),
        "adapter": device.adapter_name(),
        "fallback_reason": reason,
    });
    DEVICE.with(|d| *d.borrow_mut() = Some(device));
    Ok(info.to_string())
}

async fn open_webgpu(adapter_label: &str) -> Result<GpuContext, String> {
    let has_gpu = js_sys::Reflect::get(&js_sys::global(), &"navigator".into())
        .ok()
        .filter(|n| !n.is_undefined())
        .and_then(|n| js_sys::Reflect::get(&n, &"gpu".into()).ok())
        .is_some_and(|gpu| !gpu.is_undefined() && !gpu.is_null());
    if !has_gpu {
        return Err("this browser has no WebGPU (navigator.gpu is missing)".into());
    }
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = wgpu::Backends::BROWSER_WEBGPU;
    let instance = wgpu::Instance::new(descriptor);
    let options = wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    };
    let adapter = instance
        .request_adapter(&options)
        .await
        .map_err(|e| format!("the browser offers no WebGPU adapter ({e})"))?;
    // GpuContext::from_adapter's device request, with the adapter's name completed.
    let (device, queue) = adapter
        .request_device(&GpuContext::device_descriptor(&adapter))
        .await
        .map_err(|e| format!("could not open the WebGPU device: {e}"))?;
    let gpu = GpuContext::from_device(device, queue);
    Ok(if gpu.adapter().name.is_empty() { gpu.with_adapter_name(adapter_label) } else { gpu })
}

/// The test functions as JSON: name, title, formula, domain, default start, minima, log scale.
#[wasm_bindgen]
pub fn functions() -> String {
    let list: Vec<_> = TestFunction::ALL
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name(),
                "title": f.title(),
                "formula": f.formula(),
                "domain": f.domain(),
                "default_start": f.default_start(),
                "minima": f.minima(),
                "log_scale": f.log_scale(),
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// Every method the page offers: each update rule of the library with torch's default
/// hyper-parameters, then Newton, DampedNewton and LBFGS (`trajectories::Method`); whether a
/// basin map can run it (`Method::basin`) and whether it takes a learning-rate schedule, as
/// JSON `[{"name": "Adam", "defaults": {...}, "basin": true, "schedule": true}]`.
#[wasm_bindgen]
pub fn optimizers() -> Result<String, JsError> {
    let list = Method::names()
        .into_iter()
        .map(|name| {
            let method = Method::from_config(name, &serde_json::json!({}))?;
            Ok(serde_json::json!({
                "name": name,
                "defaults": method.hyperparameters(),
                "basin": method.basin(),
                "schedule": method.schedulable(),
            }))
        })
        .collect::<wgpu_optim::Result<Vec<_>>>()
        .map_err(js_error)?;
    Ok(serde_json::Value::Array(list).to_string())
}

/// Validates a run, `{"optimizer", "hyperparameters", "schedule"?, "steps"}` as JSON, as torch
/// would (hyper-parameters and schedule); returns its full hyper-parameters (defaults filled
/// in) as JSON, or the error.
#[wasm_bindgen]
pub fn check_run(run_json: &str) -> Result<String, JsError> {
    let mut value: serde_json::Value = serde_json::from_str(run_json).map_err(js_error)?;
    let steps = value
        .as_object_mut()
        .and_then(|o| o.remove("steps"))
        .and_then(|s| s.as_u64())
        .ok_or_else(|| JsError::new("check_run needs \"steps\""))?;
    let run: RunSpec = serde_json::from_value(value).map_err(js_error)?;
    let (method, _) = run.checked(steps.min(u64::from(u32::MAX)) as u32).map_err(js_error)?;
    Ok(method.hyperparameters().to_string())
}

/// The map's levels: `display_level(f)` at `width × height` pixel centres of the function's
/// domain, row 0 at the top (largest y).
#[wasm_bindgen]
pub fn contour_levels(function: &str, width: u32, height: u32) -> Result<Vec<f32>, JsError> {
    let f: TestFunction = function.parse().map_err(js_error)?;
    let d = f.domain();
    let (w, h) = (width.clamp(1, 4096) as usize, height.clamp(1, 4096) as usize);
    let mut out = Vec::with_capacity(w * h);
    for j in 0..h {
        let y = d.y[1] - (d.y[1] - d.y[0]) * (j as f64 + 0.5) / h as f64;
        for i in 0..w {
            let x = d.x[0] + (d.x[1] - d.x[0]) * (i as f64 + 0.5) / w as f64;
            out.push(f.display_level(f.value(x, y)) as f32);
        }
    }
    Ok(out)
}

/// Runs a trajectory spec (JSON, see `TrajectorySpec`) on the device `init` chose; returns the
/// report as JSON.
#[wasm_bindgen]
pub async fn run_trajectories(spec_json: &str) -> Result<String, JsError> {
    let spec = TrajectorySpec::from_json(spec_json).map_err(js_error)?;
    let device = device()?;
    let _exclusive = Exclusive::take()?;
    let report = trajectories::run_spec(&device, &spec, &now).await.map_err(js_error)?;
    serde_json::to_string(&report).map_err(js_error)
}

/// Runs a basin map (JSON, see `BasinSpec`); returns the report as JSON.
#[wasm_bindgen]
pub async fn run_basin(spec_json: &str) -> Result<String, JsError> {
    let spec: BasinSpec = serde_json::from_str(spec_json).map_err(|e| js_error(format!("basin spec: {e}")))?;
    let device = device()?;
    let _exclusive = Exclusive::take()?;
    let report = trajectories::run_basin(&device, &spec, &now).await.map_err(js_error)?;
    serde_json::to_string(&report).map_err(js_error)
}
