# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The AXUNet FedAvg job for NVIDIA FLARE: run it in FLARE's simulator, or export it for real sites.

    python federated/job.py --site site-1=/data/hospital_a --site site-2=/data/hospital_b --rounds 5 \\
        --workspace /tmp/axunet_fl [--local_epochs 1] [--percentile_privacy 10] [--set roi_size=[64,64] ...]
    python federated/job.py --site ... --job_dir jobs/axunet     # a job folder for `nvflare job submit`

FedAvg is FLARE's (``FedAvgRecipe``: its controller, aggregation and model persistor); each site runs
``client.py`` (MONAI's ``MonaiAlgo`` over the bundle's ``train.json``). Before the simulator starts, every site's
folder is read with the bundle's own datalist (``train.json``'s ``datalist_dict``), so a site without cases or with
an unreachable folder ends the run in one line naming the site. After the simulation, the global model is written
as the bundle's weights (``<workspace>/global_model/model.pt`` and ``model_settings.json``, for ``axunet infer
--ckpt_path``) and each round's validation Dice per site is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # `python federated/job.py` from a checkout
    sys.path.insert(0, str(HERE.parent))

from federated.client import ERROR_FILE, FEDERATED_CONFIG, FEDERATION_FILE, METRICS, VALIDATION_LOG  # noqa: E402

#: the job's name: the simulator's workspace folder under ``--workspace``
JOB_NAME = "axunet_fedavg"
#: bundle ids for the initial global model only: the encoder's ImageNet weights load once, into it
INITIAL_MODEL_ONLY = ("pretrained", "pretrained_path")
#: where the simulator's server keeps the last global model (FLARE's PTFileModelPersistor)
SERVER_MODEL = Path(JOB_NAME) / "server" / "simulate_job" / "app_server" / "FL_global_model.pt"


def site_error(site: str, error: Exception):
    """The bundle's one-line error of ``site``'s data, with the site named first."""
    from axunet_bundle.errors import DatasetError

    return DatasetError(f"site {site}: {error}")


def parse_sites(values: list[str]) -> dict[str, str]:
    """``NAME=DIR`` pairs into ``{name: dir}``.

    Raises:
        ConfigurationError: a pair without ``=``, an empty or repeated name, fewer than 2 sites.
    """
    from axunet_bundle.errors import ConfigurationError

    sites: dict[str, str] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise ConfigurationError(f"--site {value!r}: expected NAME=DATASET_DIR, e.g. site-1=/data/hospital_a")
        if name in sites:
            raise ConfigurationError(f"--site {name}: given twice")
        sites[name] = folder
    if len(sites) < 2:
        raise ConfigurationError(f"a federation needs at least 2 sites, got {len(sites)} (--site NAME=DIR, repeated)")
    return sites


