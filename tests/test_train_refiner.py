"""The refiner training (paper III-A): losses and metrics (masks, ignore label), learning on a fixed batch, the models
folder overlay, and end to end on a tiny synthetic city: `none` maps from the tiny random models -> trained refiners
-> `extract --strategy synthetic --models DIR`; bad input is one line before any worker starts."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
import torch.nn.functional as F

from vprlib.data.manifest import read_manifest, write_manifest
from vprlib.demo.city import GT_MAPS, CityConfig, generate_city
from vprlib.maps import read_maps, read_spec, write_part, write_spec
from vprlib.models import zoo
from vprlib.models.refiner import DEPTH_FILE, SEG_FILE, DualEncoderUNet, build_refiners
from vprlib.spec import IGNORE_LABEL
from vprlib.train import refiner as trainer
from vprlib.train.config import train_config
from vprlib.train.data import TrainDataError
from vprlib.train.loop import ResumeError, read_metrics
from vprlib.train.refiner import Scores, depth_loss, refiner_config, refiner_inputs, seg_loss

SIDE = 24
FAST = {"models": "tiny", "side": SIDE, "device": "cpu", "batch_size": 16, "rows_per_file": 32,
        "cpus_per_actor": 0.5, "actor_threads": 1}
TRAIN = {"arch": "tiny", "epochs": 2, "batch_size": 8}


# ----------------------------------------------------------------------------------------------- losses, metrics
def test_depth_loss_ignores_invalid_and_far_pixels():
    gt = torch.tensor([[[0.0, 1 / 300, 0.5, 0.1]]])  # no geometry, beyond 200 m, valid, valid
    pred = torch.tensor([[[7.0, 9.0, 0.5, 0.1]]], requires_grad=True)  # wrong only where ignored
    assert depth_loss(pred, gt, max_depth_m=200.0).item() == 0.0
    assert depth_loss(pred, gt, max_depth_m=400.0).item() == pytest.approx((9 - 1 / 300) / 3)  # now within range
    wrong = torch.tensor([[[7.0, 9.0, 0.7, 0.1]]])
    assert depth_loss(wrong, gt, 200.0).item() == pytest.approx(0.1)  # |0.7 - 0.5| over the two valid pixels
    scores = Scores(max_depth_m=200.0)
    scores.add_depth(wrong, gt)
    assert scores.result()["depth_l1"] == pytest.approx(0.1)
    nothing = depth_loss(pred, torch.zeros_like(gt), 200.0)
    nothing.backward()  # no valid pixel: 0, and still a graph (DDP needs every parameter used)
    assert nothing.item() == 0.0 and pred.grad is not None


def test_seg_loss_skips_the_ignore_label():
    gt = torch.tensor([[[0, 1, IGNORE_LABEL, IGNORE_LABEL]]])
    logits = torch.zeros(1, 4, 1, 4)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = 5.0  # right where labelled
    logits[0, 3, 0, 2:] = 50.0  # confidently "tree" where the ground truth says nothing
    expected = F.cross_entropy(logits[..., :2], gt[..., :2])
    assert seg_loss(logits, gt).item() == pytest.approx(expected.item())
    assert seg_loss(logits, torch.full_like(gt, IGNORE_LABEL)).item() == 0.0
    scores = Scores(200.0)
    scores.add_seg(logits.argmax(1), gt, torch.zeros_like(gt), logits=logits)
    assert scores.result()["val_ce"] == pytest.approx(expected.item()) and scores.result()["miou"] == 1.0


def test_miou_and_dynamic_left():
    gt = torch.tensor([[[0, 0, 1, 1, 2, 2, IGNORE_LABEL, 3]]])
    pred = torch.tensor([[[0, 1, 1, 1, 2, 3, 3, 3]]])
    person, road = 12, 6
    ade = torch.tensor([[[2, person, person, 1, road, person, person, 4]]])  # 4 dynamic pixels, one of them ignored
    scores = Scores(200.0)
    scores.add_seg(pred, gt, ade)
    result = scores.result()
    # IoU: sky 1/2, building 2/3, terrain 1/2, tree 1/2 (the ignored pixel's "tree" does not count)
    assert result["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2 + 1 / 2) / 4)
    assert result["dynamic_left"] == pytest.approx(2 / 3)  # wrong at 1 and 5, right at 2; pixel 6 is ignored
    mapped = trainer.ade_to_refined(torch.tensor([[2, 1, road, 4, person]]))
    assert mapped.tolist() == [[0, 1, 2, 3, IGNORE_LABEL]]  # a dynamic label is none of the four classes
    confusion = torch.tensor([[2.0, 0], [0, 0]])
    assert trainer.mean_iou(confusion) == 1.0  # a class in neither prediction nor ground truth is left out
    x, mask = torch.rand(2, 3, 3), torch.ones(2, 3, 3, dtype=torch.bool)
    assert torch.allclose(trainer.fit_scale_shift(x, 0.3 * x + 0.02, mask), 0.3 * x + 0.02, atol=1e-6)


@pytest.fixture
def one_thread():
    """Tiny tensors on one thread: OpenMP threads spinning against other processes' on 2 busy cores can make a
    sub-second loop take a minute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_refiners_learn_a_fixed_batch(one_thread):
    """A few Adam steps at the paper's learning rate on one batch lower both losses."""
    torch.manual_seed(0)
    depth, seg = torch.rand(4, SIDE, SIDE), torch.randint(0, 150, (4, SIDE, SIDE), dtype=torch.uint8)
    gt_depth = torch.where(torch.rand(4, SIDE, SIDE) < 0.2, 0.0, 0.05 + 0.3 * depth)
    gt_seg = torch.where(seg < 40, 0, torch.where(seg < 80, 1, torch.where(seg < 120, 2, 3)))
    gt_seg[:, :3] = IGNORE_LABEL
    x = refiner_inputs(depth, seg)
    for target, loss_fn, gt in (("depth", lambda o, g: depth_loss(o[:, 0], g, 200.0), gt_depth),
                                ("seg", seg_loss, gt_seg)):
        net = DualEncoderUNet(refiner_config("tiny", target))
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        losses = []
        for _ in range(15):
            loss = loss_fn(net(*x), gt)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.7 * losses[0], (target, losses)


