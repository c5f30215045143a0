"""vit.download against a local HTTP server (127.0.0.1, port 0) and hand-made tarballs."""
import hashlib
import http.server
import io
import tarfile
import threading
import time
from pathlib import Path

import pytest

from vit.download import download, extract_tar
from vit.errors import VitError

PAYLOAD = b"the real archive bytes " * 1000
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SIZE = len(PAYLOAD)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `self.server.routes[path]`: bytes (200), an int status, or a callable(handler)."""

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path, 404)
        if callable(route):
            route(self)
        elif isinstance(route, int):
            self.send_error(route)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(route)))
            self.end_headers()
            self.wfile.write(route)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    """A ThreadingHTTPServer on 127.0.0.1 with an empty route table; yields (base_url, routes)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes = {}
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.routes
    httpd.shutdown()
    httpd.server_close()


def _cut_short(handler: http.server.BaseHTTPRequestHandler) -> None:
    """Announce the full length, send half, drop the connection."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(PAYLOAD)))
    handler.end_headers()
    handler.wfile.write(PAYLOAD[:len(PAYLOAD) // 2])
    handler.wfile.flush()
    handler.close_connection = True


def _stall(handler: http.server.BaseHTTPRequestHandler) -> None:
    time.sleep(2.0)


def test_download_success_leaves_only_the_final_file(server, tmp_path, capsys):
    base, routes = server
    routes["/a/file.gz"] = PAYLOAD
    dest = tmp_path / "sub" / "file.gz"
    assert download([f"{base}/a/file.gz"], dest, MD5, SIZE) == dest
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in dest.parent.iterdir()] == ["file.gz"]
    assert f"{base}/a/file.gz" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["wrong bytes", "html page with status 200", "404", "500",
                                 "cut short", "stall"])
def test_bad_first_mirror_falls_through_to_the_second(server, tmp_path, capsys, bad):
    base, routes = server
    routes["/m1/f"] = {"wrong bytes": PAYLOAD[:-1] + b"X",
                       "html page with status 200": b"<html><body>Not found</body></html>",
                       "404": 404, "500": 500, "cut short": _cut_short, "stall": _stall}[bad]
    routes["/m2/f"] = PAYLOAD
    dest = tmp_path / "f"
    download([f"{base}/m1/f", f"{base}/m2/f"], dest, MD5, SIZE, timeout=0.5)
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temp file left behind
    err = capsys.readouterr().err
    assert err.count("downloading") == 2 and "failed" in err


def test_all_mirrors_bad_names_every_url_and_where_to_put_the_file(server, tmp_path):
    base, routes = server
    routes["/m1/f.gz"] = b"garbage"
    routes["/m2/f.gz"] = 404
    dest = tmp_path / "f.gz"
    with pytest.raises(VitError) as info:
        download([f"{base}/m1/f.gz", f"{base}/m2/f.gz"], dest, MD5, SIZE)
    message = str(info.value)
    assert f"{base}/m1/f.gz: VitError: the server announces 7 bytes, the file has {SIZE}" in message
    assert f"{base}/m2/f.gz: HTTPError" in message and "404" in message
    assert f"place f.gz (md5 {MD5}, {SIZE} bytes) at {dest.resolve()} by hand, or run with network" in message
    assert list(tmp_path.iterdir()) == []


def test_failed_download_keeps_an_existing_file_untouched(server, tmp_path):
    base, routes = server
    routes["/f"] = b"garbage"
    dest = tmp_path / "f"
    dest.write_bytes(b"old")
    with pytest.raises(VitError):
        download([f"{base}/f"], dest, MD5, SIZE)
    assert dest.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_non_http_urls_are_refused(tmp_path):
    local = tmp_path / "local"
    local.write_bytes(PAYLOAD)
    with pytest.raises(VitError, match="only http and https"):
        download([local.as_uri()], tmp_path / "out", MD5, SIZE)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- tar

def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def _make_tar(path: Path, extra=None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "pkg", type=tarfile.DIRTYPE)
        _add(tar, "pkg/a.bin", b"AAAA")
        _add(tar, "./pkg/b.txt", b"bee")
        _add(tar, "pkg/unwanted.bin", b"zzz")
        if extra:
            extra(tar)
    return path


def _all_files(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")}


def test_extract_tar_takes_only_the_listed_members(tmp_path):
    archive = _make_tar(tmp_path / "ok.tar.gz")
    dest = tmp_path / "out"
    extract_tar(archive, dest, ["pkg/a.bin", "pkg/b.txt"], max_member_size=1000)
    assert (dest / "pkg/a.bin").read_bytes() == b"AAAA"
    assert (dest / "pkg/b.txt").read_bytes() == b"bee"
    assert _all_files(dest) == {Path("pkg"), Path("pkg/a.bin"), Path("pkg/b.txt")}


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device", "fifo"])
def test_extract_tar_refuses_hostile_members(tmp_path, kind):
    outside = tmp_path / "outside"
    extra = {
        "dotdot": lambda t: _add(t, "../outside/evil", b"pwned"),
        "absolute": lambda t: _add(t, str(outside / "abs_evil"), b"pwned"),
        "symlink": lambda t: _add(t, "pkg/a.bin", type=tarfile.SYMTYPE, linkname=str(outside / "x")),
        "hardlink": lambda t: _add(t, "pkg/link", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
        "device": lambda t: _add(t, "pkg/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
        "fifo": lambda t: _add(t, "pkg/fifo", type=tarfile.FIFOTYPE),
    }[kind]
    archive = _make_tar(tmp_path / "evil.tar.gz", extra)
    before = _all_files(tmp_path)
    with pytest.raises(VitError, match=r"evil\.tar\.gz: refusing archive, member .*(absolute|'\.\.'|link|device)"):
        extract_tar(archive, tmp_path / "out", ["pkg/a.bin", "pkg/b.txt"], max_member_size=1000)
    assert _all_files(tmp_path) == before  # nothing written anywhere, inside dest or out


def test_extract_tar_missing_member_and_corrupt_archive(tmp_path):
    archive = _make_tar(tmp_path / "ok.tar.gz")
    with pytest.raises(VitError, match=r"missing members \['pkg/nope'\]"):
        extract_tar(archive, tmp_path / "out", ["pkg/a.bin", "pkg/nope"], max_member_size=1000)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(archive.read_bytes()[:60])  # cut inside the gzip stream
    with pytest.raises(VitError, match=r"bad\.tar\.gz: cannot read tar archive"):
        extract_tar(bad, tmp_path / "out2", ["pkg/a.bin"], max_member_size=1000)
    assert not (tmp_path / "out").exists() or _all_files(tmp_path / "out") == set()
