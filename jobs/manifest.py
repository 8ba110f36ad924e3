"""Turn a dataset on disk (local folder or s3://) into a manifest Parquet file that jobs/extract.py --input accepts.

    python jobs/manifest.py holicity --root DIR|s3://... --output manifest.parquet [--splits DIR]
                                     [--split-scheme middlesplit]
    python jobs/manifest.py vpr --root DIR|s3://... --output manifest.parquet [--subset test] [--queries queries]
    python jobs/manifest.py gldv2 --root DIR --output manifest.parquet --protocol retrieval [--usage Public Private]
                                  [--no-check-files]
    python jobs/manifest.py gldv2 --root DIR --output manifest.parquet --protocol paper --country-list FR.json
                                  [--country France] [--fraction 0.25] [--test-landmarks 0.5304] [--query-fraction 0.5]
                                  [--seed 0] [--no-check-files]
    python jobs/manifest.py folder --root DIR --output manifest.parquet [--locations locations.csv] [--no-check-files]

Prints one line: rows, rows per split, how many have GPS when the dataset says, and for the GLDv2 paper protocol its
images and landmarks next to the paper's. Exit status 2 with one line on stderr on bad arguments or input (missing
root, split lists or images, an invalid manifest).
"""

import argparse
import inspect
import sys

import pyarrow as pa
import pyarrow.compute as pc

from vprlib.cli import OneLineParser, run
from vprlib.data.folder import folder_manifest
from vprlib.data.gldv2 import USAGES, gldv2_paper_manifest, gldv2_retrieval_manifest, paper_counts
from vprlib.data.holicity import SPLIT_FOLDERS, holicity_manifest
from vprlib.data.manifest import SPLITS, ManifestError, write_manifest
from vprlib.data.vpr import SUBSETS, vpr_manifest
from vprlib.storage import url_to_fs

GLDV2_PROTOCOLS = {"retrieval": gldv2_retrieval_manifest, "paper": gldv2_paper_manifest}


def gldv2_manifest(root: str, protocol: str, check_files: bool, **options):
    """Google Landmarks v2: the retrieval benchmark (--protocol retrieval) or the paper's country protocol (paper).

    `options` are the protocol's flags, None when not given; a flag of the other protocol, or a missing required
    one, is a ValueError naming the flag."""
    function = GLDV2_PROTOCOLS[protocol]
    parameters = inspect.signature(function).parameters
    given = {name: value for name, value in options.items() if value is not None}
    for name in given:
        if name not in parameters:
            raise ValueError(f"--{name.replace('_', '-')} is not a flag of --protocol {protocol}")
    for name, parameter in parameters.items():
        if parameter.default is parameter.empty and name != "root" and name not in given:
            raise ValueError(f"--protocol {protocol} needs --{name.replace('_', '-')}")
    return function(root, check_files=check_files, **given)


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
    vpr.add_argument("--sequence-frames", type=int, default=0, help="group each query folder's consecutive frames "
                     "into sequences of this many (sequence_id, frame_index; 0: none)")

    retrieval, paper = _defaults(gldv2_retrieval_manifest), _defaults(gldv2_paper_manifest)
    gldv2.add_argument("--protocol", required=True, choices=list(GLDV2_PROTOCOLS),
                       help="retrieval: GLDv2's retrieval benchmark (index images against the scored test images); "
                       "paper: the paper's protocol (a share of one country's train images, split by landmark)")
    gldv2.add_argument("--usage", nargs="+", choices=list(USAGES), type=str.capitalize,
                       help=f"retrieval: the test images that are queries (default {' '.join(retrieval['usage'])})")
    gldv2.add_argument("--country-list",
                       help="paper (required): the landmarks of a country, the dataset explorer's per-country JSON "
                       "(e.g. FR.json) or a CSV landmark_id,country; relative to --root or absolute")
    gldv2.add_argument("--country", help="paper: the country to keep when the CSV country list holds several")
    gldv2.add_argument("--fraction", type=float,
                       help=f"paper: share of the country's train images kept (default {paper['fraction']})")
    gldv2.add_argument("--test-landmarks", type=float,
                       help="paper: share of the kept landmarks that are test landmarks, unseen in training "
                       f"(default {paper['test_landmarks']:.4f}, the paper's 5,387 / 10,157)")
    gldv2.add_argument("--query-fraction", type=float,
                       help="paper: share of each test landmark's images that are queries, the rest the database "
                       f"(default {paper['query_fraction']})")
    gldv2.add_argument("--seed", type=int, help=f"paper: seed of the choices above (default {paper['seed']})")

    defaults = _defaults(folder_manifest)
    folder.add_argument("--locations", default=defaults["locations"],
                        help="CSV naming each image and its lat, lon (relative to --root or absolute; "
                        "default %(default)s)")

    for sub, function in ((gldv2, gldv2_retrieval_manifest), (folder, folder_manifest)):
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
    counts = paper_counts(table) if dataset == "gldv2" else ""
    print(summary(table, output) + (f"; {counts}" if counts else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
