"""Google Landmarks Dataset v2 (Weyand et al., "Google Landmarks Dataset v2", CVPR 2020) as a manifest, with the
paper's France subset (IV-B): landmarks of one country, a quarter of their training images, test queries and index
images of that country's landmarks; closeness is "same landmark" (landmark mode of Recall@N).

Published layout (github.com/cvdfoundation/google-landmark), local or s3://:

    train.csv                       id,url,landmark_id
    index_image_to_landmark.csv     id,landmark_id            (index images -> split "database")
    recognition_solution_v2.1.csv   id,landmarks,Usage        (test images -> split "query"; empty = no landmark)
    {train,index,test}/{a}/{b}/{c}/{abc...}.jpg               a, b, c: the first three characters of the id

The test part is read when `index_image_to_landmark.csv` is present. A query listing several landmarks keeps the
first; queries with none (distractors) are left out.

GLDv2 publishes no country and no GPS: `train_label_to_category.csv` only links a Wikimedia category and
`train_label_to_hierarchical.csv` gives a landmark type, not a place. So a country subset needs a user CSV
`landmarks` with `landmark_id` and `country` (e.g. mined from the Wikimedia categories), and optionally `lat`, `lon`
of each landmark. Rows get the landmark's coordinates when that file has them (`has_gps` true), else lat = lon = 0.0
and `has_gps` false: the manifest stays valid, and evaluation must use landmark mode (`metrics.landmark_positives`).

The quarter of the training images is chosen per image, reproducibly and independently of file order: the images
with the smallest SHA-1 of "{seed}:{image id}" are kept, round(fraction * n) of them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vprlib.data.folder import read_csv, require_files
from vprlib.data.manifest import ManifestError, join_uri, url_to_fs, validate

TRAIN_CSV = "train.csv"
INDEX_CSV = "index_image_to_landmark.csv"
QUERY_CSV = "recognition_solution_v2.1.csv"
PAPER_COUNTRY = "France"
PAPER_TRAIN_FRACTION = 0.25  # "we only took 1/4 of the train images available for France"


def gldv2_manifest(
    root: str,
    landmarks: str | None = None,
    country: str | None = PAPER_COUNTRY,
    train_fraction: float = PAPER_TRAIN_FRACTION,
    seed: int = 0,
    check_files: bool = True,
) -> pa.Table:
    """Manifest of GLDv2 under `root`: train rows (a `train_fraction` sample), database (index) and query (test) rows.

    landmarks: CSV (relative to `root` or absolute) with landmark_id and country and/or lat, lon; required when
    `country` is set (None keeps every landmark). Columns: image_id, uri, lat, lon, has_gps, landmark_id, split.
    """
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    info = _landmark_info(join_uri(root, landmarks)) if landmarks else None
    if country is not None and (info is None or "country" not in info.column_names):
        raise ManifestError(
            f"GLDv2 has no country per landmark: selecting {country!r} needs `landmarks`, a CSV with columns "
            "landmark_id,country (optionally lat,lon)"
        )
    keep = None if country is None else info.filter(_country_is(info, country))["landmark_id"]
    train = _select(_labelled(root, TRAIN_CSV, "train"), keep)
    train = train.filter(_sample(train["image_id"].to_pylist(), train_fraction, seed))
    parts = [train]
    fs, base = url_to_fs(root)
    if fs.exists(f"{base.rstrip('/')}/{INDEX_CSV}"):
        parts.append(_select(_labelled(root, INDEX_CSV, "database"), keep))
        parts.append(_select(_queries(root), keep))
    table = _with_coordinates(pa.concat_tables(parts), info)
    table = validate(table, source=root)
    if check_files:
        require_files(table["uri"].to_pylist(), source=root)
    return table


def image_uri(root: str, folder: str, image_id: str) -> str:
    """Where GLDv2 keeps an image: {folder}/{a}/{b}/{c}/{id}.jpg."""
    return join_uri(root, f"{folder}/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg")


def _landmark_info(uri: str) -> pa.Table:
    """The user's landmark table (landmark_id, country and/or lat, lon), one row per landmark."""
    info = read_csv(uri)
    if "landmark_id" not in info.column_names:
        raise ManifestError(f"{uri}: missing column landmark_id; has {info.column_names}")
    ids = info["landmark_id"].to_numpy(zero_copy_only=False)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ManifestError(f"{uri}: landmark_id {unique[counts > 1][0]} is listed more than once")
    return info


