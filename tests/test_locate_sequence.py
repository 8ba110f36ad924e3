"""Locating a walk from a folder of frames or a video (vprlib.index.locate_sequence): frame order, the frames a video
gives, one-line refusals, and the answer of the path matcher over the frames' hits."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs import locate as locate_job
from vprlib.geo import local_plane
from vprlib.index.locate import LocateError
from vprlib.index.locate_sequence import choose_frames, list_frames, read_video, sequence_answer
from vprlib.index.search import Hits
from vprlib.sequences import PathSearch


def test_frames_in_natural_order_and_refusals(tmp_path):
    for name in ("frame10.png", "frame2.png", "frame1.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [Path(f).name for f in list_frames(str(tmp_path))] == ["frame1.jpg", "frame2.png", "frame10.png"]
    with pytest.raises(LocateError, match="is not a folder of frames"):
        list_frames(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LocateError, match="holds no frames"):
        list_frames(str(tmp_path / "empty"))


def test_the_walk_is_placed_at_the_end_of_its_path():
    """Places every 5 m along an east-west street; the walk goes east over places 10, 11, 12; the last frame alone
    prefers place 30, which no earlier frame supports."""
    origin = (51.5, -0.1)
    east = np.arange(40) * 5.0
    scale = np.radians(1.0) * 6_371_008.8
    lat = np.full(40, origin[0])
    lon = origin[1] + east / (scale * np.cos(np.radians(origin[0])))
    np.testing.assert_allclose(local_plane(lat, lon, origin)[:, 0], east, atol=1e-6)
    rng = np.random.default_rng(0)
    rows = []
    for frame, place in enumerate((10, 11, 12)):
        scores = dict(zip(rng.choice(40, 8, replace=False).tolist(), rng.uniform(0.1, 0.4, 8), strict=True))
        scores[place] = 0.7
        if frame == 2:
            scores[30] = 0.9
        order = sorted(scores, key=lambda i: -scores[i])
        rows.append(order)
    k = max(len(r) for r in rows)
    ids = np.full((3, k), None, object)
    sc = np.full((3, k), -np.inf, np.float32)
    cols = {c: np.full((3, k), None, object) for c in ("lat", "lon")}
    for f, order in enumerate(rows):
        for j, place in enumerate(order):
            ids[f, j] = f"img{place:03d}"
            sc[f, j] = 0.7 if place in (10, 11, 12) and place == 10 + f else (0.9 if place == 30 and f == 2 else 0.2)
            cols["lat"][f, j], cols["lon"][f, j] = lat[place], lon[place]
    answer = sequence_answer(Hits(sc, ids, cols), PathSearch(speeds=(5.0,), directions=4, tolerance_m=1.0), top_k=3)
    assert answer["places"][0]["image_id"] == "img012"
    assert answer["estimate"]["lon"] == pytest.approx(lon[12])
    assert answer["heading"] == 90.0 and answer["speed_m_per_frame"] == 5.0
    assert sc[2].max() == pytest.approx(0.9) and ids[2, 0] == "img030"  # the last frame alone is wrong


def test_locate_job_refuses_a_folder_without_frames(tmp_path, capsys):
    assert locate_job.main(["--index", str(tmp_path), "--sequence", str(tmp_path / "none")]) == 2
    assert "is not a folder of frames" in capsys.readouterr().err


# Lossless codecs of the PyAV wheel, each in a container it fits: the frames decode to the very pixels written.
LOSSLESS = [("clip.mkv", "ffv1", "bgr0"), ("clip.avi", "png", "rgb24"), ("clip.mov", "png", "rgb24")]


def frame_pixels(i: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    """Frame i of a synthetic clip: its red channel is 10 i, so a decoded frame says which one it is; green and blue
    are gradients, so a frame decoded as another's is seen."""
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 10 * i
    image[..., 1] = (np.arange(width) * 5)[None, :]
    image[..., 2] = (np.arange(height) * 6)[:, None]
    return image


def write_video(path, frames: list[np.ndarray], rate: int = 10, codec: str = "ffv1", pix_fmt: str = "bgr0"):
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return str(path)


