#!/usr/bin/env python3
"""Check ``wgpu-optim minimize`` against the golden torch runs in ``cases/``.

For every case (or those whose name matches ``--only``) this runs

    BIN minimize --problem P --dim N --start cases/<name>/start.safetensors --optimizer O
        --hyperparameters '<run.json's hyperparameters, JSON>' --steps K --out OUT.safetensors
        [--backend B]

reads OUT's ``x`` (float32 [N], the final point) and ``loss`` (float32 [K], the value each
step returned), and compares them with ``expected.safetensors``:

    x      passes when |x - e| <= atol + rtol * max|e| for every element (the error relative
           to the tensor's scale, as src/compare.rs measures it: an element that ends near
           zero by cancellation carries the absolute error of its larger past values);
           with --elementwise, |x - e| <= atol + rtol * |e| per element
    loss   passes when |l - e| <= atol + rtol * |e| at every step

and prints, per case, the largest relative deviation of x and of the steps' losses (and the
step where it is largest). When OUT also holds ``func_evals`` / ``n_iter`` (LBFGS), they are
compared exactly; a mismatch is printed, and fails the case with --check-counts.

Exit status: 0 when every checked case passes; 1 when any case fails, the command fails,
times out or writes an unusable OUT; 2 on usage errors (no such binary, no case matched, no cases directory).

Needs only the Python standard library (the safetensors files are read directly).

Usage:
    python3 tests/golden/minimize/check.py [--bin target/release/wgpu-optim] [--backend B]
        [--only REGEX] [--rtol 1e-4] [--atol 1e-6] [--stable-only] [--elementwise]
        [--check-counts] [--per-step] [--keep DIR] [--timeout S] [--dry-run]
"""

import argparse
import json
import math
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent

DTYPES = {"F32": ("f", 4), "F64": ("d", 8), "I64": ("q", 8), "I32": ("i", 4)}


