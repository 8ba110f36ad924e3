"""Rendering one capture of the synthetic city: the pinhole `Camera`, analytic ray casting of the primitives
(`render`: RGB, static and observed depth and labels, the dynamic mask) and shading by time of day and season."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vprlib.demo.city.layout import (
    ADE_OF_LABEL,
    BOX,
    CYLINDER,
    ELLIPSOID,
    HOLICITY_OF_LABEL,
    LABEL,
    SEASONS,
    TIMES_OF_DAY,
    Appearance,
    City,
    Primitives,
    _Builder,
    ground_labels,
)

GROUND = {"road": (0.27, 0.27, 0.29), "sidewalk": (0.62, 0.6, 0.57)}
EPS = 1e-6
SKY, GROUND_HIT = -2, -1  # primitive index of a pixel that meets no primitive


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at `position` (local metres), heading clockwise from north, pitch up, horizontal fov."""

    position: tuple[float, float, float]
    heading: float = 0.0
    pitch: float = 0.0
    fov: float = 90.0

    def basis(self) -> np.ndarray:
        """Rows right, up, forward (unit vectors in local metres)."""
        h, p = math.radians(self.heading), math.radians(self.pitch)
        forward = np.array([math.sin(h) * math.cos(p), math.cos(h) * math.cos(p), math.sin(p)])
        right = np.array([math.cos(h), -math.sin(h), 0.0])
        return np.stack([right, np.cross(right, forward), forward])

    def rays(self, height: int, width: int) -> np.ndarray:
        """H,W,3 ray directions through pixel centres, scaled so the forward component is 1 (t = planar depth)."""
        tan_x = math.tan(math.radians(self.fov) / 2)
        tan_y = tan_x * height / width
        u = ((np.arange(width) + 0.5) / width * 2 - 1) * tan_x
        v = (1 - (np.arange(height) + 0.5) / height * 2) * tan_y
        right, up, forward = self.basis()
        return forward + u[None, :, None] * right + v[:, None, None] * up



# ----------------------------------------------------------------------------------------------- ray casting
# Rays and their reciprocals travel as lists of three H,W arrays (x, y, z), so each primitive test works on plain 2-D
# slices of its screen rectangle.
def _hit_box(p, o, d, inv):
    """Slab test: t where the rays enter the box (inf on a miss)."""
    near, far = -np.inf, np.inf
    with np.errstate(invalid="ignore"):
        for i in range(3):
            t1, t2 = (p[i] - o[i]) * inv[i], (p[i + 3] - o[i]) * inv[i]
            near, far = np.maximum(near, np.minimum(t1, t2)), np.minimum(far, np.maximum(t1, t2))
    return np.where((near <= far) & (near > EPS), near, np.inf)


def _hit_cylinder(p, o, d, inv):
    """Vertical cylinder: the side wall between z0 and z1, and the top disc when seen from above."""
    cx, cy, r, z0, z1 = p[:5]
    ox, oy = o[0] - cx, o[1] - cy
    a, b, c = d[0] * d[0] + d[1] * d[1], ox * d[0] + oy * d[1], ox * ox + oy * oy - r * r
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / a
        z = o[2] + t * d[2]
        t = np.where((disc >= 0) & (t > EPS) & (z >= z0) & (z <= z1), t, np.inf)
    if o[2] > z1:
        tc = (z1 - o[2]) * inv[2]
        cap = (tc > EPS) & ((ox + tc * d[0]) ** 2 + (oy + tc * d[1]) ** 2 <= r * r) & (tc < t)
        t = np.where(cap, tc, t)
    return t


def _hit_ellipsoid(p, o, d, inv):
    """Ellipsoid with a vertical axis: a unit sphere once space is divided by its radii."""
    rxy, rz = p[3], p[4]
    ox, oy, oz = (o[0] - p[0]) / rxy, (o[1] - p[1]) / rxy, (o[2] - p[2]) / rz
    a = (d[0] * d[0] + d[1] * d[1]) / (rxy * rxy) + d[2] * d[2] / (rz * rz)
    b = (d[0] * ox + d[1] * oy) / rxy + d[2] * (oz / rz)
    disc = b * b - a * (ox * ox + oy * oy + oz * oz - 1.0)
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0) & (t > EPS), t, np.inf)


_HITS = {BOX: _hit_box, CYLINDER: _hit_cylinder, ELLIPSOID: _hit_ellipsoid}


