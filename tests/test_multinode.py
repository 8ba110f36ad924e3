"""The jobs on a Ray cluster of several nodes (`ray.cluster_utils.Cluster` on this machine): a local output refused,
and, in the long tier, each job losing a node mid-way: nothing lost, nothing done twice, the results one node gives.

Outputs are `file://` URLs, the spelling of a folder every node mounts (here, all nodes share this machine's disk)."""

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from vprlib.data.manifest import write_manifest
from vprlib.demo.city import GT_MAPS, CityConfig, generate_city
from vprlib.maps import write_spec

ROOT = Path(__file__).resolve().parents[1]
# What Ray Train's placement-group cleaner logs, about a line a second, when the cluster's State API does not answer
# it (refused by another cluster's dashboard, or none there), or when it has to look for the cluster among several.
CLEANER_NOISE = ("AuthenticationError", "Failed to query Ray Train Controller", "PlacementGroupCleanerMonitor",
                 "Found multiple active Ray instances")
SMALL_TRAINING = ["--backbone", "resnet18", "--descriptor-size", "32", "--batch-size", "16", "--min-images-per-class",
                  "8", "--groups", "2", "--iterations-per-epoch", "6", "--threads", "1"]


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("dense-city")
    generate_city(CityConfig(places=16, side=32, dense_train=8, workers=1), str(root))
    return str(root)


def _job(name: str, *argv: str) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / f"{name}.py"), *argv]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def nodes_hosting(cluster, actor_class: str) -> list:
    """The cluster's worker nodes (not the head) where an alive actor of `actor_class` runs."""
    hosts = {actor["Address"]["NodeID"] for actor in cluster.global_state.actor_table(None).values()
             if actor["State"] == "ALIVE" and actor["ActorClassName"] == actor_class}
    return [node for node in cluster.worker_nodes if node.node_id in hosts]


def _last_epoch(output: Path) -> int:
    """The epoch of the output's last.pt (-1 before the first)."""
    try:
        return torch.load(output / "last.pt", weights_only=True)["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def _wait(job: subprocess.Popen, ready, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and job.poll() is None and not ready():
        time.sleep(0.5)
    assert job.poll() is None and ready(), "the job ended, or the moment to remove a node never came"


def _finish(job: subprocess.Popen, log: Path, timeout_s: float) -> str:
    try:
        job.wait(timeout=timeout_s)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    return log.read_text()


def _load_job(name: str):
    return importlib.import_module(f"jobs.{name}")


@pytest.mark.slow
def test_jobs_refuse_a_local_output_on_a_cluster_of_several_nodes(ray_cluster, tmp_path, capsys):
    """Train, sweep and extract write from every node: a local --output is one line and exit 2 before any work, naming
    the flag and how to name shared storage. (Each job's main, in this process: the checks come before any maps are
    read.)"""
    import ray

    manifest = tmp_path / "manifest.parquet"
    write_manifest(pa.table({"image_id": ["a"], "uri": ["a.jpg"], "lat": [0.0], "lon": [0.0]}), str(manifest))
    local = str(tmp_path / "out")
    maps = str(tmp_path / "m")  # a maps table's record is enough: the refusal comes before any row is read
    write_spec(maps, {"strategy": "synthetic"})
    cluster = ray_cluster(1, 1)
    address = ["--ray-address", cluster.address]
    try:
        codes = [_load_job("train").main(["cosplace", "--maps", maps, "--output", local, *address]),
                 _load_job("tune").main(["--model", "cosplace", "--maps", maps, "--output", local, "--lrs", "1e-4,1e-3",
                                         *address]),
                 _load_job("extract").main(["--input", str(manifest), "--output", local, "--models", "tiny",
                                            *address])]
    finally:
        ray.shutdown()
    line = (f"error: --output {local} is a folder on one machine, but the cluster spans 2 nodes: give s3://... (or "
            f"another fsspec URL), or file://{local} if every node mounts it")
    assert codes == [2, 2, 2]
    assert capsys.readouterr().err.splitlines() == [f"{job}: {line}" for job in ("train", "tune", "extract")]
    assert not os.path.exists(local) or not os.listdir(local)  # nothing written


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(noise in line for noise in CLEANER_NOISE)]


