#!/usr/bin/env python3
"""Generate the golden learning-rate schedules under ``tests/golden/schedules/``.

Every case builds a ``torch.optim.lr_scheduler`` scheduler on a small SGD (or Adam)
optimizer that only carries the parameter groups, steps it 1,000 times and records
what torch produced, so that ``tests/suite/schedules.rs`` can check the Rust
schedules against it without torch:

    schedules/<Scheduler>.json   {"torch": version, "scheduler": name, "steps": 1000,
                                  "cases": [case, ...]}

    case = {
      "name":       "steplr-7-groups",
      "optimizer":  {"optimizer": "SGD", "lr": [0.1, 0.02], "momentum": 0.9}
                    (one learning rate per parameter group; the other keys are the
                    optimizer's torch keyword arguments),
      "config":     the scheduler as wgpu-optim's replay configuration
                    ({"name": ..., torch keyword arguments}); for LambdaLR and
                    MultiplicativeLR, "lr_lambda" names functions of LAMBDAS below
                    (one name, or one per group), which the Rust test mirrors,
      "metrics":    ReduceLROnPlateau only: the metric fed to each step,
      "lr":         get_last_lr() after construction and after each step (1,001 lists,
                    one value per group),
      "momentum":   when the scheduler cycles momentum: each group's ``momentum``
                    (SGD) or ``betas[0]`` (Adam) at the same points,
      "state_step": 400, "state": the scheduler's state_dict() after that many steps,
                    as JSON (Counter keys as strings, infinities as "inf"/"-inf")
    }

InverseTimeLR is not in torch: it is defined below as an LRScheduler subclass with
torch's conventions (chainable get_lr, closed form), the definition the Rust one
follows.

Numbers are written with Python's repr (shortest round-trip), compactly; the
output is deterministic. Requirements (only to regenerate): ``pip install torch``.

Usage:
    python3 tests/golden/schedules.py [--out tests/golden/schedules]
"""

import argparse
import json
import math
import random
import warnings
from pathlib import Path

import torch
from torch.optim import lr_scheduler as S

STEPS = 1000
STATE_STEP = 400


class InverseTimeLR(S.LRScheduler):
    """lr = lr0 / (1 + decay_rate * epoch), chainable like torch's schedulers."""

    def __init__(self, optimizer, decay_rate, last_epoch=-1):
        self.decay_rate = decay_rate
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            return [group["lr"] for group in self.optimizer.param_groups]
        k, e = self.decay_rate, self.last_epoch
        return [group["lr"] * (1.0 + k * (e - 1)) / (1.0 + k * e) for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr / (1.0 + self.decay_rate * self.last_epoch) for base_lr in self.base_lrs]


# Functions of the epoch for LambdaLR and MultiplicativeLR, by name (mirrored in
# tests/suite/schedules.rs).
LAMBDAS = {
    "pow095": lambda e: 0.95**e,
    "floordiv30": lambda e: e // 30,
    "warmup_rsqrt": lambda e: min((e + 1) / 10, (10 / (e + 1)) ** 0.5),
    "const0995": lambda e: 0.995,
    "halve_every_100": lambda e: 0.5 if e % 100 == 0 else 1.0,
}

CLASSES = {
    "ConstantLR": S.ConstantLR,
    "LinearLR": S.LinearLR,
    "StepLR": S.StepLR,
    "MultiStepLR": S.MultiStepLR,
    "ExponentialLR": S.ExponentialLR,
    "PolynomialLR": S.PolynomialLR,
    "CosineAnnealingLR": S.CosineAnnealingLR,
    "CosineAnnealingWarmRestarts": S.CosineAnnealingWarmRestarts,
    "CyclicLR": S.CyclicLR,
    "OneCycleLR": S.OneCycleLR,
    "InverseTimeLR": InverseTimeLR,
    "ReduceLROnPlateau": S.ReduceLROnPlateau,
}


def build_optimizer(spec):
    spec = dict(spec)
    name = spec.pop("optimizer")
    lrs = spec.pop("lr")
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    return getattr(torch.optim, name)(groups, lr=lrs[0], **spec)


def build_scheduler(config, optimizer):
    """The scheduler a replay configuration describes, built as torch users build it."""
    config = dict(config)
    name = config.pop("name")
    if name in ("SequentialLR", "ChainedScheduler"):
        children = [build_scheduler(child, optimizer) for child in config.pop("schedulers")]
        if name == "SequentialLR":
            return S.SequentialLR(optimizer, children, **config)
        return S.ChainedScheduler(children, **config)
    if name in ("LambdaLR", "MultiplicativeLR"):
        names = config.pop("lr_lambda")
        functions = [LAMBDAS[n] for n in names] if isinstance(names, list) else LAMBDAS[names]
        return getattr(S, name)(optimizer, functions, **config)
    return CLASSES[name](optimizer, **config)


