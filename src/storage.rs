//! Storage types: the element type each buffer keeps (parameters, gradients, optimizer state),
//! and the exact conversions the kernels make, with their CPU twins.
//!
//! Every update rule computes in f32. A buffer kept in f16 or bf16 is read exactly and written
//! rounded, once per step:
//!
//! ```text
//! load:   x = f32(stored)                              exact
//! update: the rule's formula, in f32
//! store:  stored = round(x)                            nearest even, or stochastic:
//!         stochastic rounding adds random bits r below the kept unit before truncating,
//!         r = hash(seed, step, tensor, buffer, element), so a run is reproducible and resumable
//! ```
//!
//! With [`Precision::master_weights`], the parameters the step updates stay f32 (the master
//! copy, [`Optimizer::master_param`](crate::Optimizer::master_param)) and the step also writes
//! their rounded copy, which the model reads ([`Optimizer::param`](crate::Optimizer::param)).
//!
//! f16 and bf16 are packed two to a `u32` (element 2k in the low half), as little-endian
//! `F16`/`BF16` tensors lie in memory, so a view binds like any WGSL `array<u32>`. The kernels'
//! conversions are in `shaders/storage.wgsl`; this module holds their twins and generates each
//! typed buffer's `load_`/`store_` accessors from the rule's one WGSL source.
//!
//! ```no_run
//! use wgpu_optim::{rules::AdamW, BackendChoice, Dtype, GpuContext, Optimizer, OptimizerOptions, ParamGroup, Parameters, Precision, Rounding};
//! let gpu = GpuContext::new(BackendChoice::Auto)?;
//! let mut params = Parameters::new();
//! let w = params.add("w", &[256, 256], vec![0.01; 65536])?;
//! let precision = Precision { params: Dtype::Bf16, master_weights: true, grads: Dtype::Bf16, state: Dtype::Bf16,
//!                             rounding: Rounding::Stochastic { seed: 7 } };
//! let options = OptimizerOptions { precision, ..Default::default() };
//! let opt = Optimizer::with_options(&gpu, params, vec![ParamGroup::new(AdamW::default(), [w])], options)?;
//! println!("{}", opt.memory());   // bytes of every buffer, and per parameter
//! # Ok::<(), wgpu_optim::Error>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The WGSL conversions (`bf16_nearest`, `f16_value`, `rounding_random`, ...).
pub const STORAGE_WGSL: &str = include_str!("../shaders/storage.wgsl");

/// The element type of a buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE single precision, 4 bytes.
    #[default]
    F32,
    /// IEEE half precision, 2 bytes (largest finite value 65504).
    F16,
    /// bfloat16: f32's exponent with 8 bits of significand, 2 bytes.
    Bf16,
    /// Optimizer state only: 8-bit blockwise dynamic quantization as bitsandbytes 0.50.2
    /// keeps it (see [`quantize_block`]): one byte per element, a code into a 256-value map
    /// (signed for first moments, unsigned for second), scaled by its block's absmax (blocks
    /// of 256). Tensors below [`INT8_MIN_ELEMENTS`] keep f32 state, as bitsandbytes' do.
    Int8,
}

/// Tensors with fewer elements keep f32 state under [`Dtype::Int8`] (bitsandbytes'
/// `min_8bit_size`).
pub const INT8_MIN_ELEMENTS: usize = 4096;

/// Elements per block of 8-bit state, each with its own absmax (bitsandbytes' optimizers).
pub const INT8_BLOCK: usize = 256;

