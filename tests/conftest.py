"""Shared fixtures: one local Ray per test module, and a real S3 API (moto's server on loopback), reached through
s3fs/boto3 like a real bucket."""

from __future__ import annotations

import uuid

import pytest

_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """One moto S3 server on a free loopback port for the session; yields its endpoint URL.

    While it runs, AWS_ENDPOINT_URL and dummy credentials are set in the environment (restored afterwards), so
    s3fs, boto3 and subprocesses such as Ray workers reach it with no extra configuration."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        for key, value in _CREDENTIALS.items():
            env.setenv(key, value)
        yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server; yields its `s3://name` prefix."""
    import boto3
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # no client cached from another endpoint or an earlier bucket listing
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    yield f"s3://{name}"
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (2 CPUs) for a test module's runs: the jobs it calls in-process connect to it; shut down after."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", address="local")
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_cluster(monkeypatch):
    """Start a Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`): `start(head_cpus,
    *node_cpus)` returns it; every node is shut down afterwards.

    Its temp folder (and so the address file `ray start` and this class write, which a bare `ray.init()` follows) is
    a private one, so no other Ray process on this machine joins it. Ray Train's placement-group cleaner asks the
    State API of the head's dashboard, once a second, whether the run's controller is alive: the head runs a dashboard
    of its own (one without it advertises the default port, where another cluster's dashboard may answer and refuse),
    and RAY_API_SERVER_ADDRESS names it to every process (else each looks for the cluster among all on this machine,
    and says so)."""
    import shutil
    import tempfile

    from ray.cluster_utils import Cluster

    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    monkeypatch.setenv("RAY_TMPDIR", folder)
    started = []

    def start(head_cpus: float, *node_cpus: float) -> Cluster:
        port = _free_port()
        monkeypatch.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "include_dashboard": True, "dashboard_port": port,
            "dashboard_agent_listen_port": None})
        started.append(cluster)
        for cpus in node_cpus:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        return cluster

    yield start
    for cluster in started:
        cluster.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
