# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The one GPU check of the bundle: what a user with a GPU meets first, in one command (``scripts/gpu_check.sh``).

In one run, on generated BraTS-size cases (240 x 240 x 155), it

1. writes the cases and their slice cache (``axunet synth``, ``axunet prepare``);
2. times the training's data loader alone (``train#dataloader`` of ``configs/train.json`` + ``slice_cache.json``);
3. trains through ``python -m monai.bundle run training`` at 224², batch 64, mixed precision, for a fixed number of
   iterations, timing each iteration and the time it waited for its batch (:class:`IterationTimer`);
4. runs ``configs/multi_gpu_train.json`` under ``torchrun --standalone --nproc_per_node=1`` (NCCL on CUDA);
5. segments 3 whole cases through ``python -m monai.bundle run`` of ``configs/inference.json`` (its ``auto`` path)
   with the model trained in 3, and one of them again on the CPU in float32, and compares the labels (Dice per
   region, WT/TC/ET);

and writes ``gpu_check.md`` (one table) and ``gpu_check.json`` to its output folder, with each step's log. Without
CUDA it says so in one line (exit status 3); ``--dry-run`` runs the same steps on the CPU at tiny sizes (the CI test).

Run: ``python scripts/gpu_check.py OUTPUT [--dry-run]`` from the checkout's root (``scripts/gpu_check.sh`` on the
device machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
#: BraTS 2021's training cases and the paper's epochs: the estimate of a full training at the measured rate
BRATS2021_TRAINING_CASES = 1251
PAPER_EPOCHS = 40
#: forward GFLOP of AXUNet per 224² slice (docs/benchmarks.md); a training step costs about 3 forward passes
FORWARD_GFLOP_224 = 15.57
TRAINING_FLOP_FACTOR = 3
#: the exit status when the machine has no CUDA device (and --dry-run was not asked for)
NO_CUDA_STATUS = 3
REGIONS = ("WT", "TC", "ET")
GIB = 2**30


@dataclass(frozen=True)
class CheckSizes:
    """Sizes of one check; :meth:`dry` gives the tiny CPU ones of the CI test.

    Args:
        cases: generated training cases (fold 0 of ``folds`` is validated).
        folds: the datalist's folds.
        size, depth: each case's in-plane size and number of axial slices.
        roi: the training's slice side (``roi_size``).
        batch: the training batch (``batch_size``, slices).
        iterations: timed training iterations of the single-process run, after ``warmup`` untimed ones.
        warmup: untimed first iterations (cuDNN's algorithm search, the workers' start).
        ddp_iterations: iterations of the ``torchrun`` run.
        loader_batches: batches timed when the data loader runs alone (after one untimed batch).
        infer_cases: whole cases segmented through the bundle's inference.
        compare_cases: of these, how many are segmented again on the CPU in float32.
        workers: processes that write the cases and the slice cache.
    """

    cases: int = 12
    folds: int = 5
    size: int = 240
    depth: int = 155
    roi: int = 224
    batch: int = 64
    iterations: int = 300
    warmup: int = 20
    ddp_iterations: int = 60
    loader_batches: int = 60
    infer_cases: int = 3
    compare_cases: int = 1
    workers: int = max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))

    @classmethod
    def dry(cls) -> CheckSizes:
        """Tiny sizes for a CPU run of every step (numbers mean nothing)."""
        sizes = dict(cases=4, folds=2, size=64, depth=16, roi=64, batch=2, iterations=1, warmup=1, ddp_iterations=1)
        return cls(**sizes, loader_batches=2, workers=1)