def test_progress_keeps_each_refiners_best_and_stops_early():
    progress = trainer.Progress(("depth", "seg"), early_stop=2)
    assert progress.update("depth", 0.5, 0) and progress.update("seg", 1.4, 0) and progress.score() == 1.9
    assert not progress.update("depth", 0.6, 1) and progress.update("seg", 1.2, 1)
    assert progress.score() == pytest.approx(1.7) and progress.active() == ["depth", "seg"]
    assert not progress.update("depth", float("nan"), 2) and not progress.update("seg", 1.3, 2)
    assert progress.active() == ["seg"] and progress.epoch == {"depth": 0, "seg": 1}  # depth: 2 epochs no better
    assert not progress.update("seg", None, 3) and progress.active() == []  # the run stops
    restored = trainer.Progress(("depth", "seg"), early_stop=2)
    restored.load_state_dict(progress.state_dict())
    assert restored.active() == [] and restored.score() == progress.score()
    assert trainer.Progress(("depth",), early_stop=0).active() == ["depth"]  # 0: never stop


# ----------------------------------------------------------------------------------------------- models folder
def _trained_folder(folder: Path, base: str = "tiny", seg: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        torch.save(DualEncoderUNet(refiner_config("tiny", "depth")).state_dict(), folder / DEPTH_FILE)
        if seg:
            torch.save(DualEncoderUNet(refiner_config("tiny", "seg")).state_dict(), folder / SEG_FILE)
    (folder / "models.json").write_text(json.dumps({"base": base}))
    return folder


def test_models_folder_takes_what_it_lacks_from_its_base(tmp_path):
    folder = _trained_folder(tmp_path / "refiners")
    depth, seg = zoo.load_refiners(str(folder))
    saved = torch.load(folder / DEPTH_FILE, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in depth.state_dict().items())
    assert seg.config.out_channels == 4 and not seg.training
    tiny = zoo.load_segmenter("tiny").state_dict()
    assert all(torch.equal(v, tiny[k]) for k, v in zoo.load_segmenter(str(folder)).state_dict().items())
    identity = zoo.identity(str(folder), ("segmenter", "depth", "refiners"))
    assert identity["depth"] == "random:tiny:seed=0" and identity["segmenter"].startswith("random:tiny:seed=0")
    assert str(folder / DEPTH_FILE) in identity["refiners"] and str(folder / SEG_FILE) in identity["refiners"]
    assert "sha256:" in identity["refiners"]
    zoo.check_weights(str(folder), ("segmenter", "depth", "refiners"))
    torch.save(build_refiners("tiny", 3)[0].state_dict(), folder / DEPTH_FILE)  # other weights, other identity
    assert zoo.identity(str(folder), ("refiners",))["refiners"] != identity["refiners"]
    stacked = tmp_path / "stacked"  # a base may be another folder, named relative to this one
    stacked.mkdir()
    (stacked / "models.json").write_text(json.dumps({"base": "../refiners"}))
    assert zoo.identity(str(stacked), ("segmenter",))["segmenter"].startswith("random:tiny:seed=0")
    assert str(folder / DEPTH_FILE) in zoo.identity(str(stacked), ("refiners",))["refiners"]
    loaded = zoo.load_refiners(str(stacked))[1].state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in seg.state_dict().items())


