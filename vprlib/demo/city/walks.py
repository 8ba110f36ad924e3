"""Query walks in the synthetic city: a few seconds of video as a pedestrian would take them (docs/DESIGN.md,
"Sequences").

Each walk is `frames` captures `spacing_m` metres apart along the street of one evaluation place, the camera facing
along the walk, ending at the place (within the city's jitter). A walk has its own appearance (time of day, season)
and its own dynamic objects, drawn once around it (the same cars and people in all its frames, none within
`clearance_m` of where the camera passes). The database stays the city's: the walks are queries only.

The output is a city-like folder: `rgb/<id>.png`, `gt/<id>.npz` (the city's ground-truth arrays), `manifest.parquet`
(the city's manifest columns, split `query`, plus `sequence_id` and `frame_index`, 0 = the first frame) and `gt_maps/`,
the ground-truth maps table of the frames (strategy `ground-truth`, the city's spec). Extraction carries the
manifest's columns into the maps table, so every strategy's maps of the walks keep their sequence and frame.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from vprlib.console import Progress
from vprlib.data.holicity import holicity_to_refined
from vprlib.data.manifest import write_manifest
from vprlib.demo import city as sc
from vprlib.maps import carry_columns, encode_batch, output_schema, write_part, write_spec
from vprlib.spec import to_inverse_metres
from vprlib.storage import join_uri


@dataclass(frozen=True)
class WalkConfig:
    """Query walks through a city's evaluation area; defaults: two 5-frame walks per place, 2 m apart."""

    frames: int = 5  # captures per walk
    spacing_m: float = 2.0  # metres between consecutive frames
    walks_per_place: int = 2  # walks ending at each evaluation place, each from a random direction along its street
    heading_jitter: float = 3.0  # degrees; each frame's heading within this of the walking direction
    clearance_m: float = 1.5  # dynamic objects kept this far from the camera's path
    seed: int = 0  # the walks' own draws (the city keeps its seed)
    workers: int = 0  # processes; 0 means one per CPU

    def __post_init__(self):
        rules = {
            "frames": (1 <= self.frames <= 64, "in [1, 64]"), "spacing_m": (0 < self.spacing_m <= 10, "in (0, 10]"),
            "walks_per_place": (self.walks_per_place >= 1, ">= 1"),
            "heading_jitter": (0 <= self.heading_jitter <= 45, "in [0, 45]"),
            "clearance_m": (self.clearance_m >= 0, ">= 0"), "workers": (self.workers >= 0, ">= 0"),
        }
        bad = [f"{name} (must be {rule}, got {getattr(self, name)})" for name, (ok, rule) in rules.items() if not ok]
        if bad:
            raise ValueError(f"WalkConfig: invalid value for {'; '.join(bad)}")


@dataclass(frozen=True)
class Walk:
    """One planned walk: its frames' camera positions (F, 3, local metres) and headings (F,), oldest first."""

    walk_id: int
    place_id: int
    positions: np.ndarray
    headings: np.ndarray
    appearance: sc.Appearance


def street_axis(config: sc.CityConfig, xy: np.ndarray, rng: np.random.Generator) -> int:
    """0 when `xy` stands on a street running east-west (y on a centre line), 1 north-south; at a crossing, drawn."""
    offset = np.abs(xy - np.round(xy / config.pitch_m) * config.pitch_m)
    on = offset < config.road_width / 2  # (on a street along y, on a street along x)
    if on.all():
        return int(rng.integers(2))
    return 1 if on[0] else 0


