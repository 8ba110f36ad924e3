"""jobs/demo.py's own checks (the run itself is `make demo`, minutes long): flags and the shipped retrievers."""

import importlib.util
import sys
from pathlib import Path

import pytest

from vprlib.models import zoo
from vprlib.models.retriever import save_half

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("demo_job", ROOT / "jobs" / "demo.py")
demo_job = importlib.util.module_from_spec(_spec)
sys.modules["demo_job"] = demo_job  # its dataclass looks its module up
_spec.loader.exec_module(demo_job)


def test_unknown_strategy_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        demo_job.main(["--strategies", "synthetic,none"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "retrievers for inpaint, synthetic only" in err


def test_a_missing_demo_retriever_says_how_to_make_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(zoo, "DEMO_DIR", tmp_path)
    assert demo_job.main(["--output", str(tmp_path / "out"), "--strategies", "inpaint"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cosplace-inpaint.pt is missing" in err and "make demo-models" in err
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("strategy", list(zoo.DEMO_RETRIEVERS))
def test_shipped_retrievers_load_and_match_the_demo_maps(strategy):
    """Each shipped retriever loads and was trained on maps the demo models make with that strategy (so the demo's
    index job accepts the maps it extracts)."""
    from vprlib.index.embed import retriever_record

    record = retriever_record(str(zoo.demo_retriever(strategy)))
    assert record.map_spec["strategy"] == strategy and record.map_spec["models"] == zoo.DEMO
    assert record.map_spec["models_identity"] == zoo.identity(zoo.DEMO, tuple(record.map_spec["models_identity"]),
                                                              record.map_spec["segmenter_side"])


def test_half_checkpoints_load_to_the_same_descriptors(tmp_path):
    import torch

    from vprlib.models.cosplace import CosPlace, CosPlaceConfig

    model = CosPlace(CosPlaceConfig(backbone="resnet18", descriptor_size=16)).eval()
    model.save(tmp_path / "full.pt", map_spec={}, input_side=32)
    save_half(tmp_path / "full.pt", tmp_path / "half.pt")
    half = zoo.load_retriever(tmp_path / "half.pt")
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    assert all(p.dtype == torch.float32 for p in half.parameters())
    depth, seg = torch.rand(2, 32, 32), torch.randint(0, 4, (2, 32, 32))
    with torch.inference_mode():
        assert torch.allclose(model.embed(depth, seg), half.embed(depth, seg), atol=1e-2)


def test_the_demo_identity_is_its_content_wherever_the_package_lies():
    """The shipped retrievers name the models of their training maps; that record must not hold this checkout's
    path, or an installed package (or another clone) would refuse its own demo."""
    identity = zoo.identity(zoo.DEMO)
    assert set(identity) == set(zoo.ROLES) and all("sha256:" in v for v in identity.values())
    assert not any(str(zoo.DEMO_DIR) in v or "/" in v.split("@")[0] for v in identity.values()), identity
