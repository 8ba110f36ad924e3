"""A plain folder of photos (local or s3://) with a CSV of where each was taken, as a manifest.

The CSV names each image in one of the columns `image`, `filename` or `uri` (a path relative to the folder, or an
absolute path / URL) and gives `lat`, `lon` in WGS84 degrees; `image_id`, `heading`, `landmark_id`, `split` and any
other column are optional and carried through. Without `image_id`, the image's path as written in the CSV is its id.
Also home of the small helpers the other dataset readers share (`read_csv`, `require_files`).
"""

from __future__ import annotations

import posixpath
from collections import defaultdict

import pyarrow as pa
import pyarrow.csv as pacsv

from vprlib.data.manifest import ManifestError, validate
from vprlib.storage import join_uri, url_to_fs

IMAGE_COLUMNS = ("image", "filename", "uri")


def read_csv(uri: str, string_columns: tuple[str, ...] = (), columns: list[str] | None = None) -> pa.Table:
    """A CSV (local or s3://) as a table; `string_columns` stay text (ids like "0001" are not numbers).

    `columns`: read only these (each must exist), which keeps large files such as GLDv2's train.csv small."""
    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        raise ManifestError(f"{uri}: file not found")
    options = pacsv.ConvertOptions(
        column_types=dict.fromkeys(string_columns, pa.string()), include_columns=columns, strings_can_be_null=True
    )
    try:
        with fs.open(path, "rb") as f:
            return pacsv.read_csv(f, convert_options=options)
    except KeyError as exc:  # a column of `columns` is absent
        raise ManifestError(f"{uri}: missing column; need {columns}: {exc}") from None
    except pa.ArrowInvalid as exc:
        raise ManifestError(f"{uri}: cannot read as CSV: {exc}") from None


def require_files(uris: list[str], source: str) -> None:
    """Raise ManifestError naming the first row whose file does not exist; lists each folder once, not each file."""
    by_folder: dict[str, list[int]] = defaultdict(list)
    paths = []
    for row, uri in enumerate(uris):
        path = url_to_fs(uri)[1]
        paths.append(path)
        by_folder[posixpath.dirname(path)].append(row)
    missing = []
    for folder, rows in by_folder.items():
        fs, _ = url_to_fs(uris[rows[0]])
        try:
            present = {p.rstrip("/") for p in fs.ls(folder, detail=False)}
        except (FileNotFoundError, NotADirectoryError):
            present = set()
        missing.extend(row for row in rows if paths[row] not in present)
    if missing:
        row = min(missing)
        raise ManifestError(f"{source}: row {row}: image file not found: {uris[row]} ({len(missing)} missing in all)")


def folder_manifest(root: str, locations: str = "locations.csv", check_files: bool = True) -> pa.Table:
    """Manifest of the images listed in the CSV `locations` (relative to `root`, or absolute) under `root`.

    Every `uri` comes back absolute (joined to `root`). `check_files` makes sure every listed image exists.
    """
    csv_uri = join_uri(root, locations)
    table = read_csv(csv_uri, string_columns=("image_id", *IMAGE_COLUMNS))
    name = next((c for c in IMAGE_COLUMNS if c in table.column_names), None)
    if name is None:
        raise ManifestError(f"{csv_uri}: no image column (one of {list(IMAGE_COLUMNS)}); has {table.column_names}")
    relative = table[name].to_pylist()
    empty = [row for row, value in enumerate(relative) if not value]
    if empty:
        raise ManifestError(f"{csv_uri}: row {empty[0]}: {name} is empty")
    uris = [join_uri(root, value) for value in relative]
    if "image_id" not in table.column_names:
        table = table.append_column("image_id", pa.array(relative, pa.string()))
    if name != "uri":
        table = table.drop_columns([name])
    if "uri" in table.column_names:
        table = table.drop_columns(["uri"])
    table = table.append_column("uri", pa.array(uris, pa.string()))
    rest = [c for c in table.column_names if c not in ("image_id", "uri")]
    table = validate(table.select(["image_id", "uri", *rest]), source=csv_uri)
    if check_files:
        require_files(uris, source=csv_uri)
    return table

