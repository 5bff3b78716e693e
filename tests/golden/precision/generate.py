#!/usr/bin/env python3
"""torch's fused AdamW on bfloat16 parameters (CPU), recorded for tests/suite/precision.rs.

torch's fused kernel keeps the state in the parameters' dtype and computes each element in
float32, rounding once per store, as wgpu-optim does with bf16 parameters (no master copy),
bf16 gradients and bf16 state rounded to nearest. The non-fused paths round after every
operation instead, which is other arithmetic.

    pip install torch safetensors
    python3 tests/golden/precision/generate.py [--out adamw_bf16.safetensors]
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

N = 3000
STEPS = 10
HYPER = {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(here, "adamw_bf16.safetensors"))
    args = parser.parse_args()
    torch.manual_seed(0)
    p = torch.randn(N).bfloat16()
    tensors = {"param.initial": p.clone()}
    p.requires_grad_()
    opt = torch.optim.AdamW([p], lr=HYPER["lr"], betas=tuple(HYPER["betas"]), eps=HYPER["eps"],
                            weight_decay=HYPER["weight_decay"], fused=True)
    for step in range(STEPS):
        g = (torch.randn(N) * torch.rand(N) * 0.1).bfloat16()
        tensors[f"grad.{step}"] = g
        p.grad = g.clone()
        opt.step()
    state = opt.state[p]
    tensors["param.final"] = p.detach().clone()
    tensors["exp_avg"] = state["exp_avg"].clone()
    tensors["exp_avg_sq"] = state["exp_avg_sq"].clone()
    metadata = {"torch": torch.__version__, "optimizer": "AdamW(fused=True)", "steps": str(STEPS),
                "hyperparameters": json.dumps(HYPER)}
    save_file(tensors, args.out, metadata=metadata)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
