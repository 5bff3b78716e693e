#!/usr/bin/env python3
"""Generate the golden optimizer test cases under ``tests/golden/cases/``.

Every case runs one ``torch.optim`` optimizer (SGD, Adagrad, RMSprop, Adadelta,
Adam, AdamW, NAdam) for a fixed number of steps on the CPU in float32, with
fixed seeds, and records everything a reimplementation needs to replay it:

    cases/<case_name>/run.json             optimizer class name, hyper-parameters
                                           (torch kwarg names; only the ones that
                                           differ from torch's defaults, plus "lr"),
                                           optional "param_groups"
    cases/<case_name>/params.safetensors   initial parameters, float32, by name
    cases/<case_name>/grads.safetensors    per parameter ``w``: ``w`` with shape
                                           [steps, *shape(w)], the gradient of
                                           every step
    cases/<case_name>/expected.safetensors final parameters (by name) and final
                                           optimizer state as ``<name>.<key>``
                                           (torch's state keys, ``step`` omitted,
                                           None entries omitted; NAdam's
                                           ``mu_product`` is 0-d)
    cases/manifest.json                    index of all cases + torch version

Requirements (only to regenerate): ``pip install torch safetensors numpy``.
CI does not need this script or torch: the generated files are committed and
the Rust tests only read them.

Usage:
    python3 tests/golden/generate.py [--out tests/golden/cases] [--only REGEX] [--check]

``--only`` regenerates just the cases whose name matches REGEX (re.search);
``--check`` additionally replays every written case from its files alone
(run.json + params + grads) through torch and requires a bit-exact match with
expected.safetensors, which checks that the files are self-contained.

Case directories in --out that contain a run.json but are no longer defined
here are deleted. The output is deterministic (fixed seeds, single thread).
"""

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

OPTIMIZERS = ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "NAdam"]
PROBLEMS = ["awkward", "groups", "zeros", "magnitudes", "sparse_rows"]  # + "long"
# Problems are assigned to an optimizer's flag combinations with quotas taken
# from this cycle (the two big problems, awkward and sparse_rows, come up half
# as often as the small ones, to keep the committed files small), greedily so
# that every flag value meets as many problems as possible (no flag ends up
# tied to one problem). Every optimizer meets every problem (asserted).
PROBLEM_CYCLE = ["awkward", "groups", "zeros", "magnitudes",
                 "sparse_rows", "groups", "zeros", "magnitudes"]
ADAM_LIKE = {"Adam", "AdamW", "NAdam"}

# Learning rate used by every case of an optimizer unless the variant sets one.
BASE_LR = {
    "SGD": 0.05,
    "Adagrad": 0.05,
    "RMSprop": 0.01,
    "Adadelta": 1.0,
    "Adam": 0.01,
    "AdamW": 0.01,
    "NAdam": 0.01,
}

STATE_KEYS = {
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
    "momentum_buffer",
    "sum",
    "square_avg",
    "grad_avg",
    "acc_delta",
    "mu_product",
}

NEVER = {"foreach", "fused", "capturable", "differentiable"}


# --------------------------------------------------------------------------
# Flag combinations
# --------------------------------------------------------------------------


def product(*axes):
    """Cross product of lists of partial kwarg dicts, merged left to right."""
    out = [{}]
    for axis in axes:
        out = [{**a, **b} for a in out for b in axis]
    return out


