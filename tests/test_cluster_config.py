"""cluster.yaml is a valid Ray cluster launcher config (checked against Ray's own schema, offline), and what the jobs
read from the cluster they run on: GPU node types the launcher may add, and whether a local folder can be shared."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_cluster_yaml_validates_against_ray_schema():
    config = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    validate_config(config)
    types = config["available_node_types"]
    assert config["head_node_type"] == "head"
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != "head") <= config["max_workers"]


def test_device_auto_picks_cuda_where_the_launcher_may_start_gpu_nodes(tmp_path):
    """On cluster.yaml's head, GPU nodes start at zero: --device auto must still pick cuda (and cpu elsewhere)."""
    from vprlib.cluster import Cluster, launcher_gpu_types

    config = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    config["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 96, "GPU": 8}  # as `ray up` fills it in
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(yaml.safe_dump(config))
    assert launcher_gpu_types(str(bootstrap)) == ["gpu_worker"]
    assert launcher_gpu_types(str(tmp_path / "absent.yaml")) == []

    def head_alone(bootstrap_config: str, resources: dict) -> Cluster:  # before any scale-up
        return Cluster(resources=resources, node_memory=2.0**34, started_here=False,
                       gpu_node_types=tuple(launcher_gpu_types(bootstrap_config)))

    assert head_alone(str(bootstrap), {"CPU": 8.0}).device("auto") == "cuda"
    assert head_alone(str(tmp_path / "absent.yaml"), {"CPU": 8.0}).device("auto") == "cpu"  # a laptop
    config["available_node_types"]["gpu_worker"]["max_workers"] = 0
    bootstrap.write_text(yaml.safe_dump(config))
    assert head_alone(str(bootstrap), {"CPU": 8.0}).device("auto") == "cpu"
    assert head_alone(str(tmp_path / "absent.yaml"), {"CPU": 16.0, "GPU": 1.0}).device("auto") == "cuda"


def test_a_local_output_is_refused_where_work_spans_several_machines(tmp_path):
    """One node: any folder. Several nodes, or a launcher that may add some: only URLs, `file://` for a folder every
    node mounts."""
    from vprlib.cluster import Cluster, SharedStorageError, launcher_worker_types

    config = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(yaml.safe_dump(config))
    assert launcher_worker_types(str(bootstrap)) == ["cpu_worker", "gpu_worker"]

    def cluster(nodes: int, worker_types: tuple = ()) -> Cluster:
        return Cluster(resources={"CPU": 8.0}, node_memory=2.0**34, started_here=False, gpu_node_types=(),
                       nodes=nodes, worker_node_types=worker_types)

    cluster(1).check_shared("out/maps", "--output")
    for spread in (cluster(3), cluster(1, tuple(launcher_worker_types(str(bootstrap))))):
        for url in ("s3://bucket/maps", "file:///mnt/shared/maps", "gs://bucket/maps"):
            spread.check_shared(url, "--output")
        with pytest.raises(SharedStorageError, match=r"^--output out/maps is a folder on one machine, but the cluster "
                                                      r"spans .*: give s3://\.\.\. \(or another fsspec URL\), or "
                                                      r"file:///.*/out/maps if every node mounts it$"):
            spread.check_shared("out/maps", "--output")