def test_models_folder_errors(tmp_path):
    depth_only = _trained_folder(tmp_path / "depth-only", seg=False)
    with pytest.raises(FileNotFoundError, match=f"holds {DEPTH_FILE} but not {SEG_FILE}"):
        zoo.load_refiners(str(depth_only))
    with pytest.raises(FileNotFoundError, match=SEG_FILE):
        zoo.check_weights(str(depth_only), ("segmenter", "depth", "refiners"))
    no_base = _trained_folder(tmp_path / "no-base", base=str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="models.json names base"):
        zoo.load_segmenter(str(no_base))
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "models.json").write_text(json.dumps({"base": str(loop)}))
    with pytest.raises(ValueError, match="lead back"):
        zoo.load_depth(str(loop))


# ----------------------------------------------------------------------------------------------- end to end (Ray)
@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", address="local")
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("refiner-city")
    manifest = generate_city(CityConfig(places=8, side=SIDE, workers=1), str(root))
    keep = manifest.filter(pc.is_in(manifest["split"], value_set=pa.array(["train", "val"])))
    write_manifest(keep, str(root / "trainval.parquet"))  # the refiners' rows: 48 train, 16 val
    return str(root)


@pytest.fixture(scope="module")
def none_maps(ray_session, city, tmp_path_factory) -> str:
    from vprlib.extract.config import extract_config
    from vprlib.extract.pipeline import run_extract

    output = str(tmp_path_factory.mktemp("maps") / "none")
    run_extract(extract_config(input=os.path.join(city, "trainval.parquet"), output=output, strategy="none", **FAST))
    return output


@pytest.fixture(scope="module")
def trained(ray_session, city, none_maps, tmp_path_factory) -> Path:
    from vprlib.train import run_training

    output = tmp_path_factory.mktemp("trained") / "refiners"
    run_training(train_config("refiner", none_maps, str(output), targets=os.path.join(city, GT_MAPS), **TRAIN))
    return output



@pytest.mark.slow
def test_training_writes_metrics_checkpoints_and_a_models_folder(trained):
    rows = read_metrics(str(trained)).to_pylist()
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # 0: the untrained networks, before any step
    assert rows[0]["loss"] is None and all(r["loss"] > 0 and r["images_per_s"] > 0 for r in rows[1:])
    for row in rows:
        assert row["depth_l1"] > 0 and 0 <= row["miou"] <= 1 and row["val_ce"] > 0 and row["lr"] == 1e-3
        assert row["dynamic_left"] is None or 0 <= row["dynamic_left"] <= 1
    assert rows[0]["dynamic_left_input"] == 1.0 and 0 <= rows[0]["miou_input"] <= 1 and rows[0]["depth_l1_input"] > 0
    assert rows[-1]["depth_l1"] < rows[0]["depth_l1"] and rows[-1]["val_ce"] < rows[0]["val_ce"]  # it learnt
    assert rows[2]["loss_depth"] < rows[1]["loss_depth"] and rows[2]["loss_seg"] < rows[1]["loss_seg"], rows
    assert rows[-1]["val_loss"] == pytest.approx(min(r["depth_l1"] for r in rows) + min(r["val_ce"] for r in rows))
    best = torch.load(trained / "best.pt", weights_only=True)
    depth, seg = zoo.load_refiners(str(trained))
    for name, net in (("depth", depth), ("seg", seg)):
        assert all(torch.equal(v, best["refiners"][name][k]) for k, v in net.state_dict().items())
        assert net.config == refiner_config("tiny", name)
    assert json.loads((trained / zoo.OVERLAY_FILE).read_text()) == {"base": "tiny"}
    record = json.loads((trained / "model.json").read_text())
    assert record["family"] == "refiner" and record["arch"] == "tiny" and record["map_spec"]["strategy"] == "none"
    assert json.loads((trained / "config.json").read_text())["options"]["target"] == "both"


