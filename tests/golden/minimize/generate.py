#!/usr/bin/env python3
"""Generate the golden cases of ``wgpu-optim minimize`` under ``tests/golden/minimize/``.

Every case minimizes one of two test functions of a float32 vector ``x`` of N
elements (``rosenbrock`` or ``quadratic``, below) with one torch.optim optimizer
-- ``LBFGS`` (with and without its strong-Wolfe line search) or a first-order
rule (``Adam``, ``SGD``, ``AdamW``, ``RMSprop``) -- driven through
``opt.step(closure)`` for K steps on the CPU, single thread, and records:

    cases/<name>/run.json             {"problem", "dim", "optimizer", "hyperparameters"
                                       (torch kwarg names; "lr" always, the others only
                                       where they differ from torch's defaults), "steps"}
    cases/<name>/start.safetensors    x: float32 [N], the starting point
    cases/<name>/expected.safetensors x: float32 [N], the point after the K steps;
                                      loss: float32 [K], the value returned by each
                                      opt.step(closure) call; LBFGS also func_evals and
                                      n_iter: int64 [K], opt.state[x]["func_evals"] and
                                      ["n_iter"] after each step (running totals)
    manifest.json                     torch's version, every case (its run.json fields,
                                      its start point's recipe, its final loss, closure
                                      evaluations, for LBFGS how each step and line search
                                      ended, and its sensitivity, below)

The objective and its gradient are computed in float32 without autograd, with the
operation order of the WGSL kernels (each binary operation one float32 torch op,
evaluated left to right; see rosenbrock() and quadratic()). The closure sets
``x.grad`` to a fresh float32 gradient tensor and returns the loss (a 0-d float32
tensor). First-order rules are built with ``foreach=False`` (the single-tensor
path, torch's CPU default).

Usage:
    python3 tests/golden/minimize/generate.py [--out DIR] [--only REGEX] [--check]

``--out`` is the directory that receives ``cases/`` and ``manifest.json`` (default: this
script's directory). ``--only`` regenerates just the cases whose name matches REGEX
(re.search); the manifest keeps the entries of the other cases from the previous
manifest. ``--check`` then replays every case written by this run from its files
alone (run.json + start.safetensors) and requires a bit-exact match with
expected.safetensors. Case directories under cases/ holding a run.json that the
script no longer defines are deleted. The output is deterministic.

No recorded value, and no objective or gradient value torch evaluated on the way
(line-search trials included), is NaN or infinite: a case that produces one stops
the script.

Sensitivity: every case is also run under three rounding-sized perturbations (the start
point one ulp off; the loss's sum and LBFGS's dot products accumulated in double; on
rosenbrock, the objective with fused multiply-adds) and the manifest records how much of
check.py's default tolerance (rtol 1e-4 against the scale of x, per step for the loss,
atol 1e-6) each one uses, and whether LBFGS's evaluation and iteration counts change.
A case is "stable" when every perturbation stays within a tenth of the tolerance and
keeps the counts. LBFGS amplifies rounding quickly (tens of iterations on these
problems), so the LBFGS cases are short; two cases with torch's default max_iter are
kept and marked unstable.
"""

import argparse
import contextlib
import inspect
import json
import math
import re
import shutil
import sys
from pathlib import Path

import torch
import torch.optim.lbfgs as torch_lbfgs
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------
# Problems: float32, no autograd, the kernels' operation order
# --------------------------------------------------------------------------


def rosenbrock(x, total=torch.sum):
    """scipy.optimize.rosen and its gradient (N >= 2).

    a_i    = x[i+1] - x[i]*x[i]                       i < N-1
    b_i    = 1 - x[i]                                 i < N-1
    term_i = (100*a_i)*a_i + b_i*b_i                  i < N-1
    loss   = sum(term)
    g_0    = ((-400*x_0)*a_0) - (2*b_0)
    g_i    = (((-400*x_i)*a_i) - (2*b_i)) + (200*a_{i-1})    0 < i < N-1
    g_N-1  = 200*a_{N-2}
    """
    assert x.dtype == torch.float32 and x.dim() == 1 and x.numel() >= 2
    xi, xnext = x[:-1], x[1:]
    a = xnext - xi * xi
    b = 1 - xi
    term = (100 * a) * a + b * b
    loss = total(term)
    own = (-400 * xi) * a - 2 * b              # ((-400*x_i)*a_i) - (2*b_i), i < N-1
    g = torch.cat([
        own[:1],                               # g_0
        own[1:] + 200 * a[:-1],                # g_i, 0 < i < N-1
        200 * a[-1:],                          # g_{N-1}
    ])
    return loss, g


