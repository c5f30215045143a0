"""Hostile and broken mirrors (a local HTTP server on 127.0.0.1 only) and hostile tarballs.

test_download.py covers a bad first mirror falling through to a good second one (wrong bytes, an HTML
page with status 200, 404, 500, a body cut short, a server that never answers) and the basic tar
refusals. Here: every fault as the only mirror (refused, nothing left behind, the message says what
to do), a real TCP reset and a stall in the middle of the body, a redirect to a local file, the data
layer after a failed download, and tar tricks through folder links and long names. Every timeout is
0.5 s and every server-side stall ends when the test does, so nothing here can hang.
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
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from vit import data
from vit.data import load_tensor_dataset
from vit.download import download, extract_tar
from vit.formats import VitError

PAYLOAD = b"the real archive bytes " * 2000
MD5 = hashlib.md5(PAYLOAD).hexdigest()
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
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_on_the_only_mirror_is_refused_and_leaves_nothing(server, tmp_path, fault):
    base, routes = server
    routes["/f.gz"] = FAULTS[fault]
    dest = tmp_path / "dl" / "f.gz"
    start = time.monotonic()
    with pytest.raises(VitError) as e:
        download([f"{base}/f.gz"], dest, MD5, timeout=TIMEOUT)
    assert time.monotonic() - start < 10 * TIMEOUT  # a stall costs the timeout, not the stall
    message = str(e.value)
    assert f"{base}/f.gz: " in message
    assert f"place f.gz (md5 {MD5}) at {dest.resolve()} by hand" in message
    assert list(dest.parent.iterdir()) == []  # no temp file, nothing under the final name


@pytest.mark.parametrize("fault", ["reset mid-file", "stall mid-file", "redirect to a local file"])
def test_new_faults_fall_through_to_the_next_mirror(server, tmp_path, fault, capsys):
    base, routes = server
    routes["/m1/f"], routes["/m2/f"] = FAULTS[fault], body(PAYLOAD)
    dest = tmp_path / "f"
    assert download([f"{base}/m1/f", f"{base}/m2/f"], dest, MD5, timeout=TIMEOUT) == dest
    assert dest.read_bytes() == PAYLOAD and [p.name for p in tmp_path.iterdir()] == ["f"]
    err = capsys.readouterr().err
    assert err.count("downloading") == 2 and err.count("failed") == 1


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
    source = data._Source(mirrors=(f"{base}/m1/", f"{base}/m2/"),
                          md5={name: hashlib.md5(content).hexdigest() for name, content in files.items()})
    monkeypatch.setitem(data._SOURCES, "mnist", source)
    faults = ["reset mid-file", "cut short", "wrong checksum", "html page with status 200"]
    for i, name in enumerate(files):  # both mirrors of every file fail, each in its own way
        routes[f"/m1/{name}"], routes[f"/m2/{name}"] = FAULTS[faults[i]], FAULTS[faults[-1 - i]]
    folder = tmp_path / "root" / "mnist"
    with pytest.raises(VitError, match=r"(?s)could not download train-images-idx3-ubyte\.gz.*Connection reset.*"
                                       r"md5 mismatch.*by hand"):
        load_tensor_dataset("mnist", tmp_path / "root")
    assert list(folder.iterdir()) == []
    with pytest.raises(VitError, match="files missing and downloads are off"):  # not a half file read as data
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
        extract_tar(archive, tmp_path / "out", ["pkg/a.bin"])
    assert _tree(tmp_path) == before


def test_tar_symlink_then_file_through_it_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _tar(tmp_path / "a.tar.gz", [("pkg", None, {"type": tarfile.SYMTYPE, "linkname": str(outside)}),
                                           ("pkg/a.bin", b"pwned", {})])
    with pytest.raises(VitError, match=r"member 'pkg': link to"):
        extract_tar(archive, tmp_path / "out", ["pkg/a.bin"])
    assert list(outside.iterdir()) == [] and not (tmp_path / "out").exists()


def test_tar_into_a_folder_link_that_leads_outside_is_refused(tmp_path):
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    dest.mkdir()
    (dest / "pkg").symlink_to(outside)  # left in dest by someone else
    archive = _tar(tmp_path / "a.tar.gz", [("pkg/sub/a.bin", b"AAAA", {})])
    with pytest.raises(VitError, match=r"would be written to .*outside.*remove the link"):
        extract_tar(archive, dest, ["pkg/sub/a.bin"])
    assert list(outside.iterdir()) == []  # not even the folder 'sub' was created through the link


def test_tar_duplicate_and_missing_members_say_what_to_do(tmp_path):
    twice = _tar(tmp_path / "twice.tar.gz", [("pkg/a.bin", b"AAAA", {}), ("./pkg/a.bin", b"BBBB", {})])
    with pytest.raises(VitError, match=r"'pkg/a.bin' appears twice; .*delete it and download it again"):
        extract_tar(twice, tmp_path / "out", ["pkg/a.bin"])
    folder_named_like_file = _tar(tmp_path / "dir.tar.gz", [("pkg/a.bin", None, {"type": tarfile.DIRTYPE})])
    with pytest.raises(VitError, match=r"missing members \['pkg/a.bin'\]; .*delete it and download it again"):
        extract_tar(folder_named_like_file, tmp_path / "out", ["pkg/a.bin"])
    assert not (tmp_path / "out").exists()
