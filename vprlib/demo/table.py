"""The paper's Table 1 in kind on the synthetic city (`make table`, jobs/table.py): retrain the refiners and every
retriever, print Recall@1/5/10; and the appearance study (`make study`, jobs/table.py --parts study).

Makes the demo's city (or reuses `<output>/city` when `make demo` made it), extracts the maps of all its captures
with the shipped demo extractors (strategies none and inpaint), trains the demo-size refiners on the raw maps of the
train split against the city's ground truth and extracts the synthetic maps with them, then trains one retriever per
row of ROWS on the train split (validated on val), indexes the database captures and evaluates the query captures
(Recall@N within 25 m). Rows: the paper's (NetVLAD VGG16, CosPlace ResNet-18/50 and VGG16 with synthetic refinement;
CosPlace ResNet-50 on depth only and on segmentation only; NetVLAD VGG16 and CosPlace ResNet-18/50 with inpainting)
and two it lacks: the same CosPlace on the ground-truth maps (the ceiling) and on raw maps (the floor). Sizes are the
CPU's, not the paper's (--side, epochs, descriptor size): the table is printed with them. Every step resumes, so a
second run only evaluates again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass, field

from vprlib.cli import help_text
from vprlib.demo import models as recipe


@dataclass(frozen=True)
class Row:
    """One row of the table: a retriever family and backbone trained on one strategy's maps (and modalities)."""

    method: str  # a training family: cosplace | netvlad
    backbone: str
    maps: str  # the strategy whose maps it trains and is evaluated on
    input: str = "depth+seg"  # the maps it sees (vprlib.models.encodings.MODALITIES)
    role: str = ""  # what the row is for, when not one of the paper's

    @property
    def name(self) -> str:
        return "-".join((self.method, self.backbone, self.maps, self.input.replace("+", "")))


# The paper's Table 1 rows, in its order, then the two it lacks (the same CosPlace as the demo's retrievers).
ROWS = (
    Row("netvlad", "vgg16", "synthetic"),
    Row("cosplace", "resnet18", "synthetic"),
    Row("cosplace", "resnet50", "synthetic"),
    Row("cosplace", "vgg16", "synthetic"),
    Row("cosplace", "resnet50", "synthetic", "depth"),
    Row("cosplace", "resnet50", "synthetic", "seg"),
    Row("netvlad", "vgg16", "inpaint"),
    Row("cosplace", "resnet18", "inpaint"),
    Row("cosplace", "resnet50", "inpaint"),
    Row("cosplace", "resnet18", "ground-truth", role="ceiling"),
    Row("cosplace", "resnet18", "none", role="floor"),
)
EXTRACTED = ("none", "inpaint", "synthetic")  # strategies extracted here (ground-truth maps come with the city)