@pytest.mark.long
def test_two_workers_on_two_nodes_train_as_on_one_node_and_log_no_cleaner_errors(ray_cluster, city, tmp_path):
    """DDP with a worker on each of two nodes: the untrained network scores as on one node, and the trained one within
    noise of it (the shards' order may differ); the run's log has none of the placement-group cleaner's lines."""
    def train(output: Path, cpus: str, address: str) -> str:
        job = subprocess.run(_job("train", "cosplace", "--maps", os.path.join(city, GT_MAPS), "--output", output,
                                  *SMALL_TRAINING, "--epochs", "2", "--workers", "2", "--cpus-per-worker", cpus,
                                  "--ray-address", address),
                             capture_output=True, text=True, env=_env(), timeout=500)
        assert job.returncode == 0, job.stderr[-3000:]
        return job.stdout + job.stderr

    alone = tmp_path / "one-node"
    train(str(alone), "0.5", "local")  # the machine's 2 CPUs: two half-CPU workers and the data tasks
    cluster = ray_cluster(1, 2, 2)
    spread = tmp_path / "two-nodes"
    text = train(f"file://{spread}", "2", cluster.address)
    assert text.count("Started training worker group of size 2") == 1 and "world_size=2" in text
    recalls = [[row["recall@1"] for row in pq.read_table(output / "metrics.parquet").to_pylist()]
               for output in (alone, spread)]
    assert len(recalls[0]) == len(recalls[1]) == 3 and recalls[0][0] == recalls[1][0]
    assert abs(recalls[0][-1] - recalls[1][-1]) <= 0.15, recalls
    assert not _noise(text)


