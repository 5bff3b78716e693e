//! The layout plan: where every tensor, chunk, aux region and scratch batch goes, computed
//! on the CPU from the tensors, the groups' kernels and the device's limits before anything
//! is allocated. [`Optimizer::new_async`](crate::Optimizer::new_async) allocates what it says.

use crate::error::{Error, Result};
use crate::params::{ParamGroup, TensorId, TensorSpec};
use crate::rules::{self, Kernel, TensorSlot, CHUNK_ELEMENTS};

/// Every tensor starts at a multiple of this many bytes (WebGPU's storage offset alignment).
const TENSOR_ALIGN_BYTES: u64 = 256;

/// Where everything goes: computed on the CPU before anything is allocated.
pub(crate) struct Plan {
    /// Per arena: group, tensors, length, first chunk.
    pub arenas: Vec<(usize, Vec<TensorId>, usize, usize)>,
    /// Per tensor: arena and element offset in it.
    pub placement: Vec<(usize, usize)>,
    /// Per group: the window capacity of its arenas.
    pub capacity: Vec<usize>,
    /// Per tensor: its aux region.
    pub aux_region: Vec<Option<usize>>,
    /// Per tensor: its scratch offset.
    pub scratch: Vec<usize>,
    /// Per tensor: its sparse gradient's row mask (256-byte aligned, so user kernels can bind it).
    pub row_mask: Vec<Option<usize>>,
    /// Per group with matrix passes: batches of (arena, tensors).
    pub batches: Vec<Vec<(usize, Vec<TensorId>)>>,
    /// Elements of the aux buffer: partials, per-tensor regions and row masks.
    pub aux_len: usize,
    /// Chunks of all per-tensor rules' arenas (the chunk map's length).
    pub total_chunks: usize,
}

