//! No silent wrong results from how steps reach the GPU: the scalar ring cannot be overrun,
//! a step dropped unsubmitted shifts nothing (the step count advances on the GPU), batched
//! submissions equal step-by-step ones, and a foreign tensor id is an error.

use wgpu_optim::gradients::GradientOptions;
use wgpu_optim::rules::{Adam, AdamW, NAdam};
use wgpu_optim::{CpuOptimizer, Error, GpuContext, Optimizer, OptimizerOptions, ParamGroup, Parameters, TensorId};

use crate::common::{gpus, snapshot_gpu, Rng};

const LEN: usize = 300;

fn problem(seed: u64) -> (Parameters, TensorId) {
    let mut params = Parameters::new();
    let w = params.add("w", &[LEN], Rng::new(seed).vec(LEN, 1.0)).unwrap();
    (params, w)
}

/// The gradient of step k (1-based): fixed per step, so runs can be compared bit for bit.
fn gradient(k: u64) -> Vec<f32> {
    Rng::new(1000 + k).vec(LEN, 1.0)
}

fn adam() -> ParamGroup {
    ParamGroup::new(Adam { lr: 0.01, ..Adam::default() }, [])
}

fn optimizer(gpu: &GpuContext, rule: ParamGroup, options: OptimizerOptions) -> (Optimizer, TensorId) {
    let (params, w) = problem(5);
    let group = ParamGroup { tensors: vec![w], ..rule };
    (Optimizer::with_options(gpu, params, vec![group], options).unwrap(), w)
}

/// Steps 1..=steps, each gradient uploaded and submitted on its own.
fn step_by_step(gpu: &GpuContext, rule: ParamGroup, options: OptimizerOptions, steps: u64) -> Vec<(String, Vec<f32>)> {
    let (mut opt, w) = optimizer(gpu, rule, options);
    for k in 1..=steps {
        opt.write_grad(w, &gradient(k)).unwrap();
        opt.step_and_submit().unwrap();
    }
    snapshot_gpu(&opt, &[w])
}

/// The gradient of step k written by a copy recorded in the encoder, so that many steps
/// with different gradients can share one submission.
fn record_gradient(opt: &Optimizer, w: TensorId, encoder: &mut wgpu::CommandEncoder, k: u64) {
    use wgpu::util::DeviceExt;
    let gpu = opt.gpu();
    let source = gpu.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test gradient"),
        contents: bytemuck::cast_slice(&gradient(k)),
        usage: wgpu::BufferUsages::COPY_SRC,
    });
    let grad = opt.grad(w).unwrap();
    encoder.copy_buffer_to_buffer(&source, 0, &grad.buffer, grad.offset, grad.byte_size());
}

#[test]
fn recording_more_steps_than_the_ring_holds_is_an_error_that_records_nothing() {
    for gpu in gpus() {
        let options = OptimizerOptions { steps_in_flight: Some(4), ..Default::default() };
        let (mut opt, w) = optimizer(gpu, adam(), options.clone());
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        for k in 1..=4 {
            record_gradient(&opt, w, &mut encoder, k);
            opt.step(&mut encoder).unwrap();
        }
        let error = opt.step(&mut encoder).unwrap_err();
        assert!(matches!(error, Error::StepsInFlight { in_flight: 4 }), "{error}");
        assert!(error.to_string().contains("steps_in_flight"), "the message names the knob: {error}");
        assert_eq!(opt.steps_recorded(), 4, "the refused step is not recorded");
        gpu.queue().submit([encoder.finish()]);
        // After the submission the ring is free again.
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        record_gradient(&opt, w, &mut encoder, 5);
        opt.step(&mut encoder).unwrap();
        gpu.queue().submit([encoder.finish()]);
        assert_eq!(snapshot_gpu(&opt, &[w]), step_by_step(gpu, adam(), options, 5), "on {}", gpu.adapter());
    }
}

#[test]
fn batches_larger_than_the_default_ring_equal_step_by_step() {
    // The reported case: 65, 100 or 130 steps per submission used to wrap the 64-slot ring.
    for gpu in gpus() {
        let expected = step_by_step(gpu, adam(), OptimizerOptions::default(), 130);
        for batch in [65, 100, 130] {
            let (mut opt, w) = optimizer(gpu, adam(), OptimizerOptions::default());
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            let mut refused = None;
            for k in 1..=batch {
                record_gradient(&opt, w, &mut encoder, k);
                if let Err(error) = opt.step(&mut encoder) {
                    refused = Some((k, error));
                    break;
                }
            }
            let (k, error) = refused.expect("a 65th unsubmitted step is refused");
            assert_eq!(k, 65);
            assert!(matches!(error, Error::StepsInFlight { in_flight: 64 }), "{error}");
            drop(encoder);
            // submit_steps sizes its batches to the ring.
            let (mut opt, w) = optimizer(gpu, adam(), OptimizerOptions::default());
            opt.submit_steps(130, |opt, encoder, k| {
                record_gradient(opt, w, encoder, k + 1);
                Ok(())
            })
            .unwrap();
            assert_eq!(snapshot_gpu(&opt, &[w]), expected, "batch {batch} on {}", gpu.adapter());
        }
    }
}

