"""Sequence localisation: the last few frames of a walk located together (docs/DESIGN.md, "Sequences").

A single street photo is often ambiguous; a few seconds of video taken while walking are much less so, because the
places that look alike for one frame rarely look alike for the frames before it at the right distances. This module
is the training-free method, SeqSLAM's idea (Milford and Wyeth, ICRA 2012: sum the frames' similarities along
constant-velocity paths through the database) in the form an unordered map database needs: a path is a hypothesis
on the metric plane, not along the database's order.

- A hypothesis is the last frame's place (a database item `c`), a walking direction (a heading, degrees clockwise
  from north) and a speed (metres per frame). Frame i of L (oldest first) is then expected at
  p_c - (L - 1 - i) * speed * (sin heading, cos heading).
- The last frame's term is its similarity to the end itself; an earlier frame's term is its best similarity among
  the database items within `tolerance_m` of where the hypothesis puts it (`floor` when none is there). A
  hypothesis scores the mean of its frames' terms, an end its best hypothesis. Ranking the ends by that score is
  the sequence's answer: places for its last frame. With one frame it is plain retrieval's ranking.
- A 1-D database in traversal order (SeqSLAM's setting) is the special case of positions (index, 0), a tolerance
  under half a step and the directions east and west.

Per-frame similarities come from any retriever and index: `local_similarity` turns each frame's top k hits into a
dense (L, D) matrix over the items any frame retrieved (an item outside a frame's top k is given that frame's k-th
score, the most it can be), so the matcher never needs the whole database.

Sequence Recall@N follows Mereu et al. (2022, "Learning sequential descriptors for sequence-based visual place
recognition"): a query sequence is right when one of its first N predicted places is within `radius_m` of any of its
frames (`loose`), or, in the strict form, within `radius_m` of its last frame, the one the answer is for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vprlib.metrics import DEFAULT_NS, GPS_THRESHOLD_M

SEQUENCE_COLUMNS = ("sequence_id", "frame_index")  # a query frame's walk and its place in it (0 = first)
PROTOCOLS = ("loose", "strict")  # right within the radius of any frame, or of the last frame


@dataclass(frozen=True)
class PathSearch:
    """The constant-velocity paths tried: `directions` headings evenly spaced from north, `speeds` metres per frame,
    a frame's place found within `tolerance_m` of where a path puts it."""

    speeds: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0)
    directions: int = 8
    tolerance_m: float = 7.5
    chunk: int = 64  # ends scored at once (memory: chunk x directions x speeds x frames x database floats)

    def __post_init__(self):
        if not self.speeds or min(self.speeds) < 0:
            raise ValueError(f"PathSearch: speeds must be a non-empty list of metres per frame >= 0, got {self.speeds}")
        if self.directions < 1:
            raise ValueError(f"PathSearch: directions must be >= 1, got {self.directions}")
        if self.tolerance_m <= 0:
            raise ValueError(f"PathSearch: tolerance_m must be > 0, got {self.tolerance_m}")
        if self.chunk < 1:
            raise ValueError(f"PathSearch: chunk must be >= 1, got {self.chunk}")

    @property
    def headings(self) -> np.ndarray:
        return np.arange(self.directions) * (360.0 / self.directions)


@dataclass
class PathMatch:
    """Each end's best path: `score` (C,), the `heading` and `speed` of that path, and `order`, the ends ranked best
    first (ties by ascending end index)."""

    score: np.ndarray
    heading: np.ndarray
    speed: np.ndarray
    order: np.ndarray


