"""Training NetVLAD on maps (paper III-C) with the recipe of its PyTorch port (Nanne/pytorch-NetVlad): VGG16 conv5 +
a NetVLAD layer whose clusters come from k-means over local descriptors of sampled training maps (before epoch 0,
so epoch 0 validates the untrained network with its clusters set), then triplets: each query (a training image with
another within `positive_m` and one beyond `negative_m`) with its positive, the geographic positive nearest in
descriptor, and the `negatives` hardest geographic negatives, all mined with faiss over a descriptor cache refreshed
every epoch; triplet margin loss (margin sqrt 0.1), SGD with momentum, StepLR halving every `lr_step` epochs.
Validation: Recall@1/5/10 at 25 m against other captures (vprlib.train.validate); the best Recall@1 is best.pt.

The data on the workers:
- `queries`, sharded across workers: the maps of the training images usable as queries, and their `index` (the
  row's position in the training table; `xy`, the rows' metric positions, travels in the payload).
- `pool`, every worker's in full: the maps and `index` of all training images, kept in Ray's object store when they
  fit (`data.cached`), else decoded from the table on each pass. At the start of an epoch each worker draws the same
  cache (`cache_rows`: up to `cache_size` rows, seeded by the epoch), collects those rows' maps from one pass over
  `pool`, and embeds them with the current network in eval mode. A worker's memory is bounded by the cache: its
  maps (cache_size x H x W x 5 bytes), its descriptors (cache_size x K x 2 KiB, twice: array and faiss index), and
  8 bytes per training image for the positions.

When the training set is larger than the cache, the cache is drawn as anchors each brought in with one of its
geographic positives, so that every cached image has a positive in the cache; a query whose positives are all
outside this epoch's cache is skipped for the epoch (the metrics count them), as is one with no negative in it.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from vprlib.models.encodings import EncodingConfig
from vprlib.models.netvlad import NetVLAD, NetVLADConfig, init_clusters, load_imagenet, triplet_loss
from vprlib.spec import SEG_CLASSES
from vprlib.train.config import TrainConfig
from vprlib.train.cosplace import retriever_inputs, validation_dataset, validation_recall
from vprlib.train.data import DATA_TASK_CPUS, TrainDataError, cached, metric_xy, split_rows, training_dataset
from vprlib.train.loop import Prepared, Trained, WorkerRun, epoch_loop, saved_state, say

INIT_IMAGES = 500  # k-means of the clusters: up to 100 local descriptors from each of this many training images
PER_IMAGE = 100  # (pytorch-NetVlad: 50,000 descriptors, 100 per image)
CONV5_STRIDE = 16  # VGG16 conv5_3 sees the maps at 1/16 of their side
EMBED_BATCH = 32  # images per forward when the cache and the k-means sample are embedded
POOL_BATCH = 256  # rows per batch of a pass over the pool


def architecture(config: TrainConfig) -> dict:
    o = config.options
    return {"backbone": "vgg16", "clusters": o.clusters, "input": o.input, "seg_encoding": o.seg_encoding}


def model_config(config: TrainConfig, num_classes: int) -> NetVLADConfig:
    o = config.options
    encoding = EncodingConfig(modalities=o.input, seg_encoding=o.seg_encoding, num_classes=num_classes)
    return NetVLADConfig(num_clusters=o.clusters, encoding=encoding)


# ------------------------------------------------------------------------------------------- geography, mining
def count_within(xy: np.ndarray, radius: float, chunk: int = 2048) -> np.ndarray:
    """Per row of xy (N,2 metres), how many rows (itself included) lie within `radius` metres: a grid of
    radius-sized cells, each row compared with the rows of its 3 x 3 cells only."""
    xy = np.asarray(xy, dtype=np.float64)
    xy = xy - xy.min(axis=0)
    cells = np.floor(xy / radius).astype(np.int64) + 1  # >= 1, so a neighbour cell is >= 0
    width = int(cells[:, 1].max()) + 2
    keys = cells[:, 0] * width + cells[:, 1]
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_xy = keys[order], xy[order]
    counts = np.zeros(len(xy), dtype=np.int64)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            target = keys + dx * width + dy
            lo, hi = np.searchsorted(sorted_keys, target, "left"), np.searchsorted(sorted_keys, target, "right")
            for start in range(0, len(xy), chunk):
                span = slice(start, start + chunk)
                sizes = hi[span] - lo[span]
                rows = np.repeat(np.arange(start, start + len(sizes)), sizes)
                firsts = np.repeat(lo[span] - (np.cumsum(sizes) - sizes), sizes)
                others = firsts + np.arange(len(rows))
                near = ((xy[rows] - sorted_xy[others]) ** 2).sum(axis=1) <= radius**2
                counts += np.bincount(rows[near], minlength=len(xy))
    return counts


def usable_queries(xy: np.ndarray, positive_m: float, negative_m: float) -> np.ndarray:
    """Bool mask of the rows with another row within positive_m (a positive) and a row beyond negative_m."""
    return (count_within(xy, positive_m) > 1) & (count_within(xy, negative_m) < len(xy))


def cache_rows(xy: np.ndarray, queries: np.ndarray, size: int, positive_m: float, seed: int) -> np.ndarray:
    """The training rows (sorted) embedded into one epoch's mining cache: all of them when they are at most `size`;
    else anchors drawn among the queries, each with one of its geographic positives, then random rows up to `size`.
    The same on every worker for a seed."""
    count = len(xy)
    if count <= size:
        return np.arange(count)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(count, dtype=bool)
    for anchor in rng.permutation(queries):
        if chosen.sum() >= size - 1:
            break
        near = np.flatnonzero(((xy - xy[anchor]) ** 2).sum(axis=1) <= positive_m**2)
        near = near[near != anchor]
        if len(near) == 0 or chosen[near].any():  # none, or the anchor's positive is already in
            chosen[anchor] = True
            continue
        chosen[anchor] = chosen[rng.choice(near)] = True
    free = np.flatnonzero(~chosen)
    chosen[rng.choice(free, size - int(chosen.sum()), replace=False)] = True
    return np.flatnonzero(chosen)


def mine(query_desc: np.ndarray, query_xy: np.ndarray, query_index: np.ndarray, cache_desc: np.ndarray,
         cache_xy: np.ndarray, cache_index: np.ndarray, positive_m: float, negative_m: float,
         negatives: int) -> tuple[np.ndarray, np.ndarray]:
    """Triplets from a cache: per query, the positive (the cache row, not the query itself, within positive_m that
    is nearest in descriptor) and the `negatives` hardest negatives (cache rows beyond negative_m nearest in
    descriptor; repeated when the cache has fewer). Returns positive (B,) and negatives (B, negatives) as positions
    in the cache, -1 for a query without a positive or a negative in it."""
    import faiss

    index = faiss.IndexFlatL2(cache_desc.shape[1])
    index.add(np.ascontiguousarray(cache_desc, dtype=np.float32))
    _, ranked = index.search(np.ascontiguousarray(query_desc, dtype=np.float32), len(cache_desc))  # nearest first
    positive = np.full(len(query_desc), -1, dtype=np.int64)
    hardest = np.full((len(query_desc), negatives), -1, dtype=np.int64)
    for i, order in enumerate(ranked):
        metres = np.sqrt(((cache_xy[order] - query_xy[i]) ** 2).sum(axis=1))
        near = order[(metres <= positive_m) & (cache_index[order] != query_index[i])]
        far = order[metres > negative_m][:negatives]
        if len(near) and len(far):
            positive[i], hardest[i] = near[0], np.resize(far, negatives)
    return positive, hardest


# ------------------------------------------------------------------------------------------- the driver
def epoch_queries(queries: np.ndarray, count: int, seed: int) -> np.ndarray | None:
    """The training queries (their rows) an epoch trains on: `count` drawn afresh from `queries`, or None for all."""
    if count <= 0 or count >= len(queries):
        return None
    return np.random.default_rng(seed).choice(queries, size=count, replace=False)


def attach_index(batch: dict, ids: pa.Array) -> dict:
    """The batch's maps and `index`, each row's position in the training table (only tensors: what workers read)."""
    index = pc.index_in(pa.array(batch["image_id"]), value_set=ids).to_numpy(zero_copy_only=False)
    return {"depth": batch["depth"], "seg": batch["seg"], "index": index.astype(np.int64)}


def keep_queries(batch: dict, is_query: np.ndarray) -> dict:
    keep = is_query[batch["index"]]
    return {k: v[keep] for k, v in batch.items()}


def prepare(config: TrainConfig) -> Prepared:
    o = config.options
    spec, val_path, val_columns = retriever_inputs(config)
    names = ["image_id", "lat", "lon"]
    from vprlib.maps import table_schema

    utm = [c for c in ("utm_east", "utm_north", "utm_zone") if c in table_schema(config.maps).names]
    rows = split_rows(config.maps, config.train_split, names + utm, "--maps")
    xy = metric_xy(rows)
    is_query = usable_queries(xy, o.positive_m, o.negative_m)
    queries = int(is_query.sum())
    if not queries:
        raise TrainDataError(
            f"--maps {config.maps}: no image of split {config.train_split!r} ({rows.num_rows} images) has another "
            f"within --positive-m {o.positive_m:g} m and one beyond --negative-m {o.negative_m:g} m: NetVLAD's "
            f"triplets need places seen more than once and places apart")
    side = config.side or int(spec["side"])
    locals_per_image = (side // CONV5_STRIDE) ** 2
    descriptors = min(rows.num_rows, INIT_IMAGES) * min(PER_IMAGE, locals_per_image)
    if descriptors < o.clusters:
        raise TrainDataError(
            f"--clusters {o.clusters} needs as many local descriptors to start from; maps of {side} px give "
            f"{locals_per_image} each, {descriptors} from {min(rows.num_rows, INIT_IMAGES)} training images: "
            f"lower --clusters or raise --side")
    if o.imagenet and not os.path.isfile(o.imagenet):
        raise TrainDataError(f"--imagenet {o.imagenet}: no such file (a torchvision VGG16 ImageNet state dict)")
    num_classes = SEG_CLASSES[spec["seg_classes"]]
    encoding = model_config(config, num_classes).encoding
    pool = cached(training_dataset(config.maps, config.train_split, config.side, columns=("image_id",))
                  .map_batches(attach_index, fn_kwargs={"ids": rows["image_id"]}, num_cpus=DATA_TASK_CPUS),
                  config.maps, config.train_split, config.side)
    query_maps = pool.map_batches(keep_queries, fn_kwargs={"is_query": is_query}, num_cpus=DATA_TASK_CPUS)
    datasets = {"queries": query_maps, "pool": pool,
                "val": validation_dataset(config, val_path, val_columns)}
    weights = (f"ImageNet weights from {o.imagenet} (first convolution adapted to {encoding.in_channels} channels, "
               f"conv5 trained)" if o.imagenet else "random weights (no --imagenet)")
    print(f"train: netvlad on {queries} queries of {rows.num_rows} training images ({rows.num_rows - queries} "
          f"dropped: no other image within {o.positive_m:g} m or none beyond {o.negative_m:g} m), a cache of "
          f"{min(o.cache_size, rows.num_rows)} images per epoch, {o.clusters} clusters, from {weights}", flush=True)
    return Prepared(datasets=datasets, split=["queries"],
                    payload={"xy": xy, "queries": np.flatnonzero(is_query), "num_classes": num_classes,
                             "map_spec": spec},
                    model={"map_spec": spec, "encoding": dataclasses.asdict(encoding)})


# ------------------------------------------------------------------------------------------- the workers
class _Embed(nn.Module):
    """The network as DDP wraps it: maps in, descriptors out."""

    def __init__(self, model: NetVLAD):
        super().__init__()
        self.model = model

    def forward(self, depth, seg):
        return self.model.embed(depth, seg)


def gather_maps(name: str, wanted: np.ndarray) -> dict[str, torch.Tensor]:
    """The maps of training rows `wanted` (sorted indices) from one pass over the worker's full dataset `name`:
    depth, seg and index in the order of `wanted`, on the CPU."""
    import ray.train

    parts: dict[str, list] = {"depth": [], "seg": [], "index": []}
    for batch in ray.train.get_dataset_shard(name).iter_batches(batch_size=POOL_BATCH, batch_format="numpy"):
        keep = np.isin(batch["index"], wanted)
        for key in parts:
            parts[key].append(batch[key][keep])
    found = {key: np.concatenate(values) for key, values in parts.items()}
    order = np.argsort(found["index"])
    return {key: torch.from_numpy(np.ascontiguousarray(value[order])) for key, value in found.items()}


@torch.no_grad()
def embed_maps(model: NetVLAD, maps: dict, device, autocast) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(maps["index"]), EMBED_BATCH):
        depth, seg = (maps[k][start:start + EMBED_BATCH].to(device) for k in ("depth", "seg"))
        with autocast:
            out.append(model.embed(depth, seg).float().cpu().numpy())
    return np.concatenate(out)


def _sums(run: WorkerRun, values: list[float]) -> list[float]:
    """`values` summed over the workers."""
    if run.world == 1:
        return values
    import torch.distributed as dist

    total = torch.tensor(values, dtype=torch.float64, device=run.device)
    dist.all_reduce(total)
    return total.tolist()


def train_func(payload: dict) -> None:
    import faiss
    import ray.train.torch

    run = WorkerRun(payload)
    config, o = run.config, run.config.options
    faiss.omp_set_num_threads(run.threads)
    xy, queries = np.asarray(payload["xy"]), np.asarray(payload["queries"])
    model = NetVLAD(model_config(config, payload["num_classes"]))
    if o.imagenet:
        load_imagenet(model, o.imagenet)
    model.to(run.device)
    net = ray.train.torch.prepare_model(_Embed(model))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                momentum=o.momentum, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.lr_step, gamma=0.5)

    snapshot, load = saved_state(model=model, optimizer=optimizer, scheduler=scheduler)

    def init_pool() -> None:
        """A fresh run's clusters: k-means on rank 0, the same on every worker (before epoch 0 validates)."""
        clusters = None
        if run.rank == 0:
            sample = np.sort(np.random.default_rng(config.seed).permutation(len(xy))[:INIT_IMAGES])
            maps = gather_maps("pool", sample)
            encoded = (model.encoder(maps["depth"][i:i + EMBED_BATCH].to(run.device),
                                     maps["seg"][i:i + EMBED_BATCH].to(run.device))
                       for i in range(0, len(sample), EMBED_BATCH))
            alpha = init_clusters(model, encoded, seed=config.seed, per_image=PER_IMAGE,
                                  max_descriptors=INIT_IMAGES * PER_IMAGE)
            say(f"train: {o.clusters} clusters from k-means over {len(sample)} training images, alpha {alpha:.4g}")
            clusters = {k: v.cpu() for k, v in model.pool.state_dict().items()}
        model.pool.load_state_dict(run.share(clusters))

    def train(epoch: int) -> Trained:
        started = time.perf_counter()
        cache = gather_maps("pool", cache_rows(xy, queries, o.cache_size, o.positive_m, config.seed + epoch))
        cache_desc = embed_maps(model, cache, run.device, run.autocast())
        cache_index = cache["index"].numpy()
        cache_s = time.perf_counter() - started
        loss_sum, steps, triplets, skipped, images = 0.0, 0, 0, 0, 0
        lr = optimizer.param_groups[0]["lr"]
        drawn = epoch_queries(queries, o.queries_per_epoch, config.seed + epoch)
        for batch in run.batches("queries", epoch):
            index = batch["index"].cpu().numpy()
            take = np.ones(len(index), bool) if drawn is None else np.isin(index, drawn)
            if run.world == 1:  # alone: leave out the rows not drawn (with DDP every worker steps on every batch)
                if not take.any():
                    continue
                rows = torch.from_numpy(take).to(batch["depth"].device)
                batch, index, take = {k: v[rows] for k, v in batch.items()}, index[take], take[take]
            with torch.no_grad(), run.autocast():
                model.eval()
                query_desc = model.embed(batch["depth"], batch["seg"]).float().cpu().numpy()
            positive, negatives = mine(query_desc, xy[index], index, cache_desc, xy[cache_index], cache_index,
                                       o.positive_m, o.negative_m, o.negatives)
            keep = (positive >= 0) & take
            count = int(keep.sum())
            skipped += len(index) - count
            if count == 0 and run.world == 1:
                continue
            picks = torch.from_numpy(np.concatenate([positive[keep], negatives[keep].ravel()]))
            mask = torch.from_numpy(keep).to(batch["depth"].device)
            depth = torch.cat([batch["depth"][mask], cache["depth"][picks].to(run.device)])
            seg = torch.cat([batch["seg"][mask], cache["seg"][picks].to(run.device)])
            if count == 0:  # another worker has triplets: take part in the step with a zero loss
                depth, seg = batch["depth"], batch["seg"]
            net.train()
            with run.autocast():
                descriptors = net(depth, seg).float()
                if count:
                    loss = triplet_loss(descriptors[:count], descriptors[count:2 * count],
                                        descriptors[2 * count:].view(count, o.negatives, -1), o.margin)
                else:
                    loss = descriptors.sum() * 0.0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if count:
                loss_sum += loss.item()
                steps, triplets, images = steps + 1, triplets + count, images + len(depth)
        del cache, cache_desc
        scheduler.step()
        loss_sum, steps, triplets, skipped, images = _sums(run, [loss_sum, steps, triplets, skipped, images])
        return Trained({"loss": loss_sum / steps if steps else None, "triplets": int(triplets),
                        "skipped": int(skipped), "cache": len(cache_index), "cache_s": cache_s}, int(images), lr)

    epoch_loop(run, snapshot=snapshot, load=load, best=lambda: model.checkpoint(map_spec=payload["map_spec"]),
               validate=lambda epoch: validation_recall(run, model), train=train, fresh=init_pool)
