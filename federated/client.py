# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""One site of an NVIDIA FLARE federation: MONAI's ``MonaiAlgo`` runs the bundle's own ``train.json`` (its trainer,
handlers and validation) on the site's cases; only weight differences leave the site.

Each round the site receives the global weights, validates them on its own validation cases (the trainer config's
``validate#evaluator``: whole volumes, mean Dice and WT/TC/ET), trains them for ``--local_epochs`` epochs and sends
back the difference. FLARE runs this file (``job.py`` puts it into the job with ``federated.json`` beside it);
:func:`site_algo` builds the client for tests and other hosts.

What ``MonaiAlgo`` does with the bundle's wiring (MONAI runs a config's ``initialize`` but never its ``run``):

- ``initialize`` (the bundle folder on ``sys.path``, the error boundary, the settings check, ``set_determinism``):
  runs, for both workflows.
- ``run``'s ImageNet encoder weights: the global model carries them. ``job.py`` loads them into the initial model
  the server sends in round 1; a site's own encoder weights would be replaced by the global ones at once, so
  ``federated.json`` switches the step off at the sites (``pretrained: false``).
- checkpoints, random states, ``model_settings.json``, TensorBoard: the training's handlers write them under the
  site's folder (``<output_dir>/<site>/models``, ``runs/local``); the best local model is ``models/model.pt``.
  The global model's validation writes its own best (by this site's Dice) to ``global/model.pt`` and its scalars to
  ``runs/global``, and each round's Dice to ``validation.jsonl``.
- ``resume``: off (``federated.json``): a round always starts from the global weights.
- the cosine learning-rate schedule spans the whole federation (``epochs`` = rounds x local epochs).
- pictures: the bundle's configs draw none (the ``axunet`` command line adds them), so neither does a site.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

#: the override file merged after train.json at every site (what a federated run switches off)
FEDERATED_CONFIG = Path(__file__).resolve().with_name("federated.json")
#: the metrics each round's validation reports, in order: the key metric first
METRICS = ("val_mean_dice", "val_dice_wt", "val_dice_tc", "val_dice_et")
#: one JSON line per validation: round, which model (global or local), the metrics
VALIDATION_LOG = "validation.jsonl"
#: the federation's settings ``job.py`` writes into the job beside this file: rounds, local epochs, output folder,
#: bundle folder, bundle overrides and each site's dataset folder (FLARE splits script arguments at whitespace)
FEDERATION_FILE = "federation.json"
#: the one line a site that cannot start writes into its folder (``job.py`` prints it)
ERROR_FILE = "error.txt"


class SiteFailed(RuntimeError):
    """A site could not start: its one-line reason, naming the site."""


def _bundle(module: str):
    """``axunet_bundle.<module>``, imported so that FLARE's job builder, which copies every module a client script
    imports from beside it into the job, leaves the package alone: the sites run their installed bundle."""
    return importlib.import_module(f"axunet_bundle.{module}")


def site_dir(output_dir: str | os.PathLike, site: str) -> Path:
    """The folder of everything ``site`` writes: ``<output_dir>/<site>``."""
    return Path(output_dir) / site


