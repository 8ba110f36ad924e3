"""The extraction job's input and output bookkeeping: which manifest a rerun names, whether an output may be resumed,
what is left to do, and the summary.

Beside its maps table (vprlib.maps) the job writes `_extract_config.json` (the resolved config, the models' identity
and the manifest's columns) and `_extract_summary.json`. A rerun into the same folder must match the config's
RESULT_FIELDS, which decide what a row holds: the input too (ids of another manifest may overlap this one's and pass
for done) and its columns (every part carries them: one schema for all parts).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, fields

import pyarrow as pa
import pyarrow.compute as pc

from vprlib.data.folder import folder_manifest
from vprlib.data.manifest import ManifestError, read_manifest
from vprlib.extract.config import ExtractConfig
from vprlib.maps import duplicate_ids, duplicate_rows, part_files, scan_output
from vprlib.spec import MapSpec
from vprlib.storage import url_to_fs

CONFIG_FILE = "_extract_config.json"
SUMMARY_FILE = "_extract_summary.json"
RESULT_FIELDS = ("input", "manifest_columns", *(f.name for f in fields(MapSpec)), "models_identity")


class OutputMismatchError(ValueError):
    """The output folder holds maps made with other settings; resuming into it would mix them."""


def input_source(uri: str) -> str:
    """The manifest file a folder input stands for (its manifest.parquet or .csv), or `uri` itself: one name per
    input, so a rerun naming the folder or its manifest resumes the same output."""
    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        raise ManifestError(f"input not found: {uri}")
    if fs.isdir(path):
        for name in ("manifest.parquet", "manifest.csv"):
            if fs.exists(posixpath.join(path, name)):
                return uri.rstrip("/") + "/" + name
    return uri


def load_input(uri: str) -> pa.Table:
    """Manifest from a .parquet/.csv file, a folder with manifest.parquet, or a folder of images + locations.csv."""
    source = input_source(uri)
    fs, path = url_to_fs(source)
    if not fs.isdir(path):
        return read_manifest(source)
    return folder_manifest(uri, check_files=False)  # a missing photo becomes an error row, not a refused job


def config_record(config: ExtractConfig, identity: dict, manifest: pa.Schema) -> dict:
    """What `_extract_config.json` holds: the config, the models' identity and the manifest's columns."""
    columns = [f"{f.name}: {f.type}" for f in manifest]
    return {**asdict(config), "models_identity": identity, "manifest_columns": columns}


def _result_fields(record: dict) -> dict:
    """The RESULT_FIELDS of a config record (the spec's fields sit in its `spec` section); a field the record lacks
    is None, so it differs from any value."""
    flat = {**record, **record.get("spec", {})}
    return {k: flat.get(k) for k in RESULT_FIELDS}


def check_config(output: str, record: dict, write: bool = True) -> None:
    """Refuse to resume into maps made with other settings (RESULT_FIELDS), then write the record beside the
    output."""
    fs, root = url_to_fs(output)
    if fs.exists(root) and not fs.isdir(root):
        raise OutputMismatchError(f"--output {output} is a file, not a folder")
    try:
        fs.makedirs(root, exist_ok=True)
    except (NotADirectoryError, FileExistsError) as exc:  # a file on the way: a/file/sub
        raise OutputMismatchError(f"--output {output}: cannot make the folder ({exc.strerror or exc})") from None
    path = posixpath.join(root, CONFIG_FILE)
    if fs.exists(path) and part_files(output):
        with fs.open(path, "r") as f:
            old = _result_fields(json.load(f))
        new = _result_fields(record)
        changed = [k for k in RESULT_FIELDS if old[k] != new[k]]
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            raise OutputMismatchError(f"{output} already holds maps made with other settings ({diffs}); "
                                      f"use another --output or remove it")
    if write:
        with fs.open(path, "w") as f:
            f.write(json.dumps(record, indent=2, sort_keys=True))


def summarise(config: ExtractConfig, manifest: pa.Table, counts: dict, run_seconds: float, wall: float) -> dict:
    """Totals over the whole output folder (earlier runs included), checked against the manifest; written as
    `_extract_summary.json`."""
    everything, _ = scan_output(config.output, clean=False)  # another run may be writing: remove nothing now
    duplicated = len(duplicate_ids(everything["image_id"]))
    written = everything.filter(pa.array(~duplicate_rows(everything)))  # one row per id in the counts
    listed = pc.is_in(written["image_id"], value_set=manifest["image_id"])
    extra = written.num_rows - (pc.sum(listed).as_py() or 0)  # ids no longer in the manifest (rows it dropped)
    written = written.filter(listed)
    statuses = dict(zip(*_value_counts(written["status"]), strict=True)) if written.num_rows else {}
    missing = pc.sum(pc.invert(pc.is_in(manifest["image_id"], value_set=written["image_id"]))).as_py() or 0
    processed = sum(counts.values())
    rows_ok, rows_failed = statuses.get("ok", 0), statuses.get("error", 0)
    summary = {
        "input_rows": manifest.num_rows,
        "rows_ok": rows_ok,
        "rows_failed": rows_failed,
        "rows_missing": missing,
        "duplicate_ids": duplicated,
        "rows_not_in_manifest": extra,
        "failed_fraction": rows_failed / max(1, manifest.num_rows),
        "rows_this_run": processed,
        "images_per_s": processed / run_seconds if run_seconds > 0 and processed else 0.0,
        "wall_s": wall,
        "output": config.output,
        "strategy": config.spec.strategy,
        "mode": config.run.mode,
        "device": config.run.device,
    }
    fs, root = url_to_fs(config.output)
    with fs.open(posixpath.join(root, SUMMARY_FILE), "w") as f:
        f.write(json.dumps(summary, indent=2))
    return summary


def _value_counts(column) -> tuple[list[str], list[int]]:
    counts = pc.value_counts(column)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def print_summary(summary: dict) -> None:
    extra = summary["rows_not_in_manifest"]
    print(f"extract: rows ok {summary['rows_ok']}, rows failed {summary['rows_failed']}, "
          f"missing {summary['rows_missing']}, duplicates {summary['duplicate_ids']}"
          f"{f', {extra} not in the manifest' if extra else ''}; this run {summary['rows_this_run']} rows at "
          f"{summary['images_per_s']:.2f} images/s; wall {summary['wall_s']:.1f} s", flush=True)


def job_failed(summary: dict, config: ExtractConfig) -> str:
    """Why the job should exit non-zero ('' when it succeeded)."""
    if summary["rows_missing"] or summary["duplicate_ids"]:
        return (f"output incomplete: {summary['rows_missing']} missing, {summary['duplicate_ids']} duplicate ids "
                f"(did another run write into this output? rerunning the command completes and de-duplicates it)")
    if summary["failed_fraction"] > config.max_failure_fraction:
        return (f"{summary['rows_failed']} of {summary['input_rows']} rows failed ({summary['failed_fraction']:.1%}), "
                f"above --max-failure-fraction {config.max_failure_fraction:.1%}")
    return ""
