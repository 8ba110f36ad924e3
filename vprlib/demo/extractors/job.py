"""jobs/train_demo.py: train the three demo extractors on a synthetic city (one Ray Train run each, through
`run_training`), export their best weights (export.py), optionally install them as the package's `demo` preset,
and measure them on the city's held-out captures (evaluate.py).

OUTPUT/segmenter, OUTPUT/depth, OUTPUT/inpainter are the training runs (best.pt, last.pt, metrics.parquet...; a rerun
resumes them), OUTPUT/weights the export (a `--models` folder as it is), OUTPUT/evaluation.json the figures.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import asdict, dataclass, field, replace

from vprlib.cli import help_text
from vprlib.cluster import absolute_path
from vprlib.storage import url_to_fs
from vprlib.train.config import train_config

WEIGHTS, EVALUATION = "weights", "evaluation.json"
ROLE_FAMILIES = {"segmenter": "demo-segmenter", "depth": "demo-depth", "inpainter": "demo-inpainter"}



@dataclass(frozen=True)
class DemoConfig:
    """Train, export and measure the demo extractors."""

    city: str = field(metadata=help_text(
        "the synthetic city to train on and measure on (jobs/synthcity.py --static-rgb): its train split trains, "
        "val chooses the best epoch, database and query are the held-out captures measured"))
    output: str = field(metadata=help_text("folder for the three training runs, the exported weights and the figures"))
    roles: str = field(default="segmenter,depth,inpainter", metadata=help_text("which of the three to train"))
    arch: str = field(default="demo", metadata=help_text("architecture of all three (tiny: a quick trial)"))
    input_size: int = field(default=128, metadata=help_text("side the segmenter sees (depth: its architecture's)"))
    epochs: int = field(default=0, metadata=help_text("epochs of each (0 = each family's default)"))
    batch_size: int = field(default=0, metadata=help_text("captures per step (0 = each family's default)"))
    seed: int = field(default=0, metadata=help_text("seed of weights, batches, flips and training holes"))
    workers: int = field(default=1, metadata=help_text("Ray Train workers per run"))
    cpus_per_worker: float = field(default=1.0, metadata=help_text("CPUs reserved per worker"))
    threads: int = field(default=0, metadata=help_text(
        "torch threads per worker on a CPU (0 = this machine's CPUs over the workers: the captures are in memory "
        "before training starts, so the CPU the harness keeps free for data tasks would idle)"))
    install: bool = field(default=False, metadata=help_text(
        "copy the exported weights into the package (vprlib/models/demo/), the `demo` models preset"))
    evaluate: bool = field(default=True, metadata=help_text("measure the exported weights on the held-out captures"))
    evaluate_only: bool = field(default=False, metadata=help_text("only measure --models; train nothing"))
    models: str = field(default="", metadata=help_text(
        "--evaluate-only: the models measured ('' = OUTPUT/weights when there, else the demo preset)"))
    dilation: int = field(default=0, metadata=help_text("pixels the measured dynamic mask grows by before inpainting"))
    limit: int = field(default=0, metadata=help_text("measure the first N held-out captures only (0 = all)"))
    resume: bool = field(default=True, metadata=help_text("continue interrupted training runs in --output"))
    ray_address: str = field(default="", metadata=help_text("Ray cluster address ('' = connect or start local)"))

    @property
    def role_list(self) -> tuple[str, ...]:
        roles = tuple(r.strip() for r in self.roles.split(",") if r.strip())
        unknown = [r for r in roles if r not in ROLE_FAMILIES]
        if unknown or not roles:
            raise ValueError(f"unknown --roles {unknown or self.roles!r}; known: {', '.join(ROLE_FAMILIES)}")
        return roles


def role_config(config: DemoConfig, role: str):
    """The TrainConfig of one role's run (the city as --maps, the family's defaults for what is left at 0)."""
    family = ROLE_FAMILIES[role]
    sized = {"input_size": config.input_size} if role == "segmenter" else {}
    return train_config(family, config.city, posixpath.join(config.output, role), arch=config.arch,
                        epochs=config.epochs or None, batch_size=config.batch_size or None, seed=config.seed,
                        workers=config.workers, cpus_per_worker=config.cpus_per_worker, resume=config.resume,
                        threads=config.threads or max(1, (os.cpu_count() or 1) // config.workers),
                        ray_address=config.ray_address, **sized)


def train_demo(config: DemoConfig) -> dict:
    """Train (or resume) each role, export, install if asked, measure if asked; return the figures (or {})."""
    from vprlib.demo.extractors.export import export_weights, install
    from vprlib.models import zoo
    from vprlib.train.loop import run_training

    # Local paths made absolute: the training workers run in a folder of Ray's, not in this one.
    config = replace(config, city=absolute_path(config.city), output=absolute_path(config.output))
    if config.evaluate_only:
        return measure(config, config.models or _default_models(config))
    roles = config.role_list
    trained = {}
    for role in roles:
        train = role_config(config, role)
        summary = run_training(train)
        trained[role] = {"city": _city_config(config.city), "epochs": train.epochs, "lr": train.lr,
                         "batch_size": train.batch_size, "seed": train.seed, "score": summary["score"],
                         "best": summary["best"], "best_epoch": summary["best_epoch"],
                         "wall_s": round(summary["wall_s"], 1)}
    weights = export_weights({r: posixpath.join(config.output, r) for r in roles}, posixpath.join(config.output,
                                                                                                   WEIGHTS), trained)
    print(f"train_demo: weights of {', '.join(roles)} in {weights}", flush=True)
    if config.install:
        files = install(str(weights))
        print(f"train_demo: installed {', '.join(f.name for f in files)} into {zoo.DEMO_DIR}", flush=True)
    return measure(config, str(weights)) if config.evaluate and set(roles) == set(ROLE_FAMILIES) else {}


def measure(config: DemoConfig, models: str) -> dict:
    from vprlib.demo.extractors.evaluate import evaluate_models, format_figures

    figures = evaluate_models(config.city, models, dilation=config.dilation, limit=config.limit)
    print(format_figures(figures), flush=True)
    fs, root = url_to_fs(config.output)
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, EVALUATION), "w") as f:
        f.write(json.dumps({**figures, "config": asdict(config)}, indent=1, sort_keys=True) + "\n")
    return figures


def _default_models(config: DemoConfig) -> str:
    from vprlib.models import zoo

    fs, root = url_to_fs(config.output)
    weights = posixpath.join(root, WEIGHTS)
    return weights if fs.exists(posixpath.join(weights, zoo.SMALL_FILE)) else zoo.DEMO


def _city_config(city: str) -> dict:
    """What the city was (jobs/synthcity.py's config.json: places, side, seed...), for the weights' record."""
    fs, root = url_to_fs(city)
    path = posixpath.join(root, "config.json")
    if not fs.exists(path):
        return {"path": city}
    with fs.open(path) as f:
        values = json.load(f)
    return {k: values[k] for k in ("places", "side", "seed", "static_rgb", "dense_train") if k in values}