def quadratic_coefficients(n):
    """c_i = float32(1000 ** (i / (N-1))), the power taken in double precision; [1] for N = 1."""
    if n == 1:
        return torch.tensor([1.0], dtype=torch.float32)
    return torch.tensor([1000.0 ** (i / (n - 1)) for i in range(n)], dtype=torch.float64).to(torch.float32)


def quadratic(x, total=torch.sum):
    """term_i = ((0.5*c_i)*x_i)*x_i, loss = sum(term), g_i = c_i*x_i."""
    assert x.dtype == torch.float32 and x.dim() == 1 and x.numel() >= 1
    c = quadratic_coefficients(x.numel())
    term = ((0.5 * c) * x) * x
    loss = total(term)
    g = c * x
    return loss, g


PROBLEMS = {"rosenbrock": rosenbrock, "quadratic": quadratic}
# `total` is torch.sum (float32, torch's own summation order) for the goldens; the
# sensitivity measurement (below) swaps in other summation orders.


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

WOLFE = {"line_search_fn": "strong_wolfe"}
ALT = ("alternating",)           # x = [-1.2, 1.0, -1.2, 1.0, ...]


def uniform(lo, hi, seed):
    return ("uniform", lo, hi, seed)


def case(name, problem, dim, optimizer, hyperparameters, steps, start):
    return {"name": name, "problem": problem, "dim": dim, "optimizer": optimizer,
            "hyperparameters": hyperparameters, "steps": steps, "start": start}


def lbfgs(name, problem, dim, steps, start, **hp):
    hp = {"lr": hp.pop("lr", 1.0), **hp}
    return case("lbfgs-" + name, problem, dim, "LBFGS", hp, steps, start)


