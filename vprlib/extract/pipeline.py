"""The extraction job on Ray Data (paper Fig. 2): manifest -> decode -> models -> encode -> maps table.

CPU tasks read and decode the photos; the models run on actor pools that load them once (fused: one actor runs the
whole strategy per batch; pools: one pool per stage, sharing the GPU); the maps table's writer (vprlib.maps_ray)
encodes them in CPU tasks and writes atomic part files. `run_extract(config)` resumes: ids already written are
skipped.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from vprlib.cluster import Need, check_gpus_per_process, connect, io_task_args
from vprlib.extract.config import ExtractConfig, RunOptions
from vprlib.extract.decode import decode_batch, decode_memory
from vprlib.extract.output import (
    check_config,
    config_record,
    input_source,
    load_input,
    print_summary,
    summarise,
)
from vprlib.extract.stages import STAGES, FusedChain, plan_io
from vprlib.maps import carry_columns, output_schema, part_files, prepare_output, write_part, write_spec
from vprlib.maps_ray import write_dataset
from vprlib.models import zoo
from vprlib.storage import absolute_path

MAX_BLOCKS = 4096


def run_extract(config: ExtractConfig) -> dict:
    """Run (or resume) the extraction job; return the summary (also written as _extract_summary.json)."""
    start = time.perf_counter()
    requested_output = config.output  # `file://` (a folder every node mounts) is dropped by resolve_paths
    config = resolve_paths(config)
    spec, run = config.spec, config.run
    manifest = carry_columns(load_input(config.input))
    zoo.check_weights(spec.models, spec.plan.models)
    identity = zoo.identity(spec.models, spec.plan.models, spec.segmenter_side)
    check_config(config.output, config_record(config, identity, manifest.schema), write=False)  # before Ray starts
    cluster = connect(run.ray_address)
    cluster.check_shared(requested_output, "--output")  # write tasks run on every node
    config = replace(config, run=replace(run, device=cluster.device(run.device)))
    check_gpus_per_process(config.run.device, config.run.gpus_per_actor, "--gpus-per-actor")
    cluster.check(actors_need(config.run, spec.side))
    check_config(config.output, config_record(config, identity, manifest.schema))
    write_spec(config.output, spec.record(identity))
    done = prepare_output(config.output, config.retry_errors, "extract")
    todo = manifest.filter(pc.invert(pc.is_in(manifest["image_id"], value_set=done["image_id"])))
    print(f"extract: {manifest.num_rows} rows in the manifest, {manifest.num_rows - todo.num_rows} already written, "
          f"{todo.num_rows} to do", flush=True)
    if manifest.num_rows == 0 and not part_files(config.output):  # readers still find the table and its schema
        schema = output_schema(manifest.schema, spec)
        write_part(schema.empty_table(), config.output, schema)
    run_start = time.perf_counter()
    counts = write_maps(config, todo, json.dumps(identity, sort_keys=True)) if todo.num_rows else {}
    summary = summarise(config, manifest, counts, time.perf_counter() - run_start, time.perf_counter() - start)
    print_summary(summary)
    return summary


def resolve_paths(config: ExtractConfig) -> ExtractConfig:
    """Local paths made absolute (tasks and actors run in other folders; the config written beside the output
    records where the maps came from), and a folder input named by its manifest."""
    return replace(config, input=input_source(absolute_path(config.input)), output=absolute_path(config.output),
                   run=replace(config.run, compile_cache=absolute_path(config.run.compile_cache)))


def actors_need(run: RunOptions, side: int) -> Need:
    """What the model actors ask of the cluster, with one CPU left for decoding and a decode task's memory."""
    return Need("model actors", run.actors, run.cpus_per_actor, run.gpus_per_actor if run.device == "cuda" else 0,
                "--actors", "--cpus-per-actor", "--gpus-per-actor", spare_cpus=1,
                task_memory=decode_memory(run.max_image_pixels, run.decode_batch_size, side),
                task_memory_flag="--max-image-pixels")


def maps_dataset_of(config: ExtractConfig, todo: pa.Table):
    """The photos of `todo` (image_id, uri) as a Ray Dataset of their maps, decoded and run through the strategy's
    models: batches of `image_id`, `uri`, `_row`, `status`, `error` and the strategy's batch keys (`depth`,
    `seg`...)."""
    run = config.run
    ds = photos_dataset(config, todo)
    if run.mode == "fused":
        return ds.map_batches(FusedChain, fn_constructor_kwargs={"spec": config.spec, "run": run},
                              **actor_args(run, 1.0))
    names = config.spec.plan.stages
    for name, (emit, drop) in zip(names, plan_io(config.spec), strict=True):
        ds = ds.map_batches(STAGES[name], fn_constructor_kwargs={"spec": config.spec, "run": run, "emit": emit,
                                                                 "drop": drop}, **actor_args(run, 1 / len(names)))
    return ds


def photos_dataset(config: ExtractConfig, todo: pa.Table):
    """The photos of `todo` (image_id, uri) decoded by CPU tasks at the maps' side: batches of `image_id`, `uri`,
    `_row`, `image`, `status`, `error` (a photo that cannot be used is an error row). Extraction runs the strategy's
    models on them; locating a batch of photos runs the models and the retriever in one actor."""
    import ray

    run = config.run
    rows = pa.table({"image_id": todo["image_id"], "uri": todo["uri"],
                     "_row": pa.array(range(todo.num_rows), pa.int64())})
    block_rows = max(run.decode_batch_size, -(-rows.num_rows // MAX_BLOCKS))
    ds = ray.data.from_arrow([rows.slice(i, block_rows) for i in range(0, rows.num_rows, block_rows)])
    # A decode task reserves the memory it may need (one image at the pixel limit, its batch, the worker): this
    # bounds how many run at once and keeps decoding out of the model actors.
    return ds.map_batches(decode_batch, batch_size=run.decode_batch_size, num_cpus=1,
                          memory=decode_memory(run.max_image_pixels, run.decode_batch_size, config.spec.side),
                          fn_kwargs={"side": config.spec.side, "max_pixels": run.max_image_pixels}, **io_task_args())


def actor_args(run: RunOptions, share: float) -> dict:
    """map_batches arguments of a model actor pool; `share` of the per-actor CPUs/GPUs (1/stages in pools mode)."""
    from ray.data import ActorPoolStrategy

    threads = run.actor_threads if run.actor_threads > 1 else None
    compute = ActorPoolStrategy(size=run.actors, max_tasks_in_flight_per_actor=run.prefetch_batches,
                                max_concurrent_calls_per_actor=threads,
                                enable_true_multi_threading=bool(threads and run.concurrent_batches))
    gpus = run.gpus_per_actor * share if run.device == "cuda" else 0
    args = {"compute": compute, "batch_size": run.batch_size, "num_cpus": run.cpus_per_actor * share,
            "num_gpus": gpus}
    if run.compile and run.compile_cache:  # every actor (any node) compiles into, and reuses, one cache
        args["runtime_env"] = {"env_vars": {"TORCHINDUCTOR_CACHE_DIR": run.compile_cache}}
    return args


def write_maps(config: ExtractConfig, todo: pa.Table, models_json: str) -> dict[str, int]:
    """Run the pipeline over `todo` into the output; the status counts of the rows written.

    Only `image_id`, `uri` and a row index `_row` flow through it; the writer takes the other manifest columns from
    one copy of `todo` in the object store, so they keep their exact Arrow types."""
    return write_dataset(maps_dataset_of(config, todo), config.output, config.spec, models_json, todo,
                         config.run.rows_per_file, config.run.batch_size)
