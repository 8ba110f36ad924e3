"""The extraction job: photos -> depth and segmentation maps in a maps table (paper Fig. 2).

Run it with `python jobs/extract.py --input ... --output ...` or `vprlib.extract.pipeline.run_extract(config)`.
The output layout is vprlib.maps's: read it with `read_maps(path)`, decode one row's maps with `decode_depth(row)` /
`decode_seg(row)`, or stream it as a Ray Dataset with `vprlib.maps.maps_dataset(path)`.
"""

from vprlib.extract.config import ExtractConfig, RunOptions, extract_config
from vprlib.maps import decode_depth, decode_seg, decode_seg_prob, read_maps

__all__ = ["ExtractConfig", "RunOptions", "decode_depth", "decode_seg", "decode_seg_prob", "extract_config",
           "read_maps"]
