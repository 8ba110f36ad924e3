"""The demo-models recipe (`make demo-models`, jobs/demo_models.py): every model of the `demo` preset trained on
synthetic cities and installed into vprlib/models/demo/ (package data): the extractors (small SegFormer, DPT-Hybrid,
Big-LaMa generator), the two refiners, and one CosPlace per strategy. Seeded throughout; about an hour on 2 cores.

1. city A (96 places, 128 px, with each capture's static RGB): the demo extractors train on its train split, pick
   their epochs on val, are measured on database+query and installed (vprlib.demo.extractors).
2. city B (the demo's city, `demo_city`: the same city with 6 visits per train place, since CosPlace's classes need
   several images each; its database and query captures are city A's) is extracted with the demo extractors at
   `SIDE` px, strategy none; the demo refiners learn from those maps to city B's ground-truth maps, and are installed
   with float16 weights.
3. for each strategy, city B is extracted with the finished preset and a CosPlace ResNet-18 is trained on the train
   split by `COSPLACE` (validated on val); its best checkpoint ships with float16 weights.

The shipped retrievers were trained on maps of the installed extractors: retraining any extractor means running the
later steps again (the index job refuses maps whose models differ from the retriever's training maps). Only the
training area (train and val) of city B is extracted: the demo evaluates on the east half, which it extracts itself.
`COSPLACE` is also the recipe of the table's appearance study (vprlib.demo.table), whose photo retriever is the same
network trained the same way on the photos.
"""

from __future__ import annotations

import os
from pathlib import Path

SIDE = 64  # the maps' side of the refiners and the retrievers
STRATEGIES = ("synthetic", "inpaint")  # one shipped retriever each (zoo.DEMO_RETRIEVERS), trained in this order
# The extractors' runs: each family's default epochs (segmenter 50, depth 40), the inpainter 20 (40 would double the
# hour).
EXTRACTORS = ({"roles": "segmenter,depth"}, {"roles": "inpainter", "epochs": 20})
REFINERS = {"arch": "demo", "epochs": 5, "batch_size": 16}
# CosPlace ResNet-18 on city B: CosPlace's group layout for its dense visits (classes of 6 images, 8 groups of about
# 230 images), one pass over the epoch's group (iterations_per_epoch 0).
COSPLACE = {"backbone": "resnet18", "descriptor_size": 128, "lr": 3e-4, "epochs": 40, "batch_size": 32, "groups": 8,
            "group_cells": 2, "group_bins": 2, "min_images_per_class": 6, "iterations_per_epoch": 0}
REFINER_FILES = ("refiner_depth.pt", "refiner_seg.pt")


def make_demo_models(work: str = "out/demo-models", side: int = SIDE, ray_address: str = "") -> list[Path]:
    """Run the recipe in `work` (every step resumes: a rerun continues where it stopped) and install the preset into
    the package (`zoo.DEMO_DIR`, vprlib/models/demo/); return the refiners' and retrievers' files installed (the
    extractors' installs are printed)."""
    from vprlib.data.manifest import read_manifest, write_manifest
    from vprlib.demo.city import CityConfig, demo_city, generate_city
    from vprlib.demo.extractors.job import DemoConfig, train_demo
    from vprlib.models import zoo

    target = zoo.DEMO_DIR
    step("city A and the extractors")
    city = os.path.join(work, "city")
    if not os.path.exists(os.path.join(city, "manifest.parquet")):
        generate_city(CityConfig(static_rgb=True), city)
    extractors = os.path.join(work, "extractors")
    for run in EXTRACTORS:
        train_demo(DemoConfig(city=city, output=extractors, install=True, ray_address=ray_address, **run))
    train_demo(DemoConfig(city=city, output=extractors, evaluate_only=True, models=zoo.DEMO, ray_address=ray_address))

    step("city B and the refiners")
    dense = demo_city(os.path.join(work, "dense"))
    training = os.path.join(work, "dense-train.parquet")
    manifest = read_manifest(os.path.join(dense, "manifest.parquet"))
    write_manifest(manifest.filter([s in ("train", "val") for s in manifest["split"].to_pylist()]), training)
    raw = os.path.join(work, "maps-none")
    extract(training, raw, "none", side, ray_address)
    refiners = os.path.join(work, "refiner")
    train("refiner", raw, refiners, targets=os.path.join(dense, "gt_maps"), side=side, ray_address=ray_address,
          **REFINERS)
    installed = [half_refiner(os.path.join(refiners, name), target / name) for name in REFINER_FILES]

    for strategy in STRATEGIES:
        step(f"the {strategy} retriever")
        maps = os.path.join(work, f"maps-{strategy}")
        extract(training, maps, strategy, side, ray_address)
        trained = os.path.join(work, f"cosplace-{strategy}")
        train_retriever(maps, trained, ray_address=ray_address)
        installed.append(half_retriever(os.path.join(trained, "best.pt"), target / zoo.DEMO_RETRIEVERS[strategy]))
    step(f"done: {' '.join(sorted(p.name for p in target.iterdir()))}")
    return installed


def step(what: str) -> None:
    print(f"== demo-models: {what}", flush=True)


def extract(manifest: str, output: str, strategy: str, side: int, ray_address: str) -> None:
    """The maps of `manifest` by the `demo` models (resumed when `output` holds some); a run whose rows failed
    beyond the job's tolerance stops the recipe, as jobs/extract.py's exit status 1 would."""
    from vprlib.extract.config import extract_config
    from vprlib.extract.output import job_failed
    from vprlib.extract.pipeline import run_extract
    from vprlib.models import zoo

    config = extract_config(input=manifest, output=output, strategy=strategy, models=zoo.DEMO, side=side,
                            ray_address=ray_address)
    reason = job_failed(run_extract(config), config)
    if reason:
        raise ValueError(f"extraction into {output} failed: {reason}")


def train(family: str, maps: str, output: str, **settings) -> dict:
    """One training run (resumed when `output` holds one), as jobs/train.py runs it: its summary."""
    from vprlib.train.config import train_config
    from vprlib.train.loop import run_training

    return run_training(train_config(family, maps, output, **settings))


def train_retriever(maps: str, output: str, **changes) -> dict:
    """A CosPlace trained by the recipe (`COSPLACE`, with `changes` to it or to any other training setting: the
    table's rows and its appearance study train theirs here too): the training summary."""
    return train("cosplace", maps, output, **{**COSPLACE, **changes})


def half_refiner(source: str, output: Path) -> Path:
    """A refiner's weights saved with float16 tensors (half the bytes; load_refiner reads them into float32)."""
    import torch

    state = torch.load(source, weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, output)
    return output


def half_retriever(source: str, output: Path) -> Path:
    """A retriever's best checkpoint saved with float16 weights (`save_half`)."""
    from vprlib.models.retriever import save_half

    save_half(source, output)
    return output
