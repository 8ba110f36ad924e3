"""Where files live: local paths and fsspec URLs (s3://, file://) told apart, resolved and opened, and files written
so that a reader never sees half of one. Every module that touches storage goes through these helpers."""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Callable

import fsspec

TEMP_PREFIX = ".tmp-"


def url_to_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem (local or s3fs, credentials from the environment) and the path within it."""
    return fsspec.core.url_to_fs(uri)


def is_remote(uri: str) -> bool:
    """Whether `uri` names an object store or other remote filesystem (a URL other than `file://`)."""
    return "://" in uri and not uri.startswith("file://")


def join_uri(base: str, relative: str) -> str:
    """`relative` resolved against the folder `base` (local path or URL); absolute inputs are returned as they are.

    A `file://` URL is absolute like any URL, and a `file://` base keeps its scheme (`file:///data` + `a.jpg` is
    `file:///data/a.jpg`)."""
    if "://" in relative or posixpath.isabs(relative):
        return relative
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, relative))}"
    return posixpath.normpath(posixpath.join(posixpath.abspath(base), relative))


def absolute_path(path: str) -> str:
    """A local path made absolute (tasks and actors run in other folders); URLs and '' unchanged; `file://` dropped
    so one local path has one spelling."""
    path = path.removeprefix("file://")
    return path if not path or "://" in path else os.path.abspath(os.path.expanduser(path))


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
