"""Locating photos: each photo goes through the extraction chain and the retriever the index was built with, and the
index's nearest images say where it was taken.

Everything runs in this process (no Ray cluster needed): the photos are decoded and resized as the extraction job
does, the strategy's models (from the index's map specification) make their maps, the retriever embeds them, and the
shards are searched; the first `rerank` places are re-ordered by how well their maps agree with the photo's
(vprlib.index.rerank; their similarities stay the descriptors'). The position estimate is the similarity-weighted
mean of the top-k places that lie within `cluster_m` of the best match: the best match decides the neighbourhood,
its agreeing neighbours refine it, and a far-away runner-up (another street that looks alike) does not pull the
estimate between two places.

How sure the answer is (`confidence`) is the ratio test of Lowe (2004) between places: the descriptor distance to the
best match over the distance to the best match of another place (more than `cluster_m` from it). Near 1, another
street looks as alike and the answer is a guess; the answer is "sure" at `sure_ratio` (0.75) or below, a threshold
measured on the demo city's queries (docs/RESULTS.md). Photos too small to show a street (`min_side`) are refused
before any model runs: a 1x1 image, resized up to the maps' side, would otherwise be matched like any photo, with as
high a similarity.
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from vprlib.cli import help_text
from vprlib.cluster import DEVICES
from vprlib.index.rerank import DEFAULT_K
from vprlib.index.search import Index
from vprlib.metrics import haversine_m
from vprlib.spec import MapSpec, spec_mismatch

# Places searched per photo for the confidence (at least top_k): deep enough to reach a place other than the best
# match's (on the demo city, always among the first 10).
CONFIDENCE_DEPTH = 50



@dataclass(frozen=True)
class LocateConfig:
    index: str = field(metadata=help_text("the index folder (jobs/index.py output)"))
    photos: tuple[str, ...] = ()
    top_k: int = field(default=5, metadata=help_text("places returned per photo"))
    cluster_m: float = field(default=25.0, metadata=help_text(
        "the estimate averages the top-k places within this many metres of the best match"))
    models: str = field(default="", metadata=help_text(
        "extraction models ('' = the index's); must be what the index's maps were made with"))
    device: str = field(default="auto", metadata=help_text("auto (cuda when present), cpu or cuda"))
    json: bool = field(default=False, metadata=help_text("print JSON instead of a table"))
    min_side: int = field(default=32, metadata=help_text(
        "photos whose shorter side has fewer pixels are refused: too small to show a street"))
    sure_ratio: float = field(default=0.75, metadata=help_text(
        "an answer is sure when its descriptor distance to the best match is at most this share of the distance to "
        "the best match of another place (Lowe's ratio test; docs/RESULTS.md says how 0.75 was chosen)"))
    input: str = field(default="", metadata=help_text(
        "a batch instead of photos: a manifest (.parquet/.csv), a folder (manifest.parquet, or images + CSV) or "
        "s3://, located on Ray into one Parquet file, --output"))
    output: str = field(default="", metadata=help_text("the batch's answers (a .parquet file, local or s3://)"))
    prior_m: float = field(default=0.0, metadata=help_text(
        "batch: search only the shards within this many metres of a row's lat/lon (a prior position, e.g. a phone's "
        "GPS); 0 = every shard"))
    batch_size: int = field(default=32, metadata=help_text("batch: photos per model batch"))
    actors: int = field(default=1, metadata=help_text("batch: extraction and embedding actors"))
    search_actors: int = field(default=1, metadata=help_text("batch: actors holding the index's shards"))
    rerank: int = field(default=DEFAULT_K, metadata=help_text(
        "re-rank the first K places by how well their maps agree with the photo's (vprlib.index.rerank; 0 = off)"))
    database_maps: str = field(default="", metadata=help_text(
        "the maps table the index was built from, read by the re-ranking ('' = the one index.json records)"))
    ray_address: str = field(default="", metadata=help_text("batch: Ray cluster address ('' = connect or start local)"))

    def __post_init__(self):
        if self.top_k < 1 or self.cluster_m < 0 or self.prior_m < 0 or self.rerank < 0:
            raise ValueError("top_k must be >= 1, cluster_m, prior_m and rerank >= 0")
        if min(self.batch_size, self.actors, self.search_actors) < 1:
            raise ValueError("batch_size, actors and search_actors must be >= 1")
        if self.min_side < 1 or not 0 < self.sure_ratio <= 1:
            raise ValueError(f"min_side must be >= 1 and sure_ratio in (0, 1], got {self.min_side}, {self.sure_ratio}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; known: {', '.join(DEVICES)}")
        if bool(self.photos) == bool(self.input):
            raise ValueError("give photos or --input (a batch of them), not both" if self.photos else
                             "nothing to locate: give photos or --input")
        if bool(self.input) != bool(self.output):
            raise ValueError("--input and --output go together: the batch's answers are written to --output")


class LocateError(ValueError):
    """A photo that cannot be read, or an index this call cannot use."""


def check_index(index: Index, models: str) -> tuple[MapSpec, str]:
    """The index's map spec and retriever, after checking that this call would make the same maps (the same
    extraction models, with the same weights) and use the same retriever weights."""
    from vprlib.index.embed import ModelError, retriever_record
    from vprlib.models import zoo

    recorded = index.manifest["map_spec"]
    spec = MapSpec.from_record(recorded)
    if not spec.plan.stages:
        raise LocateError(f"{index.root} indexes {spec.strategy} maps, which a photo cannot be turned into: index "
                          f"maps made by jobs/extract.py")
    if models and models != spec.models:
        raise LocateError(f"--models {models} is not what {index.root}'s maps were made with ({spec.models})")
    now = spec.record(zoo.identity(spec.models, spec.plan.models, spec.segmenter_side))
    diff = spec_mismatch(recorded, now, ("models_identity",))
    if diff:
        raise LocateError(f"the extraction models changed since {index.root} was built ({diff})")
    model = index.manifest["model"]
    try:
        record = retriever_record(model["path"])
    except ModelError as exc:
        raise LocateError(f"{index.root}'s retriever: {exc}") from None
    if record.sha256 != model["sha256"]:
        raise LocateError(f"the retriever {model['path']} changed since {index.root} was built (sha256 differs)")
    return spec, model["path"]


def photo_maps(photos, spec: MapSpec, device: str) -> dict[str, np.ndarray]:
    """Maps of the photos by the strategy's chain (one batch). A photo is a path, decoded as the extraction job
    decodes it, or an image already decoded (a PIL image: a video's frame), resized the same way."""
    from vprlib.extract.config import RunOptions
    from vprlib.extract.decode import DecodeError, fit_image, load_image
    from vprlib.extract.stages import FusedChain

    images = []
    for photo in photos:
        if not isinstance(photo, str):
            images.append(fit_image(photo, spec.side))
            continue
        try:
            images.append(load_image(photo, spec.side))
        except DecodeError as exc:
            raise LocateError(f"cannot read the photo: {exc}") from None
    run = dataclasses.replace(RunOptions(), device=device, batch_size=max(1, len(photos)))
    return FusedChain(spec, run).compute({"image": np.stack(images)})


def check_photo_sizes(photos: tuple[str, ...], min_side: int, images=()) -> None:
    """Refuse, in one line, a photo whose shorter side is under `min_side` pixels (read from its header, or from
    `images`, the photos already decoded, when given). One that cannot be read is left to `photo_maps`, which names
    why."""
    from PIL import Image

    from vprlib.extract.decode import DecodeError, read_bytes

    for q, photo in enumerate(photos):
        if images:
            width, height = images[q].size
        else:
            try:
                with Image.open(io.BytesIO(read_bytes(photo))) as image:
                    width, height = image.size
            except (DecodeError, OSError):
                continue
        if min(width, height) < min_side:
            raise LocateError(f"{photo} is {width}x{height} pixels: too small to show a street (the shorter side "
                              f"must be at least --min-side {min_side})")


def confidence(lat: np.ndarray, lon: np.ndarray, scores: np.ndarray, cluster_m: float, sure_ratio: float) -> dict:
    """How sure the best match is, from the ranked places (similarities of unit descriptors, best first): the ratio
    of the descriptor distance to it over that to the best place more than `cluster_m` from it (the distance of unit
    vectors is sqrt(2 - 2 similarity)), sure at `sure_ratio` or below. When every ranked place is near the best, the
    last one stands in for the other place: the ratio is then an upper bound."""
    away = np.nonzero(haversine_m(lat[0], lon[0], lat, lon) > cluster_m)[0]
    other = int(away[0]) if len(away) else len(scores) - 1
    ratio = float(np.sqrt(max(1.0 - scores[0], 0.0) / max(1.0 - scores[other], 1e-12)))
    return {"ratio": round(ratio, 4), "sure": ratio <= sure_ratio, "sure_ratio": sure_ratio,
            "other_rank": other + 1, "other_m": round(float(haversine_m(lat[0], lon[0], lat[other], lon[other])), 1)}


def estimate(lat: np.ndarray, lon: np.ndarray, scores: np.ndarray, cluster_m: float) -> tuple[float, float]:
    """Similarity-weighted mean position of the ranked places within `cluster_m` of the first."""
    near = haversine_m(lat[0], lon[0], lat, lon) <= cluster_m
    weights = np.clip(scores[near], 1e-6, None)
    return float(np.average(lat[near], weights=weights)), float(np.average(lon[near], weights=weights))


def locate(config: LocateConfig) -> list[dict]:
    """For each photo: the top-k places (image id, lat, lon, heading, similarity), the position estimate and how sure
    it is (`confidence`)."""
    import torch

    from vprlib.index.embed import load_model, retriever_record
    from vprlib.train.data import resize_maps

    index = Index(config.index)
    spec, model_path = check_index(index, config.models)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    check_photo_sizes(config.photos, config.min_side)
    maps = photo_maps(config.photos, spec, device)
    record = retriever_record(model_path)
    photo = {"rgb": maps["image"]} if "image" in maps else {}  # maps with --rgb: the photo too
    resized = resize_maps({"depth": maps["depth"], "seg": maps["seg"], **photo}, record.input_side)
    model = load_model(model_path).to(device)
    with torch.inference_mode():
        tensors = {k: torch.from_numpy(np.array(v)).to(device) for k, v in resized.items()}
        vectors = model.embed(tensors["depth"], tensors["seg"], tensors.get("rgb")).float().cpu().numpy()
    hits = index.search(vectors, search_depth(config))
    if config.rerank:
        from vprlib.index.rerank import Reranker

        hits, _ = Reranker(index.root, index.manifest, config.database_maps)(hits, maps["seg"], config.rerank)
    return [located(photo, hits, q, config) for q, photo in enumerate(config.photos)]


def search_depth(config: LocateConfig) -> int:
    """Places searched per photo: the answer's, the confidence's and the re-ranked ones."""
    return max(config.top_k, CONFIDENCE_DEPTH, config.rerank)


def located(photo: str, hits, q: int, config: LocateConfig) -> dict:
    """One photo's answer from its row `q` of the search's hits (CONFIDENCE_DEPTH deep): its top-k places, best
    first, the estimate and how sure it is."""
    found = [r for r in range(hits.ids.shape[1]) if hits.ids[q, r] is not None]
    column = lambda name: hits.columns.get(name, np.full(hits.ids.shape, None, object))[q, found]  # noqa: E731
    lat, lon = column("lat").astype(np.float64), column("lon").astype(np.float64)
    heading, scores = column("heading"), hits.scores[q, found]
    sure = confidence(lat, lon, scores, config.cluster_m, config.sure_ratio) if found else None
    top = min(len(found), config.top_k)
    places = [{"rank": rank + 1, "image_id": hits.ids[q, found[rank]], "lat": float(lat[rank]),
               "lon": float(lon[rank]), "heading": None if heading[rank] is None else float(heading[rank]),
               "similarity": float(scores[rank])} for rank in range(top)]
    at = estimate(lat[:top], lon[:top], scores[:top], config.cluster_m) if found else (None, None)
    return {"photo": photo, "estimate": {"lat": at[0], "lon": at[1]}, "confidence": sure, "places": places}


def format_table(results: list[dict]) -> str:
    lines = []
    for result in results:
        at = result["estimate"]
        lines.append(f"{result['photo']}: estimated at {at['lat']:.6f}, {at['lon']:.6f}; "
                     f"{how_sure(result['confidence'])}")
        for place in result["places"]:
            heading = "" if place["heading"] is None else f", heading {place['heading']:.0f}"
            lines.append(f"  {place['rank']}. {place['image_id']}  {place['lat']:.6f}, {place['lon']:.6f}{heading}, "
                         f"similarity {place['similarity']:.3f}")
    return "\n".join(lines)


def how_sure(confidence: dict) -> str:
    """The confidence in words: 'sure (distance ratio 0.621 to the next place, ...)' or 'not sure (...)'."""
    verdict = "sure" if confidence["sure"] else "not sure"
    return (f"{verdict} (distance ratio {confidence['ratio']:.3f} to the next place, {confidence['other_m']:.0f} m "
            f"from the best; sure at {confidence['sure_ratio']:g} or below)")


# ----------------------------------------------------------------------------------------------- a batch, on Ray
def answer_schema():
    """One row per photo of a batch: its estimate, how sure it is, its top-k places; or its error."""
    import pyarrow as pa

    floats = pa.list_(pa.float64())
    return pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("status", pa.string()),
                      ("error", pa.string()), ("lat", pa.float64()), ("lon", pa.float64()), ("sure", pa.bool_()),
                      ("ratio", pa.float64()), ("top_ids", pa.list_(pa.string())), ("top_lat", floats),
                      ("top_lon", floats), ("top_heading", floats), ("similarity", floats)])


