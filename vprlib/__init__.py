"""Visual place recognition from geometry (depth and segmentation maps), after
"Inpainting Semantic and Depth Features to Improve Visual Place Recognition in the Wild" (IEEE Access 2024)."""

__version__ = "0.1.0"
