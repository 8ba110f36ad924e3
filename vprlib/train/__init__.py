"""Training on Ray Train: the refiners (paper III-A), CosPlace and NetVLAD (III-C), on maps tables.

`run_training(train_config(family, maps, output, ...))` or `python jobs/train.py FAMILY ...`. Each family is one
record of `vprlib.train.families` (its options, recipe, validation score, and the module that provides
`prepare(config)`, driver-side checks and datasets, `train_func(payload)`, the Ray Train loop on
`loop.epoch_loop`, and `architecture(config)`, what a resumed run must match).

Importing the package (or its light `config` and `families` modules, which command lines read for their flags)
imports no family's module and so no torch: `run_training` is loaded when first asked for.
"""

import importlib

_LAZY = {"TrainConfig": "vprlib.train.config", "train_config": "vprlib.train.config",
         "FAMILIES": "vprlib.train.families", "run_training": "vprlib.train.loop"}

__all__ = ["FAMILIES", "TrainConfig", "run_training", "train_config"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vprlib.train' has no attribute {name!r}")