class IterationTimer:
    """An ignite handler timing an engine's iterations and how long each waited for its batch; rank 0 writes JSON.

    ignite's ``BasicTimeProfiler`` reports totals over all iterations only, with the first (cuDNN's algorithm search,
    the workers' start) inside them: this one skips the first ``skip`` iterations and synchronises CUDA at each
    iteration's end, so the seconds are the GPU's.

    Args:
        output: the JSON file written when the engine completes: ``iterations`` and ``seconds`` (timed after the
            first ``skip``), ``data_wait_s`` (of those, seconds spent getting batches), ``items`` (batch items timed,
            ``items_per_iteration`` each), ``iteration_s`` (each iteration's seconds, all of them),
            ``peak_gpu_memory_gib`` (``torch.cuda.max_memory_allocated``; null without CUDA).
        items_per_iteration: slices (training) or cases (inference) per iteration.
        skip: untimed first iterations.
    """

    def __init__(self, output: str, items_per_iteration: int = 1, skip: int = 0) -> None:
        self.output = Path(output)
        self.items_per_iteration = int(items_per_iteration)
        self.skip = int(skip)
        self._batch_start = self._last = 0.0
        self.iteration_s: list[float] = []
        self.wait_s: list[float] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._get_batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._get_batch_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _started(self, engine: Any) -> None:
        self._sync()
        self._last = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def _get_batch_started(self, engine: Any) -> None:
        self._batch_start = time.perf_counter()

    def _get_batch_completed(self, engine: Any) -> None:
        self.wait_s.append(time.perf_counter() - self._batch_start)

    def _iteration_completed(self, engine: Any) -> None:
        self._sync()
        now = time.perf_counter()
        self.iteration_s.append(now - self._last)
        self._last = now

    def _completed(self, engine: Any) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        timed = self.iteration_s[self.skip :]
        result = {
            "iterations": len(timed),
            "seconds": sum(timed),
            "data_wait_s": sum(self.wait_s[self.skip :]),
            "items": len(timed) * self.items_per_iteration,
            "items_per_iteration": self.items_per_iteration,
            "iteration_s": self.iteration_s,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else None,
        }
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_text(json.dumps(result, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------------- steps
def _python_env() -> dict[str, str]:
    """The environment of every step's process: this checkout first on the path (its configs import its code)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _run(name: str, command: Sequence[str], out: Path) -> float:
    """Run one step's command (its output in ``out/<name>.log``); its wall seconds. Raises RuntimeError naming the
    step and the log's last lines when it fails."""
    log = out / f"{name}.log"
    print(f"gpu_check: {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as stream:
        status = subprocess.run(
            list(command), cwd=REPO_ROOT, env=_python_env(), stdout=stream, stderr=subprocess.STDOUT
        )
    seconds = time.perf_counter() - start
    if status.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"step {name} failed (exit status {status.returncode}); the end of {log}:\n{tail}")
    return seconds


def _bundle_run(configs: Sequence[Path], overrides: dict[str, Any], runner: Sequence[str] | None = None) -> list[str]:
    """``python -m monai.bundle run`` of ``configs`` with ``--id value`` overrides (values as Python literals, which
    MONAI's command line, fire, parses)."""
    command = list(runner or [sys.executable, "-m", "monai.bundle"])
    command += ["run", "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    command += ["--config_file", json.dumps([str(c) for c in configs])]
    for key, value in overrides.items():
        command += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return command


def _timer_config(path: Path, target: str, timer_json: Path, items: str, skip: int, extra: dict) -> Path:
    """A config file adding an :class:`IterationTimer` to the handlers at ``target`` (merged with ``+``)."""
    config = {
        "gpu_check_timer": {
            "_target_": "scripts.gpu_check.IterationTimer",
            "output": str(timer_json),
            "items_per_iteration": items,
            "skip": skip,
        },
        f"+{target}": ["@gpu_check_timer"],
        **extra,
    }
    path.write_text(json.dumps(config, indent=4) + "\n")
    return path


def _training_overrides(sizes: CheckSizes, work: Path, name: str) -> dict[str, Any]:
    return {
        "bundle_root": str(work / name),
        "dataset_dir": str(work / "data"),
        "slice_cache_dir": str(work / "cache"),
        "roi_size": [sizes.roi, sizes.roi],
        "batch_size": sizes.batch,
        "folds": sizes.folds,
        "epochs": 1,
        "pretrained": False,  # nothing can be downloaded on the device machine; speed does not depend on it
    }


def measure_loader(sizes: CheckSizes, work: Path) -> dict[str, Any]:
    """Slices/s of the training's own ``train#dataloader`` (train.json + slice_cache.json) alone, in this process."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "slice_cache.json")])
    for key, value in _training_overrides(sizes, work, "loader").items():
        parser[key] = value
    loader = parser.get_parsed_content("train#dataloader")
    served, batches, start = 0, 0, time.perf_counter()
    while batches <= sizes.loader_batches:  # a small cache may hold fewer batches than wanted: loop over epochs
        for batch in loader:
            if batches == 0:  # the first batch pays for the workers' start
                start = time.perf_counter()
            else:
                served += batch["image"].shape[0]
            batches += 1
            if batches > sizes.loader_batches:
                break
    seconds = time.perf_counter() - start
    return {"slices_per_s": served / seconds, "workers": loader.num_workers, "loader": type(loader).__name__}


def _read_labels(path: Path) -> torch.Tensor:
    """A label map's regions (3, H, W, D) as a bool tensor."""
    import nibabel as nib

    from axunet_bundle.data.labels import convention_for_values, labels_to_regions

    label = torch.as_tensor(nib.load(str(path)).get_fdata().astype("uint8"))
    return torch.as_tensor(labels_to_regions(label[None], convention_for_values(label))).bool()


def label_dice(a: Path, b: Path) -> list[float]:
    """Dice of the regions WT, TC, ET between two label maps of one case (1.0 where both are empty)."""
    x, y = _read_labels(a), _read_labels(b)
    dice = []
    for region in range(len(REGIONS)):
        both, total = (x[region] & y[region]).sum().item(), x[region].sum().item() + y[region].sum().item()
        dice.append(1.0 if total == 0 else 2 * both / total)
    return dice


def _seg(folder: Path, case: str) -> Path:
    found = sorted(folder.glob(f"{case}*_seg.nii.gz"))
    if not found:
        raise RuntimeError(f"no segmentation of {case} in {folder}")
    return found[0]


def _backend(log: Path) -> str:
    try:  # imported as scripts.gpu_check (in the bundle's processes, tests) or run as scripts/gpu_check.py
        from scripts.bundle_runs import BACKEND_LINE
    except ImportError:
        from bundle_runs import BACKEND_LINE
    found = BACKEND_LINE.search(log.read_text(errors="replace"))
    return f"{found.group(1)}, {found.group(2)} on {found.group(3)}" if found else "not in the log"


def _matmul_tflops(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """A square matmul's rate in TFLOP/s (the reference for the fraction of peak the training reached)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    repeats, start = 10, time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def axunet(argv: Sequence[str]) -> None:
    """``axunet ARGV`` in this process; raises RuntimeError on a non-zero exit status (commands end in SystemExit)."""
    from axunet_bundle.cli import main as command_line

    try:
        command_line(list(argv))
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise RuntimeError(f"axunet {' '.join(argv)} failed (exit status {exit.code})") from None


def run_check(out: Path, sizes: CheckSizes, work: Path, device: torch.device) -> dict[str, Any]:
    """Every step of the check (module docstring); returns the results that :func:`render` tabulates."""
    start = time.perf_counter()
    results: dict[str, Any] = {"sizes": asdict(sizes), "seconds": {}}
    results["machine"] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    seconds = results["seconds"]

    step = time.perf_counter()
    shape = ["--size", str(sizes.size), "--depth", str(sizes.depth)]
    axunet(["synth", str(work / "data"), "--n", str(sizes.cases), *shape])
    axunet(["synth", str(work / "infer"), "--n", str(sizes.infer_cases), "--seed", "1", *shape])
    roi = json.dumps([sizes.roi, sizes.roi])
    axunet(["prepare", str(work / "data"), str(work / "cache"), "--workers", str(sizes.workers), "--roi_size", roi])
    seconds["cases and slice cache"] = time.perf_counter() - step

    step = time.perf_counter()
    results["loader"] = measure_loader(sizes, work)
    seconds["loader alone"] = time.perf_counter() - step

    amp = {"train#trainer#amp_kwargs": {"dtype": "$torch.bfloat16"}} if device.type == "cuda" else {}
    runs = {"train": (sizes.iterations, None), "torchrun": (sizes.ddp_iterations, ["torchrun"])}
    for name, (iterations, runner) in runs.items():
        timer = work / f"{name}_timer.json"
        extra = {"train#trainer#epoch_length": iterations + sizes.warmup, **amp}
        config = _timer_config(work / f"{name}_timer.json.config.json", "train#handlers", timer, "@batch_size",
                               sizes.warmup, extra)  # fmt: skip
        configs = [CONFIGS / "train.json"] + ([CONFIGS / "multi_gpu_train.json"] if runner else [])
        configs += [CONFIGS / "slice_cache.json", config]
        if runner:
            runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m"]
            runner += ["monai.bundle"]
        seconds[name] = _run(name, _bundle_run(configs, _training_overrides(sizes, work, name), runner), out)
        results[name] = json.loads(timer.read_text())

    model = work / "train" / "models" / "model.pt"
    runs = {"infer": ("auto", "auto", work / "infer")}
    compare = work / "compare"
    compare.mkdir(exist_ok=True)
    cases = sorted(p.name for p in (work / "infer").iterdir() if p.is_dir())
    for case in cases[: sizes.compare_cases]:
        (compare / case).symlink_to(work / "infer" / case)
    runs["infer_cpu_float32"] = ("cpu", "float32", compare)
    for name, (where, precision, data) in runs.items():
        timer = work / f"{name}_timer.json"
        config = _timer_config(work / f"{name}_timer.config.json", "handlers", timer, 1, 1, {})
        overrides = {"dataset_dir": str(data), "output_dir": str(work / name), "ckpt_path": str(model)}
        overrides["precision"] = precision
        if where == "cpu":  # the reference: the network itself in float32 (not the CPU's default, ONNX Runtime)
            overrides.update(device="$torch.device('cpu')", amp=False, inference_backend="torch")
        seconds[name] = _run(name, _bundle_run([CONFIGS / "inference.json", config], overrides), out)
        results[name] = json.loads(timer.read_text())
        results[name]["path"] = _backend(out / f"{name}.log")
    results["dice"] = {
        case: label_dice(_seg(work / "infer", case), _seg(work / "infer_cpu_float32", case))
        for case in cases[: sizes.compare_cases]
    }
    if device.type == "cuda":
        results["matmul_bf16_tflops"] = _matmul_tflops(device, torch.bfloat16, 8192)
    seconds["total"] = time.perf_counter() - start
    return results


# ------------------------------------------------------------------------------------------------------ report
def _rate(run: dict) -> float | None:
    return run["items"] / run["seconds"] if run["seconds"] > 0 and run["items"] else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def summary(results: dict) -> dict[str, Any]:
    """The table's figures from :func:`run_check`'s results."""
    sizes = results["sizes"]
    train, ddp, infer = results["train"], results["torchrun"], results["infer"]
    rate = _rate(train)
    gflop = FORWARD_GFLOP_224 * TRAINING_FLOP_FACTOR * (sizes["roi"] / 224) ** 2  # convolutions scale with pixels
    training_tflops = rate * gflop / 1e3 if rate else None
    slices_per_epoch = BRATS2021_TRAINING_CASES * 8  # train.json's slices_per_volume: 8 slices of each case per epoch
    later_cases = infer["iteration_s"][1:]  # the first case pays for the inferer's preparation
    return {
        "training slices/s": rate,
        "training data wait share": train["data_wait_s"] / train["seconds"] if train["seconds"] else None,
        "training peak GPU memory (GiB)": train["peak_gpu_memory_gib"],
        "torchrun slices/s": _rate(ddp),
        "torchrun data wait share": ddp["data_wait_s"] / ddp["seconds"] if ddp["seconds"] else None,
        "loader slices/s": results["loader"]["slices_per_s"],
        "loader / training": results["loader"]["slices_per_s"] / rate if rate else None,
        "first case (s)": infer["iteration_s"][0],
        "later cases (s per case)": sum(later_cases) / len(later_cases) if later_cases else None,
        "training TFLOP/s": training_tflops,
        "fraction of bf16 matmul": (
            training_tflops / results["matmul_bf16_tflops"]
            if training_tflops and results.get("matmul_bf16_tflops")
            else None
        ),
        "40 epochs on BraTS 2021 (h)": PAPER_EPOCHS * slices_per_epoch / rate / 3600 if rate else None,
        "slices per epoch": slices_per_epoch,
        "batch": sizes["batch"],
        "roi": sizes["roi"],
    }


def render(results: dict, command: str) -> str:
    """One Markdown table of the check's figures, with the machine and the command."""
    s = summary(results)
    m = results["machine"]
    dice = "; ".join(
        f"{case}: " + ", ".join(f"{r} {d:.3f}" for r, d in zip(REGIONS, values))
        for case, values in results["dice"].items()
    )
    sizes, train, infer = results["sizes"], results["train"], results["infer"]
    loader = f"loader alone {_fmt(s['loader slices/s'])} slices/s ({results['loader']['workers']} workers)"
    loader += f": loader ÷ training = **{_fmt(s['loader / training'], 2)}** (target ≥ 1.5)"
    training = f"training, `monai.bundle run training` + slice cache, {sizes['roi']}², batch {sizes['batch']}"
    wait = _fmt(100 * (s["training data wait share"] or 0)) + "%"
    first = f"first case {_fmt(s['first case (s)'], 2)} s; path: {infer['path']}"
    epochs = f"{PAPER_EPOCHS} epochs on BraTS 2021's {BRATS2021_TRAINING_CASES} training cases at this rate (h)"
    rows = [
        (f"{training}: slices/s", _fmt(s["training slices/s"]), f"{train['iterations']} iterations after {sizes['warmup']}"),
        ("… share of that time the GPU waited for data", wait, loader),
        ("… peak GPU memory (GiB)", _fmt(s["training peak GPU memory (GiB)"], 2), ""),
        (f"… TFLOP/s (3 × {FORWARD_GFLOP_224} GFLOP per 224² slice)", _fmt(s["training TFLOP/s"]),
         f"fraction of a bf16 8192² matmul measured here: {_fmt(s['fraction of bf16 matmul'], 2)}"),
        ("`torchrun --nproc_per_node=1` + multi_gpu_train.json: slices/s", _fmt(s["torchrun slices/s"]),
         f"data wait {_fmt(100 * (s['torchrun data wait share'] or 0))}%"),
        (f"inference, `monai.bundle run` of inference.json, {sizes['infer_cases']} whole cases: s per later case",
         _fmt(s["later cases (s per case)"], 2), first),
        ("GPU labels vs CPU float32 labels (Dice per region)", dice, f"CPU: {results['infer_cpu_float32']['path']}"),
        (epochs, _fmt(s["40 epochs on BraTS 2021 (h)"], 2), f"{s['slices per epoch']:,} slices per epoch (8 per case)"),
    ]  # fmt: skip
    lines = [
        f"GPU check of {m['date']} on {m['device']} ({m['cpus']} CPUs; torch {m['torch']}, Python {m['python']}): "
        f"`{command}`, {_fmt(results['seconds']['total'], 0)} s in all.",
        "",
        "| measurement | value | note |",
        "|---|---:|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="folder for gpu_check.md, gpu_check.json and the steps' logs")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes (CI)")
    parser.add_argument("--workdir", default=None, help="folder for the generated cases (default: OUTPUT/work)")
    parser.add_argument("--iterations", type=int, default=None, help="timed training iterations (default 300)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}): nothing run; --dry-run runs it on the CPU")
        return NO_CUDA_STATUS
    sizes = CheckSizes.dry() if args.dry_run else CheckSizes()
    if args.iterations:
        sizes = CheckSizes(**{**asdict(sizes), "iterations": args.iterations})
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir).resolve() if args.workdir else out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    device = torch.device("cpu" if args.dry_run else "cuda:0")
    command = "python scripts/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = run_check(out, sizes, work, device)
    (out / "gpu_check.json").write_text(json.dumps({**results, "summary": summary(results)}, indent=1) + "\n")
    table = render(results, command)
    (out / "gpu_check.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
