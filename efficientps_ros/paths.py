"""Output paths checked before the work whose result they will hold, so that a long run never ends unwritten."""
from __future__ import annotations

import tempfile
from pathlib import Path


def writable_file(path: str, option: str) -> Path:
    """`path` with its folder made, checked before the work whose result it will hold."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option} {target}: its folder cannot be made ({exc.strerror or exc})") from None
    if target.is_dir():
        raise ValueError(f"{option} {target}: is a folder; give a file name")
    # A folder that exists may still take no files (read-only, /proc): a nameless file in it shows it does.
    try:
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {target}: its folder takes no new files ({exc.strerror or exc})") from None
    return target
