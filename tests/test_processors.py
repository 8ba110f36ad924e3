"""Segmenter and DepthEstimator against transformers' own image processor + model + post-processing, on random
weights of the paper's architectures (SegFormer-B5, DPT-Hybrid), offline.

Each Hugging Face folder holds the model config and the processor config as the hub has it for
nvidia/segformer-b5-finetuned-ade-640-640 and Intel/dpt-hybrid-midas (the latter as transformers' conversion script
writes it: `DPTImageProcessor(size=384)`). The model weights are not saved: both pipelines run the same in-memory
model, so only the processing around it is compared. Photos are street-like uint8 images with hard edges, where a
float resize overshoots.
"""

import json

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as tvF
from transformers import AutoImageProcessor

from vprlib.models.dpt import DepthConfig, DepthEstimator, build_dpt, depth_config_from_processor, normalize_depth
from vprlib.models.hf_image import HFImageModel, processor_settings, resize_two_pass, to_uint8
from vprlib.models.segformer import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Segmenter,
    SegmenterConfig,
    build_segformer,
    segmenter_config_from_processor,
)

SEGFORMER_PROCESSOR = {"do_normalize": True, "do_resize": True, "feature_extractor_type": "SegformerFeatureExtractor",
                       "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "reduce_labels": True,
                       "resample": 2, "size": 640}
DPT_PROCESSOR = {"do_normalize": True, "do_rescale": True, "do_resize": True, "ensure_multiple_of": 1,
                 "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "DPTImageProcessor",
                 "image_std": [0.5, 0.5, 0.5], "keep_aspect_ratio": False, "resample": 3,
                 "rescale_factor": 1 / 255, "size": {"height": 384, "width": 384}}
PHOTO_SIZES = [(512, 512), (480, 640)]


def street_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """H,W,3 uint8: sky, facades with windows, road, sensor noise; many hard edges."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.float32)
    horizon = height * 2 // 3
    image[:horizon] = rng.uniform(150, 250, 3)
    image[horizon:] = rng.uniform(40, 90, 3)
    for _ in range(12):
        x0, x1 = sorted(rng.integers(0, width, 2))
        top = rng.integers(0, horizon // 2)
        image[top:horizon, x0:x1] = rng.uniform(20, 230, 3)
        for _ in range(8):
            y, x = rng.integers(top, horizon - 8), rng.integers(x0, max(x0 + 1, x1 - 6))
            image[y:y + 8, x:x + 6] = rng.uniform(0, 60, 3)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def as_batch(photo: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous()


def hf_folder(path, model, processor: dict):
    path.mkdir()
    model.config.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return str(path)


@pytest.fixture(scope="module")
def segformer(tmp_path_factory):
    model = build_segformer("b5", seed=4).eval()
    return model, hf_folder(tmp_path_factory.mktemp("hub") / "segformer", model, SEGFORMER_PROCESSOR)


@pytest.fixture(scope="module")
def dpt(tmp_path_factory):
    model = build_dpt("hybrid", seed=5).eval()
    return model, hf_folder(tmp_path_factory.mktemp("hub") / "dpt", model, DPT_PROCESSOR)


def test_configs_follow_the_saved_processors(segformer, dpt):
    assert segmenter_config_from_processor(segformer[1]) == SegmenterConfig(input_size=640, resample="bilinear")
    assert segmenter_config_from_processor(segformer[1], input_size=512).input_size == 512
    assert depth_config_from_processor(dpt[1]) == DepthConfig(input_size=384, resample="bicubic")


def test_unsupported_processor_settings_are_refused(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**DPT_PROCESSOR, "keep_aspect_ratio": True,
                                                                   "ensure_multiple_of": 32}))
    with pytest.raises(ValueError, match="keep_aspect_ratio.*ensure_multiple_of"):
        processor_settings(str(tmp_path))


@pytest.mark.parametrize("size", PHOTO_SIZES, ids=["512x512", "640x480"])
def test_pixel_values_are_the_processors(segformer, dpt, size):
    photo = street_photo(*size)
    for (model, folder), config in ((segformer, segmenter_config_from_processor), (dpt, depth_config_from_processor)):
        expected = AutoImageProcessor.from_pretrained(folder)(images=photo, return_tensors="pt").pixel_values
        wrapper = HFImageModel(model, config(folder))
        assert torch.equal(wrapper.preprocess(as_batch(photo)), expected)
        assert torch.equal(wrapper.preprocess(as_batch(photo).float() / 255), expected)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_device_resize_stays_within_two_levels_of_the_processor(mode):
    """The resize used off the CPU (two float passes, each rounded) against the processor's CPU kernel."""
    photo = as_batch(street_photo(480, 640, seed=1))
    for side in (384, 640):  # the processor resizes with torchvision's uint8 kernel
        reference = tvF.resize(photo, [side, side], interpolation=tvF.InterpolationMode(mode), antialias=True)
        diff = (resize_two_pass(photo, (side, side), mode).int() - reference.int()).abs()
        assert diff.max() <= 2 and (diff > 1).float().mean() < 1e-3


