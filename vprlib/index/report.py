"""The evaluation report: one self-contained HTML page in the spirit of the paper's Fig. 5.

The page opens with the recalls, the settings, a Recall@N curve and a map of the shown queries (each query's
position joined to its first prediction's, over the indexed images, on the UTM plane). Then a sample of queries in
three groups, each said for what it is (`pick_sample`): the worst (no prediction right in the top k, the farthest
first), near misses (wrong at rank 1, right further down) and some right at rank 1. A row holds the query's photo,
its segmentation map in a fixed palette (with a legend of the classes present), its depth as a colour map, and its top
predictions' photos framed green when right and red when wrong, with rank, distance and similarity. Everything is
inline (images as base64 PNG/JPEG, the curve and the map as SVG, CSS in the page): no script, no external file, so the
page can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import colorsys
import html
import io
import math
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageOps

from vprlib.data.manifest import one_line
from vprlib.maps import decode_depth, decode_seg, read_maps
from vprlib.metrics import recall_key, recall_ns
from vprlib.spec import IGNORE_LABEL, REFINED_CLASSES
from vprlib.storage import url_to_fs

THUMB = 176  # pixels of every tile's longer side
MAX_LEGEND = 8  # classes named under a segmentation map (the largest first)

# ADE20K's 150 classes, 0-based as SegFormer outputs them (the dataset's objectInfo150 order, first name of each).
ADE20K_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway",
    "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag")
# Colours of the classes a street photo is mostly made of; the other ids get spread hues (`_spread`).
STREET_COLOURS = {"sky": (120, 180, 235), "building": (180, 90, 70), "tree": (60, 140, 50), "road": (125, 90, 140),
                  "sidewalk": (230, 170, 200), "grass": (140, 200, 80), "person": (230, 30, 60), "car": (20, 40, 200),
                  "terrain": (200, 170, 110), "wall": (150, 150, 150), "earth": (150, 110, 70)}
IGNORED_COLOUR = (40, 40, 40)
# Viridis at ten evenly spaced stops (perceptually uniform; dark purple = far or no geometry, yellow = near).
VIRIDIS = np.array([(68, 1, 84), (72, 40, 120), (62, 73, 137), (49, 104, 142), (38, 130, 142), (31, 158, 137),
                    (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37)], dtype=np.float64)
GREEN, RED = "#1f9d55", "#d7263d"


# ----------------------------------------------------------------------------------------------- colours
def class_names(seg_classes: str) -> dict[int, str]:
    """Label id -> class name of a label set (vprlib.spec.SEG_CLASSES), with the ignore label."""
    names = REFINED_CLASSES if seg_classes == "refined4" else ADE20K_NAMES
    return {**dict(enumerate(names)), IGNORE_LABEL: "other (ignored)"}


def _spread(index: int) -> tuple[int, int, int]:
    """A fixed colour per id: golden-ratio hues, three saturation and value levels, so neighbours differ."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.55 + 0.2 * (index % 3), 0.95 - 0.15 * (index % 2))
    return round(r * 255), round(g * 255), round(b * 255)


def palette(seg_classes: str) -> np.ndarray:
    """(256, 3) uint8: the colour of every label id of a label set (fixed: the same class, the same colour)."""
    names = class_names(seg_classes)
    colours = np.array([_spread(i) for i in range(256)], dtype=np.uint8)
    for index, name in names.items():
        colours[index] = STREET_COLOURS.get(name, colours[index])
    colours[IGNORE_LABEL] = IGNORED_COLOUR
    return colours


