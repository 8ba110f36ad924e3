"""The embedded synthetic city (docs/DESIGN.md, "Layouts"): `layout` (what the city and its visits are), `render`
(one capture drawn in memory), `write` (every capture written, with the manifest and the ground-truth maps).

A procedural, seeded street grid in the spirit of HoliCity (Zhou et al., 2021, arXiv:2008.03286), the dataset whose
CAD-model depth and segmentation the paper (Semenkov et al., IEEE Access 2024, sections III-A and IV-A) uses as
ground truth: box buildings, trees (cylinder trunk, ellipsoid crown), road, sidewalk and grass ground, sky. Every
visit (a camera stop seen in 8 headings, like a HoliCity panorama) draws new dynamic objects (cars, buses, trucks,
people, bicycles) and an appearance (time of day, season); each capture yields the RGB image, the static ground
truth (depth in metres, HoliCity's 5 classes) and the observed maps (ADE20K ids with the dynamic objects, depth,
dynamic mask).

Conventions: local metres x east, y north, z up, in UTM grid axes around a fixed origin (so local offsets are UTM
offsets; lat/lon come from the inverse transverse Mercator). Heading is degrees clockwise from grid north. Depth is
planar (along the optical axis), 0 where the ray meets the sky. Rendering is analytic ray casting in numpy: each
visible primitive is intersected with the rays of its screen rectangle only, nearest first, skipped when what is
already drawn there is nearer than its nearest point.
"""

from vprlib.demo.city.layout import (
    ADE_NAMES,
    BOX,
    CYLINDER,
    ELLIPSOID,
    LABEL,
    LABEL_NAMES,
    LABELS,
    SEASONS,
    SPLIT_ORDER,
    STATIC_CLASSES,
    TIMES_OF_DAY,
    Appearance,
    City,
    CityConfig,
    Primitives,
    Visit,
    build_city,
    dynamic_objects,
    geo_to_local,
    ground_labels,
    local_to_geo,
    plan_visits,
)
from vprlib.demo.city.render import Camera, render
from vprlib.demo.city.write import (
    DEMO_CITY,
    GT_MAPS,
    STATIC_RGB,
    VISITS_PER_PART,
    demo_city,
    generate_city,
    gt_spec,
    resolve_workers,
    summarize,
    write_npz,
)

__all__ = ["ADE_NAMES", "BOX", "CYLINDER", "DEMO_CITY", "ELLIPSOID", "GT_MAPS", "LABEL", "LABELS", "LABEL_NAMES",
           "SEASONS", "SPLIT_ORDER", "STATIC_CLASSES", "STATIC_RGB", "TIMES_OF_DAY", "VISITS_PER_PART", "Appearance",
           "Camera", "City", "CityConfig", "Primitives", "Visit", "build_city", "demo_city", "dynamic_objects",
           "generate_city", "geo_to_local", "ground_labels", "gt_spec", "local_to_geo", "plan_visits",
           "render", "resolve_workers", "summarize", "write_npz"]
