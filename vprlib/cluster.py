"""The Ray cluster every job runs on: connect (or start a local one), choose the device, check that the work fits.

`connect(address)` returns a `Cluster`: what it has now, whether this process started it (a local Ray never grows)
and which node types the cluster launcher may still add (an autoscaling cluster such as cluster.yaml's, whose
workers start at zero). `Cluster.device("auto")` picks cuda or cpu from that, and `Cluster.check(Need(...))` fails
at once, with one line naming the flag to change, when the requested actors or workers can never start, instead of
letting Ray wait for resources that will not come. `Cluster.check_shared(path, flag)` refuses a local folder for
files that tasks on several machines write. Only public Ray APIs are used.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from vprlib.storage import absolute_path as absolute_path  # re-exported: index/evaluate.py, index/locate.py

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the cluster's config on the head node
STORAGE_ENV_PREFIXES = ("AWS_", "FSSPEC_", "S3_")
DEVICES = ("auto", "cpu", "cuda")


class ResourceError(ValueError):
    """The Ray cluster can never run what was asked of it."""


class SharedStorageError(ValueError):
    """A folder on one machine given where processes on several machines read and write."""


@dataclass(frozen=True)
class Need:
    """What a job's long-lived processes (model actors, training workers) ask for, and what else must fit beside."""

    what: str  # e.g. "model actors", for messages
    count: int  # how many of them
    cpus: float  # CPUs each
    gpus: float  # GPUs each (0 on CPU)
    count_flag: str  # the flags a user changes, for messages
    cpus_flag: str
    gpus_flag: str
    spare_cpus: float = 0.0  # CPUs other tasks need at the same time (decoding)
    task_memory: float = 0.0  # bytes one other task reserves (a decode task), 0 = none
    task_memory_flag: str = ""


@dataclass(frozen=True)
class Cluster:
    resources: dict  # ray.cluster_resources() when connected
    node_memory: float  # the largest `memory` of any alive node (bytes): what one task may reserve at most
    started_here: bool  # this process started a local Ray: nothing will ever add nodes
    gpu_node_types: tuple[str, ...]  # GPU node types the cluster launcher may start
    nodes: int = 1  # alive nodes when connected
    worker_node_types: tuple[str, ...] = ()  # worker node types (any) the cluster launcher may start

    @property
    def can_grow(self) -> bool:
        return not self.started_here

    @property
    def multi_node(self) -> bool:
        """Whether tasks and workers may run on more than one machine: several nodes now, or more may be added."""
        return self.nodes > 1 or bool(self.worker_node_types)

    def check_shared(self, path: str, flag: str) -> None:
        """Refuse a local folder (no URL scheme) for `flag` on a cluster of several machines: each process would write
        its share to its own machine's disk. `file://` names a folder every node mounts (NFS, EFS) and is accepted."""
        if not self.multi_node or "://" in path:
            return
        where = (f"{self.nodes} nodes" if self.nodes > 1
                 else f"the nodes the launcher adds ({', '.join(self.worker_node_types)})")
        raise SharedStorageError(f"{flag} {path} is a folder on one machine, but the cluster spans {where}: give "
                                 f"s3://... (or another fsspec URL), or file://{absolute_path(path)} if every node "
                                 f"mounts it")

    def device(self, requested: str) -> str:
        """`requested`, or for "auto": cuda when the cluster has GPUs or the launcher may add GPU nodes, else cpu."""
        if requested not in DEVICES:
            raise ValueError(f"unknown device {requested!r}; known: {', '.join(DEVICES)}")
        if requested != "auto":
            return requested
        if self.resources.get("GPU", 0) > 0:
            return "cuda"
        if self.gpu_node_types:
            print(f"cluster: no GPU yet, but the autoscaler may start {', '.join(self.gpu_node_types)}: device cuda",
                  flush=True)
            return "cuda"
        return "cpu"

    def check(self, need: Need) -> None:
        """Raise ResourceError when `need` can never be met; warn when it must wait for the autoscaler.

        Too few GPUs only warns on a cluster that can grow: GPU nodes bring their CPUs too, so a CPU shortfall is then
        no error either."""
        cpus, gpus = self.resources.get("CPU", 0), self.resources.get("GPU", 0)
        if need.task_memory and need.task_memory > self.node_memory:
            message = (f"one task reserves {need.task_memory / 2**30:.1f} GiB for {need.task_memory_flag}, more than "
                       f"any node's {self.node_memory / 2**30:.1f} GiB")
            if not self.can_grow:
                raise ResourceError(f"{message}: lower {need.task_memory_flag}")
            print(f"cluster: warning: {message}: waiting for a larger node", flush=True)
        need_cpus, need_gpus = need.count * need.cpus, need.count * need.gpus
        flags = f"{need.count_flag} x {need.gpus_flag}"
        if need_gpus > gpus and not self.can_grow:
            raise ResourceError(f"{need.what} need {need_gpus:g} GPUs ({flags}), but the local Ray this job started "
                                f"has {gpus:g} and cannot add more: use --device cpu or auto, or --ray-address of a "
                                f"cluster with GPUs")
        if need_gpus > gpus:
            print(f"cluster: warning: {need.what} need {need_gpus:g} GPUs ({flags}), the cluster has {gpus:g} now: "
                  f"waiting for the autoscaler", flush=True)
        elif need_cpus > cpus - need.spare_cpus:
            spare = f" and {need.spare_cpus:g} more for other tasks" if need.spare_cpus else ""
            raise ResourceError(f"{need.what} need {need_cpus:g} CPUs ({need.count_flag} x {need.cpus_flag}){spare}, "
                                f"but the cluster has {cpus:g}: lower {need.cpus_flag} or {need.count_flag}")