def build_cases():
    # Every LBFGS case is short (a few iterations per step, tens in all): LBFGS's iterates
    # amplify rounding differences quickly (see the README, "Sensitivity"); the two cases
    # with torch's default max_iter of 20 are marked unstable in the manifest.
    cases = [
        # --- rosenbrock, d2
        lbfgs("rosenbrock-d2-h100-iter2-eval10-wolfe", "rosenbrock", 2, 3, ALT,
              max_iter=2, max_eval=10, **WOLFE),
        lbfgs("rosenbrock-d2-h1-iter2-lr0.1", "rosenbrock", 2, 10, ALT,
              lr=0.1, max_iter=2, history_size=1),
        lbfgs("rosenbrock-d2-h100-iter2", "rosenbrock", 2, 8, ALT, max_iter=2),
        lbfgs("rosenbrock-d2-h100-wolfe", "rosenbrock", 2, 3, ALT, **WOLFE),       # defaults: unstable
        # --- rosenbrock, d10
        lbfgs("rosenbrock-d10-h3-iter2-eval8-wolfe", "rosenbrock", 10, 8, uniform(-2, 2, 1001),
              max_iter=2, max_eval=8, history_size=3, **WOLFE),
        lbfgs("rosenbrock-d10-h10-iter3-lr0.5-wolfe", "rosenbrock", 10, 8, uniform(-2, 2, 1002),
              lr=0.5, max_iter=3, history_size=10, **WOLFE),
        lbfgs("rosenbrock-d10-h3-iter4-lr0.1", "rosenbrock", 10, 8, uniform(-2, 2, 1001),
              lr=0.1, max_iter=4, history_size=3),
        lbfgs("rosenbrock-d10-h10-iter4-wolfe", "rosenbrock", 10, 3, ALT,
              max_iter=4, history_size=10, **WOLFE),
        lbfgs("rosenbrock-d10-h100-tc0.1-wolfe", "rosenbrock", 10, 5, ALT,
              tolerance_change=0.1, **WOLFE),
        lbfgs("rosenbrock-d10-h10-eval1-wolfe", "rosenbrock", 10, 5, ALT,
              max_eval=1, history_size=10, **WOLFE),
        # --- rosenbrock, d100
        lbfgs("rosenbrock-d100-h100-iter3-wolfe", "rosenbrock", 100, 8, ALT, max_iter=3, **WOLFE),
        lbfgs("rosenbrock-d100-h1-iter3-wolfe", "rosenbrock", 100, 8, uniform(-2, 2, 1004),
              max_iter=3, history_size=1, **WOLFE),
        lbfgs("rosenbrock-d100-h3-iter4-lr0.1", "rosenbrock", 100, 5, ALT,
              lr=0.1, max_iter=4, history_size=3),
        # --- quadratic, d2
        lbfgs("quadratic-d2-h3-wolfe", "quadratic", 2, 5, uniform(-1, 1, 2001), history_size=3, **WOLFE),
        lbfgs("quadratic-d2-h100-tol1", "quadratic", 2, 5, uniform(-1, 1, 2001), tolerance_grad=1.0),
        # --- quadratic, d50
        lbfgs("quadratic-d50-h10-iter4-wolfe", "quadratic", 50, 5, uniform(-1, 1, 2003),
              max_iter=4, history_size=10, **WOLFE),
        lbfgs("quadratic-d50-h3-iter3-wolfe", "quadratic", 50, 5, uniform(-1, 1, 2003),
              max_iter=3, history_size=3, **WOLFE),
        lbfgs("quadratic-d50-h10-iter3", "quadratic", 50, 6, uniform(-1, 1, 2004),
              max_iter=3, history_size=10),
        lbfgs("quadratic-d50-h100-tol10-wolfe", "quadratic", 50, 5, uniform(-1, 1, 2005),
              tolerance_grad=10.0, tolerance_change=1e-4, **WOLFE),
        lbfgs("quadratic-d50-h100-tc0.1-wolfe", "quadratic", 50, 5, uniform(-1, 1, 2011),
              tolerance_change=0.1, **WOLFE),
        lbfgs("quadratic-d50-h10-iter5-max-lr0.0001", "quadratic", 50, 5, uniform(-1, 1, 2006),
              lr=0.0001, max_iter=5, history_size=10, maximize=True),
        lbfgs("quadratic-d50-h100", "quadratic", 50, 3, uniform(-1, 1, 2010)),  # defaults: unstable
        # --- quadratic, d1000
        lbfgs("quadratic-d1000-h100-iter3-wolfe", "quadratic", 1000, 5, uniform(-1, 1, 2007),
              max_iter=3, **WOLFE),
        lbfgs("quadratic-d1000-h100-iter4-eval20-wolfe", "quadratic", 1000, 5, uniform(-1, 1, 2007),
              max_iter=4, max_eval=20, **WOLFE),
        lbfgs("quadratic-d1000-h1-iter2-lr0.5", "quadratic", 1000, 5, uniform(-1, 1, 2008),
              lr=0.5, max_iter=2, history_size=1),
        lbfgs("quadratic-d1000-h10-iter5-lr0.01", "quadratic", 1000, 5, uniform(-1, 1, 2009),
              lr=0.01, max_iter=5, history_size=10),
        lbfgs("quadratic-d1000-h100-tol100-wolfe", "quadratic", 1000, 5, uniform(-1, 1, 2009),
              tolerance_grad=100.0, **WOLFE),
        # --- first-order rules through step(closure)
        case("adam-rosenbrock-d10-lr0.01", "rosenbrock", 10, "Adam", {"lr": 0.01}, 200, ALT),
        case("sgd-quadratic-d50-lr0.001-mom0.9", "quadratic", 50, "SGD",
             {"lr": 0.001, "momentum": 0.9}, 100, uniform(-1, 1, 3001)),
        case("adamw-quadratic-d10-default", "quadratic", 10, "AdamW", {"lr": 0.001}, 50,
             uniform(-1, 1, 3002)),
        case("rmsprop-rosenbrock-d2-lr0.001", "rosenbrock", 2, "RMSprop", {"lr": 0.001}, 100, ALT),
    ]
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names), "duplicate case names"
    for c in cases:
        assert 3 <= c["steps"] <= 30 or c["optimizer"] != "LBFGS", c["name"]
    return cases