impl Dtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::Int8 => 1,
        }
    }

    /// Its name: `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::Int8 => "int8",
        }
    }

    /// Its safetensors dtype: `F32`, `F16` or `BF16`.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
            Dtype::Int8 => "U8",
        }
    }

    /// The dtype named `name` (`f32`, `f16`, `bf16`; also safetensors' `F32`, `F16`, `BF16`).
    pub fn parse(name: &str) -> Result<Dtype> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" | "half" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "int8" | "u8" | "8bit" => Ok(Dtype::Int8),
            _ => Err(Error::Config(format!("unknown dtype {name:?}: expected f32, f16, bf16 or int8"))),
        }
    }

    /// Bytes of `len` elements as a buffer holds them (in whole `u32` words).
    pub fn byte_len(self, len: usize) -> u64 {
        match self {
            Dtype::F32 => len as u64 * 4,
            Dtype::F16 | Dtype::Bf16 => len.div_ceil(2) as u64 * 4,
            Dtype::Int8 => len.div_ceil(4) as u64 * 4,
        }
    }

    /// `x` rounded to this type (to nearest even), as an f32 (int8 codes: `x` itself).
    pub fn round(self, x: f32) -> f32 {
        self.value(self.nearest_bits(x))
    }

    /// The bits of `x` rounded to nearest even (f32: its own bits).
    pub fn nearest_bits(self, x: f32) -> u32 {
        match self {
            Dtype::F32 | Dtype::Int8 => x.to_bits(),
            Dtype::F16 => f16_rounded(x, None),
            Dtype::Bf16 => bf16_nearest(x),
        }
    }

    /// The bits of `x` rounded stochastically with `random` bits (f32: its own bits).
    pub fn stochastic_bits(self, x: f32, random: u32) -> u32 {
        match self {
            Dtype::F32 | Dtype::Int8 => x.to_bits(),
            Dtype::F16 => f16_rounded(x, Some(random)),
            Dtype::Bf16 => bf16_stochastic(x, random),
        }
    }

    /// The value of stored bits (exact).
    pub fn value(self, bits: u32) -> f32 {
        match self {
            Dtype::F32 | Dtype::Int8 => f32::from_bits(bits),
            Dtype::F16 => f16_value(bits),
            Dtype::Bf16 => bf16_value(bits),
        }
    }

    /// `values` as this type's little-endian bytes, rounded to nearest even (padded to whole
    /// `u32` words with zero elements). Int8: the values are codes (0 to 255).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.byte_len(values.len()) as usize);
        for &x in values {
            match self {
                Dtype::F32 => bytes.extend_from_slice(&x.to_le_bytes()),
                Dtype::Int8 => bytes.push(x as u8),
                _ => bytes.extend_from_slice(&(self.nearest_bits(x) as u16).to_le_bytes()),
            }
        }
        bytes.resize(self.byte_len(values.len()) as usize, 0);
        bytes
    }

    /// The first `len` values of little-endian bytes of this type.
    pub fn decode(self, bytes: &[u8], len: usize) -> Vec<f32> {
        match self {
            Dtype::F32 => bytes.chunks_exact(4).take(len).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::Int8 => bytes.iter().take(len).map(|&b| f32::from(b)).collect(),
            _ => bytes.chunks_exact(2).take(len).map(|b| self.value(u32::from(u16::from_le_bytes([b[0], b[1]])))).collect(),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How f32 results are rounded into f16 or bf16 buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Round to nearest, ties to even (IEEE's default).
    #[default]
    NearestEven,
    /// Stochastic rounding: up or down with probabilities that make the rounding unbiased,
    /// from a counter-based hash of (seed, step, tensor, buffer, element). Small updates that
    /// nearest rounding would lose survive on average.
    Stochastic {
        /// The hash's seed (stored in checkpoints).
        seed: u32,
    },
}

/// The storage types of an optimizer's buffers. Default: everything f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Precision {
    /// The parameters' type: what the model reads.
    pub params: Dtype,
    /// With f16/bf16 parameters: keep an f32 master copy that the step updates, and write its
    /// rounded copy (to nearest even) for the model. Without: the step updates the f16/bf16
    /// parameters themselves, rounding with [`Precision::rounding`].
    pub master_weights: bool,
    /// The gradients' type, as the user's backward writes them.
    pub grads: Dtype,
    /// The per-element optimizer state's type (`exp_avg`, `momentum_buffer`, ...): f32, bf16
    /// or int8 (8-bit blockwise). (f16's range, 6e-8 to 65504, loses second moments such as
    /// `exp_avg_sq`.)
    pub state: Dtype,
    /// How the step rounds what it writes in f16/bf16 (state; parameters without a master copy).
    pub rounding: Rounding,
}

impl Precision {
    /// Rejects combinations that mean nothing or lose data silently.
    pub fn validate(&self) -> Result<()> {
        if self.master_weights && self.params == Dtype::F32 {
            return Err(Error::Config("master_weights needs f16 or bf16 parameters (f32 parameters are their own master copy)".into()));
        }
        if self.params == Dtype::Int8 || self.grads == Dtype::Int8 {
            return Err(Error::Config("int8 (8-bit blockwise) is a storage type for optimizer state only".into()));
        }
        if self.state == Dtype::F16 {
            return Err(Error::Config(
                "optimizer state in f16 is not supported: its range (6e-8 to 65504) underflows second moments such as \
                 exp_avg_sq; use bf16"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Bytes of the smallest element any buffer keeps (tensors start at aligned bytes in each).
    pub fn smallest_element(&self) -> usize {
        [self.params, self.grads, self.state].iter().map(|d| d.bytes()).min().expect("three types")
    }

    /// Whether every buffer is f32 (the kernels are then exactly the rules' own).
    pub fn is_f32(&self) -> bool {
        *self == Precision { rounding: self.rounding, ..Precision::default() }
    }

    /// Whether some written buffer rounds stochastically (the kernels then need each element's
    /// tensor and index).
    pub fn is_stochastic(&self) -> bool {
        let rounded = self.state != Dtype::F32 || (self.params != Dtype::F32 && !self.master_weights);
        rounded && matches!(self.rounding, Rounding::Stochastic { .. })
    }

    /// The type the step updates the parameters in (f32 with a master copy).
    pub fn updated_params(&self) -> Dtype {
        if self.master_weights { Dtype::F32 } else { self.params }
    }

    /// The seed of stochastic rounding (0 when rounding to nearest).
    pub fn seed(&self) -> u32 {
        match self.rounding {
            Rounding::Stochastic { seed } => seed,
            Rounding::NearestEven => 0,
        }
    }

    /// Rounds a value the step writes into buffer `buffer` (0: parameters, 1 + k: state array
    /// k) of type `dtype`, as the kernel does: the CPU twin of the generated `store_` accessors.
    pub fn store(&self, dtype: Dtype, x: f32, site: RoundingSite) -> f32 {
        match self.rounding {
            Rounding::NearestEven => dtype.round(x),
            Rounding::Stochastic { seed } => {
                let random = rounding_random(seed, site.step, site.tensor, site.buffer, site.element);
                dtype.value(dtype.stochastic_bits(x, random))
            }
        }
    }
}

/// Where a stochastically rounded value is written: what its random bits depend on.
#[derive(Clone, Copy, Debug)]
pub struct RoundingSite {
    /// The group's step count after this step.
    pub step: u32,
    /// The tensor's registration index.
    pub tensor: u32,
    /// 0: the parameters; 1 + k: the rule's k-th per-element state array.
    pub buffer: u32,
    /// The element's index in its tensor.
    pub element: u32,
}

fn bf16_value(bits: u32) -> f32 {
    f32::from_bits(bits << 16)
}

fn bf16_nearest(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return ((b >> 16) & 0x8000) | 0x7fc0;
    }
    b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16
}

fn bf16_stochastic(x: f32, random: u32) -> u32 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return ((b >> 16) & 0x8000) | 0x7fc0;
    }
    if b & 0x7fff_ffff == 0x7f80_0000 {
        return b >> 16;
    }
    b.wrapping_add(random & 0xffff) >> 16
}

fn f16_value(bits: u32) -> f32 {
    let sign = (bits & 0x8000) << 16;
    let exponent = (bits >> 10) & 0x1f;
    let mantissa = bits & 0x3ff;
    match exponent {
        0 => f32::from_bits(sign | (mantissa as f32 * 5.960_464_5e-8).to_bits()),
        31 => f32::from_bits(sign | 0x7f80_0000 | (mantissa << 13)),
        _ => f32::from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13)),
    }
}