def colour_seg(seg: np.ndarray, seg_classes: str) -> tuple[np.ndarray, list[tuple[str, tuple, float]]]:
    """A label map in the palette (H, W, 3), and the classes present, largest first: (name, colour, share)."""
    colours, names = palette(seg_classes), class_names(seg_classes)
    ids, counts = np.unique(seg, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    present = [(names.get(int(ids[i]), f"class {int(ids[i])}"), tuple(int(c) for c in colours[ids[i]]),
                float(counts[i] / seg.size)) for i in order]
    return colours[seg], present


def colour_depth(depth: np.ndarray) -> np.ndarray:
    """Depth (larger = closer, both conventions) as viridis (H, W, 3) uint8, scaled by its 99th percentile so a
    few very close pixels do not flatten the rest; 0 (no geometry, sky) is the darkest colour."""
    values = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    positive = values[values > 0]
    scale = float(np.percentile(positive, 99)) if positive.size else 1.0
    t = np.clip(values / (scale or 1.0), 0.0, 1.0) * (len(VIRIDIS) - 1)
    low = np.floor(t).astype(int).clip(0, len(VIRIDIS) - 2)
    frac = (t - low)[..., None]
    return np.round(VIRIDIS[low] * (1 - frac) + VIRIDIS[low + 1] * frac).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- images
def data_uri(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 85} if fmt == "JPEG" else {"compress_level": 6}))
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def map_uri(rgb: np.ndarray, nearest: bool) -> str:
    """A colour-mapped map as a PNG data URI, enlarged to THUMB (nearest for labels: no invented colours)."""
    image = Image.fromarray(rgb)
    scale = THUMB / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return data_uri(image.resize(size, Image.NEAREST if nearest else Image.BILINEAR), "PNG")


def photo_uri(uri: str | None) -> tuple[str | None, str]:
    """A photo as a JPEG thumbnail data URI, or (None, why) when it is missing or unreadable."""
    if not uri:
        return None, "no photo recorded"
    try:
        fs, path = url_to_fs(uri)
        with fs.open(path, "rb") as f, Image.open(f) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((THUMB, THUMB))
            return data_uri(image, "JPEG"), ""
    except FileNotFoundError:
        return None, "missing file"
    except Exception as exc:  # any unreadable photo (not an image, storage refused): the page still renders
        return None, f"unreadable ({one_line(exc)[:80]})"


# ----------------------------------------------------------------------------------------------- the page
@dataclass(frozen=True)
class Prediction:
    rank: int
    image_id: str
    uri: str | None
    score: float
    distance_m: float
    correct: bool


@dataclass(frozen=True)
class QueryView:
    image_id: str
    uri: str | None
    depth: np.ndarray
    seg: np.ndarray
    first_correct_rank: int | None
    positives: int
    predictions: list[Prediction]

    @property
    def right(self) -> bool:
        """Right at rank 1 (Recall@1)."""
        return self.first_correct_rank == 1


# The report's groups of queries, in page order, and how each is described.
SAMPLE_GROUPS = {
    "worst": "the worst: none right in the top {k}, the farthest first",
    "near": "near misses: wrong at rank 1, right at a later rank",
    "right": "right at rank 1",
}


def pick_sample(results: pa.Table, n: int, seed: int) -> list[tuple[str, int]]:
    """Up to n query rows with ground truth as (group, row), a third of them from each group of SAMPLE_GROUPS (a
    group with too few leaves its share to the others). The worst are ordered by their first prediction's distance,
    farthest first (seeded random order without distances); the others are a seeded random draw."""
    first = results["first_correct_rank"].to_pylist()
    queries = [i for i, c in enumerate(results["correct"].to_pylist()) if c is not None]
    shuffled = [queries[i] for i in np.random.default_rng(seed).permutation(len(queries))]
    distance = [d[0] if d and not math.isnan(d[0]) else -1.0 for d in results["distances_m"].to_pylist()]
    groups = {"worst": sorted((i for i in shuffled if first[i] is None), key=lambda i: -distance[i]),
              "near": [i for i in shuffled if first[i] is not None and first[i] > 1],
              "right": [i for i in shuffled if first[i] == 1]}
    share = {name: 0 for name in groups}
    for _ in range(min(n, len(queries))):  # one at a time to the group furthest below its third that has more
        name = min((g for g in groups if share[g] < len(groups[g])), key=lambda g: (share[g], list(groups).index(g)))
        share[name] += 1
    return [(name, i) for name in groups for i in groups[name][: share[name]]]


