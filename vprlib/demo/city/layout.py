"""The embedded synthetic city (docs/DESIGN.md, "Layouts").

A procedural, seeded street grid in the spirit of HoliCity (Zhou et al., 2021, arXiv:2008.03286), the dataset whose
CAD-model depth and segmentation the paper (Semenkov et al., IEEE Access 2024, sections III-A and IV-A) uses as
ground truth: box buildings, trees (cylinder trunk, ellipsoid crown), road, sidewalk and grass ground, sky. Every
visit (a camera stop seen in 8 headings, like a HoliCity panorama) draws new dynamic objects (cars, buses, trucks,
people, bicycles) and an appearance (time of day, season); each capture yields the RGB image, the static ground
truth (depth in metres, HoliCity's 5 classes) and the observed maps (ADE20K ids with the dynamic objects, depth,
dynamic mask).

Conventions: local metres x east, y north, z up, in UTM grid axes around a fixed origin (so local offsets are UTM
offsets; lat/lon come from the inverse transverse Mercator). Heading is degrees clockwise from grid north. Depth is
planar (along the optical axis), 0 where the ray meets the sky. Rendering is analytic ray casting in numpy: each
visible primitive is intersected with the rays of its screen rectangle only, nearest first, skipped when what is
already drawn there is nearer than its nearest point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from vprlib.console import Progress
from vprlib.data.holicity import HOLICITY_CLASSES, holicity_to_refined
from vprlib.data.manifest import join_uri, write_manifest
from vprlib.maps import carry_columns, encode_batch, output_schema, write_part, write_spec
from vprlib.spec import MapSpec, to_inverse_metres

# name -> (HoliCity class, ADE20K 0-based id); HoliCity -1 marks a dynamic object, absent from the static maps.
LABELS = {
    "sky": (0, 2),
    "building": (1, 1),
    "road": (2, 6),
    "sidewalk": (3, 11),
    "grass": (3, 9),
    "trunk": (4, 4),
    "crown": (4, 4),
    "person": (-1, 12),
    "car": (-1, 20),
    "bus": (-1, 80),
    "truck": (-1, 83),
    "bicycle": (-1, 127),
}
LABEL_NAMES = tuple(LABELS)
LABEL = {name: i for i, name in enumerate(LABEL_NAMES)}
HOLICITY_OF_LABEL = np.array([v[0] for v in LABELS.values()], np.int16)
ADE_OF_LABEL = np.array([v[1] for v in LABELS.values()], np.uint8)
STATIC_CLASSES = HOLICITY_CLASSES[:5]  # the static ground truth's labels: HoliCity's, with no "others"
ADE_NAMES = {2: "sky", 1: "building", 6: "road", 11: "sidewalk", 9: "grass", 4: "tree", 12: "person", 20: "car",
             80: "bus", 83: "truck", 127: "bicycle"}

# time of day -> sun elevation, azimuth (degrees), sun colour, ambient colour, sky at zenith, sky at horizon
TIMES_OF_DAY = {
    "morning": (15.0, 100.0, (1.0, 0.86, 0.7), (0.34, 0.37, 0.45), (0.36, 0.55, 0.85), (0.9, 0.82, 0.74)),
    "noon": (58.0, 180.0, (1.0, 0.98, 0.93), (0.42, 0.45, 0.52), (0.22, 0.47, 0.88), (0.72, 0.82, 0.94)),
    "afternoon": (32.0, 235.0, (1.0, 0.93, 0.82), (0.38, 0.4, 0.47), (0.3, 0.52, 0.86), (0.8, 0.84, 0.88)),
    "dusk": (6.0, 290.0, (1.0, 0.58, 0.34), (0.36, 0.32, 0.42), (0.18, 0.22, 0.42), (0.96, 0.56, 0.36)),
}
# season -> tree crown colour, grass colour
SEASONS = {
    "spring": ((0.42, 0.68, 0.28), (0.42, 0.66, 0.3)),
    "summer": ((0.2, 0.44, 0.15), (0.33, 0.54, 0.2)),
    "autumn": ((0.8, 0.45, 0.14), (0.52, 0.5, 0.26)),
    "winter": ((0.42, 0.36, 0.3), (0.86, 0.88, 0.92)),
}
FACADES = ((0.78, 0.7, 0.56), (0.66, 0.36, 0.28), (0.6, 0.6, 0.62), (0.86, 0.85, 0.8), (0.5, 0.4, 0.32),
           (0.84, 0.78, 0.5), (0.45, 0.5, 0.55))
VEHICLES = ((0.75, 0.1, 0.1), (0.1, 0.2, 0.6), (0.9, 0.9, 0.9), (0.1, 0.1, 0.1), (0.55, 0.57, 0.6), (0.9, 0.7, 0.1))
GROUND = {"road": (0.27, 0.27, 0.29), "sidewalk": (0.62, 0.6, 0.57)}
SPLIT_ORDER = ("train", "val", "database", "query")
EPS = 1e-6
BOX, CYLINDER, ELLIPSOID = 0, 1, 2
SKY, GROUND_HIT = -2, -1  # primitive index of a pixel that meets no primitive


@dataclass(frozen=True)
class CityConfig:
    """The synthetic city and its captures; defaults make the demo city (1,536 captures at 128x128)."""

    places: int = 96  # camera places in all; `eval_fraction` of them (east) for database/query, the rest train/val
    side: int = 128  # image side in pixels (square images)
    seed: int = 0  # one seed for layout, captures, dynamic objects and appearance
    eval_fraction: float = 0.5  # share of places in the evaluation area (database and query)
    val_fraction: float = 0.2  # share of the training area's places held out as `val`
    train_visits: int = 2  # visits per train/val place, each with its own appearance and dynamic objects
    dense_train: int = 0  # >0: visits per train place instead, spread over its class (below): CosPlace training data
    cell_m: float = 10.0  # dense train visits stay in their place's cell of cell_m x cell_m UTM metres (CosPlace M)
    heading_bin: float = 30.0  # and jitter their headings within heading_bin degree bins (CosPlace alpha)
    query_visits: int = 1  # query visits per evaluation place (plus one database visit)
    same_look_queries: int = 0  # of those, how many repeat the database visit's look (time of day and season; new
    # dynamic objects and jitter): the appearance study's "same appearance" queries. The others' looks all differ.
    headings: int = 8  # views per visit, 360/headings degrees apart (HoliCity cuts panoramas into 8)
    place_spacing: float = 10.0  # metres between places along a street
    area_gap: float = 60.0  # minimum metres between the training and evaluation areas (well over 25 m)
    jitter: float = 2.0  # metres of camera position jitter per visit (uniform in a disc)
    camera_height: float = 2.2  # metres; +-0.2 per visit (eye level)
    pitch: float = 0.0  # degrees, positive looks up
    fov: float = 90.0  # horizontal field of view, degrees
    block_size: float = 48.0  # metres of a square block between sidewalks
    road_width: float = 10.0  # metres, kerb to kerb
    sidewalk_width: float = 3.0  # metres, each side
    dynamic_density: float = 1.0  # multiplies the expected number of dynamic objects around a camera
    max_distance: float = 250.0  # metres; primitives farther from the camera are not drawn
    origin_lat: float = 51.5072  # the city's origin (local 0, 0): central London, like HoliCity
    origin_lon: float = -0.1276
    workers: int = 0  # processes; 0 means one per CPU
    static_rgb: bool = False  # also write rgb_static/<id>.png: each capture without its dynamic objects (inpainting
    # targets); the other outputs stay as they are

    def __post_init__(self):
        looks = len(TIMES_OF_DAY) * len(SEASONS)
        rules = {  # field: (holds, the rule as a user reads it)
            "places": (self.places >= 2, ">= 2: half train/val, half database/query"),
            "side": (self.side >= 8, ">= 8"), "headings": (self.headings >= 1, ">= 1"),
            "eval_fraction": (0.0 < self.eval_fraction < 1.0, "in (0, 1)"),
            "val_fraction": (0.0 <= self.val_fraction < 1.0, "in [0, 1)"),
            "train_visits": (1 <= self.train_visits <= looks, f"in [1, {looks}]: one appearance each"),
            "query_visits": (1 <= self.query_visits <= 15, "in [1, 15]"),
            "same_look_queries": (0 <= self.same_look_queries <= self.query_visits, "in [0, query_visits]"),
            "place_spacing": (self.place_spacing > 0, "> 0"),
            "jitter": (0 <= self.jitter <= self.road_width / 4, f"in [0, {self.road_width / 4:g}] (road width / 4)"),
            "fov": (10.0 <= self.fov <= 150.0, "in [10, 150]"), "pitch": (-60.0 <= self.pitch <= 60.0, "in [-60, 60]"),
            "camera_height": (0.5 <= self.camera_height <= 10.0, "in [0.5, 10]"),
            "workers": (self.workers >= 0, ">= 0"), "dynamic_density": (self.dynamic_density >= 0, ">= 0"),
            "max_distance": (self.max_distance > 0, "> 0"), "dense_train": (0 <= self.dense_train <= 64, "in [0, 64]"),
            "cell_m": (self.cell_m > 0, "> 0"), "heading_bin": (0 < self.heading_bin <= 360, "in (0, 360]"),
        }
        bad = [f"{name} (must be {rule}, got {getattr(self, name)})" for name, (ok, rule) in rules.items() if not ok]
        if bad:
            raise ValueError(f"CityConfig: invalid value for {'; '.join(bad)}")

    @property
    def pitch_m(self) -> float:
        """Metres between parallel street centre lines."""
        return self.block_size + self.road_width + 2 * self.sidewalk_width


# ----------------------------------------------------------------------------------------------- UTM and WGS84
_A, _F, _K0 = 6378137.0, 1 / 298.257223563, 0.9996
_N = _F / (2 - _F)
_AA = _A / (1 + _N) * (1 + _N**2 / 4 + _N**4 / 64)
_ALPHA = (_N / 2 - 2 * _N**2 / 3 + 5 * _N**3 / 16, 13 * _N**2 / 48 - 3 * _N**3 / 5, 61 * _N**3 / 240)
_BETA = (_N / 2 - 2 * _N**2 / 3 + 37 * _N**3 / 96, _N**2 / 48 + _N**3 / 15, 17 * _N**3 / 480)
_DELTA = (2 * _N - 2 * _N**2 / 3 - 2 * _N**3, 7 * _N**2 / 3 - 8 * _N**3 / 5, 56 * _N**3 / 15)


def utm_zone(lon: float) -> int:
    return int((lon + 180.0) // 6.0) % 60 + 1


def latlon_to_utm(lat, lon, zone: int | None = None):
    """WGS84 degrees -> (easting, northing, zone) by Krueger's series (mm accuracy within a zone)."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    zone = utm_zone(float(np.mean(lon))) if zone is None else zone
    phi, lam = np.radians(lat), np.radians(lon - (zone * 6 - 183))
    c = 2 * math.sqrt(_N) / (1 + _N)
    t = np.sinh(np.arctanh(np.sin(phi)) - c * np.arctanh(c * np.sin(phi)))
    xi, eta = np.arctan2(t, np.cos(lam)), np.arctanh(np.sin(lam) / np.sqrt(1 + t * t))
    east, north = eta.copy(), xi.copy()
    for j, a in enumerate(_ALPHA, start=1):
        east += a * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
        north += a * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
    false_north = np.where(lat < 0, 10_000_000.0, 0.0)
    return 500_000.0 + _K0 * _AA * east, false_north + _K0 * _AA * north, zone


