"""The maps layout written by the extraction job, and how to read it back (DESIGN.md, "Data layout").

An output folder holds `part-<uuid>.parquet` files (zstd), all with one schema, beside `_extract_config.json`
(the resolved config) and `_extract_summary.json`. One row per input row, with:
- every manifest column, carried through untouched (one named like a column below gets the prefix `input_`);
- `status` ('ok' or 'error') and `error` (one line naming the cause; '' when ok);
- `depth`: binary, raw little-endian float32 of shape (map_height, map_width), row-major. Strategies inpaint and
  none store D's relative inverse depth (larger = closer) normalised per image by DepthEstimator.normalize_depth;
  synthetic stores the depth refiner's output. Empty bytes on error rows.
- `seg`: binary, a PNG (8-bit grayscale) of uint8 labels, shape (map_height, map_width); `seg_classes` says which
  label set: 'ade20k' (0-based ADE20K ids; inpaint, none) or 'refined4' (0 sky, 1 building, 2 terrain incl. road,
  3 tree; synthetic). Empty on error rows.
- `seg_prob` (only with seg_probabilities, synthetic): raw little-endian float16, shape (4, map_height, map_width).
- `map_height`, `map_width` (int32), `dynamic_fraction` (float32: share of pixels S(x) labels dynamic),
  `strategy`, `models` (JSON of loaders.models_identity: what each model of the strategy was loaded from).
Any Parquet reader works: e.g. `np.frombuffer(row["depth"], "<f4").reshape(row["map_height"], row["map_width"])`
and `PIL.Image.open(io.BytesIO(row["seg"]))`. `read_maps`, `decode_depth`, `decode_seg` do exactly that.
"""

from __future__ import annotations

import io
import posixpath
import re
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vprlib.data.manifest import url_to_fs

PART_PREFIX = "part-"
PART_PATTERN = re.compile(r"part-[0-9a-f]{32}\.parquet")
CONFIG_FILE = "_extract_config.json"
SUMMARY_FILE = "_extract_summary.json"
SEG_CLASSES = {"inpaint": "ade20k", "none": "ade20k", "synthetic": "refined4"}

MAP_FIELDS = (
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("depth", pa.binary()),
    pa.field("seg", pa.binary()),
    pa.field("map_height", pa.int32()),
    pa.field("map_width", pa.int32()),
    pa.field("seg_classes", pa.string()),
    pa.field("dynamic_fraction", pa.float32()),
    pa.field("strategy", pa.string()),
    pa.field("models", pa.string()),
)
SEG_PROB_FIELD = pa.field("seg_prob", pa.binary())


def output_schema(manifest_schema: pa.Schema, seg_probabilities: bool = False) -> pa.Schema:
    """Manifest columns followed by the maps columns (the manifest must not share their names: `carry_columns`)."""
    extra = list(MAP_FIELDS) + ([SEG_PROB_FIELD] if seg_probabilities else [])
    return pa.schema([f.remove_metadata() for f in manifest_schema] + extra)


def carry_columns(manifest: pa.Table) -> pa.Table:
    """The manifest with any column named like a maps column renamed `input_<name>` (e.g. the synthetic city's
    ground-truth `dynamic_fraction` becomes `input_dynamic_fraction`), so both survive."""
    taken = {f.name for f in MAP_FIELDS} | {SEG_PROB_FIELD.name, "image", "mask"}
    used = set(manifest.column_names) | taken
    names = []
    for column in manifest.column_names:
        name = column
        if column in taken:
            name = f"input_{column}"
            while name in used:  # the manifest has an input_status already: input_input_status, and so on
                name = f"input_{name}"
            used.add(name)
        names.append(name)
    return manifest.rename_columns(names)


