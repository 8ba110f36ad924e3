"""The pinned stack and what runs it: deploy/constraints.txt agrees with pyproject.toml and with the environment the
tests run in; the Makefile, the Dockerfile, cluster.yaml and the KubeRay manifests all take their versions from it;
the manifests validate against KubeRay's CRDs (tests/data/kuberay) as a server with strict field validation would,
and their job command lines parse."""

import gzip
import importlib
import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "deploy" / "constraints.txt"
DEV_PINS = ROOT / "deploy" / "constraints-dev.txt"
KUBERAY = ROOT / "deploy" / "kuberay"
CRDS = Path(__file__).resolve().parent / "data" / "kuberay"


def pins(path: Path = PINS) -> dict[str, str]:
    """Package (canonical name) -> pinned version."""
    found = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            found[canonicalize_name(requirement.name)] = spec.version
    return found


def pinned_python() -> tuple[int, int]:
    (major, minor), = re.findall(r"^# python (\d+)\.(\d+)$", PINS.read_text(), re.M)
    return int(major), int(minor)


def image_tag() -> str:
    """What `make image` tags: the package version, the pinned Ray and Python."""
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    major, minor = pinned_python()
    return f"{version}-ray{pins()['ray']}-py{major}{minor}"


def check_pins(requirements: list[str], pinned: dict[str, str]) -> None:
    """Every pin of a requirement lies within its range, and the installed version is the pin."""
    ranges = {canonicalize_name(r.name): r.specifier for r in map(Requirement, requirements)}
    assert set(ranges) <= set(pinned)
    for name, version in pinned.items():
        if name in ranges:
            assert Version(version) in ranges[name], f"{name}=={version} is outside pyproject's {ranges[name]}"
        installed = Version(importlib.metadata.version(name))
        assert installed.public == version, f"the tests run on {name} {installed}, the pin says {version}"


