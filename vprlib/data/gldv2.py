"""Google Landmarks Dataset v2 (Weyand et al., CVPR 2020) as a manifest, in one of two protocols.

Layout of the release (local or s3://); each CSV flat under the root or where the release's bucket keeps it:

    metadata/train.csv                          id,url,landmark_id      (train images, train landmark ids)
    metadata/index.csv                          id                      (index images)
    ground_truth/retrieval_solution_v2.1.csv    id,images,Usage         (test image -> its index images)
    {train,index,test}/{a}/{b}/{c}/{abc...}.jpg                         a, b, c: the first three characters of the id

The release numbers index landmarks apart from train landmarks (an index `landmark_id` 1 is not the train
landmark 1), so landmark ids are never compared across the two: each protocol stays within one id space.

- `gldv2_retrieval_manifest`, the GLDv2 retrieval benchmark: every index image is a database row; a test image is a
  query when its retrieval-solution `Usage` is one of `usage` (Public, Private; Ignored images, those showing no
  index landmark, are never queries). Each query row carries `positives`, the index image ids the solution lists
  for it, so a query showing several landmarks is right on an image of any of them. Needs index.csv and the
  retrieval solution.
- `gldv2_paper_manifest`, the paper's protocol (IV-B): the train images of one country's landmarks, a quarter of
  them, split by landmark into train rows and test rows so that no test landmark is seen in training (the paper's
  49,370 + 29,634 = 79,004 images of 4,770 + 5,387 = 10,157 landmarks are one quarter of France's train images).
  Each test landmark's images are divided into query and database rows; query rows carry `positives`, the database
  images of their landmark. Needs train.csv and a country list: GLDv2's CSVs carry no country, but the dataset's
  explorer publishes the train landmarks of each country (`FR.json`, a list of entries with the landmark `id` and
  `name`); a CSV with columns landmark_id,country serves as well.

Every choice is reproducible and independent of file order: a seeded SHA-1 orders images and landmarks. The
quarter keeps the round(fraction * n) images with the smallest SHA-1 of "{seed}:{image id}"; the test landmarks
are the round(test_landmarks * n) smallest by "{seed}:landmark:{id}"; within a test landmark of n >= 2 images the
round(query_fraction * n) smallest by "{seed}:query:{image id}" are queries (at least one, and at least one image
left for the database). A test landmark with a single image has nothing to be found with: its image is a database
row (a distractor for the other queries), never a query. The paper does not give its query/database division.

GLDv2 has no GPS: lat = lon = 0.0 and `has_gps` false on every row; evaluation goes by `positives`
(`metrics.manifest_positives` picks that mode) or by `landmark_id` (mode "landmark", paper protocol only).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vprlib.data.folder import read_csv, require_files
from vprlib.data.manifest import ManifestError, validate
from vprlib.storage import join_uri, url_to_fs

TRAIN_CSV = "train.csv"
INDEX_CSV = "index.csv"
RETRIEVAL_CSV = "retrieval_solution_v2.1.csv"
RELEASE_FOLDERS = ("", "metadata", "ground_truth")  # where a CSV may be: flat, or as in the release's bucket
USAGE_VALUES = ("Public", "Private", "Ignored")
USAGES = ("Public", "Private")  # the scored test images
PAPER_FRACTION = 0.25  # "we only took 1/4 of the train images available for France"
PAPER_IMAGES = {"train": 49_370, "test": 29_634}
PAPER_LANDMARKS = {"train": 4_770, "test": 5_387}
PAPER_TEST_LANDMARKS = PAPER_LANDMARKS["test"] / (PAPER_LANDMARKS["train"] + PAPER_LANDMARKS["test"])
QUERY_FRACTION = 0.5


def gldv2_retrieval_manifest(root: str, usage: tuple[str, ...] = USAGES, check_files: bool = True) -> pa.Table:
    """GLDv2's retrieval benchmark: index images (database) and scored test images (query) with their `positives`.

    usage: which scored test images are queries (Public, Private or both). Columns: image_id, uri, usage (of query
    rows), split (database, query), positives (index image ids; null on database rows), lat, lon, has_gps."""
    bad = sorted(set(usage) - set(USAGES))
    if not usage or bad:
        raise ValueError(f"usage must be some of {list(USAGES)}, got {list(usage)}")
    index_uri = release_csv(root, INDEX_CSV)
    index_ids = read_csv(index_uri, string_columns=("id",), columns=["id"])["id"].to_pylist()
    query_ids, usages, positives = _retrieval_queries(release_csv(root, RETRIEVAL_CSV), usage, index_uri, index_ids)
    database = {"image_id": index_ids, "uri": _uris(root, "index", index_ids), "split": ["database"] * len(index_ids),
                "usage": [None] * len(index_ids), "positives": [None] * len(index_ids)}
    queries = {"image_id": query_ids, "uri": _uris(root, "test", query_ids), "split": ["query"] * len(query_ids),
               "usage": usages, "positives": positives}
    table = pa.table({k: database[k] + queries[k] for k in database}, schema=_schema(usage=pa.string()))
    return _finish(table, root, check_files)


def gldv2_paper_manifest(
    root: str,
    country_list: str,
    country: str | None = None,
    fraction: float = PAPER_FRACTION,
    test_landmarks: float = PAPER_TEST_LANDMARKS,
    query_fraction: float = QUERY_FRACTION,
    seed: int = 0,
    check_files: bool = True,
) -> pa.Table:
    """The paper's protocol: a country's train images, a `fraction` of them, train and test split by landmark.

    country_list: the explorer's per-country JSON or a CSV landmark_id,country (relative to `root` or absolute);
    `country` picks one when the CSV lists several. test_landmarks: the share of the sample's landmarks that are
    test landmarks; query_fraction: the share of each test landmark's images that are queries. Columns: image_id,
    uri, landmark_id, split (train, query, database), positives (database image ids of the query's landmark; null
    on other rows), lat, lon, has_gps."""
    _check_share("fraction", fraction, closed=True)
    _check_share("test_landmarks", test_landmarks)
    _check_share("query_fraction", query_fraction)
    list_uri = join_uri(root, country_list)
    wanted = pa.array(sorted(country_landmarks(list_uri, country)), pa.int64())
    train_uri = release_csv(root, TRAIN_CSV)
    train = read_csv(train_uri, string_columns=("id",), columns=["id", "landmark_id"])
    train = train.filter(pc.is_in(_int_ids(train, "landmark_id", train_uri), value_set=wanted))
    if train.num_rows == 0:
        raise ManifestError(f"{list_uri}: none of its {len(wanted)} landmark(s) has an image in {train_uri}")
    train = train.filter(_sample(train["id"].to_pylist(), fraction, seed))
    ids, labels = train["id"].to_pylist(), train["landmark_id"].cast(pa.int64()).to_pylist()
    splits = _split_by_landmark(ids, labels, test_landmarks, query_fraction, seed)
    table = pa.table({"image_id": ids, "uri": _uris(root, "train", ids), "landmark_id": labels, "split": splits,
                      "positives": _same_landmark(ids, labels, splits)}, schema=_schema(landmark_id=pa.int64()))
    return _finish(table, root, check_files)


def paper_counts(table: pa.Table) -> str:
    """'train A images of B landmarks, test C of D (paper: ...)' for a paper-protocol manifest, '' for others."""
    if "landmark_id" not in table.column_names or "split" not in table.column_names:
        return ""
    train = pc.equal(table["split"], "train")
    test = pc.is_in(table["split"], value_set=pa.array(["query", "database"]))
    images = {"train": pc.sum(train).as_py() or 0, "test": pc.sum(test).as_py() or 0}
    landmarks = {name: len(pc.unique(table.filter(mask)["landmark_id"])) for name, mask in
                 (("train", train), ("test", test))}
    here = (f"train {images['train']:,} images of {landmarks['train']:,} landmarks, "
            f"test {images['test']:,} of {landmarks['test']:,}")
    paper = (f"train {PAPER_IMAGES['train']:,} images of {PAPER_LANDMARKS['train']:,} landmarks, "
             f"test {PAPER_IMAGES['test']:,} of {PAPER_LANDMARKS['test']:,}")
    return f"{here} (paper: {paper})"


def release_csv(root: str, name: str) -> str:
    """The URI of the release's CSV `name` under `root`: flat, or in the release's metadata/ or ground_truth/."""
    fs, base = url_to_fs(root)
    relative = [posixpath.join(folder, name) for folder in RELEASE_FOLDERS]
    found = [r for r in relative if fs.exists(f"{base.rstrip('/')}/{r}")]
    if not found:
        raise ManifestError(f"{name} not found under {root} (looked for {', '.join(relative)})")
    if len(found) > 1:
        raise ManifestError(f"{root}: {name} is there twice ({', '.join(found)}); keep one")
    return join_uri(root, found[0])


def country_landmarks(uri: str, country: str | None = None) -> set[int]:
    """The train landmark ids of a country list: the explorer's per-country JSON (a list of entries with the
    landmark `id`), or a CSV with columns landmark_id,country, of which `country` picks one (case and spaces
    ignored; needed when the CSV lists several countries)."""
    extension = posixpath.splitext(uri)[1].lower()
    if extension == ".json":
        if country is not None:
            raise ManifestError(f"{uri}: a per-country JSON list holds one country; --country is for a CSV list")
        ids = _json_landmarks(uri)
    elif extension == ".csv":
        ids = _csv_landmarks(uri, country)
    else:
        raise ManifestError(f"{uri}: a country list is .json (the explorer's per-country list) or .csv "
                            "(landmark_id,country)")
    if not ids:
        raise ManifestError(f"{uri}: lists no landmark")
    return ids


def image_uri(root: str, folder: str, image_id: str) -> str:
    """Where GLDv2 keeps an image: {folder}/{a}/{b}/{c}/{id}.jpg."""
    return join_uri(root, f"{folder}/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg")


def _retrieval_queries(uri: str, usage: tuple[str, ...], index_uri: str, index_ids: list[str]):
    """(ids, usages, positives) of the retrieval solution's test images whose Usage is in `usage`."""
    solution = read_csv(uri, string_columns=("id", "images", "Usage"), columns=["id", "images", "Usage"])
    known = set(index_ids)
    ids, usages, positives = [], [], []
    columns = (solution[c].to_pylist() for c in ("id", "images", "Usage"))
    for row, (ident, images, use) in enumerate(zip(*columns, strict=True)):
        where = f"{uri}: row {row} (id {ident!r})"
        if use not in USAGE_VALUES:
            raise ManifestError(f"{where}: Usage {use!r} is not one of {list(USAGE_VALUES)}")
        if use not in usage:
            continue
        listed = (images or "").split()
        if not listed or listed == ["None"]:
            raise ManifestError(f"{where}: Usage {use} but no index images")
        missing = next((i for i in listed if i not in known), None)
        if missing is not None:
            raise ManifestError(f"{where}: index image {missing} is not in {index_uri}")
        ids.append(ident)
        usages.append(use)
        positives.append(listed)
    return ids, usages, positives


