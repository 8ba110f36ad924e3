"""Extraction stages called directly on small batches (no Ray): strategies, error rows, OOM splitting, encoding."""

import dataclasses
import io
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from vprlib.cluster import Cluster, ResourceError, check_gpus_per_process
from vprlib.extract.config import ExtractConfig, extract_config
from vprlib.extract.output import OutputMismatchError, check_config, config_record
from vprlib.extract.pipeline import actor_args, actors_need, resolve_paths
from vprlib.extract.stages import DepthStage, FusedChain, InpaintStage, MaskStage, build_stage, prepare
from vprlib.maps import (
    carry_columns,
    decode_depth,
    decode_seg,
    decode_seg_prob,
    drop_rows,
    duplicate_rows,
    encode_batch,
    output_schema,
    prepare_output,
    read_maps,
    scan_output,
    write_part,
)
from vprlib.models import zoo
from vprlib.models.dpt import normalize_depth

SIDE = 32


def _config(**kwargs) -> ExtractConfig:
    return extract_config(**{"input": "in", "output": "out", "models": "tiny", "side": SIDE, "device": "cpu", **kwargs})


def _record(config: ExtractConfig) -> dict:
    return config_record(config, {"segmenter": "random"}, pa.schema([("image_id", pa.string())]))


def _batch(n: int = 3, bad: tuple[int, ...] = (1,)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    status = np.array(["error" if i in bad else "ok" for i in range(n)], dtype=object)
    return {
        "image_id": np.array([f"id{i}" for i in range(n)], dtype=object),
        "image": rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8),
        "status": status,
        "error": np.array(["decode failed" if s == "error" else "" for s in status], dtype=object),
    }


class CarsWhereBright(nn.Module):
    """The tiny segmenter, but pixels brighter than 0.8 are cars (ADE20K 20): some images hold dynamic pixels, and
    the inpainting path runs."""

    def __init__(self):
        super().__init__()
        self.inner = zoo.load_segmenter("tiny")

    def labels(self, images, size=None):
        labels = self.inner.labels(images, size)
        return torch.where(images.mean(dim=1) > 0.8, torch.full_like(labels, 20), labels)


