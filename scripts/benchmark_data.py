# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Data benchmark: slice-cache prepare throughput (cases/s) and cache-served random-slice throughput (slices/s,
with the training augmentations, through a DataLoader as training runs it) against what AXUNet consumes in
training (forward + backward slices/s) on this machine.

Run: ``python scripts/benchmark_data.py [--cases 4] [--workers 2] [--batch 8]``. Uses generated BraTS-size cases.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from torch.utils.data import DataLoader

from axunet_bundle import AXUNet
from axunet_bundle.data import SliceCacheDataset, find_cases, prepare_slice_cache, write_synthetic_dataset

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train.json"
LOADER_BATCHES = 20
TRAIN_STEPS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="training batch for the consumption measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, cache_dir = Path(tmp) / "data", Path(tmp) / "cache"
        write_synthetic_dataset(data_dir, n=args.cases, seed=0, progress=False)
        config = ConfigParser()
        config.read_config(CONFIG)
        config.update({"dataset_dir": str(data_dir)})
        modalities = config.get_parsed_content("modalities")
        items = [
            {"image": c.image_files(modalities), "label": str(c.label), "case_id": c.case_id}
            for c in find_cases(data_dir)
        ]
        start = time.perf_counter()
        prepare_slice_cache(
            items,
            cache_dir,
            Compose(config.get_parsed_content("volume_transforms")),
            config.get_parsed_content("preprocessing_params"),
            workers=args.workers,
            progress=False,
        )
        prepare_rate = len(items) / (time.perf_counter() - start)

        dataset = SliceCacheDataset(
            cache_dir,
            tumour_slice_ratio=config.get_parsed_content("tumour_slice_ratio"),
            transform=Compose(config.get_parsed_content("train#augmentation")),
        )
        loader = DataLoader(
            dataset,
            batch_size=config.get_parsed_content("batch_size"),
            shuffle=True,
            num_workers=args.workers,
            persistent_workers=False,
        )
        served, start = 0, None
        for i, batch in enumerate(loader):
            if i == 1:  # skip the first batch: worker start-up
                start, served = time.perf_counter(), 0
            served += batch["image"].shape[0]
            if i == LOADER_BATCHES:
                break
        loader_rate = served / (time.perf_counter() - start)

    net = AXUNet().train()
    optimizer = torch.optim.Adam(net.parameters())
    x, y = torch.randn(args.batch, 3, 224, 224), torch.rand(args.batch, 3, 224, 224).round()

    def step():
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(TRAIN_STEPS):
        step()
    train_rate = TRAIN_STEPS * args.batch / (time.perf_counter() - start)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.workers} loader workers")
    print("| figure | value |\n|---|---:|")
    print(f"| prepare (240x240x155 cases, {args.workers} workers) | {prepare_rate:.2f} cases/s |")
    print(f"| cache-served random slices with augmentations | {loader_rate:.0f} slices/s |")
    print(f"| AXUNet training consumption (fwd+bwd, batch {args.batch}, 224²) | {train_rate:.1f} slices/s |")
    print(f"| loader ÷ consumption | {loader_rate / train_rate:.1f}× |")


if __name__ == "__main__":
    main()
