"""Locating photos: each photo goes through the extraction chain and the retriever the index was built with, and the
index's nearest images say where it was taken.

Everything runs in this process (no Ray cluster needed): the photos are decoded and resized as the extraction job
does, the strategy's models (from the index's map specification) make their maps, the retriever embeds them, and the
shards are searched. The position estimate is the similarity-weighted mean of the top-k places that lie within
`cluster_m` of the best match: the best match decides the neighbourhood, its agreeing neighbours refine it, and a
far-away runner-up (another street that looks alike) does not pull the estimate between two places.

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
from dataclasses import dataclass, field

import numpy as np

from vprlib.cluster import DEVICES
from vprlib.index.search import Index
from vprlib.metrics import haversine_m
from vprlib.spec import MapSpec, spec_mismatch

# Places searched per photo for the confidence (at least top_k): deep enough to reach a place other than the best
# match's (on the demo city, always among the first 10).
CONFIDENCE_DEPTH = 50


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class LocateConfig:
    index: str = field(metadata=_help("the index folder (jobs/index.py output)"))
    photos: tuple[str, ...] = ()
    top_k: int = field(default=5, metadata=_help("places returned per photo"))
    cluster_m: float = field(default=25.0, metadata=_help(
        "the estimate averages the top-k places within this many metres of the best match"))
    models: str = field(default="", metadata=_help(
        "extraction models ('' = the index's); must be what the index's maps were made with"))
    device: str = field(default="auto", metadata=_help("auto (cuda when present), cpu or cuda"))
    json: bool = field(default=False, metadata=_help("print JSON instead of a table"))
    min_side: int = field(default=32, metadata=_help(
        "photos whose shorter side has fewer pixels are refused: too small to show a street"))
    sure_ratio: float = field(default=0.75, metadata=_help(
        "an answer is sure when its descriptor distance to the best match is at most this share of the distance to "
        "the best match of another place (Lowe's ratio test; docs/RESULTS.md says how 0.75 was chosen)"))

    def __post_init__(self):
        if self.top_k < 1 or self.cluster_m < 0:
            raise ValueError("top_k must be >= 1 and cluster_m >= 0")
        if self.min_side < 1 or not 0 < self.sure_ratio <= 1:
            raise ValueError(f"min_side must be >= 1 and sure_ratio in (0, 1], got {self.min_side}, {self.sure_ratio}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; known: {', '.join(DEVICES)}")


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


def photo_maps(photos: tuple[str, ...], spec: MapSpec, device: str) -> dict[str, np.ndarray]:
    """Maps of the photos by the strategy's chain (one batch): decoded as the extraction job decodes them."""
    from vprlib.extract.config import RunOptions
    from vprlib.extract.decode import DecodeError, load_image
    from vprlib.extract.stages import FusedChain

    images = []
    for photo in photos:
        try:
            images.append(load_image(photo, spec.side))
        except DecodeError as exc:
            raise LocateError(f"cannot read the photo: {exc}") from None
    run = dataclasses.replace(RunOptions(), device=device, batch_size=max(1, len(photos)))
    return FusedChain(spec, run).compute({"image": np.stack(images)})


def check_photo_sizes(photos: tuple[str, ...], min_side: int) -> None:
    """Refuse, in one line, a photo whose shorter side is under `min_side` pixels (read from its header). One that
    cannot be read is left to `photo_maps`, which names why."""
    from PIL import Image

    from vprlib.extract.decode import DecodeError, read_bytes

    for photo in photos:
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
    scores, rows = index.search(vectors, max(config.top_k, CONFIDENCE_DEPTH))
    table = index.rows
    lat, lon = table["lat"].to_numpy(), table["lon"].to_numpy()
    heading = table["heading"].to_numpy(zero_copy_only=False) if "heading" in table.column_names else None
    ids = table["image_id"].to_pylist()
    results = []
    for photo, found, score in zip(config.photos, rows, scores, strict=True):
        found, score = found[found >= 0], score[found >= 0]
        sure = confidence(lat[found], lon[found], score, config.cluster_m, config.sure_ratio) if len(found) else None
        found, score = found[: config.top_k], score[: config.top_k]
        places = [{"rank": rank + 1, "image_id": ids[r], "lat": float(lat[r]), "lon": float(lon[r]),
                   "heading": None if heading is None else float(heading[r]), "similarity": float(s)}
                  for rank, (r, s) in enumerate(zip(found, score, strict=True))]
        at = estimate(lat[found], lon[found], score, config.cluster_m) if len(found) else (None, None)
        results.append({"photo": photo, "estimate": {"lat": at[0], "lon": at[1]}, "confidence": sure,
                        "places": places})
    return results


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