@dataclass(frozen=True)
class TableConfig:
    """The table's settings; the defaults take 75 minutes on a 2-core CPU (docs/RESULTS.md has the run)."""

    output: str = field(default="out", metadata=help_text(
        "folder: the city (<output>/city, shared with make demo) and the table's work (<output>/table)"))
    parts: str = field(default="table", metadata=help_text(
        "what runs, comma-separated: table (ROWS), study (the appearance study: CosPlace on photos and on maps, by "
        "look and crowd)"))
    rows: str = field(default="", metadata=help_text(
        f"rows run, comma-separated names ('' = all): {', '.join(r.name for r in ROWS)}"))
    side: int = field(default=48, metadata=help_text("maps' side in pixels, for every row (the paper: 512)"))
    descriptor_size: int = field(default=128, metadata=help_text("CosPlace descriptor size (the paper: 512)"))
    cosplace_epochs: int = field(default=16, metadata=help_text("CosPlace epochs, one group each (the paper: 50)"))
    cosplace_iterations: int = field(default=30, metadata=help_text(
        "CosPlace batches per epoch (CosPlace: 10,000; 0 = one pass over the group); 30 of 32 images pass about four "
        "times over a group of the demo city"))
    netvlad_epochs: int = field(default=3, metadata=help_text(
        "NetVLAD epochs of 128 queries each (the paper: 50 of all queries)"))
    refiner_epochs: int = field(default=2, metadata=help_text("refiner epochs (the paper: 30)"))
    study_epochs: int = field(default=recipe.COSPLACE["epochs"], metadata=help_text(
        f"epochs of the study's photo retriever (the shipped demo retrievers': {recipe.COSPLACE['epochs']})"))
    seed: int = field(default=0, metadata=help_text("seed of every training run"))
    threads: int = field(default=0, metadata=help_text(
        "torch threads of each training run (0 = this machine's CPUs: the table trains one model at a time)"))
    ray_address: str = field(default="", metadata=help_text("Ray cluster address ('' = connect or start local)"))

    @property
    def row_list(self) -> tuple[Row, ...]:
        wanted = [r.strip() for r in self.rows.split(",") if r.strip()]
        known = {r.name: r for r in ROWS}
        unknown = [r for r in wanted if r not in known]
        if unknown:
            raise ValueError(f"--rows: unknown row(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return tuple(known[r] for r in wanted) if wanted else ROWS

    @property
    def part_list(self) -> tuple[str, ...]:
        parts = tuple(p.strip() for p in self.parts.split(",") if p.strip())
        if not parts or set(parts) - {"table", "study"}:
            raise ValueError(f"--parts {self.parts!r}: known parts are table, study")
        return parts

    def __post_init__(self):
        small = [n for n in ("side", "descriptor_size", "cosplace_epochs", "netvlad_epochs", "refiner_epochs",
                             "study_epochs")
                 if getattr(self, n) < 1]
        if small:
            raise ValueError(f"{', '.join('--' + n.replace('_', '-') for n in small)} must be >= 1")
        if self.threads < 0 or self.cosplace_iterations < 0:
            raise ValueError("--threads and --cosplace-iterations must be >= 0")

    @property
    def torch_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


# CosPlace: the demo-models recipe's (vprlib.demo.models.COSPLACE: its group layout for the demo city's dense visits,
# classes of 6 images, 8 groups of about 230 images), with the table's backbone, descriptor size, epochs and batches
# per epoch (--cosplace-iterations; the shipped demo retrievers: one pass, iterations 0).
# NetVLAD's epochs on a CPU: 128 queries drawn afresh each (of about 1,800), mined from a cache of 500 images.
NETVLAD = {"batch_size": 4, "queries_per_epoch": 128, "cache_size": 500}


def run_table(config: TableConfig, city_config=None) -> list[dict]:
    """Run every step for the chosen rows; return one record per row (also written to <output>/table/table.json).
    `city_config`: another city than the demo's in <output>/city (the tests' small one)."""
    rows = config.row_list
    work = os.path.join(os.path.abspath(config.output), "table")
    maps = table_maps(config, {r.maps for r in rows}, city_config)
    records = []
    for row in rows:
        folder = os.path.join(work, row.name)
        model = train_row(config, row, maps[row.maps], folder)
        started = time.perf_counter()
        summary = evaluate(config, model, maps[row.maps], folder)
        records.append({**asdict(row), "name": row.name, **recalls(summary), "queries": summary.get("queries"),
                        "epochs": model["epochs_run"], "best_epoch": model["best_epoch"],
                        "val_recall@1": model["best"], "seconds": model["seconds"] + time.perf_counter() - started})
        print(format_table(records, config), flush=True)
    with open(os.path.join(work, "table.json"), "w") as f:
        json.dump({"settings": asdict(config), "rows": records}, f, indent=1)
    return records


def table_maps(config: TableConfig, needed: set[str], city_config=None) -> dict[str, str]:
    """The city (made unless there) and the maps tables of the `needed` strategies (extracted unless there, after
    the refiners for synthetic): {strategy: path}. The synthetic maps carry the photos too (--rgb), for the
    appearance study's RGB retriever."""
    from vprlib.demo.city import GT_MAPS
    from vprlib.models import zoo

    city = make_city(config, city_config)
    work = os.path.join(os.path.abspath(config.output), "table")
    maps = {"ground-truth": os.path.join(city, GT_MAPS)}
    for strategy in EXTRACTED:
        if strategy not in needed and not (strategy == "none" and "synthetic" in needed):
            continue
        maps[strategy] = os.path.join(work, f"maps-{strategy}")
        models = zoo.DEMO
        if strategy == "synthetic":
            models = train_refiners(config, maps["none"], maps["ground-truth"])
        extract(config, os.path.join(city, "manifest.parquet"), maps[strategy], strategy, models)
    return maps


def make_city(config: TableConfig, city_config=None) -> str:
    """<output>/city: the demo's (made unless there), or `city_config`'s (made unless there); its path."""
    from vprlib.demo.city import demo_city, generate_city

    city = os.path.join(os.path.abspath(config.output), "city")
    if city_config is None:
        demo_city(city)
    elif not os.path.exists(os.path.join(city, "manifest.parquet")):
        generate_city(city_config, city)
    return city


def split_manifest(manifest, splits: tuple[str, ...], path: str) -> str:
    """The rows of `splits` written as a manifest at `path` (an extraction's input); `path`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from vprlib.data.manifest import write_manifest

    write_manifest(manifest.filter(pc.is_in(manifest["split"], value_set=pa.array(splits, pa.string()))), path)
    return path


def train_refiners(config: TableConfig, raw: str, truth: str) -> str:
    """The demo-size refiners trained on the raw maps' train split against the ground truth; their folder (a
    complete --models for the synthetic strategy: the demo extractors, these refiners)."""
    from vprlib.train.config import train_config
    from vprlib.train.loop import run_training

    refiners = os.path.join(os.path.abspath(config.output), "table", "refiners")
    run_training(train_config("refiner", raw, refiners, targets=truth, arch="demo", side=config.side,
                              epochs=config.refiner_epochs, batch_size=16, seed=config.seed,
                              threads=config.torch_threads, ray_address=config.ray_address))
    return refiners


def extract(config: TableConfig, manifest: str, output: str, strategy: str, models: str) -> None:
    from vprlib.extract.config import extract_config
    from vprlib.extract.pipeline import run_extract

    run_extract(extract_config(input=manifest, output=output, strategy=strategy, models=models, side=config.side,
                               rgb=strategy == "synthetic", ray_address=config.ray_address))


def train_row(config: TableConfig, row: Row, maps: str, folder: str) -> dict:
    """The row's retriever trained on the train split (validated on val): the training summary, with `best` (the
    checkpoint's path) and `seconds`. CosPlace runs `config.cosplace_iterations` batches an epoch (0: one pass)."""
    from vprlib.train.config import train_config
    from vprlib.train.loop import run_training

    start = time.perf_counter()
    model = os.path.join(folder, "model")
    print(f"table: {row.name}: training", flush=True)
    common = {"input": row.input, "side": config.side, "seed": config.seed, "threads": config.torch_threads,
              "ray_address": config.ray_address}
    if row.method == "cosplace":
        summary = recipe.train_retriever(maps, model, backbone=row.backbone, descriptor_size=config.descriptor_size,
                                         epochs=config.cosplace_epochs,
                                         iterations_per_epoch=config.cosplace_iterations, **common)
    else:
        summary = run_training(train_config(row.method, maps, model, **NETVLAD, epochs=config.netvlad_epochs,
                                            **common))
    drop_run_checkpoints(model)
    return {**summary, "checkpoint": os.path.join(model, "best.pt"), "seconds": time.perf_counter() - start}