@pytest.mark.long
def test_training_that_loses_a_node_resumes_after_its_last_finished_epoch_on_the_nodes_left(ray_cluster, city,
                                                                                          tmp_path):
    """Two DDP workers, one per node; the node of one goes after epoch 1 and none replaces it. The run continues on
    one worker from the last epoch rank 0 finished (not the one before, whose checkpoint Ray had registered), and
    its log holds no flood from Ray Train's placement-group cleaner."""
    cluster = ray_cluster(1, 2, 2)  # the head: the driver and the data tasks; each worker node: one 2-CPU worker
    output = tmp_path / "cosplace"
    log = tmp_path / "train.log"
    argv = _job("train", "cosplace", "--maps", os.path.join(city, GT_MAPS), "--output", f"file://{output}",
                *SMALL_TRAINING, "--epochs", "3", "--workers", "2", "--cpus-per-worker", "2",
                "--ray-address", cluster.address)
    with log.open("w") as out:
        job = subprocess.Popen(argv, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _wait(job, lambda: _last_epoch(output) >= 1, 400)
    cluster.remove_node(nodes_hosting(cluster, "RayTrainWorker")[0])
    done = _last_epoch(output)
    text = _finish(job, log, 500)
    assert job.returncode == 0, text[-3000:]
    assert f"train: resuming from epoch {done} " in text, text[-3000:]
    assert "Started training worker group of size 1" in text  # the nodes left hold one worker
    assert [row["epoch"] for row in pq.read_table(output / "metrics.parquet").to_pylist()] == [0, 1, 2, 3]
    assert torch.load(output / "last.pt", weights_only=True)["epoch"] == 3
    assert not _noise(text)


EXTRACT = ["--strategy", "none", "--models", "tiny", "--side", "32", "--device", "cpu", "--batch-size", "8",
           "--decode-batch-size", "4", "--rows-per-file", "8", "--actors", "2", "--cpus-per-actor", "0.5",
           "--actor-threads", "1"]


def _maps_by_id(output: Path) -> dict[str, tuple]:
    """Each written row's maps and status by image id; asserts no id was written twice."""
    from vprlib.extract import read_maps

    rows = read_maps(str(output), columns=["image_id", "status", "depth", "seg"]).to_pylist()
    ids = [row["image_id"] for row in rows]
    assert len(ids) == len(set(ids)), "rows written twice"
    return {row["image_id"]: (row["status"], row["depth"], row["seg"]) for row in rows}


@pytest.mark.long
def test_extraction_that_loses_a_node_writes_every_row_once_and_the_maps_one_node_writes(ray_cluster, city,
                                                                                        tmp_path):
    one_node = tmp_path / "one-node"
    alone = subprocess.run(_job("extract", "--input", city, "--output", str(one_node), *EXTRACT, "--ray-address",
                                "local"), capture_output=True, text=True, env=_env(), timeout=400)
    assert alone.returncode == 0, alone.stderr[-3000:]
    cluster = ray_cluster(0, 2, 2)  # the head only drives; decoding, the model actors and writing run on the nodes
    output = tmp_path / "maps"
    log = tmp_path / "extract.log"
    with log.open("w") as out:
        job = subprocess.Popen(_job("extract", "--input", city, "--output", f"file://{output}", *EXTRACT,
                                    "--ray-address", cluster.address),
                               env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _wait(job, lambda: len(list(output.glob("part-*.parquet"))) >= 2, 300)
    hosts = nodes_hosting(cluster, "MapWorker(MapBatches(FusedChain))")
    assert hosts, {a["ActorClassName"] for a in cluster.global_state.actor_table(None).values()}
    cluster.remove_node(hosts[0])
    text = _finish(job, log, 400)
    assert job.returncode == 0, text[-3000:]
    assert _maps_by_id(output) == _maps_by_id(one_node)  # every row once, byte for byte what one node wrote


@pytest.mark.long
def test_a_sweep_retries_the_trial_whose_node_is_lost_from_its_last_finished_epoch(ray_cluster, city, tmp_path):
    """The node that runs a trial (its Tune actor, the driver of its Ray Train run) goes: Tune starts the trial again
    on the node left, which resumes after the last epoch it finished; both trials end as a sweep on one node does."""
    cluster = ray_cluster(0, 2, 2)  # the head only drives: the trials, their workers and the data tasks run on nodes
    output = tmp_path / "sweep"
    log = tmp_path / "tune.log"
    argv = _job("tune", "--model", "cosplace", "--maps", os.path.join(city, GT_MAPS), "--output", f"file://{output}",
                *SMALL_TRAINING, "--lrs", "1e-4,1e-3", "--max-epochs", "2", "--cpus-per-worker", "0.5",
                "--concurrent-trials", "1", "--scheduler", "fifo", "--ray-address", cluster.address)
    with log.open("w") as out:
        job = subprocess.Popen(argv, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def trial_epoch() -> int:
        return max((_last_epoch(path.parent) for path in output.glob("trials/*/last.pt")), default=-1)

    _wait(job, lambda: trial_epoch() >= 1, 400)
    trial_nodes = nodes_hosting(cluster, "ImplicitFunc")
    assert trial_nodes, {a["ActorClassName"] for a in cluster.global_state.actor_table(None).values()}
    cluster.remove_node(trial_nodes[0])
    done = trial_epoch()
    text = _finish(job, log, 500)
    assert job.returncode == 0, text[-3000:]
    assert f"train: resuming from epoch {done} " in text, text[-3000:]
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert sorted(r["lr"] for r in results) == [1e-4, 1e-3]
    assert all(r["error"] is None and r["epochs_run"] == 2 for r in results), results
    for metrics in output.glob("trials/*/metrics.parquet"):
        assert [row["epoch"] for row in pq.read_table(metrics).to_pylist()] == [0, 1, 2]


@pytest.mark.long
def test_a_rerun_after_the_head_is_lost_resumes_training_on_a_new_cluster(ray_cluster, city, tmp_path):
    cluster = ray_cluster(1, 2)  # the head: the driver and the data tasks; the node: the worker
    output = tmp_path / "cosplace"

    def run(address: str, log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            return subprocess.Popen(
                _job("train", "cosplace", "--maps", os.path.join(city, GT_MAPS), "--output", f"file://{output}",
                     *SMALL_TRAINING, "--epochs", "2", "--cpus-per-worker", "2", "--ray-address", address),
                env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    first = run(cluster.address, tmp_path / "first.log")
    _wait(first, lambda: _last_epoch(output) >= 1, 400)
    cluster.remove_node(cluster.head_node)
    done = _last_epoch(output)
    _finish(first, tmp_path / "first.log", 120)
    assert first.returncode != 0  # the driver went with the head
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node)
    again = ray_cluster(1, 2)
    second = run(again.address, tmp_path / "second.log")
    text = _finish(second, tmp_path / "second.log", 400)
    assert second.returncode == 0, text[-3000:]
    assert f"train: resuming from epoch {done} " in text, text[-3000:]
    assert [row["epoch"] for row in pq.read_table(output / "metrics.parquet").to_pylist()] == [0, 1, 2]


def _parted_maps(city: str, folder: Path, rows_per_part: int = 16) -> str:
    """The city's ground-truth maps written again in parts of `rows_per_part` rows: many units of indexing work."""
    from vprlib.maps import read_maps, read_spec, table_schema, write_part, write_spec

    gt = os.path.join(city, GT_MAPS)
    table = read_maps(gt)
    write_spec(str(folder), read_spec(gt))
    for start in range(0, table.num_rows, rows_per_part):
        write_part(table.slice(start, rows_per_part), str(folder), table_schema(gt))
    return str(folder)


@pytest.mark.long
def test_a_reindex_that_loses_a_node_builds_every_shard_once_and_the_index_one_node_builds(ray_cluster, city,
                                                                                          tmp_path):
    """Two embedding actors on two nodes; the node of one goes while they embed: the job finishes on the node left,
    each maps part has one embeddings file, each shard was built once, and the index is the one a single node
    builds (files are named by their content, so equal names are equal indexes)."""
    from vprlib.index.search import EMBEDDINGS, read_manifest, read_parts
    from vprlib.maps import part_files, read_spec
    from vprlib.models.cosplace import CosPlace, CosPlaceConfig
    from vprlib.models.encodings import EncodingConfig

    maps = _parted_maps(city, tmp_path / "maps")
    torch.manual_seed(0)
    model = str(tmp_path / "model.pt")
    CosPlace(CosPlaceConfig(backbone="resnet18", descriptor_size=16, encoding=EncodingConfig(num_classes=4))).save(
        model, map_spec=read_spec(maps), input_side=32)
    argv = ["--maps", maps, "--model", model, "--split", "all", "--tile-m", "40", "--actors", "2",
            "--cpus-per-actor", "1", "--batch-size", "4"]
    alone = subprocess.run(_job("index", *argv, "--output", str(tmp_path / "one-node"), "--ray-address", "local"),
                           capture_output=True, text=True, env=_env(), timeout=400)
    assert alone.returncode == 0, alone.stderr[-3000:]
    cluster = ray_cluster(0, 2, 2)  # the head only drives
    local = subprocess.run(_job("index", *argv, "--output", str(tmp_path / "local"), "--ray-address",
                                cluster.address), capture_output=True, text=True, env=_env(), timeout=300)
    assert local.returncode == 2 and f"--output {tmp_path / 'local'} is a folder on one machine" in local.stderr
    output = tmp_path / "index"
    log = tmp_path / "index.log"
    with log.open("w") as out:
        job = subprocess.Popen(_job("index", *argv, "--output", f"file://{output}", "--ray-address", cluster.address),
                               env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _wait(job, lambda: len(list((output / EMBEDDINGS).glob("part-*.parquet"))) >= 2, 300)
    hosts = nodes_hosting(cluster, "MapWorker(MapBatches(PartEmbedder))")
    assert len(hosts) == 2, {a["ActorClassName"] for a in cluster.global_state.actor_table(None).values()}
    cluster.remove_node(hosts[0])
    text = _finish(job, log, 400)
    assert job.returncode == 0, text[-3000:]
    manifest, reference = read_manifest(str(output)), read_manifest(str(tmp_path / "one-node"))
    assert manifest["shards"] == reference["shards"] and manifest["rows"] == reference["rows"]
    parts = read_parts(str(output))
    assert parts.num_rows == len(part_files(maps)) == len(list((output / EMBEDDINGS).glob("*.parquet")))
    assert f"shards built {len(manifest['shards'])}, reused 0" in text
