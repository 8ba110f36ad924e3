"""The demo extractors: the `demo` preset loads its shipped weights offline and really segments, estimates depth and
inpaints city captures it never saw; the city's static RGB; the training job end to end on a tiny city."""

import hashlib
import json
import os
import socket

import numpy as np
import pytest
import torch

from vprlib.demo import city as sc
from vprlib.demo.extractors.depth import align, depth_metrics
from vprlib.demo.extractors.segmenter import confusion, iou_per_class
from vprlib.maps import read_maps
from vprlib.models import zoo
from vprlib.models.dynamic import dynamic_mask

ROLES = zoo.SMALL_ROLES


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the demo preset tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def captures():
    """Four headings of a database visit in a city of another seed than the one the demo models were trained on:
    photos (uint8 B,3,H,W), observed ADE20K labels and depth, the dynamic mask, and the photos without it."""
    config = sc.CityConfig(places=8, seed=7)
    city = sc.build_city(config)
    visit = next(v for v in sc.plan_visits(city) if v.split == "database")
    dynamic = sc.dynamic_objects(config, np.array(visit.position[:2]), np.random.default_rng([7, 2, visit.visit_id]))
    maps = [sc.render(city, sc.Camera(visit.position, 90.0 * h), visit.appearance, dynamic, 128, noise_seed=h,
                      static_rgb=True) for h in range(4)]
    stack = {key: torch.from_numpy(np.stack([m[key] for m in maps])) for key in maps[0]}
    return {"image": stack["rgb"].permute(0, 3, 1, 2), "static": stack["rgb_static"].permute(0, 3, 1, 2),
            "labels": stack["obs_seg"], "depth": stack["obs_depth"], "dynamic": stack["dynamic"]}


def test_demo_preset_loads_its_package_weights_offline(offline):
    zoo.check_weights(zoo.DEMO, ROLES)
    identity = zoo.identity(zoo.DEMO, ROLES)
    files = {role: zoo.DEMO_DIR / zoo.small_entries(zoo.DEMO_DIR)[role]["weights"] for role in ROLES}
    for role, path in files.items():
        assert path.is_file() and path.parent == zoo.DEMO_DIR and path.suffix == ".safetensors"
        assert f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}" in identity[role]
    assert sum(path.stat().st_size for path in files.values()) < 8 * 2**20  # a few MB in all
    segmenter, depth, inpainter = (zoo.load(role, zoo.DEMO) for role in ROLES)
    images = torch.rand(2, 3, 128, 128)
    with torch.inference_mode():
        labels, relative = segmenter.labels(images), depth(images)
        mask = torch.zeros(2, 1, 128, 128)
        mask[:, :, 40:80, 30:70] = 1
        filled = inpainter(images, mask)
    assert labels.shape == (2, 128, 128) and segmenter.input_size == 128
    assert relative.shape == (2, 128, 128) and torch.isfinite(relative).all()
    assert filled.shape == images.shape and torch.equal(filled[..., :40, :], images[..., :40, :])
    assert identity["segmenter"].endswith("@128px")
    depth_refiner, seg_refiner = zoo.load("refiners", zoo.DEMO)  # the demo refiners ship too (float16 files)
    assert all(p.dtype == torch.float32 for p in [*depth_refiner.parameters(), *seg_refiner.parameters()])
    assert "refiners" in zoo.identity(zoo.DEMO)


def _miou(models: str, captures: dict) -> float:
    with torch.inference_mode():
        labels = zoo.load("segmenter", models).labels(captures["image"])
    return float(np.nanmean(iou_per_class(confusion(labels, captures["labels"]))))


def test_demo_segmenter_segments_captures_it_never_saw(captures):
    demo, random = _miou(zoo.DEMO, captures), _miou("tiny", captures)
    assert demo > 0.45 and demo > random + 0.3, (demo, random)


def test_demo_depth_and_inpainter_work_on_captures_they_never_saw(captures):
    x = captures["image"].float() / 255
    with torch.inference_mode():
        trained = depth_metrics(zoo.load("depth", zoo.DEMO)(x), captures["depth"])
        untrained = depth_metrics(zoo.load("depth", "tiny")(x), captures["depth"])
        segmenter, inpainter = zoo.load("segmenter", zoo.DEMO), zoo.load("inpainter", zoo.DEMO)
        before = dynamic_mask(segmenter.labels(x))
        after = dynamic_mask(segmenter.labels(inpainter(x, before[:, None].float())))
        truth = captures["dynamic"][:, None].expand(-1, 3, -1, -1)
        filled = inpainter(x, captures["dynamic"][:, None].float())
    assert trained["pearson"].mean() > 0.8 and trained["minmax_rmse"].mean() < 0.15, trained
    assert trained["rmse"].mean() < untrained["rmse"].mean() / 2
    assert before.float().mean() > 0.01 and after.float().mean() < before.float().mean() / 3
    assert ((filled - captures["static"].float() / 255)[truth].abs().mean() * 255) < 25  # 0-255 levels


