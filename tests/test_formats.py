"""Tests for vit/formats.py: IDX, CIFAR-10 binary and safetensors round trips and bad-file errors."""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch

from vit.files import atomic_write
from vit.formats import FormatError, read_cifar_batch, read_idx, read_safetensors, write_safetensors
from helpers import write_cifar_batch, write_idx

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures"


# ---------------------------------------------------------------------------------- atomic_write

def test_atomic_write_replaces_existing_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as f:
        f.write(b"new")
        assert target.read_bytes() == b"old"  # nothing visible under the final name until the end
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_exception_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(tmp_path / "out.bin") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_exception_keeps_old_file_and_text_mode(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_write(target, "w") as f:
        f.write("héllo")
    with pytest.raises(KeyError):
        with atomic_write(target, "w") as f:
            f.write("other")
            raise KeyError("x")
    assert target.read_text(encoding="utf-8") == "héllo"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


# ------------------------------------------------------------------------------------------- IDX

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _sample(dtype, shape=(3, 4, 5)) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
        a.flat[:2] = [info.min, info.max]
        return a
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", IDX_DTYPES)
def test_idx_round_trip(tmp_path, dtype, compress):
    a = _sample(dtype)
    path = tmp_path / "x.idx"
    write_idx(path, a, compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    b[0] = 0  # the result must be an ordinary writable array


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    write_idx(tmp_path / "plain.gz", np.arange(4, dtype=np.uint8))
    write_idx(tmp_path / "packed", np.arange(4, dtype=np.uint8), compress=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), np.arange(4))
    np.testing.assert_array_equal(read_idx(tmp_path / "packed"), np.arange(4))


def test_idx_exact_big_endian_bytes(tmp_path):
    write_idx(tmp_path / "x", np.array([1, 256], dtype=np.int16))
    assert (tmp_path / "x").read_bytes() == bytes.fromhex("00000b01 00000002 0001 0100")
    (tmp_path / "y").write_bytes(bytes.fromhex("00000d01 00000001 3f800000"))
    np.testing.assert_array_equal(read_idx(tmp_path / "y"), np.array([1.0], dtype=np.float32))


def _write(path: Path, data: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


GOOD_IDX = bytes.fromhex("00000802 00000002 00000003") + bytes(range(6))


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("data, match", [
    (b"\x01\x00\x08\x01" + GOOD_IDX[4:], "bad magic"),
    (b"\x00\x00\x0a\x02" + GOOD_IDX[4:], "bad magic"),
    (b"\x00\x00", "bad magic"),
    (b"", "bad magic"),
    (bytes.fromhex("00000800"), "ndim is 0"),
    (GOOD_IDX[:9], "file ends inside them"),
    (GOOD_IDX[:-1], "truncated: header says 6 data bytes"),
    (GOOD_IDX + b"\0", "trailing bytes"),
    (bytes.fromhex("00000d04") + b"\xff" * 16 + b"\0" * 64, "truncated: header says"),
])
def test_idx_bad_files(tmp_path, data, match, compress):
    path = _write(tmp_path / "bad-idx", data, compress)
    with pytest.raises(FormatError, match=match) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_idx_overflowing_dims_say_how_big(tmp_path):
    path = _write(tmp_path / "huge", bytes.fromhex("00000e04") + b"\xff" * 16, False)
    with pytest.raises(FormatError, match=f"header says {8 * (2**32 - 1) ** 4} data bytes"):
        read_idx(path)


def test_idx_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(GOOD_IDX * 50))
    data[20:30] = b"\xff" * 10
    (tmp_path / "c").write_bytes(bytes(data))
    (tmp_path / "cut").write_bytes(gzip.compress(GOOD_IDX)[:-12])
    for name in ["c", "cut"]:
        with pytest.raises(FormatError, match="corrupt gzip|truncated"):
            read_idx(tmp_path / name)


def test_idx_gzip_bomb_is_read_with_a_bound(tmp_path):
    path = _write(tmp_path / "bomb", GOOD_IDX + bytes(50_000_000), True)
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="trailing bytes"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


# ---------------------------------------------------------------------------------- CIFAR binary

def _cifar_records() -> bytes:
    """Record 0: label 3, every R=10, G=20, B=30. Record 1: label 9, plane c pixel (y, x) = c*64 + y*2 + x % 2."""
    first = bytes([3]) + bytes([10]) * 1024 + bytes([20]) * 1024 + bytes([30]) * 1024
    y, x = np.mgrid[0:32, 0:32]
    planes = np.stack([c * 64 + y * 2 + x % 2 for c in range(3)]).astype(np.uint8)
    return first + bytes([9]) + planes.tobytes()


def test_cifar_planes_and_labels(tmp_path):
    (tmp_path / "b.bin").write_bytes(_cifar_records())
    images, labels = read_cifar_batch(tmp_path / "b.bin")
    assert images.dtype == np.uint8 and images.shape == (2, 3, 32, 32) and images.flags.c_contiguous
    assert labels.dtype == np.int64 and labels.tolist() == [3, 9]
    assert images[0, :, 5, 7].tolist() == [10, 20, 30]
    assert (images[0] == np.array([10, 20, 30], dtype=np.uint8)[:, None, None]).all()
    assert images[1, :, 17, 4].tolist() == [34, 98, 162]
    assert images[1, :, 17, 5].tolist() == [35, 99, 163]


def test_cifar_writer_matches_reader(tmp_path):
    (tmp_path / "a.bin").write_bytes(_cifar_records())
    images, labels = read_cifar_batch(tmp_path / "a.bin")
    write_cifar_batch(tmp_path / "b.bin", images, labels)
    assert (tmp_path / "b.bin").read_bytes() == _cifar_records()


@pytest.mark.parametrize("data, match", [
    (b"", "not a positive multiple"),
    (_cifar_records()[:-1], "not a positive multiple"),
    (_cifar_records() + b"\0", "not a positive multiple"),
    (_cifar_records()[:3073] + bytes([10]) + _cifar_records()[3074:], "record 1 has label 10"),
])
def test_cifar_bad_files(tmp_path, data, match):
    (tmp_path / "bad.bin").write_bytes(data)
    with pytest.raises(FormatError, match=match) as e:
        read_cifar_batch(tmp_path / "bad.bin")
    assert "bad.bin" in str(e.value)


# ----------------------------------------------------------------------------------- safetensors

ST_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
             torch.int16, torch.int8, torch.uint8, torch.bool]


