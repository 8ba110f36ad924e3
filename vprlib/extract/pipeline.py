"""The extraction job on Ray Data (DESIGN.md, "The pipeline"): manifest -> decode -> models -> encode -> Parquet.

CPU tasks decode and resize; the models run on actor pools that load them once (fused: one actor class runs the
whole strategy per batch; pools: one pool per stage, GPU fractions so they share a GPU); CPU tasks encode the maps
and write atomic part files. `run_extract(config)` resumes: ids already in the output are skipped.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vprlib.data.folder import folder_manifest
from vprlib.data.manifest import ManifestError, read_manifest, url_to_fs
from vprlib.extract.config import ExtractConfig
from vprlib.extract.decode import decode_batch, decode_memory
from vprlib.extract.encode import SUMMARY_FILE, carry_columns, encode_batch, output_schema, part_files
from vprlib.extract.loaders import check_weights, models_identity
from vprlib.extract.resume import check_config, drop_rows, duplicate_ids, duplicate_rows, scan_output, write_part
from vprlib.extract.stages import FusedChain, build_stage, stage_plan

STORAGE_ENV_PREFIXES = ("AWS_", "FSSPEC_", "S3_")
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the cluster's config on the head node
MAX_BLOCKS = 4096


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


def storage_env() -> dict[str, str]:
    """The driver's storage settings (endpoint, credentials), handed to the tasks that read and write files."""
    return {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)}


def resolve_device(config: ExtractConfig, bootstrap_config: str = BOOTSTRAP_CONFIG) -> ExtractConfig:
    """--device auto: cuda when the cluster has GPUs now, or when the cluster launcher may start a GPU node type (an
    autoscaling cluster whose GPU nodes start at zero, like cluster.yaml's); cpu otherwise."""
    import ray

    if config.device != "auto":
        return config
    if ray.cluster_resources().get("GPU", 0) > 0:
        return replace(config, device="cuda")
    gpu_types = launcher_gpu_types(bootstrap_config)
    if gpu_types:
        print(f"extract: no GPU in the cluster yet, but the autoscaler may start {', '.join(gpu_types)}: device cuda",
              flush=True)
        return replace(config, device="cuda")
    return replace(config, device="cpu")


def launcher_gpu_types(path: str = BOOTSTRAP_CONFIG) -> list[str]:
    """The worker node types with GPUs that the Ray cluster launcher may start: read from the config `ray up` leaves
    on the head node (resources filled in per instance type), where `ray job submit` runs the driver. [] elsewhere."""
    import yaml  # a dependency of ray

    file = Path(path).expanduser()
    try:
        config = yaml.safe_load(file.read_text()) if file.is_file() else None
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(config, dict):
        return []
    head = config.get("head_node_type")
    types = config.get("available_node_types") or {}
    return [name for name, spec in types.items() if name != head and isinstance(spec, dict)
            and float((spec.get("resources") or {}).get("GPU", 0)) > 0 and spec.get("max_workers", 1) > 0]


def resolve_paths(config: ExtractConfig) -> ExtractConfig:
    """Local --input, --output and --compile-cache as absolute paths: tasks and actors run in other folders, and the
    config written beside the output records where the maps came from."""
    def absolute(path: str) -> str:
        path = path.removeprefix("file://")  # one spelling per local path: resume compares the recorded input
        return path if not path or "://" in path else os.path.abspath(os.path.expanduser(path))

    return replace(config, input=absolute(config.input), output=absolute(config.output),
                   compile_cache=absolute(config.compile_cache))


def _actor_args(config: ExtractConfig, share: float) -> dict:
    """map_batches arguments of a model actor pool; `share` of the per-actor CPUs/GPUs (1/stages in pools mode)."""
    from ray.data import ActorPoolStrategy

    threads = config.actor_threads if config.actor_threads > 1 else None
    compute = ActorPoolStrategy(size=config.actors, max_tasks_in_flight_per_actor=config.prefetch_batches,
                                max_concurrent_calls_per_actor=threads,
                                enable_true_multi_threading=bool(threads and config.concurrent_batches))
    gpus = config.gpus_per_actor * share if config.device == "cuda" else 0
    args = {"compute": compute, "batch_size": config.batch_size, "num_cpus": config.cpus_per_actor * share,
            "num_gpus": gpus}
    if config.compile and config.compile_cache:  # every actor (any node) compiles into, and reuses, one cache
        args["runtime_env"] = {"env_vars": {"TORCHINDUCTOR_CACHE_DIR": config.compile_cache}}
    return args


def max_node_memory() -> float:
    """The largest `memory` resource of the cluster's alive nodes (bytes; what one task may reserve at most)."""
    import ray

    return max((node["Resources"].get("memory", 0.0) for node in ray.nodes() if node.get("Alive")), default=0.0)