/// `f16_rounded` of shaders/storage.wgsl: `random` for stochastic rounding, else nearest even.
fn f16_rounded(x: f32, random: Option<u32>) -> u32 {
    let b = x.to_bits();
    let sign = (b >> 16) & 0x8000;
    let a = b & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return sign | 0x7e00;
    }
    let (shift, kept) = if a < 0x3880_0000 {
        let exponent = a >> 23;
        if exponent < 102 {
            return sign;
        }
        (126 - exponent, (a & 0x7f_ffff) | 0x80_0000)
    } else {
        (13, a - 0x3800_0000)
    };
    let unit = 1u32 << shift;
    let carry = match random {
        Some(random) => random & (unit - 1),
        None => (unit >> 1) - 1 + ((kept >> shift) & 1),
    };
    let rounded = kept.wrapping_add(carry) >> shift;
    if a >= 0x3880_0000 && rounded >= 0x7c00 {
        return sign | 0x7c00;
    }
    sign | rounded
}

/// Wellons' lowbias32 (`mix32` in shaders/storage.wgsl).
fn mix32(v: u32) -> u32 {
    let mut x = v;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The random bits of stochastic rounding (`rounding_random` in shaders/storage.wgsl).
pub fn rounding_random(seed: u32, step: u32, tensor: u32, buffer: u32, element: u32) -> u32 {
    let stream = mix32(mix32(mix32(seed) ^ step) ^ tensor.wrapping_mul(16).wrapping_add(buffer));
    mix32(stream.wrapping_add(element))
}

/// A buffer of a kernel kept in another type than f32, for [`typed_source`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct TypedBuffer {
    /// Its name in the WGSL (`param`, `grad`, `exp_avg`, ...).
    pub name: &'static str,
    /// The type the kernel reads and updates.
    pub dtype: Dtype,
    /// The rounding-hash buffer number (0: parameters, 1 + k: state array k).
    pub hash_buffer: u32,
    /// Int8 state: its index among the configuration's state arrays (its absmax and kept-state
    /// slot) and whether it is never negative (the unsigned map).
    pub int8: Option<(u32, bool)>,
}