/// Where every tensor, chunk, aux region and scratch batch goes.
pub(crate) fn plan_layout(
    specs: &[TensorSpec],
    groups: &[ParamGroup],
    kernels: &[Kernel],
    limits: &wgpu::Limits,
    max_arena_elements: Option<usize>,
    smallest_element_bytes: usize,
) -> Result<Plan> {
    let binding_elements = (limits.max_storage_buffer_binding_size.min(limits.max_buffer_size) / 4) as usize;
    // Every buffer's tensors start at an aligned byte offset: the smallest element type
    // decides how many elements that is.
    let base_align = (TENSOR_ALIGN_BYTES.max(u64::from(limits.min_storage_buffer_offset_alignment)) / smallest_element_bytes as u64) as usize;
    let chunk = CHUNK_ELEMENTS as usize;
    let mut arenas: Vec<(usize, Vec<TensorId>, usize, usize)> = Vec::new();
    let mut placement = vec![(0, 0); specs.len()];
    let mut capacity = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let kernel = &kernels[g];
        let align = if kernel.per_tensor { base_align.next_multiple_of(chunk) } else { base_align };
        let device_capacity = binding_elements / align * align;
        let group_capacity = match max_arena_elements {
            Some(requested) => (requested / align * align).clamp(align, device_capacity),
            None => device_capacity,
        };
        capacity.push(group_capacity);
        let whole_tensors = kernel.whole_tensors;
        let mut open: Option<usize> = None;
        for &id in &group.tensors {
            let spec = &specs[id.0];
            let padded = spec.data.len().div_ceil(align) * align;
            if whole_tensors && padded > group_capacity {
                return Err(Error::Tensor(format!(
                    "{} works on whole tensors, each within one storage binding ({group_capacity} elements here); \
                     tensor {:?} of shape {:?} has {} elements",
                    group.rule.name(),
                    spec.name,
                    spec.shape,
                    spec.data.len()
                )));
            }
            let fits = open.is_some_and(|a| arenas[a].2 + padded <= group_capacity);
            let arena = if fits {
                open.expect("checked above")
            } else {
                arenas.push((g, Vec::new(), 0, 0));
                arenas.len() - 1
            };
            // A tensor larger than one binding gets an arena of its own.
            open = if padded > group_capacity { None } else { Some(arena) };
            placement[id.0] = (arena, arenas[arena].2);
            arenas[arena].1.push(id);
            arenas[arena].2 += padded;
        }
    }
    for (_, ids, len, _) in &arenas {
        let bytes = *len as u64 * 4;
        if bytes > limits.max_buffer_size {
            return Err(Error::Tensor(format!(
                "tensor {:?} needs {bytes} bytes but the device's max_buffer_size is {}",
                specs[ids[0].0].name, limits.max_buffer_size
            )));
        }
    }
    let mut total_chunks = 0;
    for arena in &mut arenas {
        if kernels[arena.0].per_tensor {
            arena.3 = total_chunks;
            total_chunks += arena.2 / chunk;
        }
    }

    // Aux: partials, then each tensor's four scalars and state (16-byte aligned), then scratch.
    let mut aux_len = 4 * total_chunks;
    let mut aux_region = vec![None; specs.len()];
    let mut scratch = vec![0; specs.len()];
    for (g, group) in groups.iter().enumerate() {
        // Without matrix batches, a tensor's scratch is its own, after its state.
        let shared_scratch = kernels[g].has_matrix_passes();
        for &id in &group.tensors {
            let shape = &specs[id.0].shape;
            let state: usize = group.rule.tensor_state(shape).iter().map(TensorSlot::len).sum();
            let own_scratch = if shared_scratch { 0 } else { group.rule.tensor_scratch(shape) };
            if kernels[g].per_tensor || state + own_scratch > 0 {
                aux_region[id.0] = Some(aux_len);
                scratch[id.0] = aux_len + 4 + state;
                aux_len += (4 + state + own_scratch).next_multiple_of(4);
            }
        }
    }
    let mut row_mask = vec![None; specs.len()];
    for group in groups.iter().zip(kernels).filter(|(_, k)| k.sparse_rows).map(|(g, _)| g) {
        for &id in &group.tensors {
            aux_len = aux_len.next_multiple_of(base_align);
            row_mask[id.0] = Some(aux_len);
            aux_len += rules::sparse_rows(&specs[id.0].shape).0.next_multiple_of(4);
        }
    }
    if aux_len > binding_elements {
        return Err(Error::Tensor(format!(
            "per-tensor state and reduction partials need {} bytes, more than one storage binding ({} bytes)",
            aux_len * 4,
            binding_elements * 4
        )));
    }
    let budget = (binding_elements - aux_len) / 4 * 4;
    let mut batches = vec![Vec::new(); groups.len()];
    let mut scratch_len = 0;
    for (g, group) in groups.iter().enumerate() {
        if !kernels[g].has_matrix_passes() {
            continue;
        }
        for (a, (_, ids, _, _)) in arenas.iter().enumerate().filter(|(_, arena)| arena.0 == g) {
            let mut shapes: Vec<&Vec<usize>> = Vec::new();
            for id in ids {
                if !shapes.contains(&&specs[id.0].shape) {
                    shapes.push(&specs[id.0].shape);
                }
            }
            for shape in shapes {
                let need = group.rule.tensor_scratch(shape).next_multiple_of(4);
                if need > budget {
                    let name = &specs[ids.iter().find(|id| &specs[id.0].shape == shape).expect("a tensor of this shape").0].name;
                    return Err(Error::Tensor(format!(
                        "{} needs {} bytes of scratch for tensor {name:?} of shape {shape:?}; one storage binding leaves {} \
                         bytes for scratch on this device",
                        group.rule.name(),
                        need * 4,
                        budget * 4
                    )));
                }
                let mut batch = Vec::new();
                let mut used = 0;
                for &id in ids.iter().filter(|id| &specs[id.0].shape == shape) {
                    if used + need > budget {
                        batches[g].push((a, std::mem::take(&mut batch)));
                        used = 0;
                    }
                    scratch[id.0] = aux_len + used;
                    used += need;
                    scratch_len = scratch_len.max(used);
                    batch.push(id);
                }
                batches[g].push((a, batch));
            }
        }
    }
    aux_len += scratch_len;
    Ok(Plan { arenas, placement, capacity, aux_region, scratch, row_mask, batches, aux_len, total_chunks })
}

/// The layout plan is pure: these tests run it on the CPU against a device's limits.
#[cfg(test)]
mod layout_plan {
    use super::*;
    use crate::params::{ParamGroup, Parameters};
    use crate::rules::UpdateRule;
    use crate::rules::{Adafactor, Adam, Muon, SparseAdam};

    fn plan(params: &Parameters, groups: &[ParamGroup], limits: &wgpu::Limits, max_arena: Option<usize>) -> Result<Plan> {
        let kernels: Vec<Kernel> = groups.iter().map(|g| g.rule.kernel()).collect();
        plan_layout(&params.clone().into_specs(), groups, &kernels, limits, max_arena, 4)
    }

    fn tensors(shapes: &[&[usize]]) -> (Parameters, Vec<TensorId>) {
        let mut params = Parameters::new();
        let ids = shapes
            .iter()
            .enumerate()
            .map(|(t, shape)| params.zeros(&format!("t{t}"), shape).expect("a valid tensor"))
            .collect();
        (params, ids)
    }

