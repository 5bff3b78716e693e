#!/usr/bin/env python3
"""PyTorch twin of `cargo run --release --example train`: the same MLP on the same digits split,
from the same initial weights, over the same minibatches, with torch.optim, torch's
LinearLR -> CosineAnnealingLR (SequentialLR) schedule and clip_grad_norm_. Writes the per-step
curves as JSON in the format the Rust example writes, so that its `--reference` plots both and
measures how far apart they are.

    pip install torch numpy
    python3 examples/train_torch.py --out target/train/torch.json
    cargo run --release --example train -- --reference target/train/torch.json

`--optimizer lbfgs` trains full-batch with torch.optim.LBFGS instead (one step per epoch, a
closure over all training samples, the loss plus an L2 penalty weight_decay/2 * sum ||W||^2 on the
weights), as `cargo run --release --example train -- --optimizer lbfgs` does:

    python3 examples/train_torch.py --optimizer lbfgs --out target/train/torch-lbfgs.json
    cargo run --release --example train -- --optimizer lbfgs --reference target/train/torch-lbfgs.json

Everything random comes from SplitMix64 streams that examples/train/data.rs reproduces bit for
bit: the split (fixed seed), the initial weights (--seed) and the minibatch order (--seed + 1).
"""

import argparse
import gzip
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

MASK = (1 << 64) - 1
SPLIT_SEED = 42  # part of the data set's definition: the same test split for every run
DATA = pathlib.Path(__file__).parent / "data" / "digits.csv.gz"

# Hyper-parameters per rule for this problem (learning rates from a sweep, 3 seeds each); the
# same table as defaults() in examples/train/main.rs. Weight decay never applies to biases (a
# second parameter group).
DEFAULTS = {
    "SGD": {"lr": 0.1, "momentum": 0.9},
    "Adagrad": {"lr": 0.1},
    "RMSprop": {"lr": 3e-3},
    "Adadelta": {"lr": 3.0},
    "Adam": {"lr": 1e-2},
    "AdamW": {"lr": 1e-2, "weight_decay": 0.1},
    "NAdam": {"lr": 1e-2},
    # Full batch. torch.optim.LBFGS has no weight decay: weight_decay here is the lambda of an L2
    # penalty lambda/2 * sum ||W||^2 that the closure adds to the loss (weights only).
    "LBFGS": {"lr": 1.0, "max_iter": 20, "history_size": 10, "line_search_fn": "strong_wolfe", "weight_decay": 1e-3},
}
# The hyper-parameters of torch.optim.LBFGS that a run records (from its param_groups).
LBFGS_KEYS = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size", "line_search_fn", "maximize")


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self):
        """Uniform in [-1, 1): 24 random bits, exact in float32."""
        return float(self.next_u64() >> 40) / float(1 << 24) * 2.0 - 1.0

    def shuffle(self, items):
        """Fisher-Yates, from the last element down."""
        for i in range(len(items) - 1, 0, -1):
            j = self.next_u64() % (i + 1)
            items[i], items[j] = items[j], items[i]