def query_views(results: pa.Table, picked: list[int], queries: pa.Table, database: pa.Table, maps: str,
                top: int) -> list[QueryView]:
    """What the report shows of each picked query row: its photo and maps, its top predictions."""
    ids = [results["image_id"][i].as_py() for i in picked]
    decoded = read_maps(maps, columns=["image_id", "depth", "seg", "map_height", "map_width"],
                        filter=pc.field("image_id").isin(ids)).to_pylist()
    by_id = {row["image_id"]: row for row in decoded}
    query_uri = _uris(queries)
    db_uri = _uris(database)
    views = []
    for i in picked:
        row = results.slice(i, 1).to_pylist()[0]
        ranked = zip(row["top_ids"], row["scores"], row["distances_m"], row["correct"], strict=True)
        predictions = [Prediction(rank, ident, db_uri.get(ident), score, dist, ok)
                       for rank, (ident, score, dist, ok) in enumerate(ranked, start=1) if rank <= top]
        maps_row = by_id[row["image_id"]]
        views.append(QueryView(row["image_id"], query_uri.get(row["image_id"]), decode_depth(maps_row),
                               decode_seg(maps_row), row["first_correct_rank"], row["positives"], predictions))
    return views


def _uris(table: pa.Table) -> dict:
    if "uri" not in table.column_names:
        return {}
    return dict(zip(table["image_id"].to_pylist(), table["uri"].to_pylist(), strict=True))


def _photo_tile(uri: str | None, caption: str, extra_class: str = "", attrs: str = "") -> str:
    src, why = photo_uri(uri)
    body = (f'<img src="{src}" alt="{html.escape(caption)}">' if src else
            f'<div class="placeholder">photo unavailable<br><small>{html.escape(why)}</small></div>')
    return f'<figure class="tile{extra_class}"{attrs}>{body}<figcaption>{caption}</figcaption></figure>'


def _legend(present: list) -> str:
    items = "".join(f'<li><span class="swatch" style="background:rgb{colour}"></span>{html.escape(name)} '
                    f'{share:.0%}</li>' for name, colour, share in present[:MAX_LEGEND])
    more = f"<li>+{len(present) - MAX_LEGEND} more</li>" if len(present) > MAX_LEGEND else ""
    return f'<ul class="legend">{items}{more}</ul>'


def _distance(metres: float) -> str:
    return "no GPS" if metres is None or math.isnan(metres) else f"{metres:.1f} m"


def query_section(view: QueryView, seg_classes: str, k: int, number: int = 0) -> str:
    """One row of the page: the query's photo and maps, then its predictions framed by whether they are right;
    `number` is its label on the map."""
    seg_rgb, present = colour_seg(view.seg, seg_classes)
    verdict = "right at rank 1" if view.right else (
        f"wrong at rank 1; first right at rank {view.first_correct_rank}" if view.first_correct_rank else
        f"wrong: none right in the top {k}")
    tiles = [_photo_tile(view.uri, "query photo", " query-photo"),
             f'<figure class="tile"><img class="map" src="{map_uri(seg_rgb, True)}" alt="segmentation">'
             f'<figcaption>segmentation ({html.escape(seg_classes)})</figcaption>{_legend(present)}</figure>',
             f'<figure class="tile"><img class="map" src="{map_uri(colour_depth(view.depth), False)}" alt="depth">'
             f'<figcaption>depth</figcaption><div class="depthbar"></div>'
             f'<div class="depthlabels"><span>far / sky</span><span>near</span></div></figure>']
    for p in view.predictions:
        state = "correct" if p.correct else "wrong"
        caption = (f'<b>#{p.rank}</b> {"right" if p.correct else "wrong"} · {_distance(p.distance_m)} · '
                   f'sim {p.score:.3f}<br><small>{html.escape(p.image_id)}</small>')
        tiles.append(_photo_tile(p.uri, caption, f" pred {state}", f' data-correct="{str(p.correct).lower()}"'))
    return (f'<section class="query {"right" if view.right else "wrong"}" data-image-id="{html.escape(view.image_id)}"'
            f' data-right="{str(view.right).lower()}"><h3>{f"{number}. " if number else ""}'
            f'{html.escape(view.image_id)} <span class="verdict">'
            f'{verdict}</span> <small>{view.positives} positive(s) in the index</small></h3>'
            f'<div class="row">{"".join(tiles)}</div></section>')


