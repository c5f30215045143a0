"""Hostile and broken mirrors (a local HTTP server on 127.0.0.1 only) and hostile tarballs.

test_download.py covers a bad first mirror falling through to a good second one (wrong bytes, an HTML
page with status 200, 404, 500, a body cut short, a server that never answers) and the basic tar
refusals. Here: every fault as the only mirror (refused, nothing left behind, the message says what
to do), a real TCP reset and a stall in the middle of the body, redirects to a local file and to ftp,
servers that trickle the headers or body (the per-file deadline), bodies longer than the file (cut off
as they stream), the data layer after a failed download, and tar tricks through folder links, long
names and oversized members. Every timeout is 0.5 s and every server-side stall ends when the test
does, so nothing here can hang.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import socket
import struct
import tarfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from vit import datasets
from vit import download as download_module
from vit.datasets import load_tensor_dataset
from vit.download import download, extract_tar
from vit.errors import VitError

PAYLOAD = b"the real archive bytes " * 2000
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SIZE = len(PAYLOAD)
TIMEOUT = 0.5  # seconds; every server stall below lasts longer than this
Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class _Server(http.server.ThreadingHTTPServer):
    """Serves `routes[path]`; `stop` ends any stalling handler at teardown."""

    daemon_threads = True
    routes: dict[str, Route]
    stop: threading.Event

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # handlers that reset or abandon the connection make the server's own cleanup fail: expected


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.routes.get(self.path, status(404))(self)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, Route]]]:
    """(base URL, route table) of a server on 127.0.0.1 at a free port."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.stop = {}, threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.routes
    httpd.stop.set()
    httpd.shutdown()
    httpd.server_close()


def body(content: bytes, length: int | None = None, content_type: str = "application/octet-stream") -> Route:
    """Status 200 with `content` (and a Content-Length of `length`, default the true one)."""
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(content) if length is None else length))
        h.end_headers()
        h.wfile.write(content)
    return route


def status(code: int) -> Route:
    return lambda h: h.send_error(code)


