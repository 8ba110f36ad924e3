"""Synthetic city speed: images/s of in-memory rendering per side, and of `generate_city` (rendering, PNG and npz
writing, manifest) on a small city.

    python benchmarks/synthcity_speed.py [--sides 128 512] [--captures 64] [--places 16] [--workers 0]
"""

import argparse
import tempfile
import time

import numpy as np

from vprlib.demo import city as sc


def render_speed(side: int, captures: int) -> float:
    """Images/s of `render` (one process) over the first visits of the demo city, dynamic objects included."""
    config = sc.CityConfig(side=side)
    city = sc.build_city(config)
    visits = sc.plan_visits(city)
    start, done = time.perf_counter(), 0
    for visit in visits:
        dynamic = sc.dynamic_objects(config, np.array(visit.position[:2]), np.random.default_rng(visit.visit_id))
        for h in range(config.headings):
            sc.render(city, sc.Camera(visit.position, h * 360.0 / config.headings), visit.appearance, dynamic, side)
            done += 1
            if done == captures:
                return done / (time.perf_counter() - start)
    return done / (time.perf_counter() - start)


def generate_speed(places: int, side: int, workers: int) -> tuple[int, float]:
    """(captures, images/s) of `generate_city` into a temporary folder."""
    with tempfile.TemporaryDirectory() as output:
        start = time.perf_counter()
        table = sc.generate_city(sc.CityConfig(places=places, side=side, workers=workers), output)
        return table.num_rows, table.num_rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--captures", type=int, default=64, help="captures rendered per side")
    parser.add_argument("--places", type=int, default=16, help="places of the city written by generate_city")
    parser.add_argument("--workers", type=int, default=0, help="processes for generate_city, 0 = one per CPU")
    args = parser.parse_args()
    for side in args.sides:
        captures = max(4, args.captures * 128 * 128 // (side * side))
        print(f"render {side}x{side}: {render_speed(side, captures):.1f} images/s (1 process, {captures} captures)")
    workers = args.workers or sc.resolve_workers(sc.CityConfig())
    count, speed = generate_speed(args.places, 128, workers)
    print(f"generate_city 128x128: {speed:.1f} images/s ({count} captures written, {workers} worker(s))")


if __name__ == "__main__":
    main()
