"""HoliCity (Zhou et al., "HoliCity: A City-Scale Data Platform for Learning Holistic 3D Structures", 2020) as a
manifest, and its ground truth as refiner targets: the paper's first dataset (IV-A), London street views with
CAD-rendered depth and segmentation.

Released layout (local folder or s3:// prefix), one viewpoint = one panorama seen as several perspective images:

    {YYYY-MM}/{panoid}_{HD|LD}_{yaw}_{pitch}_imag.jpg   RGB, 512x512, 90 degree field of view
    {YYYY-MM}/{panoid}_{HD|LD}_{yaw}_{pitch}_dpth.npz   "depth" (512, 512, 1) float32 metres, 0 where there is no
                                                        geometry (sky) (gt_depth_uri)
    {YYYY-MM}/{panoid}_{HD|LD}_{yaw}_{pitch}_sgmt.png   uint8 labels, HOLICITY_CLASSES (gt_seg_uri)
    {YYYY-MM}/{panoid}_{HD|LD}_{yaw}_{pitch}_camr.npz   camera: "loc" (x, y in metres in the CAD model frame; z the
                                                        camera's height above the terrain), "yaw" (degrees clockwise
                                                        from the frame's north), "pitch"
    split-all-v1-bugfix/{train,valid,test}-middlesplit.txt, {train,test}-randomsplit.txt, filelist.txt
                                                        split lists, one viewpoint a line: "{YYYY-MM}/{panoid}_{HD|LD}"

The month folders may sit anywhere under the root (e.g. `image-v1/2008-07/...`, and each kind of file in its own
tree, as the separate archives unpack); siblings are matched by month folder and file stem. The split lists are
looked for where the release puts them and where people often unzip them (SPLIT_FOLDERS), or in a folder named by
`splits`. The test split's depth maps are withheld by the authors, so missing `_dpth`/`_sgmt` files give null
ground-truth columns (and `holicity_ground_truth` refuses them); a missing `_camr.npz` is an error, since it holds
the position.

Positions: the CAD frame (x east, y north, metres, grid-aligned with the British National Grid) is turned into
WGS84 with the georeference HoliCity publishes (`gps_london.py` in github.com/zhou13/holicity): latitude/longitude
measured at the corners of a 1 km grid, interpolated bilinearly. Its origin, model (0, 0), is at 51.51256733 N,
0.09916756 W (City of London). Outside the published 8 x 6 km grid the nearest cell is extrapolated linearly.
Heading is yaw corrected from the frame's north to true north (about 1.4 degrees in London).

Ground truth: `holicity_ground_truth` turns a view's `_dpth.npz` and `_sgmt.png` into the maps of the
"ground-truth" strategy (vprlib.spec): depth in inverse metres (0 = no geometry), labels in `refined4` with road
merged into terrain and "others" (whatever the CAD model holds beyond the five named classes) set to
IGNORE_LABEL, which the refiner loss and the segmentation metrics skip.
"""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import pyarrow as pa
from PIL import Image

from vprlib.data.manifest import ManifestError, validate
from vprlib.spec import IGNORE_LABEL, to_inverse_metres
from vprlib.storage import absolute_path, is_remote, join_uri, url_to_fs

# The released segmentation's labels, and each one's refined4 id (REFINED_CLASSES); the synthetic city's static
# segmentation uses the first five, so the same table serves it.
HOLICITY_CLASSES = ("sky", "building", "road", "terrain", "tree", "others")
HOLICITY_TO_REFINED = (0, 1, 2, 2, 3, IGNORE_LABEL)  # road merged into terrain (paper III-A); others ignored
HOLICITY_SIDE = 512  # the released maps are HOLICITY_SIDE x HOLICITY_SIDE

