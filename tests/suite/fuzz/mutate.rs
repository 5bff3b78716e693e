//! The mutator: byte-level, JSON-aware and safetensors-header-aware changes to a seed input,
//! stacked a few at a time (as AFL's "havoc" stage does), driven by a seeded RNG so every
//! input is reproducible from its index.

use serde_json::{Map, Number, Value};

use crate::common::Rng;

/// What an input is, for the structure-aware mutations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A safetensors file; `metadata_json`: its `__metadata__` values are JSON text (checkpoints).
    Safetensors { metadata_json: bool },
    /// A JSON document (run.json).
    Json,
}

pub struct Dice(Rng);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Dice(Rng::new(seed))
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Mutated inputs stay below this size: growth past it only slows the run down.
const MAX_INPUT: usize = 1 << 16;

/// A mutated copy of `seed`: 1 to 4 stacked mutations, mostly one or two (most byte-level
/// mutations break the syntax, so stacking many would rarely reach past the parser). `others`
/// (the corpus of the same format) provides material for splicing.
pub fn mutate(seed: &[u8], others: &[Vec<u8>], format: Format, dice: &mut Dice) -> Vec<u8> {
    let mut input = seed.to_vec();
    for _ in 0..*dice.pick(&[1, 1, 1, 2, 2, 3, 4]) {
        let structured = match format {
            Format::Json if dice.chance(80) => json_document(&input, dice),
            Format::Safetensors { metadata_json } if dice.chance(75) => safetensors(&input, metadata_json, dice),
            _ => None,
        };
        input = structured.unwrap_or_else(|| bytes(input, others, dice));
        input.truncate(MAX_INPUT);
    }
    input
}

// ---- byte level -------------------------------------------------------------------------

const INTERESTING_BYTES: [u8; 6] = [0, 1, 0x7f, 0x80, 0xff, b'"'];
const INTERESTING_INTS: [u64; 10] =
    [0, 1, 0x7f, 0xff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 0x7fff_ffff_ffff_ffff, u64::MAX, 100_000_001];

fn bytes(mut input: Vec<u8>, others: &[Vec<u8>], dice: &mut Dice) -> Vec<u8> {
    let len = input.len();
    let at = |dice: &mut Dice| dice.below(len.max(1));
    match dice.below(9) {
        0 if len > 0 => {
            let i = at(dice);
            input[i] ^= 1 << dice.below(8);
        }
        1 if len > 0 => {
            let i = at(dice);
            input[i] = *dice.pick(&INTERESTING_BYTES);
        }
        2 => input.truncate(at(dice)),
        3 => {
            let extra = 1 + dice.below(64);
            let fill = dice.below(3);
            input.extend((0..extra).map(|_| match fill {
                0 => 0,
                1 => *dice.pick(&INTERESTING_BYTES),
                _ => dice.below(256) as u8,
            }));
        }
        4 if len > 0 => {
            // Duplicate a chunk at another place.
            let start = at(dice);
            let chunk: Vec<u8> = input[start..(start + 1 + dice.below(64)).min(len)].to_vec();
            let to = at(dice);
            input.splice(to..to, chunk);
        }
        5 if len > 0 => {
            let start = at(dice);
            let end = (start + 1 + dice.below(64)).min(len);
            input.drain(start..end);
        }
        6 if !others.is_empty() => {
            // Splice: this input's head, another's tail.
            let other = dice.pick(others);
            let head = at(dice);
            let tail = dice.below(other.len().max(1));
            input.truncate(head);
            input.extend_from_slice(&other[tail.min(other.len())..]);
        }
        7 if len >= 8 => {
            // A little-endian integer written over the input (lengths, offsets, counts).
            let value = *dice.pick(&INTERESTING_INTS);
            let width = *dice.pick(&[1, 2, 4, 8]);
            let i = dice.below(len - width + 1);
            input[i..i + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        _ => {
            // A byte set to a random value.
            if len > 0 {
                let i = at(dice);
                input[i] = dice.below(256) as u8;
            }
        }
    }
    input
}

// ---- JSON ---------------------------------------------------------------------------------

/// Numbers that break what a reader assumes: negative, zero, fractional where an integer is
/// expected, beyond f32 (finite in JSON, infinite once narrowed), beyond u32, u64 and i64.
const INTERESTING_NUMBERS: [f64; 17] = [
    0.0, -0.0, 1.0, -1.0, 0.5, 1.5, -2.5, 1e-300, 1e-45, 3.4e38, 1e39, -1e39, 1e300, 4294967296.0, 9007199254740993.0,
    1.8446744073709552e19, -9.3e18,
];

/// Tokens a JSON writer would not produce; each makes the document invalid or out of range.
const RAW_TOKENS: [&str; 10] =
    ["1e999", "-1e999", "NaN", "Infinity", "-0", "18446744073709551616", "-9223372036854775809", "01", "1.", "\"\\ud800\""];

const INTERESTING_STRINGS: [&str; 12] =
    ["", "inf", "-inf", "nan", "NaN", "0", "-1", "4294967296", "SGD", "AdamW", "Muon", "wgpu-optim-checkpoint"];

/// A placeholder replaced by a raw token after serialization.
const RAW: &str = "\u{1}raw\u{1}";

fn json_document(input: &[u8], dice: &mut Dice) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(input).ok()?;
    let raw = json_value(&mut value, dice);
    Some(to_text(&value, raw, dice.chance(50)).into_bytes())
}

/// Serializes, putting `raw` where the placeholder is.
fn to_text(value: &Value, raw: Option<&str>, pretty: bool) -> String {
    let text = if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) }.unwrap();
    match raw {
        Some(token) => text.replacen(&serde_json::to_string(RAW).unwrap(), token, 1),
        None => text,
    }
}

