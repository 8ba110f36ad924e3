"""The demo run's own checks (vprlib.demo.run, jobs/demo.py; the run itself is `make demo`, minutes long): flags and
the shipped retrievers."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vprlib.demo.run import DemoConfig, run_demo
from vprlib.models import zoo
from vprlib.models.retriever import save_half

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_strategy_is_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "demo.py"), "--strategies", "synthetic,none"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "retrievers for inpaint, synthetic only" in done.stderr and done.stdout == ""


def test_a_missing_demo_retriever_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "DEMO_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="cosplace-inpaint.pt is missing") as error:
        run_demo(DemoConfig(output=str(tmp_path / "out"), strategies="inpaint"))
    assert "make demo-models" in str(error.value) and "\n" not in str(error.value)
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


def console_problems(output: str, max_lines: int = 60) -> list[str]:
    """What is wrong with a successful run's console: a traceback, Ray's logged progress, or too many lines."""
    lines = [line for line in output.splitlines() if line.strip()]
    problems = [f"a traceback: {line}" for line in lines if "Traceback" in line]
    problems += [f"Ray's progress: {line}" for line in lines
                 if "logging_progress.py" in line or "Running Dataset" in line]
    return problems + ([f"{len(lines)} lines (at most {max_lines})"] if len(lines) > max_lines else [])


def test_the_console_check_finds_tracebacks_ray_progress_and_length():
    clean = "demo: [1/8] the synthetic city\n" * 59
    assert console_problems(clean) == []
    noisy = ("(ListFiles pid=1) Traceback (most recent call last):\n"
             "2026-12-03 12:02:20,701\tINFO logging_progress.py:174 -- ======= Running Dataset: d_0 =======\n")
    assert [p.split(":")[0] for p in console_problems(noisy)] == ["a traceback", "Ray's progress"]
    assert console_problems(clean * 2) == ["118 lines (at most 60)"]


@pytest.mark.long
def test_the_demo_s_console_is_short_and_says_where_it_is(tmp_path):
    """make demo from scratch (about 4 minutes on 2 idle cores): no traceback, no Ray progress dump, under 60 lines;
    each step announced, each located photo's error against its truth, whether within 25 m, and how sure."""
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "demo.py"), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1800)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert console_problems(output) == [], output
    assert [int(n) for n in re.findall(r"^demo: \[(\d)/8\] ", done.stdout, re.MULTILINE)] == list(range(1, 9))
    located = re.findall(r"^  \d+\.png: taken at .*: (\d+) m off, (within|not within) 25 m; (sure|not sure) "
                         r"\(distance ratio ", done.stdout, re.MULTILINE)
    assert len(located) == 3 and all((int(m) <= 25) == (w == "within") for m, w, _ in located), done.stdout
