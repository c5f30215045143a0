"""Seeded, bounded fuzzing of the file readers, and hostile image folders.

Each fuzz case starts from a valid file the test writes (random shapes and dtypes), applies 1-3
seeded mutations (bit flips, byte overwrites, truncation, extension, splices, header fields set to
0 / huge / negative, offsets swapped, dims changed, structural edits of the safetensors JSON) and
reads it back. A case passes when the reader either returns a consistent result or raises VitError
naming the file; any other exception, a case running past a deadline, or a Python/numpy allocation
larger than the file justifies (measured with tracemalloc) is a failure. A failing case prints its
index and mutations, and `_case(fmt, seed, index, folder)` rebuilds it exactly.

Decoded images get the same treatment through ImageFolderDataset and vit.data.open_image (Pillow
allocates in C, so only the deadline applies there, with the pixel limit lowered to keep cases small).
So do checkpoints through vit.weights.load_checkpoint: tiny valid models whose saved config, class
names or tensor shapes are made hostile (wrong types, NaN, huge sizes, nesting past the recursion
limit, zero widths); an accepted one must hold the file's tensors and config and give finite logits,
and peak RSS is the memory bound (torch allocates outside tracemalloc's view).

Counts: FAST_CASES per file format, FAST_IMAGE_CASES images and FAST_CHECKPOINT_CASES checkpoints in
the default run; SLOW_CASES, SLOW_IMAGE_CASES and SLOW_CHECKPOINT_CASES under `-m slow`.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import io
import json
import os
import random
import resource
import signal
import struct
import sys
import time
import tracemalloc
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from torch._utils import ExceptionWrapper

from vit.augment import eval_transform
from vit.data import FolderLoader
from vit.errors import USER_ERRORS
from vit.folders import ImageFolderDataset, MAX_IMAGE_BYTES, find_classes, folder_splits, open_image
from vit.formats import read_cifar_batch, read_idx, read_safetensors
from vit.model import ViTConfig, VisionTransformer
from vit.weights import load_checkpoint
from helpers import limit_resizes, write_idx

FORMATS = ("idx", "cifar", "safetensors")
FAST_CASES = 300  # per format in the default run: 900 cases, a few seconds
SLOW_CASES = 4000  # per format under -m slow: 12,000 cases
FAST_IMAGE_CASES = 150  # mutated PNG/JPEG/GIF/BMP/TIFF/WebP/PPM files, each decoded two ways
SLOW_IMAGE_CASES = 2000
FAST_CHECKPOINT_CASES = 100  # hostile configs, class lists and shapes through load_checkpoint
SLOW_CHECKPOINT_CASES = 3000
CASE_DEADLINE_S = 5.0  # a parser on a few-KB file that needs longer than this is hanging
SLACK = 1 << 20  # bytes of Python/numpy allocation any case may make beyond what the file justifies
GZIP_MAX_RATIO = 1032  # deflate's maximal expansion: what a gzip file of n bytes can justify

Mutation = Callable[[bytes, random.Random], tuple[bytes, str]]


# ------------------------------------------------------------------------------ generic mutations

INTERESTING = [0, 1, 2, 7, 8, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               10**12, 2**63 - 1, 2**63, 2**64 - 1]


def flip_bits(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Flip 1-8 random bits."""
    out = bytearray(data)
    flips = [(rng.randrange(len(out)), rng.randrange(8)) for _ in range(rng.randint(1, 8))] if out else []
    for pos, bit in flips:
        out[pos] ^= 1 << bit
    return bytes(out), f"flip bits {flips}"


def set_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Set 1-4 random bytes to 00, ff, 7f, 80 or a random value."""
    out = bytearray(data)
    writes = [(rng.randrange(len(out)), rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)]))
              for _ in range(rng.randint(1, 4))] if out else []
    for pos, value in writes:
        out[pos] = value
    return bytes(out), f"set bytes {writes}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Cut the file at a random length."""
    n = rng.randrange(len(data)) if data else 0
    return data[:n], f"truncate to {n}"


