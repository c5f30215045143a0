"""Byte-level readers and writers: IDX (MNIST), CIFAR-10 binary records, safetensors.

Each format is read top to bottom as its specification lays it out: a header that declares sizes,
then the data. Every parser checks the sizes a file declares against the bytes it really has *before*
allocating, and reports bad input as `FormatError` (a ValueError) with the path and what is wrong.
Readers open files with `open_regular`, which refuses fifos, devices and folders.

This file imports only numpy, torch and the standard library, so it can be copied on its own.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import struct
import zlib
from contextlib import nullcontext
from pathlib import Path
from typing import IO, BinaryIO, Union

import numpy as np
import torch

PathLike = Union[str, "os.PathLike[str]"]


class FormatError(ValueError):
    """A file whose bytes are not what its format says (or not a regular file), named with what is wrong."""


def _is_int(value: object) -> bool:
    """An int, but not a bool (JSON's true is no size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def open_regular(path: PathLike) -> IO[bytes]:
    """Open `path` for binary reading; a fifo, device, socket or folder is a FormatError.

    A reader blocks forever on a fifo nobody writes to, and a device has no size to check against,
    so the file type is checked on the open descriptor (no race with a rename). O_NONBLOCK makes
    opening a fifo return at once instead of waiting for a writer; it changes nothing for regular
    files. A missing or unreadable file raises the OSError itself.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "folder" if stat.S_ISDIR(mode) else "fifo" if stat.S_ISFIFO(mode) else "device or socket"
        raise FormatError(f"{path}: not a regular file (a {kind}); give the path of a file")
    return os.fdopen(fd, "rb")


_CHUNK = 1 << 24  # 16 MiB: bounds the temporary a gzip stream's readinto makes


def _fill(f: IO[bytes], buf: memoryview) -> int:
    """Read into `buf` until it is full or the stream ends; return the number of bytes read."""
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:got + _CHUNK])
        if not n:
            break
        got += n
    return got


# ---------------------------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAX_RATIO = 1032  # deflate cannot expand data by more than ~1032x


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip, detected by the magic bytes 1f 8b) as a native-endian array.

    Format: magic `00 00 <type> <ndim>`, then ndim big-endian uint32 dims, then the big-endian data.
    """
    path = Path(path)
    with open_regular(path) as raw:
        size = os.fstat(raw.fileno()).st_size
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw) if compressed else raw
        try:
            return _read_idx_stream(path, f, size, compressed)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # corrupt or cut-off gzip stream
            raise FormatError(f"{path}: corrupt gzip data ({e})") from None


def _read_idx_stream(path: Path, f: IO[bytes], size: int, compressed: bool) -> np.ndarray:
    """Parse IDX from the (decompressed) stream `f`; `size` is the file's size on disk."""
    head = f.read(4)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES:
        raise FormatError(f"{path}: bad magic {head.hex(' ')!r}: expected 00 00 <type> <ndim> with type "
                          f"in {', '.join(f'{c:#04x}' for c in _IDX_DTYPES)}; is this an IDX file?")
    dtype, ndim = _IDX_DTYPES[head[2]], head[3]
    if ndim == 0:
        raise FormatError(f"{path}: bad header: ndim is 0 (an IDX file has at least one dimension)")
    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise FormatError(f"{path}: truncated: header declares {ndim} dims, file ends inside them")
    shape = struct.unpack(f">{ndim}I", dims_raw)
    expected = dtype.itemsize
    for d in shape:  # Python ints: no overflow however large the dims
        expected *= d
    header = 4 + 4 * ndim
    if not compressed and expected != size - header:
        problem = "truncated" if expected > size - header else "trailing bytes"
        raise FormatError(f"{path}: {problem}: header says {expected} data bytes for shape {shape}, "
                          f"file has {size - header}")
    if compressed and expected > _GZIP_MAX_RATIO * size:
        raise FormatError(f"{path}: truncated: header says {expected} data bytes for shape {shape}, "
                          f"more than a {size}-byte gzip file can hold")
    data = np.empty(expected, dtype=np.uint8)
    got = _fill(f, memoryview(data))
    if got < expected:
        raise FormatError(f"{path}: truncated: header says {expected} data bytes, file has {got}")
    if f.read(1):  # bounded read: a gzip bomb stops one byte past what the header justifies
        raise FormatError(f"{path}: trailing bytes after the {expected} data bytes the header declares")
    try:
        array = data.view(dtype).reshape(shape)  # (nbytes,) -> (nbytes / itemsize,) -> header's shape
    except ValueError as e:  # IDX allows 255 dims, numpy holds 64 (32 before numpy 2)
        raise FormatError(f"{path}: {ndim} dims: {e}") from None
    return array.astype(dtype.newbyteorder("="), copy=False)  # no copy for u8/i8


