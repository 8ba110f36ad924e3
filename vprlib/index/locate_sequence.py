"""Locating a short walk (jobs/locate.py --sequence FOLDER): the frames of a folder, oldest first, answered with one
position, the place of the last frame.

The frames go through the index's extraction chain and retriever as `locate` sends photos (vprlib.index.locate),
each is searched on the index (its top `k` places), and the path matcher (vprlib.sequences.match_paths) scores
constant-velocity walks through those places. The answer is the best path's end: where the last frame was taken,
with the walking direction and speed the path found and the places ranked after it. Frames are the folder's image
files in natural name order (frame2 before frame10), which is how frames cut from a video are named.
"""

from __future__ import annotations

import os
import re

import numpy as np

from vprlib.geo import local_plane
from vprlib.index.locate import LocateError
from vprlib.sequences import PathSearch, local_similarity, match_paths

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SEQUENCE_DEPTH = 50  # places searched per frame for the path matcher
# LocateConfig fields of a batch (--input) only, or of one photo's answer: not flags of a walk
BATCH_ONLY = ("photos", "input", "output", "prior_m", "batch_size", "actors", "search_actors", "ray_address",
              "cluster_m", "sure_ratio")


def natural_key(name: str) -> list:
    """'frame10.png' after 'frame2.png': digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frames(folder: str) -> tuple[str, ...]:
    """The image files of a folder in natural name order; one line when there is no such folder or no image."""
    if not os.path.isdir(folder):
        raise LocateError(f"--sequence {folder} is not a folder of frames")
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith(FRAME_SUFFIXES)), key=natural_key)
    if not names:
        raise LocateError(f"--sequence {folder} holds no frames ({', '.join(FRAME_SUFFIXES)} files)")
    return tuple(os.path.join(folder, n) for n in names)


def sequence_answer(hits, search: PathSearch | None = None, top_k: int = 5) -> dict:
    """The walk's answer from its frames' hits (rows oldest first, with lat/lon columns): the best path's end (its
    position, the walking heading and speed), its score and the top-k ends."""
    ids, dense, floor = local_similarity(hits.ids, hits.scores)
    flat = hits.ids.ravel()
    keep = flat != None  # noqa: E711
    lat = dict(zip(flat[keep].astype(str), hits.columns["lat"].ravel()[keep].astype(np.float64), strict=True))
    lon = dict(zip(flat[keep].astype(str), hits.columns["lon"].ravel()[keep].astype(np.float64), strict=True))
    lats, lons = np.array([lat[i] for i in ids]), np.array([lon[i] for i in ids])
    origin = (float(lats.mean()), float(lons.mean()))
    match = match_paths(dense, local_plane(lats, lons, origin), search or PathSearch(), floor=floor)
    best = match.order[0]
    places = [{"rank": rank + 1, "image_id": str(ids[e]), "lat": float(lats[e]), "lon": float(lons[e]),
               "score": float(match.score[e])} for rank, e in enumerate(match.order[:top_k])]
    return {"frames": len(hits.ids), "estimate": {"lat": float(lats[best]), "lon": float(lons[best])},
            "heading": float(match.heading[best]), "speed_m_per_frame": float(match.speed[best]),
            "score": float(match.score[best]), "places": places}


def locate_sequence(config, search: PathSearch | None = None) -> dict:
    """Locate the walk whose frames are `config.photos`, oldest first (a LocateConfig: index, models, device,
    min_side, top_k)."""
    import torch

    from vprlib.index.embed import load_model, retriever_record
    from vprlib.index.locate import check_index, check_photo_sizes, photo_maps
    from vprlib.index.search import Index
    from vprlib.train.data import resize_maps

    frames = config.photos
    index = Index(config.index)
    spec, model_path = check_index(index, config.models)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    check_photo_sizes(frames, config.min_side)
    maps = photo_maps(frames, spec, device)
    record = retriever_record(model_path)
    photo = {"rgb": maps["image"]} if "image" in maps else {}
    resized = resize_maps({"depth": maps["depth"], "seg": maps["seg"], **photo}, record.input_side)
    model = load_model(model_path).to(device)
    with torch.inference_mode():
        tensors = {k: torch.from_numpy(np.array(v)).to(device) for k, v in resized.items()}
        vectors = model.embed(tensors["depth"], tensors["seg"], tensors.get("rgb")).float().cpu().numpy()
    hits = index.search(vectors, max(config.top_k, SEQUENCE_DEPTH))
    if "lat" not in hits.columns:
        raise LocateError(f"{config.index} keeps no lat/lon with its images: a walk cannot be placed on a map")
    return {"frame_files": [os.path.basename(f) for f in frames], **sequence_answer(hits, search, config.top_k)}


def format_answer(answer: dict) -> str:
    at = answer["estimate"]
    lines = [f"{answer['sequence']}: {answer['frames']} frames ({answer['frame_files'][0]} .. "
             f"{answer['frame_files'][-1]}); the last estimated at {at['lat']:.6f}, "
             f"{at['lon']:.6f}, walking heading {answer['heading']:.0f} at {answer['speed_m_per_frame']:g} m per "
             f"frame (path score {answer['score']:.3f})"]
    lines += [f"  {p['rank']}. {p['image_id']}  {p['lat']:.6f}, {p['lon']:.6f}, path score {p['score']:.3f}"
              for p in answer["places"]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`jobs/locate.py --sequence FOLDER --index INDEX`: the walk's answer, as a table or JSON."""
    import json
    import sys

    from vprlib.cli import OneLineParser, add_flags
    from vprlib.index.locate import LocateConfig

    parser = OneLineParser(prog="locate.py --sequence", description=__doc__.split("\n")[0])
    parser.add_argument("--sequence", required=True, help="a folder of a walk's frames (natural name order)")
    add_flags(parser, LocateConfig, skip=BATCH_ONLY)
    parser.add_argument("--speeds", default="0,1,2,3,4", help="path speeds tried, metres per frame")
    parser.add_argument("--directions", type=int, default=8, help="path directions tried, evenly from north")
    parser.add_argument("--tolerance-m", type=float, default=7.5,
                        help="a frame's place is looked for within this many metres of where a path puts it")
    args = vars(parser.parse_args(argv))
    folder = args.pop("sequence")
    try:
        search = PathSearch(speeds=tuple(float(v) for v in args.pop("speeds").split(",") if v.strip()),
                            directions=args.pop("directions"), tolerance_m=args.pop("tolerance_m"))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        config = LocateConfig(**{**args, "photos": list_frames(folder)})
        answer = {"sequence": folder, **locate_sequence(config, search)}
    except (ValueError, FileNotFoundError) as exc:
        print(f"locate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2) if config.json else format_answer(answer))
    return 0
