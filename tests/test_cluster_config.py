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