def drop_run_checkpoints(model: str) -> None:
    """Ray's copies of the last epochs' training state (`_ray/`: two of them, about 0.3 GB each for ResNet-50 with its
    optimiser) once a row has trained: `last.pt` still resumes it and `best.pt` is what the row is evaluated with."""
    import shutil

    from vprlib.train.loop import RAY_DIR

    shutil.rmtree(os.path.join(model, RAY_DIR), ignore_errors=True)


def evaluate(config: TableConfig, model: dict, maps: str, folder: str) -> dict:
    """Index the database captures of `maps` with the trained retriever, evaluate its query captures (Recall@N
    within 25 m, per-query results in <folder>/eval/results.parquet): the evaluation's summary."""
    from vprlib.index.build import IndexConfig, run_index
    from vprlib.index.evaluate import EvaluateConfig, run_evaluate

    index = os.path.join(folder, "index")
    run_index(IndexConfig(maps=maps, model=model["checkpoint"], output=index, ray_address=config.ray_address))
    return run_evaluate(EvaluateConfig(index=index, queries=maps, output=os.path.join(folder, "eval"),
                                       ray_address=config.ray_address))


def recalls(summary: dict) -> dict:
    """The Recall@N of an evaluation summary, by increasing N."""
    keys = sorted((k for k in summary if k.startswith("recall@")), key=lambda k: int(k.split("@")[1]))
    return {k: summary[k] for k in keys}