def test_float_photos_are_read_as_their_uint8_levels():
    levels = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    jitter = torch.rand(levels.shape) * 0.8 - 0.4  # float photos off their levels by rounding errors
    assert torch.equal(to_uint8((levels.float() + jitter).clamp(0, 255) / 255), levels)
    assert to_uint8(levels) is levels


class Memo(torch.nn.Module):
    """A model that returns its previous output when called again on bit-identical pixel values, as its
    deterministic CPU forward pass would: when our pixel values are the processor's, the model runs once."""

    def __init__(self, model):
        super().__init__()
        self.model, self.last = model, None

    @property
    def config(self):
        return self.model.config

    def forward(self, pixel_values):
        if self.last is None or not torch.equal(self.last[0], pixel_values):
            self.last = (pixel_values, self.model(pixel_values=pixel_values))
        return self.last[1]


def reference_labels(model, folder, photo):
    processor = AutoImageProcessor.from_pretrained(folder)
    outputs = model(**processor(images=photo, return_tensors="pt"))
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[photo.shape[:2]])[0]


def reference_depth(model, folder, photo):
    processor = AutoImageProcessor.from_pretrained(folder)
    outputs = model(**processor(images=photo, return_tensors="pt"))
    return processor.post_process_depth_estimation(outputs, target_sizes=[photo.shape[:2]])[0]["predicted_depth"]


@pytest.mark.slow
@torch.no_grad()
@pytest.mark.parametrize("size", PHOTO_SIZES, ids=["512x512", "640x480"])
def test_segmenter_labels_are_the_processor_pipelines(segformer, size):
    model, folder = Memo(segformer[0]), segformer[1]
    photo = street_photo(*size, seed=2)
    labels = Segmenter(model, segmenter_config_from_processor(folder)).labels(as_batch(photo))[0]
    agreement = (labels == reference_labels(model, folder, photo)).float().mean().item()
    print(f"labels equal on {agreement:.2%} of pixels")
    assert agreement >= 0.999  # the issue asks for 99%; on the CPU the two pipelines see the same pixel values


@pytest.mark.slow
@torch.no_grad()
@pytest.mark.parametrize("size", PHOTO_SIZES, ids=["512x512", "640x480"])
def test_depth_is_the_processor_pipelines(dpt, size):
    model, folder = Memo(dpt[0]), dpt[1]
    photo = street_photo(*size, seed=3)
    ours = normalize_depth(DepthEstimator(model, depth_config_from_processor(folder))(as_batch(photo)))[0]
    expected = normalize_depth(reference_depth(model, folder, photo)[None])[0]
    correlation = torch.corrcoef(torch.stack([ours.flatten(), expected.flatten()]))[0, 1].item()
    print(f"normalised depth correlation {correlation:.5f}")
    assert correlation >= 0.995 and (ours - expected).abs().max() < 0.01  # a float resize: 0.99, off by 0.1