def variants(opt):
    """List of (variant kwargs, fixed problem or None) for one optimizer.

    Variant kwargs hold only the flags that are varied (default values included,
    they are filtered against torch's defaults later).
    """
    mx = [{"maximize": False}, {"maximize": True}]
    wd01 = [{"weight_decay": 0.0}, {"weight_decay": 1e-2}]
    if opt == "SGD":
        mom = [
            {"momentum": 0.0},
            {"momentum": 0.9},
            {"momentum": 0.9, "dampening": 0.1},
            {"momentum": 0.9, "nesterov": True},
        ]
        return [(v, None) for v in product(mom, wd01, mx)]
    if opt == "Adagrad":
        v = product(
            [{"lr_decay": 0.0}, {"lr_decay": 1e-3}],
            wd01,
            [{"initial_accumulator_value": 0.0}, {"initial_accumulator_value": 0.1}],
            mx,
        )
        return [(x, None) for x in v] + [({"eps": 1e-6}, "magnitudes")]
    if opt == "RMSprop":
        v = product(
            [{"centered": False}, {"centered": True}],
            [{"momentum": 0.0}, {"momentum": 0.9}],
            wd01,
            mx,
        )
        return [(x, None) for x in v] + [({"alpha": 0.9}, "zeros")]
    if opt == "Adadelta":
        v = product(
            wd01,
            mx,
            [{"rho": 0.9}, {"rho": 0.95}],
            [{"lr": 1.0}, {"lr": 0.5}],
        )
        return [(x, None) for x in v]
    if opt == "Adam":
        wdmode = [
            {},
            {"weight_decay": 1e-2},
            {"weight_decay": 1e-2, "decoupled_weight_decay": True},
        ]
        v = product([{"amsgrad": False}, {"amsgrad": True}], mx, wdmode)
        return [(x, None) for x in v] + [
            ({"betas": (0.8, 0.99), "eps": 1e-6}, "magnitudes")
        ]
    if opt == "AdamW":
        v = product(
            [{"amsgrad": False}, {"amsgrad": True}],
            mx,
            [{"weight_decay": 1e-2}, {"weight_decay": 0.1}],
        )
        return [(x, None) for x in v]
    if opt == "NAdam":
        wdmode = [
            {},
            {"weight_decay": 1e-2},
            {"weight_decay": 1e-2, "decoupled_weight_decay": True},
        ]
        v = product(
            wdmode, mx, [{"momentum_decay": 0.004}, {"momentum_decay": 1e-2}]
        )
        return [(x, None) for x in v]
    raise ValueError(opt)


_DEFAULTS = {}


def torch_defaults(opt):
    if opt not in _DEFAULTS:
        dummy = getattr(torch.optim, opt)([torch.zeros(1, requires_grad=True)])
        _DEFAULTS[opt] = dict(dummy.defaults)
    return _DEFAULTS[opt]


def jsonable(v):
    if isinstance(v, tuple):
        return [jsonable(x) for x in v]
    return v


def same(a, b):
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return list(a) == list(b)
    return a == b


def hyperparameters(opt, variant):
    """lr always, plus every varied flag that differs from torch's default."""
    d = torch_defaults(opt)
    hp = {"lr": variant.get("lr", BASE_LR[opt])}
    for k, v in variant.items():
        if k == "lr":
            continue
        assert k in d and k not in NEVER, (opt, k)
        if not same(v, d[k]):
            hp[k] = jsonable(v)
    return hp


def fmt(v):
    return f"{v:g}".replace("e-0", "e-")


def name_tokens(opt, hp):
    t = []
    d = torch_defaults(opt)
    for k, v in hp.items():
        if k == "lr":
            if opt in LR_IN_NAME and v != BASE_LR[opt]:
                t.append("lr" + fmt(v))
        elif k == "momentum":
            t.append("mom" if v == 0.9 else "mom" + fmt(v))
        elif k == "dampening":
            t.append("damp")
        elif k == "nesterov":
            t.append("nesterov")
        elif k == "weight_decay":
            t.append("wd" if v == 1e-2 else "wd" + fmt(v))
        elif k == "decoupled_weight_decay":
            t.append("decoupled")
        elif k == "maximize":
            t.append("max")
        elif k == "lr_decay":
            t.append("lrdecay")
        elif k == "initial_accumulator_value":
            t.append("initacc")
        elif k == "eps":
            t.append("eps" + fmt(v))
        elif k == "centered":
            t.append("centered")
        elif k == "alpha":
            t.append("alpha" + fmt(v))
        elif k == "rho":
            t.append("rho" + fmt(v))
        elif k == "amsgrad":
            t.append("amsgrad")
        elif k == "betas":
            t.append("betas" + fmt(v[0]) + "-" + fmt(v[1]))
        elif k == "momentum_decay":
            t.append("mdecay" + fmt(v))
        else:
            raise ValueError((opt, k, d.get(k)))
    return t


