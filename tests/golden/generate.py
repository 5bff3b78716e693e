#!/usr/bin/env python3
"""Generate the golden optimizer test cases under ``tests/golden/cases/``.

Every case runs one ``torch.optim`` optimizer (SGD, Adagrad, RMSprop, Adadelta,
Adam, AdamW, NAdam, Adamax, RAdam, Rprop, ASGD, Adafactor, Muon, SparseAdam), ``timm.optim.Lamb``,
``lion_pytorch.Lion`` (its plain PyTorch update_fn), the Adan authors' ``adan.Adan``
(sail-sg/Adan's adan.py at ADAN_COMMIT, imported from $ADAN_REFERENCE) or Meta's
``schedulefree.AdamWScheduleFree`` -- in the mixed-rule
training loops two of them -- for a fixed number of steps on the CPU in float32
(single-tensor path), with fixed seeds, and records everything a reimplementation
needs to replay it:

    cases/<case_name>/run.json             optimizer class name, hyper-parameters
                                           (torch kwarg names; only the ones that
                                           differ from torch's defaults, plus "lr",
                                           plus our own keys (OUR_KEYS) always),
                                           optional "param_groups" (a group may name
                                           its own "optimizer"), optional training-loop
                                           keys ("scheduler", "clip_grad_norm",
                                           "loss_scale"), AdamWScheduleFree's
                                           "eval_every" / "eval_at_end"
    cases/<case_name>/params.safetensors   initial parameters, float32, by name
    cases/<case_name>/grads.safetensors    per parameter ``w``: ``w`` with shape
                                           [steps, *shape(w)], the gradient of
                                           every step; SparseAdam cases add
                                           ``w.rows`` [steps, rows], 1.0 where a
                                           row is in the step's sparse gradient;
                                           cases with absent gradients (problem
                                           "absent") add, for every parameter,
                                           ``w.present`` [steps] float32: 1.0
                                           where the step has a gradient, 0.0
                                           where torch got ``p.grad = None``
                                           (``w``'s row of that step is all 0)
    cases/<case_name>/expected.safetensors final parameters (by name) and final
                                           optimizer state as ``<name>.<key>``
                                           (torch's state keys, ``step`` omitted,
                                           None entries omitted; NAdam's
                                           ``mu_product`` is 0-d; Adafactor's
                                           ``row_var``/``col_var`` in torch's
                                           keepdim shapes; AdamWScheduleFree's
                                           ``z`` beside ``exp_avg_sq``)
    cases/manifest.json                    index of all cases + the references' versions

Torch is driven as: build the optimizer (foreach=False where it has the argument), then per
step ``p.grad = grads[step].clone()`` for every parameter (``p.grad = None`` for a parameter
whose ``w.present`` is 0 at that step) and ``opt.step()``, under ``torch.no_grad()``.

Requirements (only to regenerate): ``pip install torch safetensors numpy timm lion-pytorch
schedulefree==1.4.1`` (timm provides the Lamb reference, lion-pytorch the Lion one,
schedulefree AdamWScheduleFree), and ADAN_REFERENCE naming a
directory holding sail-sg/Adan's adan.py at ADAN_COMMIT (not vendored; see README.md).
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
import contextlib
import inspect
import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

OPTIMIZERS = ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "NAdam",
              "Adamax", "RAdam", "Rprop", "Lion", "ASGD", "Adan"]
# Rules with hand-picked flag sets and problems of their own (rule_specs,
# sparse_schedulefree_specs): torch's Adafactor, Muon and SparseAdam, timm's Lamb
# (timm.optim.Lamb) and schedulefree's AdamWScheduleFree.
NEW_RULES = ["Adafactor", "Muon", "Lamb", "SparseAdam", "AdamWScheduleFree"]
PROBLEMS = ["awkward", "groups", "zeros", "magnitudes", "sparse_rows"]  # + "long"
# Problems are assigned to an optimizer's flag combinations with quotas taken
# from this cycle (the two big problems, awkward and sparse_rows, come up half
# as often as the small ones, to keep the committed files small), greedily so
# that every flag value meets as many problems as possible (no flag ends up
# tied to one problem). Every optimizer meets every problem (asserted).
PROBLEM_CYCLE = ["awkward", "groups", "zeros", "magnitudes",
                 "sparse_rows", "groups", "zeros", "magnitudes"]
ADAM_LIKE = {"Adam", "AdamW", "NAdam", "Adamax", "RAdam"}

# Learning rate used by every case of an optimizer unless the variant sets one.
BASE_LR = {
    "SGD": 0.05,
    "Adagrad": 0.05,
    "RMSprop": 0.01,
    "Adadelta": 1.0,
    "Adam": 0.01,
    "AdamW": 0.01,
    "NAdam": 0.01,
    "Adafactor": 0.01,
    "Muon": 0.02,
    "Lamb": 0.01,
    "Adamax": 0.01,
    "RAdam": 0.01,
    "Rprop": 0.01,
    # lion-pytorch's default is 1e-4; 1e-3 moves parameters measurably in 100 steps.
    "Lion": 0.001,
    "ASGD": 0.01,
    # The authors' default is 1e-3; 1e-2 moves parameters measurably in 100 steps.
    "Adan": 0.01,
    # torch's default is 1e-3, too small to move much in 60 steps.
    "SparseAdam": 0.01,
    # schedulefree's default is 0.0025 (the parameters move by ~0.04 in 100 steps); 1e-2 as
    # for Adam.
    "AdamWScheduleFree": 0.01,
}

# The reference Adan: adan.py of https://github.com/sail-sg/Adan at this commit, imported from
# the directory (or file) named by the environment variable ADAN_REFERENCE (not vendored here).
ADAN_COMMIT = "2c65beaf400775753b155da4082c3819fea689b9"

# Hyper-parameters of ours that torch does not have, with the value that means torch's own
# behaviour. They are written in every case of the rule and stripped before torch sees them.
#   Muon "ns_precision": the dtype of the Newton-Schulz iteration; torch computes it in
#   bfloat16, "float32" runs an otherwise identical copy in float32 (see ns_precision()).
OUR_KEYS = {"Muon": {"ns_precision": "bfloat16"}}

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
    "row_var",
    "col_var",
    "variance",
    "exp_inf",
    "prev",
    "step_size",
    "eta",
    "mu",
    "ax",
    "exp_avg_diff",
    "neg_pre_grad",
    "z",
}

# Optimizers with schedulefree's train()/eval() modes: train() once before the first step;
# run.json's "eval_every" (eval() then train() after every K-th step) and "eval_at_end"
# (eval() after the last step: the expected parameters are then x, not y).
SCHEDULE_FREE = {"AdamWScheduleFree"}

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
    if opt == "Adamax":
        return [(x, None) for x in product(wd01, mx)] + [
            ({"betas": (0.8, 0.99), "eps": 1e-6}, "sparse_rows")
        ]
    if opt == "RAdam":
        wdmode = [
            {},
            {"weight_decay": 1e-2},
            {"weight_decay": 1e-2, "decoupled_weight_decay": True},
        ]
        # betas (0.8, 0.9): rho_inf = 19, rectified from step 3 on (step 6 with the defaults).
        return [(x, None) for x in product(wdmode, mx)] + [({"betas": (0.8, 0.9)}, "magnitudes")]
    if opt == "Rprop":
        v = product(
            [{}, {"etas": (0.3, 1.5)}, {"step_sizes": (1e-4, 0.05)}],
            mx,
        )
        return [(x, None) for x in v]
    if opt == "Lion":
        v = product(
            [{"weight_decay": 0.0}, {"weight_decay": 1.0}],
            [{"betas": (0.9, 0.99)}, {"betas": (0.95, 0.98)}],
        )
        # beta1 0: the update is sign(g), exactly 0 where the gradient is.
        return [(x, None) for x in v] + [({"betas": (0.0, 0.99)}, "sparse_rows")]
    if opt == "ASGD":
        # lambd 0.05: eta decays visibly; t0 20: the averaging (mu != 1) starts at step 22.
        v = product(wd01, mx, [{}, {"lambd": 0.05, "t0": 20.0}])
        return [(x, None) for x in v] + [({"lambd": 0.5, "alpha": 1.0, "t0": 3.0}, "magnitudes")]
    if opt == "Adan":
        v = product(
            [{"weight_decay": 0.0}, {"weight_decay": 0.02}],
            [{"no_prox": False}, {"no_prox": True}],
            [{}, {"betas": (0.9, 0.9, 0.999)}],
        )
        return [(x, None) for x in v] + [({"eps": 1e-6, "weight_decay": 0.02}, "magnitudes")]
    raise ValueError(opt)


_DEFAULTS = {}


def optimizer_class(opt):
    """The reference class of an optimizer name: torch.optim's, or timm's Lamb."""
    if opt == "Lamb":
        import timm.optim

        return timm.optim.Lamb
    if opt == "Adan":
        return adan_class()
    if opt == "Lion":
        import lion_pytorch

        return lion_pytorch.Lion
    if opt == "AdamWScheduleFree":
        import schedulefree

        return schedulefree.AdamWScheduleFree
    return getattr(torch.optim, opt)


def adan_class():
    """adan.Adan from the checkout named by ADAN_REFERENCE (a directory holding adan.py, or the
    file itself), e.g. `git show 2c65bea:adan.py > /tmp/adan/adan.py; ADAN_REFERENCE=/tmp/adan`."""
    import importlib.util
    import os

    where = os.environ.get("ADAN_REFERENCE")
    if not where:
        raise SystemExit(f"Adan cases need the reference: set ADAN_REFERENCE to a directory holding adan.py "
                         f"from https://github.com/sail-sg/Adan at commit {ADAN_COMMIT}")
    path = Path(where)
    if path.is_dir():
        path = path / "adan.py"
    if not path.is_file():
        raise SystemExit(f"ADAN_REFERENCE={where}: no adan.py there (sail-sg/Adan at commit {ADAN_COMMIT})")
    spec = importlib.util.spec_from_file_location("adan_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Adan


def timm_version():
    import timm

    return timm.__version__


def lion_version():
    from importlib.metadata import version

    return version("lion-pytorch")


def schedulefree_version():
    from importlib.metadata import version

    return version("schedulefree")


def torch_defaults(opt):
    if opt not in _DEFAULTS:
        # 2-D: Muon accepts nothing else.
        dummy = optimizer_class(opt)([torch.zeros(1, 1, requires_grad=True)])
        _DEFAULTS[opt] = dict(dummy.defaults)
    return _DEFAULTS[opt]


def jsonable(v):
    if isinstance(v, (tuple, list)):
        return [jsonable(x) for x in v]
    return v


def same(a, b):
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return list(a) == list(b)
    return a == b


def hyperparameters(opt, variant):
    """lr always, plus every varied flag that differs from torch's default, plus our own
    keys (OUR_KEYS) always."""
    d = torch_defaults(opt)
    ours = OUR_KEYS.get(opt, {})
    hp = {"lr": variant.get("lr", BASE_LR[opt])}
    for k, v in variant.items():
        if k == "lr" or k in ours:
            continue
        assert k in d and k not in NEVER, (opt, k)
        if not same(v, d[k]):
            hp[k] = jsonable(v)
    for k, default in ours.items():
        hp[k] = variant.get(k, default)
    return hp


def fmt(v):
    if v is None:
        return "none"
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
            t.append("nesterov" if v else "nonesterov")
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
            t.append("eps" + ("-".join(fmt(x) for x in v) if isinstance(v, list) else fmt(v)))
        elif k == "centered":
            t.append("centered")
        elif k == "alpha":
            t.append("alpha" + fmt(v))
        elif k == "rho":
            t.append("rho" + fmt(v))
        elif k == "amsgrad":
            t.append("amsgrad")
        elif k == "betas":
            t.append("betas" + "-".join(fmt(x) for x in v))
        elif k == "momentum_decay":
            t.append("mdecay" + fmt(v))
        elif k == "beta2_decay":
            t.append("b2decay" + fmt(v))
        elif k == "d":
            t.append("d" + fmt(v))
        elif k == "ns_coefficients":
            t.append("nscoef")
        elif k == "ns_steps":
            t.append("ns" + fmt(v))
        elif k == "adjust_lr_fn":
            t.append({"original": "adj-original", "match_rms_adamw": "adj-rms",
                      "spectral_unclamped": "adj-spectral"}[v])
        elif k == "ns_precision":
            t.append({"bfloat16": "bf16", "float32": "f32"}[v])
        elif k == "bias_correction":
            t.append("nobiascorr")
        elif k == "grad_averaging":
            t.append("nogradavg")
        elif k == "max_grad_norm":
            t.append("noclip" if v is None else "maxnorm" + fmt(v))
        elif k == "trust_clip":
            t.append("trustclip")
        elif k == "always_adapt":
            t.append("alwaysadapt")
        elif k == "decoupled_decay":
            t.append("decoupled")
        elif k == "etas":
            t.append("etas" + fmt(v[0]) + "-" + fmt(v[1]))
        elif k == "step_sizes":
            t.append("stepsizes" + fmt(v[0]) + "-" + fmt(v[1]))
        elif k == "no_prox":
            t.append("noprox")
        elif k == "lambd":
            t.append("lambd" + fmt(v))
        elif k == "t0":
            t.append("t" + fmt(v))
        elif k == "warmup_steps":
            t.append("warmup" + fmt(v))
        elif k == "r":
            t.append("r" + fmt(v))
        elif k == "weight_lr_power":
            t.append("wlrpow" + fmt(v))
        else:
            raise ValueError((opt, k, d.get(k)))
    return t


# Optimizers whose lr is one of the varied flags (so it goes into the name).
LR_IN_NAME = {"Adadelta", "Adafactor"}

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
    "etas",
    "step_sizes",
    "lambd",
    "t0",
    "warmup_steps",
    "r",
    "weight_lr_power",
    "momentum_decay",
    "beta2_decay",
    "d",
    "ns_steps",
    "ns_coefficients",
    "adjust_lr_fn",
    "bias_correction",
    "grad_averaging",
    "max_grad_norm",
    "trust_clip",
    "always_adapt",
    "weight_decay",
    "decoupled_weight_decay",
    "decoupled_decay",
    "no_prox",
    "maximize",
    "ns_precision",
]


def ordered(hp):
    keys = sorted(hp, key=TOKEN_ORDER.index)
    return {k: hp[k] for k in keys}


# --------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------


class Problem:
    """shapes: ordered {name: shape}; init: {name: np.float32 array};
    groups: list of name lists (one entry = single group; a spec's "group_overrides"
    pairs with it);
    grads: {name: np.float32 [steps, *shape]} or None;
    grad_fn: callable(step, {name: current param np array}) -> {name: grad}, or with
    scales_loss, callable(step, params, loss_scale) -> the gradients of the loss
    multiplied by loss_scale (otherwise loss-scaled cases multiply the gradients);
    rows: None, or (sparse-gradient problems, SparseAdam) {name: bool [steps, R]}, the rows
    (see sparse_rows_of) in each step's sparse gradient; the gradients are 0 elsewhere;
    present: None, or (absent gradients) {name: bool [steps]}, False where torch gets
    p.grad = None at that step (the recorded gradient of that step is all 0)."""

    def __init__(self, kind, shapes, init, groups, steps, grads=None, grad_fn=None,
                 scales_loss=False, rows=None, present=None):
        self.kind = kind
        self.shapes = shapes
        self.init = init
        self.groups = groups
        self.steps = steps
        self.grads = grads
        self.grad_fn = grad_fn
        self.scales_loss = scales_loss
        self.rows = rows
        self.present = present

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


# Problems of the new rules (Adafactor, Muon, Lamb) and of the mixed-rule training loops.


def problem_factored(rng):
    # Adafactor: factored 1xN and Nx1 matrices, a 3-D tensor (factored over its last two
    # dims), a vector that starts at exactly 0 (so eps2 bounds the update scale), and
    # zero gradients: "col" at step 0 (state from a 0 gradient), one row of "cube" in a
    # third of the steps (var_estimate 0, clamped by eps1^2).
    shapes = {"row": (1, 50), "col": (40, 1), "cube": (5, 7, 9), "v7": (7,)}
    steps = 25
    init = {n: f32(rng.normal(0.0, 1.0, size=s)) for n, s in shapes.items()}
    init["v7"] = f32(np.zeros(shapes["v7"]))
    grads = normal_grads(rng, shapes, steps)
    grads["col"][0] = 0.0
    grads["cube"][rng.random(size=steps) < 0.35, :, 2, :] = 0.0
    return Problem("factored", shapes, init, [list(shapes)], steps, grads=grads)


def problem_rect(rng):
    # Adafactor: a 17x33 matrix whose gradient rows differ in scale (1e-3..1e3) and a vector.
    shapes = {"w": (17, 33), "v130": (130,)}
    steps = 20
    init = {n: f32(rng.normal(0.0, 1.0, size=s)) for n, s in shapes.items()}
    row_scale = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), size=(17, 1)))
    grads = {"w": f32(rng.normal(0.0, 1.0, size=(steps, 17, 33)) * row_scale),
             "v130": f32(rng.normal(0.0, 1.0, size=(steps, 130)))}
    return Problem("rect", shapes, init, [list(shapes)], steps, grads=grads)


def problem_wide(rng):
    # Adafactor: rows of 1,000 and columns of 400 (each mean spans several workgroups).
    shapes = {"w": (3, 1000), "tall": (400, 2)}
    steps = 20
    init = {n: f32(rng.normal(0.0, 1.0, size=s)) for n, s in shapes.items()}
    return Problem("wide", shapes, init, [list(shapes)], steps,
                   grads=normal_grads(rng, shapes, steps))


def problem_big(rng):
    # Adafactor: one 512x512 matrix, one step (each step costs 1 MB of gradients, and the
    # initial and final parameters 1 MB each). In step 1 the EMA weight is 1, so the state
    # is only written; "wide" carries long rows and columns of state over 20 steps.
    shapes = {"w": (512, 512)}
    steps = 1
    init = {n: f32(rng.normal(0.0, 1.0, size=s)) for n, s in shapes.items()}
    return Problem("big", shapes, init, [list(shapes)], steps,
                   grads=normal_grads(rng, shapes, steps))


def problem_matrices(rng):
    # Muon: wide and tall matrices (the tall ones go through the transposed path), 1xN and
    # Nx1, a square one whose first gradient is 0 (the Newton-Schulz input is 0: its norm
    # is clamped by eps). Initialised like Linear weights, N(0, 1/cols).
    shapes = {"a": (17, 33), "at": (33, 17), "row": (1, 40), "col": (40, 1), "sq": (8, 8)}
    steps = 12
    init = {n: f32(rng.normal(0.0, 1.0, size=s) / np.sqrt(s[1])) for n, s in shapes.items()}
    grads = normal_grads(rng, shapes, steps)
    grads["sq"][0] = 0.0
    return Problem("matrices", shapes, init, [list(shapes)], steps, grads=grads)


def problem_matrix64(rng):
    # Muon: a 64x48 matrix.
    shapes = {"w": (64, 48)}
    steps = 10
    init = {n: f32(rng.normal(0.0, 1.0, size=s) / np.sqrt(s[1])) for n, s in shapes.items()}
    return Problem("matrix64", shapes, init, [list(shapes)], steps,
                   grads=normal_grads(rng, shapes, steps))


def problem_scaled(rng):
    # Lamb: the awkward problem's sizes; every step's gradients are scaled by one factor
    # in [0.005, 0.2], so the global gradient norm (~17.7 x the factor) is sometimes above
    # and sometimes below max_grad_norm 1.0 and always above 0.1. "b3" starts at exactly 0
    # (weight norm 0: trust ratio 1), "scalar" has a 0 gradient at step 0. Two groups for
    # cases that split them: weights and the rest.
    shapes = {"scalar": (1,), "b3": (3,), "v17": (17,), "w130": (130,), "w2d": (33, 7)}
    steps = 50
    init = {n: f32(rng.normal(0.0, 1.0, size=s)) for n, s in shapes.items()}
    init["b3"] = f32(np.zeros(shapes["b3"]))
    factor = np.exp(rng.uniform(np.log(0.005), np.log(0.2), size=steps))
    grads = {n: f32(rng.normal(0.0, 1.0, size=(steps,) + s) * factor.reshape((steps,) + (1,) * len(s)))
             for n, s in shapes.items()}
    grads["scalar"][0] = 0.0
    groups = [["v17", "w130", "w2d"], ["scalar", "b3"]]
    return Problem("scaled", shapes, init, groups, steps, grads=grads)


def problem_mlp(rng, overflow=False):
    # A small network trained on a fixed teacher, its gradients from torch autograd:
    #   x = concat(emb[tok0], emb[tok1], emb[tok2])       (batch 16, 24)
    #   h = tanh(tanh(x w1^T + b1) w2^T + b2)            w1 16x24, w2 16x16
    #   y = layer_norm(h) * norm, out = y w3^T            w3 24x16
    #   loss = mean((out - concat(T[tok2], T[tok0], T[tok1]))^2)
    # Groups: the hidden matrices, embedding + norm weight, biases. The gradient is that of
    # loss * loss_scale (what the backward pass of GradScaler.scale(loss) gives); with
    # overflow, a few steps get non-finite entries in tensors of every group (as an overflow
    # in the scaled backward pass would), so GradScaler skips them for every optimizer.
    vocab, dim, batch = 30, 8, 16
    shapes = {"emb": (vocab, dim), "w1": (16, 24), "b1": (16,), "w2": (16, 16), "b2": (16,),
              "norm": (16,), "w3": (24, 16)}
    steps = 40 if overflow else 30
    init = {
        "emb": rng.normal(0.0, 1.0, size=(vocab, dim)),
        "w1": rng.normal(0.0, 1.0, size=(16, 24)) / np.sqrt(24),
        "b1": np.zeros(16),
        "w2": rng.normal(0.0, 1.0, size=(16, 16)) / np.sqrt(16),
        "b2": np.zeros(16),
        "norm": np.ones(16),
        "w3": rng.normal(0.0, 1.0, size=(24, 16)) / np.sqrt(16),
    }
    init = {n: f32(a) for n, a in init.items()}
    teacher = torch.from_numpy(f32(rng.normal(0.0, 1.0, size=(vocab, dim))))
    tokens = torch.from_numpy(rng.integers(0, vocab, size=(steps, batch, 3)))
    nonfinite = {}  # step -> [(name, index, value)]
    if overflow:
        nonfinite = {
            7: [("w2", (3, 5), np.inf), ("emb", (int(tokens[7, 0, 0]), 2), -np.inf)],
            8: [("w1", (0, 0), np.inf), ("b1", (4,), np.inf)],
            23: [("w3", (10, 3), np.nan), ("norm", (5,), np.inf), ("b2", (0,), -np.inf)],
        }

    def grad_fn(t, cur, scale):
        with torch.enable_grad():
            p = {n: torch.from_numpy(cur[n]).requires_grad_(True) for n in shapes}
            tok = tokens[t]
            x = p["emb"][tok].reshape(batch, 3 * dim)
            h = torch.tanh(torch.tanh(x @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"])
            y = torch.nn.functional.layer_norm(h, (16,), weight=p["norm"])
            out = y @ p["w3"].T
            target = torch.cat([teacher[tok[:, 2]], teacher[tok[:, 0]], teacher[tok[:, 1]]], dim=1)
            loss = ((out - target) ** 2).mean()
            scaled = loss * torch.tensor(scale, dtype=torch.float32)
            g = torch.autograd.grad(scaled, [p[n] for n in shapes])
        out = {n: f32(gi.numpy()) for n, gi in zip(shapes, g)}
        for name, index, value in nonfinite.get(t, []):
            out[name][index] = value
        return out

    groups = [["w1", "w2", "w3"], ["emb", "norm"], ["b1", "b2"]]
    return Problem("mlp_inf" if overflow else "mlp", shapes, init, groups, steps,
                   grad_fn=grad_fn, scales_loss=True)


# Sparse-gradient problems (SparseAdam). A "row" is a row of the last dimension: a tensor
# of shape S with ndim >= 2 has prod(S[:-1]) rows of S[-1] elements (row r: the flat
# elements [r*S[-1], (r+1)*S[-1])), a vector S[0] rows of one element. torch gets
# each step's gradient as a sparse COO tensor listing the touched rows (sparse_grad).


def sparse_rows_of(shape):
    """(number of rows, elements per row) of a tensor of this shape."""
    if len(shape) == 1:
        return shape[0], 1
    return int(np.prod(shape[:-1])), shape[-1]


def sparse_grad(dense, rows):
    """The sparse COO gradient torch's SparseAdam gets: the rows marked in `rows` (bool [R]) of
    `dense` (a torch float32 tensor, 0 outside those rows), indices over the first ndim-1
    dims (sparse_dim = ndim-1, values [nnz, S[-1]]; a vector: sparse_dim 1, values [nnz]).
    Coalesced with sorted indices; rows whose values are all 0 are listed all the same."""
    shape = tuple(dense.shape)
    count, length = sparse_rows_of(shape)
    touched = np.flatnonzero(np.asarray(rows))
    assert len(rows) == count
    if len(shape) == 1:
        indices = torch.from_numpy(touched.astype(np.int64)).reshape(1, -1)
        values = dense[torch.from_numpy(touched.astype(np.int64))]
    else:
        indices = torch.from_numpy(np.stack(np.unravel_index(touched, shape[:-1])).astype(np.int64))
        indices = indices.reshape(len(shape) - 1, len(touched))
        values = dense.reshape(count, length)[torch.from_numpy(touched.astype(np.int64))]
    g = torch.sparse_coo_tensor(indices, values.clone(), shape, check_invariants=True).coalesce()
    assert g._nnz() == len(touched) and torch.equal(g._indices(), indices)
    assert torch.equal(g.to_dense(), dense), "the dense gradient must be 0 outside its rows"
    return g


def sparse_values(rng, steps, shape, touched, zero_rows=0.1):
    """N(0,1) gradients [steps, *shape] in the touched rows (bool [steps, R]), 0 elsewhere; a
    `zero_rows` share of the touched rows have all-zero values (still listed: SparseAdam
    decays the moments there), and about 5% of the other touched elements are 0."""
    count, length = sparse_rows_of(shape)
    g = rng.normal(0.0, 1.0, size=(steps, count, length))
    g[rng.random(size=(steps, count, length)) < 0.05] = 0.0
    g[rng.random(size=(steps, count)) < zero_rows] = 0.0
    g[~touched] = 0.0
    return f32(g.reshape((steps,) + shape))


def problem_embedding(rng):
    # SparseAdam: an embedding table (rows of 7: not a multiple of 4 elements), a 3-D tensor
    # (rows of its last dim, indices over the first two) and a vector (rows of one element);
    # ~30% of the rows touched per step, ~10% of those with all-zero values. vec has no
    # touched row at step 0 (state created, step counted, nothing updated), cube none at
    # steps 17-19, emb none at the last step, nothing at all is touched at step 33, and
    # emb's row 49 never is. Two groups for cases that split them.
    shapes = {"emb": (50, 7), "cube": (4, 5, 6), "vec": (37,)}
    steps = 60
    init = {n: f32(rng.normal(0.0, 1.0, size=s)) for n, s in shapes.items()}
    rows, grads = {}, {}
    for n, s in shapes.items():
        rows[n] = rng.random(size=(steps, sparse_rows_of(s)[0])) < 0.3
    rows["vec"][0] = False
    rows["cube"][17:20] = False
    rows["emb"][steps - 1] = False
    rows["emb"][:, 49] = False
    for n in shapes:
        rows[n][33] = False
    for n, s in shapes.items():
        grads[n] = sparse_values(rng, steps, s, rows[n])
    groups = [["emb"], ["cube", "vec"]]
    return Problem("embedding", shapes, init, groups, steps, grads=grads, rows=rows)


def problem_sparse_long(rng):
    # SparseAdam over 300 steps: one 64x9 table whose rows are touched with probabilities
    # from 0.01 to 0.5 (log-uniform; some rows stay untouched for a long time while the bias
    # corrections move on), gradients g = h*(p - target) + 0.05 noise in the touched rows
    # computed from torch's current parameters (recorded), 3% of the touched rows all 0.
    shapes = {"table": (64, 9)}
    steps = 300
    target = rng.normal(0.0, 1.0, size=shapes["table"])
    curv = np.exp(rng.uniform(np.log(0.1), np.log(4.0), size=shapes["table"]))
    noise = rng.normal(0.0, 1.0, size=(steps,) + shapes["table"])
    init = {"table": f32(target + rng.normal(0.0, 2.0, size=shapes["table"]))}
    prob = np.exp(rng.uniform(np.log(0.01), np.log(0.5), size=64))
    rows = {"table": rng.random(size=(steps, 64)) < prob}
    zero = rng.random(size=(steps, 64)) < 0.03

    def grad_fn(t, cur):
        g = curv * (cur["table"].astype(np.float64) - target) + 0.05 * noise[t]
        g[~rows["table"][t] | zero[t]] = 0.0
        return {"table": f32(g)}

    return Problem("sparse_long", shapes, init, [list(shapes)], steps, grad_fn=grad_fn, rows=rows)


# Absent gradients: torch's p.grad = None on some steps (the optimizers skip the tensor: no
# state change, no move, and torch's per-tensor step count does not advance).


def problem_absent(rng):
    # Four small tensors, 14 steps, N(0,1) init and gradients, each with its own presence
    # pattern: w1 always present; b1 absent at steps 2, 5, 6 and 11; w2 absent at steps 0-4
    # (frozen at first: its state is created at step 5, its per-tensor step count starts
    # there); w3 absent at every odd step, the last step (13) included. The gradient rows
    # of absent steps are 0 (what grads.safetensors records there).
    shapes = {"w1": (5, 7), "b1": (7,), "w2": (6, 4), "w3": (3, 5)}
    steps = 14
    init = {n: f32(rng.normal(0.0, 1.0, size=s)) for n, s in shapes.items()}
    grads = normal_grads(rng, shapes, steps)
    present = {n: np.ones(steps, dtype=bool) for n in shapes}
    present["b1"][[2, 5, 6, 11]] = False
    present["w2"][:5] = False
    present["w3"][1::2] = False
    assert not present["w3"][steps - 1]
    for n in shapes:
        grads[n][~present[n]] = 0.0
    return Problem("absent", shapes, init, [list(shapes)], steps, grads=grads, present=present)


PROBLEM_FNS = {
    "awkward": problem_awkward,
    "groups": problem_groups,
    "zeros": problem_zeros,
    "magnitudes": problem_magnitudes,
    "sparse_rows": problem_sparse_rows,
    "long": problem_long,
    "factored": problem_factored,
    "rect": problem_rect,
    "wide": problem_wide,
    "big": problem_big,
    "matrices": problem_matrices,
    "matrix64": problem_matrix64,
    "scaled": problem_scaled,
    "mlp": problem_mlp,
    "mlp_inf": lambda rng: problem_mlp(rng, overflow=True),
    "embedding": problem_embedding,
    "sparse_long": problem_sparse_long,
    "absent": problem_absent,
}


def build_problem(spec, rng):
    """The spec's problem, cut to the spec's "steps" when it sets fewer, and to its 2-D tensors
    when the spec has "matrices_only" (Muon)."""
    prob = PROBLEM_FNS[spec["problem"]](rng)
    if spec.get("matrices_only"):
        keep = [n for n, s in prob.shapes.items() if len(s) == 2]
        prob.shapes = {n: prob.shapes[n] for n in keep}
        prob.init = {n: prob.init[n] for n in keep}
        prob.groups = [[n for n in g if n in keep] for g in prob.groups]
        prob.groups = [g for g in prob.groups if g]
        assert prob.grad_fn is None and prob.rows is None
        prob.grads = {n: prob.grads[n] for n in keep}
        if prob.present is not None:
            prob.present = {n: prob.present[n] for n in keep}
    steps = spec.get("steps", prob.steps)
    assert steps <= prob.steps, (spec["name"], steps, prob.steps)
    if steps < prob.steps:
        prob.steps = steps
        if prob.grads is not None:
            prob.grads = {n: g[:steps] for n, g in prob.grads.items()}
        if prob.rows is not None:
            prob.rows = {n: r[:steps] for n, r in prob.rows.items()}
        if prob.present is not None:
            prob.present = {n: r[:steps] for n, r in prob.present.items()}
    return prob


# --------------------------------------------------------------------------
# Case specs
# --------------------------------------------------------------------------


def group_overrides(opt, hp):
    """Overrides for the 2nd and 3rd group of the 'groups' problem."""
    d = torch_defaults(opt)
    if opt == "Rprop":  # no weight_decay: the 2nd group changes the step-size bounds
        bounds = hp.get("step_sizes", d["step_sizes"])
        ov1 = {"step_sizes": [1e-4, 0.05] if same(bounds, d["step_sizes"]) else [1e-6, 50]}
    else:
        wd = hp.get("weight_decay", d["weight_decay"])
        # 2nd group: weight_decay 0 (or 1e-2 when the case itself has none, so that
        # the override always changes something; 1.0 for Lion, whose lr is small).
        ov1 = {"weight_decay": 0.0 if wd != 0 else (1.0 if opt == "Lion" else 1e-2)}
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
    elif opt == "Rprop":
        ov2["etas"] = [0.3, 1.5] if same(hp.get("etas", d["etas"]), d["etas"]) else [0.6, 1.1]
    elif opt == "Lion":
        ov2["betas"] = [0.85, 0.995]
    elif opt == "Adan":
        ov2["betas"] = [0.85, 0.9, 0.995]
        ov2["eps"] = 1e-6
    elif opt == "ASGD":
        ov2["lambd"] = 0.2 if hp.get("lambd", d["lambd"]) != 0.2 else 0.1
        ov2["t0"] = 10.0
    elif opt == "Lamb":  # its default eps is 1e-6
        ov2["betas"] = [0.85, 0.995]
        ov2["eps"] = 1e-8
    elif opt == "AdamWScheduleFree":  # lr_max, weight_sum and k are per group
        ov2["betas"] = [0.85, 0.995]
        ov2["eps"] = 1e-6
        ov2["warmup_steps"] = 5
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
    specs.extend(rule_specs())
    specs.extend(sparse_schedulefree_specs())
    specs.extend(absent_specs())
    specs.extend(training_specs())
    specs.extend(mixed_specs())
    names = [s["name"] for s in specs]
    assert len(names) == len(set(names)), "duplicate case names"
    for s in specs:
        assert re.fullmatch(r"[a-z0-9.\-]+", s["name"]), s["name"]
    return sorted(specs, key=lambda s: s["name"])


def rule_specs():
    """Adafactor, Muon and Lamb: hand-picked flag sets (not the full cross product), each on
    problems chosen for the rule. Entries: (optimizer, varied flags, problem, steps or None
    for the problem's own, group overrides or None, extra name token or None)."""
    f32, bf16 = {"ns_precision": "float32"}, {"ns_precision": "bfloat16"}
    table = [
        ("Adafactor", {}, "factored", None, None, None),
        ("Adafactor", {}, "big", None, None, None),
        ("Adafactor", {"weight_decay": 0.1}, "rect", None, None, None),
        ("Adafactor", {"maximize": True}, "factored", None, None, None),
        # eps1 1e-30: eps1^2 underflows to 0 in float32, so no exactly-0 gradient rows here.
        ("Adafactor", {"eps": (1e-30, 1e-3)}, "rect", None, None, None),
        ("Adafactor", {"eps": (None, 1e-2), "weight_decay": 0.1}, "factored", None, None, None),
        ("Adafactor", {"d": 2.0, "maximize": True}, "rect", None, None, None),
        ("Adafactor", {"lr": 0.05, "beta2_decay": -0.5}, "wide", None, None, None),
        # Muon: bfloat16 (torch's Newton-Schulz) cases are kept short, its rounding compounds.
        ("Muon", {**bf16}, "matrices", 10, None, None),
        ("Muon", {**f32}, "matrices", None, None, None),
        ("Muon", {"nesterov": False, **bf16}, "matrices", 10, None, None),
        ("Muon", {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0, **f32}, "matrices", None, None, None),
        ("Muon", {"adjust_lr_fn": "original", **f32}, "matrices", None, None, None),
        ("Muon", {"adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.0, **f32}, "matrices", None, None, None),
        ("Muon", {"adjust_lr_fn": "match_rms_adamw", **bf16}, "matrices", 10, None, None),
        ("Muon", {"adjust_lr_fn": "spectral_unclamped", **f32}, "matrices", None, None, None),
        ("Muon", {"ns_steps": 3, "adjust_lr_fn": "spectral_unclamped", **bf16}, "matrices", 10, None, None),
        ("Muon", {"ns_steps": 3, "momentum": 0.9, **f32}, "matrix64", None, None, None),
        ("Muon", {"ns_coefficients": (1.5, -0.5, 0.0), "eps": 1e-5, "weight_decay": 0.0, **f32},
         "matrices", None, None, None),
        # Lamb (timm): weight_decay 0.01 and max_grad_norm 1.0 by default.
        ("Lamb", {}, "scaled", None, None, None),
        ("Lamb", {"max_grad_norm": None}, "scaled", None, None, None),
        ("Lamb", {"max_grad_norm": 0.1}, "scaled", None, None, None),
        ("Lamb", {}, "scaled", None, [{}, {"weight_decay": 0.0}], "2groups"),
        ("Lamb", {"trust_clip": True}, "groups", 100, None, None),
        ("Lamb", {"always_adapt": True, "weight_decay": 0.0}, "groups", 100, None, None),
        ("Lamb", {"decoupled_decay": True}, "groups", 100, None, None),
        ("Lamb", {"bias_correction": False}, "groups", 100, None, None),
        ("Lamb", {"grad_averaging": False, "max_grad_norm": None}, "groups", 100, None, None),
        ("Lamb", {"weight_decay": 0.0}, "groups", 100, None, None),
    ]
    return [table_spec(i, opt, variant, problem, steps, overrides, None, token)
            for i, (opt, variant, problem, steps, overrides, token) in enumerate(table)]


def table_spec(i, opt, variant, problem, steps, overrides, training, token):
    """The spec of row `i` of a hand-picked table: its name from the flags (and `token`),
    every third case with an explicit single group, the optional step count, group overrides
    and training-loop keys."""
    hp = ordered(hyperparameters(opt, variant))
    tokens = (name_tokens(opt, hp) or ["default"]) + ([token] if token else [])
    spec = {
        "name": "-".join([opt.lower()] + tokens + [problem.replace("_", "-")]),
        "optimizer": opt,
        "hyperparameters": hp,
        "problem": problem,
        "explicit_single_group": i % 3 == 1,
    }
    if steps is not None:
        spec["steps"] = steps
    if overrides is not None:
        spec["group_overrides"] = overrides
    if training is not None:
        spec["training"] = training
    return spec


def sparse_schedulefree_specs():
    """SparseAdam (torch.optim.SparseAdam, sparse COO gradients: the problem's rows) and
    AdamWScheduleFree (schedulefree 1.4.1): hand-picked flag sets. Entries: (optimizer, varied
    flags, problem, steps or None, group overrides or None, schedule-free modes ({"eval_every":
    K, "eval_at_end": True}) or None, extra name token or None)."""
    sf = "AdamWScheduleFree"
    table = [
        ("SparseAdam", {}, "embedding", None, None, None, None),
        ("SparseAdam", {"betas": (0.8, 0.99)}, "embedding", None, None, None, None),
        ("SparseAdam", {"eps": 1e-6}, "embedding", None, None, None, None),
        ("SparseAdam", {"maximize": True}, "embedding", None, None, None, None),
        ("SparseAdam", {}, "embedding", None, [{}, {"lr": 0.05}], None, "2groups"),
        ("SparseAdam", {}, "sparse_long", None, None, None, None),
        (sf, {}, "awkward", None, None, None, None),
        # groups: group 2 weight_decay 0.01, group 3 lr x0.1, betas (0.85, 0.995), eps 1e-6,
        # warmup_steps 5 (group_overrides).
        (sf, {}, "groups", None, None, None, None),
        (sf, {}, "long", None, None, None, None),
        (sf, {"warmup_steps": 10}, "zeros", None, None, None, None),
        (sf, {"r": 1.0}, "groups", None, None, None, None),
        # weight_lr_power only matters while lr_max changes: with the warmup.
        (sf, {"weight_lr_power": 0.0, "warmup_steps": 10}, "magnitudes", None, None, None, None),
        (sf, {"weight_decay": 0.01}, "sparse_rows", 100, None, None, None),
        (sf, {"betas": (0.95, 0.99), "eps": 1e-6}, "magnitudes", None, None, None, None),
        # eval() / train() every 7 steps (the y -> x -> y lerps do not round-trip exactly;
        # beta1 differs per group), eval() after the last step (expected: x).
        (sf, {}, "groups", None, None, {"eval_every": 7, "eval_at_end": True}, "eval7-evalend"),
        (sf, {}, "zeros", None, None, {"eval_at_end": True}, "evalend"),
    ]
    return [table_spec(i, opt, variant, problem, steps, overrides, modes, token)
            for i, (opt, variant, problem, steps, overrides, modes, token) in enumerate(table)]


def absent_specs():
    """One case per rule (SparseAdam aside) on the "absent" problem (some tensors get
    p.grad = None on some steps), with flags under which the step count matters where the rule
    has one. Muon's case has only the problem's matrices (w1, w2, w3). Entries: (optimizer,
    varied flags)."""
    table = [
        ("Adam", {"amsgrad": True, "weight_decay": 1e-2}),
        ("AdamW", {}),
        ("NAdam", {"weight_decay": 1e-2, "decoupled_weight_decay": False}),
        ("SGD", {"momentum": 0.9, "dampening": 0.1, "nesterov": False}),
        ("Adagrad", {"lr_decay": 0.01, "initial_accumulator_value": 0.1}),
        ("RMSprop", {"centered": True, "momentum": 0.5}),
        ("Adadelta", {}),
        ("Adamax", {}),
        # Rectified from (per-tensor) step 6 on.
        ("RAdam", {}),
        ("Rprop", {}),
        # eta decays visibly with the per-tensor step; the averaging (mu != 1) starts at step 5.
        ("ASGD", {"lambd": 0.5, "t0": 3.0}),
        ("Adafactor", {}),
        ("Lamb", {}),
        ("Adan", {}),
        ("Lion", {}),
        ("Muon", {"ns_precision": "float32"}),
        # The warmup follows the group's k (lr_max rises over the first 5 steps).
        ("AdamWScheduleFree", {"warmup_steps": 5}),
    ]
    specs = []
    for i, (opt, variant) in enumerate(table):
        spec = table_spec(i, opt, variant, "absent", None, None, None, None)
        if opt == "Muon":
            spec["matrices_only"] = True
        specs.append(spec)
    return specs


# torch.amp.GradScaler("cpu", **LOSS_SCALE) in the loss-scaled training loops.
LOSS_SCALE = {"init_scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 5}


def mixed_specs():
    """Training loops with two rules in one optimizer: Muon for the hidden matrices, AdamW
    (a group's "optimizer" key) for the embedding, the norm weight and the biases. Torch
    runs them as two optimizers stepped one after the other, behind one clip_grad_norm_ over
    every parameter and (lossscale) one GradScaler: unscale_ both, clip, step both, update."""
    muon = {"lr": 0.02, "ns_precision": "float32"}
    overrides = [
        {},
        {"optimizer": "AdamW", "lr": 0.01},
        {"optimizer": "AdamW", "lr": 0.01, "weight_decay": 0.0},
    ]
    clip = {"max_norm": 1.0, "norm_type": 2.0}
    scaler = LOSS_SCALE
    cases = [
        ("train-muon-adamw", "mlp", {}),
        ("train-muon-adamw-clip2", "mlp", {"clip_grad_norm": clip}),
        ("train-muon-adamw-clip2-lossscale", "mlp_inf", {"clip_grad_norm": clip, "loss_scale": scaler}),
    ]
    return [{
        "name": name,
        "optimizer": "Muon",
        "hyperparameters": muon,
        "problem": problem,
        "explicit_single_group": False,
        "group_overrides": overrides,
        "training": training,
    } for name, problem, training in cases]


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
        # Rprop creates step_size at its first step from the lr then: LinearLR has already scaled it.
        ("rprop-linear-warmup", "Rprop", {"lr": 0.01}, "zeros",
         {"name": "LinearLR", "start_factor": 0.1, "total_iters": 20}, None),
        # OneCycleLR cycles Lion's betas[0] (lion-pytorch's defaults have "betas").
        ("lion-onecycle-clip2", "Lion", {"lr": 0.001}, "awkward",
         {"name": "OneCycleLR", "max_lr": 0.003, "total_steps": 100}, {"max_norm": 5.0, "norm_type": 2.0}),
        # ASGD creates eta at its first step from the lr then (already scaled by LinearLR), and
        # each step's eta comes from the previous step's lr: the warmup and then the cosine decay
        # change it every step. lambd 0.05, t0 30: eta decays and the averaging starts in the run.
        # Adan's bias corrections follow the step count, its step sizes the scheduled lr.
        ("adan-exponential-clip2", "Adan", {"lr": 0.01, "weight_decay": 0.02}, "sparse_rows",
         {"name": "ExponentialLR", "gamma": 0.98}, {"max_norm": 2.0, "norm_type": 2.0}),
        ("asgd-warmup-cosine", "ASGD", {"lr": 0.05, "lambd": 0.05, "t0": 30.0}, "groups", warmup_cosine,
         {"max_norm": 2.0, "norm_type": 2.0}),
        # SparseAdam's state step counts every step with a (possibly empty) sparse gradient; the
        # lr halves at steps 20 and 40. No clip_grad_norm: sparse gradients are not clipped.
        ("sparseadam-steplr", "SparseAdam", {"lr": 0.01}, "embedding",
         {"name": "StepLR", "step_size": 20, "gamma": 0.5}, None),
        # AdamWScheduleFree: its warmup (10 steps) raises lr_max, StepLR then halves the lr every
        # 25 steps (lr_max stays): the weights (k+1)^r * lr_max^2 and the y update follow the
        # lr history (group 3 has its own warmup of 5 steps and lr x0.1). clip_grad_norm_ 1.0 is
        # active in every step.
        ("schedulefree-steplr-clip2", "AdamWScheduleFree", {"lr": 0.01, "warmup_steps": 10}, "groups",
         {"name": "StepLR", "step_size": 25, "gamma": 0.5}, {"max_norm": 1.0, "norm_type": 2.0}),
    ]
    specs = [{
        "name": f"train-{name}",
        "optimizer": opt,
        "hyperparameters": hp,
        "problem": problem,
        "explicit_single_group": False,
        "training": {"scheduler": scheduler, "clip_grad_norm": clip},
    } for name, opt, hp, problem, scheduler, clip in cases]
    # AdamWScheduleFree under a GradScaler (the mixed cases' config) on mlp_inf: steps 7, 8
    # and 23 have non-finite gradients and are skipped (k does not advance); constant lr.
    specs.append({
        "name": "train-schedulefree-lossscale",
        "optimizer": "AdamWScheduleFree",
        "hyperparameters": {"lr": BASE_LR["AdamWScheduleFree"]},
        "problem": "mlp_inf",
        "explicit_single_group": False,
        "training": {"scheduler": None, "clip_grad_norm": None, "loss_scale": LOSS_SCALE},
    })
    return specs


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


TUPLE_KEYS = {"betas", "eps", "ns_coefficients", "etas", "step_sizes"}


def torch_kwargs(d):
    return {k: (tuple(v) if k in TUPLE_KEYS and isinstance(v, list) else v) for k, v in d.items()}


_NS_FLOAT32 = []


def newton_schulz_float32():
    """torch's Muon Newton-Schulz iteration, copied from its source with torch.bfloat16
    replaced by torch.float32 (nothing else differs)."""
    if not _NS_FLOAT32:
        module = torch.optim._muon
        source = inspect.getsource(module._zeropower_via_newtonschulz)
        assert source.count("torch.bfloat16") == 1, "torch's Newton-Schulz changed; check the float32 copy"
        namespace = dict(vars(module))
        exec(compile(source.replace("torch.bfloat16", "torch.float32"), "<float32 newton-schulz>", "exec"),
             namespace)
        _NS_FLOAT32.append(namespace["_zeropower_via_newtonschulz"])
    return _NS_FLOAT32[0]


@contextlib.contextmanager
def ns_precision(precision):
    """Muon's "ns_precision" on the torch side: "bfloat16" is torch as it is; "float32"
    swaps the module-level _zeropower_via_newtonschulz (what _single_tensor_muon calls)
    for newton_schulz_float32() while the step runs."""
    if precision == "bfloat16":
        yield
        return
    assert precision == "float32", precision
    module = torch.optim._muon
    original = module._zeropower_via_newtonschulz
    module._zeropower_via_newtonschulz = newton_schulz_float32()
    try:
        yield
    finally:
        module._zeropower_via_newtonschulz = original


def build_optimizers(optimizer, hp, param_groups, params, foreach=False):
    """The torch optimizers of a run. A group without "optimizer" belongs to the top-level
    optimizer (constructor kwargs hp); a group with "optimizer": X to an X built with X's
    defaults (the group's keys are its overrides). Groups of one class go into one torch
    optimizer, in order, split further by our own keys (Muon's ns_precision, applied around
    step()). Single-tensor path everywhere (foreach=False where the class has it; foreach=True
    only to compare the paths). Schedule-free optimizers are put in train mode.
    Returns [(torch optimizer, step context factory)] in order of first appearance."""
    parts = {}
    for g in param_groups:
        cls_name = g.get("optimizer", optimizer)
        top = cls_name == optimizer and "optimizer" not in g
        ov = {k: v for k, v in g.items() if k not in ("params", "optimizer")}
        ours = {k: ov.pop(k, (hp if top else {}).get(k, default))
                for k, default in OUR_KEYS.get(cls_name, {}).items()}
        key = (cls_name, top, json.dumps(ours, sort_keys=True))
        if key not in parts:
            parts[key] = (ours, [])
        parts[key][1].append({"params": [params[n] for n in g["params"]], **torch_kwargs(ov)})
    out = []
    for (cls_name, top, _), (ours, groups) in parts.items():
        kwargs = {k: v for k, v in hp.items() if k not in OUR_KEYS.get(cls_name, {})} if top else {}
        if "foreach" in torch_defaults(cls_name):
            kwargs["foreach"] = foreach
        opt = optimizer_class(cls_name)(groups, **torch_kwargs(kwargs))
        if cls_name in SCHEDULE_FREE:
            opt.train()
        if cls_name == "Muon":
            context = (lambda precision: lambda: ns_precision(precision))(ours["ns_precision"])
        else:
            context = contextlib.nullcontext
        out.append((opt, context))
    return out


def run_torch(optimizer, hp, param_groups, init, steps, grad_at, training=None, rows_at=None,
              foreach=False, present_at=None):
    """Run torch.optim. param_groups: list of {"params": [names], **overrides} (a group may
    name another "optimizer", see build_optimizers).
    grad_at(step, {name: current param tensor}, loss scale) -> {name: float32 tensor}.
    rows_at: None, or (SparseAdam) rows_at(step) -> {name: bool [R]}: every gradient is then
    given as the sparse COO tensor of those rows (sparse_grad).
    present_at: None, or present_at(step) -> {name: bool}: a tensor marked False gets
    p.grad = None at that step (absent gradient) instead of its gradient.
    training: "scheduler", "clip_grad_norm", "loss_scale" (GradScaler arguments; the
    gradients grad_at gives are then scaled: unscale_, clip, step, update), and for
    schedule-free optimizers "eval_every" (K: eval() then train() after steps K, 2K, ...,
    counting loop iterations) and "eval_at_end" (eval() after the last step).
    Returns (final params, final state) as {name: tensor}."""
    params = {n: torch.tensor(a, dtype=torch.float32).requires_grad_(True) for n, a in init.items()}
    opts = build_optimizers(optimizer, hp, param_groups, params, foreach=foreach)
    training = training or {}
    assert (rows_at is not None) == (optimizer == "SparseAdam"), "sparse gradients are SparseAdam's"
    assert rows_at is None or not (training.get("clip_grad_norm") or training.get("loss_scale")), \
        "sparse gradients are neither clipped nor loss-scaled"
    assert present_at is None or not (rows_at is not None or training.get("clip_grad_norm")
                                      or training.get("loss_scale")), \
        "absent gradients are neither sparse, clipped nor loss-scaled"
    eval_every = training.get("eval_every")
    eval_at_end = training.get("eval_at_end", False)
    if eval_every or eval_at_end:
        assert all(type(o).__name__ in SCHEDULE_FREE for o, _ in opts), "eval modes are schedule-free's"
    scheduler = None
    if training.get("scheduler"):
        assert len(opts) == 1, "a scheduler needs a single optimizer"
        scheduler = make_scheduler(training["scheduler"], opts[0][0])
    clip = training.get("clip_grad_norm")
    scaler = torch.amp.GradScaler("cpu", **training["loss_scale"]) if training.get("loss_scale") else None
    with torch.no_grad():
        for t in range(steps):
            # The scale the backward pass multiplies the loss by (GradScaler.scale(loss)).
            scale = float(scaler.scale(torch.ones((), dtype=torch.float32))) if scaler else 1.0
            grads = grad_at(t, params, scale)
            rows = rows_at(t) if rows_at is not None else None
            present = present_at(t) if present_at is not None else None
            for n, p in params.items():
                if present is not None and not present[n]:
                    p.grad = None
                    continue
                p.grad = grads[n].clone() if rows is None else sparse_grad(grads[n], rows[n])
            if scaler is not None:
                for opt, _ in opts:
                    scaler.unscale_(opt)
            if clip:
                # In name order: the total norm's rounding depends on the order of the tensors.
                ordered_params = [params[n] for n in sorted(params)]
                torch.nn.utils.clip_grad_norm_(ordered_params, clip["max_norm"], norm_type(clip["norm_type"]))
            for opt, context in opts:
                with context():
                    if scaler is not None:
                        scaler.step(opt)
                    else:
                        opt.step()
            if scaler is not None:
                scaler.update()
            if scheduler is not None:
                scheduler.step()
            if eval_every and (t + 1) % eval_every == 0:
                for opt, _ in opts:
                    opt.eval()
                    opt.train()
        if eval_at_end:
            for opt, _ in opts:
                opt.eval()
    final = {n: p.detach().clone() for n, p in params.items()}
    state = {}
    for n, p in params.items():
        (opt,) = [o for o, _ in opts if any(p is q for g in o.param_groups for q in g["params"])]
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
    prob = build_problem(spec, rng)
    opt, hp = spec["optimizer"], spec["hyperparameters"]

    if "group_overrides" in spec:
        assert len(spec["group_overrides"]) == len(prob.groups), spec["name"]
        param_groups = [{"params": names, **ov} for names, ov in zip(prob.groups, spec["group_overrides"])]
        write_groups = True
    elif prob.kind == "groups":
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

    def grad_at(t, params, scale):
        if prob.grad_fn is not None:
            cur = {n: p.detach().numpy().copy() for n, p in params.items()}
            g = prob.grad_fn(t, cur, scale) if prob.scales_loss else prob.grad_fn(t, cur)
        else:
            g = {n: prob.grads[n][t] for n in prob.names}
        if scale != 1.0 and not prob.scales_loss:
            g = {n: f32(np.float32(scale) * g[n]) for n in prob.names}
        out = {}
        for n in prob.names:
            recorded[n][t] = g[n]
            out[n] = torch.from_numpy(np.array(g[n], dtype=np.float32))
        return out

    rows_at = None
    if prob.rows is not None:
        def rows_at(t):
            return {n: prob.rows[n][t] for n in prob.names}

    present_at = None
    if prob.present is not None:
        def present_at(t):
            return {n: bool(prob.present[n][t]) for n in prob.names}

    final, state = run_torch(opt, hp, param_groups, prob.init, steps, grad_at, spec.get("training"),
                             rows_at=rows_at, present_at=present_at)

    if opt in SCHEDULE_FREE:
        # The foreach path must give the same bits (replayed from the recorded gradients).
        final_fe, state_fe = run_torch(
            opt, hp, param_groups, prob.init, steps,
            lambda t, _p, _scale: {n: torch.from_numpy(recorded[n][t].copy()) for n in prob.names},
            spec.get("training"), foreach=True, present_at=present_at)
        for k, v in {**final, **state}.items():
            assert torch.equal(v, {**final_fe, **state_fe}[k]), f"{spec['name']}: foreach differs in {k}"

    for k, v in {**final, **state}.items():
        if not torch.isfinite(v).all():
            raise RuntimeError(f"{spec['name']}: non-finite values in {k}")
    skips = loss_scale_skips(recorded, prob.steps)
    if skips and not (spec.get("training") or {}).get("loss_scale"):
        raise RuntimeError(f"{spec['name']}: non-finite gradients at steps {skips} without loss scaling")

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
    rows = {}
    if prob.rows is not None:
        rows = {f"{n}.rows": torch.from_numpy(f32(prob.rows[n])) for n in prob.names}
    present = {}
    if prob.present is not None:
        for n in prob.names:
            assert not recorded[n][~prob.present[n]].any(), f"{spec['name']}: {n}: absent steps must record 0"
        present = {f"{n}.present": torch.from_numpy(f32(prob.present[n])) for n in prob.names}
    save_file({**{n: torch.from_numpy(recorded[n]) for n in prob.names}, **rows, **present},
              str(case_dir / "grads.safetensors"))
    save_file({**final, **state}, str(case_dir / "expected.safetensors"))
    return prob, sorted({k.split(".", 1)[1] for k in state})


def loss_scale_skips(grads, steps):
    """The steps whose recorded gradients are not all finite (GradScaler skips them)."""
    return [t for t in range(steps) if not all(np.isfinite(g[t]).all() for g in grads.values())]


def manifest_entry(spec, prob):
    group_optimizers = sorted({ov["optimizer"] for ov in spec.get("group_overrides", []) if "optimizer" in ov})
    return {
        "name": spec["name"],
        "optimizer": spec["optimizer"],
        **({"group_optimizers": group_optimizers} if group_optimizers else {}),
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
    rows = {k[:-len(".rows")]: grads.pop(k) for k in list(grads) if k.endswith(".rows")}
    present = {k[:-len(".present")]: grads.pop(k) for k in list(grads) if k.endswith(".present")}
    assert set(params) == set(grads), case_dir
    names = sorted(params)
    assert not rows or set(rows) == set(names), "w.rows for every parameter or none"
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
    for n, r in rows.items():
        count, length = sparse_rows_of(tuple(params[n].shape))
        assert r.dtype == torch.float32 and tuple(r.shape) == (steps, count), (n, r.shape)
        assert bool(((r == 0) | (r == 1)).all()), n
        outside = grads[n].reshape(steps, count, length)[r == 0]
        assert bool((outside == 0).all()), f"{n}: nonzero gradient outside its rows"
    rows_at = None
    if rows:
        def rows_at(t):
            return {n: (rows[n][t] == 1).numpy() for n in names}
    assert not present or set(present) == set(names), "w.present for every parameter or none"
    for n, r in present.items():
        assert r.dtype == torch.float32 and tuple(r.shape) == (steps,), (n, r.shape)
        assert bool(((r == 0) | (r == 1)).all()), n
        assert bool((grads[n][r == 0] == 0).all()), f"{n}: nonzero gradient at an absent step"
    present_at = None
    if present:
        def present_at(t):
            return {n: bool(present[n][t] == 1) for n in names}
    final, state = run_torch(
        run["optimizer"], run["hyperparameters"], groups,
        {n: params[n].numpy() for n in names}, steps,
        lambda t, _p, _scale: {n: grads[n][t] for n in names},
        {k: run[k] for k in ("scheduler", "clip_grad_norm", "loss_scale", "eval_every", "eval_at_end")
         if k in run},
        rows_at=rows_at,
        present_at=present_at,
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
            prob = build_problem(spec, np.random.default_rng(0))
        case_dir = out / spec["name"]
        if all((case_dir / f).exists() for f in
               ("run.json", "params.safetensors", "grads.safetensors", "expected.safetensors")):
            entries.append(manifest_entry(spec, prob))
        else:
            missing.append(spec["name"])

    manifest = {"torch_version": torch.__version__, "timm_version": timm_version(),
                "lion_pytorch_version": lion_version(), "adan_commit": ADAN_COMMIT,
                "schedulefree_version": schedulefree_version(), "cases": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    if args.check:
        for name in written:
            check_case(out / name)
        print(f"check: {len(written)} cases replayed bit-exactly from their files")

    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    per_opt = {o: sum(1 for e in entries if e["optimizer"] == o) for o in OPTIMIZERS + NEW_RULES}
    print(f"wrote {len(written)} of {len(specs)} cases to {out} "
          f"(manifest lists {len(entries)}; {size / 1e6:.2f} MB in total; torch {torch.__version__}, "
          f"timm {timm_version()}, lion-pytorch {lion_version()}, schedulefree {schedulefree_version()})")
    print("per optimizer: " + ", ".join(f"{o} {n}" for o, n in per_opt.items()))
    if missing:
        print(f"warning: {len(missing)} defined cases have no files yet: {', '.join(missing)}")


if __name__ == "__main__":
    main()