# ------------------------------------------------------------------------------------ CIFAR binary

_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then the R, G and B planes (32x32 each, row-major)


def read_cifar_batch(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR-10 binary batch: images uint8 (N, 3, 32, 32) in RGB order, labels int64 (N,)."""
    path = Path(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0 or size % _CIFAR_RECORD:
            raise FormatError(f"{path}: size {size} is not a positive multiple of the {_CIFAR_RECORD}-byte "
                              "CIFAR-10 record; the file is truncated or not a CIFAR-10 binary batch")
        records = np.fromfile(f, dtype=np.uint8)
    if records.size != size:
        raise FormatError(f"{path}: file changed while reading ({records.size} of {size} bytes)")
    records = records.reshape(-1, _CIFAR_RECORD)  # (N * 3073,) -> (N, 3073)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= 10)
    if bad.size:
        raise FormatError(f"{path}: record {bad[0]} has label {labels[bad[0]]} (CIFAR-10 labels are 0..9)")
    # a view would stride over the label bytes: copy once so callers get a compact array
    images = np.ascontiguousarray(records[:, 1:]).reshape(-1, 3, 32, 32)  # (N, 3072) -> (N, 3, 32, 32)
    return images, labels


# -------------------------------------------------------------------------------------- safetensors

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
              "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_ST_NAMES = {dt: name for name, dt in _ST_DTYPES.items()}
# dtypes the official format defines that this project does not read (no ViT checkpoint of ours, timm's
# or Hugging Face's uses them; torch has no or only partial support for several)
_ST_UNSUPPORTED = ("U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64")
_ST_MAX_HEADER = 100_000_000  # the official implementation's limit
_ST_FIELDS = {"dtype", "shape", "data_offsets"}
_INT64_MAX = 2**63 - 1  # torch sizes are int64


def read_safetensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file (little-endian host) into CPU tensors and its `__metadata__`.

    The header is validated in full before the data is read. The data is read once into one
    uint8 buffer; tensors are views of it (disjoint, writable; together they keep it alive).
    """
    path = Path(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise FormatError(f"{path}: truncated: {size} bytes, a safetensors file has at least 8")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _ST_MAX_HEADER:
            raise FormatError(f"{path}: header length {n} exceeds the limit of {_ST_MAX_HEADER} bytes; "
                              "not a safetensors file?")
        if n > size - 8:
            raise FormatError(f"{path}: truncated: header length {n} exceeds the {size - 8} bytes after it")
        entries, meta = _parse_safetensors_header(path, f.read(n), size - 8 - n)
        data = torch.empty(size - 8 - n, dtype=torch.uint8)
        if _fill(f, memoryview(data.numpy())) != data.numel() or f.read(1):
            raise FormatError(f"{path}: file changed size while reading")
    tensors = {}
    for start, end, name, dtype, shape in entries:
        raw = data[start:end]
        if start % dtype.itemsize:  # torch reinterprets only aligned bytes; other writers may misalign
            raw = raw.clone()
        if dtype is torch.bool and raw.gt(1).any():
            raise FormatError(f"{path}: tensor {name!r}: BOOL data holds bytes other than 0 and 1")
        tensors[name] = raw.view(dtype).reshape(shape)  # (nbytes,) -> (nbytes / itemsize,) -> shape
    return tensors, meta


def _parse_safetensors_header(path: Path, raw: bytes, data_len: int) -> tuple[list, dict[str, str]]:
    """Validate the JSON header against `data_len`; return [(start, end, name, dtype, shape)], metadata."""
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_object)
    except (ValueError, RecursionError) as e:  # also UnicodeDecodeError and our duplicate-key error
        raise FormatError(f"{path}: bad safetensors header JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: safetensors header is a JSON {type(obj).__name__}, not an object")
    meta = obj.pop("__metadata__", None)
    meta = {} if meta is None else meta  # the official reader treats null as absent
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(f"{path}: __metadata__ must map strings to strings")
    entries = []
    for name, info in obj.items():
        start, end, dtype, shape = _header_entry(f"{path}: tensor {name!r}", info, data_len)
        entries.append((start, end, name, dtype, shape))
    entries.sort()  # (start, end, name) is unique, so dtypes and shapes are never compared
    pos = 0
    for start, end, name, _, _ in entries:
        if start != pos:
            raise FormatError(f"{path}: tensor {name!r} data_offsets begin at {start}, expected {pos} "
                              f"({'overlapping' if start < pos else 'gap between'} tensors)")
        pos = end
    if pos != data_len:  # pos > data_len was ruled out per entry
        raise FormatError(f"{path}: trailing bytes: tensors cover {pos} data bytes, the file has {data_len}")
    return entries, meta


def _header_entry(where: str, info: object, data_len: int) -> tuple[int, int, torch.dtype, list[int]]:
    """(start, end, dtype, shape) of one tensor's header entry, checked against the `data_len` data bytes."""
    if not isinstance(info, dict) or info.keys() != _ST_FIELDS:
        raise FormatError(f"{where}: entry must have exactly dtype, shape, data_offsets: {str(info)[:200]}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        raise FormatError(f"{where}: {_dtype_problem(dtype)}")
    if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d <= _INT64_MAX for d in shape):
        # a zero-element tensor may declare any other dim: each must still fit torch's int64 sizes
        raise FormatError(f"{where}: shape must be a list of non-negative integers that fit int64 "
                          f"(at most 2**63 - 1), got {str(shape)[:200]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        raise FormatError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                          f"got {str(offsets)[:200]}")
    start, end = offsets
    if end > data_len:
        raise FormatError(f"{where}: data_offsets {offsets} run past the {data_len} data bytes "
                          "(out-of-range offsets or truncated file)")
    nbytes = 0 if 0 in shape else _ST_DTYPES[dtype].itemsize
    for d in shape:
        nbytes *= d
        if nbytes > end - start:  # cannot match any more: stop before a hostile shape builds a huge int
            need = f"more than {end - start}"
            break
    else:
        need = str(nbytes)
    if nbytes != end - start:
        raise FormatError(f"{where}: shape {str(shape)[:200]} of {dtype} needs {need} bytes, "
                          f"data_offsets {offsets} give {end - start}")
    return start, end, _ST_DTYPES[dtype], shape


def _unique_object(pairs: list) -> dict:
    """json object hook: Python's json silently keeps the last duplicate key; reject it instead."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            # the official reader keeps one of the copies without a word; which one was meant is unknowable
            raise FormatError(f"duplicate key {key!r}: not supported by this project (ambiguous: which copy is meant?)")
        obj[key] = value
    return obj


def _dtype_problem(dtype: object) -> str:
    """Why a header's dtype is refused: a valid safetensors dtype this project does not read, or no dtype at all."""
    if isinstance(dtype, str) and dtype in _ST_UNSUPPORTED:
        return (f"dtype {dtype!r} is valid safetensors but not supported by this project "
                f"(supported: {', '.join(_ST_DTYPES)})")
    return f"unknown dtype {str(dtype)[:50]!r} (known: {', '.join(_ST_DTYPES)})"


def write_safetensors(file: PathLike | BinaryIO, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` as safetensors to `file` (a path, or a binary file open for writing), laid out as
    the official writer does for one-dtype files.

    Header: compact UTF-8 JSON, `__metadata__` first, then the names in sorted order, padded with
    spaces to a multiple of 8. Data: contiguous CPU little-endian bytes ordered by element size
    (largest first), then name, as the official writer does, so every tensor starts aligned to its
    element size.
    """
    _check_writable(file, tensors, metadata)
    header: dict[str, object] = {} if metadata is None else {"__metadata__": dict(metadata)}
    entries, blobs, offset = {}, [], 0
    for name in sorted(tensors, key=lambda n: (-tensors[n].element_size(), n)):
        t = tensors[name].detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8)  # shape -> (numel,) -> (numel * itemsize,) bytes
        entries[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
                         "data_offsets": [offset, offset + raw.numel()]}
        offset += raw.numel()
        blobs.append(raw)
    header.update((name, entries[name]) for name in sorted(entries))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the official writer pads
    with open(file, "wb") if isinstance(file, (str, os.PathLike)) else nullcontext(file) as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw.numpy())


def _check_writable(file: object, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    """FormatError unless the names, dtypes and metadata can be stored as safetensors."""
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise FormatError(f"{file}: safetensors metadata must map strings to strings")
    if not all(isinstance(k, str) and k != "__metadata__" for k in tensors):
        raise FormatError(f"{file}: tensor names must be strings other than '__metadata__'")
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.dtype not in _ST_NAMES:
            raise FormatError(f"{file}: tensor {name!r}: cannot store {getattr(t, 'dtype', type(t))} "
                              f"(supported: {', '.join(str(d) for d in _ST_NAMES)})")
