"""File safety: every file a run leaves is written whole under a temporary name, then renamed into place.

A crash, a kill or a full disk while writing then leaves the old file (or none) under the real name,
never a half-written one that a later run or a user would read.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Yield a file open on `<path>.tmp-<pid>`; on success fsync it and rename it onto `path`.

    On an exception the temp file is removed and `path` is left as it was (absent or the old file).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    f = open(tmp, mode, encoding=None if "b" in mode else "utf-8")
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException as e:
        f.close()
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a failed write (ENOSPC) names no file: say which one it was
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX only; a no-op where folders cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