def read_safetensors(path):
    """{name: (dtype, shape, list of values)} of a safetensors file (F32, F64, I32, I64)."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} past the end of the file")
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise ValueError(f"{path}: {name} has dtype {dtype} (expected one of {sorted(DTYPES)})")
        code, size = DTYPES[dtype]
        count = math.prod(shape)
        if end - begin != count * size or end > len(body):
            raise ValueError(f"{path}: {name}: data offsets do not match shape {shape}")
        values = array(code)
        values.frombytes(body[begin:end])
        if sys.byteorder != "little":
            values.byteswap()
        out[name] = (dtype, list(shape), values.tolist())
    return out


def deviation(got, want, rtol, atol, normwise):
    """(passes, largest relative deviation, index of it) of got against want."""
    scale = max((abs(w) for w in want), default=0.0)
    ok, worst, at = True, 0.0, None
    for i, (g, w) in enumerate(zip(got, want)):
        if not math.isfinite(g):
            return False, math.inf, i
        d = abs(g - w)
        ref = scale if normwise else abs(w)
        if d > atol + rtol * ref:
            ok = False
        rel = d / ref if ref > 0 else (0.0 if d == 0 else math.inf)
        if at is None or rel > worst:
            worst, at = rel, i
    return ok, worst, at


def die(message):
    print(f"check.py: {message}", file=sys.stderr)
    sys.exit(2)


def cases_of(golden, only, stable_only):
    case_root = golden / "cases"
    if not case_root.is_dir():
        die(f"no cases directory {case_root}")
    names = sorted(d.name for d in case_root.iterdir() if (d / "run.json").is_file())
    if only:
        names = [n for n in names if re.search(only, n)]
    if stable_only:
        if not (golden / "manifest.json").is_file():
            die(f"--stable-only needs {golden / 'manifest.json'}")
        manifest = json.loads((golden / "manifest.json").read_text())
        stable = {e["name"] for e in manifest["cases"] if e.get("sensitivity", {}).get("stable")}
        names = [n for n in names if n in stable]
    return names


def command(args, case_dir, run, out_path):
    cmd = [str(args.bin), "minimize",
           "--problem", run["problem"],
           "--dim", str(run["dim"]),
           "--start", str(case_dir / "start.safetensors"),
           "--optimizer", run["optimizer"],
           "--hyperparameters", json.dumps(run["hyperparameters"], separators=(",", ":")),
           "--steps", str(run["steps"]),
           "--out", str(out_path)]
    if args.backend is not None:
        cmd += ["--backend", args.backend]
    return cmd


def check_case(args, case_dir, out_dir):
    """Runs one case; returns (passed, line, details)."""
    run = json.loads((case_dir / "run.json").read_text())
    out_path = out_dir / f"{case_dir.name}.safetensors"
    cmd = command(args, case_dir, run, out_path)
    if args.dry_run:
        return True, f"{case_dir.name}: {shlex.join(cmd)}", []
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return False, f"FAIL {case_dir.name}: timed out after {args.timeout} s", [shlex.join(cmd)]
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-10:]
        return False, f"FAIL {case_dir.name}: command exited with status {proc.returncode}", \
            [shlex.join(cmd)] + ["  | " + line for line in tail]
    try:
        got = read_safetensors(out_path)
    except (OSError, ValueError) as e:
        return False, f"FAIL {case_dir.name}: unreadable output: {e}", [shlex.join(cmd)]
    expected = read_safetensors(case_dir / "expected.safetensors")

    problems = []
    for key in ("x", "loss"):
        if key not in got:
            problems.append(f"the output has no tensor {key!r}")
        elif got[key][1] != expected[key][1]:
            problems.append(f"{key} has shape {got[key][1]}, expected {expected[key][1]}")
        elif got[key][0] != "F32":
            problems.append(f"{key} is {got[key][0]}, expected F32")
    if problems:
        return False, f"FAIL {case_dir.name}: " + "; ".join(problems), [shlex.join(cmd)]

    x_ok, x_rel, x_at = deviation(got["x"][2], expected["x"][2], args.rtol, args.atol,
                                  normwise=not args.elementwise)
    l_ok, l_rel, l_at = deviation(got["loss"][2], expected["loss"][2], args.rtol, args.atol,
                                  normwise=False)
    passed = x_ok and l_ok
    notes, details = [], []
    for key in ("func_evals", "n_iter"):
        if key in got and key in expected:
            same = got[key][1] == expected[key][1] and \
                [int(v) for v in got[key][2]] == [int(v) for v in expected[key][2]]
            if not same:
                first = next((i for i, (a, b) in enumerate(zip(got[key][2], expected[key][2]))
                              if int(a) != int(b)), None)
                notes.append(f"{key} differ" + (f" from step {first}" if first is not None else ""))
                if args.check_counts:
                    passed = False
    if args.per_step:
        for k, (g, e) in enumerate(zip(got["loss"][2], expected["loss"][2])):
            rel = abs(g - e) / abs(e) if e else (0.0 if g == e else math.inf)
            details.append(f"    step {k:>3}: loss {g:.9g} expected {e:.9g} rel {rel:.3g}")
    x_kind = "elementwise" if args.elementwise else "normwise"
    line = (f"{'PASS' if passed else 'FAIL'} {case_dir.name:<46} "
            f"x {x_rel:.3g} ({x_kind}{'' if x_ok else ', over'}) "
            f"loss {l_rel:.3g} at step {l_at}{'' if l_ok else ' (over)'}"
            + (f"  [{'; '.join(notes)}]" if notes else ""))
    return passed, line, details


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, default=Path("target/release/wgpu-optim"),
                    help="the wgpu-optim binary (default: %(default)s)")
    ap.add_argument("--backend", default=None,
                    help="passed on as --backend B (auto, vulkan, gl, metal, dx12, cpu); "
                         "default: not passed, so the binary's default (auto) applies")
    ap.add_argument("--golden", type=Path, default=HERE,
                    help="directory holding cases/ and manifest.json (default: this script's)")
    ap.add_argument("--only", default=None, help="check only the cases whose name matches REGEX")
    ap.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default: %(default)s)")
    ap.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default: %(default)s)")
    ap.add_argument("--elementwise", action="store_true",
                    help="compare x element by element (|x-e| <= atol + rtol*|e|) instead of "
                         "against its scale max|e|")
    ap.add_argument("--stable-only", action="store_true",
                    help="skip the cases manifest.json marks unstable (sensitivity.stable false)")
    ap.add_argument("--check-counts", action="store_true",
                    help="fail a case whose func_evals / n_iter (when the output has them) differ")
    ap.add_argument("--per-step", action="store_true", help="print every step's loss")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write the outputs into this directory and keep them (default: a "
                         "temporary directory, removed at the end)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds per case before it counts as failed (default: %(default)s)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the command of every selected case and run nothing")
    args = ap.parse_args()

    if args.rtol < 0 or args.atol < 0 or not (math.isfinite(args.rtol) and math.isfinite(args.atol)):
        ap.error("--rtol and --atol must be finite and non-negative")
    if args.timeout <= 0:
        ap.error("--timeout must be positive")
    if args.only:
        try:
            re.compile(args.only)
        except re.error as e:
            ap.error(f"--only: bad regular expression: {e}")

    names = cases_of(args.golden, args.only, args.stable_only)
    if not names:
        print("check.py: no case matched", file=sys.stderr)
        return 2
    if not args.dry_run and not (args.bin.is_file() or shutil.which(str(args.bin))):
        print(f"check.py: no binary {args.bin} (build it with `cargo build --release`, or pass --bin)",
              file=sys.stderr)
        return 2

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        out_dir, cleanup = args.keep, None
    else:
        cleanup = tempfile.TemporaryDirectory(prefix="minimize-check-")
        out_dir = Path(cleanup.name)
    failed = []
    try:
        for name in names:
            passed, line, details = check_case(args, args.golden / "cases" / name, out_dir)
            print(line, flush=True)
            for d in details:
                print(d)
            if not passed:
                failed.append(name)
    finally:
        if cleanup is not None:
            cleanup.cleanup()

    if args.dry_run:
        print(f"dry run: {len(names)} cases")
        return 0
    print(f"{len(names) - len(failed)} of {len(names)} cases pass (rtol {args.rtol:g}, atol {args.atol:g}, "
          f"x {'elementwise' if args.elementwise else 'against its scale'})")
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