def extend(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Append zeros, random bytes or a copy of the file's start."""
    k = rng.choice([1, 2, 7, 8, 64, rng.randint(1, 512)])
    tail = rng.choice([bytes(k), rng.randbytes(k), (data * (k // max(len(data), 1) + 1))[:k]])
    return data + tail, f"extend by {k}"


def splice(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Delete or duplicate a random slice of up to 64 bytes."""
    if len(data) < 2:
        return data, "splice (too short)"
    a = rng.randrange(len(data))
    b = rng.randrange(a, min(len(data), a + 64) + 1)
    if rng.random() < 0.5:
        return data[:a] + data[b:], f"delete [{a}:{b}]"
    return data[:b] + data[a:b] + data[b:], f"duplicate [{a}:{b}]"


def interesting_word(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Overwrite a 4- or 8-byte word (mostly aligned, either byte order) with 0, 1, a sign bit, all ones or huge."""
    width, order = rng.choice([(4, ">"), (4, "<"), (8, "<")])
    if len(data) < width:
        return data, "word (too short)"
    pos = rng.randrange(0, len(data) - width + 1, width) if rng.random() < 0.7 else rng.randrange(len(data) - width + 1)
    value = rng.choice(INTERESTING) % (1 << (8 * width))
    word = struct.pack(f"{order}{'I' if width == 4 else 'Q'}", value)
    return data[:pos] + word + data[pos + width:], f"word {value:#x} ({order}{width}) at {pos}"


GENERIC: list[Mutation] = [flip_bits, set_bytes, truncate, extend, splice, interesting_word]


# ------------------------------------------------------------------------------------------- IDX

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64}


def valid_idx(rng: random.Random) -> bytes:
    """A raw IDX file with a random dtype and a random 1-4 dim shape (built in memory: no fsync per case)."""
    code = rng.choice(list(IDX_TYPES))
    shape = [rng.randint(0 if rng.random() < 0.05 else 1, 6) for _ in range(rng.randint(1, 4))]
    values = np.random.default_rng(rng.randrange(2**32)).integers(-128, 128, shape)
    body = values.astype(np.dtype(IDX_TYPES[code]).newbyteorder(">")).tobytes()
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + body


def _idx_header(data: bytes, edit: Callable[[list[int], int], None]) -> bytes:
    """Apply `edit(dims, ndim)` to the header's dims and write them back (same header length)."""
    if len(data) < 4:
        return data
    ndim = data[3]
    dims = list(struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])) if len(data) >= 4 + 4 * ndim else []
    if not dims:
        return data
    edit(dims, ndim)
    return data[:4] + struct.pack(f">{ndim}I", *[d % 2**32 for d in dims]) + data[4 + 4 * ndim:]


def idx_type(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Another type code: a valid one (other element size) or an unknown one."""
    code = rng.choice([*IDX_TYPES, 0x00, 0x0A, 0x0F, 0xFF, rng.randrange(256)])
    return data[:2] + bytes([code]) + data[3:], f"type code {code:#04x}"


def idx_ndim(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Another dim count: 0, small, more than numpy holds, or random."""
    ndim = rng.choice([0, 1, 2, 3, 4, 65, 255, rng.randrange(256)])
    return data[:3] + bytes([ndim]) + data[4:], f"ndim {ndim}"


def idx_dim(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One dim set to 0, 1, 2, a sign bit ("negative"), all ones or 10**6, or moved by +-1."""
    choice = rng.choice([0, 1, 2, 2**31 - 1, 2**31, 2**32 - 1, 10**6, -1, +1])
    where = []

    def edit(dims: list[int], ndim: int) -> None:
        i = rng.randrange(ndim)
        where.append(i)
        dims[i] = dims[i] + choice if choice in (-1, +1) else choice
    return _idx_header(data, edit), f"dim {where} -> {choice:+d}" if choice in (-1, 1) else f"dim {where} = {choice}"


def idx_dims_reorder(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Same number of elements, other shape: the dims in another order."""
    def edit(dims: list[int], ndim: int) -> None:
        rng.shuffle(dims)
    return _idx_header(data, edit), "dims shuffled"


def idx_huge(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Declare >= 4 * 10**9 elements (10**6 per dim, or the largest uint32) in a file of a few hundred bytes."""
    def edit(dims: list[int], ndim: int) -> None:
        dims[:] = [10**6] * ndim if ndim >= 2 else [2**32 - 1]
    return _idx_header(data, edit), "declared huge"


IDX_MUTATIONS: list[Mutation] = GENERIC + [idx_type, idx_ndim, idx_dim, idx_dims_reorder, idx_huge]


def check_idx(path: Path, array: np.ndarray) -> None:
    """read_idx's result is exactly what the (decompressed) file's header and bytes say."""
    data = path.read_bytes()
    data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data  # small: the reader accepted it
    ndim = data[3]
    assert array.dtype == np.dtype(IDX_TYPES[data[2]]) and array.dtype.isnative
    assert array.shape == struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    assert array.astype(array.dtype.newbyteorder(">")).tobytes() == data[4 + 4 * ndim:]


# ---------------------------------------------------------------------------------- CIFAR binary

RECORD = 3073


def valid_cifar(rng: random.Random) -> bytes:
    """1-4 records with random pixels and labels 0..9."""
    n = rng.randint(1, 4)
    records = bytearray(rng.randbytes(n * RECORD))
    records[::RECORD] = bytes(rng.randrange(10) for _ in range(n))
    return bytes(records)


def cifar_label(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One record's label byte set to a valid or an out-of-range value."""
    if len(data) < RECORD:
        return data, "label (too short)"
    i = rng.randrange(len(data) // RECORD)
    label = rng.choice([rng.randrange(10), 10, 11, 127, 128, 255, rng.randrange(256)])
    return data[:i * RECORD] + bytes([label]) + data[i * RECORD + 1:], f"record {i} label {label}"


def cifar_resize(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Grow or shrink the file by about a record (exactly one record keeps it valid)."""
    delta = rng.choice([-RECORD - 1, -RECORD, -RECORD + 1, -3072, -1, 1, 3072, RECORD - 1, RECORD, RECORD + 1])
    if delta < 0:
        return data[:max(len(data) + delta, 0)], f"size {delta:+d}"
    return data + rng.randbytes(delta), f"size {delta:+d}"


CIFAR_MUTATIONS: list[Mutation] = GENERIC + [cifar_label, cifar_resize]


def check_cifar(path: Path, result: tuple[np.ndarray, np.ndarray]) -> None:
    """read_cifar_batch's result is exactly the file's records."""
    images, labels = result
    records = np.frombuffer(path.read_bytes(), dtype=np.uint8).reshape(-1, RECORD)  # (N * 3073,) -> (N, 3073)
    assert images.dtype == np.uint8 and images.flags.c_contiguous and labels.dtype == np.int64
    assert np.array_equal(images.reshape(len(records), -1), records[:, 1:])  # (N, 3, 32, 32) -> (N, 3072)
    assert np.array_equal(labels, records[:, 0]) and labels.max() < 10


# ----------------------------------------------------------------------------------- safetensors

ST_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
             torch.int8, torch.uint8, torch.bool]
ST_NAMES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"]


def valid_safetensors(rng: random.Random) -> bytes:
    """A file with 1-4 tensors of random dtypes and 0-3 dim shapes (some empty), maybe metadata; laid out
    as write_safetensors does (built in memory: no fsync per case)."""
    header: dict[str, object] = {}
    if rng.random() < 0.5:
        header["__metadata__"] = {"format": "pt", "note": "ü" * rng.randint(0, 3)}
    body = b""
    for i in range(rng.randint(1, 4)):
        name = rng.choice(ST_NAMES)
        shape = [rng.randint(0 if rng.random() < 0.1 else 1, 5) for _ in range(rng.randint(0, 3))]
        nbytes = int(np.prod(shape, dtype=np.int64)) * ST_DTYPES[ST_NAMES.index(name)].itemsize
        raw = bytes(b % 2 for b in rng.randbytes(nbytes)) if name == "BOOL" else rng.randbytes(nbytes)
        header[f"t{i}.weight"] = {"dtype": name, "shape": shape, "data_offsets": [len(body), len(body) + nbytes]}
        body += raw
    return _st_join(json.dumps(header, separators=(",", ":"), ensure_ascii=False), body)


def _st_split(data: bytes) -> tuple[dict, bytes] | None:
    """(header dict, data bytes), or None when an earlier mutation left no header with well-formed entries."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    entries = [v for k, v in header.items() if k != "__metadata__"]
    editable = entries and all(isinstance(e, dict) and isinstance(e.get("shape"), list)
                               and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2
                               and isinstance(e["data_offsets"][0], int) and "dtype" in e for e in entries)
    return (header, data[8 + n:]) if editable else None


def _st_join(header_text: str, body: bytes, pad: bool = True) -> bytes:
    """A safetensors file from header JSON text (space-padded to a multiple of 8 if `pad`) and data bytes."""
    raw = header_text.encode("utf-8")
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def st_length(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """The u64 header length set to 0, off by one or eight, the file size, over the limit, or huge."""
    if len(data) < 8:
        return data, "header length (too short)"
    (n,) = struct.unpack("<Q", data[:8])
    value = rng.choice([0, 1, n - 1, n + 1, n + 8, len(data) - 8, len(data), 100_000_001, 2**63, 2**64 - 1,
                        rng.randrange(2**64)]) % 2**64
    return struct.pack("<Q", value) + data[8:], f"header length {value}"


BAD_VALUES = [0, -1, 1, 10**12, 2**64, 1.5, "3", True, None, [], {}]


def st_structure(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One structural edit of the JSON header, re-serialised with a matching length (so it reaches the validator)."""
    split = _st_split(data)
    if split is None:
        return data, "structure (header no longer parses)"
    header, body = split
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    kind = rng.choice(["dtype", "shape_value", "shape_dims", "offsets_swap", "offsets_between", "offsets_shift",
                       "offsets_value", "huge", "field", "metadata", "top", "duplicate", "body", "unpadded"])
    pad = True
    if kind == "dtype":
        entry["dtype"] = rng.choice(ST_NAMES + ["F8", "", "f32", 5, None, ["F32"]])
        what = f"{name} dtype {entry['dtype']!r}"
    elif kind == "shape_value":
        value = rng.choice(BAD_VALUES)
        if entry["shape"]:
            entry["shape"][rng.randrange(len(entry["shape"]))] = value
        else:
            entry["shape"] = [value]
        what = f"{name} shape {entry['shape']!r}"
    elif kind == "shape_dims":
        entry["shape"] = rng.choice([entry["shape"] + [1], entry["shape"] + [2], entry["shape"][:-1],
                                     entry["shape"][::-1], [1] * rng.choice([65, 1000]) + entry["shape"], 3, "x"])
        what = f"{name} shape dims changed"
    elif kind == "offsets_swap":
        entry["data_offsets"] = entry["data_offsets"][::-1]
        what = f"{name} offsets reversed"
    elif kind == "offsets_between":
        other = header[rng.choice(names)]
        entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
        what = f"{name} offsets swapped with another tensor"
    elif kind == "offsets_shift":
        i, d = rng.randrange(2), rng.choice([-8, -1, 1, 8])
        entry["data_offsets"][i] += d
        what = f"{name} offset[{i}] {d:+d}"
    elif kind == "offsets_value":
        entry["data_offsets"][rng.randrange(2)] = rng.choice(BAD_VALUES + [2**63])
        what = f"{name} offsets {entry['data_offsets']!r}"
    elif kind == "huge":
        start = entry["data_offsets"][0]
        entry["shape"], entry["dtype"] = rng.choice([[10**6, 10**6], [10**12], [2**62, 2**62]]), "F32"
        entry["data_offsets"] = rng.choice([[start, start + 4 * 10**12], entry["data_offsets"]])
        what = f"{name} declares {entry['shape']} F32 in {len(data)} bytes"
    elif kind == "field":
        field = rng.choice(["dtype", "shape", "data_offsets"])
        if rng.random() < 0.5:
            del entry[field]
        else:
            entry["extra"] = 1
        what = f"{name} field {field} removed or extra added"
    elif kind == "metadata":
        header["__metadata__"] = rng.choice([{"k": 1}, "k", [], {"k": None}, None, {"k": "v"}])
        what = f"metadata {header['__metadata__']!r}"
    elif kind == "top":
        header = rng.choice([[header], "x", 3, None])
        what = f"top level {type(header).__name__}"
    elif kind == "duplicate":
        text = json.dumps(header)
        duplicated = "{" + json.dumps(name) + ": " + json.dumps(entry) + ", " + text[1:]
        return _st_join(duplicated, body), f"duplicate key {name}"
    elif kind == "body":
        cut = rng.choice([-8, -1, 1, 8])
        body = body[:cut] if cut < 0 else body + bytes(cut)
        what = f"data section {cut:+d} bytes"
    else:
        pad = False
        what = "header not padded"
    return _st_join(json.dumps(header), body, pad), what


def st_json_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A byte-level mutation confined to the JSON header, with the length field kept."""
    if len(data) < 8:
        return data, "header bytes (too short)"
    (n,) = struct.unpack("<Q", data[:8])
    head, what = rng.choice([flip_bits, set_bytes])(data[8:8 + n], rng)
    return data[:8] + head + data[8 + n:], f"header {what}"


def st_data_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A byte-level mutation confined to the data section (often still a valid file, e.g. a NaN or a bad BOOL)."""
    split = _st_split(data)
    if split is None or not split[1]:
        return data, "data bytes (no data section)"
    body, what = rng.choice([flip_bits, set_bytes])(split[1], rng)
    return data[:len(data) - len(body)] + body, f"data {what}"


def st_retype(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Reinterpret a tensor as another dtype of the same size, or reorder its dims: a valid file again."""
    split = _st_split(data)
    if split is None:
        return data, "retype (header no longer parses)"
    header, body = split
    name = rng.choice([k for k in header if k != "__metadata__"])
    entry = header[name]
    same_size = {1: ["U8", "I8", "BOOL"], 2: ["F16", "BF16", "I16"], 4: ["F32", "I32"], 8: ["F64", "I64"]}
    if entry["dtype"] in ST_NAMES and rng.random() < 0.5:
        size = ST_DTYPES[ST_NAMES.index(entry["dtype"])].itemsize
        entry["dtype"] = rng.choice(same_size[size])
    else:
        rng.shuffle(entry["shape"])
    return _st_join(json.dumps(header), body), f"{name} as {entry['dtype']} {entry['shape']}"


ST_MUTATIONS: list[Mutation] = GENERIC + [st_length, st_structure, st_structure, st_structure, st_json_bytes,
                                          st_data_bytes, st_retype]


def check_safetensors(path: Path, result: tuple[dict[str, torch.Tensor], dict[str, str]]) -> None:
    """read_safetensors's result is exactly what the file's header and bytes say."""
    tensors, metadata = result
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])  # valid JSON: the reader accepted it
    assert metadata == (header.pop("__metadata__", None) or {}) and tensors.keys() == header.keys()
    for name, t in tensors.items():
        entry = header[name]
        start, end = entry["data_offsets"]
        assert t.dtype == ST_DTYPES[ST_NAMES.index(entry["dtype"])] and list(t.shape) == entry["shape"], name
        assert t.reshape(-1).view(torch.uint8).numpy().tobytes() == data[8 + n + start:8 + n + end], name


# ------------------------------------------------------------------------------------------ runner

SPECS = {  # format -> (valid file maker, mutations, reader, check of an accepted file's result, file name)
    "idx": (valid_idx, IDX_MUTATIONS, read_idx, check_idx, "case-idx3-ubyte"),
    "cifar": (valid_cifar, CIFAR_MUTATIONS, read_cifar_batch, check_cifar, "data_batch_1.bin"),
    "safetensors": (valid_safetensors, ST_MUTATIONS, read_safetensors, check_safetensors, "model.safetensors"),
}


class CaseTimeout(BaseException):
    """Raised by the alarm inside a case that runs past CASE_DEADLINE_S (a BaseException so no parser catches it)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block with CaseTimeout after `seconds` (POSIX main thread; elsewhere a no-op)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise CaseTimeout(f"case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _case(fmt: str, seed: int, index: int, folder: Path) -> tuple[Path, str, int]:
    """Write case `index` of `fmt` to `folder`; return (path, description, bytes the file justifies allocating)."""
    make_valid, mutations, _, _, name = SPECS[fmt]
    rng = random.Random(f"{fmt}-{seed}-{index}")
    path = folder / name
    data = make_valid(rng)
    steps = []
    if fmt == "idx":
        mode = rng.choice(["raw", "gzip after mutating", "mutate the gzip"])
        steps.append(mode)
        if mode == "mutate the gzip":
            data = gzip.compress(data, mtime=0)
    for _ in range(rng.randint(1, 3)):
        data, what = rng.choice(mutations)(data, rng)
        steps.append(what)
    if fmt == "idx" and steps[0] == "gzip after mutating":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    compressed = data[:2] == b"\x1f\x8b"
    justified = len(data) * (GZIP_MAX_RATIO if compressed else 1)
    return path, f"{fmt} case {index} (seed {seed}): {'; '.join(steps)}", justified


def attempt(read: Callable[[Path], object], path: Path, what: str, failures: list[str]) -> tuple[str, object]:
    """One fuzz case: ('read', result), ('refused', None) for a VitError naming the file, or
    ('failed', None) with the reason appended to `failures` (any other exception, or a hang)."""
    try:
        with deadline(CASE_DEADLINE_S):
            return "read", read(path)
    except USER_ERRORS as e:
        if str(path) in str(e):
            return "refused", None
        failures.append(f"{what}: VitError does not name the file: {e}")
    except CaseTimeout as e:
        failures.append(f"{what}: {e}")
    except Exception as e:  # the point of the test: nothing but VitError may escape
        failures.append(f"{what}: {type(e).__name__}: {str(e)[:300]}")
    return "failed", None


def run_fuzz(fmt: str, cases: int, seed: int, folder: Path) -> tuple[int, int, list[str]]:
    """Run `cases` cases; return (accepted, refused, failures)."""
    _, _, read, check, _ = SPECS[fmt]
    accepted = refused = 0
    failures = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        for index in range(cases):
            path, what, justified = _case(fmt, seed, index, folder)
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            outcome, result = attempt(read, path, what, failures)
            refused += outcome == "refused"
            peak = tracemalloc.get_traced_memory()[1] - base
            if peak > 2 * justified + SLACK:
                failures.append(f"{what}: allocated {peak} bytes for a file that justifies {justified}")
            if outcome == "read":
                try:
                    check(path, result)
                except Exception as e:  # AssertionError, or the oracle tripping over what the reader let through
                    failures.append(f"{what}: accepted, but the result does not match the file: "
                                    f"{type(e).__name__}: {str(e)[:300]}")
                accepted += 1
    finally:
        tracemalloc.stop()
    # a backstop for allocations tracemalloc does not see (torch's): peak RSS may not jump by hundreds of MB
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    if grown_kib > 256 * 1024:
        failures.append(f"peak RSS grew by {grown_kib} KiB during the {fmt} cases")
    return accepted, refused, failures


def _report(fmt: str, cases: int, accepted: int, refused: int, failures: list[str]) -> None:
    print(f"fuzz {fmt}: {cases} cases, {accepted} read, {refused} refused with VitError, {len(failures)} failures")
    assert not failures, "\n".join(failures[:20])
    assert accepted + refused == cases
    assert refused > cases // 10 and accepted > 0  # the mutations reach both outcomes, so both paths are exercised


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_fast(fmt, tmp_path):
    accepted, refused, failures = run_fuzz(fmt, FAST_CASES, seed=0, folder=tmp_path)
    _report(fmt, FAST_CASES, accepted, refused, failures)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_slow(fmt, tmp_path):
    accepted, refused, failures = run_fuzz(fmt, SLOW_CASES, seed=1, folder=tmp_path)
    _report(fmt, SLOW_CASES, accepted, refused, failures)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unmutated_files_read_back_exactly(fmt, tmp_path):
    make_valid, _, read, check, name = SPECS[fmt]
    rng = random.Random(fmt)
    path = tmp_path / name
    for _ in range(20):
        data = make_valid(rng)
        path.write_bytes(data)
        check(path, read(path))
        if fmt == "idx":  # the in-memory encoder writes what the project's writer writes
            write_idx(tmp_path / "again", read_idx(path))
            assert (tmp_path / "again").read_bytes() == data


@pytest.mark.parametrize("fmt", FORMATS)
def test_cases_are_reproducible_from_their_seed(fmt, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for index in range(5):
        path_a, what_a, _ = _case(fmt, 7, index, tmp_path / "a")
        path_b, what_b, _ = _case(fmt, 7, index, tmp_path / "b")
        assert what_a == what_b and path_a.read_bytes() == path_b.read_bytes()


def test_idx_with_more_dims_than_numpy_holds(tmp_path):
    path = tmp_path / "deep-idx"
    path.write_bytes(bytes([0, 0, 8, 65]) + struct.pack(">65I", *[1] * 65) + b"\x07")
    with pytest.raises(USER_ERRORS, match=rf"{path}: 65 dims"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 8, 32]) + struct.pack(">32I", *[1] * 32) + b"\x07")
    assert read_idx(path).shape == (1,) * 32


@pytest.mark.parametrize("fmt", ["idx", "idx-gzip", "safetensors"])
def test_declared_10_to_the_12_elements_in_1_kb_fail_before_allocating(fmt, tmp_path):
    path = tmp_path / "huge"
    if fmt == "safetensors":
        header = json.dumps({"a": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}})
        path.write_bytes(_st_join(header, bytes(1024)))
    else:
        data = bytes([0, 0, 8, 2]) + struct.pack(">2I", 10**6, 10**6) + bytes(1024)
        path.write_bytes(gzip.compress(data) if fmt == "idx-gzip" else data)
    tracemalloc.start()
    try:
        with pytest.raises(USER_ERRORS, match=rf"{path}: .*(truncated|run past)"):
            (read_safetensors if fmt == "safetensors" else read_idx)(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < SLACK


# ------------------------------------------------------------------------------- mutated images

IMAGE_FORMATS = [("PNG", "RGB"), ("PNG", "I;16"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"),
                 ("WEBP", "RGB"), ("PPM", "RGB")]


def _folder_decode(path: Path) -> object:
    return ImageFolderDataset([(path, 0)], Tiny())[0]


def run_image_fuzz(cases: int, seed: int, folder: Path) -> tuple[int, int, list[str]]:
    """Decode `cases` mutated images with both image readers; return (accepted, refused, failures)."""
    accepted = refused = 0
    failures = []
    for index in range(cases):
        rng = random.Random(f"image-{seed}-{index}")
        fmt, mode = rng.choice(IMAGE_FORMATS)
        buffer = io.BytesIO()
        Image.new(mode, (rng.randint(1, 24), rng.randint(1, 24)), rng.randrange(256)).save(buffer, fmt)
        data, steps = buffer.getvalue(), [f"{fmt} {mode}"]
        for _ in range(rng.randint(1, 3)):
            data, what = rng.choice(GENERIC)(data, rng)
            steps.append(what)
        path = folder / f"case.{fmt.lower()}"
        path.write_bytes(data)
        for reader in (_folder_decode, open_image):
            what = f"image case {index} (seed {seed}) via {reader.__name__}: {'; '.join(steps)}"
            outcome, _ = attempt(reader, path, what, failures)
            accepted += outcome == "read"
            refused += outcome == "refused"
    return accepted, refused, failures


def _image_fuzz(cases: int, seed: int, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1 << 20)  # a flipped size bit costs at most a few MB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt metadata and big images: expected here
        accepted, refused, failures = run_image_fuzz(cases, seed, folder)
    _report("image", 2 * cases, accepted, refused, failures)


def test_fuzz_images_fast(tmp_path, monkeypatch):
    _image_fuzz(FAST_IMAGE_CASES, 0, tmp_path, monkeypatch)


@pytest.mark.slow
def test_fuzz_images_slow(tmp_path, monkeypatch):
    _image_fuzz(SLOW_IMAGE_CASES, 1, tmp_path, monkeypatch)


def test_predict_names_an_image_pillow_fails_on_with_a_value_error(tmp_path):
    path = tmp_path / "bad.ppm"
    path.write_bytes(b"P6\n20!16\n255\n" + bytes(100))  # Pillow: ValueError, not OSError
    with pytest.raises(USER_ERRORS, match=rf"{path}: cannot read the image"):
        open_image(str(path))


# -------------------------------------------------------------------------- hostile checkpoints

CKPT_BASES = [  # tiny architectures the valid checkpoints start from: every patch and position embedding
    dict(img_size=8, patch_size=4, in_chans=3, num_classes=3, embed_dim=8, depth=1, num_heads=2, mlp_ratio=2.0,
         patch_embed="manual", pos_embed="sin"),
    dict(img_size=8, patch_size=4, in_chans=1, num_classes=2, embed_dim=8, depth=2, num_heads=1, mlp_ratio=1.5,
         patch_embed="conv", pos_embed="learned", qkv_bias=False),
    dict(img_size=8, patch_size=4, in_chans=3, num_classes=0, embed_dim=16, depth=1, num_heads=4, mlp_ratio=1.0,
         patch_embed="stem", pos_embed="none", global_pool="avg", norm_eps=1e-5),
]
DEEP = "[" * 100_000 + "]" * 100_000  # JSON nested deeper than Python's recursion limit
HOSTILE_VALUES = [0, -1, 1, 2, 3, 4, 7, 8, 16, 1.5, 4.0, 0.5, 0.999, 10**6, 10**30, 2**63, float("nan"), float("inf"),
                  -float("inf"), 1e-300, 1e300, -1e-9, True, False, None, "x", "", "4", "sin", "conv", "manual", "stem",
                  "none", "avg", "token", "learned", [], {}, [8], {"a": 1}, [[[[1]]]]]
HUGE_IMAGES = [4095, 4096, 4100, 8192, 20000, 10**6, 10**9]
BENIGN = [("drop_rate", 0.1), ("attn_drop_rate", 0.2), ("drop_path_rate", 0.3), ("global_pool", "avg"),
          ("global_pool", "token"), ("norm_eps", 1e-12), ("norm_eps", 1), ("mlp_ratio", 2), ("num_heads", 1)]
LEGACY_FIELDS = ("fused_attn", "patch_dropout")  # in the configs of checkpoints written before they moved


def _st_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file of `tensors` and `metadata`, built in memory (no fsync per case)."""
    header: dict[str, object] = {"__metadata__": metadata}
    body = b""
    for name, t in tensors.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()  # shape -> (numel,) -> bytes
        header[name] = {"dtype": ST_NAMES[ST_DTYPES.index(t.dtype)], "shape": list(t.shape),
                        "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    return _st_join(json.dumps(header), body)


@functools.cache
def _ckpt_template(base_index: int) -> dict[str, torch.Tensor]:
    """The state dict of a tiny model of architecture CKPT_BASES[base_index], built once."""
    return VisionTransformer(ViTConfig(**CKPT_BASES[base_index])).state_dict()


def _ckpt_state(base_index: int, seed: int) -> dict[str, torch.Tensor]:
    """A state dict of that architecture with random floats (far from init); integer buffers as built."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in _ckpt_template(base_index).items()}


def _reshaped(t: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, str]:
    """`t` with one dim set to 0, 1, moved by one or doubled, or a dim added or removed (zeros of that shape)."""
    shape = list(t.shape)
    kind = rng.choice(["zero", "one", "minus", "plus", "double", "add", "drop"])
    if kind == "add" or not shape:
        shape.insert(rng.randrange(len(shape) + 1), rng.choice([0, 1, 2]))
    elif kind == "drop":
        shape.pop(rng.randrange(len(shape)))
    else:
        i = rng.randrange(len(shape))
        new = {"zero": 0, "one": 1, "minus": max(shape[i] - 1, 0), "plus": shape[i] + 1, "double": 2 * shape[i]}
        shape[i] = new[kind]
    return torch.zeros(shape, dtype=t.dtype), f"shape {list(t.shape)} -> {shape}"


def _checkpoint_case(seed: int, index: int, folder: Path) -> tuple[Path, str, dict | None, dict]:
    """Write hostile checkpoint `index`; return (path, description, the saved config or None, the file's tensors)."""
    rng = random.Random(f"checkpoint-{seed}-{index}")
    base_index = rng.randrange(len(CKPT_BASES))
    base = CKPT_BASES[base_index]
    state = _ckpt_state(base_index, rng.randrange(2**16))
    config: dict | None = asdict(ViTConfig(**base))
    config_text, classes, steps = None, None, [f"{base['patch_embed']}/{base['pos_embed']}"]
    if base["num_classes"] and rng.random() < 0.5:
        classes = json.dumps([f"c{i}" for i in range(base["num_classes"])])
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["value", "value", "value", "value", "benign", "benign", "legacy", "drop", "huge", "text",
                           "classes", "shape", "shape", "timm"])
        if kind == "timm":  # no config: the architecture is inferred from the shapes
            config = None
            steps.append("timm layout (no config)")
        elif kind == "shape":
            name = rng.choice(sorted(k for k in state if k.startswith(("patch_embed", "pos_embed", "head", "cls",
                                                                        "blocks.0.mlp.fc1", "blocks.0.attn.qkv"))))
            state[name], what = _reshaped(state[name], rng)
            steps.append(f"{name} {what}")
        elif kind == "text":
            config_text = rng.choice([DEEP, "{" * 50_000, "{oops", "null", "3", '"x"', "[]", '{"depth": ' + DEEP + "}",
                                      json.dumps([config]), "NaN"])
            steps.append(f"config text {config_text[:20]!r}")
        elif kind == "classes":
            classes = rng.choice([DEEP, "[", '"abc"', "[1, 2, 3]", json.dumps(["a"] * 7), '[["a"], ["b"], ["c"]]',
                                  json.dumps({"0": "a"}), "NaN", json.dumps(["a", "b", "c"])])
            steps.append(f"classes {classes[:20]!r}")
        elif config is None:
            steps.append(f"{kind} (no config to edit)")
        elif kind == "value":
            field = rng.choice(sorted(config) + ["colour"])
            config[field] = rng.choice(HOSTILE_VALUES)
            steps.append(f"{field} = {config[field]!r}")
        elif kind == "benign":  # a value of the right type that may fit the tensors: reaches the accepting path
            field, value = rng.choice(BENIGN)
            config[field] = value
            steps.append(f"{field} = {value!r}")
        elif kind == "legacy":
            field = rng.choice(LEGACY_FIELDS)
            config[field] = rng.choice([True, False, 0.0, 0.5, "x", None])
            steps.append(f"legacy {field} = {config[field]!r}")
        elif kind == "drop":
            field = rng.choice(sorted(config))
            del config[field]
            steps.append(f"drop {field}")
        else:
            config.update(img_size=rng.choice(HUGE_IMAGES), pos_embed=rng.choice(["sin", "none"]))
            steps.append(f"img_size {config['img_size']} pos_embed {config['pos_embed']}")
    metadata = {"format": "pt"}
    if config_text is not None or config is not None:
        metadata["config"] = config_text if config_text is not None else json.dumps(config)
    if classes is not None:
        metadata["classes"] = classes
    path = folder / "hostile.safetensors"
    path.write_bytes(_st_bytes(state, metadata))
    saved = json.loads(metadata["config"]) if config_text is None and config is not None else None
    return path, f"checkpoint case {index} (seed {seed}): {'; '.join(steps)}", saved, state


def check_checkpoint(result: tuple, saved: dict | None, state: dict[str, torch.Tensor]) -> None:
    """An accepted checkpoint gives exactly the file's tensors, its saved config (legacy keys dropped), finite
    logits on a small input, and the runtime defaults, never a legacy value."""
    model, _ = result
    assert model.state_dict().keys() == state.keys()
    for k, t in state.items():
        got = model.state_dict()[k]
        assert torch.equal(got, t.to(got.dtype).reshape(got.shape)), k  # reshape: a timm conv weight read as conv
    if saved is not None:
        fields = {k: v for k, v in saved.items() if k not in LEGACY_FIELDS}
        assert {k: getattr(model.cfg, k) for k in fields} == fields
    assert model.patch_dropout == 0.0 and all(block.attn.fused for block in model.blocks)
    cfg = model.cfg
    if cfg.num_classes and cfg.num_patches <= 1024:  # a few ms; bounded so a legal big grid stays cheap
        with torch.no_grad():
            assert torch.isfinite(model.eval()(torch.rand(1, cfg.in_chans, cfg.img_size, cfg.img_size))).all()


def run_checkpoint_fuzz(cases: int, seed: int, folder: Path) -> tuple[int, int, list[str]]:
    """Load `cases` hostile checkpoints with load_checkpoint; return (accepted, refused, failures)."""
    accepted = refused = 0
    failures: list[str] = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for index in range(cases):
        path, what, saved, state = _checkpoint_case(seed, index, folder)
        outcome, result = attempt(load_checkpoint, path, what, failures)
        refused += outcome == "refused"
        if outcome == "read":
            try:
                check_checkpoint(result, saved, state)
            except Exception as e:  # AssertionError, or the check tripping over what the loader let through
                failures.append(f"{what}: accepted, but the model does not match the file: {type(e).__name__}: "
                                f"{str(e)[:300]}")
            accepted += 1
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    if grown_kib > 256 * 1024:  # torch's allocations are invisible to tracemalloc: peak RSS is the bound
        failures.append(f"peak RSS grew by {grown_kib} KiB during the checkpoint cases")
    return accepted, refused, failures


def test_fuzz_checkpoints_fast(tmp_path):
    accepted, refused, failures = run_checkpoint_fuzz(FAST_CHECKPOINT_CASES, 0, tmp_path)
    _report("checkpoint", FAST_CHECKPOINT_CASES, accepted, refused, failures)


@pytest.mark.slow
def test_fuzz_checkpoints_slow(tmp_path):
    accepted, refused, failures = run_checkpoint_fuzz(SLOW_CHECKPOINT_CASES, 1, tmp_path)
    _report("checkpoint", SLOW_CHECKPOINT_CASES, accepted, refused, failures)


# ------------------------------------------------------------------------------ hostile folders

class Tiny:
    """Test transform: resize to 8x8, float tensor (3, 8, 8)."""

    size = 8

    def __call__(self, img: Image.Image, generator: torch.Generator) -> torch.Tensor:
        return torch.from_numpy(np.array(img.resize((8, 8)))).permute(2, 0, 1).float()  # (8, 8, 3) -> (3, 8, 8)


def _png(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    """A small uniform RGB PNG at `path` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def _png_bomb(path: Path, side: int) -> Path:
    """A valid 1-bit PNG of side x side pixels whose all-zero pixel data deflates to a few KB."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _one_sample(tmp_path: Path, name: str, content: Callable[[Path], object]) -> tuple[ImageFolderDataset, Path, int]:
    """A folder with a good image and one hostile file `name` in class 'a'; the dataset and the hostile index."""
    good = _png(tmp_path / "root" / "a" / "good.png")
    bad = tmp_path / "root" / "a" / name
    content(bad)
    train, _, _ = folder_splits(tmp_path / "root", val_fraction=0.0)
    paths = [p for p, _ in train]
    assert good in paths and bad in paths  # listing never decodes
    return ImageFolderDataset(train, Tiny()), bad, paths.index(bad)


def _truncated(source: Callable[[Path], object], keep: float) -> Callable[[Path], None]:
    """A writer that runs `source`, then keeps only the first `keep` fraction of the file."""
    def write(path: Path) -> None:
        source(path)
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)])
    return write


HOSTILE_FILES = {  # zero-byte, truncated JPEG and text-named-.jpg are in test_data.py
    "empty.png": lambda p: p.write_bytes(b""),
    "half.png": _truncated(lambda p: _png(p, (64, 64)), 0.5),
    "header_only.png": _truncated(lambda p: _png(p, (64, 64)), 0.1),
    "header_only.jpg": lambda p: p.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
    "garbage.webp": lambda p: p.write_bytes(b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(32)),
    "bomb.png": lambda p: _png_bomb(p, 15_000),  # 225 M pixels > 2 x MAX_IMAGE_PIXELS
    "sparse_1gib.jpg": lambda p: _sparse_jpeg(p, 1 << 30),
}


def _sparse_jpeg(path: Path, size: int) -> Path:
    """A JPEG start (SOI, APP0) followed by zeros up to `size` bytes, sparse: no disk used for the zeros.
    Pillow's JPEG header parser skips junk byte by byte in Python: ~8 MB/s, so minutes for 1 GiB."""
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        f.truncate(size)
    return path


def test_a_gigabyte_file_named_like_an_image_is_refused_without_decoding(tmp_path):
    path = _sparse_jpeg(tmp_path / "photo.jpg", 1 << 30)
    start = time.monotonic()
    with deadline(CASE_DEADLINE_S), pytest.raises(USER_ERRORS) as e:
        open_image(path)
    assert time.monotonic() - start < 1.0
    assert str(e.value) == (f"{path}: cannot read the image: {1 << 30} bytes, more than the {MAX_IMAGE_BYTES} an "
                            "image file may have; remove or replace the file")
    small = _sparse_jpeg(tmp_path / "small.jpg", 1 << 20)  # under the bound: Pillow's own refusal, in well under 1 s
    with deadline(CASE_DEADLINE_S), pytest.raises(USER_ERRORS, match=rf"{small}: cannot read the image \("):
        open_image(small)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no fifos on this platform")
def test_a_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)  # vit.predict takes image paths as given: nobody ever writes to this one
    with deadline(CASE_DEADLINE_S), pytest.raises(USER_ERRORS, match=rf"{fifo}: not a regular file \(a fifo\)"):
        open_image(fifo)


def test_an_extreme_strip_in_val_is_evaluated_within_the_crops_memory(tmp_path, monkeypatch):
    """A 10000 x 1 PNG of 100-odd bytes: resized whole for a 224 crop it would be 2,480,000 x 248 (2.5 GB)."""
    _png(tmp_path / "root" / "train" / "a" / "good.png")
    _png(tmp_path / "root" / "val" / "a" / "strip.png", (10_000, 1))
    _, val, _ = folder_splits(tmp_path / "root")
    assert (tmp_path / "root" / "val" / "a" / "strip.png").stat().st_size < 1000
    limit_resizes(monkeypatch, 224 * 224)
    x, label = ImageFolderDataset(val, eval_transform(224, (0.5,) * 3, (0.5,) * 3))[0]
    assert x.shape == (3, 224, 224) and label == 0


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_hostile_image_fails_at_decode_naming_the_file(tmp_path, name):
    ds, bad, index = _one_sample(tmp_path, name, HOSTILE_FILES[name])
    with pytest.raises(USER_ERRORS, match=rf"{bad}: cannot read the image") as e:
        ds[index]
    if name == "bomb.png":
        assert "DecompressionBomb" in str(e.value)
    assert ds[1 - index][0].shape == (3, 8, 8)


def test_decompression_bomb_limit_stays_in_force(tmp_path):
    """The limit is Pillow's default and nothing in vit changes it (a grep of the sources backs this up)."""
    for module in ("augment", "bench", "data", "download", "engine", "formats", "model", "plot", "predict", "weights"):
        importlib.import_module(f"vit.{module}")  # importing any of them must leave the limit alone
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)
    root = Path(__file__).resolve().parents[1]
    for source in [*sorted((root / "vit").glob("*.py")), root / "train.py", root / "finetune.py"]:
        text = source.read_text()
        assert "MAX_IMAGE_PIXELS" not in text and "LOAD_TRUNCATED_IMAGES" not in text, source
    bomb = _png_bomb(tmp_path / "bomb.png", 15_000)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)


def test_worker_errors_reach_the_user_without_a_worker_traceback(tmp_path, monkeypatch):
    """A worker's VitError as torch re-raises it (ExceptionWrapper), minus the ~5 s a real worker
    takes to shut down after an error (the slow test below uses a real one)."""
    ds, bad, index = _one_sample(tmp_path, "half.png", HOSTILE_FILES["half.png"])
    loader = FolderLoader(ds, batch_size=2, shuffle=False, drop_last=False)

    def worker_batches() -> Iterator[None]:
        try:
            ds[index]
        except USER_ERRORS:
            ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0").reraise()
        yield

    monkeypatch.setattr(loader, "loader", worker_batches())
    with pytest.raises(USER_ERRORS) as e:
        list(loader)
    assert str(e.value).startswith(f"{bad}: cannot read the image") and "Traceback" not in str(e.value), e.value


@pytest.mark.slow
def test_real_worker_error_reaches_the_user_without_a_traceback(tmp_path):
    ds, bad, _ = _one_sample(tmp_path, "half.png", HOSTILE_FILES["half.png"])
    loader = FolderLoader(ds, batch_size=2, shuffle=False, drop_last=False, workers=1)
    with pytest.raises(USER_ERRORS) as e:
        list(loader)
    assert str(e.value).startswith(f"{bad}: cannot read the image") and "Traceback" not in str(e.value), e.value


def test_symlink_loops_are_named_at_scan_time(tmp_path):
    root = tmp_path / "root"
    _png(root / "a" / "good.png")
    os.symlink("..", root / "a" / "parent")  # a looping folder link: not followed
    train, _, classes = folder_splits(root, val_fraction=0.0)
    assert classes == ["a"] and [p.name for p, _ in train] == ["good.png"]
    os.symlink("self.jpg", root / "a" / "self.jpg")  # a link to itself, named like an image
    with pytest.raises(USER_ERRORS, match=rf"{root / 'a' / 'self.jpg'}: cannot read"):
        folder_splits(root, val_fraction=0.0)
    (root / "a" / "self.jpg").unlink()
    os.symlink("loop", root / "loop")  # a class "folder" that is a link to itself
    with pytest.raises(USER_ERRORS, match=rf"{root / 'loop'}: cannot read"):
        find_classes(root)


def test_unreadable_folder_is_named_simulated(tmp_path, monkeypatch):
    """Root can read anything, so the permission error is simulated here; the next test uses real chmod."""
    root = tmp_path / "root"
    _png(root / "a" / "good.png")
    real_scandir = os.scandir

    def refuse(path: object = ".") -> object:
        if Path(path) == root / "a":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(USER_ERRORS, match=rf"{root / 'a'}: cannot read \(Permission denied\)"):
        folder_splits(root, val_fraction=0.0)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: root reads files and folders whatever their permissions")
def test_unreadable_files_and_folders_are_named(tmp_path):
    root = tmp_path / "root"
    _png(root / "a" / "good.png")
    locked = _png(root / "a" / "locked.png")
    locked.chmod(0)
    try:
        train, _, _ = folder_splits(root, val_fraction=0.0)
        index = [p for p, _ in train].index(locked)
        with pytest.raises(USER_ERRORS, match=rf"{locked}: cannot read the image"):
            ImageFolderDataset(train, Tiny())[index]
        (root / "a").chmod(0)
        with pytest.raises(USER_ERRORS, match=rf"{root / 'a'}: cannot read"):
            folder_splits(root, val_fraction=0.0)
    finally:
        (root / "a").chmod(0o755)
        locked.chmod(0o644)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names that are not valid UTF-8")
def test_non_utf8_names_load_and_are_named_in_errors(tmp_path):
    root = tmp_path / "root"
    klass = root / os.fsdecode(b"caf\xe9")
    good = _png(klass / os.fsdecode(b"ok-\xff.png"))
    bad = klass / os.fsdecode(b"bad-\xfe.png")
    bad.write_bytes(b"not a png")
    train, _, classes = folder_splits(root, val_fraction=0.0)
    assert classes == [klass.name] and sorted(p for p, _ in train) == sorted([good, bad])
    ds = ImageFolderDataset(train, Tiny())
    paths = [p for p, _ in train]
    assert ds[paths.index(good)][0].shape == (3, 8, 8)
    with pytest.raises(USER_ERRORS) as e:
        ds[paths.index(bad)]
    assert str(bad) in str(e.value)
    str(e.value).encode("utf-8", "backslashreplace")  # printable the way sys.stderr prints it