@pytest.mark.slow
def test_trained_folder_runs_in_the_synthetic_extraction(trained, none_maps, city, tmp_path):
    """`extract --strategy synthetic --models DIR`: S and D from the base (tiny), the trained refiners from DIR;
    its maps are the trained refiners applied to the `none` maps of the same images."""
    from vprlib.extract.config import extract_config
    from vprlib.extract.pipeline import run_extract
    from vprlib.maps import decode_depth, decode_seg

    manifest = tmp_path / "eight.parquet"
    write_manifest(read_manifest(os.path.join(city, "trainval.parquet")).slice(0, 8), str(manifest))
    config = extract_config(input=str(manifest), output=str(tmp_path / "synthetic"), strategy="synthetic",
                            **{**FAST, "models": str(trained)})
    assert run_extract(config)["rows_ok"] == 8
    spec = read_spec(config.output)
    assert spec["models_identity"]["segmenter"] == "random:tiny:seed=0@64px"
    assert str(trained / DEPTH_FILE) in spec["models_identity"]["refiners"]
    unrefined = {r["image_id"]: r for r in read_maps(none_maps).to_pylist()}
    depth_refiner, seg_refiner = zoo.load_refiners(str(trained))
    for row in read_maps(config.output).to_pylist():
        x = unrefined[row["image_id"]]
        inputs = refiner_inputs(torch.from_numpy(decode_depth(x).copy())[None],
                                torch.from_numpy(decode_seg(x).copy())[None])
        with torch.no_grad():
            expected_depth = depth_refiner(*inputs)[0, 0].numpy()
            expected_seg = seg_refiner(*inputs)[0].argmax(0).numpy()
        np.testing.assert_allclose(decode_depth(row), expected_depth, atol=1e-4)
        assert (decode_seg(row) == expected_seg).mean() > 0.99


@pytest.mark.slow
def test_rows_are_paired_with_their_own_ground_truth(ray_session, city, none_maps, tmp_path, monkeypatch):
    """Each input row meets the ground truth of its own image_id, in the split it was asked for (here with the pairs
    written to the output, as when they do not fit in the object store; the training fixture keeps them there)."""
    from vprlib.maps import decode_depth

    gt = os.path.join(city, GT_MAPS)
    monkeypatch.setattr(trainer, "CACHE_SHARE", 0.0)
    ids = {split: trainer.common_ids(none_maps, split, gt, "--maps") for split in ("train", "val")}
    datasets = trainer.paired_datasets([(none_maps, s, ids[s]) for s in ("train", "val")], gt, SIDE, str(tmp_path))
    assert any((tmp_path / "_pairs").iterdir())
    by_input = {decode_depth(r).tobytes(): r["image_id"] for r in read_maps(none_maps).to_pylist()}
    truth = {r["image_id"]: decode_depth(r) for r in read_maps(gt).to_pylist()}
    for split, dataset in zip(("train", "val"), datasets, strict=True):
        rows = dataset.take_all()
        assert len(rows) == len(ids[split]) == {"train": 48, "val": 16}[split]
        assert set(rows[0]) == {"depth", "seg", "gt_depth", "gt_seg"}
        seen = [by_input[np.ascontiguousarray(row["depth"], "<f4").tobytes()] for row in rows]
        assert sorted(seen) == sorted(ids[split].to_pylist())
        for image_id, row in zip(seen, rows, strict=True):
            np.testing.assert_array_equal(row["gt_depth"], truth[image_id])


def _table_like(source: str, output: Path, rows: pa.Table, **spec_changes) -> str:
    """A maps table of `rows` beside a copy of `source`'s spec with some fields changed."""
    output.mkdir(parents=True)
    write_part(rows, str(output), rows.schema)
    write_spec(str(output), {**read_spec(source), **spec_changes})
    return str(output)


@pytest.mark.slow
def test_bad_input_is_one_line_before_any_worker(ray_session, city, none_maps, tmp_path):
    from vprlib.train import run_training

    gt = os.path.join(city, GT_MAPS)
    maps = read_maps(none_maps)

    def fails(error, match, maps_path=none_maps, targets=gt, **changes):
        output = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        with pytest.raises(error, match=match) as info:
            run_training(train_config("refiner", maps_path, str(output), targets=targets, **{**TRAIN, **changes}))
        assert len(str(info.value).splitlines()) == 1
        assert not (output / "config.json").exists()  # refused before the run was set up, let alone its workers

    inpainted = _table_like(none_maps, tmp_path / "inpaint", maps, strategy="inpaint")
    fails(TrainDataError, "strategy 'inpaint'.*unrefined maps", maps_path=inpainted)
    fails(TrainDataError, "--targets .* strategy 'none'.*ground truth", targets=none_maps)
    gt_rows = read_maps(gt)
    elsewhere = _table_like(gt, tmp_path / "gt-elsewhere", gt_rows.filter(pc.equal(gt_rows["split"], "query")))
    fails(TrainDataError, "no image of split 'train' in common", targets=elsewhere)
    fails(TrainDataError, "split 'nowhere' has no ok rows", train_split="nowhere")
    no_seg = _table_like(none_maps, tmp_path / "no-seg", maps.drop_columns(["seg"]))
    fails(TrainDataError, r"no column\(s\) \['seg'\]", maps_path=no_seg)
    other = tmp_path / "other-arch"
    other.mkdir()
    (other / "model.json").write_text(json.dumps({"family": "refiner", "arch": "paper", "target": "both"}))
    with pytest.raises(ResumeError, match="arch: 'paper' -> 'tiny'"):
        run_training(train_config("refiner", none_maps, str(other), targets=gt, **TRAIN))

