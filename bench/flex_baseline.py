#!/usr/bin/env python3
"""PyTorch baselines for the fused hybrid-attention kernels (issue 5), on the same card:
FlexAttention with a causal sliding-window mask (W = 64) and SDPA causal, bf16, H32 d128,
forward and forward+backward, at B1 N = 4K, 16K, 64K and B8 N4K. Medians of CUDA-event
timings (triton.testing.do_bench). Prints a table; --json FILE writes the numbers.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F

HEADS, DIM, WINDOW = 32, 128, 64
SHAPES = [(1, 4096), (1, 16384), (1, 65536), (8, 4096)]


def median_ms(fn, warmup_ms=10, rep_ms=60):
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--skip-sdpa-64k", action="store_true", help="SDPA causal at 64K is slow")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("flex_baseline: no CUDA device", file=sys.stderr)
        return 2
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)

    def sliding_window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < WINDOW)

    device = torch.cuda.get_device_name()
    rows = []
    for batch, n in SHAPES:
        gen = torch.Generator(device="cuda").manual_seed(0)
        shape = (batch, HEADS, n, DIM)
        q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
        dy = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
        qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        mask = create_block_mask(sliding_window, B=None, H=None, Q_LEN=n, KV_LEN=n, device="cuda")
        token_heads = batch * HEADS * n
        window_flops = token_heads * 4.0 * WINDOW * DIM
        causal_flops = batch * HEADS * 4.0 * DIM * n * (n + 1) / 2

        def flex_fwd():
            return flex(q, k, v, block_mask=mask)

        def flex_fwd_bwd():
            out = flex(qg, kg, vg, block_mask=mask)
            out.backward(dy)

        def sdpa_fwd():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def sdpa_fwd_bwd():
            out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True)
            out.backward(dy)

        cases = [("flex_swa", "fwd", flex_fwd, window_flops), ("flex_swa", "fwd+bwd", flex_fwd_bwd, 3 * window_flops)]
        if not (args.skip_sdpa_64k and n >= 65536):
            cases += [("sdpa_causal", "fwd", sdpa_fwd, causal_flops),
                      ("sdpa_causal", "fwd+bwd", sdpa_fwd_bwd, 3 * causal_flops)]
        for name, what, fn, flops in cases:
            ms = median_ms(fn)
            rows.append({"impl": name, "pass": what, "B": batch, "N": n, "us": ms * 1e3,
                         "TFLOP/s": flops / (ms * 1e-3) / 1e12, "device": device})
            print(f"{name:12s} {what:8s} B{batch} N{n:6d} {ms * 1e3:10.1f} us "
                  f"{flops / (ms * 1e-3) / 1e12:7.1f} TFLOP/s", flush=True)
        del q, k, v, dy, qg, kg, vg, mask
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