def _country_is(info: pa.Table, country: str) -> pa.ChunkedArray:
    """Case- and space-insensitive country match; missing countries never match."""
    names = pc.utf8_lower(pc.utf8_trim_whitespace(info["country"].cast(pa.string())))
    return pc.fill_null(pc.equal(names, country.strip().lower()), False)


def _labelled(root: str, name: str, split: str) -> pa.Table:
    """Rows of a GLDv2 CSV with columns id, landmark_id, in `split`."""
    uri = join_uri(root, name)
    table = read_csv(uri, string_columns=("id",), columns=["id", "landmark_id"])
    return _rows(root, table["id"].to_pylist(), table["landmark_id"].cast(pa.int64()), split)


def _queries(root: str) -> pa.Table:
    """Test images with their (first) landmark from the recognition solution; distractors dropped."""
    uri = join_uri(root, QUERY_CSV)
    solution = read_csv(uri, string_columns=("id", "landmarks"), columns=["id", "landmarks"])
    first = [(value or "").split()[:1] for value in solution["landmarks"].to_pylist()]
    try:
        labels = pa.array([int(f[0]) if f else None for f in first], pa.int64())
    except ValueError as exc:
        raise ManifestError(f"{uri}: landmarks must be integer ids: {exc}") from None
    table = _rows(root, solution["id"].to_pylist(), labels, "query")
    return table.filter(pc.is_valid(table["landmark_id"]))


def _rows(root: str, ids: list[str | None], landmark_ids: pa.Array, split: str) -> pa.Table:
    """image_id, uri, landmark_id, split; images in the split's GLDv2 folder."""
    folder = {"train": "train", "database": "index", "query": "test"}[split]
    return pa.table({
        "image_id": pa.array(ids, pa.string()),
        "uri": pa.array([image_uri(root, folder, i) if i else None for i in ids], pa.string()),
        "landmark_id": landmark_ids,
        "split": pa.array([split] * len(ids), pa.string()),
    })  # fmt: skip


def _select(table: pa.Table, landmark_ids: pa.ChunkedArray | None) -> pa.Table:
    if landmark_ids is None:
        return table
    return table.filter(pc.is_in(table["landmark_id"], value_set=landmark_ids.combine_chunks().cast(pa.int64())))


def _sample(ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """Mask keeping round(fraction * n) ids: those with the smallest SHA-1 of "{seed}:{id}"."""
    keys = [hashlib.sha1(f"{seed}:{i}".encode()).digest() for i in ids]
    order = sorted(range(len(ids)), key=keys.__getitem__)
    mask = np.zeros(len(ids), dtype=bool)
    mask[order[: round(fraction * len(ids))]] = True
    return mask


def _with_coordinates(table: pa.Table, info: pa.Table | None) -> pa.Table:
    """lat, lon of each row's landmark where `info` has them, else 0.0, and has_gps saying which."""
    lat = np.zeros(len(table))
    lon = np.zeros(len(table))
    has_gps = np.zeros(len(table), dtype=bool)
    if info is not None and {"lat", "lon"} <= set(info.column_names):
        coords = info.filter(pc.and_(pc.is_valid(info["lat"]), pc.is_valid(info["lon"])))
        index = pc.index_in(table["landmark_id"], value_set=coords["landmark_id"].combine_chunks().cast(pa.int64()))
        has_gps = pc.is_valid(index).to_numpy(zero_copy_only=False)
        found = pc.fill_null(index, 0).to_numpy()[has_gps]
        lat[has_gps] = coords["lat"].cast(pa.float64()).to_numpy()[found]
        lon[has_gps] = coords["lon"].cast(pa.float64()).to_numpy()[found]
    for name, values in (("lat", lat), ("lon", lon), ("has_gps", has_gps)):
        table = table.append_column(name, pa.array(values))
    return table