/// The 8-bit state's shared WGSL (`quant_site`, `int8_quantize`, ...).
const INT8_WGSL: &str = include_str!("../shaders/int8.wgsl");

/// The kernel of `source` with each buffer of `buffers` kept in its type: its declaration's
/// `array<vec4<f32>>` becomes packed words, every `name[i]` read becomes `load_name(i)` and
/// every `name[i] = value;` becomes `store_name(i, value);`, over generated accessors. With
/// `model_copy` (master weights), storing a parameter also writes its rounded copy into
/// `model_param` at `model_binding`. Buffers not listed, and sources that name none of them,
/// are left as they are.
pub(crate) fn typed_source(
    source: &str,
    buffers: &[TypedBuffer],
    model_copy: Option<(Dtype, u32)>,
    rounding: Rounding,
    native_f16: bool,
) -> Result<String> {
    let mut out = source.to_string();
    let mut accessors = String::new();
    let mut rewritten: Vec<&'static str> = buffers.iter().filter(|b| b.dtype != Dtype::F32).map(|b| b.name).collect();
    let int8 = buffers.iter().any(|b| b.dtype == Dtype::Int8);
    // The parameters' store goes through an accessor with master weights (it writes the
    // copy too) and with int8 state (the absmax phase writes nothing).
    if (model_copy.is_some() || int8) && !rewritten.contains(&"param") {
        rewritten.push("param");
    }
    for name in rewritten {
        let typed = buffers.iter().find(|b| b.name == name);
        let dtype = typed.map_or(Dtype::F32, |b| b.dtype);
        let native = native_f16 && dtype == Dtype::F16;
        let Some((declared, writable)) = retype_declaration(&out, name, dtype, native) else {
            continue; // this source does not declare it
        };
        out = rewrite_accesses(&declared, name)?;
        let hash_buffer = typed.map_or(0, |b| b.hash_buffer);
        let accessor = match typed.and_then(|b| b.int8) {
            Some((slot, nonnegative)) => int8_accessor_wgsl(name, slot, nonnegative),
            None if native => native_f16_accessor_wgsl(name, writable, hash_buffer, rounding, int8),
            None => accessor_wgsl(name, dtype, writable, hash_buffer, rounding, if name == "param" { model_copy } else { None }, int8),
        };
        accessors.push_str(&accessor);
    }
    if accessors.is_empty() {
        return Ok(out);
    }
    if matches!(rounding, Rounding::Stochastic { .. }) {
        accessors.push_str(ELEMENT_RANDOM_WGSL);
    }
    if int8 {
        // The state arrays with scales: those of the configuration (others map to slot 0).
        let slots = buffers.iter().filter_map(|b| b.int8).map(|(slot, _)| slot + 1).max().unwrap_or(1);
        accessors.push_str(&format!("const INT8_SLOTS: u32 = {slots}u;\n"));
        accessors.push_str(INT8_WGSL);
    }
    if let Some((_, binding)) = model_copy {
        accessors.push_str(&format!("@group(0) @binding({binding}) var<storage, read_write> model_param: array<vec2<u32>>;\n"));
    }
    let uses_f16 = native_f16 && buffers.iter().any(|b| b.dtype == Dtype::F16);
    let enable = if uses_f16 { "enable f16;\n" } else { "" };
    Ok(format!("{enable}{out}\n// ---- typed storage (generated by src/storage.rs) ----\n{STORAGE_WGSL}\n{accessors}"))
}

