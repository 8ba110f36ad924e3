"""Extraction job: photos -> depth and segmentation maps in Parquet (paper Fig. 2, DESIGN.md "The pipeline").

Run it with `python jobs/extract.py --input ... --output ...` or `vprlib.extract.pipeline.run_extract(config)`.
Output layout (see vprlib.extract.encode for every column): `part-*.parquet` files with the manifest's columns,
`status`/`error`, `depth` (raw little-endian float32, map_height x map_width), `seg` (PNG of uint8 labels),
`dynamic_fraction`, `strategy`, `models`; read them with `read_maps(path)` and decode one row's maps with
`decode_depth(row)` / `decode_seg(row)`.
"""

from vprlib.extract.config import ExtractConfig
from vprlib.extract.encode import decode_depth, decode_seg, decode_seg_prob, read_maps

__all__ = ["ExtractConfig", "decode_depth", "decode_seg", "decode_seg_prob", "read_maps"]
