//! The tensor layouts the benchmark steps, and deterministic data to fill them.

use wgpu_optim::{ParamGroup, Parameters, TensorId, UpdateRule};

/// Named tensors in registration order, each in parameter group 0 or 1.
#[derive(Clone, Debug)]
pub struct Layout {
    pub name: String,
    pub tensors: Vec<(String, Vec<usize>, usize)>,
}

impl Layout {
    /// One tensor of `elements` elements.
    pub fn single(elements: usize) -> Self {
        Self::split(elements, 1)
    }

    /// `elements` elements as `count` tensors of (almost) equal size.
    pub fn split(elements: usize, count: usize) -> Self {
        let tensors = (0..count)
            .map(|t| {
                let len = elements / count + usize::from(t < elements % count);
                (format!("t{t}"), vec![len], 0)
            })
            .collect();
        Layout {
            name: format!(
                "{} as {count} tensor{}",
                format_count(elements),
                if count == 1 { "" } else { "s" }
            ),
            tensors,
        }
    }

    /// An embedding table of `elements` elements (rounded down to whole rows) in rows of `row`.
    pub fn embedding(elements: usize, row: usize) -> Self {
        let rows = (elements / row).max(1);
        Layout {
            name: format!("{} as a {rows}×{row} embedding", format_count(rows * row)),
            tensors: vec![("embedding".into(), vec![rows, row], 0)],
        }
    }

    /// GPT-2 small (124 M parameters, 148 tensors; the LM head is tied to `wte`), with
    /// nanoGPT's groups: weight decay on the 2-D weights (group 0), none on biases and
    /// LayerNorm parameters (group 1). `benches/torch_adamw.py` builds the same layout.
    pub fn gpt2_small() -> Self {
        Self::gpt2("GPT-2 small", Gpt2Dims::SMALL)
    }

    /// A GPT-2-shaped model of the given dimensions, grouped as [`gpt2_small`](Self::gpt2_small).
    pub fn gpt2(name: &str, dims: Gpt2Dims) -> Self {
        let Gpt2Dims { width: d, vocab, context, layers } = dims;
        let mut tensors: Vec<(String, Vec<usize>)> =
            vec![("wte".into(), vec![vocab, d]), ("wpe".into(), vec![context, d])];
        for l in 0..layers {
            let p = format!("h.{l}");
            tensors.extend([
                (format!("{p}.ln_1.weight"), vec![d]),
                (format!("{p}.ln_1.bias"), vec![d]),
                (format!("{p}.attn.c_attn.weight"), vec![d, 3 * d]),
                (format!("{p}.attn.c_attn.bias"), vec![3 * d]),
                (format!("{p}.attn.c_proj.weight"), vec![d, d]),
                (format!("{p}.attn.c_proj.bias"), vec![d]),
                (format!("{p}.ln_2.weight"), vec![d]),
                (format!("{p}.ln_2.bias"), vec![d]),
                (format!("{p}.mlp.c_fc.weight"), vec![d, 4 * d]),
                (format!("{p}.mlp.c_fc.bias"), vec![4 * d]),
                (format!("{p}.mlp.c_proj.weight"), vec![4 * d, d]),
                (format!("{p}.mlp.c_proj.bias"), vec![d]),
            ]);
        }
        tensors.extend([("ln_f.weight".into(), vec![d]), ("ln_f.bias".into(), vec![d])]);
        let tensors: Vec<_> = tensors
            .into_iter()
            .map(|(name, shape)| {
                let group = if shape.len() >= 2 { 0 } else { 1 };
                (name, shape, group)
            })
            .collect();
        Layout {
            name: name.into(),
            tensors,
        }
    }

    /// The same tensors regrouped for Muon: the hidden matrices of the transformer blocks
    /// (attention and MLP weights, 4 per block) in group 0, everything else (embeddings,
    /// biases, LayerNorm parameters) in group 1.
    pub fn hidden_matrices_apart(&self) -> Self {
        let tensors = self
            .tensors
            .iter()
            .map(|(name, shape, _)| {
                let hidden = name.starts_with("h.") && shape.len() == 2;
                (name.clone(), shape.clone(), if hidden { 0 } else { 1 })
            })
            .collect();
        Layout {
            name: self.name.clone(),
            tensors,
        }
    }

    /// Every tensor in group 0 (one rule for the whole layout).
    pub fn one_group(&self) -> Self {
        Layout {
            name: self.name.clone(),
            tensors: self.tensors.iter().map(|(n, s, _)| (n.clone(), s.clone(), 0)).collect(),
        }
    }

    /// The layout without one tensor.
    pub fn without(&self, tensor: &str) -> Self {
        Layout {
            name: format!("{} without {tensor}", self.name),
            tensors: self.tensors.iter().filter(|(n, _, _)| n != tensor).cloned().collect(),
        }
    }

    pub fn elements(&self) -> usize {
        self.tensors
            .iter()
            .map(|(_, shape, _)| shape.iter().product::<usize>())
            .sum()
    }

    pub fn groups(&self) -> usize {
        self.tensors.iter().map(|&(_, _, g)| g + 1).max().unwrap_or(0)
    }

    /// The parameters (deterministic values) and one group per rule given.
    pub fn build(&self, rules: &[Box<dyn UpdateRule>]) -> (Parameters, Vec<ParamGroup>) {
        assert_eq!(
            rules.len(),
            self.groups(),
            "one rule per parameter group of {}",
            self.name
        );
        let mut params = Parameters::new();
        let mut members: Vec<Vec<TensorId>> = vec![Vec::new(); rules.len()];
        for (t, (name, shape, group)) in self.tensors.iter().enumerate() {
            let data = values(shape.iter().product(), 2 * t as u64, 0.05);
            members[*group].push(params.add(name, shape, data).expect("layout tensors are valid"));
        }
        let groups = rules
            .iter()
            .cloned()
            .zip(members)
            .map(|(rule, ids)| ParamGroup::from_boxed(rule, ids))
            .collect();
        (params, groups)
    }

    /// The gradient of tensor `t` (deterministic, the same on every backend).
    pub fn grad(&self, t: usize) -> Vec<f32> {
        values(self.tensors[t].1.iter().product(), 2 * t as u64 + 1, 0.01)
    }
}

/// Dimensions of a GPT-2-shaped model.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Gpt2Dims {
    pub width: usize,
    pub vocab: usize,
    pub context: usize,
    pub layers: usize,
}

impl Gpt2Dims {
    /// GPT-2 small: 124,439,808 parameters.
    pub const SMALL: Gpt2Dims = Gpt2Dims { width: 768, vocab: 50257, context: 1024, layers: 12 };
}

/// `len` values uniform in `[-scale, scale)` from a 64-bit LCG seeded by `seed`.
pub fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// `1M`, `16M`, `256K`, `1000`: element counts, binary suffixes (1M = 2^20).
pub fn parse_count(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 1 << 10),
        Some('M' | 'm') => (&text[..text.len() - 1], 1 << 20),
        Some('G' | 'g') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    match digits.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n * unit),
        _ => Err(format!("{text:?} is not a positive count (examples: 1000, 256K, 16M)")),
    }
}

/// The inverse of [`parse_count`] where exact, else the plain number.
pub fn format_count(n: usize) -> String {
    for (unit, suffix) in [(1usize << 30, "G"), (1 << 20, "M"), (1 << 10, "K")] {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{}{suffix}", n / unit);
        }
    }
    n.to_string()
}