def start_point(start, n):
    if start[0] == "alternating":
        return torch.tensor([-1.2, 1.0] * (n // 2) + [-1.2] * (n % 2), dtype=torch.float32)
    _, lo, hi, seed = start
    g = torch.Generator().manual_seed(seed)
    return torch.empty(n, dtype=torch.float32).uniform_(lo, hi, generator=g)


def start_recipe(start):
    if start[0] == "alternating":
        return {"kind": "alternating", "values": [-1.2, 1.0]}
    _, lo, hi, seed = start
    return {"kind": "uniform", "low": lo, "high": hi, "seed": seed,
            "torch": f"torch.empty(N, dtype=torch.float32).uniform_({lo}, {hi}, "
                     f"generator=torch.Generator().manual_seed({seed}))"}


# --------------------------------------------------------------------------
# Running torch
# --------------------------------------------------------------------------


def torch_kwargs(hp):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in hp.items()}


def build_optimizer(optimizer, hp, x):
    cls = getattr(torch.optim, optimizer)
    kwargs = torch_kwargs(hp)
    if "foreach" in inspect.signature(cls).parameters:
        kwargs["foreach"] = False
    return cls([x], **kwargs)


def _label_lines(fn, breaks, lines_first=None):
    """Line numbers in ``fn``'s source -> label: each ``break`` whose condition (the
    statement above it, comments stripped) is a key of ``breaks``, and the first line
    whose text is a key of ``lines_first``."""
    lines_first = lines_first or {}
    lines, first = inspect.getsourcelines(fn)
    found = {}
    for i, line in enumerate(lines):
        text = line.split("#")[0].strip()
        if text == "break":
            j = i - 1
            while not lines[j].split("#")[0].strip():
                j -= 1
            cond = lines[j].split("#")[0].strip()
            if cond in breaks:
                found[first + i] = breaks[cond]
        elif text in lines_first and lines_first[text] not in found.values():
            found[first + i] = lines_first[text]
    missing = (set(breaks.values()) | set(lines_first.values())) - set(found.values())
    assert not missing, f"torch's LBFGS source changed; not found: {missing}"
    return found


class LbfgsWatch:
    """Records, without changing anything, how torch's LBFGS steps and line searches end.

    A sys.settrace tracer on LBFGS.step and lbfgs._strong_wolfe: which ``break`` (or
    the early ``return orig_loss``) ends each step, and per line search max_ls,
    the evaluations, whether it was done (strong Wolfe met), whether ls_iter reached
    max_ls, whether the zoom stopped at a bracket below tolerance_change, and t."""

    STEP_FIRST = {"return orig_loss": "opt_cond at entry"}  # the first one: before any iteration
    STEP_BREAKS = {
        "if gtd > -tolerance_change:": "gtd > -tolerance_change",
        "if n_iter == max_iter:": "max_iter",
        "if current_evals >= max_eval:": "max_eval",
        "if opt_cond:": "opt_cond",
        "if d.mul(t).abs().max() <= tolerance_change:": "step <= tolerance_change",
        "if abs(loss - prev_loss) < tolerance_change:": "loss change < tolerance_change",
    }
    WOLFE_BREAKS = {
        "if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:": "bracket < tolerance_change",
    }

    def __init__(self):
        self.step_code = inspect.unwrap(torch.optim.LBFGS.step).__code__
        self.wolfe_code = torch_lbfgs._strong_wolfe.__code__
        self.step_lines = _label_lines(inspect.unwrap(torch.optim.LBFGS.step),
                                      self.STEP_BREAKS, self.STEP_FIRST)
        self.wolfe_lines = _label_lines(torch_lbfgs._strong_wolfe, self.WOLFE_BREAKS)
        self.steps = []   # per step: {"end": label, "searches": [...]}

    def begin_step(self):
        self.steps.append({"end": None, "searches": []})

    def _local(self, frame, event, arg):
        code = frame.f_code
        if code is self.step_code:
            if event == "line" and frame.f_lineno in self.step_lines:
                self.steps[-1]["end"] = self.step_lines[frame.f_lineno]
        elif code is self.wolfe_code:
            if event == "line" and frame.f_lineno in self.wolfe_lines:
                self._tiny = True
            elif event == "return":
                loc = frame.f_locals
                t = arg[2]
                self.steps[-1]["searches"].append({
                    "max_ls": int(loc["max_ls"]),
                    "evals": int(arg[3]),
                    "done": bool(loc["done"]),
                    "max_ls_reached": int(loc["ls_iter"]) >= int(loc["max_ls"]) and not loc["done"],
                    "tiny_bracket": getattr(self, "_tiny", False),
                    "t": float(t),
                })
                self._tiny = False
        return self._local

    def _global(self, frame, event, arg):
        if frame.f_code is self.step_code or frame.f_code is self.wolfe_code:
            return self._local
        return None

    def __enter__(self):
        self._tiny = False
        self._previous = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(self._previous)
        return False


def run_case(run, start, watch=None, problem=None):
    """Runs torch; returns (expected dict, the loss of every closure evaluation).

    ``problem`` replaces the objective (the sensitivity measurement's perturbed ones)."""
    problem = problem or PROBLEMS[run["problem"]]
    x = start.clone()
    assert x.dtype == torch.float32 and tuple(x.shape) == (run["dim"],)
    opt = build_optimizer(run["optimizer"], run["hyperparameters"], x)
    evaluated = []

    def closure():
        loss, g = problem(x)
        assert loss.dtype == torch.float32 and g.dtype == torch.float32 and g.shape == x.shape
        if not (math.isfinite(float(loss)) and bool(torch.isfinite(g).all())):
            raise FloatingPointError(f"non-finite objective or gradient at evaluation "
                                     f"{len(evaluated) + 1}: loss {float(loss)}")
        x.grad = g
        evaluated.append(float(loss))
        return loss

    losses, func_evals, n_iter = [], [], []
    lbfgs = run["optimizer"] == "LBFGS"
    for _ in range(run["steps"]):
        if watch is not None:
            watch.begin_step()
        with watch if watch is not None else contextlib.nullcontext():
            loss = opt.step(closure)
        assert isinstance(loss, torch.Tensor) and loss.dtype == torch.float32 and loss.dim() == 0
        losses.append(loss.clone())
        if lbfgs:
            st = opt.state[x]
            func_evals.append(st["func_evals"])
            n_iter.append(st["n_iter"])
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"x not finite after step {len(losses)}")
    expected = {"x": x.detach().clone(), "loss": torch.stack(losses)}
    if lbfgs:
        expected["func_evals"] = torch.tensor(func_evals, dtype=torch.int64)
        expected["n_iter"] = torch.tensor(n_iter, dtype=torch.int64)
        assert func_evals[-1] == len(evaluated), (func_evals[-1], len(evaluated))
    else:
        assert len(evaluated) == run["steps"]
    return expected, evaluated


