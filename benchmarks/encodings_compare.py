"""Which segmentation encoding should the retriever see? A small CosPlace trained on the synthetic city.

For each encoding of the segmentation map (the paper's label channel, one-hot, a learned label
embedding; always with depth), trains a CosPlace (ResNet-18, small descriptor) from random weights
with the Large Margin Cosine Loss over the train split's classes (place id x heading), on the
ground-truth static maps (depth as per-image normalised inverse depth, HoliCity 5-class labels),
then reports Recall@1/5/10 of the query split against the database split (positive: within 25 m,
vprlib.metrics). An untrained label-channel model is the floor. Same seed, data and schedule for all.

    python benchmarks/encodings_compare.py [--city DIR] [--places 64] [--side 64] [--epochs 6]
"""

import argparse
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from vprlib.demo import city as synthcity
from vprlib.demo.city import CityConfig, generate_city
from vprlib.metrics import gps_positives, recall_at_n
from vprlib.models.cosplace import CosPlace, CosPlaceConfig, LargeMarginCosineLoss
from vprlib.models.dpt import normalize_depth
from vprlib.models.encodings import EncodingConfig

HOLICITY_CLASSES = len(synthcity.STATIC_CLASSES)
ENCODINGS = ("label", "onehot", "embedding")
NS = (1, 5, 10)


@dataclass(frozen=True)
class Maps:
    depth: torch.Tensor  # N,1,H,W normalised inverse depth (1 = nearest, sky 0)
    seg: torch.Tensor  # N,H,W int64 HoliCity labels
    latlon: np.ndarray  # N,2
    classes: np.ndarray  # N class index (place id x heading), train only meaningful


def load_split(city: str, split: str, side: int) -> Maps:
    """Ground-truth static maps of one split, resized to side x side."""
    table = pq.read_table(os.path.join(city, "manifest.parquet")).to_pandas()
    rows = table[table["split"] == split].reset_index(drop=True)
    depths, segs = [], []
    for gt_uri in rows["gt_uri"]:
        with np.load(os.path.join(city, gt_uri)) as gt:
            depths.append(gt["depth"])
            segs.append(gt["seg"])
    depth = torch.from_numpy(np.stack(depths)).float()
    inverse = torch.where(depth > 0, 1.0 / depth.clamp_min(1e-3), torch.zeros_like(depth))  # sky: 0, far
    depth = F.interpolate(normalize_depth(inverse)[:, None], size=(side, side), mode="bilinear", antialias=True)
    seg = F.interpolate(torch.from_numpy(np.stack(segs)).float()[:, None], size=(side, side), mode="nearest")
    keys = rows["place_id"].astype(np.int64) * 360 + rows["heading"].round().astype(np.int64)
    _, classes = np.unique(keys.to_numpy(), return_inverse=True)
    return Maps(depth, seg[:, 0].long(), rows[["lat", "lon"]].to_numpy(), classes)


def build_model(encoding: str, descriptor_size: int, seed: int) -> CosPlace:
    torch.manual_seed(seed)
    config = EncodingConfig(seg_encoding=encoding, num_classes=HOLICITY_CLASSES)
    return CosPlace(CosPlaceConfig(backbone="resnet18", descriptor_size=descriptor_size, encoding=config))


def train(model: CosPlace, maps: Maps, epochs: int, batch: int, seed: int) -> float:
    """LMCL classification over the train classes (Adam: 1e-3 model, 1e-2 classifier); returns the last loss."""
    head = LargeMarginCosineLoss(model.descriptor_size, int(maps.classes.max()) + 1)
    optimizer = torch.optim.Adam(
        [{"params": model.parameters(), "lr": 1e-3}, {"params": head.parameters(), "lr": 1e-2}]
    )
    labels = torch.from_numpy(maps.classes)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.zeros(())
    for _ in range(epochs):
        for index in torch.randperm(len(labels), generator=generator).split(batch):
            loss = head(model.embed(maps.depth[index], maps.seg[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return loss.item()


@torch.no_grad()
def embed(model: CosPlace, maps: Maps, batch: int = 128) -> torch.Tensor:
    model.eval()
    parts = [model.embed(maps.depth[i : i + batch], maps.seg[i : i + batch]) for i in range(0, len(maps.seg), batch)]
    return torch.cat(parts)


def recalls(model: CosPlace, database: Maps, queries: Maps) -> dict[int, float]:
    """Recall@N of queries against the database, nearest descriptors first (unit norm: inner product)."""
    similarity = embed(model, queries) @ embed(model, database).T
    predictions = similarity.topk(max(NS), dim=1).indices.numpy()
    return recall_at_n(predictions, gps_positives(queries.latlon, database.latlon), NS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--city", help="an existing synthetic city directory (default: generate one in a temp dir)")
    parser.add_argument("--places", type=int, default=64, help="places of the generated city")
    parser.add_argument("--side", type=int, default=64, help="map side for training and retrieval")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per encoding")
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--descriptor-size", type=int, default=64, help="CosPlace descriptor size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        city = args.city or os.path.join(scratch, "city")
        if not args.city:
            generate_city(CityConfig(places=args.places, side=args.side, train_visits=3, seed=args.seed), city)
        train_maps, database, queries = (load_split(city, s, args.side) for s in ("train", "database", "query"))
    print(f"train {len(train_maps.seg)} maps / {train_maps.classes.max() + 1} classes, database {len(database.seg)}, "
          f"queries {len(queries.seg)}, {args.side}x{args.side}, ResNet-18, descriptor {args.descriptor_size}")
    print("| encoding (depth +) | in channels | train s | last loss | R@1 | R@5 | R@10 |")
    print("|---|---|---|---|---|---|---|")
    floor = build_model("label", args.descriptor_size, args.seed)
    r = recalls(floor, database, queries)
    print(f"| label, untrained | 2 | 0 | - | {r[1]:.3f} | {r[5]:.3f} | {r[10]:.3f} |", flush=True)
    for encoding in ENCODINGS:
        model = build_model(encoding, args.descriptor_size, args.seed)
        start = time.perf_counter()
        loss = train(model, train_maps, args.epochs, args.batch, args.seed)
        seconds = time.perf_counter() - start
        r = recalls(model, database, queries)
        channels = model.config.encoding.in_channels
        row = f"| {encoding} | {channels} | {seconds:.0f} | {loss:.2f} | {r[1]:.3f} | {r[5]:.3f} | {r[10]:.3f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
