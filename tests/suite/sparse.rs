//! SparseAdam's row-sparse gradients: GPU against the CPU reference, rows never touched left
//! bit for bit, the row mask written by a user's kernel and consumed by the step, and the
//! errors torch raises (a dense gradient) or that the form needs (rows out of range, sizes).

use wgpu_optim::rules::{sparse_rows, AdamW, SparseAdam};
use wgpu_optim::{ClipGradNorm, CpuOptimizer, GradientOptions, Optimizer, OptimizerOptions, ParamGroup, Parameters, TensorId};

use crate::common::{gpus, max_normwise_difference, snapshot_cpu, snapshot_gpu, Rng, Snapshot};
use crate::rules::GPU_VS_CPU_TOLERANCE;

const STEPS: usize = 30;
/// An embedding whose rows are not a multiple of 4 elements, a 3-D tensor, and vectors.
const SHAPES: &[&[usize]] = &[&[50, 7], &[4, 5, 6], &[37], &[3]];

fn model() -> (Parameters, Vec<TensorId>) {
    let mut rng = Rng::new(11);
    let mut params = Parameters::new();
    let ids = SHAPES
        .iter()
        .enumerate()
        .map(|(k, shape)| params.add(&format!("t{k}"), shape, rng.vec(shape.iter().product(), 1.0)).unwrap())
        .collect();
    (params, ids)
}

fn groups(ids: &[TensorId]) -> Vec<ParamGroup> {
    vec![
        ParamGroup::new(SparseAdam { lr: 0.01, ..SparseAdam::default() }, ids[..2].to_vec()),
        ParamGroup::new(SparseAdam { lr: 0.02, betas: (0.8, 0.99), maximize: true, ..SparseAdam::default() }, ids[2..].to_vec()),
    ]
}

/// Step `step`'s sparse gradient of a tensor: about a third of its rows (none at step 4, never
/// a row `r % 3 == 2`, the first listed with zero values), as (rows, values).
fn sparse_gradient(step: usize, tensor: usize, shape: &[usize]) -> (Vec<u32>, Vec<f32>) {
    let (row_count, row_length) = sparse_rows(shape);
    let mut rng = Rng::new(100 * step as u64 + tensor as u64);
    let rows: Vec<u32> = (0..row_count as u32).filter(|r| rng.uniform() < -0.33 && step != 4 && r % 3 != 2).collect();
    let mut values = rng.vec(rows.len() * row_length, 1.0);
    if let Some(first) = values.get_mut(..row_length) {
        first.fill(0.0); // touched with zero values: the moments still decay
    }
    (rows, values)
}

fn touched_rows(shape: &[usize], tensor: usize) -> Vec<bool> {
    let mut touched = vec![false; sparse_rows(shape).0];
    for step in 0..STEPS {
        for row in sparse_gradient(step, tensor, shape).0 {
            touched[row as usize] = true;
        }
    }
    touched
}

fn cpu_run() -> Snapshot {
    let (params, ids) = model();
    let mut opt = CpuOptimizer::new(params, groups(&ids)).unwrap();
    for step in 0..STEPS {
        for (k, &id) in ids.iter().enumerate() {
            let (rows, values) = sparse_gradient(step, k, SHAPES[k]);
            opt.write_sparse_grad(id, &rows, &values).unwrap();
        }
        opt.step();
    }
    snapshot_cpu(&opt, &ids)
}

#[test]
fn sparse_adam_matches_the_cpu_reference_and_leaves_untouched_rows_alone() {
    let expected = cpu_run();
    let (initial, ids) = model();
    for gpu in gpus() {
        let params = initial.clone();
        let mut opt = Optimizer::new(gpu, params, groups(&ids)).unwrap();
        for step in 0..STEPS {
            for (k, &id) in ids.iter().enumerate() {
                let (rows, values) = sparse_gradient(step, k, SHAPES[k]);
                opt.write_sparse_grad(id, &rows, &values).unwrap();
            }
            opt.step_and_submit().unwrap();
        }
        let actual = snapshot_gpu(&opt, &ids);
        let (difference, tensor) = max_normwise_difference(&actual, &expected);
        assert!(difference <= GPU_VS_CPU_TOLERANCE, "{tensor} differs from the CPU reference by {difference:.3e} on {}", gpu.adapter());
        for (k, &id) in ids.iter().enumerate() {
            let (_, row_length) = sparse_rows(SHAPES[k]);
            let touched = touched_rows(SHAPES[k], k);
            assert!(touched.iter().any(|&t| t) && touched.iter().any(|&t| !t), "the test touches some rows of t{k}, not all");
            let param = opt.read_param(id).unwrap();
            let exp_avg = opt.read_state(id, "exp_avg").unwrap();
            for (row, _) in touched.iter().enumerate().filter(|(_, &t)| !t) {
                let range = row * row_length..(row + 1) * row_length;
                let before: Vec<u32> = initial.spec(id).unwrap().data[range.clone()].iter().map(|x| x.to_bits()).collect();
                let after: Vec<u32> = param[range.clone()].iter().map(|x| x.to_bits()).collect();
                assert_eq!(after, before, "row {row} of t{k} was never touched but changed on {}", gpu.adapter());
                assert!(exp_avg[range].iter().all(|&m| m.to_bits() == 0), "row {row} of t{k} got a moment");
            }
            assert!(opt.read(&opt.grad_rows(id).unwrap()).unwrap().iter().all(|&m| m == 0.0), "the step consumes the mask");
        }
    }
}

