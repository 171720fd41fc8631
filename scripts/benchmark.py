# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Whole-case benchmark of AXUNet's default inference path against the zoo's SegResNet, written to
docs/benchmarks.md. A thin wrapper around :func:`axunet_bundle.benchmark.run_benchmark`.

Run: ``python scripts/benchmark.py [--device cpu|cuda] [--cases 2] [--threads 2] [--output docs/benchmarks.md]
[--backends] [--quick]``.
"""

from __future__ import annotations

from axunet_bundle.benchmark import main

if __name__ == "__main__":
    main()