def check_gpus_per_process(device: str, gpus: float, flag: str) -> None:
    """A CUDA process needs a GPU share: refuse --device cuda with 0 GPUs per actor or worker."""
    if device == "cuda" and gpus <= 0:
        raise ResourceError(f"--device cuda needs {flag} above 0: a process without a GPU cannot use CUDA")


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """A `host:port` (or `ray://host:port`) address that accepts no connection fails in seconds with one line;
    ray.init would retry for minutes. '', 'auto' and 'local' are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ValueError(f"cannot reach the Ray cluster at --ray-address {address}: {exc.strerror or exc}") from None


def connect(address: str = "", bootstrap_config: str = BOOTSTRAP_CONFIG, **init_args) -> Cluster:
    """Connect to the cluster at `address` ('' = one running on this machine or named by RAY_ADDRESS, else start a
    local one; 'local' = always start one), unless this process is connected already."""
    import ray

    from vprlib.console import quiet_ray, quiet_worker

    quiet_ray()  # before ray.init: some of what it filters is said while Ray starts
    if not ray.is_initialized():
        check_ray_address(address)
        ray.init(address=address or None, logging_level="WARNING",
                 runtime_env={"worker_process_setup_hook": quiet_worker}, **init_args)
    return Cluster(resources=ray.cluster_resources(), node_memory=max_node_memory(),
                   started_here=_started_here(), gpu_node_types=tuple(launcher_gpu_types(bootstrap_config)),
                   nodes=sum(1 for node in ray.nodes() if node.get("Alive")),
                   worker_node_types=tuple(launcher_worker_types(bootstrap_config)))


def _started_here() -> bool:
    """Whether this process started the Ray cluster it is connected to: a local Ray's GCS server is its child."""
    import psutil

    return any(child.name() == "gcs_server" for child in psutil.Process().children(recursive=True))


def max_node_memory() -> float:
    import ray

    return max((node["Resources"].get("memory", 0.0) for node in ray.nodes() if node.get("Alive")), default=0.0)


def launcher_gpu_types(path: str = BOOTSTRAP_CONFIG) -> list[str]:
    """The worker node types with GPUs that the Ray cluster launcher may start: read from the config `ray up` leaves
    on the head node (resources filled in per instance type), where `ray job submit` runs the driver. [] elsewhere."""
    return [name for name, spec in _launcher_worker_types(path).items()
            if float((spec.get("resources") or {}).get("GPU", 0)) > 0]


def launcher_worker_types(path: str = BOOTSTRAP_CONFIG) -> list[str]:
    """Every worker node type the Ray cluster launcher may start (from the head's bootstrap config; [] elsewhere)."""
    return list(_launcher_worker_types(path))


def _launcher_worker_types(path: str) -> dict[str, dict]:
    import yaml  # a dependency of ray

    file = Path(path).expanduser()
    try:
        config = yaml.safe_load(file.read_text()) if file.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(config, dict):
        return {}
    head = config.get("head_node_type")
    types = config.get("available_node_types") or {}
    return {name: spec for name, spec in types.items() if name != head and isinstance(spec, dict)
            and spec.get("max_workers", 1) > 0}


def storage_env() -> dict[str, str]:
    """The driver's storage settings (endpoint, credentials), for the tasks that read and write files."""
    return {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)}


def io_task_args() -> dict:
    """Ray remote arguments of a task that touches storage: the driver's storage settings in its environment (a
    cluster's workers may lack them; Ray merges these env_vars into the job's runtime environment)."""
    env = storage_env()
    return {"runtime_env": {"env_vars": env}} if env else {}