# (lat, lon) of model point (1000 * (i - 4), 1000 * (j - 3)) metres at [i, j]; from HoliCity's gps_london.py
_GEOREFERENCE = np.array([
    [[51.48653658, -0.15787351], [51.49552138, -0.15750779], [51.50450284, -0.15714251],
     [51.5134942, -0.15678146], [51.522482, -0.15641665], [51.53147821, -0.15603593]],
    [[51.48629708, -0.14348133], [51.4952862, -0.14311014], [51.50427476, -0.14273894],
     [51.51326159, -0.14237039], [51.52225695, -0.14200299], [51.53124625, -0.14162871]],
    [[51.48606092, -0.12908871], [51.49505511, -0.12871558], [51.50405668, -0.12834281],
     [51.51303504, -0.1279733], [51.52202077, -0.12760482], [51.53100586, -0.12723739]],
    [[51.485832, -0.11469519], [51.49482364, -0.11431929], [51.50381857, -0.11394519],
     [51.51280529, -0.11357625], [51.5217936, -0.11320131], [51.53077853, -0.11282795]],
    [[51.48560681, -0.10029999], [51.49459821, -0.09992166], [51.50358628, -0.09954092],
     [51.51256733, -0.09916756], [51.52156189, -0.09879787], [51.53055204, -0.09841437]],
    [[51.48537856, -0.08590049], [51.49436934, -0.08552391], [51.50335272, -0.08514402],
     [51.51233467, -0.08477007], [51.52132308, -0.08439054], [51.53031843, -0.08400393]],
    [[51.48514379, -0.07149651], [51.49412855, -0.07111692], [51.50311466, -0.0707391],
     [51.51210374, -0.07036401], [51.52108874, -0.06998574], [51.53007984, -0.06960159]],
    [[51.48490644, -0.05709119], [51.49389141, -0.05671215], [51.50287896, -0.05633446],
     [51.51186803, -0.05595725], [51.5208552, -0.05557937], [51.5298418, -0.05520037]],
])  # fmt: skip
_GRID_ORIGIN = (4, 3)  # grid index of model (0, 0)
_GRID_STEP_M = 1000.0

SPLIT_NAMES = {"train": "train", "valid": "val", "test": "test"}  # HoliCity file name -> manifest split
# Where the split lists are looked for under the root, in this order: as the release's zip unpacks, the same inside
# `split/` (the download's folder), loose in `split/`.
SPLIT_FOLDERS = ("split-all-v1-bugfix", "split/split-all-v1-bugfix", "split")
_FILE = re.compile(
    r"(?P<key>(?P<month>\d{4}-\d{2})/(?P<panoid>[^/]+)_(?P<detail>HD|LD)_(?P<yaw>-?\d+)_(?P<pitch>-?\d+))"
    r"_(?P<kind>imag|dpth|sgmt|camr)\.(?:jpg|npz|png)$"
)


def holicity_to_wgs84(x, y) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) in degrees of CAD-model points (x east, y north, metres) by bilinear georeference interpolation."""
    gx = np.asarray(x, dtype=np.float64) / _GRID_STEP_M + _GRID_ORIGIN[0]
    gy = np.asarray(y, dtype=np.float64) / _GRID_STEP_M + _GRID_ORIGIN[1]
    i = np.clip(np.floor(gx), 0, _GEOREFERENCE.shape[0] - 2).astype(int)
    j = np.clip(np.floor(gy), 0, _GEOREFERENCE.shape[1] - 2).astype(int)
    fx, fy = (gx - i)[..., None], (gy - j)[..., None]
    g = _GEOREFERENCE
    latlon = (g[i, j] * (1 - fx) * (1 - fy) + g[i + 1, j] * fx * (1 - fy)
              + g[i, j + 1] * (1 - fx) * fy + g[i + 1, j + 1] * fx * fy)  # fmt: skip
    return latlon[..., 0], latlon[..., 1]


def grid_north_bearing(x, y) -> np.ndarray:
    """True bearing in degrees of the CAD frame's +y axis at model points: add it to a yaw to get a heading."""
    lat0, lon0 = holicity_to_wgs84(x, y)
    lat1, lon1 = holicity_to_wgs84(x, np.asarray(y, dtype=np.float64) + 1.0)
    return np.degrees(np.arctan2((lon1 - lon0) * np.cos(np.radians(lat0)), lat1 - lat0))


