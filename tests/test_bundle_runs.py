# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The benchmark's fresh-process rows (scripts/bundle_runs.py) run both bundles through ``python -m monai.bundle run``
and report what they measured. The zoo's bundle cannot be downloaded here: a stand-in with the zoo bundle's ids
(``data_list_file_path``, ``output_dir``, ``network_def``, a ``testing`` datalist of four-modality cases) takes its
place. Checks the rows and that each run wrote its segmentations, never the timings."""

from __future__ import annotations

import json

import pytest

from axunet_bundle.synthetic import write_synthetic_dataset
from scripts.bundle_runs import ZOO_MODALITIES, bundle_run_rows, bundle_run_table

STAND_IN = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "data_list_file_path": "",
    "dataset_dir": "",
    "test_datalist": "$monai.data.load_decathlon_datalist(@data_list_file_path, data_list_key='testing')",
    "device": "$torch.device('cpu')",
    "network_def": {"_target_": "SegResNet", "init_filters": 8, "in_channels": 4, "out_channels": 3},
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "image_only": False},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
        ],
    },
    "dataset": {"_target_": "Dataset", "data": "@test_datalist", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 0},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 16], "sw_batch_size": 1},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@output_dir",
                "output_dtype": "$numpy.uint8",
                "resample": False,
            },
        ],
    },
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
    },
    "checkpointloader": {
        "_target_": "CheckpointLoader",
        "load_path": "$@bundle_root + '/models/model.pt'",
        "load_dict": {"model": "@network"},
    },
    "initialize": ["$@checkpointloader(@evaluator)"],
    "run": ["$@evaluator.run()"],
}
LOGGING_CONF = """[loggers]
keys=root
[handlers]
keys=console
[formatters]
keys=plain
[logger_root]
level=INFO
handlers=console
[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)
[formatter_plain]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


@pytest.mark.slow  # eight fresh monai.bundle processes: about a minute on 2 CPU cores
def test_bundle_runs_time_both_bundles_through_monai_bundle_run(tmp_path):
    zoo = tmp_path / "zoo"
    (zoo / "configs").mkdir(parents=True)
    (zoo / "configs" / "inference.json").write_text(json.dumps(STAND_IN, indent=4))
    (zoo / "configs" / "metadata.json").write_text(json.dumps({"version": "0.0.1"}))
    (zoo / "configs" / "logging.conf").write_text(LOGGING_CONF)
    cases = write_synthetic_dataset(tmp_path / "cases", n=2, seed=0, shape=(48, 48, 16), progress=False)
    work = tmp_path / "runs"
    result = bundle_run_rows(zoo, cases, work, repeats=1)
    assert ZOO_MODALITIES == ("flair", "t1", "t1ce", "t2")
    for name in ("axunet", "zoo"):
        figures = result[name]
        assert figures["many_cases_s"] > 0 and figures["one_case_s"] > 0 and figures["peak_rss"] > 2**20
        assert figures["marginal_s"] == figures["many_cases_s"] - figures["one_case_s"]
    # what AXUNet ran comes from its own log line
    assert result["axunet_ran"].startswith(("torch, bfloat16", "onnxruntime, float32", "torch, float32"))
    rows = bundle_run_table(result)
    assert rows[2].startswith("| one case (s) |") and "AXUNet ran: " + result["axunet_ran"] in rows[-1]
    assert any(row.startswith("| marginal cost of a case, (T2 − T1) / 1 (s)") for row in rows)
    # the runs segmented the cases (their output folders are removed after timing; the logs say what was written)
    for name in ("axunet", "zoo"):
        log = (work / f"{name}_2_0.log").read_text()
        assert log.count("_seg.nii.gz") >= 2 or log.count("writing:") >= 2, log[-2000:]