def locate_batch(config: LocateConfig) -> dict:
    """Locate every photo of a manifest or folder: the photos stream through Ray Data (decode tasks, the index's
    extraction chain and retriever on actor pools, the search on the index's actors), and the answers (one row per
    photo, in the input's order: its estimate and top-k places, or its error) are written to one Parquet file.
    Returns a summary."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import ray
    from ray.data import ActorPoolStrategy

    from vprlib.cluster import Need, absolute_path, connect, io_task_args
    from vprlib.extract.config import extract_config
    from vprlib.extract.output import load_input
    from vprlib.extract.pipeline import photos_dataset
    from vprlib.index.embed import retriever_record
    from vprlib.index.search import SearchPool
    from vprlib.storage import write_atomic

    start = time.perf_counter()
    index = Index(absolute_path(config.index))
    spec, model_path = check_index(index, config.models)
    record = retriever_record(model_path)
    photos = load_input(absolute_path(config.input))
    cluster = connect(config.ray_address)
    device = cluster.device(config.device)
    gpus = 1.0 if device == "cuda" else 0.0
    cluster.check(Need("locating actors", config.actors, 1.0, gpus, "--actors", "(1 CPU each)", "(1 GPU each)",
                       spare_cpus=1))
    extract = extract_config(absolute_path(config.input), config.output, **{
        **asdict(spec), "device": device, "batch_size": config.batch_size, "actors": config.actors})
    ds = photos_dataset(extract, photos)
    ds = ds.map_batches(PhotoEmbedder, fn_constructor_kwargs={"spec": spec, "run": extract.run, "checkpoint":
                                                              model_path, "side": record.input_side},
                        batch_size=config.batch_size, compute=ActorPoolStrategy(size=config.actors), num_cpus=1,
                        num_gpus=gpus, **io_task_args())
    pool = SearchPool(index.root, config.search_actors, manifest=index.manifest)
    reranker = None
    if config.rerank:
        from vprlib.index.rerank import RerankPool

        reranker = RerankPool(index.root, config.search_actors, manifest=index.manifest, maps=config.database_maps)
    priors = photos.select([c for c in ("image_id", "lat", "lon") if c in photos.column_names])
    ds = ds.map_batches(BatchLocator(pool, ray.put(priors), config, reranker), batch_format="numpy",
                        num_cpus=SEARCH_CPUS)
    answers = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    answers = answers.take(pc.index_in(photos["image_id"], value_set=answers["image_id"]))
    write_atomic(config.output, lambda sink: pq.write_table(answers, sink, compression="zstd"))
    failed = sum(s != "ok" for s in answers["status"].to_pylist())
    summary = {"photos": answers.num_rows, "located": answers.num_rows - failed, "failed": failed,
               "output": config.output, "wall_s": time.perf_counter() - start}
    print(f"locate: {summary['located']} of {summary['photos']} photos located, {failed} could not be read; "
          f"answers in {config.output}; {summary['wall_s']:.1f} s", flush=True)
    return summary


SEARCH_CPUS = 0.5  # CPUs a light task of the batch reserves


class PhotoEmbedder:
    """Ray Data actor: the index's extraction chain and its retriever, each loaded once; decoded photos in, their
    descriptors out (`vector`, with `image_id`, `uri`, `status`, `error`; an error row's vector means nothing), and
    the label maps cut for the re-ranking (`rerank_seg`)."""

    def __init__(self, spec: MapSpec, run, checkpoint: str, side: int):
        from vprlib.extract.stages import FusedChain
        from vprlib.index.embed import Embedder
        from vprlib.train.data import resize_maps

        self.chain = FusedChain(spec, run)
        self.embedder = Embedder(checkpoint, run.device)
        self.side, self.resize = side, resize_maps

    def __call__(self, batch: dict) -> dict:
        maps = self.chain(batch)
        photo = {"rgb": maps["image"]} if "image" in maps else {}
        resized = self.resize({"depth": maps["depth"], "seg": maps["seg"], **photo}, self.side)
        from vprlib.index.rerank import thumbnails

        kept = {k: maps[k] for k in ("image_id", "uri", "status", "error")}
        return self.embedder({**kept, **resized, "rerank_seg": thumbnails(maps["seg"])})


class BatchLocator:
    """A Ray Data step: a batch of photo descriptors searched on the index's actors (only the shards near a row's
    prior position with --prior-m), the first --rerank places re-ordered by their maps (`reranker`, a
    vprlib.index.rerank.RerankPool), each photo's answer (`located`) as a row of `answer_schema()`."""

    def __init__(self, pool, priors, config: LocateConfig, reranker=None):
        self.pool, self.priors, self.config, self.reranker = pool, priors, config, reranker

    def allowed(self, ids: list[str]) -> list | None:
        """Per photo, the shards near its prior position (every shard without one); None: no priors asked for."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import ray

        from vprlib.index.search import shards_near

        priors = ray.get(self.priors)
        if self.config.prior_m <= 0 or not {"lat", "lon"} <= set(priors.column_names):
            return None
        shards = self.pool.manifest["shards"]
        rows = priors.take(pc.index_in(pa.array(ids, pa.string()), value_set=priors["image_id"])).to_pylist()
        return [list(shards) if r["lat"] is None else shards_near(shards, r["lat"], r["lon"], self.config.prior_m)
                for r in rows]

    def __call__(self, batch: dict):
        import pyarrow as pa

        ids = [str(i) for i in batch["image_id"]]
        hits = self.pool.search(np.asarray(batch["vector"], dtype=np.float32), search_depth(self.config),
                                self.allowed(ids))
        if self.reranker is not None:
            hits, _ = self.reranker(hits, batch["rerank_seg"], self.config.rerank)
        rows = []
        for q, ident in enumerate(ids):
            ok = batch["status"][q] == "ok"
            answer = located(str(batch["uri"][q]), hits, q, self.config) if ok else None
            places = answer["places"] if answer else []
            sure = (answer or {}).get("confidence") or {}
            rows.append({"image_id": ident, "uri": str(batch["uri"][q]), "status": str(batch["status"][q]),
                         "error": str(batch["error"][q]), "lat": answer["estimate"]["lat"] if answer else None,
                         "lon": answer["estimate"]["lon"] if answer else None, "sure": sure.get("sure"),
                         "ratio": sure.get("ratio"), "top_ids": [p["image_id"] for p in places],
                         "top_lat": [p["lat"] for p in places], "top_lon": [p["lon"] for p in places],
                         "top_heading": [p["heading"] for p in places],
                         "similarity": [p["similarity"] for p in places]})
        return pa.Table.from_pylist(rows, schema=answer_schema())