def recall_svg(curve: list[float], ns: tuple[int, ...]) -> str:
    """Recall@N for N = 1..k as an inline SVG line chart, the requested N marked and labelled."""
    width, height, left, right, top, bottom = 640, 300, 56, 24, 20, 44
    k = len(curve)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(n: int) -> float:
        return left + (plot_w * (n - 1) / (k - 1) if k > 1 else plot_w / 2)

    def y(r: float) -> float:
        return top + (1 - r) * plot_h

    parts = [f'<svg class="recall-curve" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img"><title>Recall@N</title>']
    for r in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(r):.1f}" y2="{y(r):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 8}" y="{y(r) + 4:.1f}" text-anchor="end">{r:.0%}</text>')
    for n in sorted({1, k, *ns}):
        parts.append(f'<text x="{x(n):.1f}" y="{height - bottom + 18}" text-anchor="middle">{n}</text>')
    points = " ".join(f"{x(n):.1f},{y(r):.1f}" for n, r in enumerate(curve, start=1))
    parts.append(f'<polyline points="{points}" fill="none" stroke="#2563eb" stroke-width="2.5"/>')
    for n in ns:
        r = curve[n - 1]
        shift, anchor = (-6, "end") if x(n) > width - right - 90 else (6, "start")  # the label stays inside
        parts.append(f'<circle cx="{x(n):.1f}" cy="{y(r):.1f}" r="5" fill="#2563eb"/><text x="{x(n) + shift:.1f}" '
                     f'y="{y(r) - 8:.1f}" text-anchor="{anchor}" class="mark">R@{n} {r:.1%}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">N (predictions '
                 f'considered)</text><text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">Recall@N</text></svg>')
    return "".join(parts)