def check_resources(config: ExtractConfig, resources: dict, can_grow: bool = True,
                    node_memory: float | None = None) -> None:
    """Fail at once, not hang, when the model actors cannot all start and still leave a CPU for decoding.

    Too few GPUs only warns on a cluster that `can_grow`: an autoscaling cluster (cluster.yaml: GPU nodes start at
    zero) adds GPU nodes once the actors ask for them, and those nodes bring the actors' CPUs too, so a CPU shortfall
    is then no error either. The local Ray a job starts for itself never grows."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    need_cpus = config.actors * config.cpus_per_actor
    need_gpus = config.actors * config.gpus_per_actor if config.device == "cuda" else 0
    if config.device == "cuda" and config.gpus_per_actor == 0:
        raise ResourceError("--device cuda needs --gpus-per-actor above 0: an actor without a GPU cannot use CUDA")
    memory = decode_memory(config.max_image_pixels, config.decode_batch_size, config.side)
    if node_memory is not None and memory > node_memory:
        message = (f"a decode task reserves {memory / 2**30:.1f} GiB for --max-image-pixels "
                   f"{config.max_image_pixels} (decode_memory), more than any node's {node_memory / 2**30:.1f} GiB")
        if not can_grow:
            raise ResourceError(f"{message}: lower --max-image-pixels")
        print(f"extract: warning: {message}: waiting for a larger node", flush=True)
    if need_gpus > gpus and not can_grow:
        raise ResourceError(f"model actors need {need_gpus:g} GPUs (--actors x --gpus-per-actor), but the local Ray "
                            f"this job started has {gpus:g} and cannot add more: use --device cpu or auto, or "
                            f"--ray-address of a cluster with GPUs")
    if need_gpus > gpus:
        print(f"extract: warning: model actors need {need_gpus:g} GPUs (--actors x --gpus-per-actor), the cluster "
              f"has {gpus:g} now: waiting for the autoscaler", flush=True)
    elif need_cpus > cpus - 1:
        raise ResourceError(f"model actors need {need_cpus:g} CPUs (--actors x --cpus-per-actor) and decoding at "
                            f"least 1, but the cluster has {cpus:g}: lower --cpus-per-actor or --actors")


class ResourceError(ValueError):
    """The Ray cluster is too small for the requested actor pools."""


def build_dataset(config: ExtractConfig, todo: pa.Table, schema: pa.Schema, models_json: str):
    """The Ray Data pipeline over the rows still to do; its output rows are (image_id, status) of written rows.

    Only `image_id`, `uri` and a row index flow through the stages; the writers take the other manifest columns from
    one copy of `todo` in the object store (`attach_manifest`), so they keep their exact Arrow types."""
    import ray

    # Tasks that touch storage get the driver's storage settings (a cluster's workers may lack them); Ray merges
    # these env_vars into the job's runtime environment. Model actors never touch storage.
    env = storage_env()
    io_args = {"runtime_env": {"env_vars": env}} if env else {}
    rows = pa.table({"image_id": todo["image_id"], "uri": todo["uri"],
                     "_row": pa.array(range(todo.num_rows), pa.int64())})
    manifest = ray.put(todo)
    block_rows = max(config.decode_batch_size, -(-rows.num_rows // MAX_BLOCKS))
    blocks = [rows.slice(i, block_rows) for i in range(0, rows.num_rows, block_rows)]
    ds = ray.data.from_arrow(blocks)
    # The memory a decode task may need (decode_memory: one image at the pixel limit, measured, plus its batch and
    # the worker) is reserved: it bounds how many run at once, and keeps decoding out of the model actors.
    memory = decode_memory(config.max_image_pixels, config.decode_batch_size, config.side)
    ds = ds.map_batches(decode_batch, batch_size=config.decode_batch_size, num_cpus=1, memory=memory,
                        fn_kwargs={"side": config.side, "max_pixels": config.max_image_pixels}, **io_args)
    if config.mode == "fused":
        ds = ds.map_batches(FusedChain, fn_constructor_kwargs={"config": config}, **_actor_args(config, 1.0))
    else:
        plan = stage_plan(config.strategy)
        for name in plan:
            ds = ds.map_batches(_StageActor, fn_constructor_kwargs={"name": name, "config": config,
                                                                    "last": name == plan[-1]},
                                **_actor_args(config, 1.0 / len(plan)))
    ds = ds.map_batches(encode_batch, batch_size=config.batch_size, num_cpus=1,
                        fn_kwargs={"strategy": config.strategy, "models": models_json,
                                   "seg_probabilities": config.seg_probabilities}, **io_args)
    return ds.map_batches(write_part, batch_size=config.rows_per_file, batch_format="pyarrow", num_cpus=1,
                          fn_kwargs={"output": config.output, "schema": schema, "manifest": manifest}, **io_args)


class _StageActor:
    """One named stage as an actor-pool class (pools mode); the last one drops the images."""

    def __init__(self, name: str, config: ExtractConfig, last: bool):
        self.stage = build_stage(name, config)
        if last:
            self.stage.drops = ("image", "mask")

    def __call__(self, batch):
        return self.stage(batch)


def _run_ray(config: ExtractConfig, todo: pa.Table, schema: pa.Schema, models_json: str) -> dict[str, int]:
    ds = build_dataset(config, todo, schema, models_json)
    counts = {"ok": 0, "error": 0}
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for status, n in zip(*_value_counts(batch["status"]), strict=True):
            counts[status] = counts.get(status, 0) + n
    return counts


def _value_counts(column) -> tuple[list[str], list[int]]:
    counts = pc.value_counts(column)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """A `host:port` (or `ray://host:port`) --ray-address that accepts no connection fails in seconds with one line;
    ray.init would retry for minutes. '', 'auto' and 'local' are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ValueError(f"cannot reach the Ray cluster at --ray-address {address}: {exc.strerror or exc}") from None