def parse_overrides(values: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` bundle ids (VALUE read as JSON when it parses, else kept as a string)."""
    from axunet_bundle.errors import ConfigurationError

    overrides: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--set {value!r}: expected KEY=VALUE, e.g. roi_size=[64,64]")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


def site_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """The bundle ids the sites get: ``overrides`` without the encoder's (:data:`INITIAL_MODEL_ONLY`).

    Raises:
        ConfigurationError: ``overrides`` sets an id that ``federated.json`` fixes for every site (``resume``).
    """
    from axunet_bundle.errors import ConfigurationError

    fixed = json.loads(FEDERATED_CONFIG.read_text())
    for key in sorted(set(overrides) & set(fixed) - set(INITIAL_MODEL_ONLY)):
        raise ConfigurationError(
            f"--set {key}: every site runs with {key}={json.dumps(fixed[key])} ({FEDERATED_CONFIG.name}): "
            "each round starts from the global weights"
        )
    return {key: value for key, value in overrides.items() if key not in INITIAL_MODEL_ONLY}


def check_sites(sites: dict[str, str], overrides: dict[str, Any], bundle_root: str | None = None) -> dict[str, int]:
    """Read every site's cases as its training will (``train.json``'s ``datalist_dict`` with ``overrides``).

    Returns:
        ``{site: number of training cases}``.

    Raises:
        DatasetError: naming the site, when its folder is missing, holds no case, or cannot be split.
    """
    from axunet_bundle.cli.configs import read_config
    from axunet_bundle.errors import user_error

    counts = {}
    for site, folder in sites.items():
        parser = read_config("train.json", bundle_root=bundle_root, **{**overrides, "dataset_dir": folder})
        try:
            datalist = parser.get_parsed_content("datalist_dict", instantiate=True)
        except Exception as err:
            error = user_error(err)
            if error is None:
                raise
            raise site_error(site, error) from None
        if not datalist["training"] or not datalist["validation"]:
            raise site_error(site, f"{folder}: no training or no validation case in fold {parser['fold']}")
        counts[site] = len(datalist["training"])
    return counts


def initial_model(path: Path, overrides: dict[str, Any], bundle_root: str | None = None) -> dict[str, Any]:
    """Write the federation's initial weights to ``path`` (a plain state dict): the bundle's ``network_def`` with
    the training's ``run`` step for the encoder (ImageNet weights, or ``pretrained_path``, as ``overrides`` say),
    which MONAI's federated client never runs.

    Returns:
        FLARE's model description ``{"path": class, "args": {...}}`` of the same network.

    Raises:
        PretrainedWeightsError: the ImageNet weights cannot be had.
    """
    from axunet_bundle.cli.configs import read_config
    from axunet_bundle.networks import load_encoder_weights

    parser = read_config("train.json", bundle_root=bundle_root, **overrides)
    network = parser.get_parsed_content("network_def")
    load_encoder_weights(network, parser.get_parsed_content("pretrained"), parser.get_parsed_content("pretrained_path"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    config = parser.get("network_def")
    args = {key: parser.get_parsed_content(f"network_def#{key}") for key in config if not key.startswith("_")}
    return {"path": config["_target_"], "args": args}


def build_recipe(args: argparse.Namespace, sites: dict[str, str], overrides: dict[str, Any], workdir: Path):
    """FLARE's FedAvg recipe for the sites, with ``client.py`` and its files in the job."""
    from nvflare.apis.dxo import DataKind
    from nvflare.app_common.filters import PercentilePrivacy
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe

    federation = {
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        # an exported job's sites write into their own working folder unless told where
        "output_dir": args.site_output_dir or ("axunet_federated" if args.job_dir else str(workdir.parent / "sites")),
        "bundle_root": args.bundle_root,
        "overrides": site_overrides(overrides),
        "sites": sites,
    }
    (workdir / FEDERATION_FILE).write_text(json.dumps(federation, indent=4) + "\n")
    start = workdir / "initial_model.pt"
    model = initial_model(start, overrides, args.bundle_root)
    recipe = FedAvgRecipe(
        name=JOB_NAME,
        model=model,
        initial_ckpt=os.path.relpath(start),  # relative: FLARE carries the file to the server in the job
        min_clients=len(sites),
        num_rounds=args.rounds,
        train_script="client.py",  # relative: the sites run the job's copy, with its files beside it
        aggregator_data_kind=DataKind.WEIGHT_DIFF,
        key_metric=METRICS[0],
    )
    recipe.add_client_file(str(workdir / FEDERATION_FILE))
    recipe.add_client_file(str(FEDERATED_CONFIG))
    if args.percentile_privacy is not None:
        recipe.add_client_output_filter(
            PercentilePrivacy(percentile=args.percentile_privacy, gamma=args.privacy_gamma), tasks=["train"]
        )
    return recipe


def write_global_model(workspace: Path, sites: dict[str, str], output_dir: Path) -> Path | None:
    """The simulation's last global model as the bundle's weights: ``output_dir/model.pt`` (a plain state dict) and
    the ``model_settings.json`` the sites' training wrote. ``None`` when the server saved no model."""
    saved = workspace / SERVER_MODEL
    if not saved.is_file():
        return None
    data = torch.load(saved, map_location="cpu", weights_only=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.as_tensor(v) for k, v in data["model"].items()}, output_dir / "model.pt")
    for site in sites:
        settings = workspace / "sites" / site / "models" / "model_settings.json"
        if settings.is_file():
            shutil.copy2(settings, output_dir / settings.name)
            break
    return output_dir / "model.pt"


def site_failure(sites_dir: Path, sites: dict[str, str]) -> str | None:
    """The one line the first site that could not start wrote (``client.py``), or ``None``."""
    for site in sites:
        failed = sites_dir / site / ERROR_FILE
        if failed.is_file():
            return failed.read_text().strip()
    return None


def read_validation(sites_dir: Path, sites: dict[str, str]) -> list[dict[str, Any]]:
    """Every site's validation records (``validation.jsonl``), in site and round order."""
    records = []
    for site in sites:
        log = sites_dir / site / VALIDATION_LOG
        if log.is_file():
            records += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return records


def dice_table(records: list[dict[str, Any]], model: str = "global") -> str:
    """A Markdown table: per round, each site's validation mean Dice (and WT/TC/ET) of ``model``'s weights."""
    rows = ["| round | site | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for r in sorted((r for r in records if r["model"] == model), key=lambda r: (r["round"], r["site"])):
        rows.append(
            f"| {r['round']} | {r['site']} | " + " | ".join(f"{r.get(m, float('nan')):.3f}" for m in METRICS) + " |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="AXUNet FedAvg with NVIDIA FLARE: run in the simulator, or write the job (--job_dir) for real sites.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--site", action="append", default=[], metavar="NAME=DATASET_DIR", help="a site and its folder")
    parser.add_argument("--rounds", type=int, default=5, help="FedAvg rounds (default 5)")
    parser.add_argument("--local_epochs", type=int, default=1, help="training epochs per site per round (default 1)")
    parser.add_argument("--workspace", default="fl_workspace", help="the simulator's workspace (default fl_workspace)")
    parser.add_argument("--threads", type=int, default=None, help="sites run at once (default: all)")
    parser.add_argument(
        "--percentile_privacy",
        type=float,
        default=None,
        metavar="P",
        help="add FLARE's PercentilePrivacy filter: a site shares only weight changes above the "
        "P-th percentile of their magnitude (default: off)",
    )
    parser.add_argument("--privacy_gamma", type=float, default=0.01, help="PercentilePrivacy's clipping bound")
    parser.add_argument(
        "--bundle_root", default=None, help="a bundle folder whose configs run (default: the package's)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="a bundle id for every site (and the initial model), e.g. roi_size=[64,64], "
        "pretrained=false, pretrained_path=xception.pth",
    )
    parser.add_argument(
        "--site_output_dir",
        default=None,
        help="where each site writes (OUT/<site>); default <workspace>/sites, for real sites a "
        "folder of the site's machine",
    )
    parser.add_argument("--job_dir", default=None, help="write the job folder (for real sites) instead of simulating")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from axunet_bundle.errors import DatasetError, exit_with_message, user_error

    args = parse_args(argv)
    try:
        sites = parse_sites(args.site)
        overrides = parse_overrides(args.overrides)
        workspace = Path(args.workspace).resolve()
        export = None if args.job_dir is None else Path(args.job_dir).resolve()
        if export is None:  # folders of this machine: absolute before the working folder changes
            sites = {site: str(Path(folder).expanduser().resolve()) for site, folder in sites.items()}
        if args.bundle_root is not None:
            args.bundle_root = str(Path(args.bundle_root).resolve())
        if isinstance(overrides.get("pretrained_path"), str):
            overrides["pretrained_path"] = str(Path(overrides["pretrained_path"]).expanduser().resolve())
        # FLARE's recipe takes the client script and the initial weights by paths relative to the working folder
        os.chdir(HERE)
        workdir = workspace / "job_files"
        workdir.mkdir(parents=True, exist_ok=True)
        if args.job_dir is None:
            counts = check_sites(sites, overrides, args.bundle_root)
            print("sites: " + ", ".join(f"{s} ({n} training cases, {sites[s]})" for s, n in counts.items()))
        recipe = build_recipe(args, sites, overrides, workdir)
    except Exception as err:
        error = user_error(err)
        if error is None:
            raise
        exit_with_message(error)
    if export is not None:
        recipe.export(str(export))
        print(f"job written to {export}")
        return 0
    from nvflare.recipe import SimEnv

    started = time.monotonic()
    env = SimEnv(clients=list(sites), num_threads=args.threads or len(sites), workspace_root=str(workspace))
    try:
        recipe.run(env)
    except RuntimeError:  # FLARE's "Simulation failed": a site that could not start left its line
        failure = site_failure(workspace / "sites", sites)
        if failure is None:
            raise
        exit_with_message(DatasetError(failure))
    elapsed = time.monotonic() - started
    records = read_validation(workspace / "sites", sites)
    model = write_global_model(workspace, sites, workspace / "global_model")
    # not print(): FLARE's in-process client leaves print() redirected into its log
    sys.stdout.write(
        f"simulation: {args.rounds} rounds x {args.local_epochs} local epochs, {len(sites)} sites, {elapsed:.0f} s\n"
        "validation Dice of the global model each site received at the start of each round:\n"
        f"{dice_table(records)}\n"
        + (f"global model: {model}\n" if model else "no global model was saved (see the server's log)\n")
    )
    return 0 if model is not None else 1


if __name__ == "__main__":
    sys.exit(main())
