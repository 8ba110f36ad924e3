"""Training on Ray Train: the refiners (paper III-A), CosPlace and NetVLAD (III-C), on maps tables.

`run_training(train_config(family, maps, output, ...))` or `python jobs/train.py FAMILY ...`. Each family module
provides `prepare(config)` (driver-side checks and datasets), `train_func(payload)` (the Ray Train loop),
`architecture(config)` (what a resumed run must match) and its validation `SCORE` (with `SCORE_SIGN`: 1 when higher
is better).
"""

from vprlib.train import cosplace, netvlad, refiner
from vprlib.train.config import TrainConfig, train_config
from vprlib.train.demo import depth as demo_depth
from vprlib.train.demo import inpainter as demo_inpainter
from vprlib.train.demo import segmenter as demo_segmenter
from vprlib.train.loop import run_training

FAMILIES = {"refiner": refiner, "cosplace": cosplace, "netvlad": netvlad, "demo-segmenter": demo_segmenter,
            "demo-depth": demo_depth, "demo-inpainter": demo_inpainter}

__all__ = ["FAMILIES", "TrainConfig", "run_training", "train_config"]
