#!/usr/bin/env python3
"""Times torch.optim.AdamW on the layouts of `cargo bench --bench optimizer`, for comparison.

    python3 benches/torch_adamw.py [--device cuda|cpu] [--sizes 1M,16M,64M]
        [--tensor-counts 1,100,1000,10000] [--scaling-elements 16M] [--gpt2] [--reps 20]
        [--out torch_adamw.json]

For every layout it times (CUDA events around each step; on the CPU, wall time of each step)
torch.optim.AdamW with
fused=True, foreach=True and the single-tensor loop (foreach=False, fused=False: one kernel per
operation per tensor, the composed-op baseline), and a device-to-device copy moving the same
bytes (28 bytes per element: param, grad, exp_avg, exp_avg_sq read; param, exp_avg,
exp_avg_sq written; a copy of 14 bytes per element reads and writes as much). It prints a table
and writes JSON with the medians and every sample. Float32 parameters, torch's AdamW defaults
(GPT-2: lr 6e-4, betas (0.9, 0.95), weight decay 0.1 on 2-D weights and 0 on the rest, as the
Rust benchmark does). The default device is CUDA; `--device cpu` times torch's CPU kernels
(all of torch's threads), the framework baseline for a software adapter.
"""

import argparse
import json
import platform
import statistics
import sys
import time

import torch

BYTES_PER_ELEMENT = 28


def parse_count(text):
    text = text.strip()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1:].upper() in units:
        return int(text[:-1]) * units[text[-1:].upper()]
    return int(text)


def format_count(n):
    for unit, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def split_layout(elements, count):
    """`elements` as `count` tensors of (almost) equal size, one parameter group."""
    shapes = [[elements // count + (1 if t < elements % count else 0)] for t in range(count)]
    return {"name": f"{format_count(elements)} as {count} tensor{'s' if count > 1 else ''}",
            "groups": [shapes], "hyper": [{}]}


def gpt2_small_layout():
    """GPT-2 small (124,439,808 parameters in 148 tensors; the LM head tied to wte)."""
    d, vocab, context, layers = 768, 50257, 1024, 12
    shapes = [[vocab, d], [context, d]]
    for _ in range(layers):
        shapes += [[d], [d], [d, 3 * d], [3 * d], [d, d], [d], [d], [d], [d, 4 * d], [4 * d], [4 * d, d], [d]]
    shapes += [[d], [d]]
    assert len(shapes) == 148
    decay = [s for s in shapes if len(s) >= 2]
    no_decay = [s for s in shapes if len(s) < 2]
    return {"name": "GPT-2 small", "groups": [decay, no_decay],
            "hyper": [{"weight_decay": 0.1}, {"weight_decay": 0.0}],
            "common": {"lr": 6e-4, "betas": (0.9, 0.95)}}


def elements_of(layout):
    return sum(torch.Size(s).numel() for group in layout["groups"] for s in group)


def call_times(device, run, reps, warmup=3):
    """Per-call times in seconds: CUDA events around each call, or the CPU's wall clock."""
    for _ in range(warmup):
        run()
    if device == "cpu":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return times
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        run()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) * 1e-3 for start, end in events]


def release(device):
    if device == "cuda":
        torch.cuda.empty_cache()


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return f"{model}, {torch.get_num_threads()} torch threads"


def time_adamw(device, layout, mode, reps, generator):
    groups = []
    for shapes, hyper in zip(layout["groups"], layout["hyper"]):
        params = []
        for shape in shapes:
            p = torch.nn.Parameter((torch.rand(shape, device=device, generator=generator) - 0.5) * 0.1)
            p.grad = (torch.rand(shape, device=device, generator=generator) - 0.5) * 0.02
            params.append(p)
        groups.append({"params": params, **hyper})
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True},
             "single-tensor": {"foreach": False, "fused": False}}[mode]
    optimizer = torch.optim.AdamW(groups, **layout.get("common", {}), **flags)
    times = call_times(device, optimizer.step, reps)
    del optimizer, groups
    release(device)
    return times


def time_copy(device, elements, reps):
    copy_elements = elements * BYTES_PER_ELEMENT // 8  # float32 elements read (and written)
    source = torch.empty(copy_elements, device=device, dtype=torch.float32).uniform_()
    destination = torch.empty_like(source)
    times = call_times(device, lambda: destination.copy_(source), reps)
    traffic = 2 * copy_elements * 4
    del source, destination
    release(device)
    return times, traffic


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--sizes", default="1M,16M,64M")
    parser.add_argument("--tensor-counts", default="1,100,1000,10000")
    parser.add_argument("--scaling-elements", default="16M")
    parser.add_argument("--gpt2", action="store_true", help="add the GPT-2-small layout (148 tensors, 124 M parameters)")
    parser.add_argument("--modes", default="fused,foreach,single-tensor")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", default="torch_adamw.json")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a machine with one, or pass --device cpu")

    layouts = [split_layout(parse_count(s), 1) for s in args.sizes.split(",") if s]
    scaling = parse_count(args.scaling_elements)
    for count in (int(c) for c in args.tensor_counts.split(",") if c):
        layout = split_layout(scaling, count)
        if layout["name"] not in [l["name"] for l in layouts]:
            layouts.append(layout)
    if args.gpt2:
        layouts.append(gpt2_small_layout())
    modes = [m for m in args.modes.split(",") if m]
    generator = torch.Generator(device=args.device).manual_seed(0)

    results = []
    print(f"device: {device_name(args.device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("| layout | tensors | copy GB/s | " + " | ".join(f"{m} ms | {m} of copy" for m in modes) + " |")
    print("|---|---:|---:|" + "---:|---:|" * len(modes))
    for layout in layouts:
        elements = elements_of(layout)
        tensors = sum(len(g) for g in layout["groups"])
        copy_times, traffic = time_copy(args.device, elements, args.reps)
        copy_s = statistics.median(copy_times)
        row = {"layout": layout["name"], "tensors": tensors, "elements": elements,
               "bytes_per_step": elements * BYTES_PER_ELEMENT,
               "copy": {"median_s": copy_s, "traffic_bytes": traffic, "samples_s": copy_times}}
        cells = [layout["name"], str(tensors), f"{traffic / copy_s / 1e9:.0f}"]
        for mode in modes:
            times = time_adamw(args.device, layout, mode, args.reps, generator)
            step_s = statistics.median(times)
            ratio = (elements * BYTES_PER_ELEMENT / step_s) / (traffic / copy_s)
            row[mode] = {"median_s": step_s, "ratio_of_copy": ratio, "samples_s": times}
            cells += [f"{step_s * 1e3:.3f}", f"{ratio * 100:.0f} %"]
        results.append(row)
        print("| " + " | ".join(cells) + " |", flush=True)

    report = {"device": device_name(args.device), "torch": torch.__version__, "cuda": torch.version.cuda,
              "command_line": sys.argv, "reps": args.reps, "results": results}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