# Optimizers whose lr is one of the varied flags (so it goes into the name).
LR_IN_NAME = {"Adadelta"}

# Order of tokens in a case name (keeps names stable whatever the dict order).
TOKEN_ORDER = [
    "lr",
    "momentum",
    "dampening",
    "nesterov",
    "centered",
    "alpha",
    "rho",
    "lr_decay",
    "initial_accumulator_value",
    "amsgrad",
    "betas",
    "eps",
    "momentum_decay",
    "weight_decay",
    "decoupled_weight_decay",
    "maximize",
]


def ordered(hp):
    keys = sorted(hp, key=TOKEN_ORDER.index)
    return {k: hp[k] for k in keys}


# --------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------


class Problem:
    """shapes: ordered {name: shape}; init: {name: np.float32 array};
    groups: list of name lists (one entry = single group);
    grads: {name: np.float32 [steps, *shape]} or None;
    grad_fn: callable(step, {name: current param np array}) -> {name: grad}."""

    def __init__(self, kind, shapes, init, groups, steps, grads=None, grad_fn=None):
        self.kind = kind
        self.shapes = shapes
        self.init = init
        self.groups = groups
        self.steps = steps
        self.grads = grads
        self.grad_fn = grad_fn

    @property
    def names(self):
        return list(self.shapes)

    @property
    def elements(self):
        return int(sum(int(np.prod(s)) for s in self.shapes.values()))


def f32(a):
    a = np.asarray(a, dtype=np.float32)
    return np.ascontiguousarray(a)


def log_uniform(rng, lo, hi, shape):
    mag = np.exp(rng.uniform(np.log(lo), np.log(hi), size=shape))
    sign = np.where(rng.random(size=shape) < 0.5, -1.0, 1.0)
    return sign * mag


def normal_grads(rng, shapes, steps, scale=1.0):
    return {n: f32(rng.normal(0.0, scale, size=(steps,) + s)) for n, s in shapes.items()}


def problem_awkward(rng):
    shapes = {"scalar": (1,), "b3": (3,), "v17": (17,), "w130": (130,), "w2d": (33, 7)}
    steps = 100
    init = {n: f32(rng.normal(0.0, 1.0, size=s)) for n, s in shapes.items()}
    return Problem("awkward", shapes, init, [list(shapes)], steps,
                   grads=normal_grads(rng, shapes, steps))


def problem_groups(rng):
    shapes = {"w1": (6, 4), "b1": (4,), "w2": (25,), "w3": (3, 5), "b3": (1,)}
    steps = 150
    init = {n: f32(rng.normal(0.0, 1.0, size=s)) for n, s in shapes.items()}
    groups = [["w1", "b1"], ["w2"], ["w3", "b3"]]
    return Problem("groups", shapes, init, groups, steps,
                   grads=normal_grads(rng, shapes, steps))


def problem_zeros(rng):
    shapes = {"w": (10, 6), "b": (6,), "v": (50,), "rare": (12,)}
    steps = 100
    init = {n: f32(rng.normal(0.0, 1.0, size=s)) for n, s in shapes.items()}
    init["b"] = f32(np.zeros(shapes["b"]))  # a bias that starts at exactly 0
    grads = {}
    for n in ("w", "b", "v"):
        g = rng.normal(0.0, 1.0, size=(steps,) + shapes[n])
        g[rng.random(size=g.shape) < 0.5] = 0.0
        grads[n] = f32(g)
    g = rng.normal(0.0, 1.0, size=(steps,) + shapes["rare"])
    zero_steps = rng.random(size=steps) < 0.3
    zero_steps[0] = True          # first step all-zero (state init from a 0 grad)
    zero_steps[40:55] = True      # a long run of all-zero steps
    zero_steps[steps - 1] = True  # and the last one
    g[zero_steps] = 0.0
    grads["rare"] = f32(g)
    return Problem("zeros", shapes, init, [list(shapes)], steps, grads=grads)