def utm_to_latlon(east, north, zone: int, southern: bool = False):
    """(easting, northing) in a UTM zone -> WGS84 (lat, lon) degrees, the inverse of `latlon_to_utm`."""
    xi = (np.asarray(north, np.float64) - (10_000_000.0 if southern else 0.0)) / (_K0 * _AA)
    eta = (np.asarray(east, np.float64) - 500_000.0) / (_K0 * _AA)
    xi_p, eta_p = xi.copy(), eta.copy()
    for j, b in enumerate(_BETA, start=1):
        xi_p -= b * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        eta_p -= b * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
    chi = np.arcsin(np.sin(xi_p) / np.cosh(eta_p))
    phi = chi.copy()
    for j, d in enumerate(_DELTA, start=1):
        phi += d * np.sin(2 * j * chi)
    lon = (zone * 6 - 183) + np.degrees(np.arctan2(np.sinh(eta_p), np.cos(xi_p)))
    return np.degrees(phi), lon


def local_to_geo(config: CityConfig, x, y) -> dict[str, np.ndarray]:
    """Local metres (UTM grid axes around the origin) -> lat, lon, utm_east, utm_north, utm_zone."""
    east0, north0, zone = latlon_to_utm(config.origin_lat, config.origin_lon)
    east, north = east0 + np.asarray(x, np.float64), north0 + np.asarray(y, np.float64)
    lat, lon = utm_to_latlon(east, north, zone, southern=config.origin_lat < 0)
    return {"lat": lat, "lon": lon, "utm_east": east, "utm_north": north, "utm_zone": np.full(np.shape(east), zone)}


