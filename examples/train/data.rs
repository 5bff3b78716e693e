//! Data: the UCI handwritten digits (8×8, committed under examples/data/) or MNIST's idx files,
//! the fixed train/test split, and the seeded minibatch order that examples/train_torch.py
//! reproduces bit for bit.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The digits data set: scikit-learn's copy of the UCI test set, one CSV row per image (64 pixel
/// counts 0..16, then the label), gzipped.
pub const DIGITS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/digits.csv.gz");

/// Seed of the digits split: part of the data set's definition, the same for every run.
pub const SPLIT_SEED: u64 = 42;

pub const CLASSES: usize = 10;

#[derive(Debug)]
pub struct DataError(pub String);

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DataError {}

fn fail<T>(message: impl Into<String>) -> Result<T, DataError> {
    Err(DataError(message.into()))
}

/// Samples as rows of `features` inputs and a label.
#[derive(Clone, Debug)]
pub struct Split {
    pub features: usize,
    pub x: Vec<f32>,
    pub y: Vec<u32>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Rows of `features + 1` floats, the label last (exact in f32): what the gather kernel reads.
    pub fn packed_rows(&self) -> Vec<f32> {
        let mut rows = Vec::with_capacity(self.len() * (self.features + 1));
        for (x, &y) in self.x.chunks(self.features).zip(&self.y) {
            rows.extend_from_slice(x);
            rows.push(y as f32);
        }
        rows
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    pub train: Split,
    pub test: Split,
}

/// The digits with the fixed split: a SplitMix64(`SPLIT_SEED`) Fisher–Yates shuffle of the
/// 1,797 rows, the last fifth (359) for testing. Inputs are pixel counts / 16, in [0, 1].
pub fn digits(path: &Path) -> Result<Dataset, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError(format!("{}: {e}", path.display())))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| DataError(format!("{}: not a gzipped text file: {e}", path.display())))?;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (line_number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let values: Vec<&str> = line.split(',').collect();
        if values.len() != 65 {
            return fail(format!("{}:{}: expected 65 values, found {}", path.display(), line_number + 1, values.len()));
        }
        for (column, value) in values.iter().enumerate() {
            let v: u32 = value.trim().parse().map_err(|_| {
                DataError(format!("{}:{}: column {}: {value:?} is not an integer", path.display(), line_number + 1, column + 1))
            })?;
            let limit = if column < 64 { 16 } else { 9 };
            if v > limit {
                return fail(format!("{}:{}: column {}: {v} is above {limit}", path.display(), line_number + 1, column + 1));
            }
            if column < 64 {
                x.push(v as f32 / 16.0);
            } else {
                y.push(v);
            }
        }
    }
    if y.len() < 10 {
        return fail(format!("{}: only {} samples", path.display(), y.len()));
    }
    let mut order: Vec<usize> = (0..y.len()).collect();
    SplitMix64::new(SPLIT_SEED).shuffle(&mut order);
    let test_len = y.len() / 5;
    let (train, test) = order.split_at(y.len() - test_len);
    let take = |rows: &[usize]| Split {
        features: 64,
        x: rows.iter().flat_map(|&r| x[r * 64..(r + 1) * 64].iter().copied()).collect(),
        y: rows.iter().map(|&r| y[r]).collect(),
    };
    Ok(Dataset { name: "UCI digits 8×8".into(), train: take(train), test: take(test) })
}

/// MNIST from its four idx files in `dir` (optionally gzipped): the standard 60,000/10,000
/// split, inputs = pixel / 255.
pub fn mnist(dir: &Path) -> Result<Dataset, DataError> {
    let split = |images_file: &str, labels_file: &str| -> Result<Split, DataError> {
        let (image_dims, pixels) = read_idx(&find_idx(dir, images_file)?, 3)?;
        let (label_dims, labels) = read_idx(&find_idx(dir, labels_file)?, 1)?;
        if image_dims[0] != label_dims[0] {
            return fail(format!("{images_file} holds {} images but {labels_file} {} labels", image_dims[0], label_dims[0]));
        }
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= CLASSES) {
            return fail(format!("{labels_file}: label {bad} is not a digit"));
        }
        Ok(Split {
            features: image_dims[1] * image_dims[2],
            x: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
            y: labels.iter().map(|&l| u32::from(l)).collect(),
        })
    };
    let train = split("train-images-idx3-ubyte", "train-labels-idx1-ubyte")?;
    let test = split("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?;
    if train.features != test.features {
        return fail("MNIST train and test images differ in size");
    }
    Ok(Dataset { name: format!("MNIST ({})", dir.display()), train, test })
}

/// `name`, `name.gz`, or the `name` with its usual `.`-for-`-` spelling (`train-images.idx3-ubyte`).
fn find_idx(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let dotted = name.replacen("-idx", ".idx", 1);
    for candidate in [name.to_string(), format!("{name}.gz"), dotted.clone(), format!("{dotted}.gz")] {
        let path = dir.join(&candidate);
        if path.is_file() {
            return Ok(path);
        }
    }
    fail(format!("{}: no {name} (or {name}.gz) there", dir.display()))
}

/// An idx file of unsigned bytes with `rank` dimensions: (dimensions, data).
fn read_idx(path: &Path, rank: usize) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError(format!("{}: {e}", path.display())))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError(format!("{}: bad gzip data: {e}", path.display())))?;
        out
    } else {
        raw
    };
    let header = 4 + 4 * rank;
    if bytes.len() < header || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] as usize != rank {
        return fail(format!("{}: not an idx file of unsigned bytes with {rank} dimension(s)", path.display()));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4 bytes")) as usize)
        .collect();
    let len: usize = dims.iter().product();
    if bytes.len() != header + len {
        return fail(format!("{}: header says {len} values, file holds {}", path.display(), bytes.len() - header));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, and easy to reproduce exactly in Python.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1): 24 random bits, so exact in f32 on both sides.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Fisher–Yates, from the last element down.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// The training order of a run: each epoch a fresh SplitMix64(`seed`) shuffle of 0..n cut into
/// batches of `batch`, the last partial batch dropped. Returns the indices of every step, in order.
pub fn batch_order(train_len: usize, batch: usize, epochs: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    let steps_per_epoch = train_len / batch;
    let mut order = Vec::with_capacity(epochs * steps_per_epoch * batch);
    for _ in 0..epochs {
        let mut epoch: Vec<u32> = (0..train_len as u32).collect();
        rng.shuffle(&mut epoch);
        order.extend_from_slice(&epoch[..steps_per_epoch * batch]);
    }
    order
}