def _json_landmarks(uri: str) -> set[int]:
    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        raise ManifestError(f"{uri}: file not found")
    try:
        with fs.open(path, "rb") as f:
            entries = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{uri}: not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ManifestError(f"{uri}: expected a list of landmarks (entries with an id), got {type(entries).__name__}")
    ids = set()
    for n, entry in enumerate(entries):
        ident = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(ident, bool) or not (isinstance(ident, int) or (isinstance(ident, str) and ident.isdigit())):
            raise ManifestError(f"{uri}: entry {n}: no integer landmark id (an entry is like {{'id': 1, 'name': ...}})")
        ids.add(int(ident))
    return ids


def _csv_landmarks(uri: str, country: str | None) -> set[int]:
    table = read_csv(uri, string_columns=("country",), columns=["landmark_id", "country"])
    names = pc.utf8_lower(pc.utf8_trim_whitespace(table["country"]))
    present = sorted(pc.unique(names.drop_null()).to_pylist())
    if country is None and len(present) > 1:
        raise ManifestError(f"{uri}: lists {len(present)} countries ({', '.join(present[:10])}); choose one with "
                            "--country")
    if country is not None:
        table = table.filter(pc.fill_null(pc.equal(names, country.strip().lower()), False))
        if table.num_rows == 0:
            raise ManifestError(f"{uri}: no landmark of country {country!r}; countries there: "
                                f"{', '.join(present[:10])}{', ...' if len(present) > 10 else ''}")
    return set(_int_ids(table, "landmark_id", uri).drop_null().to_pylist())