def problem_magnitudes(rng):
    # Every gradient value lies in [1e-12, 1e5] in magnitude (so its square is a
    # normal float32 too), every initial value in [1e-3, 1e3].
    shapes = {"tiny": (16,), "huge": (16,), "mixed": (8, 6), "rows": (5, 8)}
    steps = 100
    init = {
        "tiny": log_uniform(rng, 1e-3, 1e-2, shapes["tiny"]),
        "huge": log_uniform(rng, 1e2, 1e3, shapes["huge"]),
        "mixed": log_uniform(rng, 1e-3, 1e3, shapes["mixed"]),
    }
    row_init = 10.0 ** (-3.0 + 1.5 * np.arange(5))  # 1e-3 .. 1e3
    init["rows"] = log_uniform(rng, 0.5, 2.0, shapes["rows"]) * row_init[:, None]
    grads = {
        "tiny": log_uniform(rng, 1e-12, 1e-6, (steps,) + shapes["tiny"]),
        "huge": log_uniform(rng, 1e3, 1e5, (steps,) + shapes["huge"]),
        "mixed": log_uniform(rng, 1e-12, 1e5, (steps,) + shapes["mixed"]),
    }
    row_g = 10.0 ** (-11.0 + 3.5 * np.arange(5))  # 1e-11 .. 1e3
    grads["rows"] = log_uniform(rng, 0.3, 3.0, (steps,) + shapes["rows"]) * row_g[:, None]
    init = {n: f32(a) for n, a in init.items()}
    grads = {n: f32(a) for n, a in grads.items()}
    for g in grads.values():
        m = np.abs(g)
        assert m.min() >= 1e-15 and m.max() <= 1e15
        assert np.all(np.isfinite(g * g)) and (g * g).min() > np.finfo(np.float32).tiny
    return Problem("magnitudes", shapes, init, [list(shapes)], steps, grads=grads)


def problem_sparse_rows(rng):
    shapes = {"emb": (40, 8), "bias": (8,)}
    steps = 200
    init = {n: f32(rng.normal(0.0, 1.0, size=s)) for n, s in shapes.items()}
    ge = np.zeros((steps, 40, 8))
    for t in range(steps):
        rows = rng.choice(40, size=3, replace=False)
        ge[t, rows] = rng.normal(0.0, 1.0, size=(3, 8))
    grads = {"emb": f32(ge), "bias": f32(rng.normal(0.0, 1.0, size=(steps, 8)))}
    return Problem("sparse_rows", shapes, init, [list(shapes)], steps, grads=grads)


def problem_long(rng):
    # Noisy quadratic with a slowly moving target:
    #   g_t = h * (p_t - (target + 0.2 sin(2 pi t / 400 + phase))) + 0.05 noise_t
    # computed from torch's own current parameters p_t (and recorded).
    shapes = {"a": (5,), "b": (64,)}
    steps = 1000
    target = {n: rng.normal(0.0, 1.0, size=s) for n, s in shapes.items()}
    curv = {n: np.exp(rng.uniform(np.log(0.1), np.log(4.0), size=s)) for n, s in shapes.items()}
    phase = {n: rng.uniform(0.0, 2 * np.pi, size=s) for n, s in shapes.items()}
    noise = {n: rng.normal(0.0, 1.0, size=(steps,) + s) for n, s in shapes.items()}
    init = {n: f32(target[n] + rng.normal(0.0, 2.0, size=s)) for n, s in shapes.items()}

    def grad_fn(t, cur):
        out = {}
        for n in shapes:
            tgt = target[n] + 0.2 * np.sin(2 * np.pi * t / 400.0 + phase[n])
            out[n] = f32(curv[n] * (cur[n].astype(np.float64) - tgt) + 0.05 * noise[n][t])
        return out

    return Problem("long", shapes, init, [list(shapes)], steps, grad_fn=grad_fn)


