"""Locating a short walk in one position, the place of its last frame (jobs/locate.py --sequence FOLDER|VIDEO).

The walk is the frames of a folder or of a video file, oldest first. They go through the index's extraction chain
and retriever as `locate` sends photos (vprlib.index.locate), each is searched on the index (its top `k` places), and
the path matcher (vprlib.sequences.match_paths) scores constant-velocity walks through those places. The answer is
the best path's end: where the last frame was taken, with the walking direction and speed the path found and the
places ranked after it. A folder's frames are its image files in natural name order (frame2 before frame10), which
is how frames cut from a video are named. A video's (.mp4, .mkv, .avi, .mov, .webm: any file PyAV decodes, the
`video` extra) are `--frames` frames (5) evenly spaced in time over the whole clip or its last `--seconds`, the last
being the clip's last frame: the path matcher assumes the frames about equally far apart. They are decoded in this
process, turned upright as the video's display matrix says and resized as a photo is; the answer names each by the
video and its time ('walk.mp4@3.20s').
"""

from __future__ import annotations

import os
import re

import numpy as np

from vprlib.geo import local_plane
from vprlib.index.locate import LocateError
from vprlib.sequences import PathSearch, local_similarity, match_paths

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_FRAMES = 5  # frames taken from a video by default: the demo walks' length, which the path matcher was measured on
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
        raise LocateError(f"--sequence {folder} is not a folder of frames or a video file")
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith(FRAME_SUFFIXES)), key=natural_key)
    if not names:
        raise LocateError(f"--sequence {folder} holds no frames ({', '.join(FRAME_SUFFIXES)} files)")
    return tuple(os.path.join(folder, n) for n in names)


def check_choice(count: int, seconds: float | None) -> None:
    """--frames and --seconds, in one line when they choose nothing."""
    if count < 1:
        raise LocateError(f"--frames must be >= 1, got {count}")
    if seconds is not None and not seconds > 0:
        raise LocateError(f"--seconds must be > 0, got {seconds:g}")


def choose_frames(times, count: int, seconds: float | None = None) -> list[int]:
    """Which of a clip's frames (their times in seconds, in presentation order) a walk takes: `count` frames evenly
    spaced in time over the clip's last `seconds` (None: the whole clip), the last being the clip's last frame,
    oldest first; each is the frame nearest its time. Where the frames' times are too uneven for `count` distinct
    nearest frames, they are taken evenly spaced by count over the same window."""
    check_choice(count, seconds)
    times = np.asarray(times, dtype=np.float64)
    end = times[-1]
    start = times[0] if seconds is None else max(times[0], end - seconds)
    window = np.nonzero(times >= start - 1e-9)[0]
    if len(window) < count:
        within = "" if seconds is None else f" in its last {seconds:g} s"
        raise LocateError(f"the clip has {len(window)} decodable frames{within}, fewer than --frames {count}")
    targets = np.linspace(start, end, count) if count > 1 else np.array([end])
    picks = window[np.abs(times[window][None, :] - targets[:, None]).argmin(axis=1)]
    if np.any(np.diff(picks) <= 0):
        picks = window[np.rint(np.linspace(0, len(window) - 1, count)).astype(int)]
    return [int(i) for i in picks]


def _decoded(container, stream):
    """The stream's frames in presentation order; a packet that does not decode is skipped."""
    import av

    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


_ROTATIONS = {90: "ROTATE_90", -90: "ROTATE_270", 180: "ROTATE_180", -180: "ROTATE_180"}


def upright(frame):
    """A decoded frame as an RGB PIL image, turned as the video's display matrix says (a phone held upright records
    its frames sideways and says so there)."""
    from PIL import Image

    image = frame.to_image()
    turn = _ROTATIONS.get(int(round(frame.rotation or 0)))
    return image.transpose(getattr(Image.Transpose, turn)) if turn else image


