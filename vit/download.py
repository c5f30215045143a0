"""Verified downloads and safe tar extraction, standard library only.

`download` tries mirrors in order and only ever renames a file into place after its md5 matches,
so a file at the final path is always a complete, verified copy. Each attempt is bounded: in size
(a body longer than the expected size is cut off as it streams), in time (an overall deadline,
whatever the server's pace) and in where it may be redirected (http and https only).
`extract_tar` takes only the member names it is given, no larger than a given size, and refuses
any archive that tries to write outside the destination.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import shutil
import socket
import sys
import tarfile
import threading
import urllib.parse
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Iterable

from .errors import VitError
from .files import atomic_write

_CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough to keep memory flat
_SCHEMES = ("http", "https")  # urllib also opens file:// and ftp://; a data URL must never reach those
_MIN_RATE = 50_000  # bytes/s: the default deadline gives up on a mirror slower than this on average


def md5_file(path: Path) -> str:
    """Hex md5 of a file's bytes, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Deadline:
    """Shuts down the sockets of one download attempt when its time is up.

    A socket timeout bounds each read, not the whole: a server sending one byte a second never trips
    it. Shutting the socket down from this timer wakes the read blocked on it (headers or body), which
    then fails or ends, and `expired` tells the caller why.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds, self.expired = seconds, False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:  # connected after the deadline: do not let it start
            _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        # the plain socket's method, also for TLS: it wakes the reader without touching the TLS state
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _WatchedConnection:
    """Mixin: hand each connection's socket to the attempt's deadline once connected (for TLS: once the
    handshake is done; the handshake itself is bounded by the per-read timeout)."""

    def __init__(self, *args: object, deadline: _Deadline, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _HTTPConnection(_WatchedConnection, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, deadline=self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self._deadline), req, context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http and https only (urllib's own handler also follows ftp://)."""

    max_redirections = 5

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: object, newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme not in _SCHEMES:
            fp.close()
            raise VitError(f"redirected ({code}) to {newurl}: only http and https URLs are allowed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _stream(response: http.client.HTTPResponse, f: IO[bytes], size: int) -> tuple[str, int]:
    """Copy the body into `f`, never more than `size` bytes; return (hex md5, bytes received)."""
    digest = hashlib.md5(usedforsecurity=False)
    got = 0
    # read at most one byte past `size`: a longer (or chunked, endless) body stops there, unwritten
    while chunk := response.read(min(_CHUNK, size + 1 - got)):
        got += len(chunk)
        if got > size:
            raise VitError(f"the body is longer than the file's {size} bytes; stopped before writing past them")
        digest.update(chunk)
        f.write(chunk)
    return digest.hexdigest(), got


def _fetch(url: str, dest: Path, md5: str, size: int, timeout: float, deadline: float) -> None:
    """Stream `url` into a temp file beside `dest`; rename onto `dest` only if size and md5 match."""
    if urllib.parse.urlsplit(url).scheme not in _SCHEMES:
        raise VitError("only http and https URLs are allowed")
    with _Deadline(deadline) as watch:
        opener = urllib.request.build_opener(_HTTPHandler(watch), _HTTPSHandler(watch), _RedirectHandler())
        try:
            with opener.open(url, timeout=timeout) as response:
                announced = (response.headers.get("Content-Length") or "").strip()
                if announced.isdigit() and int(announced) != size:  # refused before a temp file exists
                    raise VitError(f"the server announces {announced} bytes, the file has {size}")
                # Raising inside atomic_write deletes the temp file, so a bad copy never lands anywhere.
                with atomic_write(dest) as f:
                    digest, got = _stream(response, f, size)
                    if digest != md5.lower():
                        # An HTML error page served with status 200 ends up here too.
                        raise VitError(f"md5 mismatch: got {digest} ({got} bytes), expected {md5.lower()} "
                                       f"({size} bytes)")
        except (OSError, http.client.HTTPException, VitError) as e:
            if watch.expired:  # the shut-down socket made the read fail or end early
                raise VitError(f"gave up after {deadline:g} s, the deadline for the whole file "
                               f"({type(e).__name__}: {e})") from None
            raise


def download(urls: list[str], dest: Path, md5: str, size: int, timeout: float = 30.0,
             deadline: float | None = None) -> Path:
    """Download the first mirror in `urls` whose content has md5 `md5` and `size` bytes to `dest`; return `dest`.

    Each attempt prints one line to stderr. A network error, HTTP error, timeout (`timeout`: per
    connect or read), overall deadline (`deadline` seconds per mirror; default `timeout` plus the
    time to fetch `size` bytes at 50 kB/s), a body other than `size` bytes (refused as soon as it is
    longer: no more than `size` bytes are ever written), a redirect to anything but http/https, or a
    checksum mismatch moves on to the next mirror. If every mirror fails, raises VitError listing
    each URL with its failure and the exact path where the file can be placed by hand.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if deadline is None:
        deadline = timeout + size / _MIN_RATE
    failures = []
    for url in urls:
        print(f"downloading {url} -> {dest}", file=sys.stderr)
        try:
            _fetch(url, dest, md5, size, timeout, deadline)
        except (OSError, http.client.HTTPException, VitError) as e:
            # OSError covers URLError, HTTPError (404...), timeouts and connection resets;
            # HTTPException covers a body cut short (IncompleteRead) and malformed responses.
            reason = f"{type(e).__name__}: {str(e) or repr(e)}"
            print(f"  failed: {reason}", file=sys.stderr)
            failures.append(f"  {url}: {reason}")
            continue
        return dest
    raise VitError(
        f"could not download {dest.name}; tried:\n" + "\n".join(failures) + "\n"
        f"place {dest.name} (md5 {md5.lower()}, {size} bytes) at {dest.resolve()} by hand, or run with network"
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


def extract_tar(archive: Path, dest: Path, members: Iterable[str], max_member_size: int) -> None:
    """Extract exactly the regular-file members named in `members` from `archive` into `dest`.

    The whole archive is checked before anything is written: a member with an absolute path, a
    '..' component, a link, a device or a fifo makes the archive a VitError (an official dataset
    archive has none), as does a wanted member that is missing, appears twice or is larger than
    `max_member_size` bytes (a tar header states each size, so a huge member is refused before a
    byte of it fills the disk). Each file is written atomically, and its resolved path is checked
    to lie inside `dest`.
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
                    if member.size > max_member_size:
                        raise VitError(f"{archive}: member {name!r} is {member.size} bytes, more than the "
                                       f"{max_member_size} expected; {_NOT_OURS}")
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
