"""Atomic outputs: a reader sees the old version or the new one, never a partial file.

- ``atomic_write_text(path, text)`` / ``atomic_write_json(path, obj)``: write a temp file in
  the same directory, fsync it, ``os.replace`` it over ``path``.
- ``atomic_dir(path)``: a context manager yielding a temp sibling directory to fill (a
  checkpoint, a results folder); on success it is fsynced and renamed to ``path``, on an
  exception it is removed and ``path`` is left as it was.

- ``move_aside(path, why)``: rename ``path`` to a hidden sibling ``.<name>.<why>-*`` (kept
  for inspection, out of every glob) and return the new path.

Temp names start with ``.`` so globs such as ``step_*`` never match a half-written output.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _temp_sibling(path: Path, kind: str) -> Path:
    # Same directory, so the final os.replace is a rename within one filesystem.
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _fsync_dir(path: Path) -> None:
    # The rename itself is only durable once the directory entry is on disk.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def move_aside(path: str | os.PathLike[str], why: str) -> Path:
    path = Path(path)
    aside = _temp_sibling(path, why)
    os.replace(path, aside)
    _fsync_dir(path.parent)
    return aside


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    # Not mkstemp: its 0600 mode would make results unreadable to the rest of a group.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    # Serialise first: an unserialisable object then fails before anything touches the disk.
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Fill the yielded directory; it becomes ``path`` only if the block succeeds.

    An existing ``path`` is replaced. That takes two renames (old out, new in), so a crash
    exactly between them leaves the old version as a hidden ``.<name>.old-*`` sibling.
    A crash while filling leaves a hidden ``.<name>.tmp-*`` sibling, never a partial ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    tmp.mkdir()  # not mkdtemp, whose 0700 mode would hide checkpoints from the group
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(Path(root))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not path.exists():
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return
    old = _temp_sibling(path, "old")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)  # put the old version back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