def holicity_to_refined(labels) -> np.ndarray:
    """HoliCity labels (any integer array) -> refined4 ids, uint8 of the same shape; "others" and any label outside
    HOLICITY_CLASSES become IGNORE_LABEL, so an unexpected value is skipped rather than learned."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"HoliCity labels must be integers, got {labels.dtype}")
    refined = np.full(labels.shape, IGNORE_LABEL, np.uint8)
    known = (labels >= 0) & (labels < len(HOLICITY_TO_REFINED))
    refined[known] = np.asarray(HOLICITY_TO_REFINED, np.uint8)[labels[known]]
    return refined


def holicity_ground_truth(depth_uri: str | None, seg_uri: str | None,
                          side: int = HOLICITY_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """A view's refiner targets from its `_dpth.npz` and `_sgmt.png` (a manifest row's gt_depth_uri, gt_seg_uri;
    local or s3://): depth float32 (side, side) in inverse metres (0 where there is no geometry) and labels uint8
    (side, side) in refined4 with IGNORE_LABEL for "others". Resized by nearest neighbour, so no valid depth is
    blended with an invalid 0 and no label with another.
    """
    depth = _read_depth(depth_uri)
    labels = _read_labels(seg_uri)
    if depth.shape != labels.shape:
        raise ValueError(f"{depth_uri}: depth is {depth.shape[1]}x{depth.shape[0]} but {seg_uri} is "
                         f"{labels.shape[1]}x{labels.shape[0]}")
    return resize_nearest(to_inverse_metres(depth), side), resize_nearest(holicity_to_refined(labels), side)


def resize_nearest(array: np.ndarray, side: int) -> np.ndarray:
    """A 2-D map resized to side x side by nearest neighbour (each output pixel takes the input pixel under its
    centre), the only resize that keeps depth validity and labels exact."""
    if side < 1:
        raise ValueError(f"side must be >= 1, got {side}")
    height, width = array.shape
    if (height, width) == (side, side):
        return array
    rows = ((np.arange(side) + 0.5) * height / side).astype(np.int64)
    cols = ((np.arange(side) + 0.5) * width / side).astype(np.int64)
    return array[np.ix_(rows, cols)]


def _read_depth(uri: str | None) -> np.ndarray:
    """The metres of a `_dpth.npz` as an (H, W) array; a clear error for a view without one (the test split)."""
    if not uri:
        raise ValueError("no depth map for this view (gt_depth_uri is empty; HoliCity withholds the test split's "
                         "depth maps)")
    blob = _read_bytes(uri, "HoliCity depth map not found (the authors withhold the test split's)")
    try:
        with np.load(io.BytesIO(blob)) as npz:
            depth = npz["depth"]
    except (KeyError, ValueError, TypeError, OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{uri}: not a HoliCity depth map (an npz with 'depth'): {exc}") from None
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise ValueError(f"{uri}: depth must be (H, W, 1) or (H, W), got {depth.shape}")
    return depth


def _read_labels(uri: str | None) -> np.ndarray:
    """The labels of a `_sgmt.png` as an (H, W) integer array."""
    if not uri:
        raise ValueError("no segmentation for this view (gt_seg_uri is empty)")
    blob = _read_bytes(uri, "HoliCity segmentation not found")
    try:
        labels = np.asarray(Image.open(io.BytesIO(blob)))
    except OSError as exc:
        raise ValueError(f"{uri}: not an image: {exc}") from None
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{uri}: expected one integer label per pixel, got {labels.dtype} {labels.shape}")
    return labels


def _read_bytes(uri: str, missing: str) -> bytes:
    """The bytes of a file (local or s3://); FileNotFoundError "{uri}: {missing}" when it is not there."""
    fs, path = url_to_fs(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: {missing}") from None


def holicity_manifest(root: str, splits: str | None = None, split_scheme: str = "middlesplit") -> pa.Table:
    """Manifest of every HoliCity perspective image under `root` (local or s3://), validated.

    Columns: image_id (`{YYYY-MM}/{panoid}_{HD|LD}_{yaw}_{pitch}`), uri, lat, lon, heading, pitch, yaw, east_m,
    north_m (CAD frame), height_m (camera above the terrain), place_id (panorama id), detail (HD/LD), split
    (train/val/test from `{name}-{split_scheme}.txt`, null for an image in no list), gt_depth_uri, gt_seg_uri.
    splits: the folder of the split lists (relative to `root`, or absolute); None looks in SPLIT_FOLDERS.
    """
    fs, base = url_to_fs(root)
    files = _index_files(fs.find(base))
    keys = sorted(k for k, kinds in files.items() if "imag" in kinds)
    if not keys:
        raise ManifestError(f"{root}: no HoliCity images ({{YYYY-MM}}/{{panoid}}_{{HD|LD}}_{{yaw}}_{{pitch}}_imag.jpg)")
    missing = [files[k]["imag"] for k in keys if "camr" not in files[k]]
    if missing:
        raise ManifestError(f"{_uri(root, missing[0])}: no camera file (its _camr.npz) under the root "
                            f"({len(missing)} in all)")
    cameras = _read_cameras(fs, root, [files[k]["camr"] for k in keys])
    loc = np.array([c["loc"] for c in cameras])
    lat, lon = holicity_to_wgs84(loc[:, 0], loc[:, 1])
    yaw = np.array([c["yaw"] for c in cameras])
    split_of = _read_splits(root, splits, split_scheme)
    parsed = [_FILE.search(files[k]["imag"]) for k in keys]
    table = pa.table({
        "image_id": keys,
        "uri": [_uri(root, files[k]["imag"]) for k in keys],
        "lat": lat, "lon": lon,
        "heading": np.mod(yaw + grid_north_bearing(loc[:, 0], loc[:, 1]), 360.0),
        "pitch": np.array([c["pitch"] for c in cameras]), "yaw": yaw,
        "east_m": loc[:, 0], "north_m": loc[:, 1], "height_m": loc[:, 2],
        "place_id": [m["panoid"] for m in parsed],
        "detail": [m["detail"] for m in parsed],
        "split": pa.array([_split_of(m, split_of) for m in parsed], pa.string()),
        "gt_depth_uri": pa.array([_uri(root, files[k].get("dpth")) for k in keys], pa.string()),
        "gt_seg_uri": pa.array([_uri(root, files[k].get("sgmt")) for k in keys], pa.string()),
    })  # fmt: skip
    return validate(table, source=root)


def _index_files(paths: list[str]) -> dict[str, dict[str, str]]:
    """{"YYYY-MM/stem": {"imag"|"dpth"|"sgmt"|"camr": path}} for the HoliCity files among `paths`."""
    files: dict[str, dict[str, str]] = {}
    for path in paths:
        match = _FILE.search(path)
        if match:
            files.setdefault(match["key"], {})[match["kind"]] = path
    return files


def _read_cameras(fs, root: str, paths: list[str]) -> list[dict[str, np.ndarray]]:
    """loc, yaw, pitch of each `_camr.npz` (fetched concurrently on object stores)."""
    blobs = fs.cat(paths)
    cameras = []
    for path in paths:
        try:
            with np.load(io.BytesIO(blobs[path])) as npz:
                camera = {key: np.asarray(npz[key], dtype=np.float64) for key in ("loc", "yaw", "pitch")}
        except (KeyError, ValueError, OSError) as exc:
            raise ManifestError(f"{_uri(root, path)}: not a HoliCity camera file (loc, yaw, pitch): {exc}") from None
        if camera["loc"].shape != (3,) or not np.all(np.isfinite(camera["loc"])):
            raise ManifestError(f"{_uri(root, path)}: loc must be 3 finite numbers, got {camera['loc']}")
        cameras.append(camera)
    return cameras


def _read_splits(root: str, splits: str | None, scheme: str) -> dict[str, str]:
    """{viewpoint or image key: manifest split} from the lists of the first folder (`splits`, else SPLIT_FOLDERS)
    that holds any `{train,valid,test}-{scheme}.txt`; a folder of none of them is an error naming where it looked."""
    folders = [splits] if splits is not None else list(SPLIT_FOLDERS)
    for folder in folders:
        uri = join_uri(root, folder)
        fs, path = url_to_fs(uri)
        lists = {f"{uri}/{name}-{scheme}.txt": split for name, split in SPLIT_NAMES.items()
                 if fs.exists(f"{path}/{name}-{scheme}.txt")}
        if lists:
            return _read_lists(fs, lists)
    names = ", ".join(f"{n}-{scheme}.txt" for n in SPLIT_NAMES)
    if splits is not None:
        raise ManifestError(f"{join_uri(root, splits)}: no HoliCity split lists ({names})")
    raise ManifestError(f"{root}: no HoliCity split lists ({names}) in {', '.join(f + '/' for f in SPLIT_FOLDERS)}; "
                        "name their folder with `splits` (--splits)")


def _read_lists(fs, lists: dict[str, str]) -> dict[str, str]:
    """{key: split} of the list files {uri: split}; a key in two lists is an error naming the second."""
    splits: dict[str, str] = {}
    for uri, split in lists.items():
        for line in fs.cat_file(url_to_fs(uri)[1]).decode().splitlines():
            key = line.strip()
            if key and splits.setdefault(key, split) != split:
                raise ManifestError(f"{uri}: {key!r} is also in the {splits[key]!r} split")
    return splits


def _split_of(match: re.Match, splits: dict[str, str]) -> str | None:
    """An image's split, listed by viewpoint (as published), by image, or by panorama."""
    panorama = f"{match['month']}/{match['panoid']}"
    for key in (f"{panorama}_{match['detail']}", match["key"], panorama):
        if key in splits:
            return splits[key]
    return None


def _uri(root: str, path: str | None) -> str | None:
    """A filesystem path as a URI of the same kind as `root` (s3 paths get their scheme back)."""
    if path is None or not is_remote(root):
        return path
    return f"{root.split('://', 1)[0]}://{path}"


# ------------------------------------------------------------------------------- the ground truth as a maps table
GT_COLUMNS = ("gt_depth_uri", "gt_seg_uri")


def ground_truth_spec(side: int):
    """The map specification of HoliCity's ground-truth maps (exact static maps, no model involved)."""
    from vprlib.spec import MapSpec

    return MapSpec(strategy="ground-truth", models="holicity", side=side)


def read_ground_truth_batch(batch: dict, side: int) -> dict:
    """A Ray Data batch of manifest rows (image_id, gt_depth_uri, gt_seg_uri, _row) -> their refiner targets as
    pipeline maps (`depth`, `seg`, `status`, `error`); a file that cannot be read makes its row an error row."""
    n = len(batch["image_id"])
    depth, seg = np.zeros((n, side, side), np.float32), np.zeros((n, side, side), np.uint8)
    status, error = np.full(n, "ok", dtype=object), np.full(n, "", dtype=object)
    for i in range(n):
        try:
            depth[i], seg[i] = holicity_ground_truth(batch["gt_depth_uri"][i], batch["gt_seg_uri"][i], side)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            status[i], error[i] = "error", " ".join(f"ground truth: {exc}".split())[:500]
    return {"image_id": batch["image_id"], "_row": batch["_row"], "status": status, "error": error, "depth": depth,
            "seg": seg, "dynamic_fraction": np.full(n, np.nan, np.float32)}  # unknown: the dynamic objects are gone


def write_ground_truth(manifest_path: str, output: str, side: int = HOLICITY_SIDE, ray_address: str = "",
                       rows_per_file: int = 128, batch_size: int = 8) -> dict[str, int]:
    """HoliCity's ground truth of a manifest's views (`gt_depth_uri`, `gt_seg_uri`: jobs/manifest.py holicity) as a
    maps table of strategy ground-truth in `output` (local or s3://): the refiners' `--targets`. Views without
    ground truth (HoliCity's test split) are left out; an unreadable file is a row with an error. Resumes: rows
    already written are skipped. Returns the status counts of the rows this run wrote."""
    import pyarrow.compute as pc

    from vprlib.cluster import connect, io_task_args
    from vprlib.data.manifest import read_manifest
    from vprlib.maps import carry_columns, check_spec, part_files, prepare_output, write_spec

    output = absolute_path(output)
    manifest = read_manifest(absolute_path(manifest_path))
    missing = [c for c in GT_COLUMNS if c not in manifest.column_names]
    if missing:
        raise ManifestError(f"{manifest_path} has no {' or '.join(missing)} column: a HoliCity manifest "
                            f"(jobs/manifest.py holicity) names each view's ground-truth files")
    has_gt = pc.and_(pc.is_valid(manifest["gt_depth_uri"]), pc.is_valid(manifest["gt_seg_uri"]))
    manifest = carry_columns(manifest.filter(has_gt))
    spec = ground_truth_spec(side)
    if part_files(output):
        check_spec(output, spec.record({}), f"this run (--side {side})")
    connect(ray_address)
    write_spec(output, spec.record({}))
    done = prepare_output(output, retry_errors=False, job="ground truth")
    todo = manifest.filter(pc.invert(pc.is_in(manifest["image_id"], value_set=done["image_id"])))
    print(f"ground truth: {manifest.num_rows} views with ground truth ({pc.sum(pc.invert(has_gt)).as_py() or 0} "
          f"without left out), {manifest.num_rows - todo.num_rows} already written, {todo.num_rows} to do",
          flush=True)
    if not todo.num_rows:
        return {}
    import ray

    from vprlib.maps_ray import write_dataset

    rows = pa.table({"image_id": todo["image_id"], "gt_depth_uri": todo["gt_depth_uri"],
                     "gt_seg_uri": todo["gt_seg_uri"], "_row": pa.array(range(todo.num_rows), pa.int64())})
    ds = ray.data.from_arrow([rows.slice(i, batch_size) for i in range(0, rows.num_rows, batch_size)])
    ds = ds.map_batches(read_ground_truth_batch, batch_size=batch_size, num_cpus=1, fn_kwargs={"side": side},
                        **io_task_args())
    counts = write_dataset(ds, output, spec, "{}", todo, rows_per_file, batch_size)
    print(f"ground truth: rows ok {counts.get('ok', 0)}, rows failed {counts.get('error', 0)}; maps in {output}",
          flush=True)
    return counts