PROBLEM_FNS = {
    "awkward": problem_awkward,
    "groups": problem_groups,
    "zeros": problem_zeros,
    "magnitudes": problem_magnitudes,
    "sparse_rows": problem_sparse_rows,
    "long": problem_long,
}


# --------------------------------------------------------------------------
# Case specs
# --------------------------------------------------------------------------


def group_overrides(opt, hp):
    """Overrides for the 2nd and 3rd group of the 'groups' problem."""
    d = torch_defaults(opt)
    wd = hp.get("weight_decay", d["weight_decay"])
    # 2nd group: weight_decay 0 (or 1e-2 when the case itself has none, so that
    # the override always changes something).
    ov1 = {"weight_decay": 0.0 if wd != 0 else 1e-2}
    lr = hp["lr"]
    ov2 = {"lr": float(fmt(lr * 0.1))}
    if opt == "SGD":
        if hp.get("momentum", 0) != 0:
            ov2["momentum"] = 0.5
    elif opt == "Adagrad":
        ov2["eps"] = 1e-6
        ov2["initial_accumulator_value"] = 0.05
    elif opt == "RMSprop":
        ov2["alpha"] = 0.95
    elif opt == "Adadelta":
        ov2["rho"] = 0.8
    elif opt in ADAM_LIKE:
        ov2["betas"] = [0.85, 0.995]
        ov2["eps"] = 1e-6
    for ov in (ov1, ov2):
        for k, v in ov.items():
            top = hp.get(k, d[k])
            assert not same(v, top), (opt, k, v, top)
    return ov1, ov2


