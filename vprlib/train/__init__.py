"""Training on Ray Train: the refiners (paper III-A), CosPlace and NetVLAD (III-C), on maps tables.

`run_training(train_config(family, maps, output, ...))` or `python jobs/train.py FAMILY ...`. Each family module
provides `prepare(config)` (driver-side checks and datasets), `train_func(payload)` (the Ray Train loop),
`architecture(config)` (what a resumed run must match) and its validation `SCORE` (with `SCORE_SIGN`: 1 when higher
is better).

Importing the package (or its light `config` module, which command lines read for their flags) imports no family and
so no torch: `FAMILIES` and `run_training` are loaded when first asked for.
"""

import importlib

# Family -> the module that trains it.
FAMILY_MODULES = {"refiner": "vprlib.train.refiner", "cosplace": "vprlib.train.cosplace",
                  "netvlad": "vprlib.train.netvlad", "demo-segmenter": "vprlib.demo.extractors.segmenter",
                  "demo-depth": "vprlib.demo.extractors.depth", "demo-inpainter": "vprlib.demo.extractors.inpainter"}
_LAZY = {"TrainConfig": "vprlib.train.config", "train_config": "vprlib.train.config",
         "run_training": "vprlib.train.loop"}

__all__ = ["FAMILIES", "TrainConfig", "run_training", "train_config"]


def __getattr__(name: str):
    if name == "FAMILIES":
        return {family: importlib.import_module(module) for family, module in FAMILY_MODULES.items()}
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vprlib.train' has no attribute {name!r}")