/// JSON pointers of every node, the root first.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match value {
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| pointers(v, format!("{at}/{i}"), out)),
        Value::Object(map) => {
            map.iter().for_each(|(k, v)| pointers(v, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out))
        }
        _ => {}
    }
}

/// Mutates one node of `value`; returns the raw token to substitute for the placeholder, if
/// one was placed.
fn json_value(value: &mut Value, dice: &mut Dice) -> Option<&'static str> {
    let mut all = Vec::new();
    pointers(value, String::new(), &mut all);
    let node = value.pointer_mut(dice.pick::<String>(&all)).expect("a pointer just listed");
    let number = |x: f64| Number::from_f64(x).map_or(Value::Null, Value::Number);
    match dice.below(10) {
        // Numbers: an interesting one, an integer at a limit, or the node scaled.
        0 | 1 => {
            *node = match dice.below(4) {
                0 => Value::from(*dice.pick(&[0u64, 1, 2, 100, u32::MAX as u64, 1 << 32, i64::MAX as u64, u64::MAX])),
                1 => Value::from(*dice.pick(&[-1i64, i64::MIN, -(1 << 31)])),
                2 => match node.as_f64() {
                    Some(x) => number(x * *dice.pick(&[-1.0, 2.0, 0.5, 1e10, 1e-10, 1.0 + f64::EPSILON])),
                    None => number(*dice.pick(&INTERESTING_NUMBERS)),
                },
                _ => number(*dice.pick(&INTERESTING_NUMBERS)),
            }
        }
        2 => {
            *node = Value::String(RAW.into());
            return Some(*dice.pick(&RAW_TOKENS));
        }
        // Another type.
        3 => {
            *node = match dice.below(6) {
                0 => Value::Null,
                1 => Value::Bool(dice.chance(50)),
                2 => Value::String(dice.pick(&INTERESTING_STRINGS).to_string()),
                3 => Value::Array(vec![node.take()]),
                4 => Value::Object(Map::new()),
                _ => number(*dice.pick(&INTERESTING_NUMBERS)),
            }
        }
        // Objects: a key dropped, renamed or added.
        4 | 5 => match node {
            Value::Object(map) if !map.is_empty() => {
                let keys: Vec<String> = map.keys().cloned().collect();
                let key = dice.pick(&keys).clone();
                let taken = map.remove(&key).unwrap();
                match dice.below(3) {
                    0 => {}
                    1 => {
                        map.insert(format!("{key}_"), taken);
                    }
                    _ => {
                        // Moved under another existing key: the right name, the wrong value.
                        let other = dice.pick(&keys).clone();
                        map.insert(other, taken);
                    }
                }
            }
            Value::Object(map) => {
                map.insert("unknown".into(), Value::from(1));
            }
            _ => *node = Value::Null,
        },
        // Arrays: an element dropped, duplicated or added; the array emptied.
        6 | 7 => match node {
            Value::Array(items) if !items.is_empty() => match dice.below(4) {
                0 => {
                    items.remove(dice.below(items.len()));
                }
                1 => {
                    let copy = items[dice.below(items.len())].clone();
                    items.insert(dice.below(items.len() + 1), copy);
                }
                2 => items.push(number(*dice.pick(&INTERESTING_NUMBERS))),
                _ => items.clear(),
            },
            Value::Array(items) => items.push(Value::from(0)),
            _ => *node = Value::Array(Vec::new()),
        },
        // Strings.
        8 => {
            *node = Value::String(match dice.below(3) {
                0 => dice.pick(&INTERESTING_STRINGS).to_string(),
                1 => "x".repeat(1 + dice.below(2000)),
                _ => match node {
                    Value::String(s) => format!("{s}{s}"),
                    _ => "\u{0}\u{ffff}".into(),
                },
            })
        }
        // A node copied over another (shapes become names, groups become counters, ...).
        _ => {
            let copy = node.clone();
            let other = value.pointer_mut(dice.pick::<String>(&all)).expect("a pointer just listed");
            *other = copy;
        }
    }
    None
}

// ---- safetensors ----------------------------------------------------------------------------