def geo_to_local(config: CityConfig, lat, lon) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 degrees -> local metres, the inverse of `local_to_geo`."""
    east0, north0, zone = latlon_to_utm(config.origin_lat, config.origin_lon)
    east, north, _ = latlon_to_utm(lat, lon, zone)
    return east - east0, north - north0


# ----------------------------------------------------------------------------------------------- primitives
@dataclass
class Primitives:
    """Boxes, vertical cylinders and vertical ellipsoids. `params` per kind: box (x0, y0, z0, x1, y1, z1);
    cylinder (cx, cy, radius, z0, z1, 0); ellipsoid (cx, cy, cz, horizontal radius, vertical radius, 0)."""

    kind: np.ndarray  # K int8
    params: np.ndarray  # K,6 float64
    label: np.ndarray  # K uint8, index into LABEL_NAMES
    colour: np.ndarray  # K,3 float32 in [0, 1] (a brightness multiplier for tree crowns, whose hue is seasonal)

    def __len__(self) -> int:
        return len(self.kind)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding boxes, K,3 low and high corners."""
        p, lo, hi = self.params, self.params[:, :3].copy(), self.params[:, 3:].copy()
        cyl, ell = self.kind == CYLINDER, self.kind == ELLIPSOID
        r = p[cyl, 2]
        lo[cyl] = np.stack([p[cyl, 0] - r, p[cyl, 1] - r, p[cyl, 3]], 1)
        hi[cyl] = np.stack([p[cyl, 0] + r, p[cyl, 1] + r, p[cyl, 4]], 1)
        rad = np.stack([p[ell, 3], p[ell, 3], p[ell, 4]], 1)
        lo[ell], hi[ell] = p[ell, :3] - rad, p[ell, :3] + rad
        return lo, hi

    @staticmethod
    def concat(parts: list[Primitives]) -> Primitives:
        return Primitives(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("kind", "params", "label",
                                                                                     "colour")))


class _Builder:
    """Collects primitives one by one, then packs them into `Primitives`."""

    def __init__(self):
        self.rows: list[tuple[int, tuple, int, tuple]] = []

    def box(self, lo, hi, label: str, colour) -> None:
        self.rows.append((BOX, (*lo, *hi), LABEL[label], colour))

    def cylinder(self, cx, cy, r, z0, z1, label: str, colour) -> None:
        self.rows.append((CYLINDER, (cx, cy, r, z0, z1, 0.0), LABEL[label], colour))

    def ellipsoid(self, cx, cy, cz, rxy, rz, label: str, colour) -> None:
        self.rows.append((ELLIPSOID, (cx, cy, cz, rxy, rz, 0.0), LABEL[label], colour))

    def build(self) -> Primitives:
        if not self.rows:
            empty = np.zeros((0, 6))
            return Primitives(np.zeros(0, np.int8), empty, np.zeros(0, np.uint8), np.zeros((0, 3), np.float32))
        kind, params, label, colour = zip(*self.rows, strict=True)
        return Primitives(np.array(kind, np.int8), np.array(params, np.float64), np.array(label, np.uint8),
                          np.clip(np.array(colour, np.float32), 0, 1.5))


# ----------------------------------------------------------------------------------------------- the city
@dataclass
class City:
    """A built city: the street grid (streets at multiples of `config.pitch_m` on both axes, from -1 to nx+1 and
    ny+1, the outer ring for scenery only), its static primitives and its camera places."""

    config: CityConfig
    nx: int
    ny: int
    static: Primitives
    places: np.ndarray  # P,2 local metres, on street centre lines
    place_area: np.ndarray  # P str: "train", "val" or "eval"


def _street_places(config: CityConfig, nx: int, ny: int) -> np.ndarray:
    """Every `place_spacing` metres along the centre lines of the inner streets, intersections counted once."""
    pm, s = config.pitch_m, config.place_spacing
    along_x = np.arange(s / 2, nx * pm, s)
    along_y = np.arange(s / 2, ny * pm, s)
    away = np.abs(along_y - np.round(along_y / pm) * pm) >= config.road_width / 2
    xs = [np.stack([along_x, np.full_like(along_x, j * pm)], 1) for j in range(ny + 1)]
    ys = [np.stack([np.full(away.sum(), i * pm), along_y[away]], 1) for i in range(nx + 1)]
    places = np.concatenate(xs + ys)
    return places[np.lexsort((places[:, 1], places[:, 0]))]


