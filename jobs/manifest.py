"""Turn a dataset on disk (local folder or s3://) into a manifest Parquet file that jobs/extract.py --input accepts.

    python jobs/manifest.py holicity --root DIR|s3://... --output manifest.parquet [--splits DIR]
                                     [--split-scheme middlesplit]
    python jobs/manifest.py vpr --root DIR|s3://... --output manifest.parquet [--subset test] [--queries queries]
    python jobs/manifest.py gldv2 --root DIR --output manifest.parquet [--landmarks CSV] [--country France]
                                  [--all-countries] [--train-fraction 0.25] [--seed 0] [--no-check-files]
    python jobs/manifest.py folder --root DIR --output manifest.parquet [--locations locations.csv] [--no-check-files]

Prints one line: rows, rows per split (and how many have GPS when the dataset says). Exit status 2 with one line on
stderr on bad arguments or input (missing root, split lists or images, an invalid manifest).
"""

import argparse
import inspect
import sys

import pyarrow as pa
import pyarrow.compute as pc

from vprlib.cli import OneLineParser
from vprlib.data.folder import folder_manifest
from vprlib.data.gldv2 import gldv2_manifest
from vprlib.data.holicity import SPLIT_FOLDERS, holicity_manifest
from vprlib.data.manifest import SPLITS, ManifestError, url_to_fs, write_manifest
from vprlib.data.vpr import SUBSETS, vpr_manifest

DATASETS = {"holicity": holicity_manifest, "gldv2": gldv2_manifest, "folder": folder_manifest, "vpr": vpr_manifest}


def _defaults(function) -> dict:
    """The keyword defaults of a library function, so the command line cannot drift from them."""
    return {k: p.default for k, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="manifest.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="dataset", required=True, metavar="{" + ",".join(DATASETS) + "}")
    subparsers = {}
    for name, function in DATASETS.items():
        sub = commands.add_parser(name, help=function.__doc__.split("\n")[0],
                                  description=function.__doc__.split("\n")[0])
        sub.add_argument("--root", required=True, help="the dataset's folder or s3:// prefix")
        sub.add_argument("--output", required=True, help="manifest to write (.parquet, local or s3://)")
        subparsers[name] = sub
    holicity, gldv2, folder, vpr = (subparsers[n] for n in DATASETS)

    defaults = _defaults(holicity_manifest)
    holicity.add_argument("--splits", default=defaults["splits"],
                          help="folder of the split lists (relative to --root or absolute; default: the first of "
                          f"{', '.join(f + '/' for f in SPLIT_FOLDERS)} that holds them)")
    holicity.add_argument("--split-scheme", default=defaults["split_scheme"],
                          help="split lists read: {train,valid,test}-SCHEME.txt, e.g. randomsplit "
                          "(default %(default)s)")

    defaults = _defaults(vpr_manifest)
    vpr.add_argument("--subset", default=defaults["subset"], choices=SUBSETS,
                     help="keep only this subset's database and queries (default: every subset found)")
    vpr.add_argument("--queries", default=defaults["queries"],
                     help="keep only this query folder, e.g. queries_night (default: every queries* folder)")

    defaults = _defaults(gldv2_manifest)
    gldv2.add_argument("--landmarks", default=defaults["landmarks"],
                       help="CSV (relative to --root or absolute) with landmark_id and country and/or lat, lon; "
                       "needed to select a country, since GLDv2 has none")
    countries = gldv2.add_mutually_exclusive_group()
    countries.add_argument("--country", default=defaults["country"],
                           help="keep this country's landmarks (default %(default)s, the paper's subset)")
    countries.add_argument("--all-countries", dest="country", action="store_const", const=None,
                           default=argparse.SUPPRESS, help="keep every landmark (no --landmarks needed)")
    gldv2.add_argument("--train-fraction", type=float, default=defaults["train_fraction"],
                       help="share of the training images kept, chosen by seeded hash (default %(default)s)")
    gldv2.add_argument("--seed", type=int, default=defaults["seed"], help="seed of that choice (default %(default)s)")

    defaults = _defaults(folder_manifest)
    folder.add_argument("--locations", default=defaults["locations"],
                        help="CSV naming each image and its lat, lon (relative to --root or absolute; "
                        "default %(default)s)")

    for sub, function in ((gldv2, gldv2_manifest), (folder, folder_manifest)):
        sub.add_argument("--check-files", action=argparse.BooleanOptionalAction,
                         default=_defaults(function)["check_files"],
                         help="make sure every listed image exists (default %(default)s)")
    return parser


def summary(table: pa.Table, output: str) -> str:
    """'OUTPUT: N rows (train 4, val 2, no split 2), K with GPS' (the parts the table's columns allow)."""
    parts = []
    if "split" in table.column_names:
        counts = {c["values"]: c["counts"] for c in pc.value_counts(table["split"]).to_pylist()}
        parts += [f"{split} {counts.pop(split)}" for split in SPLITS if split in counts]
        if None in counts:
            parts.append(f"no split {counts.pop(None)}")
    rows = f"{table.num_rows} row" + ("" if table.num_rows == 1 else "s")
    line = f"{output}: {rows}" + (f" ({', '.join(parts)})" if parts else "")
    if "has_gps" in table.column_names:
        line += f", {pc.sum(table['has_gps']).as_py() or 0} with GPS"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    dataset, root, output = args.pop("dataset"), args["root"], args.pop("output")
    if not output.endswith(".parquet"):
        parser.error(f"--output must be a .parquet file, got {output!r}")
    try:
        fs, path = url_to_fs(root)
        if not fs.exists(path):
            raise ManifestError(f"--root not found: {root}")
        table = DATASETS[dataset](**args)
        write_manifest(table, output)
    except (ValueError, OSError) as exc:  # ManifestError is a ValueError; OSError: missing or unwritable files
        parser.error(" ".join(str(exc).split()))
    print(summary(table, output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
