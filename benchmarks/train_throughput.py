"""Training throughput of the Ray Train job against a plain single-process PyTorch loop, same data and model, one run.

    python benchmarks/train_throughput.py                         # CPU: ResNet-18 CosPlace, 64 px, this machine
    python benchmarks/train_throughput.py --side 512 --backbone resnet50 --device cuda --workers 1

Both train CosPlace on the training images of one group of a dense synthetic city (every epoch the same images, so
epochs compare), with the same batch size, optimisers and seed. The plain loop holds the decoded maps in memory as
tensors and steps through them; the job runs `jobs/train.py cosplace` (`run_training`) with 1 and then `--workers`
workers, its images/s counting the training steps of an epoch (not validation). The first epoch of each is a
warm-up and left out. Prints a RESULT line per figure; the ratios are each job's images/s over the plain loop's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np


def say(line: str) -> None:
    print(line, flush=True)


def make_city(args) -> str:
    from vprlib.demo.city import GT_MAPS, CityConfig, generate_city

    root = os.path.join(args.work_dir, f"city-{args.places}-{args.side}")
    if not os.path.isdir(os.path.join(root, GT_MAPS)):
        generate_city(CityConfig(places=args.places, side=args.side, dense_train=args.dense_train), root)
    return os.path.join(root, GT_MAPS)


def options(args) -> dict:
    return {"backbone": args.backbone, "descriptor_size": args.descriptor_size, "batch_size": args.batch_size,
            "epochs": args.epochs, "groups": 1, "iterations_per_epoch": 0, "min_images_per_class": args.dense_train,
            "precision": args.precision}


def plain_loop(args, maps: str) -> float:
    """One process: group 0's decoded maps in memory, CosPlace + its classifier, Adam; images/s after epoch 1."""
    import torch

    from vprlib.maps import decode_depth, decode_seg, read_maps
    from vprlib.models.cosplace import CosPlace, LargeMarginCosineLoss
    from vprlib.train.config import train_config
    from vprlib.train.cosplace import class_table, model_config

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = train_config("cosplace", maps, "unused", **options(args))
    labels = class_table(config)
    labels = labels.filter(np.asarray(labels["group"].to_numpy() == 0))
    rows = {r["image_id"]: r for r in read_maps(maps).to_pylist()}
    device = torch.device(args.device)
    depth = torch.stack([torch.from_numpy(decode_depth(rows[i]).copy()) for i in labels["image_id"].to_pylist()])
    seg = torch.stack([torch.from_numpy(decode_seg(rows[i]).copy()) for i in labels["image_id"].to_pylist()])
    target = torch.from_numpy(labels["label"].to_numpy())
    depth, seg, target = depth.to(device), seg.to(device), target.to(device)
    model = CosPlace(model_config(config, 4)).to(device).train()
    head = LargeMarginCosineLoss(args.descriptor_size, int(target.max()) + 1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    head_optimizer = torch.optim.Adam(head.parameters(), lr=config.options.classifier_lr)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device == "cuda" and args.precision == "bf16")
    rates = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(target), generator=torch.Generator().manual_seed(epoch))
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(order), args.batch_size):
            batch = order[i : i + args.batch_size].to(device)
            with autocast:
                loss = head(model.embed(depth[batch], seg[batch]), target[batch])
            optimizer.zero_grad(set_to_none=True)
            head_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            head_optimizer.step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        rates.append(len(order) / (time.perf_counter() - start))
    rate = float(np.mean(rates[1:]))
    say(f"RESULT plain loop: {len(target)} images an epoch, {rate:.1f} images/s (epochs 2-{args.epochs}; "
        f"{args.threads} threads, {args.device})")
    return rate


def ray_job(args, maps: str, workers: int, plain: float) -> None:
    from vprlib.train import run_training
    from vprlib.train.config import train_config
    from vprlib.train.loop import read_metrics

    output = os.path.join(args.work_dir, f"ray-{workers}")
    shutil.rmtree(output, ignore_errors=True)
    gpus = 1.0 / workers if args.device == "cuda" else 0.0
    cpus = args.threads / workers if args.device == "cpu" else 1.0
    config = train_config("cosplace", maps, output, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                          **options(args))
    run_training(config)
    rows = read_metrics(output).to_pylist()[2:]  # epoch 0 is validation only, epoch 1 the warm-up
    rate = float(np.mean([r["images_per_s"] for r in rows]))
    say(f"RESULT Ray Train job, {workers} worker(s) ({cpus:g} CPUs, {gpus:g} GPUs each): {rate:.1f} images/s "
        f"(epochs 2-{args.epochs}), {rate / plain:.2f}x the plain loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--places", type=int, default=24)
    parser.add_argument("--dense-train", type=int, default=10, help="visits per train place (class size)")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--descriptor-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="the second job's workers (the first has 1)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="CPU threads of the plain loop and of all workers together (default: the CPUs but one, "
                        "which the job keeps for its Ray Data tasks)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "vprlib-train-bench"))
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    maps = make_city(args)
    say(f"train throughput: CosPlace {args.backbone} at {args.side} px, batch {args.batch_size}, {args.device}, "
        f"{args.threads} threads")
    plain = plain_loop(args, maps)
    import ray

    ray.init(num_cpus=args.threads + 1, include_dashboard=False, logging_level="ERROR")
    for workers in sorted({1, args.workers}):
        ray_job(args, maps, workers, plain)


if __name__ == "__main__":
    main()