def _screen_rects(prims: Primitives, camera: Camera, side: int, max_distance: float):
    """Indices of the primitives in view (nearest first), their pixel rectangles and nearest planar depths."""
    lo, hi = prims.bounds()
    origin = np.asarray(camera.position)
    centre, radius = (lo + hi) / 2, np.linalg.norm(hi - lo, axis=1) / 2
    basis = camera.basis()
    near_enough = np.linalg.norm(centre - origin, axis=1) < max_distance + radius
    in_front = (centre - origin) @ basis[2] > -radius
    index = np.flatnonzero(near_enough & in_front)
    corners = np.stack([np.where(np.array(bits, bool), hi[index], lo[index]) for bits in np.ndindex(2, 2, 2)], 1)
    cam = (corners - origin) @ basis.T  # K,8,3: right, up, forward
    depth = cam[..., 2]
    tan_x = math.tan(math.radians(camera.fov) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        col = (cam[..., 0] / depth / tan_x + 1) * side / 2 - 0.5
        row = (1 - cam[..., 1] / depth / tan_x) * side / 2 - 0.5
    rects = np.stack([np.floor(row.min(1)), np.ceil(row.max(1)) + 1, np.floor(col.min(1)), np.ceil(col.max(1)) + 1], 1)
    rects[(depth < 0.05).any(1)] = (0, side, 0, side)  # partly behind the camera: its projection is unbounded
    rects = np.clip(np.nan_to_num(rects), 0, side).astype(int)
    keep = (rects[:, 0] < rects[:, 1]) & (rects[:, 2] < rects[:, 3]) & (depth > 0.05).any(1)
    z_near = np.maximum(depth.min(1), 0.0)
    order = np.argsort(z_near[keep], kind="stable")
    return index[keep][order], rects[keep][order], z_near[keep][order]


def _trace(prims: Primitives, offset: int, camera: Camera, d, inv, t_buf, prim_buf, max_distance: float) -> None:
    """Draw `prims` into the depth and primitive-index buffers, nearest first, each on its screen rectangle only."""
    origin = camera.position
    index, rects, z_near = _screen_rects(prims, camera, t_buf.shape[0], max_distance)
    params, kinds = prims.params[index].tolist(), prims.kind[index].tolist()
    for k, p, kind, (r0, r1, c0, c1), z in zip(index.tolist(), params, kinds, rects, z_near, strict=True):
        t_view = t_buf[r0:r1, c0:c1]
        if t_view.max() < z:  # everything in the rectangle is already nearer than this primitive can be
            continue
        rect = (slice(r0, r1), slice(c0, c1))
        t = _HITS[kind](p, origin, [a[rect] for a in d], [a[rect] for a in inv])
        closer = t < t_view
        np.copyto(t_view, t, where=closer)
        np.copyto(prim_buf[rect], k + offset, where=closer)


def _normals(prims: Primitives, prim: np.ndarray, points: np.ndarray) -> np.ndarray:
    """H,W,3 unit surface normals at the hit points; ground and sky get +z."""
    normal = np.zeros(points.shape, np.float32)
    normal[..., 2] = 1.0
    hit = np.flatnonzero(prim.ravel() >= 0)
    index = prim.ravel()[hit]
    p, par, kind = points.reshape(-1, 3)[hit], prims.params[index], prims.kind[index]
    n = np.zeros_like(p)
    box = np.flatnonzero(kind == BOX)
    face = np.abs(np.concatenate([p[box] - par[box, :3], p[box] - par[box, 3:]], 1)).argmin(1)  # nearest face
    n[box, face % 3] = np.where(face < 3, -1.0, 1.0)
    side = (kind == CYLINDER) & (np.abs(p[:, 2] - par[:, 4]) > 1e-6)  # the rest of a cylinder's hits: its top
    n[(kind == CYLINDER) & ~side, 2] = 1.0
    n[side, :2] = p[side, :2] - par[side, :2]
    ell = kind == ELLIPSOID
    n[ell] = (p[ell] - par[ell, :3]) / np.stack([par[ell, 3], par[ell, 3], par[ell, 4]], 1) ** 2
    normal.reshape(-1, 3)[hit] = n / np.linalg.norm(n, axis=1, keepdims=True)
    return normal


def _static_buffers(city: City, camera: Camera, d, inv):
    """Depth and primitive index of the static scene: the ground plane z = 0, then the static primitives."""
    with np.errstate(divide="ignore"):
        t_ground = -camera.position[2] * inv[2]
    ground = (d[2] < 0) & (t_ground < 1000.0)
    t = np.where(ground, t_ground, np.inf)
    prim = np.where(ground, GROUND_HIT, SKY).astype(np.int32)
    _trace(city.static, 0, camera, d, inv, t, prim, city.config.max_distance)
    return t, prim


def _labels(city: City, prims: Primitives, points: np.ndarray, prim: np.ndarray):
    """Per-pixel label index from the primitive hit, the ground map or the sky; and the road paint mask."""
    label = np.full(prim.shape, LABEL["sky"], np.uint8)
    hit = prim >= 0
    label[hit] = prims.label[prim[hit]]
    ground = prim == GROUND_HIT
    paint = np.zeros(prim.shape, bool)
    label[ground], paint[ground] = ground_labels(city.config, points[ground, 0], points[ground, 1])
    return label, paint


def render(city: City, camera: Camera, appearance: Appearance = Appearance(), dynamic: Primitives | None = None,  # noqa: B008
           side: int = 128, noise_seed: int = 0, static_rgb: bool = False) -> dict[str, np.ndarray]:
    """Render one capture in memory: rgb (H,W,3 uint8), depth/obs_depth (float32 metres, sky 0), seg (uint8
    HoliCity classes, static), obs_seg (uint8 ADE20K ids, with dynamic objects), dynamic (bool); with `static_rgb`
    also rgb_static, the same capture without the dynamic objects (same appearance and noise: equal to `rgb` on
    every pixel no dynamic object covers)."""
    rays = camera.rays(side, side)
    d = [np.ascontiguousarray(rays[..., i]) for i in range(3)]
    with np.errstate(divide="ignore"):
        inv = [1.0 / a for a in d]
    t_s, prim_s = _static_buffers(city, camera, d, inv)
    dynamic = dynamic if dynamic is not None else _Builder().build()
    t_o, prim_o = t_s.copy(), prim_s.copy()
    _trace(dynamic, len(city.static), camera, d, inv, t_o, prim_o, city.config.max_distance)
    prims = Primitives.concat([city.static, dynamic])
    origin = np.asarray(camera.position)
    points_s = origin + np.where(np.isfinite(t_s), t_s, 0.0)[..., None] * rays
    points_o = origin + np.where(np.isfinite(t_o), t_o, 0.0)[..., None] * rays
    label_s, paint_s = _labels(city, prims, points_s, prim_s)
    label_o, paint = _labels(city, prims, points_o, prim_o)
    rng = np.random.default_rng(noise_seed)
    rgb = _shade(prims, rays, t_o, prim_o, points_o, label_o, paint, appearance, rng)
    static = {}
    if static_rgb:  # the same noise stream: the image render(dynamic=None) gives
        static["rgb_static"] = _shade(prims, rays, t_s, prim_s, points_s, label_s, paint_s, appearance,
                                      np.random.default_rng(noise_seed))
    return {
        **static,
        "rgb": rgb,
        "depth": np.where(label_s == LABEL["sky"], 0.0, t_s).astype(np.float32),
        "seg": HOLICITY_OF_LABEL[label_s].astype(np.uint8),
        "obs_seg": ADE_OF_LABEL[label_o],
        "obs_depth": np.where(label_o == LABEL["sky"], 0.0, t_o).astype(np.float32),
        "dynamic": HOLICITY_OF_LABEL[label_o] < 0,
    }


# ----------------------------------------------------------------------------------------------- shading
def _sun(appearance: Appearance) -> tuple[np.ndarray, ...]:
    elevation, azimuth, sun, ambient, zenith, horizon = TIMES_OF_DAY[appearance.time_of_day]
    e, a = math.radians(elevation), math.radians(azimuth)
    direction = np.array([math.sin(a) * math.cos(e), math.cos(a) * math.cos(e), math.sin(e)], np.float32)
    return direction, *(np.array(c, np.float32) for c in (sun, ambient, zenith, horizon))


def _base_colour(prims, points, normal, label, paint, prim, appearance) -> np.ndarray:
    """Surface colour before lighting: primitive colours, seasonal trees and grass, facade windows, road paint."""
    crown, grass = (np.array(c, np.float32) for c in SEASONS[appearance.season])
    colour = np.zeros(label.shape + (3,), np.float32)
    hit = prim >= 0
    colour[hit] = prims.colour[prim[hit]]
    colour[label == LABEL["crown"]] *= crown
    colour[label == LABEL["grass"]] = grass
    for name, value in GROUND.items():
        colour[(label == LABEL[name]) & (prim < 0)] = value
    colour[paint] = (0.92, 0.92, 0.88)
    facade = (label == LABEL["building"]) & (np.abs(normal[..., 2]) < 0.5)
    u = np.where(np.abs(normal[..., 0]) > 0.5, points[..., 1], points[..., 0])
    window = facade & (np.mod(points[..., 2], 3.2) > 1.1) & (np.mod(u, 2.8) > 0.9) & (points[..., 2] > 1.0)
    colour[window] = colour[window] * 0.25 + np.array((0.1, 0.13, 0.18), np.float32)
    return colour


def _shade(prims, rays, t, prim, points, label, paint, appearance, rng) -> np.ndarray:
    """Lambert shading under the sun and an ambient sky, distance haze, a sky gradient with a sun glow."""
    sun_dir, sun, ambient, zenith, horizon = _sun(appearance)
    normal = _normals(prims, prim, points)
    colour = _base_colour(prims, points, normal, label, paint, prim, appearance)
    image = colour * (ambient + sun * np.clip(normal @ sun_dir, 0, None)[..., None])
    haze = (1.0 - np.exp(-np.minimum(t, 1e4) / 700.0)).astype(np.float32)[..., None]
    image += (horizon - image) * haze
    sky = label == LABEL["sky"]
    direction = rays[sky] / np.linalg.norm(rays[sky], axis=-1, keepdims=True)
    height = np.clip(direction[:, 2:] * 2.5, 0, 1) ** 0.7
    glow = np.clip(direction @ sun_dir, 0, 1)[:, None] ** 48 * sun
    image[sky] = horizon + (zenith - horizon) * height + 0.6 * glow
    image += rng.standard_normal(image.shape, dtype=np.float32) * 0.012
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
