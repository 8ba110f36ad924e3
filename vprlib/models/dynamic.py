"""Dynamic-object masks from ADE20K label maps (paper III-B, eq. 5).

The paper marks every pixel whose SegFormer label is a dynamic class (vehicles, people, animals) and hands that
binary mask to Big-LaMa. The class ids are ADE20K's 150 classes, 0-based as SegFormer outputs them.
"""

import torch
import torch.nn.functional as F

# ADE20K 0-based ids of the classes the paper treats as dynamic.
DYNAMIC_ADE20K_NAMES: dict[int, str] = {
    12: "person",
    20: "car",
    76: "boat",
    80: "bus",
    83: "truck",
    90: "airplane",
    102: "van",
    103: "ship",
    116: "minibike",
    126: "animal",
    127: "bicycle",
}
DYNAMIC_ADE20K: tuple[int, ...] = tuple(DYNAMIC_ADE20K_NAMES)


def dilate_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow a bool mask (B,H,W) by `pixels` in every direction (square structuring element, max-pool)."""
    if pixels < 0:
        raise ValueError(f"dilation must be >= 0 pixels, got {pixels}")
    if pixels == 0:
        return mask
    grown = F.max_pool2d(mask[:, None].float(), kernel_size=2 * pixels + 1, stride=1, padding=pixels)
    return grown[:, 0] > 0


def dynamic_mask(labels: torch.Tensor, classes: tuple[int, ...] = DYNAMIC_ADE20K, dilation: int = 0) -> torch.Tensor:
    """Bool mask (B,H,W) of pixels whose label (int B,H,W) is in `classes`, dilated by `dilation` pixels.

    Dilating a few pixels covers the soft object borders SegFormer misses, so LaMa does not copy them back in.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B,H,W), got shape {tuple(labels.shape)}")
    wanted = torch.as_tensor(classes, dtype=labels.dtype, device=labels.device)
    return dilate_mask(torch.isin(labels, wanted), dilation)
