"""The standard VPR benchmark format (Berton et al., "Deep Visual Geo-localization Benchmark", CVPR 2022) as a
manifest: how the community shares Pitts30k, Pitts250k, Tokyo 24/7, MSLS, SF-XL, St Lucia, Nordland and others.

Layout (local folder or s3:// prefix), the labels in each file name, fields separated by "@":

    images/{train,val,test}/{database,queries}/@ UTM_east @ UTM_north @ UTM_zone_number @ UTM_zone_letter
        @ latitude @ longitude @ pano_id @ tile_num @ heading @ pitch @ roll @ height @ timestamp @ note @.jpg

e.g. `@0585234.12@4477300.55@17@T@40.44@-79.99@@@@@@@@@.jpg`. Any field may be empty except the UTM easting and
northing (metres); trailing fields may be left out. Only images in a role folder are read: `database/` gives split
"database"; `queries/` and `queries_<name>/` (SF-XL's test has `queries_v1` and `queries_night`) give split
"query". The role folder's name is kept in `role_folder`, and the nearest `train`/`val`/`test` folder above it in
`subset`: database and queries are compared within one subset (and one query folder), as the benchmarks do, so
`vpr_manifest` can keep only one of each. Other files (hidden files, text, SF-XL's training folders) are skipped.

Positions: lat/lon from the fields; when both are empty, from the UTM coordinates with the zone number and letter
(C-M southern hemisphere, N-X northern). Nordland's names have dummy UTM coordinates only (easting 0, northing 2.4 m
a frame, no zone): such rows get lat = lon = 0 and `has_gps` false, like GLDv2's. `utm_east`, `utm_north` and
`utm_zone` are kept, so Recall@N measures metres on the UTM grid when every row is in one zone or every row in none
(Nordland: frames within 25 m along the track), as the benchmarks do, and by haversine on lat/lon when the rows name
several zones (MSLS); rows naming a zone beside rows naming none share no frame and are refused
(`vprlib.metrics.gps_columns`).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from vprlib.data.manifest import ManifestError, validate
from vprlib.geo import utm_to_latlon
from vprlib.storage import join_uri, url_to_fs

# The fields of a name, in order, as manifest columns; the numeric ones are parsed, the others kept as text.
FIELDS = ("utm_east", "utm_north", "utm_zone", "utm_letter", "lat", "lon", "pano_id", "tile_num", "heading",
          "pitch", "roll", "height", "timestamp", "note")
NUMBER_FIELDS = ("utm_east", "utm_north", "lat", "lon", "heading", "pitch", "roll", "height")
TEXT_FIELDS = ("utm_letter", "pano_id", "tile_num", "timestamp", "note")
SUBSETS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
ZONE_LETTERS = "CDEFGHJKLMNPQRSTUVWX"  # latitude bands; those before N are south of the equator
_ROLE = re.compile(r"database|queries(?:_.+)?")


def vpr_manifest(root: str, subset: str | None = None, queries: str | None = None,
                 sequence_frames: int = 0) -> pa.Table:
    """Manifest of a benchmark in the VPR format under `root` (local or s3://), validated.

    subset: keep only this train/val/test folder; queries: keep only this query folder (e.g. `queries_night`)
    besides the database. Columns: image_id (path under `root`), uri, lat, lon, heading, split (database/query),
    subset, role_folder, has_gps, utm_east, utm_north, utm_zone, then the other fields of the name (FIELDS).
    sequence_frames > 0: each query folder's frames grouped into sequences of that many consecutive frames
    (`sequence_id`, `frame_index`: vprlib.data.vpr_sequences).
    """
    if subset is not None and subset not in SUBSETS:
        raise ManifestError(f"unknown subset {subset!r}; known: {list(SUBSETS)}")
    fs, base = url_to_fs(root)
    base = base.rstrip("/")
    images = _find_images(fs.find(base))
    if not images:
        raise ManifestError(f"{root}: no images in database/ or queries/ folders (VPR format: "
                            "images/{train,val,test}/{database,queries}/@east@north@...@.jpg)")
    images = _select(images, subset, queries, root)
    ids = [path[len(base) + 1:] for path, _, _ in images]
    uris = [join_uri(root, i) for i in ids]
    fields = [_parse_name(uri) for uri in uris]
    lat, lon, has_gps = _positions(fields, uris)
    table = pa.table({
        "image_id": pa.array(ids, pa.string()),
        "uri": pa.array(uris, pa.string()),
        "lat": lat, "lon": lon,
        "heading": _column(fields, "heading", pa.float64()),
        "split": pa.array(["database" if role == "database" else "query" for _, role, _ in images], pa.string()),
        "subset": pa.array([s for _, _, s in images], pa.string()),
        "role_folder": pa.array([role for _, role, _ in images], pa.string()),
        "has_gps": pa.array(has_gps, pa.bool_()),
        **{name: _column(fields, name, pa.float64()) for name in ("utm_east", "utm_north")},
        "utm_zone": _column(fields, "utm_zone", pa.int32()),
        **{name: _column(fields, name, pa.string()) for name in TEXT_FIELDS},
        **{name: _column(fields, name, pa.float64()) for name in ("pitch", "roll", "height")},
    })  # fmt: skip
    if sequence_frames:
        from vprlib.data.vpr_sequences import add_sequences

        table = add_sequences(table, sequence_frames)
    return validate(table, source=root)


def parse_vpr_name(name: str) -> dict[str, str | None]:
    """The FIELDS of a VPR-format file name as text (None when empty); ValueError saying what does not fit."""
    parts = name.split("@")
    if len(parts) < 4 or parts[0] or not parts[-1].startswith("."):
        raise ValueError("not a VPR-format name (@UTM_east@UTM_north@...@.jpg)")
    values = parts[1:-1]
    if len(values) > len(FIELDS):
        raise ValueError(f"{len(values)} fields between '@'s; the format has {len(FIELDS)}")
    values += [""] * (len(FIELDS) - len(values))
    return {name: value.strip() or None for name, value in zip(FIELDS, values, strict=True)}


def _find_images(paths: list[str]) -> list[tuple[str, str, str | None]]:
    """(path, role folder, subset) of each image in a role folder, sorted by path; hidden files are skipped."""
    images = []
    for path in sorted(paths):
        folders, name = path.split("/")[:-1], path.rsplit("/", 1)[-1]
        if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        role = next((i for i in range(len(folders) - 1, -1, -1) if _ROLE.fullmatch(folders[i])), None)
        if role is not None:
            subset = next((f for f in reversed(folders[:role]) if f in SUBSETS), None)
            images.append((path, folders[role], subset))
    return images


def _select(images: list, subset: str | None, queries: str | None, root: str) -> list:
    """The images of one subset and/or one query folder (the database kept); an error naming what there is."""
    if subset is not None:
        found = sorted({s for _, _, s in images if s is not None})
        images = [image for image in images if image[2] == subset]
        if not images:
            raise ManifestError(f"{root}: no {subset!r} subset; found {found}")
    if queries is not None:
        found = sorted({role for _, role, _ in images if role != "database"})
        if queries not in found:
            raise ManifestError(f"{root}: no query folder {queries!r}; found {found}")
        images = [image for image in images if image[1] in ("database", queries)]
    return images


def _parse_name(uri: str) -> dict:
    """A file's fields, numbers parsed and the zone checked; ManifestError naming the file and the field."""
    try:
        fields = parse_vpr_name(uri.rsplit("/", 1)[-1])
    except ValueError as exc:
        raise ManifestError(f"{uri}: {exc}") from None
    for name in NUMBER_FIELDS:
        if fields[name] is not None:
            fields[name] = _number(fields[name], name, uri)
    for name in ("utm_east", "utm_north"):
        if fields[name] is None:
            raise ManifestError(f"{uri}: {name} is empty; the format requires the UTM coordinates")
    if fields["utm_zone"] is not None:
        zone = fields["utm_zone"]
        if not zone.isdigit() or not 1 <= int(zone) <= 60:
            raise ManifestError(f"{uri}: utm_zone={zone!r} is not a UTM zone number (1-60)")
        fields["utm_zone"] = int(zone)
    letter = fields["utm_letter"]
    if letter is not None and (len(letter) != 1 or letter.upper() not in ZONE_LETTERS):
        raise ManifestError(f"{uri}: utm_letter={letter!r} is not a UTM latitude band ({ZONE_LETTERS})")
    return fields


def _number(text: str, name: str, uri: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise ManifestError(f"{uri}: {name}={text!r} is not a number")
    return value


def _positions(fields: list[dict], uris: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lat, lon and has_gps of each row: from the name's lat/lon, else from UTM with zone and letter, else 0, 0
    and false when the name has neither (Nordland)."""
    lat = np.zeros(len(fields))
    lon = np.zeros(len(fields))
    has_gps = np.zeros(len(fields), bool)
    from_utm: dict[tuple[int, bool], list[int]] = {}
    for row, (f, uri) in enumerate(zip(fields, uris, strict=True)):
        if (f["lat"] is None) != (f["lon"] is None):
            raise ManifestError(f"{uri}: has {'lat' if f['lon'] is None else 'lon'} but not the other")
        if f["lat"] is not None:
            lat[row], lon[row], has_gps[row] = f["lat"], f["lon"], True
        elif f["utm_zone"] is not None and f["utm_letter"] is not None:
            from_utm.setdefault((f["utm_zone"], f["utm_letter"].upper() < "N"), []).append(row)
        elif f["utm_zone"] is not None or f["utm_letter"] is not None:
            raise ManifestError(f"{uri}: no lat/lon, and the UTM zone needs both its number and its letter")
    for (zone, southern), rows in from_utm.items():
        east = np.array([fields[r]["utm_east"] for r in rows])
        north = np.array([fields[r]["utm_north"] for r in rows])
        lat[rows], lon[rows] = utm_to_latlon(east, north, zone, southern=southern)
        has_gps[rows] = True
    return lat, lon, has_gps


def _column(fields: list[dict], name: str, type_: pa.DataType) -> pa.Array:
    return pa.array([f[name] for f in fields], type_)