@pytest.mark.parametrize("name,codec,pix_fmt", LOSSLESS)
def test_a_video_gives_frames_evenly_spaced_in_time_oldest_first(tmp_path, name, codec, pix_fmt):
    """13 frames at 10 fps (0.0 to 1.2 s): 5 frames are 0, 3, 6, 9, 12; the last 0.6 s in 4 frames are 6, 8, 10, 12;
    one frame is the last. Each is the written frame pixel for pixel."""
    written = [frame_pixels(i) for i in range(13)]
    clip = write_video(tmp_path / name, written, codec=codec, pix_fmt=pix_fmt)
    for (count, seconds), chosen in (((5, None), [0, 3, 6, 9, 12]), ((4, 0.6), [6, 8, 10, 12]), ((1, None), [12]),
                                     ((13, 5.0), list(range(13)))):
        names, images = read_video(clip, count, seconds)
        assert names == [f"{name}@{i / 10:.2f}s" for i in chosen]
        assert [int(np.asarray(im)[0, 0, 0]) // 10 for im in images] == chosen
        for i, image in zip(chosen, images, strict=True):
            assert image.mode == "RGB" and np.array_equal(np.asarray(image), written[i])


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_videos_frames_are_turned_as_its_display_matrix_says(tmp_path, degrees):
    """A phone held upright records sideways frames and a rotation to show them by (counter-clockwise degrees)."""
    av = pytest.importorskip("av")
    written = [frame_pixels(i) for i in range(3)]
    with av.open(str(tmp_path / "turned.mkv"), "w") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.height, stream.width, stream.pix_fmt = 40, 48, "bgr0"
        stream.set_display_rotation(degrees)
        for image in written:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    _, (image,) = read_video(str(tmp_path / "turned.mkv"), 1)
    assert np.array_equal(np.asarray(image), np.rot90(written[-1], k=degrees // 90))


def test_uneven_frame_times_fall_back_to_frames_evenly_spaced_by_count():
    assert choose_frames([0.0, 0.01, 0.03, 1.0], 3) == [0, 2, 3]  # nearest in time: 0.0, 0.5 and 1.0 s
    assert choose_frames([0.0, 0.01, 0.02, 1.0], 4) == [0, 1, 2, 3]  # nearest in time would take 1.0 s twice
    assert choose_frames([5.0, 5.5, 6.0, 6.5, 7.0], 2, seconds=1.0) == [2, 4]  # times need not start at 0


def test_a_videos_frames_make_the_maps_their_image_files_make(tmp_path):
    """The same frames as a video and as a folder of PNG files go through the extraction chain (tiny models) to the
    same maps."""
    from vprlib.index.locate import photo_maps
    from vprlib.spec import MapSpec

    written = [frame_pixels(i) for i in range(5)]
    _, images = read_video(write_video(tmp_path / "walk.mkv", written), 5)
    (tmp_path / "walk").mkdir()
    for i, image in enumerate(written):
        Image.fromarray(image).save(tmp_path / "walk" / f"frame{i}.png")
    spec = MapSpec(strategy="none", models="tiny", side=32)
    from_video = photo_maps(images, spec, "cpu")
    from_files = photo_maps(list_frames(str(tmp_path / "walk")), spec, "cpu")
    assert set(from_video) == set(from_files) >= {"depth", "seg"}
    for key in ("depth", "seg"):
        assert np.array_equal(np.asarray(from_video[key]), np.asarray(from_files[key])), key


def test_a_video_that_cannot_give_a_walk_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    clip = write_video(tmp_path / "short.mkv", [frame_pixels(i) for i in range(3)])
    (tmp_path / "notes.mp4").write_text("not a video\n")
    Image.fromarray(frame_pixels(0)).save(tmp_path / "one.png")
    (tmp_path / "walk").mkdir()
    index = str(tmp_path / "no-index")  # every refusal comes before the index is read
    for argv, said in (([clip], f"--sequence {clip}: the clip has 3 decodable frames, fewer than --frames 5"),
                       ([clip, "--frames", "3", "--seconds", "0.1"],
                        f"--sequence {clip}: the clip has 2 decodable frames in its last 0.1 s, fewer than --frames 3"),
                       ([str(tmp_path / "notes.mp4")], f"--sequence {tmp_path / 'notes.mp4'} is not a video PyAV can "
                                                       f"decode"),
                       ([str(tmp_path / "one.png")], f"--sequence {tmp_path / 'one.png'} is one image"),
                       ([clip, "--frames", "0"], "--frames must be >= 1, got 0"),
                       ([clip, "--seconds", "0"], "--seconds must be > 0, got 0"),
                       ([clip, "--seconds", "-2"], "--seconds must be > 0, got -2"),
                       ([str(tmp_path / "walk"), "--frames", "3"], "--frames and --seconds choose a video's frames")):
        assert locate_job.main(["--index", index, "--sequence", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"locate: error: {said}") and err.count("\n") == 1, (argv, err)
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    assert locate_job.main(["--index", index, "--sequence", clip, "--frames", "2"]) == 2
    assert capsys.readouterr().err == "locate: error: reading a video needs PyAV: install vprlib[video]\n"
