"""Writing the synthetic city (docs/DESIGN.md, "Layouts"): each visit's captures rendered and written (rgb/, gt/,
rgb_static/, one part of the ground-truth maps table gt_maps/) by worker processes, then the manifest, the summary
and the config (`generate_city`); the demo's city (`demo_city`)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyarrow as pa
from PIL import Image

from vprlib.console import Progress
from vprlib.data.holicity import holicity_to_refined
from vprlib.data.manifest import write_manifest
from vprlib.demo.city.layout import (
    ADE_NAMES,
    LABELS,
    SPLIT_ORDER,
    STATIC_CLASSES,
    City,
    CityConfig,
    Visit,
    build_city,
    dynamic_objects,
    local_to_geo,
    plan_visits,
)
from vprlib.demo.city.render import Camera, render
from vprlib.maps import carry_columns, output_schema, write_maps, write_spec
from vprlib.spec import MapSpec, to_inverse_metres
from vprlib.storage import join_uri


def write_npz(path: str, arrays: dict[str, np.ndarray], level: int = 1) -> None:
    """Like np.savez_compressed, but byte-reproducible (fixed zip timestamps and permissions) and at a fast zlib
    `level` (9 saves only ~10% here)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=level)


def _captures(city: City, visit: Visit):
    """(image_id, heading, maps) for each heading of a visit; dynamic objects are drawn once per visit."""
    config = city.config
    rng = np.random.default_rng([config.seed, 2, visit.visit_id])
    dynamic = dynamic_objects(config, np.array(visit.position[:2]), rng)
    turns = np.random.default_rng([config.seed, 3, visit.visit_id])  # its own stream: other draws stay as they were
    for h in range(config.headings):
        index = visit.visit_id * config.headings + h
        heading = h * 360.0 / config.headings
        if visit.heading_jitter:  # anywhere in the bin the heading falls in
            heading = math.floor(heading / visit.heading_jitter) * visit.heading_jitter + turns.uniform(
                0, visit.heading_jitter)
        camera = Camera(visit.position, heading, config.pitch, config.fov)
        maps = render(city, camera, visit.appearance, dynamic, config.side, noise_seed=config.seed * 1_000_003 + index,
                      static_rgb=config.static_rgb)
        yield f"{index:06d}", heading, maps


_WORKER_CITY: City | None = None
GT_MAPS = "gt_maps"  # the folder of the city's ground-truth maps table
STATIC_RGB = "rgb_static"  # the folder of the captures without dynamic objects (CityConfig.static_rgb)
VISITS_PER_PART = 16  # visits per worker task, and per part file of the ground-truth maps (128 rows at 8 headings)


def _init_worker(config: CityConfig) -> None:
    global _WORKER_CITY
    _WORKER_CITY = build_city(config)


def gt_spec(config: CityConfig) -> MapSpec:
    """The map specification of the city's ground-truth maps: exact static maps, no model involved."""
    return MapSpec(strategy="ground-truth", models="synthcity", side=config.side)


def _write_visits(part: int, visits: list[Visit], output: str,
                  city: City | None = None) -> tuple[list[dict], np.ndarray]:
    """Render and write the captures of some visits (RGB, ground-truth npz, one part of the ground-truth maps);
    return their manifest rows and pixel counts (5 HoliCity static classes, then 256 observed ADE20K ids)."""
    city = city or _WORKER_CITY
    rows, counts, depth, seg = [], np.zeros(5 + 256, np.int64), [], []
    for visit in visits:
        for image_id, heading, maps in _captures(city, visit):
            for folder in ("rgb", STATIC_RGB) if city.config.static_rgb else ("rgb",):
                Image.fromarray(maps.pop(folder)).save(os.path.join(output, folder, f"{image_id}.png"),
                                                       compress_level=1)
            write_npz(os.path.join(output, "gt", f"{image_id}.npz"), maps)
            counts += np.concatenate([np.bincount(maps["seg"].ravel(), minlength=5),
                                      np.bincount(maps["obs_seg"].ravel(), minlength=256)])
            rows.append({"image_id": image_id, "heading": heading, "visit": visit,
                         "dynamic_fraction": float(maps["dynamic"].mean())})
            depth.append(to_inverse_metres(maps["depth"]))
            seg.append(holicity_to_refined(maps["seg"]))
    _write_gt_part(city, rows, np.stack(depth), np.stack(seg), output, part)
    return rows, counts


def _write_gt_part(city: City, rows: list[dict], depth: np.ndarray, seg: np.ndarray, output: str, part: int) -> None:
    """One part file of the ground-truth maps table: the rows' manifest columns and their exact static maps, under a
    name fixed by the config and the part's number (same config, same files)."""
    spec = gt_spec(city.config)
    manifest = _manifest(city, rows)
    manifest = manifest.set_column(manifest.column_names.index("uri"), "uri",
                                   pa.array([join_uri(output, u) for u in manifest["uri"].to_pylist()], pa.string()))
    n = len(rows)
    batch = {"status": np.full(n, "ok", dtype=object), "error": np.full(n, "", dtype=object), "depth": depth,
             "seg": seg, "dynamic_fraction": np.array([r["dynamic_fraction"] for r in rows], np.float32)}
    # The part is named by what is drawn: neither the processes nor the extra static RGB change these maps.
    fixed = {k: v for k, v in dataclasses.asdict(city.config).items() if k not in ("workers", "static_rgb")}
    name = hashlib.sha256(f"{json.dumps(fixed, sort_keys=True)}:{part}".encode())
    write_maps(batch, carry_columns(manifest), spec, os.path.join(output, GT_MAPS),
               output_schema(carry_columns(_manifest(city, [])).schema, spec),
               name=f"part-{name.hexdigest()[:32]}.parquet")