/// Runs `case` on every adapter for Adam and NAdam (whose terms depend on t: bias
/// corrections, mu_product), each with and without gradient conditioning (the step count
/// advances in different passes).
fn for_step_dependent_rules(case: impl Fn(&GpuContext, fn() -> ParamGroup, OptimizerOptions)) {
    let conditioned = GradientOptions { clip_grad_value: Some(100.0), ..Default::default() };
    for gpu in gpus() {
        for rule in [adam, || ParamGroup::new(NAdam::default(), [])] {
            for gradients in [GradientOptions::default(), conditioned.clone()] {
                case(gpu, rule, OptimizerOptions { gradients, ..Default::default() });
            }
        }
    }
}

#[test]
fn a_step_dropped_unsubmitted_shifts_nothing() {
    // A dropped step that still counted would change every later step.
    for_step_dependent_rules(|gpu, rule, options| {
        let (mut opt, w) = optimizer(gpu, rule(), options.clone());
        for k in 1..=4 {
            // Recorded, then dropped: in its encoder (k = 2), as a finished command buffer (k = 3).
            if k == 2 || k == 3 {
                let mut encoder = gpu.device().create_command_encoder(&Default::default());
                opt.step(&mut encoder).unwrap();
                if k == 3 {
                    drop(encoder.finish());
                }
            }
            opt.write_grad(w, &gradient(k)).unwrap();
            opt.step_and_submit().unwrap();
        }
        assert_eq!(opt.steps_recorded(), 6);
        assert_eq!(opt.counters().unwrap().applied_steps, 4, "only the submitted steps count");
        let expected = step_by_step(gpu, rule(), options, 4);
        assert_eq!(snapshot_gpu(&opt, &[w]), expected, "on {}", gpu.adapter());
    });
}

#[test]
fn a_step_dropped_after_later_ones_were_recorded_shifts_nothing() {
    // The second step is recorded expecting t = 2, then the first one's encoder is dropped:
    // the second runs as step 1, with step 1's terms from the ring.
    for_step_dependent_rules(|gpu, rule, options| {
        let (mut opt, w) = optimizer(gpu, rule(), options.clone());
        opt.write_grad(w, &gradient(1)).unwrap();
        let mut first = gpu.device().create_command_encoder(&Default::default());
        opt.step(&mut first).unwrap();
        let mut second = gpu.device().create_command_encoder(&Default::default());
        opt.step(&mut second).unwrap();
        drop(first);
        gpu.queue().submit([second.finish()]);
        for k in 2..=3 {
            opt.write_grad(w, &gradient(k)).unwrap();
            opt.step_and_submit().unwrap();
        }
        assert_eq!(opt.counters().unwrap().applied_steps, 3);
        assert_eq!(snapshot_gpu(&opt, &[w]), step_by_step(gpu, rule(), options, 3), "on {}", gpu.adapter());
    });
}

#[test]
fn a_foreign_tensor_id_is_an_error() {
    let (params, w) = problem(1);
    let mut other = Parameters::new();
    let _ = other.add("a", &[LEN], vec![0.0; LEN]).unwrap();
    let foreign = other.add("b", &[4], vec![0.0; 4]).unwrap();
    let first_of_other = other.id("a").unwrap();
    let clone_id = params.clone().id("w").unwrap();
    assert_eq!(clone_id, w, "a clone of a Parameters issues the same ids");
    assert!(matches!(params.spec(foreign), Err(Error::ForeignTensor { index: 1 })));

    let mut cpu = CpuOptimizer::new(params.clone(), vec![ParamGroup::new(AdamW::default(), [w])]).unwrap();
    for id in [foreign, first_of_other] {
        assert!(matches!(cpu.param(id), Err(Error::ForeignTensor { .. })));
        assert!(matches!(cpu.write_grad(id, &[0.0; LEN]), Err(Error::ForeignTensor { .. })));
    }
    cpu.write_grad(w, &[0.1; LEN]).unwrap();

    // A group naming another collection's tensor is refused when the optimizer is built.
    let error = CpuOptimizer::new(params.clone(), vec![ParamGroup::new(AdamW::default(), [first_of_other])])
        .err()
        .expect("a group naming a foreign tensor is refused");
    assert!(error.to_string().contains("did not issue"), "{error}");

    for gpu in gpus() {
        let mut opt = Optimizer::new(gpu, params.clone(), vec![ParamGroup::new(AdamW::default(), [w])]).unwrap();
        // Index 0 is in range here: before, it silently named `w`.
        for id in [foreign, first_of_other] {
            let error = opt.param(id).unwrap_err();
            assert_eq!(error.to_string(), format!("tensor id {} was issued by another Parameters than this optimizer's", id.index()));
            assert!(matches!(opt.grad(id), Err(Error::ForeignTensor { .. })));
            assert!(matches!(opt.write_grad(id, &[1.0; LEN]), Err(Error::ForeignTensor { .. })));
            assert!(matches!(opt.read_state(id, "exp_avg"), Err(Error::ForeignTensor { .. })));
            assert!(matches!(opt.tensor_name(id), Err(Error::ForeignTensor { .. })));
        }
        assert!(opt.set_lr(1, 0.1).is_err(), "a group that does not exist is an error");
        opt.write_grad(w, &[0.1; LEN]).unwrap();
        opt.step_and_submit().unwrap();
        assert_eq!(opt.read_param(w).unwrap(), cpu_after_one_step(&params, w), "on {}", gpu.adapter());
    }
}

fn cpu_after_one_step(params: &Parameters, w: TensorId) -> Vec<f32> {
    let mut cpu = CpuOptimizer::new(params.clone(), vec![ParamGroup::new(AdamW::default(), [w])]).unwrap();
    cpu.write_grad(w, &[0.1; LEN]).unwrap();
    cpu.step();
    cpu.param(w).unwrap().to_vec()
}
