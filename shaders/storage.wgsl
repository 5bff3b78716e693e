// Storage types: conversions between f32 and the 16-bit formats kept packed two to a u32
// (element 2k in the low half, as little-endian F16/BF16 tensors lie in memory), and the
// counter-based random bits of stochastic rounding. Appended to a kernel that keeps a buffer
// in f16 or bf16; src/storage.rs generates the buffer's load_/store_ accessors over them and
// holds their CPU twins (same integer operations).

// bf16 -> f32: exact.
fn bf16_value(bits: u32) -> f32 {
    return bitcast<f32>(bits << 16u);
}

// f32 -> bf16, round to nearest even; NaN stays NaN.
fn bf16_nearest(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return ((b >> 16u) & 0x8000u) | 0x7fc0u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// f32 -> bf16, stochastic: rounds up in magnitude with probability (dropped bits) / 2^16,
// from 16 random bits; NaN stays NaN.
fn bf16_stochastic(x: f32, random: u32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return ((b >> 16u) & 0x8000u) | 0x7fc0u;
    }
    if ((b & 0x7fffffffu) == 0x7f800000u) {
        return b >> 16u;
    }
    return (b + (random & 0xffffu)) >> 16u;
}

// f16 -> f32: exact (subnormals included).
fn f16_value(bits: u32) -> f32 {
    let sign = (bits & 0x8000u) << 16u;
    let exponent = (bits >> 10u) & 0x1fu;
    let mantissa = bits & 0x3ffu;
    if (exponent == 0u) {
        return bitcast<f32>(sign | bitcast<u32>(f32(mantissa) * 5.9604645e-8));
    }
    if (exponent == 31u) {
        return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u));
    }
    return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
}

// f32 -> f16 from the f32's bits, rounding the dropped magnitude bits with `carry` added
// (nearest even: half the dropped unit less one, plus the kept lowest bit; stochastic: random
// bits below the unit). Beyond f16's range: infinity; NaN stays NaN.
fn f16_rounded(x: f32, stochastic: bool, random: u32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return sign | 0x7e00u;
    }
    var shift = 13u;
    var kept = a - 0x38000000u;             // rebias: f16 exponent = f32 exponent - 112
    if (a < 0x38800000u) {                  // below f16's smallest normal: a subnormal of 2^-24 units
        let exponent = a >> 23u;
        if (exponent < 102u) {
            return sign;                    // below 2^-25: rounds to zero either way
        }
        shift = 126u - exponent;
        kept = (a & 0x7fffffu) | 0x800000u;
    }
    let unit = 1u << shift;
    var carry = random & (unit - 1u);
    if (!stochastic) {
        carry = (unit >> 1u) - 1u + ((kept >> shift) & 1u);
    }
    let rounded = (kept + carry) >> shift;
    if (a >= 0x38800000u && rounded >= 0x7c00u) {
        return sign | 0x7c00u;
    }
    return sign | rounded;
}

fn f16_nearest(x: f32) -> u32 {
    return f16_rounded(x, false, 0u);
}

fn f16_stochastic(x: f32, random: u32) -> u32 {
    return f16_rounded(x, true, random);
}

// A 32-bit integer hash with good avalanche (Wellons' lowbias32).
fn mix32(v: u32) -> u32 {
    var x = v;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    x = x ^ (x >> 16u);
    return x;
}

// The random bits of stochastic rounding for element `element` of tensor `tensor`, buffer
// `buffer` (0: parameters, 1 + k: the k-th state array), at step `step`: a function of the
// seed and those four numbers only, so a run is the same on every backend and layout.
fn rounding_random(seed: u32, step: u32, tensor: u32, buffer: u32, element: u32) -> u32 {
    let stream = mix32(mix32(mix32(seed) ^ step) ^ (tensor * 16u + buffer));
    return mix32(stream + element);
}