def fnv1a(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFF


def assign_problems(combos):
    """One problem per flag combination (list of variant dicts), balanced."""
    n = len(combos)
    quota = {p: 0 for p in PROBLEMS}
    for i in range(n):
        quota[PROBLEM_CYCLE[i % len(PROBLEM_CYCLE)]] += 1
    pairs = {}  # (flag, value, problem) -> count
    out = []
    for v in combos:
        flags = [(k, json.dumps(jsonable(x))) for k, x in sorted(v.items())]

        def score(p):
            return (sum(pairs.get((k, x, p), 0) for k, x in flags), -quota[p], PROBLEMS.index(p))

        p = min((p for p in PROBLEMS if quota[p] > 0), key=score)
        quota[p] -= 1
        for k, x in flags:
            pairs[(k, x, p)] = pairs.get((k, x, p), 0) + 1
        out.append(p)
    return out


def build_specs():
    specs = []
    for oi, opt in enumerate(OPTIMIZERS):
        seen_problems = set()
        vs = variants(opt)
        assigned = iter(assign_problems([v for v, fixed in vs if fixed is None]))
        for i, (variant, fixed) in enumerate(vs):
            problem = fixed or next(assigned)
            seen_problems.add(problem)
            hp = ordered(hyperparameters(opt, variant))  # "lr" comes first
            tokens = name_tokens(opt, hp) or ["default"]
            specs.append({
                "name": "-".join([opt.lower()] + tokens + [problem.replace("_", "-")]),
                "optimizer": opt,
                "hyperparameters": hp,
                "problem": problem,
                # a single group: write "param_groups" for every third case
                "explicit_single_group": i % 3 == 1,
            })
        assert seen_problems == set(PROBLEMS), (opt, seen_problems)
        specs.append({
            "name": f"{opt.lower()}-default-long",
            "optimizer": opt,
            "hyperparameters": {"lr": BASE_LR[opt]},
            "problem": "long",
            "explicit_single_group": oi % 2 == 0,
        })
    specs.extend(training_specs())
    names = [s["name"] for s in specs]
    assert len(names) == len(set(names)), "duplicate case names"
    for s in specs:
        assert re.fullmatch(r"[a-z0-9.\-]+", s["name"]), s["name"]
    return sorted(specs, key=lambda s: s["name"])


def training_specs():
    """Cases of a torch training loop: clip_grad_norm_ before, scheduler.step() after each
    optimizer.step(). run.json carries "scheduler" and "clip_grad_norm" as the replay
    command reads them."""
    warmup_cosine = {"name": "SequentialLR", "milestones": [20], "schedulers": [
        {"name": "LinearLR", "start_factor": 0.1, "total_iters": 20},
        {"name": "CosineAnnealingLR", "T_max": 130}]}
    cases = [
        ("adamw-warmup-cosine-clip2", "AdamW", {"lr": 0.01}, "groups", warmup_cosine,
         {"max_norm": 1.0, "norm_type": 2.0}),
        ("sgd-step-clipinf", "SGD", {"lr": 0.05, "momentum": 0.9}, "zeros",
         {"name": "StepLR", "step_size": 30, "gamma": 0.5}, {"max_norm": 0.5, "norm_type": "inf"}),
        ("adam-onecycle-clip2", "Adam", {"lr": 0.01}, "awkward",
         {"name": "OneCycleLR", "max_lr": 0.05, "total_steps": 100}, {"max_norm": 5.0, "norm_type": 2.0}),
        ("rmsprop-exponential", "RMSprop", {"lr": 0.01, "momentum": 0.9}, "magnitudes",
         {"name": "ExponentialLR", "gamma": 0.98}, None),
        ("nadam-cyclic-clip2", "NAdam", {"lr": 0.01}, "sparse_rows",
         {"name": "CyclicLR", "base_lr": 0.001, "max_lr": 0.01, "step_size_up": 10, "cycle_momentum": False},
         {"max_norm": 2.0, "norm_type": 2.0}),
        ("adagrad-chained-clip2", "Adagrad", {"lr": 0.05}, "groups",
         {"name": "ChainedScheduler", "schedulers": [
             {"name": "ConstantLR", "factor": 0.5, "total_iters": 10},
             {"name": "ExponentialLR", "gamma": 0.99}]},
         {"max_norm": 3.0, "norm_type": 2.0}),
        ("adadelta-polynomial-clipinf", "Adadelta", {"lr": 1.0}, "awkward",
         {"name": "PolynomialLR", "total_iters": 80, "power": 2.0}, {"max_norm": 0.2, "norm_type": "inf"}),
        ("sgd-nesterov-warm-restarts", "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, "groups",
         {"name": "CosineAnnealingWarmRestarts", "T_0": 10, "T_mult": 2}, {"max_norm": 2.0, "norm_type": 2.0}),
        ("adam-multistep-amsgrad", "Adam", {"lr": 0.01, "amsgrad": True}, "long",
         {"name": "MultiStepLR", "milestones": [100, 400, 700], "gamma": 0.3}, {"max_norm": 1.0, "norm_type": 2.0}),
    ]
    return [{
        "name": f"train-{name}",
        "optimizer": opt,
        "hyperparameters": hp,
        "problem": problem,
        "explicit_single_group": False,
        "training": {"scheduler": scheduler, "clip_grad_norm": clip},
    } for name, opt, hp, problem, scheduler, clip in cases]


# --------------------------------------------------------------------------
# Running torch
# --------------------------------------------------------------------------


def make_scheduler(cfg, opt):
    """A torch scheduler from the replay config form {"name": ..., **arguments}."""
    cfg = dict(cfg)
    cls = getattr(torch.optim.lr_scheduler, cfg.pop("name"))
    if cls is torch.optim.lr_scheduler.SequentialLR:
        return cls(opt, [make_scheduler(c, opt) for c in cfg.pop("schedulers")], **cfg)
    if cls is torch.optim.lr_scheduler.ChainedScheduler:
        return cls([make_scheduler(c, opt) for c in cfg.pop("schedulers")], optimizer=opt)
    return cls(opt, **cfg)


def norm_type(v):
    return float("inf") if v == "inf" else float(v)


def torch_kwargs(d):
    return {k: (tuple(v) if k == "betas" else v) for k, v in d.items()}


def run_torch(optimizer, hp, param_groups, init, steps, grad_at, training=None):
    """Run torch.optim. param_groups: list of {"params": [names], **overrides}.
    grad_at(step, {name: current param tensor}) -> {name: float32 tensor}.
    Returns (final params, final state) as {name: tensor}."""
    params = {n: torch.tensor(a, dtype=torch.float32).requires_grad_(True) for n, a in init.items()}
    groups = []
    for g in param_groups:
        ov = torch_kwargs({k: v for k, v in g.items() if k != "params"})
        groups.append({"params": [params[n] for n in g["params"]], **ov})
    opt = getattr(torch.optim, optimizer)(groups, **torch_kwargs(hp))
    training = training or {}
    scheduler = make_scheduler(training["scheduler"], opt) if training.get("scheduler") else None
    clip = training.get("clip_grad_norm")
    with torch.no_grad():
        for t in range(steps):
            grads = grad_at(t, params)
            for n, p in params.items():
                p.grad = grads[n].clone()
            if clip:
                # In name order: the total norm's rounding depends on the order of the tensors.
                ordered_params = [params[n] for n in sorted(params)]
                torch.nn.utils.clip_grad_norm_(ordered_params, clip["max_norm"], norm_type(clip["norm_type"]))
            opt.step()
            if scheduler is not None:
                scheduler.step()
    final = {n: p.detach().clone() for n, p in params.items()}
    state = {}
    for n, p in params.items():
        for k, v in opt.state[p].items():
            if k == "step" or v is None:
                continue
            if k not in STATE_KEYS:
                raise RuntimeError(f"unexpected state key {k!r} for {optimizer}")
            if not isinstance(v, torch.Tensor):
                raise RuntimeError(f"state {k!r} is {type(v)}")
            state[f"{n}.{k}"] = v.detach().to(torch.float32).clone().contiguous()
    return final, state


def run_case(spec, out_dir):
    seed = fnv1a(spec["name"])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    prob = PROBLEM_FNS[spec["problem"]](rng)
    opt, hp = spec["optimizer"], spec["hyperparameters"]

    if prob.kind == "groups":
        ov1, ov2 = group_overrides(opt, hp)
        param_groups = [
            {"params": prob.groups[0]},
            {"params": prob.groups[1], **ov1},
            {"params": prob.groups[2], **ov2},
        ]
        write_groups = True
    else:
        param_groups = [{"params": prob.names}]
        write_groups = spec["explicit_single_group"]

    steps = prob.steps
    recorded = {n: np.empty((steps,) + s, dtype=np.float32) for n, s in prob.shapes.items()}

    def grad_at(t, params):
        if prob.grad_fn is not None:
            cur = {n: p.detach().numpy().copy() for n, p in params.items()}
            g = prob.grad_fn(t, cur)
        else:
            g = {n: prob.grads[n][t] for n in prob.names}
        out = {}
        for n in prob.names:
            recorded[n][t] = g[n]
            out[n] = torch.from_numpy(np.array(g[n], dtype=np.float32))
        return out

    final, state = run_torch(opt, hp, param_groups, prob.init, steps, grad_at, spec.get("training"))

    for k, v in {**final, **state}.items():
        if not torch.isfinite(v).all():
            raise RuntimeError(f"{spec['name']}: non-finite values in {k}")

    case_dir = out_dir / spec["name"]
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    run = {"optimizer": opt, "hyperparameters": hp}
    if write_groups:
        run["param_groups"] = param_groups
    for key, value in (spec.get("training") or {}).items():
        if value is not None:
            run[key] = value
    (case_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    save_file({n: torch.from_numpy(prob.init[n].copy()) for n in prob.names},
              str(case_dir / "params.safetensors"))
    save_file({n: torch.from_numpy(recorded[n]) for n in prob.names},
              str(case_dir / "grads.safetensors"))
    save_file({**final, **state}, str(case_dir / "expected.safetensors"))
    return prob, sorted({k.split(".", 1)[1] for k in state})


def manifest_entry(spec, prob):
    return {
        "name": spec["name"],
        "optimizer": spec["optimizer"],
        "flags": spec["hyperparameters"],
        **{k: v for k, v in (spec.get("training") or {}).items() if v is not None},
        "problem": spec["problem"],
        "steps": prob.steps,
        "elements": prob.elements,
    }


def check_case(case_dir):
    """Replay a case from its files alone; require a bit-exact match."""
    run = json.loads((case_dir / "run.json").read_text())
    params = load_file(str(case_dir / "params.safetensors"))
    grads = load_file(str(case_dir / "grads.safetensors"))
    expected = load_file(str(case_dir / "expected.safetensors"))
    assert set(params) == set(grads), case_dir
    names = sorted(params)
    groups = run.get("param_groups", [{"params": names}])
    in_groups = [n for g in groups for n in g["params"]]
    assert sorted(in_groups) == names, "every tensor in exactly one group"
    steps = {grads[n].shape[0] for n in names}
    assert len(steps) == 1, "same step count for every tensor"
    steps = steps.pop()
    for n in names:
        assert params[n].dtype == torch.float32 and params[n].dim() >= 1
        assert grads[n].dtype == torch.float32
        assert tuple(grads[n].shape) == (steps,) + tuple(params[n].shape)
    final, state = run_torch(
        run["optimizer"], run["hyperparameters"], groups,
        {n: params[n].numpy() for n in names}, steps,
        lambda t, _p: {n: grads[n][t] for n in names},
        {k: run[k] for k in ("scheduler", "clip_grad_norm") if k in run},
    )
    got = {**final, **state}
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for k, v in expected.items():
        assert v.dtype == torch.float32, k
        assert v.shape == got[k].shape, (k, v.shape, got[k].shape)
        assert torch.equal(v, got[k]), f"{case_dir.name}: {k} differs on replay"
        if k in params:
            assert not torch.equal(v, params[k]), f"{case_dir.name}: {k} did not move"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "cases")
    ap.add_argument("--only", default=None, help="regenerate only cases matching REGEX")
    ap.add_argument("--check", action="store_true",
                    help="replay every written case from its files and compare bit-exactly")
    args = ap.parse_args()

    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    specs = build_specs()
    defined = {s["name"] for s in specs}

    # Delete stale case directories (ours = directories holding a run.json).
    for d in sorted(out.iterdir()):
        if d.is_dir() and (d / "run.json").exists() and d.name not in defined:
            print(f"removing stale case {d.name}")
            shutil.rmtree(d)

    only = re.compile(args.only) if args.only else None
    entries, written, missing = [], [], []
    for spec in specs:
        if only is None or only.search(spec["name"]):
            prob, keys = run_case(spec, out)
            written.append(spec["name"])
            print(f"{spec['name']:<48} {spec['problem']:<11} steps={prob.steps:<5} "
                  f"elements={prob.elements:<4} state={','.join(keys) or '-'}")
        else:
            prob = PROBLEM_FNS[spec["problem"]](np.random.default_rng(0))
        case_dir = out / spec["name"]
        if all((case_dir / f).exists() for f in
               ("run.json", "params.safetensors", "grads.safetensors", "expected.safetensors")):
            entries.append(manifest_entry(spec, prob))
        else:
            missing.append(spec["name"])

    manifest = {"torch_version": torch.__version__, "cases": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    if args.check:
        for name in written:
            check_case(out / name)
        print(f"check: {len(written)} cases replayed bit-exactly from their files")

    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    per_opt = {o: sum(1 for e in entries if e["optimizer"] == o) for o in OPTIMIZERS}
    print(f"wrote {len(written)} of {len(specs)} cases to {out} "
          f"(manifest lists {len(entries)}; {size / 1e6:.2f} MB in total; torch {torch.__version__})")
    print("per optimizer: " + ", ".join(f"{o} {n}" for o, n in per_opt.items()))
    if missing:
        print(f"warning: {len(missing)} defined cases have no files yet: {', '.join(missing)}")


if __name__ == "__main__":
    main()