STYLE = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }}
h1 {{ font-size: 22px; margin: 0 0 6px; }} h2 {{ font-size: 17px; margin: 24px 0 8px; }}
h3 {{ font-size: 14px; margin: 0 0 6px; font-weight: 600; }} h3 small {{ color: #666; font-weight: 400; }}
.settings {{ color: #444; margin: 2px 0; }} .settings code {{ background: #f3f3f3; padding: 0 3px; }}
.recall-curve text {{ font: 12px system-ui, sans-serif; fill: #333; }}
.recall-curve text.mark {{ font-weight: 600; fill: #1e40af; }}
.positions text {{ font: 11px system-ui, sans-serif; fill: #111; }}
h3.group {{ font-size: 15px; margin: 20px 0 4px; }}
section.query {{ border-top: 1px solid #ddd; padding: 12px 0; }}
section.query.wrong .verdict {{ color: {RED}; }} section.query.right .verdict {{ color: {GREEN}; }}
.row {{ display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }}
figure.tile {{ margin: 0; width: {THUMB}px; padding: 5px; border: 5px solid transparent; }}
figure.tile img {{ display: block; width: {THUMB}px; height: {THUMB}px; object-fit: contain; background: #f4f4f4; }}
figure.tile img.map {{ image-rendering: pixelated; }}
figure.pred.correct {{ border-color: {GREEN}; }} figure.pred.wrong {{ border-color: {RED}; }}
figure.query-photo {{ border-color: #888; }}
figcaption {{ font-size: 12px; margin-top: 4px; }} figcaption small {{ word-break: break-all; }}
.placeholder {{ width: {THUMB - 4}px; height: {THUMB - 4}px; border: 2px dashed #999; color: #666; display: flex;
  flex-direction: column; align-items: center; justify-content: center; text-align: center; background: #fafafa; }}
ul.legend {{ list-style: none; padding: 0; margin: 4px 0 0; font-size: 11px; }}
.swatch {{ display: inline-block; width: 10px; height: 10px; margin-right: 4px; border: 1px solid #555; }}
.depthbar {{ height: 8px; margin-top: 4px; background: linear-gradient(to right, {", ".join(
    f"rgb{tuple(int(v) for v in c)}" for c in VIRIDIS)}); }}
.depthlabels {{ display: flex; justify-content: space-between; font-size: 11px; color: #555; }}
"""


def positions_svg(views: list[QueryView], query_at: list[tuple[float, float]], database: pa.Table) -> str:
    """A map of the shown queries on the UTM plane: every indexed image a grey dot, each query a black dot numbered
    as on the page, joined to its first prediction (green when right, red when wrong); a scale bar. '' when the
    queries have no positions (no GPS)."""
    from vprlib.demo.city.layout import latlon_to_utm

    db_lat, db_lon = (database[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in ("lat", "lon"))
    q_lat, q_lon = np.array(query_at, np.float64).reshape(-1, 2).T
    if not len(q_lat) or not np.isfinite(q_lat).any() or not np.isfinite(db_lat).any():
        return ""
    zone = None if "utm_zone" not in database.column_names else database["utm_zone"][0].as_py()
    db_e, db_n, zone = latlon_to_utm(db_lat, db_lon, zone)
    q_e, q_n, _ = latlon_to_utm(q_lat, q_lon, zone)
    ids = {ident: j for j, ident in enumerate(database["image_id"].to_pylist())}
    width, height, pad = 640, 480, 24
    e0, e1, n0, n1 = np.nanmin(db_e), np.nanmax(db_e), np.nanmin(db_n), np.nanmax(db_n)
    scale = min((width - 2 * pad) / max(e1 - e0, 1.0), (height - 2 * pad) / max(n1 - n0, 1.0))

    def at(east: float, north: float) -> tuple[float, float]:
        return pad + (east - e0) * scale, height - pad - (north - n0) * scale

    parts = [f'<svg class="positions" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img"><title>Query and prediction positions</title>',
             f'<rect width="{width}" height="{height}" fill="#fafafa"/>']
    parts += ['<circle class="indexed" cx="{:.1f}" cy="{:.1f}" r="1.5" fill="#bbb"/>'.format(*at(e, n))
              for e, n in zip(db_e, db_n, strict=True) if np.isfinite(e)]
    for number, (view, e, n) in enumerate(zip(views, q_e, q_n, strict=True), start=1):
        first = view.predictions[0] if view.predictions else None
        if first is None or first.image_id not in ids or not np.isfinite(e):
            continue
        (qx, qy), (px, py) = at(e, n), at(db_e[ids[first.image_id]], db_n[ids[first.image_id]])
        colour = GREEN if first.correct else RED
        parts.append(f'<line class="match" data-query="{html.escape(view.image_id)}" x1="{qx:.1f}" y1="{qy:.1f}" '
                     f'x2="{px:.1f}" y2="{py:.1f}" stroke="{colour}" stroke-width="2"/><circle class="prediction" '
                     f'cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{colour}"/><circle class="query" cx="{qx:.1f}" '
                     f'cy="{qy:.1f}" r="4" fill="#111"/><text x="{qx + 6:.1f}" y="{qy - 6:.1f}">{number}</text>')
    quarter = max((width - 2 * pad) / scale / 4, 1.0)  # metres: the scale bar is the longest 1, 2 or 5 x 10^n below
    bar = max(step * 10 ** math.floor(math.log10(quarter / step)) for step in (1, 2, 5))
    parts.append(f'<line x1="{pad}" y1="{height - 8}" x2="{pad + bar * scale:.1f}" y2="{height - 8}" stroke="#333" '
                 f'stroke-width="3"/><text x="{pad + bar * scale + 6:.1f}" y="{height - 4}">{bar:g} m</text></svg>')
    return "".join(parts)


def render(summary: dict, views: list[QueryView], seg_classes: str, groups: list[str], positions: str) -> str:
    """The whole page; `groups` names each view's group (SAMPLE_GROUPS), `positions` is the map (positions_svg)."""
    recalls = " · ".join(f"Recall@{n} {summary[recall_key(n)]:.1%}" for n in recall_ns(summary))
    right = "right within {:g} m".format(summary["radius_m"]) if summary["mode"] == "gps" else \
        f"right by {summary['mode']}"
    settings = [
        f"{summary['queries']} queries (split <code>{html.escape(summary['query_split'])}</code> of "
        f"<code>{html.escape(summary['queries_maps'])}</code>) against {summary['index_rows']} indexed images",
        f"{html.escape(summary['mode'])} mode, {html.escape(right)}; distances: {html.escape(summary['distances'])}",
        f"index <code>{html.escape(summary['index'])}</code>; retriever {html.escape(summary['model']['family'])} "
        f"sha256 <code>{summary['model']['sha256'][:12]}</code>; {html.escape(summary['time'])}"]
    rerank = summary.get("rerank") or {}
    if rerank.get("k"):
        alone = " · ".join(f"Recall@{n} {rerank['search_only'][recall_key(n)]:.1%}"
                           for n in recall_ns(rerank["search_only"]))
        settings.append(f"the first {rerank['k']} candidates re-ranked by their maps ({rerank['ms_per_query']:.2f} ms "
                        f"per query); the search alone: {alone}")
    counts = {name: groups.count(name) for name in SAMPLE_GROUPS if name in groups}
    said = "; ".join(f"{n} {SAMPLE_GROUPS[name].format(k=summary['k'])}" for name, n in counts.items())
    body, number = [], 0
    for name in counts:
        body.append(f'<h3 class="group" id="{name}">{html.escape(SAMPLE_GROUPS[name].format(k=summary["k"]))} '
                    f'({counts[name]})</h3>')
        for view, group in zip(views, groups, strict=True):
            if group == name:
                number += 1
                body.append(query_section(view, seg_classes, summary["k"], number))
    where = (f"<h2>Where the shown queries are</h2><p class=settings>each query (numbered as below) joined to its "
             f"first prediction, over the {summary['index_rows']} indexed images (grey), on the UTM plane</p>"
             f"{positions}" if positions else "")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>vprlib evaluation: '
            f'{html.escape(recalls)}</title><style>{STYLE}</style></head><body>'
            f'<header><h1>{html.escape(recalls)}</h1>{"".join(f"<p class=settings>{s}</p>" for s in settings)}'
            f'</header><h2>Recall@N</h2>{recall_svg(summary["recall_curve"], _ns(summary))}{where}'
            f'<h2>{len(views)} of {summary["queries"]} queries: {html.escape(said)}</h2><p class=settings>'
            f'predictions framed <span style="color:{GREEN}">green</span> when right, '
            f'<span style="color:{RED}">red</span> when wrong</p>{"".join(body)}</body></html>\n')


def _position(results: pa.Table, row: int) -> tuple[float, float]:
    """A query row's (lat, lon), NaN when it has no GPS (its distances are NaN: GLDv2's lat = lon = 0)."""
    distances = results["distances_m"][row].as_py()
    if not distances or math.isnan(distances[0]):
        return math.nan, math.nan
    return results["lat"][row].as_py(), results["lon"][row].as_py()


def _ns(summary: dict) -> tuple[int, ...]:
    return tuple(recall_ns(summary))


def write_report(summary: dict, results: pa.Table, queries: pa.Table, database: pa.Table, map_spec: dict,
                 shown: int = 20, top: int = 3, seed: int = 0) -> str:
    """Render the report of an evaluation (its summary, results, query rows and the indexed rows its results name)
    and write it as report.html in the evaluation's output folder (`summary["output"]`); its path. `shown` queries
    (a seeded sample, `pick_sample`), each with its first `top` predictions; the query maps are read from
    `summary["queries_maps"]`."""
    picked = pick_sample(results, shown, seed)
    rows = [i for _, i in picked]
    views = query_views(results, rows, queries, database, summary["queries_maps"], top)
    query_at = [_position(results, i) for i in rows]
    page = render(summary, views, map_spec.get("seg_classes", "ade20k"), [g for g, _ in picked],
                  positions_svg(views, query_at, database))
    fs, root = url_to_fs(summary["output"])
    path = posixpath.join(root, "report.html")
    with fs.open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
