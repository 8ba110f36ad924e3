"""Positions on the Earth: WGS84 degrees to and from UTM metres, and great-circle distances.

UTM by Krueger's series in the third flattening n, to its third order: millimetre-accurate within a zone, so no
projection library is needed. Zones are the plain 6-degree bands (`utm_zone`), without Norway's and Svalbard's
exceptions: callers name the zone they measure in, so one city stays in one zone. Distances on lat/lon are
haversine distances on the mean Earth sphere (`haversine_m`), the usual choice at place recognition's 25 m.
"""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG), the usual constant for haversine distances

_A, _F, _K0 = 6378137.0, 1 / 298.257223563, 0.9996  # WGS84 semi-major axis and flattening; UTM's scale on its meridian
_FALSE_EAST, _FALSE_NORTH_SOUTH = 500_000.0, 10_000_000.0
_N = _F / (2 - _F)
_AA = _A / (1 + _N) * (1 + _N**2 / 4 + _N**4 / 64)
_ALPHA = (_N / 2 - 2 * _N**2 / 3 + 5 * _N**3 / 16, 13 * _N**2 / 48 - 3 * _N**3 / 5, 61 * _N**3 / 240)
_BETA = (_N / 2 - 2 * _N**2 / 3 + 37 * _N**3 / 96, _N**2 / 48 + _N**3 / 15, 17 * _N**3 / 480)
_DELTA = (2 * _N - 2 * _N**2 / 3 - 2 * _N**3, 7 * _N**2 / 3 - 8 * _N**3 / 5, 56 * _N**3 / 15)


def utm_zone(lon):
    """The UTM zone (1-60) of a longitude in degrees: an int for a number, an int array for an array."""
    zone = np.floor((np.asarray(lon, np.float64) + 180.0) / 6.0).astype(int) % 60 + 1
    return int(zone) if zone.ndim == 0 else zone


def latlon_to_utm(lat, lon, zone: int | None = None):
    """WGS84 degrees -> (easting, northing, zone) in metres, in `zone` (default: the zone of the mean longitude);
    southern latitudes get the false northing of 10,000 km."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    zone = utm_zone(float(np.mean(lon))) if zone is None else zone
    phi, lam = np.radians(lat), np.radians(lon - (zone * 6 - 183))
    c = 2 * math.sqrt(_N) / (1 + _N)
    t = np.sinh(np.arctanh(np.sin(phi)) - c * np.arctanh(c * np.sin(phi)))
    xi, eta = np.arctan2(t, np.cos(lam)), np.arctanh(np.sin(lam) / np.sqrt(1 + t * t))
    east, north = eta.copy(), xi.copy()
    for j, a in enumerate(_ALPHA, start=1):
        east += a * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
        north += a * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
    false_north = np.where(lat < 0, _FALSE_NORTH_SOUTH, 0.0)
    return _FALSE_EAST + _K0 * _AA * east, false_north + _K0 * _AA * north, zone


def utm_to_latlon(east, north, zone: int, southern: bool = False):
    """(easting, northing) in a UTM zone -> WGS84 (lat, lon) degrees, the inverse of `latlon_to_utm`."""
    xi = (np.asarray(north, np.float64) - (_FALSE_NORTH_SOUTH if southern else 0.0)) / (_K0 * _AA)
    eta = (np.asarray(east, np.float64) - _FALSE_EAST) / (_K0 * _AA)
    xi_p, eta_p = xi.copy(), eta.copy()
    for j, b in enumerate(_BETA, start=1):
        xi_p -= b * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        eta_p -= b * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
    chi = np.arcsin(np.sin(xi_p) / np.cosh(eta_p))
    phi = chi.copy()
    for j, d in enumerate(_DELTA, start=1):
        phi += d * np.sin(2 * j * chi)
    lon = (zone * 6 - 183) + np.degrees(np.arctan2(np.sinh(eta_p), np.cos(xi_p)))
    return np.degrees(phi), lon


def haversine_m(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees (broadcasts like numpy)."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def local_plane(lat, lon, origin: tuple[float, float]) -> np.ndarray:
    """(n, 2) east and north metres of lat/lon degrees on the tangent plane at `origin` (lat, lon): the matcher's
    plane where the rows have no metric frame (equirectangular: well under a millimetre per 25 m within a city)."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    scale = math.radians(1.0) * EARTH_RADIUS_M
    return np.stack([(lon - origin[1]) * scale * math.cos(math.radians(origin[0])), (lat - origin[0]) * scale], 1)