/// The random bits of the four elements of vec4 `i` of an element pass's window (each tensor
/// starts at a chunk, so the chunk map names the tensor; see `rounding_random`).
const ELEMENT_RANDOM_WGSL: &str = "override rounding_seed: u32 = 0u;
fn element_random(i: u32, buffer: u32) -> vec4<u32> {
    let chunk = dispatch.first_chunk + i / WORKGROUP_SIZE;
    let tensor = tables.words[dispatch.chunk_map + chunk];
    let element = (chunk - tensor_at(tensor).first_chunk) * CHUNK_ELEMENTS + (i % WORKGROUP_SIZE) * 4u;
    let step = group_step();
    return vec4<u32>(
        rounding_random(rounding_seed, step, tensor, buffer, element),
        rounding_random(rounding_seed, step, tensor, buffer, element + 1u),
        rounding_random(rounding_seed, step, tensor, buffer, element + 2u),
        rounding_random(rounding_seed, step, tensor, buffer, element + 3u),
    );
}
";

/// `source` with `name`'s declaration retyped to packed 16-bit words when `dtype` is f16 or
/// bf16, and whether it is writable. None when the source does not declare `name` as a
/// storage array of vec4<f32>.
fn retype_declaration(source: &str, name: &str, dtype: Dtype, native_f16: bool) -> Option<(String, bool)> {
    let pattern = format!(" {name}: array<vec4<f32>>;");
    let at = source.find(&pattern)?;
    let line_start = source[..at].rfind('\n').map_or(0, |k| k + 1);
    let declaration = &source[line_start..at];
    if !declaration.contains("var<storage") {
        return None;
    }
    let writable = declaration.contains("read_write");
    let words = match dtype {
        Dtype::F32 => return Some((source.to_string(), writable)),
        Dtype::F16 if native_f16 => "vec4<f16>",
        Dtype::F16 | Dtype::Bf16 => "vec2<u32>",
        Dtype::Int8 => "u32",
    };
    Some((source.replacen(&pattern, &format!(" {name}: array<{words}>;"), 1), writable))
}

