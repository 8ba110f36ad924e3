"""The synthetic city's layout and visits: its labels and looks, `CityConfig`, UTM and WGS84, the primitives
it is built of, the street grid with its buildings and trees (`build_city`), the visits of each place
(`plan_visits`) and the dynamic objects each visit draws (`dynamic_objects`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vprlib.data.holicity import HOLICITY_CLASSES
from vprlib.geo import latlon_to_utm, utm_to_latlon

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
SPLIT_ORDER = ("train", "val", "database", "query")
BOX, CYLINDER, ELLIPSOID = 0, 1, 2


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


# ----------------------------------------------------------------------------------------------- visits
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