def project() -> dict:
    return pytest.importorskip("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_dependency_has_one_pin_within_its_range_and_the_tests_run_on_the_pins():
    dependencies = project()["dependencies"] + project()["optional-dependencies"]["video"]
    assert set(pins()) == {canonicalize_name(Requirement(r).name) for r in dependencies}
    check_pins(dependencies, pins())
    assert sys.version_info[:2] == pinned_python()


def test_every_test_tool_has_one_pin_within_its_range_and_the_tests_run_on_the_pins():
    """A fresh venv resolves without backtracking (an unpinned moto[server] once walked back to Python 2 packages)."""
    check_pins(project()["optional-dependencies"]["dev"], pins(DEV_PINS))
    assert "-c $(DEV_PINS) -e '.[dev,video]'" in (ROOT / "Makefile").read_text()  # the tests decode videos too


def test_make_builds_the_image_from_rays_image_of_the_pinned_versions():
    make = ["make", "-s", "-C", str(ROOT)]
    assert subprocess.run([*make, "image-tag"], capture_output=True, text=True, check=True).stdout.strip() == (
        image_tag())
    commands = subprocess.run([*make, "-n", "image"], capture_output=True, text=True, check=True).stdout
    major, minor = pinned_python()
    base = f"rayproject/ray:{pins()['ray']}-py{major}{minor}"
    assert f"BASE={base} " in commands and f"BASE={base}-gpu " in commands
    assert f"vprlib:{image_tag()}-cpu" in commands and f"vprlib:{image_tag()}-gpu" in commands
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "FROM ${BASE}" in dockerfile and "-c deploy/constraints.txt ." in dockerfile
    install = re.search(r"^\$\(STAMP\):.*?\n\n", (ROOT / "Makefile").read_text(), re.M | re.S).group(0)
    assert install.count("pip install -q -c $(PINS)") == 2  # PyTorch, then the package: the venv is the pinned stack


def _images(node) -> list[str]:
    """Every container image a YAML document names (`image`, `head_image`, `worker_image` keys)."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in ("image", "head_image", "worker_image") and isinstance(v, str)] + [
            image for v in node.values() for image in _images(v)]
    if isinstance(node, list):
        return [image for v in node for image in _images(v)]
    return []


def test_cluster_yaml_and_kuberay_run_the_pinned_image():
    cpu, gpu = f"vprlib:{image_tag()}-cpu", f"vprlib:{image_tag()}-gpu"
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert cluster["docker"]["image"] == cpu
    assert cluster["available_node_types"]["gpu_worker"]["docker"]["worker_image"] == gpu
    assert not any("pip" in command for command in cluster["setup_commands"])  # nothing resolved at a node's start
    manifests = {path.name: yaml.safe_load(path.read_text()) for path in KUBERAY.glob("*.yaml")}
    raycluster = manifests["raycluster.yaml"]
    assert raycluster["spec"]["rayVersion"] == pins()["ray"]
    groups = {g["groupName"]: g for g in raycluster["spec"]["workerGroupSpecs"]}
    assert _images(raycluster["spec"]["headGroupSpec"]) == _images(groups["cpu"]) == [cpu]
    assert _images(groups["gpu"]) == [gpu]
    assert {image for doc in manifests.values() for image in _images(doc)} == {cpu, gpu}


def strict(schema):
    """A CRD's OpenAPI schema as a JSON schema that refuses unknown fields, as the API server's strict field
    validation (kubectl's default) does; objects that keep unknown fields (x-kubernetes-preserve-unknown-fields) or
    declare additionalProperties are left open."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema


def crd_validators() -> dict[tuple[str, str], jsonschema.Draft202012Validator]:
    """(apiVersion, kind) -> a validator, for every served version of the vendored CRDs."""
    validators = {}
    for path in CRDS.glob("*.yaml.gz"):
        crd = yaml.load(gzip.decompress(path.read_bytes()), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft202012Validator(
                    strict(version["schema"]["openAPIV3Schema"]))
    return validators


@pytest.fixture(scope="module")
def validators():
    return crd_validators()


def _manifests() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(KUBERAY.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text())]


@pytest.mark.parametrize(("name", "doc"), [m for m in _manifests() if m[1]["apiVersion"].startswith("ray.io/")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_manifest_validates_against_the_crd(validators, name, doc):
    errors = sorted(validators[(doc["apiVersion"], doc["kind"])].iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_a_misspelt_or_mistyped_field_fails_validation(validators):
    """The check itself: what a typo in raycluster.yaml would look like is refused."""
    (doc,) = yaml.safe_load_all((KUBERAY / "raycluster.yaml").read_text())
    validator = validators[(doc["apiVersion"], doc["kind"])]
    assert not list(validator.iter_errors(doc))
    misspelt = {**doc, "spec": {**doc["spec"], "workerGroupSpec": doc["spec"]["workerGroupSpecs"]}}
    assert any("workerGroupSpec" in e.message for e in validator.iter_errors(misspelt))
    group = {**doc["spec"]["workerGroupSpecs"][0], "maxReplicas": "eight"}
    mistyped = {**doc, "spec": {**doc["spec"], "workerGroupSpecs": [group]}}
    assert any(list(e.path)[-1] == "maxReplicas" for e in validator.iter_errors(mistyped))


def _job_module(script: str):
    return importlib.import_module(f"jobs.{Path(script).stem}")


def test_kustomization_and_rayjobs_fit_the_cluster_and_their_command_lines_parse():
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    manifests = dict(_manifests())
    jobs = {name: doc for name, doc in manifests.items() if doc["kind"] == "RayJob"}
    assert set(kustomization["resources"]) == set(manifests) - set(jobs)
    assert [image["name"] for image in kustomization["images"]] == ["vprlib"]
    assert {"rayjob-extract.yaml", "rayjob-train.yaml", "rayjob-reindex.yaml"} <= set(jobs)
    for name, job in jobs.items():
        spec = job["spec"]
        # KubeRay's own rules for a job on an existing cluster: a selector naming it, no retries, no cluster spec.
        assert spec["clusterSelector"] == {"ray.io/cluster": manifests["raycluster.yaml"]["metadata"]["name"]}, name
        assert "backoffLimit" not in spec and "rayClusterSpec" not in spec, name
        python, script, *argv = shlex.split(spec["entrypoint"])
        assert python == "python" and script.startswith("/home/ray/vprlib/jobs/"), name  # the image's WORKDIR
        _job_module(script).parse_args(argv)  # a bad flag exits 2
