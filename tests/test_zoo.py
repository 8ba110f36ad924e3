"""The model registry: which file each role is loaded from, at what side, and an identity that changes with the
weights (so resuming an output made from other weights is refused)."""

import json
import shutil

import pytest
import torch

from vprlib.extract.output import OutputMismatchError, check_config
from vprlib.maps import write_part
from vprlib.models import zoo
from vprlib.models.dpt import MIDAS_CHECKPOINT, build_dpt
from vprlib.models.refiner import DEPTH_FILE, SEG_FILE, build_refiners
from vprlib.models.segformer import PAPER_CHECKPOINT, build_segformer

ALL = ("segmenter", "depth", "inpainter", "refiners")


def test_identity_of_presets():
    assert zoo.identity("tiny") == {"segmenter": "random:tiny:seed=0@64px", "depth": "random:tiny:seed=0",
                                    "inpainter": "random:tiny:seed=0", "refiners": "random:tiny:seed=0"}
    assert zoo.identity("paper-random", ("segmenter",)) == {"segmenter": "random:b5:seed=0@512px"}
    assert zoo.identity("tiny", ("segmenter",), segmenter_side=96) == {"segmenter": "random:tiny:seed=0@96px"}
    assert zoo.load_segmenter("tiny", segmenter_side=96).input_size == 96


def _hf_folders(root, seed: int = 1):
    build_segformer("tiny", seed=seed).save_pretrained(root / "segformer")
    build_dpt("tiny", seed=seed).save_pretrained(root / "dpt")


def test_identity_holds_a_hash_of_the_weights_and_resume_refuses_others(tmp_path):
    _hf_folders(tmp_path / "a")
    _hf_folders(tmp_path / "b", seed=2)
    first = zoo.identity(str(tmp_path / "a"), ("segmenter", "depth"))
    assert first["segmenter"].startswith(f"{tmp_path / 'a' / 'segformer'} model.safetensors:sha256:")
    assert zoo.identity(str(tmp_path / "a"), ("segmenter", "depth")) == first  # the same files, the same identity
    shutil.rmtree(tmp_path / "a" / "segformer")
    (tmp_path / "b" / "segformer").replace(tmp_path / "a" / "segformer")  # other weights under the same name
    second = zoo.identity(str(tmp_path / "a"), ("segmenter", "depth"))
    assert second["segmenter"] != first["segmenter"] and second["depth"] == first["depth"]
    output = tmp_path / "maps"
    record = {"input": "in", "strategy": "none", "models_identity": first}
    check_config(str(output), record)
    write_part(pa_table(), str(output), pa_table().schema)
    with pytest.raises(OutputMismatchError, match="models_identity"):
        check_config(str(output), {**record, "models_identity": second}, write=False)


def pa_table():
    import pyarrow as pa

    return pa.table({"image_id": ["a"], "status": ["ok"]})


def test_paper_prefers_the_papers_own_files(tmp_path, monkeypatch):
    """$VPRLIB_HOME holding OpenMMLab's SegFormer-B5 512 and MiDaS' DPT-Hybrid file: those are what 'paper' means,
    the segmenter runs at 512 (its training side), and the identity hashes the files."""
    monkeypatch.setenv("VPRLIB_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / PAPER_CHECKPOINT).write_bytes(b"stand-in: not loaded here")
    (tmp_path / MIDAS_CHECKPOINT).write_bytes(b"stand-in")
    identity = zoo.identity("paper", ("segmenter", "depth"))
    digest = _short_sha(b"stand-in: not loaded here")
    assert identity["segmenter"] == f"{tmp_path / PAPER_CHECKPOINT} sha256:{digest}@512px"
    assert identity["depth"].startswith(str(tmp_path / MIDAS_CHECKPOINT))
    assert zoo.segmenter_input_size("paper") == 512 and zoo.segmenter_input_size("paper", 640) == 640
    zoo.check_weights("paper", ("segmenter", "depth"))
    with pytest.raises(FileNotFoundError, match="big-lama.zip"):
        zoo.check_weights("paper", ("inpainter",))


def _short_sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:16]


def test_a_folder_with_a_base_takes_the_roles_it_lacks_from_it(tmp_path):
    """The refiner training job's output: refiners only, and models.json naming the maps' models as its base."""
    depth, seg = build_refiners("tiny", seed=3)
    torch.save(depth.state_dict(), tmp_path / DEPTH_FILE)
    torch.save(seg.state_dict(), tmp_path / SEG_FILE)
    (tmp_path / "models.json").write_text(json.dumps({"base": "tiny"}))
    identity = zoo.identity(str(tmp_path), ALL)
    assert identity["segmenter"] == "random:tiny:seed=0@64px" and identity["depth"] == "random:tiny:seed=0"
    assert identity["refiners"].startswith(f"{tmp_path / DEPTH_FILE}:sha256:")
    loaded, _ = zoo.load_refiners(str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), depth.state_dict().values(),
                                                 strict=True))
    assert zoo.load_segmenter(str(tmp_path)).input_size == zoo.TINY_SIDE
    (tmp_path / "models.json").unlink()
    with pytest.raises(FileNotFoundError, match="segformer"):
        zoo.check_weights(str(tmp_path), ("segmenter",))


def test_missing_checkpoints_say_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="nvidia/segformer-b5-finetuned-ade-640-640"):
        zoo.load_segmenter(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Intel/dpt-hybrid-midas"):
        zoo.load_depth(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="big-lama"):
        zoo.load_inpainter(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="jobs/train.py refiner"):
        zoo.load_refiners(str(tmp_path))
    with pytest.raises(ValueError, match="paper-random"):
        zoo.load_segmenter("no-such-preset")