def _split_areas(config: CityConfig, places: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The west places for train/val and the east ones for database/query, or None when the gap is too small."""
    n_eval = max(1, round(config.places * config.eval_fraction))
    n_train = config.places - n_eval
    if n_train < 1 or len(places) < config.places:
        return None
    train, evaluation = places[:n_train], places[len(places) - n_eval:]
    if evaluation[:, 0].min() - train[:, 0].max() < config.area_gap:
        return None
    n_val = round(n_train * config.val_fraction)
    area = np.array(["train"] * (n_train - n_val) + ["val"] * n_val + ["eval"] * n_eval)
    return np.concatenate([train, evaluation]), area


def build_city(config: CityConfig) -> City:
    """The smallest grid (nx blocks east, about nx/2 north) whose streets hold the places with the area gap."""
    for nx in range(1, 1000):
        ny = max(1, math.ceil(nx / 2))
        split = _split_areas(config, _street_places(config, nx, ny))
        if split is not None:
            break
    else:
        raise ValueError(f"CityConfig: cannot fit {config.places} places")
    rng = np.random.default_rng([config.seed, 0])
    builder = _Builder()
    for bx in range(-1, nx + 1):
        for by in range(-1, ny + 1):
            _block(builder, config, bx, by, rng)
    _street_trees(builder, config, nx, ny, rng)
    return City(config, nx, ny, builder.build(), split[0], split[1])


def _block(builder: _Builder, config: CityConfig, bx: int, by: int, rng: np.random.Generator) -> None:
    """Buildings on 2 rows of 2-3 lots, a few lots (or the whole block, a park) left to grass and trees."""
    half = config.road_width / 2 + config.sidewalk_width
    x0, y0 = bx * config.pitch_m + half, by * config.pitch_m + half
    size = config.block_size
    if rng.random() < 0.08:
        for _ in range(rng.integers(4, 9)):
            _tree(builder, x0 + rng.uniform(3, size - 3), y0 + rng.uniform(3, size - 3), rng)
        return
    cuts_x = np.sort(np.concatenate([[0, size], rng.uniform(0.25, 0.75, rng.integers(1, 3)) * size]))
    cut_y = size * rng.uniform(0.4, 0.6)
    for (a, b) in zip(cuts_x[:-1], cuts_x[1:], strict=True):
        for (c, d) in ((0.0, cut_y), (cut_y, size)):
            if rng.random() < 0.08 or b - a < 6:
                _tree(builder, x0 + (a + b) / 2, y0 + (c + d) / 2, rng)
                continue
            inset = rng.uniform(0.0, 1.5, 4)
            lo = (x0 + a + inset[0], y0 + c + inset[1], 0.0)
            hi = (x0 + b - inset[2], y0 + d - inset[3], float(np.clip(rng.gamma(3.0, 5.0) + 5.0, 6.0, 48.0)))
            colour = np.array(FACADES[rng.integers(len(FACADES))]) * rng.uniform(0.85, 1.1)
            builder.box(lo, hi, "building", colour)


def _tree(builder: _Builder, x: float, y: float, rng: np.random.Generator) -> None:
    """A cylinder trunk and an ellipsoid crown that starts above head height."""
    height, rxy, rz = rng.uniform(2.6, 3.6), rng.uniform(1.4, 2.4), rng.uniform(1.8, 3.0)
    builder.cylinder(x, y, rng.uniform(0.15, 0.25), 0.0, height + rz * 0.5, "trunk", (0.33, 0.24, 0.17))
    builder.ellipsoid(x, y, height + rz * 0.7, rxy, rz, "crown", (rng.uniform(0.8, 1.15),) * 3)


def _street_trees(builder: _Builder, config: CityConfig, nx: int, ny: int, rng: np.random.Generator) -> None:
    """Trees every ~9 m along both kerbs of every street, some missing, none in intersections."""
    pm, half = config.pitch_m, config.road_width / 2 + config.sidewalk_width
    offset = config.road_width / 2 + 0.7
    for axis, n_streets, length in ((0, ny, nx), (1, nx, ny)):
        along = np.arange(-pm, (length + 1) * pm, 9.0)
        along = along[np.abs(along - np.round(along / pm) * pm) > half + 1.0]
        for street in range(-1, n_streets + 2):
            for side in (-offset, offset):
                for a in along[rng.random(len(along)) < 0.5]:
                    across = street * pm + side
                    _tree(builder, *((a, across) if axis == 0 else (across, a)), rng)


def ground_labels(config: CityConfig, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label index (road, sidewalk or grass) of ground points and whether a dashed centre line is painted there."""
    pm = config.pitch_m
    dx = np.abs(x - np.round(x / pm) * pm)  # distance to the nearest street centre line along x = i * pm
    dy = np.abs(y - np.round(y / pm) * pm)
    near = np.minimum(dx, dy)
    half_road, kerb = config.road_width / 2, config.road_width / 2 + config.sidewalk_width
    label = np.full(x.shape, LABEL["grass"], np.uint8)
    label[near < kerb] = LABEL["sidewalk"]
    label[near < half_road] = LABEL["road"]
    paint = ((dx < 0.12) & (dy > kerb) & (np.mod(y, 6.0) < 3.0)) | ((dy < 0.12) & (dx > kerb) & (np.mod(x, 6.0) < 3.0))
    return label, paint


# ----------------------------------------------------------------------------------------------- captures
@dataclass(frozen=True)
class Camera:
    """A pinhole camera at `position` (local metres), heading clockwise from north, pitch up, horizontal fov."""

    position: tuple[float, float, float]
    heading: float = 0.0
    pitch: float = 0.0
    fov: float = 90.0

    def basis(self) -> np.ndarray:
        """Rows right, up, forward (unit vectors in local metres)."""
        h, p = math.radians(self.heading), math.radians(self.pitch)
        forward = np.array([math.sin(h) * math.cos(p), math.cos(h) * math.cos(p), math.sin(p)])
        right = np.array([math.cos(h), -math.sin(h), 0.0])
        return np.stack([right, np.cross(right, forward), forward])

    def rays(self, height: int, width: int) -> np.ndarray:
        """H,W,3 ray directions through pixel centres, scaled so the forward component is 1 (t = planar depth)."""
        tan_x = math.tan(math.radians(self.fov) / 2)
        tan_y = tan_x * height / width
        u = ((np.arange(width) + 0.5) / width * 2 - 1) * tan_x
        v = (1 - (np.arange(height) + 0.5) / height * 2) * tan_y
        right, up, forward = self.basis()
        return forward + u[None, :, None] * right + v[:, None, None] * up


@dataclass(frozen=True)
class Appearance:
    time_of_day: str = "noon"
    season: str = "summer"


@dataclass(frozen=True)
class Visit:
    """One camera stop: `headings` captures with one appearance and one set of dynamic objects."""

    visit_id: int
    place_id: int
    split: str
    position: tuple[float, float, float]
    appearance: Appearance
    heading_jitter: float = 0.0  # >0: each heading drawn within its bin of this many degrees (dense train visits)


def plan_visits(city: City) -> list[Visit]:
    """train/val places visited `train_visits` times (train places `dense_train` times, when set); evaluation places
    once as database, then as query; each visit with its own jitter and (time of day, season), distinct while there
    are enough of them."""
    config = city.config
    rng = np.random.default_rng([config.seed, 1])
    looks = [Appearance(t, s) for t in TIMES_OF_DAY for s in SEASONS]
    visits: list[tuple[str, int, Appearance]] = []
    for place_id, area in enumerate(city.place_area):
        area = str(area)
        count = 1 + config.query_visits if area == "eval" else config.train_visits
        if area == "train" and config.dense_train:
            count = config.dense_train
        chosen = rng.choice(len(looks), size=count, replace=count > len(looks))
        splits = [area] * count if area != "eval" else ["database"] + ["query"] * config.query_visits
        if area == "eval" and config.same_look_queries:  # no draw more or less: the rest of the plan is unchanged
            chosen[1 : 1 + config.same_look_queries] = chosen[0]
        visits += [(split, place_id, looks[i]) for split, i in zip(splits, chosen, strict=True)]
    visits.sort(key=lambda v: SPLIT_ORDER.index(v[0]))  # stable: place order within a split
    planned = []
    for visit_id, (split, place_id, look) in enumerate(visits):
        dense = split == "train" and config.dense_train > 0
        x, y = _in_cell(city, place_id, rng) if dense else _jittered(city, place_id, rng)
        z = config.camera_height + rng.uniform(-0.2, 0.2)
        planned.append(Visit(visit_id, place_id, split, (float(x), float(y), float(z)), look,
                             heading_jitter=config.heading_bin if dense else 0.0))
    return planned


def _jittered(city: City, place_id: int, rng: np.random.Generator) -> np.ndarray:
    """A place's position moved uniformly within a disc of `jitter` metres."""
    radius, angle = city.config.jitter * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    return city.places[place_id] + radius * np.array([math.cos(angle), math.sin(angle)])


def _in_cell(city: City, place_id: int, rng: np.random.Generator) -> np.ndarray:
    """A position drawn uniformly within the place's `cell_m` UTM cell, and within a metre of the lane edge of the
    road around the place (never on a sidewalk or in a building): a CosPlace class's images spread over its cell."""
    config = city.config
    east0, north0, _ = latlon_to_utm(config.origin_lat, config.origin_lon)
    place = city.places[place_id]
    reach = config.road_width / 2 - 1.0
    drawn = []
    for origin, value in zip((east0, north0), place, strict=True):
        cell = math.floor((origin + value) / config.cell_m) * config.cell_m - origin  # the cell's start, local
        low, high = max(cell, value - reach), min(cell + config.cell_m, value + reach)
        drawn.append(rng.uniform(low, high))
    return np.array(drawn)


def dynamic_objects(config: CityConfig, camera_xy, rng: np.random.Generator, radius: float = 32.0) -> Primitives:
    """Vehicles in lanes, bicycles at the kerb, people on sidewalks, within `radius` of the camera, kept 4 m clear
    of it and of one another. Expected counts scale with `config.dynamic_density`."""
    builder, taken = _Builder(), []
    rates = {"bus": 1.5, "truck": 1.5, "car": 24.0, "bicycle": 5.0, "person": 30.0}  # big ones first: fewer clashes
    for kind, rate in rates.items():
        for _ in range(rng.poisson(rate * config.dynamic_density)):
            along, across, axis = _street_spot(config, camera_xy, kind, rng, radius)
            length, width = {"car": (4.5, 1.85), "bus": (11.5, 2.55), "truck": (7.5, 2.45), "bicycle": (1.75, 0.5),
                             "person": (0.6, 0.6)}[kind]
            lo = np.array([along - length / 2, across - width / 2])
            hi = np.array([along + length / 2, across + width / 2])
            lo, hi = (lo, hi) if axis == 0 else (lo[::-1], hi[::-1])
            if _near_rect(camera_xy, lo, hi, 4.0) or any(_overlap(lo, hi, a, b) for a, b in taken):
                continue
            taken.append((lo, hi))
            _DYNAMIC_MAKERS[kind](builder, lo, hi, axis, rng)
    return builder.build()


def _street_spot(config: CityConfig, camera_xy, kind: str, rng: np.random.Generator, radius: float):
    """(along, across, axis) of a random spot in the lane or on the sidewalk suited to `kind`: on the camera's own
    street 80% of the time (what a street-level camera mostly sees), otherwise on any street within `radius`."""
    pm, half = config.pitch_m, config.road_width / 2
    offset = np.abs(camera_xy - np.round(camera_xy / pm) * pm)
    own_axis = int(offset[0] < offset[1])  # 1: the camera stands on a street along y (x near a centre line)
    axis = own_axis if rng.random() < 0.8 else int(rng.integers(2))
    along_c, across_c = (camera_xy[0], camera_xy[1]) if axis == 0 else (camera_xy[1], camera_xy[0])
    if axis == own_axis:
        street = float(np.round(across_c / pm) * pm)
    else:
        streets = np.arange(math.floor((across_c - radius) / pm), math.floor((across_c + radius) / pm) + 1) * pm
        street = float(streets[rng.integers(len(streets))])
    side = 1.0 if rng.random() < 0.5 else -1.0
    lanes = {"car": rng.choice([half / 2, half - 1.1]), "bus": half / 2, "truck": half / 2,
             "bicycle": half - 0.5, "person": half + rng.uniform(1.2, config.sidewalk_width - 0.4)}
    return along_c + rng.uniform(-radius, radius), street + side * float(lanes[kind]), axis


def _near_rect(point, lo, hi, margin: float) -> bool:
    return bool(np.all(point > lo - margin) and np.all(point < hi + margin))


def _overlap(lo, hi, lo2, hi2) -> bool:
    return bool(np.all(lo < hi2 + 0.3) and np.all(lo2 < hi + 0.3))


def _car(builder: _Builder, lo, hi, axis: int, rng: np.random.Generator) -> None:
    colour = np.array(VEHICLES[rng.integers(len(VEHICLES))])
    builder.box((*lo, 0.2), (*hi, rng.uniform(0.95, 1.1)), "car", colour)
    shrink = np.array([0.22, 0.08]) if axis == 0 else np.array([0.08, 0.22])
    span = hi - lo
    builder.box((*(lo + span * shrink), 1.0), (*(hi - span * shrink), rng.uniform(1.45, 1.6)), "car", colour * 0.8)


def _bus(builder: _Builder, lo, hi, axis: int, rng: np.random.Generator) -> None:
    colour = ((0.8, 0.1, 0.1), (0.15, 0.3, 0.7), (0.9, 0.9, 0.88))[rng.integers(3)]
    builder.box((*lo, 0.3), (*hi, rng.uniform(3.0, 3.4)), "bus", colour)


def _truck(builder: _Builder, lo, hi, axis: int, rng: np.random.Generator) -> None:
    """A cab and a taller cargo box, the cab at a random end."""
    a = axis
    cut = lo[a] + 2.3 if rng.random() < 0.5 else hi[a] - 2.3
    cab_lo, cab_hi, cargo_lo, cargo_hi = lo.copy(), hi.copy(), lo.copy(), hi.copy()
    if cut - lo[a] < 3:
        cab_hi[a], cargo_lo[a] = cut, cut + 0.2
    else:
        cab_lo[a], cargo_hi[a] = cut, cut - 0.2
    builder.box((*cab_lo, 0.4), (*cab_hi, 2.7), "truck", VEHICLES[rng.integers(len(VEHICLES))])
    builder.box((*cargo_lo, 0.5), (*cargo_hi, rng.uniform(3.2, 3.7)), "truck", (0.85, 0.85, 0.82))


def _person(builder: _Builder, lo, hi, axis: int, rng: np.random.Generator, z0: float = 0.0) -> None:
    cx, cy = (lo + hi) / 2
    body, head = rng.uniform(1.2, 1.45), rng.uniform(0.11, 0.13)
    clothes = rng.uniform(0.05, 0.8, 3)
    builder.cylinder(cx, cy, rng.uniform(0.2, 0.27), z0, z0 + body, "person", clothes)
    builder.ellipsoid(cx, cy, z0 + body + head, head, head * 1.15, "person", (0.85, 0.66, 0.52))


def _bicycle(builder: _Builder, lo, hi, axis: int, rng: np.random.Generator) -> None:
    """A thin frame box, ridden half the time."""
    centre = (lo + hi) / 2
    frame_lo, frame_hi = lo.copy(), hi.copy()
    frame_lo[1 - axis], frame_hi[1 - axis] = centre[1 - axis] - 0.06, centre[1 - axis] + 0.06
    builder.box((*frame_lo, 0.05), (*frame_hi, 1.0), "bicycle", (0.1, 0.1, 0.12))
    if rng.random() < 0.5:
        _person(builder, centre - 0.1, centre + 0.1, axis, rng, z0=0.85)


_DYNAMIC_MAKERS = {"car": _car, "bus": _bus, "truck": _truck, "person": _person, "bicycle": _bicycle}


# ----------------------------------------------------------------------------------------------- ray casting
# Rays and their reciprocals travel as lists of three H,W arrays (x, y, z), so each primitive test works on plain 2-D
# slices of its screen rectangle.
def _hit_box(p, o, d, inv):
    """Slab test: t where the rays enter the box (inf on a miss)."""
    near, far = -np.inf, np.inf
    with np.errstate(invalid="ignore"):
        for i in range(3):
            t1, t2 = (p[i] - o[i]) * inv[i], (p[i + 3] - o[i]) * inv[i]
            near, far = np.maximum(near, np.minimum(t1, t2)), np.minimum(far, np.maximum(t1, t2))
    return np.where((near <= far) & (near > EPS), near, np.inf)


def _hit_cylinder(p, o, d, inv):
    """Vertical cylinder: the side wall between z0 and z1, and the top disc when seen from above."""
    cx, cy, r, z0, z1 = p[:5]
    ox, oy = o[0] - cx, o[1] - cy
    a, b, c = d[0] * d[0] + d[1] * d[1], ox * d[0] + oy * d[1], ox * ox + oy * oy - r * r
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / a
        z = o[2] + t * d[2]
        t = np.where((disc >= 0) & (t > EPS) & (z >= z0) & (z <= z1), t, np.inf)
    if o[2] > z1:
        tc = (z1 - o[2]) * inv[2]
        cap = (tc > EPS) & ((ox + tc * d[0]) ** 2 + (oy + tc * d[1]) ** 2 <= r * r) & (tc < t)
        t = np.where(cap, tc, t)
    return t


def _hit_ellipsoid(p, o, d, inv):
    """Ellipsoid with a vertical axis: a unit sphere once space is divided by its radii."""
    rxy, rz = p[3], p[4]
    ox, oy, oz = (o[0] - p[0]) / rxy, (o[1] - p[1]) / rxy, (o[2] - p[2]) / rz
    a = (d[0] * d[0] + d[1] * d[1]) / (rxy * rxy) + d[2] * d[2] / (rz * rz)
    b = (d[0] * ox + d[1] * oy) / rxy + d[2] * (oz / rz)
    disc = b * b - a * (ox * ox + oy * oy + oz * oz - 1.0)
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0) & (t > EPS), t, np.inf)