def read_video(path: str, count: int = VIDEO_FRAMES, seconds: float | None = None) -> tuple[list[str], list]:
    """A walk's frames from a video file (`choose_frames`): their names ('walk.mp4@3.20s', seconds since the clip's
    first frame) and RGB PIL images, oldest first. One line when the file is no video or holds too few frames."""
    check_choice(count, seconds)
    if path.lower().endswith(FRAME_SUFFIXES):
        raise LocateError(f"--sequence {path} is one image: give a folder of frames or a video")
    try:
        import av
    except ImportError:
        raise LocateError("reading a video needs PyAV: install vprlib[video]") from None

    name = os.path.basename(path)

    def clip():
        container = av.open(path)
        if not container.streams.video:
            container.close()
            raise LocateError(f"--sequence {path} holds no video stream")
        return container, container.streams.video[0]

    try:
        container, stream = clip()  # first pass: every decodable frame's time, no pixels kept
        with container:
            rate = stream.average_rate or stream.guessed_rate
            times = [f.time if f.time is not None else (i / rate if rate else None)
                     for i, f in enumerate(_decoded(container, stream))]
        if not times:
            raise LocateError(f"--sequence {path}: no frame of the video decodes")
        if None in times:
            raise LocateError(f"--sequence {path}: the video gives its frames no timestamps")
        try:
            picks = choose_frames(times, count, seconds)
        except LocateError as exc:
            raise LocateError(f"--sequence {path}: {exc}") from None
        wanted, images = set(picks), {}
        container, stream = clip()  # second pass: the chosen frames' pixels
        with container:
            for i, frame in enumerate(_decoded(container, stream)):
                if i in wanted:
                    images[i] = upright(frame)
                if len(images) == len(wanted):
                    break
    except av.error.FFmpegError as exc:
        raise LocateError(f"--sequence {path} is not a video PyAV can decode ({exc})") from None
    if len(images) != len(picks):
        raise LocateError(f"--sequence {path}: the video decoded differently the second time")
    names = [f"{name}@{times[i] - times[0]:.2f}s" for i in picks]
    return names, [images[i] for i in picks]


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


def locate_sequence(config, search: PathSearch | None = None, images=None) -> dict:
    """Locate the walk whose frames are `config.photos`, oldest first (a LocateConfig: index, models, device,
    min_side, top_k): image files, or the names of `images`, the frames already decoded (PIL images: `read_video`)."""
    import torch

    from vprlib.index.embed import load_model, retriever_record
    from vprlib.index.locate import check_index, check_photo_sizes, photo_maps
    from vprlib.index.search import Index
    from vprlib.train.data import resize_maps

    frames = config.photos
    index = Index(config.index)
    spec, model_path = check_index(index, config.models)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    check_photo_sizes(frames, config.min_side, images or ())
    maps = photo_maps(frames if images is None else images, spec, device)
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
    """`jobs/locate.py --sequence FOLDER|VIDEO --index INDEX`: the walk's answer, as a table or JSON."""
    import json
    import sys

    from vprlib.cli import OneLineParser, add_flags
    from vprlib.index.locate import LocateConfig

    parser = OneLineParser(prog="locate.py --sequence", description=__doc__.split("\n")[0])
    parser.add_argument("--sequence", required=True,
                        help="a folder of a walk's frames (natural name order) or a video file of the walk")
    parser.add_argument("--frames", type=int, default=None,
                        help=f"a video: frames taken, evenly spaced in time, the last the clip's (default: "
                             f"{VIDEO_FRAMES}); a folder's frames are all used")
    parser.add_argument("--seconds", type=float, default=None,
                        help="a video: take the frames from its last SECONDS only (default: the whole clip)")
    add_flags(parser, LocateConfig, skip=BATCH_ONLY)
    parser.add_argument("--speeds", default="0,1,2,3,4", help="path speeds tried, metres per frame")
    parser.add_argument("--directions", type=int, default=8, help="path directions tried, evenly from north")
    parser.add_argument("--tolerance-m", type=float, default=7.5,
                        help="a frame's place is looked for within this many metres of where a path puts it")
    args = vars(parser.parse_args(argv))
    walk, count, seconds = args.pop("sequence"), args.pop("frames"), args.pop("seconds")
    try:
        search = PathSearch(speeds=tuple(float(v) for v in args.pop("speeds").split(",") if v.strip()),
                            directions=args.pop("directions"), tolerance_m=args.pop("tolerance_m"))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        if os.path.isfile(walk):
            names, images = read_video(walk, VIDEO_FRAMES if count is None else count, seconds)
        elif count is not None or seconds is not None:
            raise LocateError("--frames and --seconds choose a video's frames; a folder's frames are all used")
        else:
            names, images = list_frames(walk), None
        config = LocateConfig(**{**args, "photos": tuple(names)})
        answer = {"sequence": walk, **locate_sequence(config, search, images)}
    except (ValueError, FileNotFoundError) as exc:
        print(f"locate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2) if config.json else format_answer(answer))
    return 0
