"""The maps table as later jobs read it: filters, the recorded spec, and the maps as a Ray Dataset."""

import numpy as np
import pyarrow.compute as pc
import pytest

from vprlib.demo.city import GT_MAPS, CityConfig, generate_city
from vprlib.maps import MapSpecError, check_spec, decode_depth, decode_seg, maps_dataset, read_maps, read_spec
from vprlib.spec import MapSpec

SIDE = 24


@pytest.fixture(scope="module")
def gt_maps(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("city")
    generate_city(CityConfig(places=4, side=SIDE, train_visits=1, workers=1), str(root))
    return str(root / GT_MAPS)


def test_read_maps_filters_rows(gt_maps):
    train = read_maps(gt_maps, columns=["image_id", "split"], filter=pc.field("split") == "train")
    assert train.num_rows > 0 and set(train["split"].to_pylist()) == {"train"}
    assert train.num_rows < read_maps(gt_maps, columns=["image_id"]).num_rows


def test_check_spec_refuses_other_maps(gt_maps, tmp_path):
    recorded = read_spec(gt_maps)
    assert check_spec(gt_maps, recorded, "this test") == recorded
    extracted = MapSpec(strategy="none", models="tiny", side=SIDE).record({"segmenter": "random:tiny:seed=0"})
    with pytest.raises(MapSpecError, match="strategy: 'none' != 'ground-truth'.*seg_classes: 'ade20k' != 'refined4'"):
        check_spec(gt_maps, extracted, "a retriever of unrefined maps")
    with pytest.raises(MapSpecError, match="is not a maps table"):
        read_spec(str(tmp_path))


def test_a_folder_that_does_not_exist_is_named_so(tmp_path):
    with pytest.raises(MapSpecError, match=f"^{tmp_path / 'nowhere'} does not exist$"):
        read_spec(str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_maps_dataset_yields_decoded_maps_of_a_split(gt_maps):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", address="local")
    try:
        rows = maps_dataset(gt_maps, split="val").take_all()
    finally:
        ray.shutdown()
    expected = {r["image_id"]: r for r in read_maps(gt_maps, filter=pc.field("split") == "val").to_pylist()}
    assert sorted(r["image_id"] for r in rows) == sorted(expected)
    for row in rows:
        assert row["depth"].dtype == np.float32 and row["depth"].shape == (SIDE, SIDE)
        assert row["seg"].dtype == np.uint8 and row["seg"].shape == (SIDE, SIDE)
        assert np.array_equal(row["depth"], decode_depth(expected[row["image_id"]]))
        assert np.array_equal(row["seg"], decode_seg(expected[row["image_id"]]))
        assert {"lat", "lon", "heading"} <= set(row)


def test_the_photo_is_decoded_and_resized_when_asked_for():
    """Maps extracted with --rgb: `rgb` decodes to the uint8 photo when a reader asks for the column (an RGB
    retriever), and resizes with the maps; other readers never decode it."""
    from vprlib.maps import decode_batch, encode_depth, encode_rgb, encode_seg
    from vprlib.train.data import resize_maps

    photo = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    photo[1] = 77
    batch = {"image_id": np.array(["a", "b"], dtype=object), "map_height": np.array([8, 8]),
             "map_width": np.array([8, 8]), "depth": np.array([encode_depth(np.zeros((8, 8)))] * 2, dtype=object),
             "seg": np.array([encode_seg(np.ones((8, 8)))] * 2, dtype=object),
             "rgb": np.array([encode_rgb(p) for p in photo], dtype=object)}
    decoded = decode_batch(batch, columns=("image_id", "rgb"))
    assert decoded["rgb"].dtype == np.uint8 and np.array_equal(decoded["rgb"], photo)
    assert "rgb" not in decode_batch(batch)
    small = resize_maps(decoded, 4)
    assert small["rgb"].shape == (2, 4, 4, 3) and small["rgb"].dtype == np.uint8 and (small["rgb"][1] == 77).all()


def test_an_rgb_retriever_refuses_maps_without_photos(gt_maps):
    from vprlib.index.embed import ModelError, RetrieverRecord

    record = RetrieverRecord(path="rgb.pt", sha256="", family="cosplace", config={"encoding": {"modalities": "rgb"}},
                             map_spec={}, input_side=SIDE, descriptor_size=8)
    with pytest.raises(ModelError, match=r"has no photos \(column rgb\), which the retriever rgb.pt embeds"):
        record.check_photos(gt_maps)


def test_write_maps_carries_the_manifest_and_encodes_the_maps(tmp_path):
    """maps.write_maps (the synthetic city's writer): one part whose rows are the manifest's rows, with their types,
    beside the encoded maps; an error row keeps empty maps."""
    import pyarrow as pa

    from vprlib.maps import carry_columns, output_schema, write_maps

    spec = MapSpec(strategy="ground-truth", models="test", side=4)
    manifest = carry_columns(pa.table({"image_id": ["a", "b"], "uri": ["a.png", "b.png"], "lat": [1.0, 2.0],
                                       "lon": [3.0, 4.0], "status": pa.array([7, None], pa.int16())}))
    depth = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    seg = np.arange(32, dtype=np.uint8).reshape(2, 4, 4) % 4
    maps = {"status": np.array(["ok", "error"], dtype=object), "error": np.array(["", "bad"], dtype=object),
            "depth": depth, "seg": seg, "dynamic_fraction": np.array([0.5, 0.0], np.float32)}
    name = f"part-{'a' * 32}.parquet"
    written = write_maps(maps, manifest, spec, str(tmp_path), output_schema(manifest.schema, spec), name=name)
    assert written.to_pylist() == [{"image_id": "a", "status": "ok"}, {"image_id": "b", "status": "error"}]
    table = read_maps(str(tmp_path))
    assert table.schema.field("input_status").type == pa.int16() and table["input_status"].to_pylist() == [7, None]
    rows = table.to_pylist()
    assert decode_depth(rows[0]).tolist() == depth[0].tolist() and decode_seg(rows[0]).tolist() == seg[0].tolist()
    assert rows[1]["depth"] == b"" and rows[1]["error"] == "bad" and np.isnan(rows[1]["dynamic_fraction"])
    assert (tmp_path / name).is_file()
