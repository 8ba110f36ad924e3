"""Each trained row of `make table` against its untrained network: how much training moved it, one run.

    python benchmarks/untrained_rows.py --table out/table          # every CosPlace row that table.json holds
    python benchmarks/untrained_rows.py --table out/table --rows cosplace-resnet18-synthetic-depthseg

The untrained network is the row's best.pt config rebuilt with torch.manual_seed(seed), as the training worker
builds it before epoch 1 (epoch 0's validation network), saved with the same map spec, then indexed and evaluated
exactly as the table evaluates the row (vprlib.demo.table's `evaluate`, on the row's own maps). Prints a RESULT line per
row: untrained and trained Recall@1/5/10 and the change in Recall@1. Writes under <table>/untrained/.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", required=True, help="make table's work folder (<output>/table, with table.json)")
    parser.add_argument("--rows", default="", help="row names, comma-separated ('' = every CosPlace row)")
    parser.add_argument("--ray-address", default="local")
    args = parser.parse_args()

    import torch

    from vprlib.demo import table
    from vprlib.models.zoo import load_retriever

    recorded = json.loads((Path(args.table) / "table.json").read_text())
    settings = table.TableConfig(**{**recorded["settings"], "ray_address": args.ray_address})
    wanted = [r for r in args.rows.split(",") if r]
    rows = [r for r in recorded["rows"] if (r["name"] in wanted if wanted else r["method"] == "cosplace")]
    for row in rows:
        folder = Path(args.table) / "untrained" / row["name"]
        folder.mkdir(parents=True, exist_ok=True)
        best = Path(args.table) / row["name"] / "model" / "best.pt"
        checkpoint = torch.load(best, map_location="cpu", weights_only=True)
        trained = load_retriever(best)
        torch.manual_seed(settings.seed)
        fresh = type(trained)(trained.config)
        fresh.save(folder / "untrained.pt", **{k: v for k, v in checkpoint.items()
                                               if k not in ("family", "config", "state_dict")})
        maps = os.path.join(args.table, f"maps-{row['maps']}") if row["maps"] != "ground-truth" else None
        if maps is None:
            from vprlib.demo.city import GT_MAPS

            maps = os.path.join(os.path.dirname(os.path.abspath(args.table)), "city", GT_MAPS)
        summary = table.evaluate(settings, {"checkpoint": str(folder / "untrained.pt")}, maps, str(folder))
        before = [summary[f"recall@{n}"] for n in (1, 5, 10)]
        after = [row[f"recall@{n}"] for n in (1, 5, 10)]
        print(f"RESULT {row['name']}: untrained {' / '.join(f'{x:.1%}' for x in before)}, trained "
              f"{' / '.join(f'{x:.1%}' for x in after)} (best epoch {row['best_epoch']}), Recall@1 "
              f"{100 * (after[0] - before[0]):+.1f} points", flush=True)


if __name__ == "__main__":
    main()
