"""Verified downloads and safe tar extraction, standard library only.

`download` tries mirrors in order and only ever renames a file into place after its md5 matches,
so a file at the final path is always a complete, verified copy. `extract_tar` takes only the
member names it is given and refuses any archive that tries to write outside the destination.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable

from vit.formats import VitError, atomic_write

_CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough to keep memory flat


def md5_file(path: Path) -> str:
    """Hex md5 of a file's bytes, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Stream `url` into a temp file beside `dest`; rename onto `dest` only if the md5 matches."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        # urllib also opens file:// and ftp://; a data URL list must never reach those.
        raise VitError("only http and https URLs are allowed")
    with urllib.request.urlopen(url, timeout=timeout) as response:
        # Raising inside atomic_write deletes the temp file, so a bad copy never lands anywhere.
        with atomic_write(dest) as f:
            digest = hashlib.md5(usedforsecurity=False)
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                f.write(chunk)
            if digest.hexdigest() != md5.lower():
                # An HTML error page served with status 200 ends up here too.
                raise VitError(f"md5 mismatch: got {digest.hexdigest()}, expected {md5.lower()}")


def download(urls: list[str], dest: Path, md5: str, timeout: float = 30.0) -> Path:
    """Download the first mirror in `urls` whose content has md5 `md5` to `dest`; return `dest`.

    Each attempt prints one line to stderr. A network error, HTTP error, timeout or checksum
    mismatch moves on to the next mirror. If every mirror fails, raises VitError listing each URL
    with its failure and the exact path where the file can be placed by hand.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        print(f"downloading {url} -> {dest}", file=sys.stderr)
        try:
            _fetch(url, dest, md5, timeout)
        except (OSError, http.client.HTTPException, VitError) as e:
            # OSError covers URLError, HTTPError (404...), timeouts and connection resets;
            # HTTPException covers a body cut short (IncompleteRead) and malformed responses.
            reason = f"{type(e).__name__}: {e}"
            print(f"  failed: {reason}", file=sys.stderr)
            failures.append(f"  {url}: {reason}")
            continue
        return dest
    raise VitError(
        f"could not download {dest.name}; tried:\n" + "\n".join(failures) + "\n"
        f"place {dest.name} (md5 {md5.lower()}) at {dest.resolve()} by hand, or run with network"
    )


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why `member` is unsafe to have in an archive we extract from (None if it is fine)."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")):
        return "absolute path"
    if ".." in name.parts:
        return "'..' in path"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if not (member.isreg() or member.isdir()):
        return "device, fifo or other special file"
    return None


_NOT_OURS = "this is not the expected archive: delete it and download it again"


def extract_tar(archive: Path, dest: Path, members: Iterable[str]) -> None:
    """Extract exactly the regular-file members named in `members` from `archive` into `dest`.

    The whole archive is checked before anything is written: a member with an absolute path, a
    '..' component, a link, a device or a fifo makes the archive a VitError (an official dataset
    archive has none), as does a wanted member that is missing or appears twice. Each file is
    written atomically, and its resolved path is checked to lie inside `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    wanted = {str(PurePosixPath(m)) for m in members}
    try:
        with tarfile.open(archive, "r:*") as tar:
            found: dict[str, tarfile.TarInfo] = {}
            for member in tar.getmembers():
                problem = _member_problem(member)
                if problem is not None:
                    raise VitError(f"{archive}: refusing archive, member {member.name!r}: {problem}; {_NOT_OURS}")
                name = str(PurePosixPath(member.name))  # drops a leading './'
                if name in wanted and member.isreg():
                    if name in found:
                        raise VitError(f"{archive}: member {name!r} appears twice; {_NOT_OURS}")
                    found[name] = member
            missing = sorted(wanted - found.keys())
            if missing:
                raise VitError(f"{archive}: missing members {missing}; {_NOT_OURS}")
            root = dest.resolve()
            for name, member in found.items():  # archive order: gzip streams only seek forward cheaply
                target = dest / name
                if not target.resolve().is_relative_to(root):
                    # A symlinked folder already inside dest could point elsewhere: check before creating folders.
                    raise VitError(f"{archive}: member {name!r} would be written to {target.resolve()}, outside "
                                   f"{root}; remove the link inside {dest} that leads there")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with atomic_write(target) as f:
                    shutil.copyfileobj(source, f, _CHUNK)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise VitError(f"{archive}: cannot read tar archive ({type(e).__name__}: {e}); "
                       f"delete it to download it again") from e
    except OSError as e:
        raise VitError(f"{archive}: cannot extract into {dest} ({type(e).__name__}: {e})") from e