def plan_walks(city: sc.City, walks: WalkConfig) -> list[Walk]:
    """Every evaluation place's walks: direction along its street drawn (either way), the end jittered across the
    street and along it like a visit, a constant lateral position, headings along the walk."""
    config = city.config
    rng = np.random.default_rng([config.seed, 7, walks.seed])
    looks = [sc.Appearance(t, s) for t in sc.TIMES_OF_DAY for s in sc.SEASONS]
    planned = []
    for place_id in np.flatnonzero(city.place_area == "eval"):
        for _ in range(walks.walks_per_place):
            place = city.places[place_id]
            axis = street_axis(config, place, rng)
            sign = 1.0 if rng.random() < 0.5 else -1.0
            direction = np.array([sign, 0.0]) if axis == 0 else np.array([0.0, sign])
            heading = math.degrees(math.atan2(direction[0], direction[1])) % 360.0
            across = np.array([-direction[1], direction[0]])
            end = place + direction * rng.uniform(-config.jitter, config.jitter) + across * rng.uniform(
                -config.jitter, config.jitter)
            back = (walks.frames - 1 - np.arange(walks.frames)) * walks.spacing_m
            xy = end[None] - back[:, None] * direction[None]
            z = np.full(walks.frames, config.camera_height + rng.uniform(-0.2, 0.2))
            headings = (heading + rng.uniform(-walks.heading_jitter, walks.heading_jitter, walks.frames)) % 360.0
            planned.append(Walk(len(planned), int(place_id), np.column_stack([xy, z]), headings,
                                looks[int(rng.integers(len(looks)))]))
    return planned


def walk_objects(city: sc.City, walk: Walk, walks: WalkConfig) -> sc.Primitives:
    """The walk's dynamic objects: drawn around its middle frame, then every primitive within `clearance_m` of a
    frame's position left out (the camera never stands inside a car)."""
    config = city.config
    rng = np.random.default_rng([config.seed, 8, walks.seed, walk.walk_id])
    middle = walk.positions[len(walk.positions) // 2, :2]
    prims = sc.dynamic_objects(config, middle, rng)
    if not len(prims):
        return prims
    lo, hi = prims.bounds()
    gap = np.maximum(np.maximum(lo[:, None, :2] - walk.positions[None, :, :2],
                                walk.positions[None, :, :2] - hi[:, None, :2]), 0.0)  # (K, F, 2)
    keep = (np.linalg.norm(gap, axis=-1) > walks.clearance_m).all(axis=1)
    return sc.Primitives(prims.kind[keep], prims.params[keep], prims.label[keep], prims.colour[keep])


def image_id(walk_id: int, frame: int) -> str:
    return f"walk{walk_id:05d}-{frame:02d}"


_WORKER: tuple[sc.City, WalkConfig] | None = None


def _init_worker(config: sc.CityConfig, walks: WalkConfig) -> None:
    global _WORKER
    _WORKER = (sc.build_city(config), walks)


def _render_walk(walk: Walk, output: str, city: sc.City | None = None, walks: WalkConfig | None = None) -> list[dict]:
    """Render and write one walk's frames (RGB, ground-truth npz); return their rows with their exact static maps."""
    if city is None:
        city, walks = _WORKER
    config = city.config
    dynamic = walk_objects(city, walk, walks)
    rows = []
    for frame, (position, heading) in enumerate(zip(walk.positions, walk.headings, strict=True)):
        ident = image_id(walk.walk_id, frame)
        camera = sc.Camera(tuple(float(v) for v in position), float(heading), config.pitch, config.fov)
        noise = (config.seed * 1_000_003 + walks.seed) * 1_009 + walk.walk_id * 64 + frame
        maps = sc.render(city, camera, walk.appearance, dynamic, config.side, noise_seed=noise)
        Image.fromarray(maps.pop("rgb")).save(os.path.join(output, "rgb", f"{ident}.png"), compress_level=1)
        sc.write_npz(os.path.join(output, "gt", f"{ident}.npz"), maps)
        rows.append({"image_id": ident, "walk": walk, "frame": frame, "heading": float(heading),
                     "xy": position[:2], "dynamic_fraction": float(maps["dynamic"].mean()),
                     "depth": to_inverse_metres(maps["depth"]), "seg": holicity_to_refined(maps["seg"])})
    return rows


def manifest(city: sc.City, rows: list[dict]) -> pa.Table:
    """The walks' manifest: the city's manifest columns (split `query`) plus `sequence_id` and `frame_index`."""
    config = city.config
    xy = np.array([r["xy"] for r in rows], np.float64).reshape(-1, 2)
    geo = sc.local_to_geo(config, xy[:, 0], xy[:, 1])
    walk = [r["walk"] for r in rows]
    return pa.table({
        "image_id": pa.array([r["image_id"] for r in rows], pa.string()),
        "uri": pa.array([f"rgb/{r['image_id']}.png" for r in rows], pa.string()),
        "lat": pa.array(geo["lat"], pa.float64()), "lon": pa.array(geo["lon"], pa.float64()),
        "heading": pa.array([r["heading"] for r in rows], pa.float64()),
        "pitch": pa.array(np.full(len(rows), config.pitch), pa.float64()),
        "utm_east": pa.array(geo["utm_east"], pa.float64()), "utm_north": pa.array(geo["utm_north"], pa.float64()),
        "utm_zone": pa.array(geo["utm_zone"], pa.int32()),
        "place_id": pa.array([w.place_id for w in walk], pa.int32()),
        "sequence_id": pa.array([w.walk_id for w in walk], pa.int32()),
        "frame_index": pa.array([r["frame"] for r in rows], pa.int32()),
        "split": pa.array(["query"] * len(rows), pa.string()),
        "time_of_day": pa.array([w.appearance.time_of_day for w in walk], pa.string()),
        "season": pa.array([w.appearance.season for w in walk], pa.string()),
        "dynamic_fraction": pa.array([r["dynamic_fraction"] for r in rows], pa.float64()),
        "gt_uri": pa.array([f"gt/{r['image_id']}.npz" for r in rows], pa.string()),
    })


def _write_gt_maps(city: sc.City, walks: WalkConfig, rows: list[dict], output: str) -> None:
    """The frames' ground-truth maps table, one part named by the city's and the walks' configs."""
    spec = sc.gt_spec(city.config)
    table = manifest(city, rows)
    table = table.set_column(table.column_names.index("uri"), "uri",
                             pa.array([join_uri(output, u) for u in table["uri"].to_pylist()], pa.string()))
    n = len(rows)
    batch = {"status": np.full(n, "ok", dtype=object), "error": np.full(n, "", dtype=object),
             "depth": np.stack([r["depth"] for r in rows]), "seg": np.stack([r["seg"] for r in rows]),
             "dynamic_fraction": np.array([r["dynamic_fraction"] for r in rows], np.float32)}
    carried = carry_columns(table)
    for name, values in encode_batch(batch, spec, "{}").items():
        carried = carried.append_column(name, pa.array(values))
    fixed = {"city": {k: v for k, v in dataclasses.asdict(city.config).items() if k not in ("workers", "static_rgb")},
             "walks": {k: v for k, v in dataclasses.asdict(walks).items() if k != "workers"}}
    name = hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:32]
    folder = os.path.join(output, sc.GT_MAPS)
    write_part(carried, folder, output_schema(carry_columns(manifest(city, [])).schema, spec),
               name=f"part-{name}.parquet")
    write_spec(folder, spec.record({}))


