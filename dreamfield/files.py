"""Atomic file writes: every output goes to a temporary name in its folder and is renamed over the
target (``os.replace`` is atomic on POSIX), so an interrupted write never leaves a half file and
never replaces a good one with a broken one.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional

TMP_MARK = ".tmp-"  # temporary names: .<name>.tmp-<pid>; leftovers of a killed write are removed by clean_tmp


def tmp_name(path: Path) -> Path:
    """The temporary sibling of ``path`` that an atomic write goes through (keeps the suffix, so
    writers that pick a format by extension still work)."""
    return path.with_name(f".{path.stem}{TMP_MARK}{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write tmp`` -> tmp is fsynced and renamed to p on success,
    removed on failure (the exception propagates)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def clean_tmp(folder: str | Path) -> list[Path]:
    """Remove leftovers of interrupted atomic writes (``.*.tmp-*``) directly in ``folder``."""
    folder = Path(folder)
    gone = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and p.name.startswith(".") and TMP_MARK in p.name:
                p.unlink()
                gone.append(p)
    return gone


def read_json(path: str | Path) -> Optional[dict]:
    """A JSON object from ``path``; None when the file is missing, unreadable, not JSON or not an object
    (a run still being written, or a half-written file of an older version)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, in order; [] when it is missing or unreadable. Lines that are not
    a JSON object are skipped: the last one may have been cut by a kill while it was being appended."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, ValueError):
        return []
    records = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records