# --------------------------------------------------------------------------
# Sensitivity: how far the recorded values move under rounding-sized perturbations
# --------------------------------------------------------------------------

# The tolerances of check.py's defaults: a step's loss l passes against e when
# |l - e| <= ATOL + RTOL*|e|, an element of x when |x - e| <= ATOL + RTOL*max|e| (x's scale).
# "use" below is the largest |deviation| / tolerance over x and every step's loss: 1.0 means
# the perturbed run would just pass check.py's defaults.
RTOL, ATOL = 1e-4, 1e-6
STABLE_USE = 0.1   # cases above this under any perturbation are flagged (manifest "stable": false)


def tolerance_use(got, want, normwise=False):
    """max |got - want| / (ATOL + RTOL*|want|), with max|want| for |want| when normwise."""
    d = (got.double() - want.double()).abs()
    scale = want.double().abs()
    if normwise:
        scale = scale.max()
    return float((d / (ATOL + RTOL * scale)).max())


@contextlib.contextmanager
def f64_reductions():
    """torch.Tensor.dot and .sum (LBFGS's dot products, its |g|_1) accumulate in double
    and round once: another summation order, as a GPU reduction has."""
    dot, tsum = torch.Tensor.dot, torch.Tensor.sum

    def dot64(a, b):
        return dot(a.double(), b.double()).to(a.dtype)

    def sum64(a, *args, **kwargs):
        if args or kwargs or a.dtype != torch.float32:
            return tsum(a, *args, **kwargs)
        return tsum(a.double()).to(a.dtype)

    torch.Tensor.dot, torch.Tensor.sum = dot64, sum64
    try:
        yield
    finally:
        torch.Tensor.dot, torch.Tensor.sum = dot, tsum


