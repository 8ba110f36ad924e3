"""The demo run (`make demo`, jobs/demo.py): the method end to end on the synthetic city with the shipped demo
models: maps, index, Recall@N, located photos.

Makes the city the demo retrievers were trained on (`vprlib.demo.city.demo_city`, as the demo-models recipe does;
they learnt from its west half), then for each strategy (`DemoConfig.strategies`) extracts the maps of the east
half's captures with the `demo` models, indexes the database captures with the strategy's shipped demo retriever,
evaluates the query captures (Recall@1/5/10 within 25 m, and an HTML report), and locates a few query photos as a
user would (jobs/locate.py), printing where each was taken against where the system says, how far off that is,
whether within 25 m, and whether locate said it was sure. It says which step it is on. Every step resumes: a second
run only re-evaluates.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from vprlib.cli import help_text


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings (the shipped demo retrievers were trained on maps of this city's kind and side)."""

    output: str = field(default="out", metadata=help_text("folder for the city, maps, indexes and evaluations"))
    strategies: str = field(default="inpaint,synthetic", metadata=help_text(
        "strategies run, comma-separated (each needs its shipped demo retriever)"))
    locate: int = field(default=3, metadata=help_text("query photos located at the end (0: none)"))
    actors: int = field(default=1, metadata=help_text("actors per model pool in the extraction"))
    ray_address: str = field(default="", metadata=help_text("Ray cluster address ('' = connect or start local)"))

    @property
    def strategy_list(self) -> tuple[str, ...]:
        from vprlib.models import zoo

        strategies = tuple(s.strip() for s in self.strategies.split(",") if s.strip())
        unknown = [s for s in strategies if s not in zoo.DEMO_RETRIEVERS]
        if unknown or not strategies:
            raise ValueError(f"--strategies {self.strategies!r}: the demo has retrievers for "
                             f"{', '.join(zoo.DEMO_RETRIEVERS)} only")
        return strategies


def run_demo(config: DemoConfig) -> dict:
    """Run every step; return {strategy: evaluation summary}."""
    from vprlib.data.manifest import read_manifest, write_manifest
    from vprlib.demo.city import demo_city
    from vprlib.extract.config import extract_config
    from vprlib.extract.pipeline import run_extract
    from vprlib.index.build import IndexConfig, run_index
    from vprlib.index.embed import retriever_record
    from vprlib.index.evaluate import EvaluateConfig, run_evaluate
    from vprlib.index.locate import LocateConfig, locate
    from vprlib.models import zoo

    strategies = config.strategy_list
    retrievers = {s: zoo.demo_retriever(s) for s in strategies}  # FileNotFoundError before any work
    step = steps(1 + 3 * len(strategies) + bool(config.locate))
    out = os.path.abspath(config.output)
    city = os.path.join(out, "city")
    held_out = os.path.join(out, "held-out.parquet")  # the east half: database and query captures
    step("the synthetic city (made once, then reused)")
    if not os.path.exists(held_out):
        manifest = read_manifest(os.path.join(demo_city(city), "manifest.parquet"))
        keep = [split in ("database", "query") for split in manifest["split"].to_pylist()]
        write_manifest(manifest.filter(keep), held_out)
    summaries = {}
    for strategy in strategies:
        side = retriever_record(str(retrievers[strategy])).map_spec["side"]
        maps, index, evaluation = (os.path.join(out, f"{what}-{strategy}") for what in ("maps", "index", "eval"))
        step(f"{strategy} maps of the held-out captures")
        run_extract(extract_config(input=held_out, output=maps, strategy=strategy, models=zoo.DEMO, side=side,
                                   actors=config.actors, ray_address=config.ray_address))
        step(f"{strategy} index of the database captures")
        run_index(IndexConfig(maps=maps, model=str(retrievers[strategy]), output=index,
                              ray_address=config.ray_address))
        step(f"{strategy} Recall@N of the query captures")
        summaries[strategy] = run_evaluate(EvaluateConfig(index=index, queries=maps, output=evaluation, report=True,
                                                          ray_address=config.ray_address))
    print(recall_table(summaries), flush=True)
    if config.locate:
        best = max(strategies, key=lambda s: summaries[s]["recall@1"])
        step(f"query photos located with the {best} index, as jobs/locate.py does")
        queries = read_manifest(held_out)
        queries = queries.filter(queries["split"].to_numpy(zero_copy_only=False) == "query").to_pylist()
        picked = queries[:: max(1, len(queries) // config.locate)][: config.locate]
        photos = tuple(row["uri"] for row in picked)
        results = locate(LocateConfig(index=os.path.join(out, f"index-{best}"), photos=photos, top_k=3))
        for row, result in zip(picked, results, strict=True):
            print(showcase_line(row, result), flush=True)
    for strategy in strategies:
        print(f"demo: report of {strategy}: {os.path.join(out, f'eval-{strategy}', 'report.html')}", flush=True)
    return summaries


def steps(total: int):
    """A function that announces the next of `total` steps: 'demo: [2/8] inpaint maps of the held-out captures'."""
    numbers = itertools.count(1)

    def step(what: str) -> None:
        print(f"demo: [{next(numbers)}/{total}] {what}", flush=True)

    return step


def showcase_line(row: dict, result: dict) -> str:
    """A located photo against where it was taken: the error, whether it is within 25 m (Recall's radius), and how
    sure locate was."""
    from vprlib.geo import haversine_m
    from vprlib.index.locate import how_sure
    from vprlib.metrics import GPS_THRESHOLD_M

    at = result["estimate"]
    error = float(haversine_m(row["lat"], row["lon"], at["lat"], at["lon"]))
    within = "within" if error <= GPS_THRESHOLD_M else "not within"
    return (f"  {os.path.basename(row['uri'])}: taken at {row['lat']:.6f}, {row['lon']:.6f}; located at "
            f"{at['lat']:.6f}, {at['lon']:.6f}: {error:.0f} m off, {within} {GPS_THRESHOLD_M:g} m; "
            f"{how_sure(result['confidence'])}")


def recall_table(summaries: dict) -> str:
    keys = [k for k in next(iter(summaries.values())) if k.startswith("recall@")]
    lines = ["", f"{'strategy':<12}" + "".join(f"{k:>11}" for k in keys)]
    lines += [f"{s:<12}" + "".join(f"{summary[k]:>11.1%}" for k in keys) for s, summary in summaries.items()]
    return "\n".join(lines)