def _bright_batch() -> dict[str, np.ndarray]:
    """_batch(), with a bright square in row 0 only: dynamic there, nowhere else."""
    batch = _batch()
    batch["image"] = (batch["image"] // 2).astype(np.uint8)
    batch["image"][0, 4:12, 4:12] = 250
    return batch


@pytest.mark.parametrize("strategy", ["inpaint", "synthetic", "none"])
def test_fused_chain_matches_separate_stages(strategy):
    config = _config(strategy=strategy, seg_probabilities=True)
    models = {"segmenter": CarsWhereBright()}
    fused = FusedChain(config.spec, config.run, models)(_bright_batch())
    separate = _bright_batch()
    for name in config.spec.plan.stages:
        separate = build_stage(name, config.spec, config.run, models)(separate)
    assert fused["dynamic_fraction"][0] > 0 and fused["dynamic_fraction"][2] == 0  # the inpaint path ran on row 0
    assert set(fused) == set(separate)  # the same keys leave the chain, whichever way it runs
    assert list(fused["status"]) == ["ok", "error", "ok"] and fused["error"][1] == "decode failed"
    assert fused["depth"].shape == (3, SIDE, SIDE) and fused["depth"].dtype == np.float32
    assert fused["seg"].shape == (3, SIDE, SIDE) and fused["seg"].dtype == np.uint8
    assert (fused["depth"][1] == 0).all() and (fused["seg"][1] == 0).all()  # error rows are not computed
    # pools hand inpainted images on as uint8, so allow a rounding-sized difference there
    assert np.abs(fused["depth"] - separate["depth"]).max() < (0.05 if strategy == "inpaint" else 1e-5)
    assert (fused["seg"] != separate["seg"]).mean() < (0.05 if strategy == "inpaint" else 1e-9)
    if strategy == "synthetic":
        assert fused["seg"].max() < 4  # refined classes: sky, building, terrain, tree
        assert np.allclose(fused["seg_prob"][[0, 2]].astype(np.float32).sum(axis=1), 1.0, atol=1e-2)
    else:
        assert fused["seg"].max() < 150


class DynamicEverywhere(nn.Module):
    """A segmenter that calls every pixel a car (ADE20K 20)."""

    def labels(self, images, size=None):
        return torch.full((images.shape[0], *images.shape[-2:]), 20, dtype=torch.long)


class Grey(nn.Module):
    """An inpainter that fills holes with grey."""

    def forward(self, images, mask):
        return torch.where(mask > 0, torch.full_like(images, 0.5), images)


def test_mask_and_inpaint_stages():
    config = _config()
    batch = MaskStage(config.spec, config.run, {"segmenter": DynamicEverywhere()})(_batch())
    assert batch["mask"][[0, 2]].all() and not batch["mask"][1].any()
    assert np.allclose(batch["dynamic_fraction"][[0, 2]], 1.0)
    out = InpaintStage(config.spec, config.run, {"inpainter": Grey()})(batch)
    assert (np.abs(out["image"][[0, 2]].astype(int) - 128) <= 1).all()
    assert (out["image"][1] == batch["image"][1]).all()  # error row untouched


class CountingSegmenter(nn.Module):
    """Labels every pixel `label`, and records the batch sizes it was called with."""

    def __init__(self, label: int):
        super().__init__()
        self.label, self.sizes = label, []

    def labels(self, images, size=None):
        self.sizes.append(images.shape[0])
        return torch.full((images.shape[0], *images.shape[-2:]), self.label, dtype=torch.long)


@pytest.mark.parametrize(("label", "calls"), [(2, [2]), (20, [2, 2])], ids=["static-sky", "all-car"])
def test_fused_inpaint_segments_again_only_inpainted_images(label, calls):
    segmenter = CountingSegmenter(label)
    config = _config()
    out = FusedChain(config.spec, config.run, {"segmenter": segmenter, "inpainter": Grey()})(_batch())
    assert segmenter.sizes == calls  # S(x) on the 2 ok rows; S(y) only where LaMa changed the image
    assert (out["seg"][[0, 2]] == label).all()
    assert np.allclose(out["dynamic_fraction"][[0, 2]], 1.0 if label == 20 else 0.0)


class MarkedCars(nn.Module):
    """Calls an image all car (ADE20K 20) when its first pixel is bright, else all sky; records batch sizes."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def labels(self, images, size=None):
        self.sizes.append(images.shape[0])
        car = images[:, 0, 0, 0] > 0.5
        return torch.where(car[:, None, None], 20, 2).expand(-1, *images.shape[-2:]).long()


class CountingGrey(Grey):
    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, images, mask):
        self.sizes.append(images.shape[0])
        return super().forward(images, mask)


def test_subsets_are_padded_to_power_of_two_buckets():
    batch = _batch(n=8, bad=())
    batch["image"][:, 0, 0, :] = 0
    cars = [0, 3, 5]
    batch["image"][cars, 0, 0, :] = 255
    segmenter, inpainter = MarkedCars(), CountingGrey()
    config = _config()
    out = FusedChain(config.spec, config.run, {"segmenter": segmenter, "inpainter": inpainter})(batch)
    assert inpainter.sizes == [4]  # 3 images with holes, padded to 4
    assert segmenter.sizes == [8, 4]  # S(x) on all, S(y) on the 3 inpainted (padded to 4)
    # grey images are not 'car' any more; the others keep their S(x) labels
    assert (out["seg"][cars] == 2).all() and (out["seg"][[1, 2, 4, 6, 7]] == 2).all()
    assert np.allclose(out["dynamic_fraction"][cars], 1.0)


class OomDepth(nn.Module):
    """Depth that raises CUDA OOM for batches larger than `fits` (0: always); records the batch sizes it saw."""

    def __init__(self, fits: int):
        super().__init__()
        self.fits, self.sizes = fits, []

    def forward(self, images):
        self.sizes.append(images.shape[0])
        if images.shape[0] > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return images.mean(dim=1)

    normalize_depth = staticmethod(normalize_depth)


def test_cuda_oom_splits_the_batch_and_remembers():
    model = OomDepth(fits=2)
    config = _config()
    stage = DepthStage(config.spec, config.run, {"depth": model})
    batch = _batch(n=7, bad=())
    out = stage(batch)
    assert (out["status"] == "ok").all()
    expected = normalize_depth(torch.from_numpy(batch["image"]).float().div(255).mean(dim=-1)).numpy()
    assert np.allclose(out["depth"], expected, atol=1e-6)
    assert stage.oom.limit <= 2
    model.sizes.clear()
    stage(_batch(n=5, bad=()))
    assert max(model.sizes) <= 2  # later batches start at the size that fitted


def test_compiled_stages_pad_every_batch_to_one_shape():
    model = OomDepth(fits=99)
    config = _config(batch_size=8)
    stage = DepthStage(config.spec, config.run, {"depth": model})
    stage.run = dataclasses.replace(stage.run, compile=True)  # padding only; no compilation in a unit test
    batch = _batch(n=5, bad=(1,))  # 4 ok rows
    out = stage(batch)
    assert model.sizes == [8]
    expected = normalize_depth(torch.from_numpy(batch["image"]).float().div(255).mean(dim=-1)).numpy()
    ok = [0, 2, 3, 4]
    assert out["depth"].shape == (5, SIDE, SIDE) and np.allclose(out["depth"][ok], expected[ok], atol=1e-6)
    model.fits = 4  # an OOM split: later batches are padded to the size that fitted, not back to 8
    stage(_batch(n=8, bad=()))
    stage(_batch(n=3, bad=()))
    assert model.sizes == [8, 8, 4, 4, 4] and stage.oom.limit == 4


def test_compiled_chain_pads_subsets_to_the_batch():
    batch = _batch(n=8, bad=())
    batch["image"][:, 0, 0, :] = 0
    batch["image"][[0, 3, 5], 0, 0, :] = 255
    segmenter, inpainter = MarkedCars(), CountingGrey()
    config = _config(batch_size=16)
    chain = FusedChain(config.spec, config.run, {"segmenter": segmenter, "inpainter": inpainter})
    for stage in [chain, *chain.stages]:  # padding only; no compilation in a unit test
        stage.run = dataclasses.replace(stage.run, compile=True)
    chain(batch)
    assert inpainter.sizes == [16] and segmenter.sizes == [16, 16]  # 8 rows padded to the batch, 3 cars too


def test_fused_chain_splits_on_oom():
    config = _config(strategy="none")
    chain = FusedChain(config.spec, config.run, {"depth": OomDepth(fits=1)})
    out = chain(_batch(n=4, bad=()))
    assert (out["status"] == "ok").all() and chain.oom.limit == 1


def test_oom_at_batch_size_one_fails_only_those_rows():
    config = _config()
    out = DepthStage(config.spec, config.run, {"depth": OomDepth(fits=0)})(_batch(n=3, bad=(1,)))
    assert list(out["status"]) == ["error"] * 3
    assert "depth stage failed: OutOfMemoryError" in out["error"][0] and out["error"][1] == "decode failed"


def test_encode_write_and_read_back(tmp_path):
    config = _config(strategy="synthetic", seg_probabilities=True)
    maps = FusedChain(config.spec, config.run)(_batch())
    manifest = pa.table({"image_id": ["id0", "id1", "id2"], "uri": ["a", "b", "c"], "lat": [1.0] * 3,
                         "lon": [2.0] * 3, "dynamic_fraction": [0.5] * 3})
    manifest = carry_columns(manifest)
    assert "input_dynamic_fraction" in manifest.column_names
    batch = {**maps, **{c: np.array(manifest[c].to_pylist(), dtype=object) for c in ("uri", "lat", "lon")}}
    encoded = encode_batch(batch, config.spec, '{"m": "tiny"}')
    schema = output_schema(manifest.schema, config.spec)
    written = write_part(pa.table(encoded), str(tmp_path), schema)
    assert written.column("status").to_pylist() == ["ok", "error", "ok"]
    table = read_maps(str(tmp_path))
    assert table.schema == schema and table["input_dynamic_fraction"].null_count == 3
    rows = table.to_pylist()
    assert np.array_equal(decode_depth(rows[0]), maps["depth"][0])
    assert np.array_equal(decode_seg(rows[2]), maps["seg"][2])
    assert np.allclose(decode_seg_prob(rows[0]), maps["seg_prob"][0].astype(np.float32))
    assert rows[1]["depth"] == b"" and rows[1]["error"] == "decode failed" and rows[0]["seg_classes"] == "refined4"
    # portable: plain pyarrow + PIL read the same maps
    plain = pq.read_table(str(tmp_path)).to_pylist()[0]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(plain["seg"]))), maps["seg"][0])


@pytest.mark.parametrize("strategy", ["inpaint", "synthetic"])
def test_rgb_stores_the_photo_the_maps_were_made_from(tmp_path, strategy):
    """--rgb: the photo at the maps' side in column `rgb`, whichever way the chain runs; inpaint stores the photo
    after inpainting (what its maps saw), synthetic the photo itself. Without it there is no such column."""
    from vprlib.maps import decode_rgb

    config = _config(strategy=strategy, rgb=True)
    models = {"segmenter": CarsWhereBright()}
    fused = FusedChain(config.spec, config.run, models)(_bright_batch())
    separate = _bright_batch()
    for name in config.spec.plan.stages:
        separate = build_stage(name, config.spec, config.run, models)(separate)
    photo = _bright_batch()["image"]
    for maps in (fused, separate):
        assert maps["image"].shape == photo.shape and maps["image"].dtype == np.uint8
        same = np.abs(maps["image"][2].astype(int) - photo[2]).max()  # row 2 holds no dynamic pixel
        assert same <= 1 and (np.abs(maps["image"][0].astype(int) - photo[0]).max() > 1) == (strategy == "inpaint")
    encoded = encode_batch(fused, config.spec, "{}")
    schema = output_schema(pa.schema([("image_id", pa.string())]), config.spec)
    write_part(pa.table({k: v for k, v in encoded.items() if k in schema.names}), str(tmp_path), schema)
    rows = read_maps(str(tmp_path)).to_pylist()
    assert np.array_equal(decode_rgb(rows[0]), fused["image"][0]) and rows[1]["rgb"] == b""
    assert "rgb" not in output_schema(pa.schema([("image_id", pa.string())]), _config(strategy=strategy).spec).names


def test_scan_removes_partial_parts(tmp_path):
    schema = pa.schema([("image_id", pa.string()), ("status", pa.string())])
    write_part(pa.table({"image_id": ["a", "b"], "status": ["ok", "error"]}), str(tmp_path), schema)
    cut = tmp_path / f"part-{'0' * 32}.parquet"
    cut.write_bytes(b"PAR1 cut short by a kill")
    old_temp, new_temp = (tmp_path / f".tmp-part-{c * 32}.parquet" for c in "12")
    old_temp.write_bytes(b"PAR1")
    new_temp.write_bytes(b"PAR1")  # may be another run's, still being written
    os.utime(old_temp, (time.time() - 7200, time.time() - 7200))
    assert scan_output(str(tmp_path), clean=False)[1] == [] and cut.exists() and old_temp.exists()
    done, removed = scan_output(str(tmp_path))
    assert sorted(done["image_id"].to_pylist()) == ["a", "b"]
    assert len(removed) == 2 and not cut.exists() and not old_temp.exists() and new_temp.exists()


def test_retry_errors_after_a_duplicate_repair(tmp_path):
    """The repair rewrites parts under new names; the error rows to redo are then found in the new parts."""
    schema = pa.schema([("image_id", pa.string()), ("status", pa.string())])
    for name, ids, statuses in ((f"part-{'0' * 32}.parquet", ["a", "b"], ["ok", "ok"]),
                                (f"part-{'f' * 32}.parquet", ["a", "b", "c", "d"], ["ok", "ok", "error", "ok"])):
        pq.write_table(pa.table({"image_id": ids, "status": statuses}, schema=schema), tmp_path / name)
    done = prepare_output(str(tmp_path), retry_errors=True, job="extract")
    assert sorted(done["image_id"].to_pylist()) == ["a", "b", "d"]
    assert sorted(read_maps(str(tmp_path))["image_id"].to_pylist()) == ["a", "b", "d"]  # c is to be redone


def test_manifest_columns_named_like_output_columns_keep_unique_names():
    table = pa.table({"status": [1], "input_status": [2], "depth": [3], "x": [4]})
    assert carry_columns(table).column_names == ["input_input_status", "input_status", "input_depth", "x"]


def test_scan_leaves_other_tools_files_alone(tmp_path):
    """Files this job did not name (another tool's part files, readable or not) are neither read nor removed."""
    schema = pa.schema([("image_id", pa.string()), ("status", pa.string())])
    write_part(pa.table({"image_id": ["a"], "status": ["ok"]}), str(tmp_path), schema)
    spark = tmp_path / "part-00000-1234abcd.snappy.parquet"
    pq.write_table(pa.table({"image_id": ["x"], "status": ["ok"]}), spark)
    broken = tmp_path / "part-00001-1234abcd.snappy.parquet"
    broken.write_bytes(b"not parquet")
    done, removed = scan_output(str(tmp_path))
    assert done["image_id"].to_pylist() == ["a"] and removed == []
    assert spark.exists() and broken.exists() and read_maps(str(tmp_path)).num_rows == 1


def test_duplicates_keep_one_row_per_id_preferring_ok(tmp_path):
    """Two runs into one output write some ids twice: the repair keeps one row per id (an ok one if any)."""
    schema = pa.schema([("image_id", pa.string()), ("status", pa.string()), ("error", pa.string())])
    write_part(pa.table({"image_id": ["a", "b", "c"], "status": ["ok", "error", "ok"], "error": ["", "x", ""]}),
               str(tmp_path), schema)
    write_part(pa.table({"image_id": ["b", "a"], "status": ["ok", "ok"], "error": ["", ""]}), str(tmp_path), schema)
    write_part(pa.table({"image_id": ["c"], "status": ["error"], "error": ["y"]}), str(tmp_path), schema)
    done, _ = scan_output(str(tmp_path))
    drop = duplicate_rows(done)
    assert drop.sum() == 3
    assert drop_rows(str(tmp_path), done, drop) == 3
    table = read_maps(str(tmp_path))
    assert sorted(table["image_id"].to_pylist()) == ["a", "b", "c"] and set(table["status"].to_pylist()) == {"ok"}
    assert len(list(tmp_path.glob("part-*.parquet"))) == 2  # the part left empty is gone
    again, _ = scan_output(str(tmp_path))
    assert not duplicate_rows(again).any()


def test_resume_refuses_other_settings(tmp_path):
    schema = pa.schema([("image_id", pa.string()), ("status", pa.string())])
    check_config(str(tmp_path), _record(_config(strategy="none")))
    write_part(pa.table({"image_id": ["a"], "status": ["ok"]}), str(tmp_path), schema)
    check_config(str(tmp_path), _record(_config(strategy="none", batch_size=4)))  # how it runs may change
    with pytest.raises(OutputMismatchError, match="strategy"):
        check_config(str(tmp_path), _record(_config(strategy="inpaint")))
    with pytest.raises(OutputMismatchError, match="side: 32 -> 64"):
        check_config(str(tmp_path), _record(_config(strategy="none", side=64)))
    with pytest.raises(OutputMismatchError, match="input: 'in' -> 'other'"):  # its ids may overlap; rows differ
        check_config(str(tmp_path), _record(_config(strategy="none", input="other")))
    with pytest.raises(OutputMismatchError, match="models_identity"):  # other weights under one name
        check_config(str(tmp_path), {**_record(_config(strategy="none")), "models_identity": {"segmenter": "x"}})
    with pytest.raises(OutputMismatchError, match="manifest_columns"):  # the parts would differ in schema
        check_config(str(tmp_path), {**_record(_config(strategy="none")), "manifest_columns": ["image_id: int64"]},
                     write=False)


def test_resume_refuses_a_config_record_that_lacks_a_compared_field(tmp_path):
    """A config record without one of RESULT_FIELDS (an output of another layout) is another config: refused, naming
    the field, rather than passed for the same maps."""
    schema = pa.schema([("image_id", pa.string()), ("status", pa.string())])
    write_part(pa.table({"image_id": ["a"], "status": ["ok"]}), str(tmp_path), schema)
    record = _record(_config(strategy="none"))
    del record["models_identity"]
    (tmp_path / "_extract_config.json").write_text(json.dumps(record))
    with pytest.raises(OutputMismatchError, match="models_identity: None -> "):
        check_config(str(tmp_path), _record(_config(strategy="none")), write=False)


def test_output_that_is_a_file_is_refused(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputMismatchError, match="is a file"):
        check_config(str(afile), _record(_config()))
    with pytest.raises(OutputMismatchError, match="cannot make the folder"):
        check_config(str(afile / "sub"), _record(_config()))
    assert afile.read_text() == "x"


def test_config_rejects_unknown_values():
    with pytest.raises(ValueError, match="unknown strategy"):
        _config(strategy="magic")
    with pytest.raises(ValueError, match="for extraction"):  # ground truth is made by datasets, not extracted
        _config(strategy="ground-truth")
    with pytest.raises(ValueError, match="batch_size"):
        _config(batch_size=0)
    with pytest.raises(ValueError, match="compile_cache must be a filesystem path"):
        _config(compile_cache="s3://bucket/cache")


def test_compile_cache_reaches_every_model_actor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    config = resolve_paths(_config(compile=True, compile_cache="cache", output="s3://bucket/maps"))
    assert config.run.compile_cache == str(tmp_path / "cache")  # absolute: actors run elsewhere
    assert config.input == str(tmp_path / "in") and config.output == "s3://bucket/maps"  # recorded as resolved
    env = actor_args(config.run, 1.0)["runtime_env"]["env_vars"]
    assert env == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    assert "runtime_env" not in actor_args(_config(compile=True).run, 1.0)  # torch's own per-machine default
    assert "runtime_env" not in actor_args(dataclasses.replace(config.run, compile=False), 1.0)


def test_load_input_reads_a_manifest_a_city_folder_and_a_photo_folder(tmp_path):
    from PIL import Image

    from vprlib.data.manifest import ManifestError, write_manifest
    from vprlib.extract.output import input_source, load_input

    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    (tmp_path / "locations.csv").write_text("image,lat,lon\na.jpg,51.5,-0.1\nmissing.jpg,51.6,-0.2\n")
    table = load_input(str(tmp_path))  # photo folder + CSV; a missing photo is left to become an error row
    assert table["image_id"].to_pylist() == ["a.jpg", "missing.jpg"]
    assert table["uri"][0].as_py() == str(tmp_path / "a.jpg")
    write_manifest(table, str(tmp_path / "manifest.parquet"))
    assert load_input(str(tmp_path)).num_rows == 2  # folder with manifest.parquet
    assert load_input(str(tmp_path / "manifest.parquet")).num_rows == 2
    # one name for both spellings: a rerun naming the folder or its manifest resumes the same output
    assert input_source(str(tmp_path)) == input_source(str(tmp_path / "manifest.parquet"))
    with pytest.raises(ManifestError, match="input not found"):
        load_input(str(tmp_path / "nowhere"))


def _cluster(resources: dict, started_here: bool = False, node_memory: float = 2.0**40) -> Cluster:
    return Cluster(resources=resources, node_memory=node_memory, started_here=started_here, gpu_node_types=())


def _need(**kwargs):
    config = _config(**kwargs)
    return actors_need(config.run, config.spec.side)


def test_too_few_cpus_fail_fast():
    _cluster({"CPU": 2.0}).check(_need())
    with pytest.raises(ResourceError, match="CPUs"):
        _cluster({"CPU": 2.0}).check(_need(actors=2))
    with pytest.raises(ResourceError, match="CPUs"):  # the GPUs are there: nothing will add CPUs
        _cluster({"CPU": 2.0, "GPU": 1.0}).check(_need(actors=2, device="cuda", gpus_per_actor=0.5))
    # cluster.yaml: an 8-CPU head, GPU nodes start at zero: the autoscaler brings GPUs and their CPUs together
    _cluster({"CPU": 8.0}).check(_need(actors=8, device="cuda"))


def test_resources_nothing_will_add_fail_fast():
    from vprlib.extract.decode import decode_memory

    with pytest.raises(ResourceError, match="cannot add more"):  # the job's own local Ray: no autoscaler
        _cluster({"CPU": 2.0}, started_here=True).check(_need(device="cuda"))
    with pytest.raises(ResourceError, match="gpus-per-actor above 0"):
        check_gpus_per_process("cuda", 0, "--gpus-per-actor")
    big = _config(max_image_pixels=2_000_000_000)
    need = decode_memory(big.run.max_image_pixels, big.run.decode_batch_size, big.spec.side)
    _cluster({"CPU": 2.0}, started_here=True, node_memory=need).check(_need(max_image_pixels=2_000_000_000))
    with pytest.raises(ResourceError, match="lower --max-image-pixels"):
        _cluster({"CPU": 2.0}, started_here=True, node_memory=need - 1).check(_need(max_image_pixels=2_000_000_000))
    # a larger node may come: warns only
    _cluster({"CPU": 2.0}, node_memory=need - 1).check(_need(max_image_pixels=2_000_000_000))


def test_device_auto_follows_the_cluster():
    assert _cluster({"CPU": 2.0}).device("auto") == "cpu"
    assert _cluster({"CPU": 2.0, "GPU": 1.0}).device("auto") == "cuda"
    grows = Cluster(resources={"CPU": 8.0}, node_memory=1.0, started_here=False, gpu_node_types=("gpu_worker",))
    assert grows.device("auto") == "cuda" and grows.device("cpu") == "cpu"


def test_missing_weights_fail_before_any_work(tmp_path, monkeypatch):
    zoo.check_weights("tiny", ("segmenter", "inpainter", "depth"))
    zoo.check_weights("paper-random", ("segmenter", "depth", "refiners"))
    with pytest.raises(FileNotFoundError, match=f"save_pretrained folder at {tmp_path}/segformer"):
        zoo.check_weights(str(tmp_path), ("segmenter", "depth"))
    with pytest.raises(FileNotFoundError, match="refiner weights not found"):
        zoo.check_weights(str(tmp_path), ("refiners",))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # 'paper' reads the Hugging Face cache
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        zoo.check_weights("paper", ("segmenter", "depth"))
    with pytest.raises(ValueError, match="unknown models 'bogus'"):
        zoo.check_weights("bogus", ("depth",))


@pytest.mark.parametrize("load", [zoo.load_segmenter, zoo.load_depth])
def test_hf_models_compile_to_one_graph(load):
    """transformers installs hooks lazily under a lock dynamo cannot trace (3 graph breaks per model in 5.x);
    prepare(compile=True) installs them first, so the compiled forward is one graph."""
    from vprlib.extract.stages import install_hf_hooks

    model = load("tiny")
    install_hf_hooks(model, "cpu")
    explained = torch._dynamo.explain(model)(torch.rand(2, 3, SIDE, SIDE))
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_a_shared_model_is_compiled_lazily_and_once():
    """The fused chain prepares its one segmenter for two stages: nothing may compile while the chain loads (a
    1-image compile would add a graph and, with the real batch, a dynamic one); the first real batch compiles one
    graph, and the second preparation did not wrap it again."""
    from torch._dynamo.utils import counters

    segmenter = zoo.load_segmenter("tiny")
    run = _config(compile=True, precision="fp32").run
    before = counters["stats"]["unique_graphs"]
    for _ in range(2):
        assert prepare(segmenter, run) is segmenter
    assert counters["stats"]["unique_graphs"] == before  # lazily: nothing compiled yet
    images = torch.rand(2, 3, SIDE, SIDE)
    with torch.inference_mode():
        segmenter.labels(images)
        assert counters["stats"]["unique_graphs"] == before + 1  # compiled at the batch's shape, once
        segmenter.labels(images)
    assert counters["stats"]["unique_graphs"] == before + 1


class SlowDepth(OomDepth):
    """Depth that takes a while and records how many calls were inside it at once."""

    def __init__(self):
        super().__init__(fits=99)
        self.inside = self.most = 0

    def forward(self, images):
        self.inside += 1
        self.most = max(self.most, self.inside)
        time.sleep(0.05)
        self.inside -= 1
        return super().forward(images)


def test_concurrent_batches_run_one_forward_at_a_time():
    """Two threads (Ray's concurrent calls) share an actor: their host work may overlap, their forwards may not."""
    from concurrent.futures import ThreadPoolExecutor

    model = SlowDepth()
    config = _config(concurrent_batches=True, actor_threads=2)
    stage = DepthStage(config.spec, config.run, {"depth": model})
    batches = [_batch(n=4, bad=()) for _ in range(6)]
    for i, batch in enumerate(batches):
        batch["image"] = (batch["image"] // (i + 1)).astype(np.uint8)
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(stage, batches))
    assert model.most == 1 and len(model.sizes) == 6
    for batch, out in zip(batches, outs, strict=True):
        expected = normalize_depth(torch.from_numpy(batch["image"]).float().div(255).mean(dim=-1)).numpy()
        assert np.allclose(out["depth"], expected, atol=1e-6)
