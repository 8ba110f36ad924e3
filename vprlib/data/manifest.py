"""The manifest: one row per photo, the input of every job (docs/DESIGN.md, "Layouts").

Required columns: `image_id` (unique string), `uri` (local path, `file://...` or `s3://...`; a relative path is
taken relative to the manifest's folder), `lat`, `lon` (WGS84 degrees). Optional: `heading` (degrees),
`landmark_id`, `split`, and any ground-truth columns a dataset has; they are carried through untouched.
A manifest file is Parquet or CSV, told apart by its extension (`.parquet`, `.csv`; any other is refused rather
than guessed at).
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vprlib.storage import join_uri, url_to_fs

REQUIRED_COLUMNS = ("image_id", "uri", "lat", "lon")
SPLITS = ("database", "query", "train", "val", "test")
FORMATS = (".parquet", ".csv")  # manifest file extensions, told apart by name
# ids stay strings in CSVs ("0001" is not 1, a 16-hex-digit GLDv2 id is not a number); empty cells are nulls
_CSV_OPTIONS = pacsv.ConvertOptions(
    column_types={"image_id": pa.string(), "uri": pa.string()}, strings_can_be_null=True
)


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the column, row or file at fault."""


class StorageError(OSError):
    """Storage that cannot be reached (endpoint down, no credentials, access refused); the message names the URI."""


def storage_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a storage failure: OSError (s3fs turns refused requests into PermissionError and the
    like) and botocore's own errors, which s3fs passes through for an unreachable endpoint or missing credentials."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no s3fs installed: no botocore errors either
        return (OSError,)
    return OSError, BotoCoreError, ClientError


def check_reachable(uri: str) -> None:
    """Touch `uri`'s storage once (does it exist?); raise StorageError naming `uri` when that fails, so a wrong
    endpoint or missing credentials is a one-line error before any work starts. A missing `uri` is fine here."""
    fs, path = url_to_fs(uri)
    try:
        fs.exists(path)
    except storage_errors() as exc:
        raise StorageError(f"cannot reach storage for {uri}: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    """`exc`'s message on one line (botocore and Arrow messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def validate(table: pa.Table, source: str = "manifest") -> pa.Table:
    """Check the required columns and their values; return the table with canonical column types."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"{source}: missing column(s) {missing}; has {table.column_names}")
    table = _cast(table, "image_id", pa.string(), source)
    table = _cast(table, "uri", pa.string(), source)
    for column in ("lat", "lon", "heading"):
        if column in table.column_names:
            table = _cast(table, column, pa.float64(), source)
    for column in ("image_id", "uri", "lat", "lon"):
        empty = table[column].is_null()
        if column in ("image_id", "uri"):
            empty = pc.or_kleene(empty, pc.equal(pc.utf8_length(table[column]), 0))
        nulls = np.flatnonzero(empty.to_numpy(zero_copy_only=False))
        if len(nulls):
            raise ManifestError(f"{source}: row {int(nulls[0])}: {column} is empty ({len(nulls)} row(s) in all)")
    _check_range(table, "lat", -90.0, 90.0, source)
    _check_range(table, "lon", -180.0, 180.0, source)
    ids = table["image_id"].to_numpy(zero_copy_only=False)
    unique, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if len(unique) != len(ids):
        dup = unique[counts > 1][0]
        rows = np.flatnonzero(ids == dup)[:5].tolist()
        raise ManifestError(f"{source}: duplicate image_id {dup!r} at rows {rows}")
    if "split" in table.column_names:
        bad = set(pc.unique(table["split"].drop_null()).to_pylist()) - set(SPLITS)
        if bad:
            raise ManifestError(f"{source}: unknown split value(s) {sorted(bad)}; known: {list(SPLITS)}")
    return table


def _cast(table: pa.Table, column: str, type_: pa.DataType, source: str) -> pa.Table:
    if table[column].type == type_:
        return table
    try:
        cast = pc.cast(table[column], type_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ManifestError(f"{source}: {_first_uncastable(table[column], type_)}column {column} cannot be read as "
                            f"{type_}: {exc}") from None
    return table.set_column(table.column_names.index(column), column, cast)


def _first_uncastable(values: pa.ChunkedArray, type_: pa.DataType) -> str:
    """'row i: ' for the first value that does not cast on its own (to name the row in an error), else ''."""
    for row, value in enumerate(values.to_pylist()):
        try:
            pc.cast(pa.array([value], values.type), type_)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return f"row {row} ({value!r}): "
    return ""


def _check_range(table: pa.Table, column: str, low: float, high: float, source: str) -> None:
    values = table[column].to_numpy()
    bad = np.flatnonzero(~np.isfinite(values) | (values < low) | (values > high))
    if len(bad):
        row = int(bad[0])
        ident = table["image_id"][row].as_py()
        raise ManifestError(f"{source}: row {row} (image_id {ident!r}): {column}={values[row]} outside [{low}, {high}]")


def read_manifest(path: str) -> pa.Table:
    """Read a Parquet or CSV manifest (local, file:// or s3://), validate it and make every `uri` absolute.

    The extension says which format (FORMATS); a file that does not parse raises ManifestError naming it."""
    extension = posixpath.splitext(path)[1].lower()
    if extension not in FORMATS:
        raise ManifestError(f"manifest {path}: unknown format {extension or '(no extension)'}; "
                            f"expected one of {list(FORMATS)}")
    fs, fs_path = url_to_fs(path)
    if not fs.exists(fs_path):
        raise ManifestError(f"manifest not found: {path}")
    try:
        with fs.open(fs_path, "rb") as f:
            table = pacsv.read_csv(f, convert_options=_CSV_OPTIONS) if extension == ".csv" else pq.read_table(f)
    except (pa.ArrowException, *storage_errors()) as exc:
        raise ManifestError(f"cannot read manifest {path}: {one_line(exc)}") from None
    table = validate(table, source=path)
    base = posixpath.dirname(path) if "://" in path else posixpath.dirname(posixpath.abspath(path))
    uris = [join_uri(base, u) for u in table["uri"].to_pylist()]
    return table.set_column(table.column_names.index("uri"), "uri", pa.array(uris, pa.string()))


def write_manifest(table: pa.Table, path: str) -> None:
    """Validate and write `table` as Parquet (local or s3://)."""
    table = validate(table, source=path)
    fs, fs_path = url_to_fs(path)
    fs.makedirs(posixpath.dirname(fs_path), exist_ok=True)
    with fs.open(fs_path, "wb") as f:
        pq.write_table(table, f, compression="zstd")