def reset_mid_file(h: http.server.BaseHTTPRequestHandler) -> None:
    """Announce the whole payload, send a third, then abort the connection with a TCP RST."""
    h.send_response(200)
    h.send_header("Content-Length", str(len(PAYLOAD)))
    h.end_headers()
    h.wfile.write(PAYLOAD[:len(PAYLOAD) // 3])
    h.wfile.flush()
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    h.connection.close()
    h.close_connection = True


def stall_mid_file(h: http.server.BaseHTTPRequestHandler) -> None:
    """Send headers and half the payload, then go silent for longer than the client's timeout."""
    h.send_response(200)
    h.send_header("Content-Length", str(len(PAYLOAD)))
    h.end_headers()
    h.wfile.write(PAYLOAD[:len(PAYLOAD) // 2])
    h.wfile.flush()
    h.server.stop.wait(10 * TIMEOUT)


def stall_before_headers(h: http.server.BaseHTTPRequestHandler) -> None:
    h.server.stop.wait(10 * TIMEOUT)


def redirect_to_file(h: http.server.BaseHTTPRequestHandler) -> None:
    h.send_response(302)
    h.send_header("Location", "file:///etc/passwd")
    h.end_headers()


def redirect_to_ftp(h: http.server.BaseHTTPRequestHandler) -> None:
    h.send_response(302)
    h.send_header("Location", "ftp://127.0.0.1:9/f.gz")  # port 9 (discard): nothing answers, were it followed
    h.end_headers()


def trickle_body(h: http.server.BaseHTTPRequestHandler) -> None:
    """Headers at once, then the body one byte every 50 ms: every read succeeds well within the timeout."""
    h.send_response(200)
    h.send_header("Content-Length", str(len(PAYLOAD)))
    h.end_headers()
    for i in range(len(PAYLOAD)):
        h.wfile.write(PAYLOAD[i:i + 1])
        h.wfile.flush()
        if h.server.stop.wait(0.05):
            return


def trickle_headers(h: http.server.BaseHTTPRequestHandler) -> None:
    """A status line, then one header that grows by a byte every 50 ms and never ends."""
    h.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
    while not h.server.stop.wait(0.05):
        h.wfile.write(b"a")
        h.wfile.flush()


def endless_chunked(h: http.server.BaseHTTPRequestHandler) -> None:
    """A chunked body without end (no Content-Length to refuse up front): 64 KiB chunks until the client leaves."""
    h.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = bytes(1 << 16)
    while not h.server.stop.is_set():
        h.wfile.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")


def announce_10_gb(h: http.server.BaseHTTPRequestHandler) -> None:
    """Announce 10 GB for the file, send a little of it, then stall."""
    h.send_response(200)
    h.send_header("Content-Length", str(10 * 10**9))
    h.end_headers()
    h.wfile.write(PAYLOAD)
    h.wfile.flush()
    h.server.stop.wait(10 * TIMEOUT)


FAULTS: dict[str, Route] = {
    "reset mid-file": reset_mid_file,
    "stall mid-file": stall_mid_file,
    "stall before headers": stall_before_headers,
    "cut short": body(PAYLOAD[:100], length=len(PAYLOAD)),
    "wrong checksum": body(PAYLOAD[:-1] + b"X"),
    "html page with status 200": body(b"<html><body>Service unavailable</body></html>", content_type="text/html"),
    "empty 200": body(b""),
    "404": status(404),
    "403": status(403),
    "redirect to a local file": redirect_to_file,
    "redirect to ftp": redirect_to_ftp,
    "one byte every 50 ms": trickle_body,
    "headers one byte every 50 ms": trickle_headers,
    "endless chunked body": endless_chunked,
    "10 GB announced": announce_10_gb,
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_on_the_only_mirror_is_refused_and_leaves_nothing(server, tmp_path, fault):
    base, routes = server
    routes["/f.gz"] = FAULTS[fault]
    dest = tmp_path / "dl" / "f.gz"
    start = time.monotonic()
    with pytest.raises(VitError) as e:
        download([f"{base}/f.gz"], dest, MD5, SIZE, timeout=TIMEOUT)
    assert time.monotonic() - start < 10 * TIMEOUT  # a stall costs the timeout, not the stall
    message = str(e.value)
    assert f"{base}/f.gz: " in message
    assert f"place f.gz (md5 {MD5}, {SIZE} bytes) at {dest.resolve()} by hand" in message
    assert list(dest.parent.iterdir()) == []  # no temp file, nothing under the final name


@pytest.mark.parametrize("fault", ["reset mid-file", "stall mid-file", "redirect to a local file"])
def test_new_faults_fall_through_to_the_next_mirror(server, tmp_path, fault, capsys):
    base, routes = server
    routes["/m1/f"], routes["/m2/f"] = FAULTS[fault], body(PAYLOAD)
    dest = tmp_path / "f"
    assert download([f"{base}/m1/f", f"{base}/m2/f"], dest, MD5, SIZE, timeout=TIMEOUT) == dest
    assert dest.read_bytes() == PAYLOAD and [p.name for p in tmp_path.iterdir()] == ["f"]
    err = capsys.readouterr().err
    assert err.count("downloading") == 2 and err.count("failed") == 1


@pytest.mark.parametrize("fault", ["one byte every 50 ms", "headers one byte every 50 ms"])
def test_a_mirror_too_slow_for_the_deadline_is_given_up_for_the_next(server, tmp_path, fault, capsys):
    """The timeout bounds one read; the deadline bounds the whole file, however the server paces its bytes."""
    base, routes = server
    routes["/m1/f"], routes["/m2/f"] = FAULTS[fault], body(PAYLOAD)
    dest = tmp_path / "f"
    start = time.monotonic()
    assert download([f"{base}/m1/f", f"{base}/m2/f"], dest, MD5, SIZE, timeout=TIMEOUT, deadline=1.0) == dest
    assert time.monotonic() - start < 1.0 + 2 * TIMEOUT  # the deadline, plus the good mirror's own time
    assert dest.read_bytes() == PAYLOAD and [p.name for p in tmp_path.iterdir()] == ["f"]
    assert "failed: VitError: gave up after 1 s, the deadline for the whole file" in capsys.readouterr().err


@pytest.mark.parametrize("fault", ["endless chunked body", "10 GB announced"])
def test_a_body_longer_than_the_file_is_cut_off_before_it_is_written(server, tmp_path, fault, monkeypatch):
    base, routes = server
    routes["/f.gz"] = FAULTS[fault]
    written = []
    real_atomic_write = download_module.atomic_write

    @contextmanager
    def counting_atomic_write(path: Path) -> Iterator[object]:
        with real_atomic_write(path) as f:
            counter = _CountingFile(f)
            written.append(counter)
            yield counter

    monkeypatch.setattr(download_module, "atomic_write", counting_atomic_write)
    start = time.monotonic()
    with pytest.raises(VitError) as e:
        download([f"{base}/f.gz"], tmp_path / "f.gz", MD5, SIZE, timeout=TIMEOUT)
    assert time.monotonic() - start < TIMEOUT  # refused as it streams (or from the headers), not at a timeout
    if fault == "10 GB announced":  # refused from the headers: nothing opened for writing
        assert f"the server announces 10000000000 bytes, the file has {SIZE}" in str(e.value) and written == []
    else:
        assert f"the body is longer than the file's {SIZE} bytes" in str(e.value)
        assert len(written) == 1 and written[0].bytes <= SIZE  # read one byte past SIZE at most, never written
    assert list(tmp_path.iterdir()) == []


class _CountingFile:
    """A file proxy that counts the bytes written through it."""

    def __init__(self, f: object) -> None:
        self.f, self.bytes = f, 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return self.f.write(data)


def test_a_redirect_to_ftp_is_refused_naming_the_url(server, tmp_path):
    base, routes = server
    routes["/f.gz"] = redirect_to_ftp
    with pytest.raises(VitError) as e:
        download([f"{base}/f.gz"], tmp_path / "f.gz", MD5, SIZE, timeout=TIMEOUT)
    assert (f"{base}/f.gz: VitError: redirected (302) to ftp://127.0.0.1:9/f.gz: only http and https URLs are "
            "allowed") in str(e.value)


def _idx_gz(array: np.ndarray) -> bytes:
    """A gzipped IDX file of a uint8 array (what the MNIST mirrors serve)."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes(), mtime=0)


def test_failed_downloads_leave_nothing_a_later_load_accepts(server, tmp_path, monkeypatch):
    base, routes = server
    files = {"train-images-idx3-ubyte.gz": _idx_gz(np.zeros((4, 28, 28), np.uint8)),
             "train-labels-idx1-ubyte.gz": _idx_gz(np.arange(4, dtype=np.uint8)),
             "t10k-images-idx3-ubyte.gz": _idx_gz(np.ones((2, 28, 28), np.uint8)),
             "t10k-labels-idx1-ubyte.gz": _idx_gz(np.arange(2, dtype=np.uint8))}
    source = datasets._Source(mirrors=(f"{base}/m1/", f"{base}/m2/"),
                          md5={name: hashlib.md5(content).hexdigest() for name, content in files.items()},
                          size={name: len(content) for name, content in files.items()})
    monkeypatch.setitem(datasets._SOURCES, "mnist", source)
    faults = ["reset mid-file", "cut short", "wrong checksum", "html page with status 200"]
    for i, name in enumerate(files):  # both mirrors of every file fail, each in its own way
        routes[f"/m1/{name}"], routes[f"/m2/{name}"] = FAULTS[faults[i]], FAULTS[faults[-1 - i]]
    folder = tmp_path / "root" / "mnist"
    with pytest.raises(VitError, match=r"(?s)could not download train-images-idx3-ubyte\.gz.*"
                                       r"announces 46000 bytes, the file has \d+.*by hand"):
        load_tensor_dataset("mnist", tmp_path / "root")
    assert list(folder.iterdir()) == []
    with pytest.raises(VitError, match="file\\(s\\) missing and downloads are off"):  # not a half file read as data
        load_tensor_dataset("mnist", tmp_path / "root", download=False)
    for name, content in files.items():  # the mirror recovers: the same call now succeeds
        routes[f"/m2/{name}"] = body(content)
    ds = load_tensor_dataset("mnist", tmp_path / "root")
    assert ds.train_y.tolist() == [0, 1, 2, 3] and ds.test_x.shape == (2, 1, 28, 28)
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)


# ------------------------------------------------------------------------------------------- tar

def _tar(path: Path, members: list[tuple[str, bytes | None, dict]]) -> Path:
    """A .tar.gz of (name, content or None for a non-file, extra TarInfo fields)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content, fields in members:
            info = tarfile.TarInfo(name)
            info.size = len(content or b"")
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(content) if content else None)
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


LONG = "d/" * 60  # a name over 100 bytes: stored in a GNU/PAX extended header


@pytest.mark.parametrize("name", ["pkg/../../evil", "./../evil", f"{LONG}../../../evil", "/tmp/evil",
                                  f"/{LONG}evil", "\\evil"])
def test_tar_path_tricks_are_refused_with_what_to_do(tmp_path, name):
    archive = _tar(tmp_path / "a.tar.gz", [("pkg/a.bin", b"AAAA", {}), (name, b"pwned", {})])
    before = _tree(tmp_path)
    with pytest.raises(VitError, match=r"a\.tar\.gz: refusing archive.*delete it and download it again"):
        extract_tar(archive, tmp_path / "out", ["pkg/a.bin"], max_member_size=1000)
    assert _tree(tmp_path) == before


def test_tar_symlink_then_file_through_it_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _tar(tmp_path / "a.tar.gz", [("pkg", None, {"type": tarfile.SYMTYPE, "linkname": str(outside)}),
                                           ("pkg/a.bin", b"pwned", {})])
    with pytest.raises(VitError, match=r"member 'pkg': link to"):
        extract_tar(archive, tmp_path / "out", ["pkg/a.bin"], max_member_size=1000)
    assert list(outside.iterdir()) == [] and not (tmp_path / "out").exists()


def test_tar_into_a_folder_link_that_leads_outside_is_refused(tmp_path):
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    dest.mkdir()
    (dest / "pkg").symlink_to(outside)  # left in dest by someone else
    archive = _tar(tmp_path / "a.tar.gz", [("pkg/sub/a.bin", b"AAAA", {})])
    with pytest.raises(VitError, match=r"would be written to .*outside.*remove the link"):
        extract_tar(archive, dest, ["pkg/sub/a.bin"], max_member_size=1000)
    assert list(outside.iterdir()) == []  # not even the folder 'sub' was created through the link


def test_tar_member_larger_than_expected_is_refused_before_writing(tmp_path):
    """A tar header states each member's size: a 50 GiB member is refused before a byte fills the disk
    (8 MiB of zeros here, a few KB compressed)."""
    archive = _tar(tmp_path / "a.tar.gz", [("pkg/a.bin", b"AAAA", {}), ("pkg/big.bin", bytes(8 << 20), {})])
    with pytest.raises(VitError, match=rf"member 'pkg/big.bin' is {8 << 20} bytes, more than the {1 << 20} expected; "
                                       r".*delete it and download it again"):
        extract_tar(archive, tmp_path / "out", ["pkg/a.bin", "pkg/big.bin"], max_member_size=1 << 20)
    assert not (tmp_path / "out").exists()  # not even the small member ahead of it
    extract_tar(archive, tmp_path / "out", ["pkg/a.bin", "pkg/big.bin"], max_member_size=8 << 20)
    assert (tmp_path / "out" / "pkg" / "big.bin").stat().st_size == 8 << 20


def test_tar_duplicate_and_missing_members_say_what_to_do(tmp_path):
    twice = _tar(tmp_path / "twice.tar.gz", [("pkg/a.bin", b"AAAA", {}), ("./pkg/a.bin", b"BBBB", {})])
    with pytest.raises(VitError, match=r"'pkg/a.bin' appears twice; .*delete it and download it again"):
        extract_tar(twice, tmp_path / "out", ["pkg/a.bin"], max_member_size=1000)
    folder_named_like_file = _tar(tmp_path / "dir.tar.gz", [("pkg/a.bin", None, {"type": tarfile.DIRTYPE})])
    with pytest.raises(VitError, match=r"missing members \['pkg/a.bin'\]; .*delete it and download it again"):
        extract_tar(folder_named_like_file, tmp_path / "out", ["pkg/a.bin"], max_member_size=1000)
    assert not (tmp_path / "out").exists()