/// A user's backward kernel marks the rows it wrote: here, a kernel that sets the mask of
/// listed rows, bound to `grad_rows` like a real embedding backward would be.
#[test]
fn a_user_kernel_writes_the_row_mask() {
    const MARK_ROWS: &str = "
        @group(0) @binding(0) var<storage, read_write> mask: array<u32>;
        @group(0) @binding(1) var<storage, read> rows: array<u32>;
        @compute @workgroup_size(64)
        fn main(@builtin(global_invocation_id) id: vec3<u32>) {
            if (id.x < arrayLength(&rows)) {
                mask[rows[id.x]] = 1u;
            }
        }";
    let (initial, ids) = model();
    let expected = {
        let params = initial.clone();
        let mut opt = CpuOptimizer::new(params, groups(&ids)).unwrap();
        let (rows, values) = sparse_gradient(1, 0, SHAPES[0]);
        opt.write_sparse_grad(ids[0], &rows, &values).unwrap();
        opt.step();
        opt.param(ids[0]).unwrap().to_vec()
    };
    for gpu in gpus() {
        use wgpu::util::DeviceExt;
        let device = gpu.device();
        let params = initial.clone();
        let mut opt = Optimizer::new(gpu, params, groups(&ids)).unwrap();
        let (rows, values) = sparse_gradient(1, 0, SHAPES[0]);
        let (_, row_length) = sparse_rows(SHAPES[0]);
        let mut dense = vec![0.0f32; opt.grad(ids[0]).unwrap().len];
        for (k, &row) in rows.iter().enumerate() {
            let at = row as usize * row_length;
            dense[at..at + row_length].copy_from_slice(&values[k * row_length..(k + 1) * row_length]);
        }
        let grad = opt.grad(ids[0]).unwrap();
        gpu.queue().write_buffer(&grad.buffer, grad.offset, bytemuck::cast_slice(&dense));
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: None, source: wgpu::ShaderSource::Wgsl(MARK_ROWS.into()) });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let list = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&rows),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let mask = opt.grad_rows(ids[0]).unwrap();
        assert_eq!(mask.offset % u64::from(device.limits().min_storage_buffer_offset_alignment), 0, "the mask can be bound");
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: mask.binding() },
                wgpu::BindGroupEntry { binding: 1, resource: list.as_entire_binding() },
            ],
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups((rows.len() as u32).div_ceil(64).max(1), 1, 1);
            opt.step_in_pass(&mut pass).unwrap();
        }
        gpu.queue().submit([encoder.finish()]);
        let actual = opt.read_param(ids[0]).unwrap();
        let worst = actual.iter().zip(&expected).map(|(a, e)| (a - e).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "the kernel-written sparse gradient steps as write_sparse_grad does (off by {worst}) on {}", gpu.adapter());
    }
}

#[test]
fn sparse_gradients_are_checked() {
    let mut params = Parameters::new();
    let emb = params.add("emb", &[6, 3], vec![0.5; 18]).unwrap();
    let dense = params.add("dense", &[4], vec![0.5; 4]).unwrap();
    let groups = vec![
        ParamGroup::new(SparseAdam::default(), [emb]),
        ParamGroup::new(AdamW::default(), [dense]),
    ];
    let mut cpu = CpuOptimizer::new(params.clone(), groups.clone()).unwrap();
    let refused = cpu.write_grad(emb, &[0.1; 18]).unwrap_err().to_string();
    assert!(refused.contains("SparseAdam does not support dense gradients, please consider Adam instead"), "{refused}");
    assert!(cpu.write_sparse_grad(emb, &[6], &[0.1; 3]).unwrap_err().to_string().contains("row 6"));
    assert!(cpu.write_sparse_grad(emb, &[1, 2], &[0.1; 3]).unwrap_err().to_string().contains("6"));
    assert!(cpu.write_sparse_grad(dense, &[0], &[0.1]).unwrap_err().to_string().contains("dense gradients"));
    cpu.step();
    assert_eq!(cpu.param(emb).unwrap(), [0.5; 18], "nothing was touched: rejected writes changed nothing");
    // A row listed twice gets the sum of its values, as torch's coalesce() gives it.
    let mut twice = CpuOptimizer::new(params.clone(), groups.clone()).unwrap();
    twice.write_sparse_grad(emb, &[2, 2], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).unwrap();
    let mut once = CpuOptimizer::new(params.clone(), groups.clone()).unwrap();
    once.write_sparse_grad(emb, &[2], &[0.1 + 0.4, 0.2 + 0.5, 0.3 + 0.6]).unwrap();
    twice.step();
    once.step();
    assert_eq!(twice.param(emb).unwrap(), once.param(emb).unwrap());

    for gpu in gpus() {
        let opt = Optimizer::new(gpu, params.clone(), groups.clone()).unwrap();
        assert!(opt.write_grad(emb, &[0.1; 18]).unwrap_err().to_string().contains("does not support dense gradients"));
        assert!(opt.grad_rows(dense).unwrap_err().to_string().contains("dense gradients"));
        assert!(opt.write_sparse_grad(emb, &[9], &[0.1; 3]).is_err());
        let clipped = OptimizerOptions {
            gradients: GradientOptions { clip_grad_norm: Some(ClipGradNorm { max_norm: 1.0, norm_type: 2.0, error_if_nonfinite: false }), ..Default::default() },
            ..Default::default()
        };
        let error = Optimizer::with_options(gpu, params.clone(), groups.clone(), clipped).unwrap_err().to_string();
        assert!(error.contains("sparse gradients"), "{error}");
    }
}
