"""Files on local disk or any fsspec filesystem (s3://), written so that a reader never sees half of one."""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from collections.abc import Callable

from vprlib.data.manifest import is_remote, url_to_fs

TEMP_PREFIX = ".tmp-"


def write_atomic(target: str, write: Callable) -> None:
    """Write `target` through `write(sink)` (a binary file object) whole or not at all: locally to a hidden temporary
    name in the same folder, then renamed (atomic on one filesystem); on S3 an object exists only once its upload
    completed, so it is written in place."""
    fs, path = url_to_fs(target)
    folder = posixpath.dirname(path)
    if folder:
        fs.makedirs(folder, exist_ok=True)
    temp = path if is_remote(target) else posixpath.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-"
                                                                 f"{posixpath.basename(path)}")
    try:
        with fs.open(temp, "wb") as sink:
            write(sink)
    except BaseException:
        if temp != path:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(temp)
        raise
    if temp != path:
        fs.mv(temp, path)


def remove_temporaries(folder: str) -> None:
    """Remove the temporaries `write_atomic` leaves when its process is killed mid-write (local folders only)."""
    if is_remote(folder):
        return
    fs, path = url_to_fs(folder)
    for item in fs.ls(path, detail=False) if fs.exists(path) else []:
        if posixpath.basename(item).startswith(TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(item)
