"""cluster.yaml is a valid Ray cluster launcher config (checked against Ray's own schema, offline)."""

from pathlib import Path

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
    assert any("pip install" in c and "vprlib" in c for c in config["setup_commands"])


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
