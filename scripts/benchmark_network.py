# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Network benchmark: parameters, GFLOPs per 224x224 slice and CPU ms/slice for AXUNet and each baseline, and
PAM (softplus vs softmax) time and peak memory at 56x56, 112x112 and 224x224.

Run: ``python scripts/benchmark_network.py [--threads 2] [--batch 1]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from axunet_bundle.networks import NETWORKS, PositionAttention, build_network

SLICE_SIZE = 224
PAM_SIZES = (56, 112, 224)
#: channels of the map PAM attends over in the benchmark (AXUNet's stride-4 skip has 128)
PAM_CHANNELS = 128
#: softmax PAM stores N x N weights and their softmax; skip sizes whose estimate exceeds this many bytes
PAM_MEMORY_LIMIT = 8 * 2**30
BYTES_PER_FLOAT = 4
REPEATS = 3


def time_call(fn, repeats: int = REPEATS) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` in seconds, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def network_rows(batch: int) -> list[str]:
    rows = ["| network | params (M) | GFLOPs / 224² slice | CPU ms / slice |", "|---|---:|---:|---:|"]
    x = torch.randn(batch, 3, SLICE_SIZE, SLICE_SIZE)
    for name in NETWORKS:
        net = build_network(name).eval()
        params = sum(p.numel() for p in net.parameters()) / 1e6
        with torch.inference_mode():
            counter = FlopCounterMode(display=False)
            with counter:
                net(x[:1])
            seconds = time_call(lambda: net(x))
        rows.append(f"| {name} | {params:.2f} | {counter.get_total_flops() / 1e9:.2f} | {seconds / batch * 1e3:.0f} |")
    return rows


def pam_worker(kernel: str, size: int) -> dict:
    """Run in a fresh process so that its peak resident memory belongs to this PAM alone."""
    module = PositionAttention(PAM_CHANNELS, kernel=kernel).eval()
    x = torch.randn(1, PAM_CHANNELS, size, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        seconds = time_call(lambda: module.attend(x), repeats=1 if size > 100 else REPEATS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base  # KiB on Linux
    return {"ms": seconds * 1e3, "peak_mib": peak / 1024}


def pam_rows() -> list[str]:
    rows = [
        "| PAM kernel | map | pixels N | ms | peak extra memory (MiB) | time vs previous size |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for kernel in ("softplus", "softmax"):
        previous = None
        for size in PAM_SIZES:
            pixels = size * size
            if kernel == "softmax" and 2 * pixels**2 * BYTES_PER_FLOAT > PAM_MEMORY_LIMIT:
                need = 2 * pixels**2 * BYTES_PER_FLOAT / 2**30
                rows.append(f"| {kernel} | {size}² | {pixels} | not run | ≈{need:.0f} GiB needed | |")
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--pam-worker", kernel, str(size)],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            growth = f"{result['ms'] / previous:.1f}×" if previous else ""
            previous = result["ms"]
            rows.append(f"| {kernel} | {size}² | {pixels} | {result['ms']:.1f} | {result['peak_mib']:.0f} | {growth} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--pam-worker", nargs=2, metavar=("KERNEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.pam_worker:
        print(json.dumps(pam_worker(args.pam_worker[0], int(args.pam_worker[1]))))
        return
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {cpu}, {args.threads} threads, batch {args.batch}")
    print("\n".join(network_rows(args.batch)))
    print()
    print("\n".join(pam_rows()))


if __name__ == "__main__":
    main()