# ------------------------------------------------------------------------------------------ the appearance study
# The paper's claim: geometry ignores what changes (light, season, crowds) where appearance does not. Measured with
# the shipped demo CosPlace ResNet-18 of the synthetic strategy (the geometry) against the same network trained by
# the same recipe (vprlib.demo.models.COSPLACE) on the photos of the same captures, evaluated on cities of the demo's
# layout whose query places are each visited twice: once in the database visit's look (time of day and season),
# once in another; one city without dynamic objects, one crowded.
APPEARANCE = Row("cosplace", "resnet18", "synthetic", "rgb", role="appearance baseline")
STUDY_CITY = {"query_visits": 2, "same_look_queries": 1, "train_visits": 1}  # train captures are not used
CROWDS = {"no crowds": 0.0, "crowds": 3.0}  # dynamic_density of each study city (the demo's: 1.0)


def run_study(config: TableConfig, city_config=None, geometry: str = "") -> list[dict]:
    """Both retrievers on both study cities (everything made, extracted and trained unless there): Recall@1 per crowd
    level and look (also written to <output>/table/study.json). `geometry`: the maps retriever's checkpoint (''
    = the shipped demo CosPlace of the synthetic strategy); the photo retriever learns from the demo city's train
    captures by its recipe, at its side."""
    import pyarrow.compute as pc

    from vprlib.data.manifest import read_manifest
    from vprlib.demo.city import DEMO_CITY, CityConfig, generate_city
    from vprlib.index.embed import retriever_record
    from vprlib.models import zoo

    out = os.path.abspath(config.output)
    work = os.path.join(out, "table")
    geometry = geometry or str(zoo.demo_retriever("synthetic"))
    record = retriever_record(geometry)
    models = record.map_spec["models"]
    study = dataclasses.replace(config, side=record.map_spec["side"], descriptor_size=record.descriptor_size,
                                cosplace_epochs=config.study_epochs,
                                cosplace_iterations=recipe.COSPLACE["iterations_per_epoch"])
    manifest = read_manifest(os.path.join(make_city(config, city_config), "manifest.parquet"))
    training = split_manifest(manifest, ("train", "val"), os.path.join(work, "study-train.parquet"))
    photos = os.path.join(work, "study-maps-train")
    extract(study, training, photos, "synthetic", models)
    trained = {"depth+seg": {"checkpoint": geometry, "best_epoch": None},
               "rgb": train_row(study, APPEARANCE, photos, os.path.join(work, "study-" + APPEARANCE.name))}
    base = dataclasses.asdict(city_config or CityConfig(**DEMO_CITY))
    records = []
    for crowd, density in CROWDS.items():
        name = crowd.replace(" ", "-")
        city = os.path.join(work, f"study-city-{name}")
        if not os.path.exists(os.path.join(city, "manifest.parquet")):
            print(f"table: making the study city ({crowd}) in {city}", flush=True)
            generate_city(CityConfig(**{**base, **STUDY_CITY, "dynamic_density": density}), city)
        manifest = read_manifest(os.path.join(city, "manifest.parquet"))
        held_out = split_manifest(manifest, ("database", "query"), os.path.join(city, "held-out.parquet"))
        study_maps = os.path.join(work, f"study-maps-{name}")
        extract(study, held_out, study_maps, "synthetic", models)
        looks = same_look(manifest)
        queries = manifest.filter(pc.equal(manifest["split"], "query"))
        for modality, model in trained.items():
            summary = evaluate(study, model, study_maps, os.path.join(work, f"study-{name}-{modality}"))
            correct = first_correct(os.path.join(summary["output"], "results.parquet"))
            for look, wanted in (("same look", True), ("other look", False)):
                ids = [i for i, same in looks.items() if same == wanted and i in correct]
                records.append({"crowd": crowd, "dynamic_density": density, "look": look, "retriever": modality,
                                "checkpoint": model["checkpoint"], "best_epoch": model["best_epoch"],
                                "queries": len(ids), "recall@1": sum(correct[i] for i in ids) / max(len(ids), 1),
                                "dynamic_fraction": float(pc.mean(queries["dynamic_fraction"]).as_py())})
    print(format_study(records, study), flush=True)
    with open(os.path.join(work, "study.json"), "w") as f:
        json.dump({"settings": asdict(study), "conditions": records}, f, indent=1)
    return records