/// Every `name[index]` of `source` through the accessors (see [`typed_source`]).
fn rewrite_accesses(source: &str, name: &str) -> Result<String> {
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len() + 256);
    let mut k = 0;
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while k < source.len() {
        let rest = &source[k..];
        let starts_here = rest.starts_with(name)
            && (k == 0 || (!is_ident(bytes[k - 1]) && bytes[k - 1] != b'.'))
            && source[k + name.len()..].trim_start_matches(' ').starts_with('[');
        if !starts_here {
            let c = rest.chars().next().expect("k < len");
            out.push(c);
            k += c.len_utf8();
            continue;
        }
        let open = k + name.len() + source[k + name.len()..].find('[').expect("checked");
        let close = matching(source, open, b'[', b']')
            .ok_or_else(|| Error::Config(format!("typed storage: unbalanced {name}[ in a kernel")))?;
        let index = rewrite_accesses(&source[open + 1..close], name)?;
        let after = &source[close + 1..];
        let trimmed = after.trim_start();
        if trimmed.starts_with('=') && !trimmed.starts_with("==") {
            let value_start = close + 1 + (after.len() - trimmed.len()) + 1;
            let end = value_start
                + source[value_start..].find(';').ok_or_else(|| Error::Config(format!("typed storage: a store to {name} without ';'")))?;
            let value = rewrite_accesses(source[value_start..end].trim(), name)?;
            out.push_str(&format!("store_{name}({index}, {value})"));
            k = end;
        } else if trimmed.starts_with('.') || ["+=", "-=", "*=", "/="].iter().any(|op| trimmed.starts_with(op)) {
            return Err(Error::Config(format!("typed storage: {name}[..] is used other than as a whole vec4 load or store")));
        } else {
            out.push_str(&format!("load_{name}({index})"));
            k = close + 1;
        }
    }
    Ok(out)
}

/// The index of the bracket closing the one at `open`.
fn matching(source: &str, open: usize, left: u8, right: u8) -> Option<usize> {
    let mut depth = 0usize;
    for (k, &c) in source.as_bytes().iter().enumerate().skip(open) {
        if c == left {
            depth += 1;
        } else if c == right {
            depth -= 1;
            if depth == 0 {
                return Some(k);
            }
        }
    }
    None
}