def _tensor(dtype: torch.dtype, shape: tuple, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


@pytest.mark.parametrize("dtype", ST_DTYPES)
def test_safetensors_round_trip_every_dtype(tmp_path, dtype):
    tensors = {"m": _tensor(dtype, (2, 3)), "s": _tensor(dtype, ()), "z": _tensor(dtype, (0,)),
               "z2": _tensor(dtype, (4, 0, 2)), "t": _tensor(dtype, (3, 5)).t()}  # t: non-contiguous
    write_safetensors(tmp_path / "w.safetensors", tensors)
    back, meta = read_safetensors(tmp_path / "w.safetensors")
    assert meta == {} and list(back) == sorted(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == dtype and back[name].shape == t.shape
        assert torch.equal(back[name], t), name


def test_safetensors_layout_and_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    tensors = {"b": torch.arange(3, dtype=torch.float32), "a": torch.ones(2, dtype=torch.int8)}
    write_safetensors(path, tensors, {"config": '{"depth": 2}', "ünï": "çødé"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    text = raw[8:8 + n].rstrip(b" ")
    assert n % 8 == 0 and n - len(text) < 8 and text.endswith(b"}")  # padded with < 8 spaces
    header = json.loads(raw[8:8 + n])
    assert list(header) == ["__metadata__", "a", "b"]
    # data ordered by element size, then name (the official writer's order): every tensor aligned
    assert header["b"] == {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}
    assert header["a"] == {"dtype": "I8", "shape": [2], "data_offsets": [12, 14]}
    assert raw[8 + n:] == np.arange(3, dtype="<f4").tobytes() + bytes([1, 1])
    back, meta = read_safetensors(path)
    assert meta == {"config": '{"depth": 2}', "ünï": "çødé"}
    assert torch.equal(back["b"], tensors["b"]) and torch.equal(back["a"], tensors["a"])


def test_safetensors_tensors_are_writable_and_independent(tmp_path):
    write_safetensors(tmp_path / "w", {"a": torch.zeros(4), "b": torch.ones(4)})
    back, _ = read_safetensors(tmp_path / "w")
    back["a"] += 5
    assert back["a"].tolist() == [5.0] * 4 and back["b"].tolist() == [1.0] * 4


def test_safetensors_writer_rejects_bad_input(tmp_path):
    with pytest.raises(FormatError, match="metadata must map strings to strings"):
        write_safetensors(tmp_path / "w", {"a": torch.zeros(1)}, {"k": 1})
    with pytest.raises(FormatError, match="cannot store torch.complex64"):
        write_safetensors(tmp_path / "w", {"a": torch.zeros(1, dtype=torch.complex64)})
    with pytest.raises(FormatError, match="'__metadata__'"):
        write_safetensors(tmp_path / "w", {"__metadata__": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []


def _st_file(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    """A safetensors file from a header (dict, or raw text/bytes written as is) and data bytes."""
    text = header if isinstance(header, (str, bytes)) else json.dumps(header)
    text = text.encode() if isinstance(text, str) else text
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def _e(dtype: str, shape: list, start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


BAD_SAFETENSORS = [  # (header, data, header length override, message)
    (b"", b"", None, "invalid"),  # placeholder replaced in the test below by a 5-byte file
    ({}, b"", 100_000_001, "exceeds the limit"),
    ({"a": _e("F32", [1], 0, 4)}, bytes(4), 1000, "truncated: header length 1000"),
    ('{"a": ', b"", None, "bad safetensors header JSON"),
    (b'{"a": "\xff"}', b"", None, "bad safetensors header JSON"),
    ("[" * 100_000, b"", None, "bad safetensors header JSON"),
    ("[1, 2]", b"", None, "is a JSON list, not an object"),
    ('{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
     '"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}', bytes(2), None, "duplicate key 'a'"),
    ('{"a": {"dtype": "U8", "dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', bytes(1), None,
     "duplicate key 'dtype'"),
    ({"a": _e("F32", [2], 0, 8), "b": _e("F32", [2], 4, 12)}, bytes(12), None, "overlapping"),
    ({"a": _e("F32", [1], 0, 4), "b": _e("F32", [1], 8, 12)}, bytes(12), None, "gap between"),
    ({"a": _e("F32", [2], 0, 8)}, bytes(4), None, "out-of-range"),
    ({"a": _e("F32", [10**12], 0, 4 * 10**12)}, bytes(1000), None, "run past the 1000 data bytes"),
    ({"a": _e("F32", [1], 0, 4), "b": _e("F32", [1], 4, 8)}, bytes(4), None, "out-of-range"),
    ({"a": _e("F32", [1], 4, 8)}, bytes(8), None, "begin at 4, expected 0"),
    ({"a": _e("F32", [1], 8, 4)}, bytes(8), None, "0 <= begin <= end"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, bytes(4), None, "data_offsets must be"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, bytes(4), None, "data_offsets must be"),
    ({"a": _e("F8", [1], 0, 1)}, bytes(1), None, "unknown dtype 'F8'"),
    ({"a": _e(["F32"], [1], 0, 4)}, bytes(4), None, "unknown dtype"),
    ({"a": _e("F32", [3], 0, 8)}, bytes(8), None, "needs more than 8 bytes, data_offsets"),
    ({"a": _e("F32", [1], 0, 8)}, bytes(8), None, "needs 4 bytes, data_offsets"),
    ({"a": _e("F32", [3, 0], 0, 8)}, bytes(8), None, "needs 0 bytes, data_offsets"),
    ({"a": _e("F32", [-1], 0, 0)}, b"", None, "non-negative integers"),
    ({"a": _e("F32", [True], 0, 4)}, bytes(4), None, "non-negative integers"),
    ({"a": _e("F32", [1.0], 0, 4)}, bytes(4), None, "non-negative integers"),
    ({"a": _e("F32", 1, 0, 4)}, bytes(4), None, "non-negative integers"),
    ({"a": _e("F32", [1], 0, 4)}, bytes(8), None, "trailing bytes"),
    ({"__metadata__": {"k": 1}}, b"", None, "__metadata__ must map strings to strings"),
    ({"__metadata__": "k"}, b"", None, "__metadata__ must map strings to strings"),
    ({"__metadata__": []}, b"", None, "__metadata__ must map strings to strings"),
    ({"a": {**_e("F32", [1], 0, 4), "extra": 1}}, bytes(4), None, "exactly dtype, shape, data_offsets"),
    ({"a": {"dtype": "F32", "shape": [1]}}, bytes(4), None, "exactly dtype, shape, data_offsets"),
    ({"a": [1, 2]}, b"", None, "exactly dtype, shape, data_offsets"),
    ({"a": _e("BOOL", [2], 0, 2)}, bytes([1, 2]), None, "bytes other than 0 and 1"),
]


@pytest.mark.parametrize("header, data, length, match", BAD_SAFETENSORS)
def test_safetensors_bad_files(tmp_path, header, data, length, match):
    path = tmp_path / "bad.safetensors"
    if header == b"":
        path.write_bytes(b"\x08\0\0\0\0")
        match = "truncated: 5 bytes"
    else:
        _st_file(path, header, data, length)
    with pytest.raises(FormatError, match=match) as e:
        read_safetensors(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("shape", [[10**6, 10**6], [2**62, 2**62, 2**62], [2] * 10_000])
def test_safetensors_huge_declared_tensor_fails_before_allocating(tmp_path, shape):
    path = _st_file(tmp_path / "huge", {"a": _e("F32", shape, 0, 1000)}, bytes(1000))
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="needs more than 1000 bytes"):
            read_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000


def test_safetensors_accepts_padding_empty_file_and_null_metadata(tmp_path):
    back, meta = read_safetensors(_st_file(tmp_path / "a", '{"__metadata__": null}   '))
    assert back == {} and meta == {}
    back, _ = read_safetensors(_st_file(tmp_path / "b", {"z": _e("F64", [0, 3], 0, 0), "y": _e("U8", [1], 0, 1)},
                                        b"\x07"))
    assert back["z"].shape == (0, 3) and back["y"].tolist() == [7]


def test_safetensors_zero_element_tensor_with_a_dim_past_int64_is_refused(tmp_path):
    """Zero elements need zero bytes whatever the other dims, but torch sizes are int64."""
    path = _st_file(tmp_path / "z.safetensors", {"a": _e("F32", [0, 2**63], 0, 0)})
    with pytest.raises(FormatError, match=rf"{path}: tensor 'a': shape must be a list of non-negative integers that "
                                       r"fit int64 \(at most 2\*\*63 - 1\), got \[0, 9223372036854775808\]"):
        read_safetensors(path)
    back, _ = read_safetensors(_st_file(tmp_path / "ok.safetensors", {"a": _e("F32", [0, 2**63 - 1], 0, 0)}))
    assert back["a"].shape == (0, 2**63 - 1)


@pytest.mark.parametrize("dtype", ["U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "C64"])
def test_official_dtypes_this_project_does_not_read_say_so(tmp_path, dtype):
    path = _st_file(tmp_path / "d.safetensors", {"a": _e(dtype, [1], 0, 8)}, bytes(8))
    with pytest.raises(FormatError, match=rf"{path}: tensor 'a': dtype '{dtype}' is valid safetensors but not supported "
                                       r"by this project \(supported: F64, F32, "):
        read_safetensors(path)


def test_duplicate_keys_the_official_reader_accepts_are_refused_as_unsupported(tmp_path):
    text = ('{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
            '"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}')
    path = _st_file(tmp_path / "dup.safetensors", text, bytes(1))
    with pytest.raises(FormatError, match=r"duplicate key 'a': not supported by this project"):
        read_safetensors(path)


@contextmanager
def _within(seconds: int) -> Iterator[None]:
    """Fail the block with TimeoutError instead of letting it block forever (a read of a fifo would)."""
    def fire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


READERS: dict[str, Callable[[Path], object]] = {"safetensors": read_safetensors, "idx": read_idx,
                                                "cifar": read_cifar_batch}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no fifos on this platform")
@pytest.mark.parametrize("reader", sorted(READERS))
def test_readers_refuse_fifos_devices_and_folders(tmp_path, reader):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)  # nobody ever writes to it: opening it to read would wait forever
    with _within(10), pytest.raises(FormatError, match=rf"{fifo}: not a regular file \(a fifo\)"):
        READERS[reader](fifo)
    with pytest.raises(FormatError, match=rf"{tmp_path}: not a regular file \(a folder\)"):
        READERS[reader](tmp_path)
    if Path("/dev/zero").exists():  # endless zeros: a size check against them would never end
        with _within(10), pytest.raises(FormatError, match=r"/dev/zero: not a regular file \(a device or socket\)"):
            READERS[reader]("/dev/zero")


# ------------------------------------------------------------------------------ real fixtures

def _fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"../shared not found: {FIXTURES} holds the reference safetensors fixtures")
    return FIXTURES


def test_fixtures_timm_dtypes_and_values():
    fx = _fixtures()
    f32, meta = read_safetensors(fx / "vit_small_fixture_timm.safetensors")
    bf16, _ = read_safetensors(fx / "vit_small_fixture_timm_bf16.safetensors")
    f16, _ = read_safetensors(fx / "vit_small_fixture_timm_f16.safetensors")
    assert meta == {"format": "pt"}
    assert len(f32) == 32 and set(bf16) == set(f32) == set(f16)
    assert f32["pos_embed"].shape == (1, 197, 192) and f32["cls_token"].shape == (1, 1, 192)
    assert f32["patch_embed.proj.weight"].shape == (192, 3, 16, 16)
    assert f32["blocks.1.attn.qkv.weight"].shape == (576, 192) and f32["head.weight"].shape == (10, 192)
    assert {t.dtype for t in f32.values()} == {torch.float32}
    assert {t.dtype for t in bf16.values()} == {torch.bfloat16}
    assert {t.dtype for t in f16.values()} == {torch.float16}
    for k, w in f32.items():  # the low-precision files hold exactly the rounded float32 weights
        assert torch.equal(w.to(torch.bfloat16), bf16[k]), k
        assert torch.equal(w.to(torch.float16), f16[k]), k


def test_fixtures_hf_layout():
    fx = _fixtures()
    hf, meta = read_safetensors(fx / "vit_small_fixture_hf" / "model.safetensors")
    assert meta == {"format": "pt"} and len(hf) == 40
    assert hf["vit.encoder.layer.1.attention.attention.query.weight"].shape == (192, 192)
    assert hf["vit.embeddings.position_embeddings"].shape == (1, 197, 192)
    assert hf["classifier.weight"].dtype == torch.float32


@pytest.mark.parametrize("name", ["vit_small_fixture_timm.safetensors",
                                  "vit_small_fixture_timm_bf16.safetensors",
                                  "vit_small_fixture_hf/model.safetensors"])
def test_writer_reproduces_official_bytes(tmp_path, name):
    path = _fixtures() / name
    tensors, meta = read_safetensors(path)
    write_safetensors(tmp_path / "w.safetensors", tensors, meta or None)
    assert (tmp_path / "w.safetensors").read_bytes() == path.read_bytes()
