"""Geometric re-ranking: a query's top candidates re-ordered by how well their maps agree with the query's.

Retrieval ranks by descriptors alone; the maps say more. On the demo city the right place is in the top 10 for 94-97%
of the queries but first for only 44-57%. This stage compares the query's label map with each of its first K
candidates', tolerant of the offsets a place allows, and re-orders those K (never which they are):

1. Both maps are cut to `THUMB` x `THUMB` labels (nearest: no label invented).
2. Each candidate is warped by every horizontal shift up to 1/16 of the width (a turn of a few degrees) and every zoom
   in `ZOOMS` about the centre (a step forward or back), and compared with the query on the pixels the warp covers.
   Agreement is the best, over the warps, share of those pixels whose labels are equal; pixels of no static class
   (the ignore label, `others`; ADE20K's dynamic classes) count on neither side.
3. Per query, score = z(agreement) + DESCRIPTOR_WEIGHT x z(descriptor similarity) over its K candidates (z: minus
   the mean, over the standard deviation; 0 when they are all equal), sorted by score, ties kept in search order.

Depth is not compared: the strategies' depth conventions differ (vprlib.spec: `inverse-metres` is metric, `relative-
inverse` is normalised per image); labels alone meet the target on the demo city (benchmarks/rerank_study.py,
docs/RESULTS.md), and what depth would add is not measured.

No process holds the city: `CandidateMaps` knows which maps part holds each row of its shards (from the index's
embeddings files, one per maps part) and reads only the parts its candidates are in, only their rows' labels.
`RerankPool` spreads the shards over Ray actors as `vprlib.index.search.SearchPool` does; locate's single photos use
a `CandidateMaps` of every shard in their own process.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict

import numpy as np
import pyarrow.compute as pc

from vprlib.index.search import EMBEDDINGS, Hits, balance, read_manifest, read_parts
from vprlib.spec import IGNORE_LABEL
from vprlib.storage import url_to_fs

THUMB = 32  # side of the label maps compared
MAX_SHIFT = THUMB // 16  # horizontal shifts searched, in thumbnail pixels either way (1/16 of the width)
ZOOMS = (0.8, 0.9, 1.0, 1.12, 1.25)  # about the image centre: a step forward or back
DESCRIPTOR_WEIGHT = 0.25  # weight of the descriptor similarity's z-score beside the agreement's
DEFAULT_K = 10
CACHE_ROWS = 65536  # thumbnails a CandidateMaps keeps
PAD = IGNORE_LABEL  # the label of pixels that count on neither side: ignored classes, and those a warp leaves bare


class RerankError(ValueError):
    """Maps the re-ranking needs that are not there (a moved maps table, a candidate its part lacks)."""


# ----------------------------------------------------------------------------------------------- comparing maps
def thumbnails(seg: np.ndarray, side: int = THUMB) -> np.ndarray:
    """Label maps (B, H, W) cut to (B, side, side) by nearest sampling of the pixel centres."""
    seg = np.asarray(seg)
    rows = ((np.arange(side) + 0.5) * seg.shape[-2] / side).astype(np.int64)
    cols = ((np.arange(side) + 0.5) * seg.shape[-1] / side).astype(np.int64)
    return np.ascontiguousarray(seg[..., rows[:, None], cols[None, :]], dtype=np.uint8)


def ignored_labels(seg_classes: str) -> tuple[int, ...]:
    """Labels that say nothing of a place: the ignore label (refined4's `others`), and for ADE20K the dynamic
    classes (vprlib.models.dynamic), which a strategy may leave where it could not inpaint them."""
    if seg_classes == "ade20k":
        from vprlib.models.dynamic import DYNAMIC_ADE20K

        return (IGNORE_LABEL, *DYNAMIC_ADE20K)
    return (IGNORE_LABEL,)


def zoom_sources(side: int = THUMB, zooms: tuple[float, ...] = ZOOMS) -> np.ndarray:
    """For each zoom z about the centre, the candidate pixel each output row (or column) samples, c + (x - c) / z
    rounded (Z, side); `side` where that falls outside the map (a pad pixel of no class)."""
    centre = (side - 1) / 2
    grid = np.arange(side, dtype=np.float64)
    sources = [np.floor(centre + (grid - centre) / zoom + 0.5).astype(np.int64) for zoom in zooms]
    return np.stack([np.where((s >= 0) & (s < side), s, side) for s in sources])


_SOURCES = zoom_sources()


def agreement(query: np.ndarray, candidates: np.ndarray, ignored: tuple[int, ...] = (IGNORE_LABEL,),
              max_shift: int = MAX_SHIFT, zooms: tuple[float, ...] = ZOOMS) -> np.ndarray:
    """How well each candidate's labels (K, S, S) agree with the query's (S, S), searched over every zoom of `zooms`
    about the centre and every horizontal shift up to `max_shift` pixels: the largest share, over those warps, of the
    pixels labelled with a static class on both sides that have equal labels. (K,) in [0, 1].

    Vectorised: the ignored labels and the pixels a warp leaves uncovered become one pad label, each zoom is one
    gather, and the shifts are sliding windows over the zoomed maps' columns."""
    candidates = np.asarray(candidates, dtype=np.uint8)
    side = query.shape[-1]
    if len(candidates) == 0:
        return np.zeros(0)
    lut = np.arange(256, dtype=np.uint8)
    lut[list(ignored)] = PAD
    q, c = lut[query], lut[candidates]
    sources = _SOURCES if (side, zooms) == (THUMB, ZOOMS) else zoom_sources(side, zooms)
    padded = np.pad(c, ((0, 0), (0, 1), (0, 1)), constant_values=PAD)
    zoomed = padded[:, sources[:, :, None], sources[:, None, :]]  # (K, Z, S, S)
    zoomed = np.pad(zoomed, ((0, 0), (0, 0), (0, 0), (max_shift, max_shift)), constant_values=PAD)
    windows = np.lib.stride_tricks.sliding_window_view(zoomed, side, axis=3)  # (K, Z, S, shifts, S)
    labelled = (q != PAD)[:, None, :]
    same = _count(np.equal(windows, q[:, None, :]) & labelled)
    counted = _count((windows != PAD) & labelled)
    return (same / np.maximum(counted, 1)).reshape(len(c), -1).max(axis=1)


def _count(mask: np.ndarray) -> np.ndarray:
    """True pixels of each (candidate, zoom, shift) of a (K, Z, S, shifts, S) mask."""
    return np.einsum("kzysx->kzs", mask.view(np.uint8), dtype=np.int32)


def zscore(values: np.ndarray) -> np.ndarray:
    """Minus the mean, over the standard deviation (0 where the values are all equal)."""
    values = np.asarray(values, dtype=np.float64)
    spread = values.std()
    return (values - values.mean()) / spread if spread > 1e-12 else np.zeros_like(values)


def rerank_order(agree: np.ndarray, similarity: np.ndarray, weight: float = DESCRIPTOR_WEIGHT) -> np.ndarray:
    """The order of one query's candidates (indices into them, best first) by z(agreement) + weight x
    z(similarity); equal scores keep the search's order."""
    score = zscore(agree) + weight * zscore(similarity)
    return np.argsort(-score, kind="stable")


def rerank_hits(hits: Hits, agree: np.ndarray, k: int, weight: float = DESCRIPTOR_WEIGHT) -> tuple[Hits, np.ndarray]:
    """The hits with each query's first k (real) candidates re-ordered by `rerank_order` (agree: (Q, >=k) for those
    candidates), the rest in place; and the combined score of each re-ranked position (Q, k; NaN elsewhere)."""
    queries, depth = hits.ids.shape
    order = np.tile(np.arange(depth), (queries, 1))
    scores = np.full((queries, depth), np.nan)
    for q in range(queries):
        real = int(np.sum(hits.ids[q, :k] != None))  # noqa: E711  (pads come last)
        if real < 2:
            continue
        picked = rerank_order(agree[q, :real], hits.scores[q, :real], weight)
        order[q, :real] = picked
        combined = zscore(agree[q, :real]) + weight * zscore(hits.scores[q, :real])
        scores[q, :real] = combined[picked]
    return hits.take(order), scores


# ----------------------------------------------------------------------------------------------- candidates' maps
def database_maps(manifest: dict, maps: str = "") -> str:
    """The maps table the re-ranking reads: `maps`, or the one the index was built from (index.json), made absolute
    (actors run in other folders); RerankError in one line when it is not there."""
    from vprlib.cluster import absolute_path

    path = absolute_path(maps or manifest.get("config", {}).get("maps", ""))
    fs, root = url_to_fs(path or ".")
    if not path or not fs.exists(root):
        raise RerankError(f"re-ranking reads the maps table the index was built from, {path or '(none recorded)'}, "
                          f"which is not there: give its place with --database-maps, or --rerank 0")
    return path


class CandidateMaps:
    """The maps of some shards' rows, read where they are: which maps part holds each row (from the index's
    embeddings files, each made from one part), and the rows' labels read from those parts only when asked.

    `maps` is the maps table the index was built from (index.json records it; '' = that one). The thumbnails last read
    are kept, at most `cache_rows` of them (THUMB x THUMB bytes each: 64 MiB by default), so the rows that come up
    often are decoded once while no process holds a city's maps."""

    def __init__(self, root: str, names: list[str] | None = None, manifest: dict | None = None, maps: str = "",
                 cache_rows: int = CACHE_ROWS):
        import pyarrow.dataset as pads

        self.manifest = manifest or read_manifest(root)
        self.maps = database_maps(self.manifest, maps)
        names = list(self.manifest["shards"]) if names is None else list(names)
        self.seg_classes = self.manifest["map_spec"].get("seg_classes", "ade20k")
        parts = read_parts(root, self.manifest)
        part_of: dict[str, str] = {}
        efs, _ = url_to_fs(root)
        for part, file, shards in zip(*(parts[c].to_pylist() for c in ("part", "file", "shards")), strict=True):
            if not any(s["shard"] in names for s in shards):
                continue
            path = url_to_fs(posixpath.join(root, EMBEDDINGS, file))[1]
            ids = pads.dataset(path, filesystem=efs, format="parquet").to_table(
                columns=["image_id"], filter=pc.field("shard").isin(names))["image_id"].to_pylist()
            part_of.update(dict.fromkeys(ids, part))
        self.part_of = part_of
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_rows = cache_rows

    def labels(self, image_ids: list[str]) -> dict[str, np.ndarray]:
        """The thumbnail label maps (THUMB x THUMB) of these rows, read from the parts that hold them."""
        import pyarrow.dataset as pads

        from vprlib.maps import decode_seg

        unknown = [i for i in image_ids if i not in self.part_of]
        if unknown:
            raise RerankError(f"no maps part of {self.maps} holds {unknown[0]!r} (not a row of these shards)")
        out: dict[str, np.ndarray] = {}
        by_part: dict[str, list[str]] = {}
        for ident in dict.fromkeys(image_ids):
            if ident in self.cache:
                self.cache.move_to_end(ident)
                out[ident] = self.cache[ident]
            else:
                by_part.setdefault(self.part_of[ident], []).append(ident)
        fs, root = url_to_fs(self.maps)
        for part, ids in by_part.items():
            table = pads.dataset(posixpath.join(root, part), filesystem=fs, format="parquet").to_table(
                columns=["image_id", "seg"], filter=pc.field("image_id").isin(ids))
            for ident, seg in zip(table["image_id"].to_pylist(), table["seg"].to_pylist(), strict=True):
                out[ident] = thumbnails(decode_seg({"seg": seg}))
        missing = [i for ids in by_part.values() for i in ids if i not in out]
        if missing:
            raise RerankError(f"maps part {self.part_of[missing[0]]} of {self.maps} has no row {missing[0]!r}: the "
                              f"maps changed since the index was built (reindex)")
        for ids in by_part.values():
            for ident in ids:
                self.cache[ident] = out[ident]
        while len(self.cache) > self.cache_rows:
            self.cache.popitem(last=False)
        return out

    def agreement(self, queries: np.ndarray, pairs: list[tuple[int, str]]) -> np.ndarray:
        """Agreement (`agreement`) of each (query row, candidate id) pair: queries are thumbnails (Q, S, S)."""
        maps = self.labels([ident for _, ident in pairs])
        ignored = ignored_labels(self.seg_classes)
        out = np.zeros(len(pairs))
        by_query: dict[int, list[int]] = {}
        for p, (q, _) in enumerate(pairs):
            by_query.setdefault(q, []).append(p)
        for q, wanted in by_query.items():
            stack = np.stack([maps[pairs[p][1]] for p in wanted])
            out[wanted] = agreement(queries[q], stack, ignored)
        return out


def candidate_pairs(hits: Hits, k: int) -> list[tuple[int, int, str, str]]:
    """(query row, rank, image id, shard) of every real candidate among each query's first k."""
    shards = hits.columns.get("shard")
    return [(q, r, hits.ids[q, r], None if shards is None else shards[q, r])
            for q in range(hits.ids.shape[0]) for r in range(min(k, hits.ids.shape[1])) if hits.ids[q, r] is not None]


def fill_agreement(hits: Hits, k: int, pairs: list, values: np.ndarray) -> np.ndarray:
    agree = np.zeros((hits.ids.shape[0], k))
    for (q, r, _, _), value in zip(pairs, values, strict=True):
        agree[q, r] = value
    return agree


class Reranker:
    """Re-ranking in this process (locate's photos): every shard's rows through one CandidateMaps."""

    def __init__(self, root: str, manifest: dict | None = None, maps: str = ""):
        self.maps = CandidateMaps(root, manifest=manifest, maps=maps)

    def __call__(self, hits: Hits, seg: np.ndarray, k: int) -> tuple[Hits, np.ndarray]:
        pairs = candidate_pairs(hits, k)
        values = self.maps.agreement(thumbnails(seg), [(q, ident) for q, _, ident, _ in pairs])
        return rerank_hits(hits, fill_agreement(hits, k, pairs, values), k)


class RerankPool:
    """The re-ranking spread over Ray actors, each a CandidateMaps of a group of shards (`balance`, as the search
    pool groups them): a batch's candidates go to the actors holding their shards, which read their maps and return
    their agreement; the re-ordering is done by the caller. Actors reserve `cpus` (none by default: they work while
    the step that asked them waits) and are restarted when they die."""

    def __init__(self, root: str, actors: int = 1, cpus: float = 0.0, manifest: dict | None = None, maps: str = ""):
        import ray

        from vprlib.cluster import io_task_args

        self.manifest = manifest or read_manifest(root)
        maps = database_maps(self.manifest, maps)
        self.groups = balance(self.manifest["shards"], actors)
        self.group_of = {name: g for g, names in enumerate(self.groups) for name in names}
        remote = ray.remote(CandidateMaps).options(num_cpus=cpus, max_restarts=-1, max_task_retries=-1,
                                                   **io_task_args())
        self.actors = [remote.remote(root, names, self.manifest, maps) for names in self.groups]

    def __call__(self, hits: Hits, seg: np.ndarray, k: int) -> tuple[Hits, np.ndarray]:
        import ray

        pairs = candidate_pairs(hits, k)
        thumbs = thumbnails(seg)
        asked: dict[int, list[int]] = {}
        for p, (_, _, _, shard) in enumerate(pairs):
            asked.setdefault(self.group_of.get(shard, 0), []).append(p)
        refs = {g: self.actors[g].agreement.remote(thumbs, [(pairs[p][0], pairs[p][2]) for p in wanted])
                for g, wanted in asked.items()}
        values = np.zeros(len(pairs))
        for g, ref in refs.items():
            values[asked[g]] = ray.get(ref)
        return rerank_hits(hits, fill_agreement(hits, k, pairs, values), k)