def momenta(optimizer):
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in optimizer.param_groups]


def cycles_momentum(config):
    if config["name"] in ("SequentialLR", "ChainedScheduler"):
        return any(cycles_momentum(child) for child in config["schedulers"])
    return config["name"] in ("CyclicLR", "OneCycleLR") and config.get("cycle_momentum", True)


def plain(value):
    """A state_dict value as JSON: Counter keys as strings, infinities as strings."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"unexpected state value {value!r}")


def metric_sequence(seed, mode):
    """A noisy validation curve that improves, then plateaus (with a late second drop)."""
    rng = random.Random(seed)
    values = []
    for t in range(STEPS):
        loss = 2.0 * math.exp(-t / 120) + 0.3 + (0.25 if t < 600 else 0.0) + 0.02 * rng.gauss(0.0, 1.0)
        values.append(loss if mode == "min" else 1.0 - loss / 3.0)
    return values


def run_case(case):
    optimizer = build_optimizer(case["optimizer"])
    config = case["config"]
    scheduler = build_scheduler(config, optimizer)
    plateau = config["name"] == "ReduceLROnPlateau"
    metrics = metric_sequence(case["seed"], config.get("mode", "min")) if plateau else None
    track_momentum = cycles_momentum(config)
    lrs = [list(scheduler.get_last_lr())]
    moms = [momenta(optimizer)] if track_momentum else None
    state = None
    for step in range(STEPS):
        optimizer.step()  # no gradients: only keeps torch's call-order check quiet
        if plateau:
            scheduler.step(metrics[step])
        else:
            scheduler.step()
        lrs.append(list(scheduler.get_last_lr()))
        if track_momentum:
            moms.append(momenta(optimizer))
        if step + 1 == STATE_STEP:
            state = plain(scheduler.state_dict())
    out = {"name": case["name"], "optimizer": case["optimizer"], "config": config}
    if plateau:
        out["metrics"] = metrics
    out["lr"] = lrs
    if track_momentum:
        out["momentum"] = moms
    out["state_step"] = STATE_STEP
    out["state"] = state
    return out


def sgd(*lrs, momentum=0.0):
    spec = {"optimizer": "SGD", "lr": list(lrs)}
    if momentum:
        spec["momentum"] = momentum
    return spec


def adam(*lrs):
    return {"optimizer": "Adam", "lr": list(lrs)}


def case(name, optimizer, config, seed=0):
    return {"name": name, "optimizer": optimizer, "config": config, "seed": seed}


CASES = [
    case("constantlr-default", sgd(0.05), {"name": "ConstantLR"}),
    case("constantlr-half-40-groups", sgd(0.1, 0.01), {"name": "ConstantLR", "factor": 0.5, "total_iters": 40}),
    case("linearlr-default", sgd(0.05), {"name": "LinearLR"}),
    case("linearlr-warmup-100", sgd(0.1), {"name": "LinearLR", "start_factor": 0.01, "end_factor": 1.0, "total_iters": 100}),
    case("linearlr-decay-500-groups", sgd(0.1, 0.003),
         {"name": "LinearLR", "start_factor": 1.0, "end_factor": 0.05, "total_iters": 500}),
    case("steplr-30", sgd(0.1), {"name": "StepLR", "step_size": 30}),
    case("steplr-7-groups", sgd(0.1, 0.02), {"name": "StepLR", "step_size": 7, "gamma": 0.95}),
    case("multisteplr-30-80", sgd(0.1), {"name": "MultiStepLR", "milestones": [30, 80]}),
    case("multisteplr-repeated-groups", sgd(0.1, 0.02),
         {"name": "MultiStepLR", "milestones": [700, 100, 300, 100], "gamma": 0.5}),
    case("exponentiallr-099", sgd(0.1), {"name": "ExponentialLR", "gamma": 0.99}),
    case("exponentiallr-0995-groups", sgd(0.1, 0.007), {"name": "ExponentialLR", "gamma": 0.995}),
    case("polynomiallr-default", sgd(0.1), {"name": "PolynomialLR"}),
    case("polynomiallr-sqrt-800", sgd(0.1), {"name": "PolynomialLR", "total_iters": 800, "power": 0.5}),
    case("polynomiallr-square-600-groups", sgd(0.1, 0.02), {"name": "PolynomialLR", "total_iters": 600, "power": 2.0}),
    case("cosineannealinglr-1000", sgd(0.1), {"name": "CosineAnnealingLR", "T_max": 1000}),
    case("cosineannealinglr-periodic-groups", sgd(0.1, 0.01), {"name": "CosineAnnealingLR", "T_max": 100, "eta_min": 1e-4}),
    case("cosineannealinglr-333", sgd(0.05), {"name": "CosineAnnealingLR", "T_max": 333, "eta_min": 0.001}),
    case("warmrestarts-10-mult2-groups", sgd(0.1, 0.01),
         {"name": "CosineAnnealingWarmRestarts", "T_0": 10, "T_mult": 2, "eta_min": 1e-5}),
    case("warmrestarts-50", sgd(0.1), {"name": "CosineAnnealingWarmRestarts", "T_0": 50}),
    case("warmrestarts-3-mult3", sgd(0.1), {"name": "CosineAnnealingWarmRestarts", "T_0": 3, "T_mult": 3}),
    case("cycliclr-triangular", sgd(0.1, momentum=0.9),
         {"name": "CyclicLR", "base_lr": 0.001, "max_lr": 0.1, "step_size_up": 50}),
    case("cycliclr-triangular2-groups", sgd(0.1, 0.05, momentum=0.9),
         {"name": "CyclicLR", "base_lr": [0.001, 0.0005], "max_lr": [0.1, 0.05], "step_size_up": 40,
          "step_size_down": 80, "mode": "triangular2", "base_momentum": [0.8, 0.85], "max_momentum": [0.9, 0.95]}),
    case("cycliclr-exp-range", sgd(0.1, momentum=0.9),
         {"name": "CyclicLR", "base_lr": 0.001, "max_lr": 0.1, "step_size_up": 100, "mode": "exp_range", "gamma": 0.995}),
    case("cycliclr-no-momentum", sgd(0.1),
         {"name": "CyclicLR", "base_lr": 0.01, "max_lr": 0.05, "step_size_up": 25, "step_size_down": 5,
          "cycle_momentum": False}),
    case("cycliclr-adam-betas", adam(0.001),
         {"name": "CyclicLR", "base_lr": 1e-4, "max_lr": 1e-3, "step_size_up": 200, "mode": "exp_range",
          "gamma": 0.999, "base_momentum": 0.85, "max_momentum": 0.95}),
    case("onecyclelr-cos", sgd(0.1, momentum=0.9), {"name": "OneCycleLR", "max_lr": 0.1, "total_steps": 1000}),
    case("onecyclelr-linear-groups", sgd(0.1, 0.01, momentum=0.9),
         {"name": "OneCycleLR", "max_lr": [0.1, 0.01], "epochs": 10, "steps_per_epoch": 100,
          "anneal_strategy": "linear", "base_momentum": [0.85, 0.8]}),
    case("onecyclelr-cos-three-phase", sgd(0.1, momentum=0.9),
         {"name": "OneCycleLR", "max_lr": 0.1, "total_steps": 1000, "three_phase": True, "pct_start": 0.25,
          "div_factor": 10.0, "final_div_factor": 100.0}),
    case("onecyclelr-linear-three-phase-no-momentum", sgd(0.1),
         {"name": "OneCycleLR", "max_lr": 0.05, "total_steps": 1200, "anneal_strategy": "linear",
          "three_phase": True, "cycle_momentum": False}),
    case("onecyclelr-adam-betas", adam(0.001), {"name": "OneCycleLR", "max_lr": 0.003, "total_steps": 1000}),
    case("multiplicativelr-const", sgd(0.1), {"name": "MultiplicativeLR", "lr_lambda": "const0995"}),
    case("multiplicativelr-per-group", sgd(0.1, 0.01),
         {"name": "MultiplicativeLR", "lr_lambda": ["const0995", "halve_every_100"]}),
    case("lambdalr-pow", sgd(0.1), {"name": "LambdaLR", "lr_lambda": "pow095"}),
    case("lambdalr-per-group", sgd(0.1, 0.01), {"name": "LambdaLR", "lr_lambda": ["floordiv30", "warmup_rsqrt"]}),
    case("inversetimelr-001", sgd(0.1), {"name": "InverseTimeLR", "decay_rate": 0.01}),
    case("inversetimelr-05-groups", sgd(0.1, 0.02), {"name": "InverseTimeLR", "decay_rate": 0.5}),
    case("sequentiallr-warmup-cosine", sgd(0.1),
         {"name": "SequentialLR", "milestones": [50], "schedulers": [
             {"name": "LinearLR", "start_factor": 0.01, "end_factor": 1.0, "total_iters": 50},
             {"name": "CosineAnnealingLR", "T_max": 950}]}),
    case("sequentiallr-three-groups", sgd(0.1, 0.01),
         {"name": "SequentialLR", "milestones": [20, 300], "schedulers": [
             {"name": "ConstantLR", "factor": 0.1, "total_iters": 20},
             {"name": "ExponentialLR", "gamma": 0.995},
             {"name": "StepLR", "step_size": 100, "gamma": 0.5}]}),
    case("sequentiallr-warmup-restarts", sgd(0.1),
         {"name": "SequentialLR", "milestones": [30], "schedulers": [
             {"name": "LinearLR", "start_factor": 0.1, "total_iters": 30},
             {"name": "CosineAnnealingWarmRestarts", "T_0": 50, "T_mult": 2}]}),
    case("sequentiallr-linear-cyclic", sgd(0.1),
         {"name": "SequentialLR", "milestones": [100], "schedulers": [
             {"name": "LinearLR", "start_factor": 0.5, "total_iters": 10},
             {"name": "CyclicLR", "base_lr": 0.001, "max_lr": 0.01, "step_size_up": 40, "cycle_momentum": False}]}),
    case("sequentiallr-milestone-zero", sgd(0.1),
         {"name": "SequentialLR", "milestones": [0], "schedulers": [
             {"name": "ConstantLR", "factor": 0.5, "total_iters": 10},
             {"name": "ExponentialLR", "gamma": 0.99}]}),
    case("sequentiallr-exponential-onecycle", sgd(0.1, momentum=0.9),
         {"name": "SequentialLR", "milestones": [100], "schedulers": [
             {"name": "ExponentialLR", "gamma": 0.99},
             {"name": "OneCycleLR", "max_lr": 0.1, "total_steps": 900}]}),
    case("sequentiallr-multistep-polynomial-inversetime", sgd(0.1, 0.03),
         {"name": "SequentialLR", "milestones": [40, 400], "schedulers": [
             {"name": "MultiStepLR", "milestones": [10, 20], "gamma": 0.5},
             {"name": "PolynomialLR", "total_iters": 500, "power": 2.0},
             {"name": "InverseTimeLR", "decay_rate": 0.02}]}),
    case("chained-constant-exponential", sgd(0.1),
         {"name": "ChainedScheduler", "schedulers": [
             {"name": "ConstantLR", "factor": 0.1, "total_iters": 20},
             {"name": "ExponentialLR", "gamma": 0.99}]}),
    case("chained-warmup-cosine-groups", sgd(0.1, 0.01),
         {"name": "ChainedScheduler", "schedulers": [
             {"name": "LinearLR", "start_factor": 0.1, "total_iters": 100},
             {"name": "CosineAnnealingLR", "T_max": 1000, "eta_min": 1e-5}]}),
    case("chained-multistep-inversetime", sgd(0.1),
         {"name": "ChainedScheduler", "schedulers": [
             {"name": "MultiStepLR", "milestones": [200, 400], "gamma": 0.5},
             {"name": "InverseTimeLR", "decay_rate": 0.01}]}),
    case("chained-exponential-cyclic", sgd(0.1, momentum=0.9),
         {"name": "ChainedScheduler", "schedulers": [
             {"name": "ExponentialLR", "gamma": 0.999},
             {"name": "CyclicLR", "base_lr": 0.001, "max_lr": 0.02, "step_size_up": 30, "mode": "triangular2"}]}),
    case("plateau-min-rel", sgd(0.1), {"name": "ReduceLROnPlateau", "patience": 5}, seed=1),
    case("plateau-min-rel-cooldown-groups", sgd(0.1, 0.01),
         {"name": "ReduceLROnPlateau", "factor": 0.5, "patience": 4, "threshold": 0.01, "cooldown": 3,
          "min_lr": [1e-4, 1e-5]}, seed=2),
    case("plateau-min-abs-cooldown", sgd(0.1),
         {"name": "ReduceLROnPlateau", "factor": 0.3, "patience": 8, "threshold": 0.005, "threshold_mode": "abs",
          "cooldown": 2}, seed=3),
    case("plateau-max-rel-cooldown-groups", sgd(0.1, 0.05),
         {"name": "ReduceLROnPlateau", "mode": "max", "patience": 6, "threshold": 1e-3, "cooldown": 5,
          "min_lr": 1e-3}, seed=4),
    case("plateau-max-abs-eps", sgd(0.1),
         {"name": "ReduceLROnPlateau", "mode": "max", "factor": 0.5, "patience": 3, "threshold": 0.002,
          "threshold_mode": "abs", "min_lr": 0.004, "eps": 1e-3}, seed=5),
]


def file_name(config):
    return config["name"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "schedules"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    warnings.simplefilter("ignore")  # torch's call-order warnings; the cases step in torch's order
    files = {}
    for c in CASES:
        files.setdefault(file_name(c["config"]), []).append(run_case(c))
    for old in out.glob("*.json"):
        if old.stem not in files:
            old.unlink()
    for name, cases in sorted(files.items()):
        document = {"torch": torch.__version__, "scheduler": name, "steps": STEPS, "cases": cases}
        text = json.dumps(document, separators=(",", ":"), allow_nan=False)
        (out / f"{name}.json").write_text(text + "\n")
        print(f"{name:<28} {len(cases)} cases  {len(text) / 1024:7.1f} KiB")
    print(f"{sum(len(c) for c in files.values())} cases in {len(files)} files under {out}")


if __name__ == "__main__":
    main()
