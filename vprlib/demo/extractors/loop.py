"""The training loop the three demo families share, on the harness's `WorkerRun` (vprlib.train.loop): the model and
AdamW with a warm-up then cosine learning rate per step, a seeded epoch of batches (city.epoch_batches), validation
on rank 0 each epoch (epoch 0: the untrained network), resume from the last checkpoint.

A family module hands `train_loop` its pieces as a `Recipe`: how to build the model, the loss of a batch and the
validation metrics (its score is in its record, vprlib.demo.extractors.families). best.pt holds `weights_record`: the
role, the architecture and the state dict, which `vprlib.demo.extractors.export` turns into the shipped safetensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vprlib.demo.extractors.city import epoch_batches, gather
from vprlib.train.loop import Trained, WorkerRun, epoch_loop, saved_state

WARMUP_SHARE = 0.05  # of all steps, with the learning rate rising linearly from 0


@dataclass(frozen=True)
class Recipe:
    role: str  # the zoo role the model plays: segmenter, depth, inpainter
    build: Callable  # (TrainConfig) -> nn.Module: the model as inference runs it
    loss: Callable  # (model, batch, generator, context) -> scalar tensor
    validate: Callable  # (model, data) -> dict of metrics, on the whole validation split
    context: Callable | None = None  # (training data, TrainConfig) -> what the loss needs beyond a batch


def cosine_schedule(total_steps: int) -> Callable[[int], float]:
    """Multiplier of the learning rate at a step: linear warm-up over WARMUP_SHARE of the steps, then cosine to 0."""
    warmup = max(1, round(WARMUP_SHARE * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return factor


def weights_record(recipe: Recipe, model: nn.Module, architecture: dict) -> dict:
    """What best.pt holds: enough to rebuild the model and load its weights (export.py)."""
    return {"role": recipe.role, **architecture, "state_dict": {k: v.detach().cpu() for k, v in
                                                                model.state_dict().items()}}


def train_loop(payload: dict, recipe: Recipe) -> None:
    import ray.train.torch

    run = WorkerRun(payload)
    config = run.config
    model = recipe.build(config)
    net = ray.train.torch.prepare_model(model)
    inner = net.module if hasattr(net, "module") else net
    train, val = gather("train"), gather("val") if run.rank == 0 else None
    steps = (len(next(iter(train.values()))) // run.world) // run.batch_size
    if steps == 0:
        raise ValueError(f"{len(next(iter(train.values())))} training captures make no batch of "
                         f"{run.batch_size} per worker: lower --batch-size")
    context = recipe.context(train, config) if recipe.context else None
    optimizer = torch.optim.AdamW(inner.parameters(), lr=config.lr, weight_decay=config.options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(steps * config.epochs))
    architecture = payload["architecture"]

    snapshot, load = saved_state(model=inner, optimizer=optimizer, scheduler=scheduler)

    def validate(epoch: int) -> dict:
        inner.eval()
        with torch.inference_mode(), run.autocast():
            return recipe.validate(inner, {k: v.to(run.device) for k, v in val.items()})

    def one_epoch(epoch: int) -> Trained:
        net.train()
        generator = torch.Generator().manual_seed(config.seed * 7919 + epoch * 31 + run.rank)
        losses, images = [], 0
        for batch in epoch_batches(train, run.batch_size, config.seed, epoch, run.rank, run.world):
            batch = {k: v.to(run.device) for k, v in batch.items()}
            with run.autocast():
                loss = recipe.loss(net, batch, generator, context)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            images += len(next(iter(batch.values())))
        return Trained({"loss": float(np.mean(losses))}, images * run.world, scheduler.get_last_lr()[0])

    epoch_loop(run, snapshot=snapshot, load=load, best=lambda: weights_record(recipe, inner, architecture),
               validate=validate, train=one_epoch)