def match_paths(similarity, positions, search: PathSearch = PathSearch(), ends=None, floor=None) -> PathMatch:
    """Score constant-velocity paths through the database for one query sequence.

    similarity: (L, D) frame-to-database similarity, oldest frame first (the last row is the frame located).
    positions: (D, 2) database positions in metres (east, north). ends: the database indices tried as the last
    frame's place (default: all). floor: (L,) or scalar, a frame's term where no database item is near its expected
    place (default: the frame's lowest similarity). Returns a `PathMatch` over `ends`."""
    sim = np.asarray(similarity, dtype=np.float32)
    pos = np.asarray(positions, dtype=np.float32)
    if sim.ndim != 2 or sim.shape[0] < 1:
        raise ValueError(f"similarity must be (frames, database), got shape {sim.shape}")
    if pos.shape != (sim.shape[1], 2):
        raise ValueError(f"positions must be (database, 2) = ({sim.shape[1]}, 2), got {pos.shape}")
    frames, size = sim.shape
    ends = np.arange(size) if ends is None else np.asarray(ends, dtype=np.int64)
    if ends.size and (ends.min() < 0 or ends.max() >= size):
        raise ValueError(f"ends must index the database (0..{size - 1})")
    low = sim.min(axis=1) if floor is None else np.broadcast_to(np.asarray(floor, np.float32), (frames,))
    angle = np.radians(search.headings)
    step = np.stack([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)  # (A, 2) east, north
    speeds = np.asarray(search.speeds, np.float32)
    back = (frames - 1 - np.arange(frames - 1)).astype(np.float32)  # the earlier frames, how far behind the last
    offset = -(speeds[None, :, None, None] * back[None, None, :, None]) * step[:, None, None, :]  # (A, V, L-1, 2)
    best = np.full(len(ends), -np.inf, np.float32)
    heading, speed = np.zeros(len(ends)), np.zeros(len(ends))
    tol2 = np.float32(search.tolerance_m**2)
    for start in range(0, len(ends), search.chunk):
        chunk = ends[start : start + search.chunk]
        expected = pos[chunk][:, None, None, None, :] + offset[None]  # (c, A, V, L-1, 2)
        d2 = ((expected[..., None, :] - pos) ** 2).sum(-1)  # (c, A, V, L-1, D)
        near = np.where(d2 <= tol2, sim[None, None, None, :-1], -np.inf).max(-1, initial=-np.inf)  # (c, A, V, L-1)
        earlier = np.where(np.isfinite(near), near, low[:-1]).sum(-1)
        score = ((earlier + sim[-1, chunk][:, None, None]) / frames).reshape(len(chunk), -1)  # (c, A * V)
        which = score.argmax(1)
        best[start : start + len(chunk)] = score[np.arange(len(chunk)), which]
        heading[start : start + len(chunk)] = search.headings[which // len(speeds)]
        speed[start : start + len(chunk)] = speeds[which % len(speeds)]
    order = np.lexsort((ends, -best.astype(np.float64)))
    return PathMatch(best, heading, speed, order)


def local_similarity(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each frame's top k hits (ids (L, k) object with None pads, scores (L, k)) as a dense matrix over the items any
    frame retrieved: (the items' ids (D,), similarity (L, D), floor (L,)). An item outside a frame's top k gets that
    frame's k-th score (the most it can have), and so does the floor; `match_paths` reads them."""
    ids, scores = np.asarray(ids, dtype=object), np.asarray(scores, dtype=np.float32)
    valid = ids != None  # noqa: E711
    if not valid.any():
        raise ValueError("no frame of the sequence retrieved anything")
    items, where = np.unique(ids[valid].astype(str), return_inverse=True)
    floor = np.array([row[ok].min() if ok.any() else 0.0 for row, ok in zip(scores, valid, strict=True)], np.float32)
    dense = np.repeat(floor[:, None], len(items), axis=1)
    rows = np.nonzero(valid)[0]
    dense[rows, where] = scores[valid]
    return items, dense, floor


def sequence_recall(predicted_xy, frames_xy, ns: Iterable[int] = DEFAULT_NS, radius_m: float = GPS_THRESHOLD_M,
                    protocol: str = "loose") -> tuple[dict[int, float], np.ndarray]:
    """Sequence Recall@N in a metric frame.

    predicted_xy: (Q, k, 2) the predicted places of each query sequence, best first (NaN: padding, never right).
    frames_xy: (Q, L, 2) where each sequence's frames were taken, oldest first (NaN rows: frames a shorter sequence
    lacks; the last finite row is its last frame). protocol: `loose` (right within `radius_m` of any frame) or
    `strict` (of the last frame). Returns ({N: share of sequences right within their first N}, each sequence's
    1-based rank of its first right place, 0 when none of the k is)."""
    pred = np.asarray(predicted_xy, dtype=np.float64)
    frames = np.asarray(frames_xy, dtype=np.float64)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if pred.ndim != 3 or frames.ndim != 3 or pred.shape[-1] != 2 or frames.shape[-1] != 2 or len(pred) != len(frames):
        raise ValueError(f"predicted_xy must be (Q, k, 2) and frames_xy (Q, L, 2), got {pred.shape} and {frames.shape}")
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1 or ns[-1] > pred.shape[1]:
        raise ValueError(f"every N must be in [1, {pred.shape[1]}] (the predictions per sequence), got {ns}")
    present = np.isfinite(frames).all(-1)  # (Q, L)
    if not present.any(axis=1).all():
        raise ValueError("every sequence needs at least one frame with a position")
    if protocol == "strict":
        last = present.shape[1] - 1 - np.argmax(present[:, ::-1], axis=1)
        frames, present = frames[np.arange(len(frames)), last][:, None], np.ones((len(frames), 1), bool)
    dist = np.linalg.norm(pred[:, :, None, :] - frames[:, None, :, :], axis=-1)  # (Q, k, L)
    right = ((dist <= radius_m) & present[:, None, :]).any(-1)  # NaN compares false: padding is never right
    first = np.where(right.any(1), right.argmax(1) + 1, 0)
    return {n: float(((first >= 1) & (first <= n)).mean()) for n in ns}, first


def group_frames(sequence_ids: Sequence, frame_indices: Sequence) -> dict:
    """{sequence id: row indices in frame order}; ValueError in one line when a sequence repeats a frame index."""
    groups: dict = {}
    for row, (seq, frame) in enumerate(zip(sequence_ids, frame_indices, strict=True)):
        groups.setdefault(seq, []).append((int(frame), row))
    out = {}
    for seq, members in groups.items():
        members.sort()
        frames = [f for f, _ in members]
        if len(set(frames)) != len(frames):
            raise ValueError(f"sequence {seq!r} repeats a frame index ({frames})")
        out[seq] = [r for _, r in members]
    return out
