"""jobs/train.py's command line: epochs and other counts given as 0 or less are refused (not trained for the family's
default), a --maps that does not exist is named, in one line and before Ray starts, and every family's subcommand
makes the config the API makes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import train as train_job
from vprlib.train.config import train_config
from vprlib.train.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]


def _train(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "train.py"), *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


@pytest.mark.parametrize(("flag", "value", "message"), [("--epochs", "0", "epochs must be >= 1, got 0"),
                                                         ("--batch-size", "0", "batch_size must be >= 1, got 0"),
                                                         ("--lr", "0", "lr must be > 0")])
def test_counts_of_zero_or_less_are_refused_in_one_line(tmp_path, flag, value, message):
    done = _train("cosplace", "--maps", str(tmp_path), "--output", str(tmp_path / "run"), flag, value)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


def test_a_missing_maps_folder_is_named_before_ray_starts(tmp_path):
    done = _train("cosplace", "--maps", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run"))
    assert done.returncode == 2 and done.stderr == f"train.py: error: --maps {tmp_path / 'nowhere'} does not exist\n"
    assert "Traceback" not in done.stdout + done.stderr and not (tmp_path / "run").exists()


def test_what_is_left_out_takes_the_family_s_recipe_and_what_is_given_is_kept():
    recipe = train_config("cosplace", "m", "o")
    assert train_config("cosplace", "m", "o", epochs=None, lr=None, batch_size=None) == recipe  # None: left out
    given = train_config("cosplace", "m", "o", epochs=3)
    assert given.epochs == 3 and (given.lr, given.batch_size) == (recipe.lr, recipe.batch_size)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        train_config("cosplace", "m", "o", epochs=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_s_command_line_trains_what_the_api_does(family):
    """Each family's subcommand with only the folders given makes the config train_config makes (flag defaults and
    the recipe agree), a valid one: a family's recipe trains without another flag."""
    folders = {"targets": "t"} if FAMILIES[family].targets else {}
    argv = [family, "--maps", "m", "--output", "o", *(x for k, v in folders.items() for x in (f"--{k}", v))]
    assert train_job.parse_args(argv) == train_config(family, "m", "o", **folders)


def test_an_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model family 'vgg'; known: refiner, cosplace, netvlad, demo-"):
        train_config("vgg", "m", "o")