/// The `load_`/`store_` accessors of one buffer.
fn accessor_wgsl(
    name: &str,
    dtype: Dtype,
    writable: bool,
    hash_buffer: u32,
    rounding: Rounding,
    model_copy: Option<(Dtype, u32)>,
    absmax_phase: bool,
) -> String {
    let mut s = String::new();
    // With int8 state, the absmax phase computes the step and writes nothing but absmax.
    let guard = if absmax_phase { "    if (quantize_phase == 1u) {\n        return;\n    }\n" } else { "" };
    match dtype {
        Dtype::F32 | Dtype::Int8 => {
            s.push_str(&format!("fn load_{name}(i: u32) -> vec4<f32> {{\n    return {name}[i];\n}}\n"));
            if !writable {
                return s;
            }
            s.push_str(&format!("fn store_{name}(i: u32, v: vec4<f32>) {{\n{guard}    {name}[i] = v;\n"));
        }
        Dtype::F16 | Dtype::Bf16 => {
            let t = dtype.name();
            s.push_str(&format!(
                "fn load_{name}(i: u32) -> vec4<f32> {{\n    let w = {name}[i];\n    \
                 return vec4<f32>({t}_value(w.x & 0xffffu), {t}_value(w.x >> 16u), {t}_value(w.y & 0xffffu), {t}_value(w.y >> 16u));\n}}\n"
            ));
            if !writable {
                return s;
            }
            let bits = match rounding {
                Rounding::NearestEven => format!("vec4<u32>({t}_nearest(v.x), {t}_nearest(v.y), {t}_nearest(v.z), {t}_nearest(v.w))"),
                Rounding::Stochastic { .. } => format!(
                    "vec4<u32>({t}_stochastic(v.x, r.x), {t}_stochastic(v.y, r.y), {t}_stochastic(v.z, r.z), {t}_stochastic(v.w, r.w))"
                ),
            };
            s.push_str(&format!("fn store_{name}(i: u32, v: vec4<f32>) {{\n{guard}"));
            if matches!(rounding, Rounding::Stochastic { .. }) {
                s.push_str(&format!("    let r = element_random(i, {hash_buffer}u);\n"));
            }
            s.push_str(&format!("    let b = {bits};\n    {name}[i] = vec2<u32>(b.x | (b.y << 16u), b.z | (b.w << 16u));\n"));
        }
    }
    if let Some((model, _)) = model_copy {
        let t = model.name();
        s.push_str(&format!(
            "    let m = vec4<u32>({t}_nearest(v.x), {t}_nearest(v.y), {t}_nearest(v.z), {t}_nearest(v.w));\n    \
             model_param[i] = vec2<u32>(m.x | (m.y << 16u), m.z | (m.w << 16u));\n"
        ));
    }
    s.push_str("}\n");
    s
}

// ---- 8-bit blockwise state (bitsandbytes 0.50.2) ----

/// The dynamic map of a state array: unsigned for values that are never negative (second
/// moments), signed otherwise, each 256 ascending f32 values.
pub fn int8_map(nonnegative: bool) -> [f32; 256] {
    let bits = if nonnegative { crate::quantization_maps::UNSIGNED } else { crate::quantization_maps::SIGNED };
    bits.map(f32::from_bits)
}

/// The midpoints between neighbouring codes of a map, in f32 as bitsandbytes computes them
/// (`(code[:-1] + code[1:]) / 2`), padded to 256 with +inf.
pub fn int8_midpoints(map: &[f32; 256]) -> [f32; 256] {
    let mut mid = [f32::INFINITY; 256];
    for k in 0..255 {
        mid[k] = (map[k] + map[k + 1]) / 2.0;
    }
    mid
}

/// The smallest normal f32: a block whose absmax is below it quantizes to the code of 0.
const MIN_NORMAL: f32 = 1.175_494_4e-38;

/// One block's codes and absmax, as bitsandbytes' reference quantizer computes them: absmax =
/// max |x|; each x scaled to [-1, 1] (multiplied by 1/absmax, or divided by absmax in a
/// tensor's last, partial block) and given the nearest code, ties to the lower one (the
/// number of midpoints below it).
pub fn quantize_block(values: &[f32], map: &[f32; 256], partial: bool) -> (Vec<u8>, f32) {
    let absmax = values.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let midpoints = int8_midpoints(map);
    let codes = values.iter().map(|&x| quantize_value(x, absmax, partial, &midpoints)).collect();
    (codes, absmax)
}

