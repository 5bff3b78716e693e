#!/usr/bin/env python3
"""bitsandbytes' 8-bit blockwise quantization, recorded for tests/suite/precision.rs.

Writes maps.safetensors: the dynamic quantization maps bitsandbytes' 8-bit optimizers use
(`create_dynamic_map(signed=True)` for first moments, `signed=False` for second moments), and
for test inputs (whole and partial blocks of 256, several scales) the codes and absmax of
bitsandbytes' reference quantizer (its `default` backend: nearest code, ties to the lower one,
blocks of 256 with absmax per block), the dequantized values, and for the record how many codes
of its CPU library differ (an approximate binary search that can miss the nearest code near zero).

    pip install torch bitsandbytes==0.50.2 safetensors
    python3 tests/golden/quantization/generate.py [--out maps.safetensors]
"""
import argparse
import json
import os

import bitsandbytes
import bitsandbytes.functional as F
import torch
from safetensors.torch import save_file


def reference_quantize(A, code, blocksize=256):
    # bitsandbytes/backends/default/ops.py, "bitsandbytes::quantize_blockwise" (0.50.2).
    A_flat = A.reshape(-1).float()
    n = A_flat.numel()
    rem = n % blocksize
    full = n - rem
    blocks = full // blocksize
    A_com = A_flat[:full].reshape(blocks, blocksize)
    absmax = A_com.abs().max(dim=-1)[0]
    scaled = torch.clamp(A_com * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = A_flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(A_flat[full:] / am, -1, 1)])
    bounds = (code[:-1] + code[1:]) / 2
    q = torch.bucketize(scaled, bounds, out_int32=True).to(torch.uint8)
    return q.reshape(A.shape), absmax


def write_rust_maps(maps, path):
    lines = [
        f"//! bitsandbytes {bitsandbytes.__version__}'s dynamic quantization maps, as f32 bits: written by",
        "//! tests/golden/quantization/generate.py (do not edit; tests/suite/precision.rs checks them",
        "//! against the recorded maps).",
        "",
    ]
    for name, code in maps.items():
        bits = code.float().contiguous().view(torch.int32).tolist()
        what = "first moments (signed)" if name == "signed" else "second moments (unsigned)"
        lines.append(f"/// `bitsandbytes.functional.create_dynamic_map(signed={name == 'signed'})`: for {what}, ascending.")
        lines.append(f"pub const {name.upper()}: [u32; 256] = [")
        for k in range(0, 256, 8):
            lines.append("    " + " ".join(f"0x{b & 0xffffffff:08x}," for b in bits[k:k + 8]))
        lines.append("];")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {os.path.normpath(path)}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(here, "maps.safetensors"))
    args = parser.parse_args()
    torch.manual_seed(0)
    maps = {"signed": F.create_dynamic_map(signed=True), "unsigned": F.create_dynamic_map(signed=False)}
    tensors = {f"{name}.code": code.float().contiguous() for name, code in maps.items()}
    cases = []
    for name, code in maps.items():
        for n in (1024 + 77, 2048):
            for scale in (1.0, 1e-3, 1e-7):
                x = torch.randn(n) * torch.rand(n) ** 4 * scale
                if name == "unsigned":
                    x = x.abs()
                x[::97] = 0.0
                case = f"{name}.n{n}.s{scale:g}"
                q, absmax = reference_quantize(x, code)
                clib_q, clib_absmax = torch.ops.bitsandbytes.quantize_blockwise(x, code, 256)
                assert torch.equal(clib_absmax, absmax)
                dequantized = torch.ops.bitsandbytes.dequantize_blockwise(q, absmax, code, 256, torch.float32)
                tensors[f"{case}.input"] = x
                tensors[f"{case}.codes"] = q.to(torch.uint8)
                tensors[f"{case}.absmax"] = absmax
                tensors[f"{case}.dequantized"] = dequantized
                cases.append({"case": case, "map": name, "n": n, "scale": scale,
                              "cpu_library_codes_differing": int((clib_q != q).sum())})
    metadata = {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__, "blocksize": "256",
                "cases": json.dumps(cases)}
    save_file(tensors, args.out, metadata=metadata)
    write_rust_maps(maps, os.path.join(here, "..", "..", "..", "src", "quantization_maps.rs"))
    for c in cases:
        print(c)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