def _manifest(city: City, rows: list[dict]) -> pa.Table:
    config = city.config
    visits = [r["visit"] for r in rows]
    x, y = np.array([v.position[0] for v in visits]), np.array([v.position[1] for v in visits])
    geo = local_to_geo(config, x, y)
    return pa.table({
        "image_id": pa.array([r["image_id"] for r in rows], pa.string()),
        "uri": pa.array([f"rgb/{r['image_id']}.png" for r in rows], pa.string()),
        "lat": pa.array(geo["lat"], pa.float64()),
        "lon": pa.array(geo["lon"], pa.float64()),
        "heading": pa.array([r["heading"] for r in rows], pa.float64()),
        "pitch": pa.array(np.full(len(rows), config.pitch), pa.float64()),
        "utm_east": pa.array(geo["utm_east"], pa.float64()),
        "utm_north": pa.array(geo["utm_north"], pa.float64()),
        "utm_zone": pa.array(geo["utm_zone"], pa.int32()),
        "place_id": pa.array([v.place_id for v in visits], pa.int32()),
        "visit_id": pa.array([v.visit_id for v in visits], pa.int32()),
        "split": pa.array([v.split for v in visits], pa.string()),
        "time_of_day": pa.array([v.appearance.time_of_day for v in visits], pa.string()),
        "season": pa.array([v.appearance.season for v in visits], pa.string()),
        "dynamic_fraction": pa.array([r["dynamic_fraction"] for r in rows], pa.float64()),
        "gt_uri": pa.array([f"gt/{r['image_id']}.npz" for r in rows], pa.string()),
    })


def resolve_workers(config: CityConfig) -> int:
    return config.workers or os.cpu_count() or 1


def generate_city(config: CityConfig, output: str) -> pa.Table:
    """Render every capture of the city into `output` (rgb/, gt/, gt_maps/, manifest.parquet, summary.json,
    config.json; rgb_static/ with `config.static_rgb`) and return the manifest. Outputs depend only on the config
    (not on `workers`): same config, same bytes."""
    for folder in ("rgb", "gt", GT_MAPS) + ((STATIC_RGB,) if config.static_rgb else ()):
        os.makedirs(os.path.join(output, folder), exist_ok=True)
    city = build_city(config)
    visits = plan_visits(city)
    parts = [visits[i : i + VISITS_PER_PART] for i in range(0, len(visits), VISITS_PER_PART)]
    workers = min(resolve_workers(config), len(parts))
    with Progress("city", len(visits) * config.headings, "captures") as progress:
        if workers == 1:
            results = [_counted(progress, _write_visits(i, part, output, city)) for i, part in enumerate(parts)]
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(config,)) as pool:
                done = pool.map(_write_visits, range(len(parts)), parts, [output] * len(parts))
                results = [_counted(progress, result) for result in done]
    rows = [row for visit_rows, _ in results for row in visit_rows]
    counts = sum(c for _, c in results)
    table = _manifest(city, rows)
    write_manifest(table, os.path.join(output, "manifest.parquet"))
    write_spec(os.path.join(output, GT_MAPS), gt_spec(config).record({}))
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump(summarize(table, counts), f, indent=1, sort_keys=True)
    with open(os.path.join(output, "config.json"), "w") as f:  # what the city is (workers change no output)
        json.dump({k: v for k, v in dataclasses.asdict(config).items() if k != "workers"}, f, indent=1)
    return table


def _counted(progress: Progress, result: tuple[list[dict], np.ndarray]) -> tuple[list[dict], np.ndarray]:
    """A part's result, its captures counted on the progress line."""
    progress.update(len(result[0]))
    return result


DEMO_CITY = {"dense_train": 6}  # the demo's city: the default city with 6 visits per train place (CosPlace's classes)


def demo_city(output: str) -> str:
    """The demo's city in `output` (make demo, make table and make demo-models share it), made unless a city of the
    same config is there; returns `output`."""
    config = CityConfig(**DEMO_CITY)
    try:
        with open(os.path.join(output, "config.json")) as f:
            there = json.load(f)
    except (FileNotFoundError, ValueError):
        there = None
    wanted = {k: v for k, v in dataclasses.asdict(config).items() if k != "workers"}
    if there is not None:  # a city written before a field existed has that field's default: the same city
        defaults = dataclasses.asdict(CityConfig())
        there = {**{k: defaults[k] for k in wanted if k not in there}, **there}
    if there != wanted or not os.path.exists(os.path.join(output, "manifest.parquet")):
        print(f"making the synthetic city in {output}", flush=True)
        generate_city(config, output)
    return output


def summarize(table: pa.Table, counts: np.ndarray) -> dict:
    """Captures, places, per-split counts, class pixel shares (static HoliCity, observed ADE20K), dynamic share."""
    splits = table["split"].to_pylist()
    static, observed = counts[:5], counts[5:]
    dynamic = observed[[ade for holicity, ade in LABELS.values() if holicity < 0]].sum()
    return {
        "captures": table.num_rows,
        "places": len(set(table["place_id"].to_pylist())),
        "splits": {s: splits.count(s) for s in SPLIT_ORDER if s in splits},
        "static_class_shares": {n: round(float(static[i] / static.sum()), 4) for i, n in enumerate(STATIC_CLASSES)},
        "observed_class_shares": {n: round(float(observed[i] / observed.sum()), 4) for i, n in ADE_NAMES.items()},
        "dynamic_share": round(float(dynamic / observed.sum()), 4),
    }