def encode_seg(labels: np.ndarray) -> bytes:
    """uint8 label map (H, W) -> PNG bytes (lossless; fast compression, Parquet's zstd runs on top)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def decode_seg(row: dict) -> np.ndarray:
    """The `seg` column of one output row -> uint8 (map_height, map_width)."""
    with Image.open(io.BytesIO(row["seg"])) as image:
        return np.asarray(image, dtype=np.uint8)


def encode_depth(depth: np.ndarray) -> bytes:
    """float depth (H, W) -> raw little-endian float32 bytes."""
    return np.ascontiguousarray(depth, dtype="<f4").tobytes()


def decode_depth(row: dict) -> np.ndarray:
    """The `depth` column of one output row -> float32 (map_height, map_width)."""
    return np.frombuffer(row["depth"], dtype="<f4").reshape(int(row["map_height"]), int(row["map_width"]))


def decode_seg_prob(row: dict) -> np.ndarray:
    """The `seg_prob` column -> float32 (4, map_height, map_width)."""
    probs = np.frombuffer(row["seg_prob"], dtype="<f2").reshape(-1, int(row["map_height"]), int(row["map_width"]))
    return probs.astype(np.float32)


def part_name() -> str:
    """A new part file's name: `part-<32 hex digits>.parquet`."""
    return f"{PART_PREFIX}{uuid.uuid4().hex}.parquet"


def is_part_name(name: str) -> bool:
    """Whether a file name is one `part_name` makes. Other files in the folder (another tool's `part-00000-....parquet`,
    say) are not this job's: never read as maps, never removed."""
    return PART_PATTERN.fullmatch(name) is not None


def part_files(output: str) -> list[str]:
    """Full paths (with scheme for s3) of the Parquet part files in an output folder, sorted."""
    fs, root = url_to_fs(output)
    fs.invalidate_cache(root)  # other processes write parts: a cached S3 listing would be stale
    if not fs.exists(root) or not fs.isdir(root):
        return []
    names = sorted(p for p in fs.ls(root, detail=False) if is_part_name(posixpath.basename(p)))
    scheme = output.split("://", 1)[0] + "://" if "://" in output else ""
    return [scheme + p if scheme and not p.startswith(scheme) else p for p in names]


def read_maps(path: str, columns: list[str] | None = None) -> pa.Table:
    """All rows of an extraction output folder (local or s3://) as one Arrow table (`.to_pandas()` for pandas)."""
    tables = []
    for part in part_files(path):
        fs, fs_path = url_to_fs(part)
        with fs.open(fs_path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    if not tables:
        raise FileNotFoundError(f"no {PART_PREFIX}*.parquet files in {path}")
    return pa.concat_tables(tables, promote_options="default")


def encode_batch(batch: dict[str, np.ndarray], strategy: str, models: str, seg_probabilities: bool) -> dict:
    """Ray Data task: maps -> the output columns (PNG labels, raw float32 depth); drops images and masks."""
    n = len(batch["status"])
    ok = batch["status"] == "ok"
    side = batch["depth"].shape[-1]
    out = {k: v for k, v in batch.items() if k not in ("image", "mask", "depth", "seg", "seg_prob")}
    out["depth"] = _encode_ok(batch["depth"], ok, encode_depth)
    out["seg"] = _encode_ok(batch["seg"], ok, encode_seg)
    if seg_probabilities and "seg_prob" in batch:
        out["seg_prob"] = _encode_ok(batch["seg_prob"], ok, lambda p: np.ascontiguousarray(p, dtype="<f2").tobytes())
    out["map_height"] = np.full(n, side, dtype=np.int32)
    out["map_width"] = np.full(n, side, dtype=np.int32)
    out["seg_classes"] = np.full(n, SEG_CLASSES[strategy], dtype=object)
    out["dynamic_fraction"] = np.where(ok, batch["dynamic_fraction"], np.nan).astype(np.float32)
    out["strategy"] = np.full(n, strategy, dtype=object)
    out["models"] = np.full(n, models, dtype=object)
    return out


def _encode_ok(maps: np.ndarray, ok: np.ndarray, encode) -> np.ndarray:
    """Encoded bytes per row; b"" for error rows."""
    return np.array([encode(m) if good else b"" for m, good in zip(maps, ok, strict=True)], dtype=object)