def load_digits():
    with gzip.open(DATA, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = rows[:, :64].astype(np.float32) / np.float32(16.0)
    y = rows[:, 64]
    order = list(range(len(rows)))
    SplitMix64(SPLIT_SEED).shuffle(order)
    test_len = len(rows) // 5
    train, test = order[: len(rows) - test_len], order[len(rows) - test_len :]
    return x[train], y[train], x[test], y[test]


def init_params(sizes, seed):
    """nn.Linear's distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, drawn
    from SplitMix64 in the order w1, b1, w2, b2, ... (weights row-major, [out, in])."""
    rng = SplitMix64(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = np.float32(1.0 / math.sqrt(fan_in))
        for shape in ((fan_out, fan_in), (fan_out,)):
            count = int(np.prod(shape))
            u = np.array([rng.uniform() for _ in range(count)], dtype=np.float32)
            params.append((u * bound).astype(np.float32).reshape(shape))
    return params


def batches(train_len, batch, epochs, seed):
    """Minibatch index lists: each epoch a fresh shuffle of 0..n, the last partial batch dropped."""
    rng = SplitMix64(seed)
    for _ in range(epochs):
        order = list(range(train_len))
        rng.shuffle(order)
        yield [order[k : k + batch] for k in range(0, train_len - batch + 1, batch)]


def parse_rule(text):
    """NAME[:key=value...] as the Rust example takes it, e.g. sgd:momentum=0.9:nesterov=true."""
    name, *pairs = text.split(":")
    matches = [n for n in DEFAULTS if n.lower() == name.strip().lower()]
    if not matches:
        sys.exit(f"unknown optimizer {name!r}: expected one of {', '.join(DEFAULTS)}")
    hyper = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"{text!r}: {pair!r} is not key=value")
        hyper[key.strip()] = json.loads(value)
    return matches[0], hyper


def warmup_cosine(optimizer, warmup, total, start_factor):
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
    if warmup == 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=start_factor, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizer", default="adamw", help="NAME[:key=value...], e.g. sgd:momentum=0.9")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: per optimizer)")
    parser.add_argument("--weight-decay", type=float, help="weight decay of the weights (default: per optimizer)")
    parser.add_argument("--hidden", default="128,64")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, help="epochs (default 30); with lbfgs, L-BFGS steps (default 10)")
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--warmup-start", type=float, default=0.01, help="LinearLR start_factor")
    parser.add_argument("--clip-grad-norm", type=float, default=1.0, help="max global L2 norm of the gradients (0: no clipping)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--out", default="target/train/torch.json")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(1)  # one thread: the same reduction order on every run
    x_train, y_train, x_test, y_test = load_digits()
    sizes = [64] + [int(h) for h in args.hidden.split(",")] + [10]
    tensors = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in init_params(sizes, args.seed)]
    weights, biases = tensors[0::2], tensors[1::2]

    name, spec = parse_rule(args.optimizer)
    hyper = dict(DEFAULTS[name])
    if args.lr is not None:
        hyper["lr"] = args.lr
    if args.weight_decay is not None:
        hyper["weight_decay"] = args.weight_decay
    hyper.update(spec)
    if args.epochs is None:
        args.epochs = 10 if name == "LBFGS" else 30
    if name == "LBFGS":
        return train_lbfgs(args, dtype, sizes, tensors, hyper, (x_train, y_train, x_test, y_test))
    optimizer = getattr(torch.optim, name)(
        [{"params": weights}, {"params": biases, "weight_decay": 0.0}], **hyper
    )
    steps_per_epoch = len(x_train) // args.batch
    total = steps_per_epoch * args.epochs
    if not 0 <= args.warmup_steps < total:
        sys.exit(f"--warmup-steps must be in [0, {total})")
    scheduler = warmup_cosine(optimizer, args.warmup_steps, total, args.warmup_start)

    xs, ys = torch.tensor(x_train, dtype=dtype), torch.tensor(y_train)
    xt, yt = torch.tensor(x_test, dtype=dtype), torch.tensor(y_test)

    def forward(x):
        for k, (w, b) in enumerate(zip(weights, biases)):
            x = F.linear(x, w, b)
            if k + 1 < len(weights):
                x = F.relu(x)
        return x

    def evaluate():
        with torch.no_grad():
            logits = forward(xt)
            return F.cross_entropy(logits, yt).item(), (logits.argmax(1) == yt).double().mean().item()

    record = {"loss": [], "lr": [], "param_norm": []}
    evals = {"step": [], "test_loss": [], "test_accuracy": []}

    def log_eval(step):
        loss, accuracy = evaluate()
        evals["step"].append(step)
        evals["test_loss"].append(loss)
        evals["test_accuracy"].append(accuracy)

    log_eval(0)
    grad_norms = []
    start, step = time.perf_counter(), 0
    for epoch in batches(len(x_train), args.batch, args.epochs, args.seed + 1):
        for idx in epoch:
            idx = torch.tensor(idx)
            loss = F.cross_entropy(forward(xs[idx]), ys[idx])
            optimizer.zero_grad()
            loss.backward()
            if args.clip_grad_norm > 0:
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(tensors, args.clip_grad_norm)))
            record["lr"].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            step += 1
            record["loss"].append(loss.item())
            with torch.no_grad():
                record["param_norm"].append(math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors)))
        log_eval(step)
    seconds = time.perf_counter() - start

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "trainer": f"torch {torch.__version__} ({args.dtype}, CPU)",
        "data": "UCI digits 8×8",
        "optimizer": name,
        "hyperparameters": hyper,
        "hidden": sizes[1:-1],
        "batch": args.batch,
        "epochs": args.epochs,
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": args.warmup_steps,
        "warmup_start": args.warmup_start,
        "clip_grad_norm": args.clip_grad_norm,
        "seed": args.seed,
        "seconds": seconds,
        "steps": record,
        "evals": evals,
    }
    out.write_text(json.dumps(result))
    if grad_norms:
        clipped = sum(n > args.clip_grad_norm for n in grad_norms)
        print(f"gradient norm: median {sorted(grad_norms)[len(grad_norms) // 2]:.3f}, max {max(grad_norms):.3f}; "
              f"clipped in {clipped} of {len(grad_norms)} steps")
    print(f"{args.optimizer} ({args.dtype}): {total} steps in {seconds:.1f} s, "
          f"final train loss {record['loss'][-1]:.4f}, test accuracy {100 * evals['test_accuracy'][-1]:.2f} % "
          f"-> {out}")


