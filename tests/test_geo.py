"""vprlib.geo: UTM coordinates of known places, the way back, and haversine distances."""

import numpy as np
import pytest

from vprlib.geo import haversine_m, latlon_to_utm, utm_to_latlon, utm_zone

# (lat, lon) -> (easting, northing, zone) to the metre, as published with a widely used converter's examples:
# Madrid area, Swiss Alps, California, the Canary Islands, Kansas, Taipei.
KNOWN = [
    (40.3154333, -3.4857166, 458731, 4462881, 30),
    (46.2839000, 7.8012333, 407653, 5126290, 32),
    (37.5778330, -119.9552500, 239027, 4163083, 11),
    (28.6456500, -17.7595330, 230253, 3171843, 28),
    (38.8555500, -94.7990166, 343898, 4302285, 15),
    (25.0617830, 121.6402660, 362850, 2772478, 51),
]


@pytest.mark.parametrize(("lat", "lon", "east", "north", "zone"), KNOWN)
def test_known_places_in_utm_and_back(lat, lon, east, north, zone):
    e, n, z = latlon_to_utm(lat, lon)
    assert z == zone and utm_zone(lon) == zone
    assert float(e) == pytest.approx(east, abs=1.0) and float(n) == pytest.approx(north, abs=1.0)
    back_lat, back_lon = utm_to_latlon(e, n, zone)
    assert float(back_lat) == pytest.approx(lat, abs=2e-8) and float(back_lon) == pytest.approx(lon, abs=2e-8)  # 2 mm


def test_zone_origin_and_southern_hemisphere():
    east, north, zone = latlon_to_utm(0.0, -3.0)  # on zone 30's central meridian, at the equator
    assert zone == 30 and float(east) == pytest.approx(500_000.0, abs=1e-6) and float(north) == pytest.approx(0.0)
    e_north, n_north, _ = latlon_to_utm(33.9, 18.4, zone=34)
    e_south, n_south, _ = latlon_to_utm(-33.9, 18.4, zone=34)  # mirrored about the equator, false northing 10,000 km
    assert float(e_south) == pytest.approx(float(e_north), abs=1e-6)
    assert float(n_south) == pytest.approx(10_000_000.0 - float(n_north), abs=1e-6)
    lat, lon = utm_to_latlon(e_south, n_south, 34, southern=True)
    assert (float(lat), float(lon)) == pytest.approx((-33.9, 18.4), abs=2e-8)


def test_zones_of_arrays():
    assert utm_zone(np.array([-180.0, -177.1, -3.0, 0.0, 179.9])).tolist() == [1, 1, 30, 31, 60]
    assert isinstance(utm_zone(7.5), int)


def test_haversine_known_distances():
    assert haversine_m(10.0, 20.0, 11.0, 20.0) == pytest.approx(np.pi * 6_371_008.8 / 180, rel=1e-12)  # 1 deg
    # Paris (Notre-Dame) to London (Charing Cross): about 343.5 km on the mean sphere.
    assert float(haversine_m(48.853, 2.3499, 51.5073, -0.12755)) == pytest.approx(343_500, rel=2e-3)
    d = haversine_m(51.5, -0.1, np.array([51.5, 51.6]), np.array([-0.1, -0.1]))
    assert d.shape == (2,) and d[0] == 0.0 and d[1] == pytest.approx(11_119.5, abs=1.0)