/// The code of one value of a block (see [`quantize_block`]).
pub fn quantize_value(x: f32, absmax: f32, partial: bool, midpoints: &[f32; 256]) -> u8 {
    let scaled = if absmax < MIN_NORMAL {
        0.0
    } else if partial {
        x / absmax
    } else {
        x * (1.0 / absmax)
    };
    let scaled = scaled.clamp(-1.0, 1.0);
    let (mut lo, mut hi) = (0usize, 255usize);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if midpoints[mid] < scaled {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo as u8
}

/// A tensor's 8-bit state as the kernels keep it: values replaced by their dequantized codes
/// (code × absmax), block by block from the tensor's start. Tensors below
/// [`INT8_MIN_ELEMENTS`] are left in f32. The CPU twin of the kernels' `store_` accessors.
/// Returns the codes and block scales (None for a tensor kept in f32).
pub fn int8_round_trip(values: &mut [f32], nonnegative: bool) -> Option<(Vec<u8>, Vec<f32>)> {
    if values.len() < INT8_MIN_ELEMENTS {
        return None;
    }
    let map = int8_map(nonnegative);
    let len = values.len();
    let (mut all_codes, mut scales) = (Vec::with_capacity(len), Vec::with_capacity(len.div_ceil(INT8_BLOCK)));
    for (b, block) in values.chunks_mut(INT8_BLOCK).enumerate() {
        let partial = (b + 1) * INT8_BLOCK > len;
        let (codes, absmax) = quantize_block(block, &map, partial);
        for (x, &q) in block.iter_mut().zip(&codes) {
            *x = map[q as usize] * absmax;
        }
        all_codes.extend(codes);
        scales.push(absmax);
    }
    Some((all_codes, scales))
}

/// The accessors of an int8 state array (see shaders/int8.wgsl): `slot` is its index among
/// the configuration's state arrays.
fn int8_accessor_wgsl(name: &str, slot: u32, nonnegative: bool) -> String {
    let map = u32::from(nonnegative);
    format!(
        "fn load_{name}(i: u32) -> vec4<f32> {{
    let site = quant_site(i);
    if (site.kept != NOT_KEPT) {{
        if (site.element >= site.len) {{
            return vec4<f32>(0.0);  // the padding after a kept tensor has no state
        }}
        return kept_load(kept_word(site, {slot}u));
    }}
    return int8_dequantize({name}[i], absmax_read({slot}u, site.block), {map}u);
}}
fn store_{name}(i: u32, v: vec4<f32>) {{
    let site = quant_site(i);
    if (site.kept != NOT_KEPT) {{
        if (quantize_phase == 0u && site.element < site.len) {{
            kept_store(kept_word(site, {slot}u), v);
        }}
        return;
    }}
    if (quantize_phase == 1u) {{
        record_absmax({slot}u, site, v);
        return;
    }}
    {name}[i] = int8_codes({slot}u, site, v, {map}u);
}}
"
    )
}

/// The accessors of an f16 buffer on a device with `shader-f16`: read as `vec4<f16>` (exact),
/// written from the same integer rounding as the packed path (WGSL leaves the rounding of an
/// f32 to f16 conversion to the implementation): the rounded value is exactly an f16, so the
/// conversion that stores it is exact, and both paths store the same bits.
fn native_f16_accessor_wgsl(name: &str, writable: bool, hash_buffer: u32, rounding: Rounding, absmax_phase: bool) -> String {
    let mut s = format!("fn load_{name}(i: u32) -> vec4<f32> {{\n    return vec4<f32>({name}[i]);\n}}\n");
    if !writable {
        return s;
    }
    let guard = if absmax_phase { "    if (quantize_phase == 1u) {\n        return;\n    }\n" } else { "" };
    s.push_str(&format!("fn store_{name}(i: u32, v: vec4<f32>) {{\n{guard}"));
    match rounding {
        Rounding::NearestEven => s.push_str("    let b = vec4<u32>(f16_nearest(v.x), f16_nearest(v.y), f16_nearest(v.z), f16_nearest(v.w));\n"),
        Rounding::Stochastic { .. } => s.push_str(&format!(
            "    let r = element_random(i, {hash_buffer}u);\n    \
             let b = vec4<u32>(f16_stochastic(v.x, r.x), f16_stochastic(v.y, r.y), f16_stochastic(v.z, r.z), f16_stochastic(v.w, r.w));\n"
        )),
    }
    s.push_str(&format!(
        "    {name}[i] = vec4<f16>(vec4<f32>(f16_value(b.x), f16_value(b.y), f16_value(b.z), f16_value(b.w)));\n}}\n"
    ));
    s
}