def _int_ids(table: pa.Table, column: str, uri: str) -> pa.ChunkedArray:
    """`column` as int64 (GLDv2 landmark ids are integers); ManifestError naming the file otherwise."""
    try:
        return table[column].cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ManifestError(f"{uri}: {column} must be integer landmark ids: {exc}") from None


def _check_share(name: str, value: float, closed: bool = False) -> None:
    """A share in (0, 1), or (0, 1] when `closed`."""
    if not (0.0 < value < 1.0 or (closed and value == 1.0)):
        raise ValueError(f"{name} must be in (0, {'1]' if closed else '1)'}, got {value}")


def _hash_order(keys: list, salt: str) -> list[int]:
    """Positions of `keys` sorted by the SHA-1 of "{salt}:{key}": a seeded shuffle that ignores the input order."""
    digests = [hashlib.sha1(f"{salt}:{key}".encode()).digest() for key in keys]
    return sorted(range(len(keys)), key=digests.__getitem__)


def _sample(ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """Mask keeping round(fraction * n) ids: those with the smallest SHA-1 of "{seed}:{id}"."""
    mask = np.zeros(len(ids), dtype=bool)
    mask[_hash_order(ids, str(seed))[: round(fraction * len(ids))]] = True
    return mask


def _part(n: int, share: float) -> int:
    """How many of n items go to the first side of a split (test landmarks, a landmark's queries): round(share * n),
    but at least one and at most n - 1, so that both sides get some; 0 when n < 2 (a single item goes to the other
    side)."""
    return 0 if n < 2 else min(max(round(share * n), 1), n - 1)


def _split_by_landmark(ids: list[str], labels: list[int], test_share: float, query_share: float, seed: int):
    """Each image's split: train for train landmarks; query or database for test landmarks (module docstring)."""
    landmarks = sorted(set(labels))
    order = _hash_order(landmarks, f"{seed}:landmark")
    test = {landmarks[i] for i in order[: _part(len(landmarks), test_share)]}
    rows_of: dict[int, list[int]] = defaultdict(list)
    for row, label in enumerate(labels):
        if label in test:
            rows_of[label].append(row)
    splits = ["train"] * len(ids)
    for rows in rows_of.values():
        queries = _part(len(rows), query_share)
        for rank, i in enumerate(_hash_order([ids[r] for r in rows], f"{seed}:query")):
            splits[rows[i]] = "query" if rank < queries else "database"
    return splits


def _same_landmark(ids: list[str], labels: list[int], splits: list[str]) -> list[list[str] | None]:
    """For each query row, the database image ids of its landmark; None for the other rows."""
    database: dict[int, list[str]] = defaultdict(list)
    for ident, label, split in zip(ids, labels, splits, strict=True):
        if split == "database":
            database[label].append(ident)
    return [sorted(database[label]) if split == "query" else None for label, split in zip(labels, splits, strict=True)]


def _uris(root: str, folder: str, ids: list[str]) -> list[str]:
    return [image_uri(root, folder, i) for i in ids]


def _schema(**extra: pa.DataType) -> pa.Schema:
    """image_id, uri, the protocol's own columns, split, positives."""
    return pa.schema([("image_id", pa.string()), ("uri", pa.string()), *extra.items(), ("split", pa.string()),
                      ("positives", pa.list_(pa.string()))])


def _finish(table: pa.Table, root: str, check_files: bool) -> pa.Table:
    """Add lat = lon = 0.0 and has_gps false (GLDv2 has no GPS), validate, check the image files."""
    for name, value in (("lat", 0.0), ("lon", 0.0), ("has_gps", False)):
        table = table.append_column(name, pa.array([value] * table.num_rows))
    table = validate(table, source=root)
    if check_files:
        require_files(table["uri"].to_pylist(), source=root)
    return table