def init_ray(config: ExtractConfig) -> bool:
    """Connect to the cluster (--ray-address, or one running here), or start a local one; True when this process
    started it (then no autoscaler will ever add nodes)."""
    import ray
    from ray._private import worker

    if not ray.is_initialized():
        check_ray_address(config.ray_address)
        ray.init(address=config.ray_address or None, logging_level="WARNING")
    node = getattr(worker, "_global_node", None)  # ray.init's own record: a head node only when it started one
    return bool(getattr(node, "head", False))


def run_extract(config: ExtractConfig) -> dict:
    """Run (or resume) the extraction job; return the summary (also written as _extract_summary.json)."""
    import ray

    start = time.perf_counter()
    config = resolve_paths(config)
    config = replace(config, input=input_source(config.input))
    manifest = carry_columns(load_input(config.input))
    check_weights(config.models, config.strategy)
    identity = models_identity(config.models, config.strategy)
    # What makes rows comparable (RESULT_FIELDS), checked before Ray starts; written once the device is resolved.
    columns = [f"{f.name}: {f.type}" for f in manifest.schema]  # parts of one output share one schema

    def config_json() -> str:
        return json.dumps({**json.loads(config.to_json()), "models_identity": identity, "manifest_columns": columns},
                          indent=2)

    check_config(config.output, config_json(), write=False)
    own_cluster = init_ray(config)
    config = resolve_device(config)
    check_resources(config, ray.cluster_resources(), can_grow=not own_cluster, node_memory=max_node_memory())
    check_config(config.output, config_json())
    done = _prepare_output(config)
    todo = manifest.filter(pc.invert(pc.is_in(manifest["image_id"], value_set=done["image_id"])))
    print(f"extract: {manifest.num_rows} rows in the manifest, {manifest.num_rows - todo.num_rows} already written, "
          f"{todo.num_rows} to do", flush=True)
    schema = output_schema(manifest.schema, config.strategy == "synthetic" and config.seg_probabilities)
    if manifest.num_rows == 0 and not part_files(config.output):  # readers still find the table and its schema
        write_part(schema.empty_table(), config.output, schema)
    run_start = time.perf_counter()
    counts = _run_ray(config, todo, schema, json.dumps(identity, sort_keys=True)) if todo.num_rows else {}
    run_seconds = time.perf_counter() - run_start
    summary = summarise(config, manifest, counts, run_seconds, time.perf_counter() - start)
    fs, root = url_to_fs(config.output)
    with fs.open(posixpath.join(root, SUMMARY_FILE), "w") as f:
        f.write(json.dumps(summary, indent=2))
    print_summary(summary)
    return summary


def _prepare_output(config: ExtractConfig) -> pa.Table:
    """Scan the output (removing what a kill left half-written), remove rows a concurrent run duplicated and, with
    --retry-errors, the earlier error rows; return the rows that stay written."""
    done, removed = scan_output(config.output)
    if removed:
        print(f"extract: removed {len(removed)} partial file(s) an interrupted run left", flush=True)
    duplicates = duplicate_rows(done)
    if duplicates.any():
        drop_rows(config.output, done, duplicates)
        print(f"extract: removed {int(duplicates.sum())} duplicate row(s) (two runs wrote into this output at once)",
              flush=True)
        done, _ = scan_output(config.output)  # the repair rewrote parts under new names
    errors = np.asarray(done["status"].to_pylist(), dtype=object) == "error"
    if config.retry_errors and errors.any():
        drop_rows(config.output, done, errors)
        print(f"extract: --retry-errors: redoing {int(errors.sum())} row(s) that failed before", flush=True)
        done = done.filter(pa.array(~errors))
    return done


def summarise(config: ExtractConfig, manifest: pa.Table, counts: dict, run_seconds: float, wall: float) -> dict:
    """Totals over the whole output folder (earlier runs included), checked against the manifest."""
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
    return {
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
        "strategy": config.strategy,
        "mode": config.mode,
        "device": config.device,
    }


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