def site_algo(
    site: str,
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    rounds: int,
    local_epochs: int = 1,
    bundle_root: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
):
    """MONAI's federated client over the bundle's ``train.json`` (+ :data:`FEDERATED_CONFIG`) for one site.

    Args:
        site: the site's name (its folder under ``output_dir``).
        dataset_dir: the site's dataset folder, in any layout the bundle reads.
        output_dir: where the site's folder goes.
        rounds: the federation's rounds (with ``local_epochs``, the span of the learning-rate schedule).
        local_epochs: training epochs per round.
        bundle_root: a bundle folder whose configs to run (an unzipped zoo bundle), or ``None`` for the package's.
        overrides: other bundle ids (``roi_size``, ``batch_size``, ...), the same at every site.

    Returns:
        ``monai.fl.client.MonaiAlgo``, not yet initialised.
    """
    from monai.fl.client import MonaiAlgo

    bundle = _bundle("cli.configs").config_dir(bundle_root).parent
    out = site_dir(output_dir, site)
    common = {**(overrides or {}), "dataset_dir": os.fspath(dataset_dir)}
    configs = [str(bundle / "configs" / "train.json"), str(FEDERATED_CONFIG)]
    return MonaiAlgo(
        bundle_root=str(bundle),
        local_epochs=local_epochs,
        send_weight_diff=True,  # FLARE's percentile privacy filter works on differences
        config_train_filename=configs,
        train_kwargs={
            **common,
            "epochs": rounds * local_epochs,
            "val_interval": local_epochs,  # the local model is validated once per round, after its training
            "ckpt_dir": str(out / "models"),
            "output_dir": str(out / "runs" / "local"),
        },
        config_evaluate_filename=configs,
        eval_kwargs={**common, "ckpt_dir": str(out / "global"), "output_dir": str(out / "runs" / "global")},
        best_model_filepath=str(out / "models" / "model.pt"),
        final_model_filepath=None,
    )


def round_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The validation metrics a site reports (:data:`METRICS`), as floats."""
    return {key: float(metrics[key]) for key in METRICS if key in metrics}


def log_validation(path: Path, record: dict[str, Any]) -> None:
    """Append one validation's record to the site's ``validation.jsonl``."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_site(federation: dict[str, Any]) -> None:
    """The site's side of the federation, through FLARE's Client API (receive, validate, train, send).

    Args:
        federation: what ``job.py`` wrote to :data:`FEDERATION_FILE`.
    """
    import nvflare.client as flare
    from monai.fl.utils.constants import ExtraItems, FlStatistics
    from monai.fl.utils.exchange_object import ExchangeObject
    from nvflare.app_common.abstract.fl_model import ParamsType

    errors = _bundle("errors")

    flare.init()
    site = flare.get_site_name()
    output_dir = federation["output_dir"]
    try:
        if site not in federation["sites"]:
            raise errors.ConfigurationError(
                f"no dataset folder given for this site (the job names {list(federation['sites'])})"
            )
        algo = site_algo(
            site,
            federation["sites"][site],
            output_dir,
            federation["rounds"],
            federation["local_epochs"],
            federation.get("bundle_root"),
            federation.get("overrides"),
        )
        algo.initialize(extra={ExtraItems.CLIENT_NAME: site})
    except Exception as err:  # the site's own mistake (no cases, a missing folder) ends the job in one line
        error = errors.user_error(err)
        if error is None:
            raise
        message = f"site {site}: {error}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        site_dir(output_dir, site).mkdir(parents=True, exist_ok=True)
        (site_dir(output_dir, site) / ERROR_FILE).write_text(message + "\n")
        raise SiteFailed(message) from None  # FLARE ends the round, and the job, with the site's failure
    out = site_dir(output_dir, site)
    log = out / VALIDATION_LOG
    settings = out / "models" / "model_settings.json"
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        weights = ExchangeObject(weights=received.params)
        metrics = round_metrics(algo.evaluate(data=weights).metrics)
        log_validation(log, {"round": received.current_round, "site": site, "model": "global", **metrics})
        algo.train(data=weights)
        update = algo.get_weights()
        local = round_metrics(algo.train_workflow.evaluator.state.metrics)
        log_validation(log, {"round": received.current_round, "site": site, "model": "local", **local})
        if settings.is_file():  # the global model's best weights get the settings inference reads beside them
            shutil.copy2(settings, out / "global" / settings.name)
        flare.send(
            flare.FLModel(
                params=update.weights,
                params_type=ParamsType.DIFF,
                metrics=metrics,
                meta={"NUM_STEPS_CURRENT_ROUND": update.statistics.get(FlStatistics.NUM_EXECUTED_ITERATIONS, 0)},
            )
        )
    algo.finalize()


if __name__ == "__main__":
    run_site(json.loads(Path(__file__).with_name(FEDERATION_FILE).read_text()))