def rosenbrock_contracted(x, total=torch.sum):
    """rosenbrock() as a GPU compiler may contract it into fused multiply-adds (each fma
    computed in double from float32 operands and rounded once to float32)."""
    def fma(p, q, r):
        return (p.double() * q.double() + r.double()).to(torch.float32)
    xi, xnext = x[:-1], x[1:]
    a = fma(-xi, xi, xnext)
    b = 1 - xi
    term = fma(100 * a, a, b * b)
    own = fma(-400 * xi, a, -(2 * b))
    g = torch.cat([own[:1], fma(200 * torch.ones_like(a[:-1]), a[:-1], own[1:]), 200 * a[-1:]])
    return total(term), g


def perturbations(run, start):
    """(label, start point, objective, context) of each perturbed run; each deterministic.

    start_ulp:      every element of the start point one ulp up or down (seeded signs);
    reductions_f64: the loss's sum, and LBFGS's dot products and |g|_1, accumulated in double
                    and rounded once (another reduction order, as on a GPU);
    fma:            (rosenbrock only) the objective with fused multiply-adds where a shader
                    compiler may contract (rosenbrock_contracted); the quadratic has none."""
    base = PROBLEMS[run["problem"]]
    signs = torch.randint(0, 2, start.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1
    ulp_start = torch.nextafter(start, start + signs.to(torch.float32) * math.inf)

    def sum_f64(x):
        return base(x, total=lambda term: term.double().sum().to(torch.float32))

    out = [("start_ulp", ulp_start, base, contextlib.nullcontext),
           ("reductions_f64", start, sum_f64, f64_reductions)]
    if run["problem"] == "rosenbrock":
        out.append(("fma", start, rosenbrock_contracted, contextlib.nullcontext))
    return out


def sensitivity(run, start, expected):
    out = {}
    for label, x0, problem, context in perturbations(run, start):
        try:
            with context():
                got, _ = run_case(run, x0, problem=problem)
        except FloatingPointError:
            out[label] = {"diverged": True}
            continue
        use = max(tolerance_use(got["x"], expected["x"], normwise=True),
                  tolerance_use(got["loss"], expected["loss"]))
        entry = {"use": float(f"{use:.3g}")}
        bad = [k for k, v in enumerate((got["loss"].double() - expected["loss"].double()).abs() >
                                       STABLE_USE * (ATOL + RTOL * expected["loss"].double().abs())) if v]
        if bad:
            entry["first_step_off"] = bad[0]   # first step whose loss moved by more than STABLE_USE
        for k in ("func_evals", "n_iter"):
            if k in expected and not torch.equal(got[k], expected[k]):
                entry[k + "_differ"] = True
        out[label] = entry
    worst = max(v.get("use", math.inf) for v in out.values())
    counts = any(k.endswith("_differ") for v in out.values() for k in v)
    return {"stable": worst <= STABLE_USE and not counts,
            "max_use": worst if math.isfinite(worst) else None, **out}


def run_json(spec):
    return {k: spec[k] for k in ("problem", "dim", "optimizer", "hyperparameters", "steps")}


def lbfgs_max_eval(hp):
    max_iter = hp.get("max_iter", 20)
    return hp["max_eval"] if hp.get("max_eval") is not None else max_iter * 5 // 4


def summarize_watch(watch, expected, hp):
    """How each LBFGS step ended, and the notable line searches (0-based step numbers)."""
    ends = {}
    for k, s in enumerate(watch.steps):
        assert s["end"] is not None, f"step {k}: no end recorded"
        ends.setdefault(s["end"], []).append(k)
    searches = [(k, i, ls) for k, s in enumerate(watch.steps) for i, ls in enumerate(s["searches"])]
    fe = expected["func_evals"].tolist()
    per_step = [fe[0]] + [b - a for a, b in zip(fe, fe[1:])]
    max_eval = lbfgs_max_eval(hp)
    out = {"step_ends": ends}
    if searches:
        out["line_searches"] = len(searches)
        for key in ("max_ls_reached", "tiny_bracket"):
            hits = [[k, i] for k, i, ls in searches if ls[key]]
            if hits:
                out[key] = hits   # [step, line search of that step]
        zero = [[k, i] for k, i, ls in searches if ls["t"] == 0.0]
        if zero:
            out["t_zero"] = zero
    over = [k for k, n in enumerate(per_step) if n > max_eval]
    if over:
        out["steps_over_max_eval"] = over
    return out


def describe_watch(summary):
    parts = ["ends: " + ", ".join(f"{label} x{len(steps)}" + (f" (steps {steps_text(steps)})"
                                                                if label == "opt_cond at entry" else "")
                                  for label, steps in summary["step_ends"].items())]
    if "line_searches" in summary:
        parts.append(f"line searches {summary['line_searches']}")
    for key in ("max_ls_reached", "tiny_bracket", "t_zero"):
        if key in summary:
            parts.append(f"{key} at " + ",".join(f"{k}:{i}" for k, i in summary[key]) + " (step:search)")
    if "steps_over_max_eval" in summary:
        parts.append("steps over max_eval: " + steps_text(summary["steps_over_max_eval"]))
    return "; ".join(parts)


def steps_text(steps):
    if len(steps) > 2 and steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}-{steps[-1]}"
    return ",".join(map(str, steps))


