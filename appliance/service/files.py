"""File helpers of the service: content hashes, stat signatures, and what counts as a file to look at."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

CHUNK = 1 << 20
LOG_MAX_BYTES = 20 * 1024**2
LOG_KEEP = 3
# editors, copy tools and our own atomic writes leave these while a file is being written
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_candidate(name: str) -> bool:
    """False for hidden files and the temporary files of copy tools and editors."""
    return not name.startswith(".") and not name.lower().endswith(TEMPORARY_SUFFIXES)


def stat_key(path: str | Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of a regular file, or None when it is gone or not a regular file."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if not os.path.isfile(path) or os.path.islink(path):
        return None
    return info.st_size, info.st_mtime_ns


def tree_signature(root: str | Path, *, ignore: tuple[str, ...] = ()) -> str:
    """A hash of every entry below ``root``: relative path, kind, and for files size and mtime.

    Folders count by name only (their mtime changes when the appliance writes ``REJECTED.txt``); top-level names
    in ``ignore`` and names starting with one of them (their temporary files) are left out.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        relative_folder = Path(folder).relative_to(root)
        for name in sorted(names + dirs):
            if relative_folder == Path(".") and any(name == i or name.startswith(f".{i}.") for i in ignore):
                continue
            path = Path(folder) / name
            try:
                info = os.lstat(path)
            except OSError:
                continue
            kind = "l" if path.is_symlink() else "d" if path.is_dir() else "f"
            size_time = f"{info.st_size}:{info.st_mtime_ns}" if kind == "f" else ""
            entry = f"{(relative_folder / name).as_posix()}\0{kind}\0{size_time}\n"
            digest.update(entry.encode("utf-8", "surrogateescape"))  # names need not be UTF-8
    return digest.hexdigest()


def tree_hashes(root: str | Path) -> dict[str, str]:
    """``relative path → SHA-256`` of every regular file below ``root`` (symbolic links not followed)."""
    root = Path(root)
    hashes = {}
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                hashes[path.relative_to(root).as_posix()] = file_hash(path)
    return hashes


def rotate_log(path: str | Path, *, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> bool:
    """Once ``path`` is larger than ``max_bytes``: ``path.1`` … ``path.<keep>`` hold the older parts and ``path``
    starts empty again. Copy then truncate, so a process still appending to it (the page, a training child: opened
    with ``O_APPEND``) goes on writing at the new end. True when it rotated."""
    path = Path(path)
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except OSError:
        return False
    for index in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{index + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as handle:
        handle.truncate(0)
    return True