def forward_of(weights, biases):
    def forward(x):
        for k, (w, b) in enumerate(zip(weights, biases)):
            x = F.linear(x, w, b)
            if k + 1 < len(weights):
                x = F.relu(x)
        return x

    return forward


def train_lbfgs(args, dtype, sizes, tensors, hyper, data):
    """Full-batch torch.optim.LBFGS: --epochs steps, each calling the closure (forward and backward
    over every training sample) as often as its line search needs; the test set after each step."""
    x_train, y_train, x_test, y_test = data
    weights, biases = tensors[0::2], tensors[1::2]
    hyper = dict(hyper)
    l2 = float(hyper.pop("weight_decay", 0.0))
    optimizer = torch.optim.LBFGS(tensors, **hyper)
    xs, ys = torch.tensor(x_train, dtype=dtype), torch.tensor(y_train)
    xt, yt = torch.tensor(x_test, dtype=dtype), torch.tensor(y_test)
    forward = forward_of(weights, biases)

    def objective():
        # Mean cross-entropy, then lambda/2 * ||W||^2 per layer, in the order the WGSL kernels add them.
        loss = F.cross_entropy(forward(xs), ys)
        for w in weights:
            loss = loss + 0.5 * l2 * (w * w).sum()
        return loss

    def closure():
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    def log_eval(step):
        with torch.no_grad():
            logits = forward(xt)
            evals["step"].append(step)
            evals["test_loss"].append(F.cross_entropy(logits, yt).item())
            evals["test_accuracy"].append((logits.argmax(1) == yt).double().mean().item())

    record = {"loss": [], "lr": [], "param_norm": []}
    evals = {"step": [], "test_loss": [], "test_accuracy": []}
    curves = {"evaluations": [], "iterations": [], "step_seconds": []}
    log_eval(0)
    state = optimizer.state[tensors[0]]
    start = time.perf_counter()
    for step in range(args.epochs):
        evals_before, iter_before = state.get("func_evals", 0), state.get("n_iter", 0)
        step_start = time.perf_counter()
        loss = optimizer.step(closure)
        curves["step_seconds"].append(time.perf_counter() - step_start)
        curves["evaluations"].append(state["func_evals"] - evals_before)
        curves["iterations"].append(state["n_iter"] - iter_before)
        record["loss"].append(loss.item())
        record["lr"].append(optimizer.param_groups[0]["lr"])
        with torch.no_grad():
            record["param_norm"].append(math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors)))
        log_eval(step + 1)
        print(f"step {step + 1}/{args.epochs}: loss {record['loss'][-1]:.4f}, {curves['evaluations'][-1]} evaluations, "
              f"test loss {evals['test_loss'][-1]:.4f}, test accuracy {100 * evals['test_accuracy'][-1]:.2f} %")
    with torch.no_grad():
        curves["final_loss"] = objective().item()
    seconds = time.perf_counter() - start

    group = optimizer.param_groups[0]
    recorded = {key: group[key] for key in LBFGS_KEYS}
    recorded["weight_decay"] = l2
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "trainer": f"torch {torch.__version__} ({args.dtype}, CPU)",
        "data": "UCI digits 8×8",
        "optimizer": "LBFGS",
        "hyperparameters": recorded,
        "hidden": sizes[1:-1],
        "batch": len(x_train),
        "epochs": args.epochs,
        "steps_per_epoch": 1,
        "warmup_steps": 0,
        "warmup_start": 1.0,
        "clip_grad_norm": 0.0,
        "seed": args.seed,
        "seconds": seconds,
        "steps": record,
        "evals": evals,
        "lbfgs": curves,
    }
    out.write_text(json.dumps(result))
    print(f"{args.optimizer} ({args.dtype}): {args.epochs} L-BFGS steps ({sum(curves['iterations'])} iterations, "
          f"{sum(curves['evaluations'])} evaluations of the full batch) in {seconds:.1f} s, training loss "
          f"{curves['final_loss']:.4f}, test loss {evals['test_loss'][-1]:.4f}, "
          f"test accuracy {100 * evals['test_accuracy'][-1]:.2f} % -> {out}")


if __name__ == "__main__":
    main()