def write_case(spec, out):
    run = run_json(spec)
    start = start_point(spec["start"], spec["dim"])
    watch = LbfgsWatch() if run["optimizer"] == "LBFGS" else None
    expected, evaluated = run_case(run, start, watch)
    case_dir = out / "cases" / spec["name"]
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    (case_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    save_file({"x": start}, str(case_dir / "start.safetensors"))
    save_file(expected, str(case_dir / "expected.safetensors"))

    final_loss, _ = PROBLEMS[run["problem"]](expected["x"])
    entry = {
        "name": spec["name"], **run,
        "start": start_recipe(spec["start"]),
        "first_loss": float(expected["loss"][0]),
        "last_step_loss": float(expected["loss"][-1]),
        "final_loss": float(final_loss),   # f(x) at the final point (not among `loss`)
        "evaluations": len(evaluated),
    }
    if watch is not None:
        entry["n_iter"] = int(expected["n_iter"][-1])
        entry["lbfgs"] = summarize_watch(watch, expected, run["hyperparameters"])
    entry["sensitivity"] = sensitivity(run, start, expected)
    return entry


def check_case(case_dir):
    """Replays a case from its files alone; requires a bit-exact match."""
    run = json.loads((case_dir / "run.json").read_text())
    assert set(run) == {"problem", "dim", "optimizer", "hyperparameters", "steps"}, sorted(run)
    start = load_file(str(case_dir / "start.safetensors"))
    expected = load_file(str(case_dir / "expected.safetensors"))
    assert set(start) == {"x"} and start["x"].dtype == torch.float32
    assert tuple(start["x"].shape) == (run["dim"],)
    want = {"x", "loss"} | ({"func_evals", "n_iter"} if run["optimizer"] == "LBFGS" else set())
    assert set(expected) == want, (case_dir.name, sorted(expected))
    assert expected["loss"].dtype == torch.float32 and tuple(expected["loss"].shape) == (run["steps"],)
    for k in ("func_evals", "n_iter"):
        if k in expected:
            assert expected[k].dtype == torch.int64 and tuple(expected[k].shape) == (run["steps"],)
    for k in ("x", "loss"):
        assert bool(torch.isfinite(expected[k]).all()), f"{case_dir.name}: {k} not finite"
    got, _ = run_case(run, start["x"])
    for k, v in expected.items():
        assert v.dtype == got[k].dtype and v.shape == got[k].shape, (case_dir.name, k)
        # bit-exact, -0.0 vs 0.0 included
        same = torch.equal(v.view(torch.int32) if v.dtype == torch.float32 else v,
                           got[k].view(torch.int32) if got[k].dtype == torch.float32 else got[k])
        assert same, f"{case_dir.name}: {k} differs on replay"
    assert not torch.equal(expected["x"], start["x"]), f"{case_dir.name}: x did not move"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE,
                    help="directory receiving cases/ and manifest.json (default: %(default)s)")
    ap.add_argument("--only", default=None, help="regenerate only the cases whose name matches REGEX")
    ap.add_argument("--check", action="store_true",
                    help="replay every written case from its files and compare bit-exactly")
    args = ap.parse_args()

    torch.set_num_threads(1)
    out = args.out
    (out / "cases").mkdir(parents=True, exist_ok=True)
    specs = build_cases()
    defined = {s["name"] for s in specs}

    for d in sorted((out / "cases").iterdir()):
        if d.is_dir() and (d / "run.json").exists() and d.name not in defined:
            print(f"removing stale case {d.name}")
            shutil.rmtree(d)

    manifest_path = out / "manifest.json"
    old = {}
    if manifest_path.exists():
        try:
            old = {e["name"]: e for e in json.loads(manifest_path.read_text())["cases"]}
        except (ValueError, KeyError, TypeError):
            old = {}

    only = re.compile(args.only) if args.only else None
    entries, written, missing = [], [], []
    for spec in specs:
        if only is None or only.search(spec["name"]):
            entry = write_case(spec, out)
            written.append(spec["name"])
            line = (f"{spec['name']:<44} K={spec['steps']:<4} final loss {entry['final_loss']:<13.6g} "
                    f"(last step {entry['last_step_loss']:.6g})  evaluations {entry['evaluations']}")
            if "lbfgs" in entry:
                line += f"  n_iter {entry['n_iter']}\n    {describe_watch(entry['lbfgs'])}"
            sens = entry["sensitivity"]
            line += (f"\n    sensitivity: {'stable' if sens['stable'] else 'UNSTABLE'} (max use "
                     f"{sens['max_use']}; " + ", ".join(
                         f"{k} {v.get('use', 'diverged')}" + (f" from step {v['first_step_off']}"
                                                             if "first_step_off" in v else "")
                         + (" counts differ" if any(x.endswith("_differ") for x in v) else "")
                         for k, v in sens.items() if isinstance(v, dict)) + ")")
            print(line)
            entries.append(entry)
        else:
            case_dir = out / "cases" / spec["name"]
            on_disk = all((case_dir / f).exists() for f in
                          ("run.json", "start.safetensors", "expected.safetensors"))
            if on_disk and spec["name"] in old:
                entries.append(old[spec["name"]])
            else:
                missing.append(spec["name"])

    manifest = {"torch_version": torch.__version__, "cases": entries}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")

    if args.check:
        for name in written:
            check_case(out / "cases" / name)
        print(f"check: {len(written)} cases replayed bit-exactly from their files")

    size = sum(f.stat().st_size for f in (out / "cases").rglob("*") if f.is_file())
    size += manifest_path.stat().st_size
    n_lbfgs = sum(1 for e in entries if e["optimizer"] == "LBFGS")
    print(f"wrote {len(written)} of {len(specs)} cases to {out / 'cases'} (manifest lists "
          f"{len(entries)}: {n_lbfgs} LBFGS, {len(entries) - n_lbfgs} first-order; "
          f"{size / 1e3:.1f} kB with the manifest; torch {torch.__version__})")
    if missing:
        print(f"warning: {len(missing)} defined cases have no files yet: {', '.join(missing)}")


if __name__ == "__main__":
    main()
