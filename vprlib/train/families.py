"""The training families, one record each: what `jobs/train.py FAMILY` trains and everything the job, the sweeps and
the retriever lookup need to know of it.

A `Family` names its options (a frozen dataclass of vprlib.train.config), its recipe's epochs, learning rate and
batch size, the module that prepares its data (`prepare(config)`, on the driver) and trains it (`train_func(payload)`,
the Ray Train loop; `architecture(config)`, what a resumed run must match), the validation score best.pt is chosen
by, and, for a retriever, the model class its checkpoints load into (vprlib.models.zoo.RETRIEVERS).

Reading a record imports no torch: the module and the retriever class are imported when first asked for. The
refiners, CosPlace and NetVLAD are registered here; the demo extractors register theirs
(vprlib.demo.extractors.families).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from vprlib.train.config import CosPlaceOptions, NetVLADOptions, RefinerOptions


@dataclass(frozen=True)
class Family:
    """One training family."""

    name: str
    options: type  # its options dataclass
    module: str  # the module with prepare, train_func and architecture
    score: str  # the validation metric best.pt is chosen by
    higher_is_better: bool
    epochs: int  # the recipe's, for what the caller leaves unset
    lr: float
    batch_size: int  # images per step (NetVLAD: triplets), all workers together
    retriever: str = ""  # "module:Class" of the model a retriever family's checkpoints load into
    targets: bool = False  # trained from --maps to --targets, the ground-truth maps of the same images

    @property
    def defaults(self) -> dict:
        """The recipe's epochs, lr and batch_size, as TrainConfig fields."""
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size}

    @property
    def sign(self) -> int:
        """1 when a higher score is better, else -1: `score * sign` grows as the model gets better."""
        return 1 if self.higher_is_better else -1

    @property
    def trainer(self) -> ModuleType:
        return importlib.import_module(self.module)

    def retriever_class(self) -> type:
        module, _, name = self.retriever.partition(":")
        return getattr(importlib.import_module(module), name)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family to the registry (a name taken twice is an error: one record per family)."""
    if family.name in FAMILIES and FAMILIES[family.name] != family:
        raise ValueError(f"training family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


def family(name: str) -> Family:
    """The record of `name`; ValueError naming the known families otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def retriever_families() -> tuple[str, ...]:
    """The families whose models are retrievers (what sweeps train and the index job embeds with)."""
    return tuple(name for name, f in FAMILIES.items() if f.retriever)


register(Family("refiner", RefinerOptions, "vprlib.train.refiner", score="val_loss", higher_is_better=False,
                epochs=30, lr=1e-3, batch_size=8, targets=True))  # paper III-A: Adam 1e-3
register(Family("cosplace", CosPlaceOptions, "vprlib.train.cosplace", score="recall@1", higher_is_better=True,
                epochs=50, lr=1e-5, batch_size=32,  # CosPlace: Adam 1e-5, 50 epochs, batch 32
                retriever="vprlib.models.cosplace:CosPlace"))
register(Family("netvlad", NetVLADOptions, "vprlib.train.netvlad", score="recall@1", higher_is_better=True,
                epochs=50, lr=1e-4, batch_size=4,  # NetVLAD: SGD 1e-4, 50 epochs (paper), 4 triplets
                retriever="vprlib.models.netvlad:NetVLAD"))

import vprlib.demo.extractors.families  # noqa: E402, F401 -- the demo extractors register their families