def test_align_and_depth_metrics():
    metres = torch.tensor([[[2.0, 4.0], [8.0, 0.0]]])  # 0: sky
    inverse = torch.tensor([[[0.5, 0.25], [0.125, 0.0]]])
    assert torch.allclose(align(3 * inverse - 1, inverse), inverse, atol=1e-6)
    exact = depth_metrics(7 * inverse + 2, metres)
    assert exact["rmse"][0] < 1e-6 and exact["abs_rel"][0] < 1e-6 and exact["delta1"][0] == 1
    assert abs(exact["pearson"][0] - 1) < 1e-6 and exact["minmax_rmse"][0] < 1e-6
    flat = depth_metrics(torch.ones(1, 2, 2), metres)  # no information: aligned to the mean
    assert flat["pearson"][0] == 0 and flat["rmse"][0] > 0.3


def test_static_rgb_is_the_capture_without_its_dynamic_objects_and_changes_nothing_else(tmp_path):
    config = sc.CityConfig(places=8, side=32, workers=1)
    assert not config.static_rgb
    sc.generate_city(config, str(tmp_path / "plain"))
    sc.generate_city(sc.CityConfig(places=8, side=32, workers=1, static_rgb=True), str(tmp_path / "static"))
    plain, static = _files(tmp_path / "plain"), _files(tmp_path / "static")
    assert not any(name.startswith("rgb_static/") for name in plain)
    assert {n for n in static if n.startswith("rgb_static/")} == {n.replace("rgb/", "rgb_static/") for n in plain
                                                                  if n.startswith("rgb/")}
    # every file of the default city is the same, but the ground-truth maps' parts hold the photos' absolute paths
    # and config.json says which city it is
    same = {n: h for n, h in plain.items() if not n.startswith(sc.GT_MAPS) and n != "config.json"}
    assert {n: h for n, h in static.items() if n in same} == same
    assert {n for n in static if n.startswith(sc.GT_MAPS)} == {n for n in plain if n.startswith(sc.GT_MAPS)}
    assert read_maps(str(tmp_path / "plain" / sc.GT_MAPS)).drop_columns(["uri"]).equals(
        read_maps(str(tmp_path / "static" / sc.GT_MAPS)).drop_columns(["uri"]))
    from PIL import Image

    differ = 0
    for name in (n for n in plain if n.startswith("rgb/")):
        image_id = name[4:-4]
        rgb = np.asarray(Image.open(tmp_path / "static" / name))
        without = np.asarray(Image.open(tmp_path / "static" / sc.STATIC_RGB / f"{image_id}.png"))
        dynamic = np.load(tmp_path / "static" / "gt" / f"{image_id}.npz")["dynamic"]
        assert np.array_equal(rgb[~dynamic], without[~dynamic])
        differ += int((rgb[dynamic] != without[dynamic]).any(axis=-1).sum())
    assert differ > 0.9 * sum(np.load(tmp_path / "static" / n)["dynamic"].sum() for n in static if n.startswith("gt/"))


def _files(root) -> dict[str, str]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.mark.slow
def test_train_demo_on_a_tiny_city_writes_loadable_safetensors(tmp_path, capsys):
    from vprlib.demo.extractors.export import install
    from vprlib.demo.extractors.job import DemoConfig, train_demo

    city, output = tmp_path / "city", tmp_path / "out"
    sc.generate_city(sc.CityConfig(places=8, side=32, workers=1, static_rgb=True), str(city))
    try:
        train_demo(DemoConfig(city=str(city), output=str(output), arch="tiny", input_size=32, epochs=1, batch_size=8,
                              ray_address="local"))
    finally:
        import ray

        ray.shutdown()  # the run was in this process: leave no Ray behind for the next test module
    weights = output / "weights"
    entries = json.loads((weights / zoo.SMALL_FILE).read_text())
    assert set(entries["roles"]) == set(ROLES) and {e["arch"] for e in entries["roles"].values()} == {"tiny"}
    assert entries["trained"]["segmenter"]["epochs"] == 1 and entries["trained"]["segmenter"]["city"]["side"] == 32
    images = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        assert zoo.load("segmenter", str(weights)).labels(images).shape == (1, 32, 32)
        assert zoo.load("depth", str(weights))(images).shape == (1, 32, 32)
        assert zoo.load("inpainter", str(weights))(images, torch.ones(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    figures = json.loads((output / "evaluation.json").read_text())
    assert figures["images"] == 64 and 0 <= figures["segmenter"]["miou"] <= 1
    assert "demo evaluation" in capsys.readouterr().out
    installed = install(str(weights), tmp_path / "preset")
    assert {p.name for p in installed} == {zoo.SMALL_FILE, *(f"{r}.safetensors" for r in ROLES)}