    #[test]
    fn element_wise_tensors_pack_at_256_bytes() {
        let (params, ids) = tensors(&[&[5], &[64], &[65], &[3, 7]]);
        let plan = plan(&params, &[ParamGroup::new(Adam::default(), ids.clone())], &wgpu::Limits::default(), None).unwrap();
        assert_eq!(plan.arenas.len(), 1);
        let offsets: Vec<usize> = ids.iter().map(|id| plan.placement[id.0].1).collect();
        assert_eq!(offsets, [0, 64, 128, 256], "each tensor starts at the next 64-element (256-byte) boundary");
        assert_eq!(plan.arenas[0].2, 320);
        assert_eq!(plan.total_chunks, 0, "an element-wise rule needs no chunk map");
        assert!(plan.aux_region.iter().all(Option::is_none));
    }

    #[test]
    fn per_tensor_rules_start_tensors_at_chunks_and_get_aux_regions() {
        let (params, ids) = tensors(&[&[5, 3], &[1500], &[40, 30]]);
        let plan = plan(&params, &[ParamGroup::new(Adafactor::default(), ids.clone())], &wgpu::Limits::default(), None).unwrap();
        let offsets: Vec<usize> = ids.iter().map(|id| plan.placement[id.0].1).collect();
        assert_eq!(offsets, [0, 1024, 3072], "whole 1,024-element chunks per tensor");
        assert_eq!(plan.total_chunks, 1 + 2 + 2);
        let regions: Vec<usize> = plan.aux_region.iter().map(|r| r.expect("every tensor has an aux region")).collect();
        assert_eq!(regions[0], 4 * plan.total_chunks, "after one vec4 of partials per chunk");
        assert!(regions.windows(2).all(|r| r[0] < r[1] && r[1] % 4 == 0), "increasing, 16-byte aligned: {regions:?}");
        assert!(plan.aux_len > regions[2]);
    }

    #[test]
    fn arenas_split_at_the_binding_limit_and_a_larger_tensor_gets_its_own() {
        let limits = wgpu::Limits { max_storage_buffer_binding_size: 4096, ..wgpu::Limits::default() };
        // 1,024 elements per binding: 600 + 300 share one, 2,000 gets its own (two windows), 100 opens a new one.
        let (params, ids) = tensors(&[&[600], &[300], &[2000], &[100]]);
        let plan = plan(&params, &[ParamGroup::new(Adam::default(), ids.clone())], &limits, None).unwrap();
        let arenas: Vec<(Vec<usize>, usize)> = plan.arenas.iter().map(|a| (a.1.iter().map(|id| id.0).collect(), a.2)).collect();
        assert_eq!(arenas, [(vec![0, 1], 960), (vec![2], 2048), (vec![3], 128)]);
        assert_eq!(plan.capacity, [1024]);
        // A smaller requested arena is honoured; a tensor beyond max_buffer_size is refused.
        let smaller = plan_with_max(&params, &ids, 256);
        assert_eq!(smaller.arenas.len(), 4, "every tensor but the last exceeds 256 elements: an arena each");
        let tiny = wgpu::Limits { max_buffer_size: 4000, ..limits };
        let error = plan_layout(&params.clone().into_specs(), &[ParamGroup::new(Adam::default(), ids.clone())], &[Adam::default().kernel()], &tiny, None, 4)
            .err()
            .expect("a tensor larger than max_buffer_size is refused");
        assert!(error.to_string().contains("max_buffer_size"), "{error}");
    }

    fn plan_with_max(params: &Parameters, ids: &[TensorId], max: usize) -> Plan {
        plan(params, &[ParamGroup::new(Adam::default(), ids.to_vec())], &wgpu::Limits::default(), Some(max)).unwrap()
    }

    #[test]
    fn same_shape_matrices_share_scratch_batches_and_sparse_masks_are_bindable() {
        let (params, ids) = tensors(&[&[8, 4], &[8, 4], &[4, 8], &[8, 4], &[6, 5]]);
        let groups = [ParamGroup::new(Muon::default(), ids[..4].to_vec()), ParamGroup::new(SparseAdam::default(), [ids[4]])];
        let plan = plan(&params, &groups, &wgpu::Limits::default(), None).unwrap();
        let batches: Vec<Vec<usize>> = plan.batches[0].iter().map(|(_, b)| b.iter().map(|id| id.0).collect()).collect();
        assert_eq!(batches, [vec![0, 1, 3], vec![2]], "one batch per shape, in first-seen order");
        assert!(plan.batches[1].is_empty());
        let mask = plan.row_mask[4].expect("a sparse rule's tensor has a row mask");
        assert_eq!(mask % 64, 0, "256-byte aligned, so a user's kernel can bind it");
        assert!(plan.row_mask[..4].iter().all(Option::is_none));
    }
}
