//! One tensor larger than a single storage binding (40 M elements, 160 MB, above the
//! 128 MiB `max_storage_buffer_binding_size` of the software adapters) and with more elements
//! than 65,535 workgroups × 256 invocations reach in one dimension.

use wgpu_optim::rules::Sgd;
use wgpu_optim::{CpuOptimizer, Optimizer, ParamGroup, Parameters};

use crate::common::{gpus, max_normwise_difference};
use crate::rules::GPU_VS_CPU_TOLERANCE;

const LEN: usize = 40_000_000;

#[test]
fn a_tensor_larger_than_one_binding_is_updated_correctly() {
    assert!(LEN > 65_535 * 256, "beyond one dimension of a scalar kernel's grid");
    let init: Vec<f32> = (0..LEN).map(|i| (i % 1000) as f32 * 1e-3 - 0.5).collect();
    let grads: [Vec<f32>; 2] = [
        (0..LEN).map(|i| ((i * 7) % 101) as f32 * 1e-2 - 0.5).collect(),
        (0..LEN).map(|i| ((i * 13) % 89) as f32 * 1e-2 - 0.4).collect(),
    ];
    let rule = Sgd { lr: 0.1, momentum: 0.9, weight_decay: 1e-2, ..Sgd::default() };
    let mut params = Parameters::new();
    let id = params.add("huge", &[LEN], init).unwrap();

    let mut cpu = CpuOptimizer::new(params.clone(), vec![ParamGroup::new(rule.clone(), [id])]).unwrap();
    for g in &grads {
        cpu.write_grad(id, g).unwrap();
        cpu.step();
    }

    for gpu in gpus() {
        let limit = gpu.device().limits().max_storage_buffer_binding_size;
        assert!((LEN * 4) as u64 > limit, "the tensor must exceed one binding ({limit} bytes) on {}", gpu.adapter());
        let mut opt = Optimizer::new(gpu, params.clone(), vec![ParamGroup::new(rule.clone(), [id])]).unwrap();
        let arenas = opt.arenas();
        assert_eq!(arenas.len(), 1);
        assert!(arenas[0].windows >= 2, "swept in several binding-sized windows");
        for g in &grads {
            opt.write_grad(id, g).unwrap();
            opt.step_and_submit().unwrap();
        }
        let gpu_param = opt.read_param(id).unwrap();
        let gpu_buffer = opt.read_state(id, "momentum_buffer").unwrap();
        let actual = vec![("huge".to_string(), gpu_param), ("huge.momentum_buffer".to_string(), gpu_buffer)];
        let expected = vec![
            ("huge".to_string(), cpu.param(id).unwrap().to_vec()),
            ("huge.momentum_buffer".to_string(), cpu.state(id, "momentum_buffer").unwrap().to_vec()),
        ];
        // Normwise over all 40 M elements: a window left unswept would leave errors of ~1.
        let (difference, tensor) = max_normwise_difference(&actual, &expected);
        assert!(difference <= GPU_VS_CPU_TOLERANCE, "{tensor}: {difference:e} on {}", gpu.adapter());
    }
}
