# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""What a user waits for: ``python -m monai.bundle run inference`` in a fresh process, AXUNet's bundle against the
model zoo's ``brats_mri_segmentation`` bundle (its own ``configs/inference.json``), side by side.

Both bundles get random weights (written here; speed does not depend on them, AXUNet's precision guard may) and the
same generated 240 x 240 x 155 cases. Each run is a new ``python -m monai.bundle run`` process, with one case and
with three; runs alternate between the bundles, and each figure is the median over the repeats:

- **one case, fresh process**: everything a user waits for (imports, config parsing, checks, the case, saving);
- **marginal cost of a case**: ``(T3 - T1) / 2``, the cost of each further case of a folder;
- **peak resident memory** of the one-case process (its ``VmHWM``, polled; data-loader workers not included).

Run it through ``scripts/benchmark.py --zoo-bundle DIR`` (``DIR``: the zoo bundle's folder, e.g. from
``python -m monai.bundle download brats_mri_segmentation --bundle_dir .`` or the model-zoo repository's
``models/brats_mri_segmentation``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["bundle_run_rows", "bundle_run_table", "memory_status", "time_bundle_run"]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the zoo bundle reads the four BraTS modalities of a case in one image entry, in this order
ZOO_MODALITIES = ("flair", "t1", "t1ce", "t2")
TARGET_ONE_CASE, TARGET_MARGINAL, TARGET_RSS_GIB = 0.8, 0.6, 2.5
GIB = 2**30
RSS_POLL_S = 0.1
#: AXUNet's log line naming its backend and precision (``BrainSliceInferer``)
BACKEND_LINE = re.compile(r"inference backend: (\S+), ([^(]+?) on (\w+)")
GUARD_LINE = re.compile(r"bfloat16 labels (agree with|differ from) float32")


def memory_status(pid: int | str = "self") -> tuple[int, int] | None:
    """A process's current and peak resident memory in bytes (``VmRSS``, ``VmHWM`` of ``/proc/<pid>/status``: the
    peak since its ``exec``); ``None`` once it is gone, or off Linux."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def time_bundle_run(command: Sequence[str], cwd: Path, log: Path) -> tuple[float, int]:
    """Run ``command`` in ``cwd`` (output to ``log``); its wall seconds and the peak resident bytes of its main
    process (``VmHWM`` polled every ``RSS_POLL_S``: ``ru_maxrss`` would carry over the benchmark's own peak through
    fork and exec). Raises ``RuntimeError`` when it fails."""
    peak = 0
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(list(command), cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            peak = max(peak, (memory_status(process.pid) or (0, 0))[1])
            time.sleep(RSS_POLL_S)
        seconds = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}); see {log}")
    return seconds, peak


def _zoo_bundle(source: Path, work: Path, cases: Sequence[Path]) -> Path:
    """A copy of the zoo bundle with random weights and one datalist per case count."""
    from monai.bundle import ConfigParser

    bundle = work / "zoo_bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(source, bundle, ignore=shutil.ignore_patterns("models"))
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    for n in {1, len(cases)}:
        entries = [{"image": [str(next(c.glob(f"*_{m}.nii.gz"))) for m in ZOO_MODALITIES]} for c in cases[:n]]
        (work / f"zoo_datalist_{n}.json").write_text(json.dumps({"testing": entries}, indent=4))
    return bundle


def _axunet_bundle(work: Path, cases: Sequence[Path]) -> tuple[Path, Path]:
    """Random AXUNet weights, and one dataset folder per case count (copies: the cases' own folders)."""
    from axunet_bundle.networks import AXUNet

    torch.manual_seed(0)
    weights = work / "axunet_random.pt"
    torch.save(AXUNet().state_dict(), weights)
    for n in {1, len(cases)}:
        folder = work / f"axunet_cases_{n}"
        folder.mkdir(exist_ok=True)
        for case in cases[:n]:
            if not (folder / case.name).exists():
                shutil.copytree(case, folder / case.name)
    return REPO_ROOT, weights


def bundle_run_rows(zoo_source: str | os.PathLike, cases: Sequence[Path], work: Path, repeats: int = 2) -> dict:
    """Time both bundles through ``monai.bundle run``: 1 case and ``len(cases)`` cases, alternating, ``repeats``
    times. Returns the medians, peak memory and what AXUNet's log says it ran."""
    work.mkdir(parents=True, exist_ok=True)
    cases = [Path(c) for c in cases]
    zoo = _zoo_bundle(Path(zoo_source), work, cases)
    axunet_root, weights = _axunet_bundle(work, cases)
    run = [sys.executable, "-m", "monai.bundle", "run"]
    counts = sorted({1, len(cases)})
    times: dict[tuple[str, int], list[float]] = {}
    rss: dict[str, list[int]] = {}
    logs: dict[str, Path] = {}
    for repeat in range(repeats):
        for n in counts:
            for name in ("axunet", "zoo"):
                out, log = work / f"out_{name}_{n}_{repeat}", work / f"{name}_{n}_{repeat}.log"
                if name == "axunet":
                    command = [*run, "inference", "--meta_file", "configs/metadata.json"]
                    command += ["--config_file", "configs/inference.json", "--logging_file", "configs/logging.conf"]
                    command += ["--dataset_dir", str(work / f"axunet_cases_{n}"), "--output_dir", str(out)]
                    command += ["--ckpt_path", str(weights), "--overwrite", "True"]
                    cwd = axunet_root
                else:
                    command = [*run, "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"]
                    command += ["--logging_file", "configs/logging.conf", "--bundle_root", str(zoo)]
                    command += ["--data_list_file_path", str(work / f"zoo_datalist_{n}.json"), "--output_dir", str(out)]
                    cwd = zoo
                seconds, peak = time_bundle_run(command, cwd, log)
                times.setdefault((name, n), []).append(seconds)
                if n == 1:
                    rss.setdefault(name, []).append(peak)
                    logs[name] = log
                shutil.rmtree(out, ignore_errors=True)
    result: dict[str, Any] = {"repeats": repeats, "cases": len(cases)}
    for name in ("axunet", "zoo"):
        one = statistics.median(times[(name, 1)])
        many = statistics.median(times[(name, len(cases))])
        result[name] = {
            "one_case_s": one,
            "many_cases_s": many,
            "marginal_s": (many - one) / max(len(cases) - 1, 1),
            "peak_rss": max(rss[name]),
        }
    text = logs["axunet"].read_text(errors="replace")
    backend = BACKEND_LINE.search(text)
    guard = GUARD_LINE.findall(text)
    result["axunet_ran"] = f"{backend.group(1)}, {backend.group(2).strip()}" if backend else "unknown"
    result["axunet_guard"] = guard[0] if guard else None
    return result


def bundle_run_table(r: dict) -> list[str]:
    """The Markdown rows of :func:`bundle_run_rows`' result."""
    ax, zoo = r["axunet"], r["zoo"]

    def status(value: float, bound: float) -> str:
        return f"{'met' if value <= bound else 'NOT met'} (<= {bound:g})"

    one, marginal = ax["one_case_s"] / zoo["one_case_s"], ax["marginal_s"] / zoo["marginal_s"]
    ran = r["axunet_ran"] + (f"; its bf16 labels {r['axunet_guard']} float32's" if r["axunet_guard"] else "")
    n = r["cases"]
    return [
        f"| `python -m monai.bundle run`, fresh process, median of {r['repeats']} interleaved runs | AXUNet bundle "
        "| zoo `brats_mri_segmentation` | AXUNet ÷ zoo | target |",
        "|---|---:|---:|---|---|",
        f"| one case (s) | {ax['one_case_s']:.1f} | {zoo['one_case_s']:.1f} | **{one:.2f}** "
        f"| {status(one, TARGET_ONE_CASE)} |",
        f"| {n} cases (s) | {ax['many_cases_s']:.1f} | {zoo['many_cases_s']:.1f} | | |",
        f"| marginal cost of a case, (T{n} − T1) / {n - 1} (s) | {ax['marginal_s']:.1f} | {zoo['marginal_s']:.1f} "
        f"| **{marginal:.2f}** | {status(marginal, TARGET_MARGINAL)} |",
        f"| peak resident memory of the one-case process (GiB) | {ax['peak_rss'] / GIB:.2f} "
        f"| {zoo['peak_rss'] / GIB:.2f} | AXUNet ran: {ran} | AXUNet {status(ax['peak_rss'] / GIB, TARGET_RSS_GIB)} |",
    ]
