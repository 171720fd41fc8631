# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Federated versus local on generated sites that differ: the FedAvg job in FLARE's simulator, and each site's
model trained alone for the same epochs (``axunet train``), every model evaluated (``axunet evaluate``, legacy
Dice) on every site's held-out cases. Writes ``OUT/comparison.md`` with the simulator's command and wall time, the
per-round validation Dice of the global model per site, and the federated-versus-local table.

    python federated/compare.py --output_dir fl_compare --sites 2 --rounds 3 --local_epochs 1
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from federated.job import dice_table, read_validation  # noqa: E402
from federated.sites import write_sites  # noqa: E402

REGIONS = ("WT", "TC", "ET")


def run(command: list[str], log: Path) -> float:
    """Run ``command`` with its output in ``log``; returns its wall time in seconds.

    Raises:
        SystemExit: the command failed (its log's last lines are printed).
    """
    started = time.monotonic()
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode not in (0, 1):
        sys.exit(
            f"{shlex.join(command)} failed ({done.returncode}); see {log}:\n" + "".join(open(log).readlines()[-15:])
        )
    return time.monotonic() - started


def mean_dice(summary: Path) -> dict[str, float]:
    """The legacy Dice per region and their mean, from an evaluation's ``summary.json``."""
    stats = json.loads(summary.read_text())["legacy_dice"]
    dice = {region: stats[region]["mean"] for region in REGIONS}
    return {"mean": sum(dice.values()) / len(dice), **dice}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="fl_compare")
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--cases", type=int, default=6, help="training cases per site (validation included)")
    parser.add_argument("--holdout", type=int, default=3, help="held-out cases per site")
    parser.add_argument("--folds", type=int, default=3, help="a site's cases / folds validate, the rest train")
    parser.add_argument("--shape", default="64,64,16", help="generated volume shape")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local_epochs", type=int, default=1)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="bundle ids for every training (default: a small CPU setting)",
    )
    args = parser.parse_args(argv)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # the demo's fast-learning setting (axunet_bundle/cli/demo.py): 64 x 64 slices, lr 3e-3
    overrides = args.overrides or [
        "roi_size=[64,64]",
        "pretrained=false",
        "num_workers=0",
        "batch_size=16",
        "slices_per_volume=16",
        "learning_rate=0.003",
        f"folds={args.folds}",
    ]
    python = sys.executable
    sites = write_sites(out / "data", args.sites, args.cases, args.holdout, [int(s) for s in args.shape.split(",")])

    workspace = out / "federated"
    fl_command = [
        python,
        str(HERE / "job.py"),
        "--workspace",
        str(workspace),
        "--rounds",
        str(args.rounds),
        "--local_epochs",
        str(args.local_epochs),
    ]
    fl_command += [f"--site={site}={data}" for site, (data, _) in sites.items()]
    fl_command += [f"--set={o}" for o in overrides]
    fl_seconds = run(fl_command, out / "federated.log")
    models = {"federated": workspace / "global_model" / "model.pt"}

    epochs = args.rounds * args.local_epochs
    local_seconds = {}
    for site, (data, _) in sites.items():
        root = out / "local" / site
        command = [
            python,
            "-m",
            "axunet_bundle",
            "train",
            "--dataset_dir",
            str(data),
            "--bundle_root",
            str(root),
            "--epochs",
            str(epochs),
        ]
        for o in overrides:
            key, _, value = o.partition("=")
            command += [f"--{key}", {"true": "True", "false": "False"}.get(value, value)]  # the CLI's bools
        local_seconds[site] = run(command, out / f"local_{site}.log")
        models[f"local {site}"] = root / "models" / "model.pt"

    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, weights in models.items():
        for site, (_, holdout) in sites.items():
            evaluation = out / "eval" / name.replace(" ", "_") / site
            run(
                [
                    python,
                    "-m",
                    "axunet_bundle",
                    "evaluate",
                    "--dataset_dir",
                    str(holdout),
                    "--ckpt_path",
                    str(weights),
                    "--output_dir",
                    str(evaluation),
                    "--overwrite",
                    "True",
                    "--overlays",
                    "False",
                    "--challenge",
                    "none",
                    "--num_workers",
                    "0",
                ],
                out / "eval.log",
            )
            results.setdefault(name, {})[site] = mean_dice(evaluation / "summary.json")

    names = list(sites)
    table = [
        "| model | " + " | ".join(f"{s} (WT/TC/ET)" for s in names) + " | all sites |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for name, per_site in results.items():
        cells = [f"{d['mean']:.3f} ({d['WT']:.2f}/{d['TC']:.2f}/{d['ET']:.2f})" for d in per_site.values()]
        overall = sum(d["mean"] for d in per_site.values()) / len(per_site)
        table.append(f"| {name} | " + " | ".join(cells) + f" | {overall:.3f} |")
    records = read_validation(workspace / "sites", dict.fromkeys(names))
    report = "\n".join(
        [
            "# Federated versus local (generated sites)",
            "",
            "Sites: "
            + ", ".join(
                f"{s} ({d.relative_to(out)}, {args.cases} cases; {args.holdout} held out)"
                for s, (d, _) in sites.items()
            )
            + "; shape "
            + args.shape
            + ".",
            f"Rounds {args.rounds} x local epochs {args.local_epochs} = {epochs} epochs; local models: {epochs} epochs.",
            f"Bundle settings: {' '.join(overrides)}.",
            "",
            f"Simulator command ({fl_seconds:.0f} s wall time, {sys.platform}, this machine's CPUs):",
            "",
            "    " + shlex.join(fl_command),
            "",
            "Local trainings: " + ", ".join(f"{s} {t:.0f} s" for s, t in local_seconds.items()) + ".",
            "",
            "## Validation Dice of the global model each site received, per round",
            "",
            dice_table(records),
            "",
            "## Mean legacy Dice on each site's held-out cases",
            "",
            *table,
            "",
        ]
    )
    (out / "comparison.md").write_text(report)
    sys.stdout.write(report)


if __name__ == "__main__":
    main()