/// Header-aware mutations: the length field, a tensor's dtype, shape or data_offsets, its
/// name, the metadata (as JSON when `metadata_json`), or the data section. `None` when the
/// input's header no longer parses (byte mutations take over).
fn safetensors(input: &[u8], metadata_json: bool, dice: &mut Dice) -> Option<Vec<u8>> {
    let declared = u64::from_le_bytes(input.get(..8)?.try_into().unwrap());
    let end = 8usize.checked_add(usize::try_from(declared).ok()?)?;
    let mut header: Map<String, Value> = serde_json::from_slice(input.get(8..end)?).ok()?;
    let mut data = input[end..].to_vec();
    let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let mut length_field = None;
    let mut raw = None;
    // Checkpoints: half the header mutations go to the metadata, which decides what a restore does.
    let choice = if metadata_json && dice.chance(50) { 7 } else { dice.below(10) };
    match choice {
        0 => {
            let actual = end as u64 - 8;
            length_field = Some(*dice.pick(&[
                0,
                actual.wrapping_sub(1),
                actual + 1,
                actual.wrapping_sub(8),
                actual + 8,
                input.len() as u64,
                1 << 32,
                100_000_001,
                u64::MAX,
            ]));
        }
        1 if !names.is_empty() => {
            let info = header.get_mut(dice.pick(&names))?.as_object_mut()?;
            let dtype = dice.pick(&["F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "F4", "XYZ", "f32"]);
            info.insert("dtype".into(), Value::from(*dtype));
        }
        2 | 3 if !names.is_empty() => {
            let info = header.get_mut(dice.pick(&names))?.as_object_mut()?;
            let shape = info.get_mut("shape")?.as_array_mut()?;
            let huge = [0u64, 1, 2, 1 << 31, 1 << 32, 1 << 40, 1 << 62, u64::MAX];
            match dice.below(5) {
                0 => shape.push(Value::from(*dice.pick(&huge))),
                1 => {
                    shape.pop();
                }
                2 if !shape.is_empty() => {
                    let i = dice.below(shape.len());
                    shape[i] = Value::from(*dice.pick(&huge));
                }
                3 => {
                    // A zero-element tensor whose other dimensions multiply past usize.
                    *shape = vec![Value::from(0), Value::from(1u64 << 40), Value::from(1u64 << 40)];
                    shape.rotate_left(dice.below(3));
                }
                _ => shape.reverse(),
            }
        }
        4 | 5 if !names.is_empty() => {
            let other = header.get(dice.pick(&names))?.get("data_offsets")?.clone();
            let info = header.get_mut(dice.pick(&names))?.as_object_mut()?;
            let offsets = info.get_mut("data_offsets")?.as_array_mut()?;
            let len = data.len() as u64;
            let values = [0, 4, len, len + 4, len.wrapping_sub(4), 1 << 32, u64::MAX];
            match dice.below(4) {
                0 if offsets.len() == 2 => offsets.swap(0, 1),
                1 => *offsets = other.as_array()?.clone(), // two tensors over the same bytes
                _ if !offsets.is_empty() => {
                    let i = dice.below(offsets.len());
                    offsets[i] = Value::from(*dice.pick(&values));
                }
                _ => offsets.push(Value::from(0)),
            }
        }
        6 if !names.is_empty() => {
            // A tensor renamed, dropped or duplicated.
            let name = dice.pick(&names).clone();
            let info = header.remove(&name)?;
            match dice.below(3) {
                0 => {
                    header.insert(format!("{name}.{}", dice.pick(&["step", "exp_avg", "rows", "x"])), info);
                }
                1 => {}
                _ => {
                    header.insert(name.clone(), info.clone());
                    header.insert(format!("{name}2"), info);
                }
            }
        }
        7 | 8 if metadata_json => {
            // A checkpoint's metadata: its JSON values mutated as JSON, the others replaced.
            let metadata = header.get_mut("__metadata__")?.as_object_mut()?;
            let keys: Vec<String> = metadata.keys().cloned().collect();
            let key = dice.pick(&keys).clone();
            let text = metadata.get(&key)?.as_str()?.to_string();
            let mutated = match serde_json::from_str::<Value>(&text) {
                Ok(mut value) if key != "version" => {
                    let token = json_value(&mut value, dice);
                    to_text(&value, token, false)
                }
                _ => dice.pick(&INTERESTING_STRINGS).to_string(),
            };
            match dice.below(8) {
                0 => {
                    metadata.remove(&key);
                }
                1 => {
                    metadata.insert(key, Value::from(3)); // not a string
                }
                _ => {
                    metadata.insert(key, Value::String(mutated));
                }
            }
        }
        9 => {
            // The data section shortened or lengthened, the header left as it is.
            if dice.chance(50) {
                data.truncate(dice.below(data.len().max(1)));
            } else {
                data.extend(std::iter::repeat_n(0, 1 + dice.below(16)));
            }
        }
        _ => {
            let mut value = Value::Object(header);
            raw = json_value(&mut value, dice);
            return Some(assemble(&to_text(&value, raw, false), None, &data));
        }
    }
    Some(assemble(&to_text(&Value::Object(header), raw, false), length_field, &data))
}

/// Length field (the header's own length unless given), header, data.
fn assemble(header: &str, length_field: Option<u64>, data: &[u8]) -> Vec<u8> {
    let mut out = length_field.unwrap_or(header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}