def same_look(manifest) -> dict[str, bool]:
    """query image id -> whether its visit has its place's database look (time of day and season)."""
    rows = manifest.select(["image_id", "split", "place_id", "time_of_day", "season"]).to_pylist()
    database = {r["place_id"]: (r["time_of_day"], r["season"]) for r in rows if r["split"] == "database"}
    return {r["image_id"]: database[r["place_id"]] == (r["time_of_day"], r["season"]) for r in rows
            if r["split"] == "query"}


def first_correct(results: str) -> dict[str, bool]:
    """query image id -> whether the evaluation's first prediction is right (within 25 m)."""
    import pyarrow.parquet as pq

    table = pq.read_table(results, columns=["image_id", "first_correct_rank"]).to_pylist()
    return {r["image_id"]: r["first_correct_rank"] == 1 for r in table}


def format_study(records: list[dict], config: TableConfig) -> str:
    looks = list(dict.fromkeys(r["look"] for r in records))
    lines = ["", f"study: Recall@1 within 25 m of CosPlace ResNet-18 ({config.side} px, {config.cosplace_epochs} "
                 f"epochs) on refined maps (depth+seg, the shipped demo retriever) and on the photos (rgb), by crowd "
                 f"and look (queries in brackets)",
             f"{'crowd':<12}{'mean dynamic':>14}{'retriever':>12}" + "".join(f"{look:>14}" for look in looks)]
    for crowd in dict.fromkeys(r["crowd"] for r in records):
        for modality in dict.fromkeys(r["retriever"] for r in records):
            cells = {r["look"]: r for r in records if r["crowd"] == crowd and r["retriever"] == modality}
            first = next(iter(cells.values()))
            lines.append(f"{crowd:<12}{first['dynamic_fraction']:>14.1%}{modality:>12}" + "".join(
                f"{cells[look]['recall@1']:>9.1%} ({cells[look]['queries']})" for look in looks))
    return "\n".join(lines)


METHODS = {"cosplace": "CosPlace", "netvlad": "NetVLAD"}
BACKBONES = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "vgg16": "VGG16"}
REFINEMENT = {"synthetic": "synthetic", "inpaint": "inpainting", "ground-truth": "ground truth (ceiling)",
              "none": "none (floor)"}
INPUTS = {"depth+seg": "depth+seg", "depth": "depth only", "seg": "seg only", "rgb": "photo"}


def format_table(records: list[dict], config: TableConfig) -> str:
    """The paper's shape: method x backbone x refinement (and maps seen) -> Recall@N."""
    keys = sorted((k for k in records[0] if k.startswith("recall@")), key=lambda k: int(k.split("@")[1]))
    head = (f"{'method':<10}{'backbone':<11}{'refinement':<24}{'maps':<12}" + "".join(f"{k:>10}" for k in keys)
            + f"{'best epoch':>12}")
    lines = ["", f"table: Recall@N within 25 m, {records[0]['queries']} queries; maps {config.side} px, CosPlace "
                 f"descriptor {config.descriptor_size}, {config.cosplace_epochs} CosPlace / {config.netvlad_epochs} "
                 f"NetVLAD / {config.refiner_epochs} refiner epochs", head]
    for r in records:
        lines.append(f"{METHODS[r['method']]:<10}{BACKBONES[r['backbone']]:<11}{REFINEMENT[r['maps']]:<24}"
                     f"{INPUTS[r['input']]:<12}" + "".join(f"{r[k]:>10.1%}" for k in keys)
                     + f"{r['best_epoch']:>8} / {r['epochs']}")
    return "\n".join(lines)