_HITS = {BOX: _hit_box, CYLINDER: _hit_cylinder, ELLIPSOID: _hit_ellipsoid}


def _screen_rects(prims: Primitives, camera: Camera, side: int, max_distance: float):
    """Indices of the primitives in view (nearest first), their pixel rectangles and nearest planar depths."""
    lo, hi = prims.bounds()
    origin = np.asarray(camera.position)
    centre, radius = (lo + hi) / 2, np.linalg.norm(hi - lo, axis=1) / 2
    basis = camera.basis()
    near_enough = np.linalg.norm(centre - origin, axis=1) < max_distance + radius
    in_front = (centre - origin) @ basis[2] > -radius
    index = np.flatnonzero(near_enough & in_front)
    corners = np.stack([np.where(np.array(bits, bool), hi[index], lo[index]) for bits in np.ndindex(2, 2, 2)], 1)
    cam = (corners - origin) @ basis.T  # K,8,3: right, up, forward
    depth = cam[..., 2]
    tan_x = math.tan(math.radians(camera.fov) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        col = (cam[..., 0] / depth / tan_x + 1) * side / 2 - 0.5
        row = (1 - cam[..., 1] / depth / tan_x) * side / 2 - 0.5
    rects = np.stack([np.floor(row.min(1)), np.ceil(row.max(1)) + 1, np.floor(col.min(1)), np.ceil(col.max(1)) + 1], 1)
    rects[(depth < 0.05).any(1)] = (0, side, 0, side)  # partly behind the camera: its projection is unbounded
    rects = np.clip(np.nan_to_num(rects), 0, side).astype(int)
    keep = (rects[:, 0] < rects[:, 1]) & (rects[:, 2] < rects[:, 3]) & (depth > 0.05).any(1)
    z_near = np.maximum(depth.min(1), 0.0)
    order = np.argsort(z_near[keep], kind="stable")
    return index[keep][order], rects[keep][order], z_near[keep][order]


def _trace(prims: Primitives, offset: int, camera: Camera, d, inv, t_buf, prim_buf, max_distance: float) -> None:
    """Draw `prims` into the depth and primitive-index buffers, nearest first, each on its screen rectangle only."""
    origin = camera.position
    index, rects, z_near = _screen_rects(prims, camera, t_buf.shape[0], max_distance)
    params, kinds = prims.params[index].tolist(), prims.kind[index].tolist()
    for k, p, kind, (r0, r1, c0, c1), z in zip(index.tolist(), params, kinds, rects, z_near, strict=True):
        t_view = t_buf[r0:r1, c0:c1]
        if t_view.max() < z:  # everything in the rectangle is already nearer than this primitive can be
            continue
        rect = (slice(r0, r1), slice(c0, c1))
        t = _HITS[kind](p, origin, [a[rect] for a in d], [a[rect] for a in inv])
        closer = t < t_view
        np.copyto(t_view, t, where=closer)
        np.copyto(prim_buf[rect], k + offset, where=closer)


def _normals(prims: Primitives, prim: np.ndarray, points: np.ndarray) -> np.ndarray:
    """H,W,3 unit surface normals at the hit points; ground and sky get +z."""
    normal = np.zeros(points.shape, np.float32)
    normal[..., 2] = 1.0
    hit = np.flatnonzero(prim.ravel() >= 0)
    index = prim.ravel()[hit]
    p, par, kind = points.reshape(-1, 3)[hit], prims.params[index], prims.kind[index]
    n = np.zeros_like(p)
    box = np.flatnonzero(kind == BOX)
    face = np.abs(np.concatenate([p[box] - par[box, :3], p[box] - par[box, 3:]], 1)).argmin(1)  # nearest face
    n[box, face % 3] = np.where(face < 3, -1.0, 1.0)
    side = (kind == CYLINDER) & (np.abs(p[:, 2] - par[:, 4]) > 1e-6)  # the rest of a cylinder's hits: its top
    n[(kind == CYLINDER) & ~side, 2] = 1.0
    n[side, :2] = p[side, :2] - par[side, :2]
    ell = kind == ELLIPSOID
    n[ell] = (p[ell] - par[ell, :3]) / np.stack([par[ell, 3], par[ell, 3], par[ell, 4]], 1) ** 2
    normal.reshape(-1, 3)[hit] = n / np.linalg.norm(n, axis=1, keepdims=True)
    return normal


def _static_buffers(city: City, camera: Camera, d, inv):
    """Depth and primitive index of the static scene: the ground plane z = 0, then the static primitives."""
    with np.errstate(divide="ignore"):
        t_ground = -camera.position[2] * inv[2]
    ground = (d[2] < 0) & (t_ground < 1000.0)
    t = np.where(ground, t_ground, np.inf)
    prim = np.where(ground, GROUND_HIT, SKY).astype(np.int32)
    _trace(city.static, 0, camera, d, inv, t, prim, city.config.max_distance)
    return t, prim


def _labels(city: City, prims: Primitives, points: np.ndarray, prim: np.ndarray):
    """Per-pixel label index from the primitive hit, the ground map or the sky; and the road paint mask."""
    label = np.full(prim.shape, LABEL["sky"], np.uint8)
    hit = prim >= 0
    label[hit] = prims.label[prim[hit]]
    ground = prim == GROUND_HIT
    paint = np.zeros(prim.shape, bool)
    label[ground], paint[ground] = ground_labels(city.config, points[ground, 0], points[ground, 1])
    return label, paint


def render(city: City, camera: Camera, appearance: Appearance = Appearance(), dynamic: Primitives | None = None,
           side: int = 128, noise_seed: int = 0, static_rgb: bool = False) -> dict[str, np.ndarray]:
    """Render one capture in memory: rgb (H,W,3 uint8), depth/obs_depth (float32 metres, sky 0), seg (uint8
    HoliCity classes, static), obs_seg (uint8 ADE20K ids, with dynamic objects), dynamic (bool); with `static_rgb`
    also rgb_static, the same capture without the dynamic objects (same appearance and noise: equal to `rgb` on
    every pixel no dynamic object covers)."""
    rays = camera.rays(side, side)
    d = [np.ascontiguousarray(rays[..., i]) for i in range(3)]
    with np.errstate(divide="ignore"):
        inv = [1.0 / a for a in d]
    t_s, prim_s = _static_buffers(city, camera, d, inv)
    dynamic = dynamic if dynamic is not None else _Builder().build()
    t_o, prim_o = t_s.copy(), prim_s.copy()
    _trace(dynamic, len(city.static), camera, d, inv, t_o, prim_o, city.config.max_distance)
    prims = Primitives.concat([city.static, dynamic])
    origin = np.asarray(camera.position)
    points_s = origin + np.where(np.isfinite(t_s), t_s, 0.0)[..., None] * rays
    points_o = origin + np.where(np.isfinite(t_o), t_o, 0.0)[..., None] * rays
    label_s, paint_s = _labels(city, prims, points_s, prim_s)
    label_o, paint = _labels(city, prims, points_o, prim_o)
    rng = np.random.default_rng(noise_seed)
    rgb = _shade(prims, rays, t_o, prim_o, points_o, label_o, paint, appearance, rng)
    static = {}
    if static_rgb:  # the same noise stream: the image render(dynamic=None) gives
        static["rgb_static"] = _shade(prims, rays, t_s, prim_s, points_s, label_s, paint_s, appearance,
                                      np.random.default_rng(noise_seed))
    return {
        **static,
        "rgb": rgb,
        "depth": np.where(label_s == LABEL["sky"], 0.0, t_s).astype(np.float32),
        "seg": HOLICITY_OF_LABEL[label_s].astype(np.uint8),
        "obs_seg": ADE_OF_LABEL[label_o],
        "obs_depth": np.where(label_o == LABEL["sky"], 0.0, t_o).astype(np.float32),
        "dynamic": HOLICITY_OF_LABEL[label_o] < 0,
    }


# ----------------------------------------------------------------------------------------------- shading
def _sun(appearance: Appearance) -> tuple[np.ndarray, ...]:
    elevation, azimuth, sun, ambient, zenith, horizon = TIMES_OF_DAY[appearance.time_of_day]
    e, a = math.radians(elevation), math.radians(azimuth)
    direction = np.array([math.sin(a) * math.cos(e), math.cos(a) * math.cos(e), math.sin(e)], np.float32)
    return direction, *(np.array(c, np.float32) for c in (sun, ambient, zenith, horizon))


def _base_colour(prims, points, normal, label, paint, prim, appearance) -> np.ndarray:
    """Surface colour before lighting: primitive colours, seasonal trees and grass, facade windows, road paint."""
    crown, grass = (np.array(c, np.float32) for c in SEASONS[appearance.season])
    colour = np.zeros(label.shape + (3,), np.float32)
    hit = prim >= 0
    colour[hit] = prims.colour[prim[hit]]
    colour[label == LABEL["crown"]] *= crown
    colour[label == LABEL["grass"]] = grass
    for name, value in GROUND.items():
        colour[(label == LABEL[name]) & (prim < 0)] = value
    colour[paint] = (0.92, 0.92, 0.88)
    facade = (label == LABEL["building"]) & (np.abs(normal[..., 2]) < 0.5)
    u = np.where(np.abs(normal[..., 0]) > 0.5, points[..., 1], points[..., 0])
    window = facade & (np.mod(points[..., 2], 3.2) > 1.1) & (np.mod(u, 2.8) > 0.9) & (points[..., 2] > 1.0)
    colour[window] = colour[window] * 0.25 + np.array((0.1, 0.13, 0.18), np.float32)
    return colour


def _shade(prims, rays, t, prim, points, label, paint, appearance, rng) -> np.ndarray:
    """Lambert shading under the sun and an ambient sky, distance haze, a sky gradient with a sun glow."""
    sun_dir, sun, ambient, zenith, horizon = _sun(appearance)
    normal = _normals(prims, prim, points)
    colour = _base_colour(prims, points, normal, label, paint, prim, appearance)
    image = colour * (ambient + sun * np.clip(normal @ sun_dir, 0, None)[..., None])
    haze = (1.0 - np.exp(-np.minimum(t, 1e4) / 700.0)).astype(np.float32)[..., None]
    image += (horizon - image) * haze
    sky = label == LABEL["sky"]
    direction = rays[sky] / np.linalg.norm(rays[sky], axis=-1, keepdims=True)
    height = np.clip(direction[:, 2:] * 2.5, 0, 1) ** 0.7
    glow = np.clip(direction @ sun_dir, 0, 1)[:, None] ** 48 * sun
    image[sky] = horizon + (zenith - horizon) * height + 0.6 * glow
    image += rng.standard_normal(image.shape, dtype=np.float32) * 0.012
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- writing
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
    table = carry_columns(manifest)
    for name, values in encode_batch(batch, spec, "{}").items():
        table = table.append_column(name, pa.array(values))
    # The part is named by what is drawn: neither the processes nor the extra static RGB change these maps.
    fixed = {k: v for k, v in dataclasses.asdict(city.config).items() if k not in ("workers", "static_rgb")}
    name = hashlib.sha256(f"{json.dumps(fixed, sort_keys=True)}:{part}".encode())
    write_part(table, os.path.join(output, GT_MAPS), output_schema(carry_columns(_manifest(city, [])).schema, spec),
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