def generate_walks(config: sc.CityConfig, walks: WalkConfig, output: str) -> pa.Table:
    """Render the city's query walks into `output` (rgb/, gt/, gt_maps/, manifest.parquet, walks.json) and return
    the manifest, rows in walk then frame order. Outputs depend only on the configs, not on `workers`."""
    for folder in ("rgb", "gt", sc.GT_MAPS):
        os.makedirs(os.path.join(output, folder), exist_ok=True)
    city = sc.build_city(config)
    planned = plan_walks(city, walks)
    workers = min(walks.workers or os.cpu_count() or 1, len(planned))
    with Progress("walks", len(planned) * walks.frames, "frames") as progress:
        if workers == 1:
            done = (_render_walk(w, output, city, walks) for w in planned)
        else:
            pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(config, walks))
            done = pool.map(_render_walk, planned, [output] * len(planned))
        rows = []
        for walk_rows in done:
            rows += walk_rows
            progress.update(len(walk_rows))
        if workers > 1:
            pool.shutdown()
    table = manifest(city, rows)
    write_manifest(table, os.path.join(output, "manifest.parquet"))
    _write_gt_maps(city, walks, rows, output)
    with open(os.path.join(output, "walks.json"), "w") as f:  # what the walks are (workers change no output)
        json.dump({"city": {k: v for k, v in dataclasses.asdict(config).items() if k != "workers"},
                   "walks": {k: v for k, v in dataclasses.asdict(walks).items() if k != "workers"}}, f, indent=1)
    return table
