"""vit.data: tensor datasets (tiny synthetic + real ../shared), TensorLoader, image folders."""
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vit.data as data
import vit.datasets as datasets
import vit.folders as folders
import vit.memory as memory
from vit.config import TrainConfig
from vit.data import TensorLoader
from vit.datasets import load_tensor_dataset
from vit.download import md5_file
from vit.errors import VitError
from vit.folders import ImageFolderDataset, find_classes, folder_splits
from vit.recipes import RECIPES
from helpers import write_cifar_batch, write_idx, write_scenes

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]
IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _no_network(*args, **kwargs):
    raise AssertionError("the network must not be touched")


def _write_mnist(folder: Path, n_train: int = 7, n_test: int = 3, gz=(False, True, True, False), seed: int = 0):
    """A tiny MNIST-layout IDX set; `gz` picks .gz per file (order of IDX_NAMES). Returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8)]
    folder.mkdir(parents=True, exist_ok=True)
    for name, array, compress in zip(IDX_NAMES, arrays, gz):
        write_idx(folder / (name + ".gz" if compress else name), array, compress=compress)
    return arrays


# ------------------------------------------------------------------------------ tensor datasets

@pytest.mark.parametrize("gz", [(False,) * 4, (True,) * 4, (False, True, True, False)])
def test_mnist_tiny_loads_raw_and_gz(tmp_path, monkeypatch, gz):
    monkeypatch.setattr(datasets, "download_file", _no_network)
    train_x, train_y, test_x, test_y = _write_mnist(tmp_path / "mnist", gz=gz)
    ds = load_tensor_dataset("mnist", tmp_path)
    assert ds.train_x.shape == (7, 1, 28, 28) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (3, 1, 28, 28)
    assert ds.train_y.dtype == torch.int64 and ds.test_y.dtype == torch.int64
    assert np.array_equal(ds.train_x[:, 0].numpy(), train_x) and np.array_equal(ds.test_x[:, 0].numpy(), test_x)
    assert ds.train_y.tolist() == train_y.tolist() and ds.test_y.tolist() == test_y.tolist()
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)


def test_fashion_mnist_classes_and_stats(tmp_path):
    _write_mnist(tmp_path / "fashion-mnist")
    ds = load_tensor_dataset("fashion-mnist", tmp_path, download=False)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)


def test_mnist_count_mismatch(tmp_path):
    folder = tmp_path / "mnist"
    _write_mnist(folder, gz=(False,) * 4)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8))
    match = r"t10k-images-idx3-ubyte has 3 images but .*t10k-labels-idx1-ubyte has 2 labels"
    with pytest.raises(VitError, match=match):
        load_tensor_dataset("mnist", tmp_path, download=False)


def test_mnist_label_out_of_range(tmp_path):
    folder = tmp_path / "mnist"
    _write_mnist(folder, gz=(False,) * 4)
    write_idx(folder / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 5, 10], dtype=np.uint8))
    with pytest.raises(VitError, match=r"train-labels-idx1-ubyte: label 10 out of range 0\.\.9"):
        load_tensor_dataset("mnist", tmp_path, download=False)


def test_mnist_wrong_shape_or_dtype(tmp_path):
    folder = tmp_path / "mnist"
    _write_mnist(folder, gz=(False,) * 4)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((3, 28, 27), dtype=np.uint8))
    match = r"t10k-images-idx3-ubyte: expected uint8 images \(N, 28, 28\), got uint8 \(3, 28, 27\)"
    with pytest.raises(VitError, match=match):
        load_tensor_dataset("mnist", tmp_path, download=False)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), dtype=np.int16))
    with pytest.raises(VitError, match="got int16"):
        load_tensor_dataset("mnist", tmp_path, download=False)


def test_present_but_corrupt_file_is_an_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "download_file", _no_network)
    folder = tmp_path / "mnist"
    _write_mnist(folder, gz=(False,) * 4)
    (folder / "train-images-idx3-ubyte").write_bytes(b"<html>not an idx file</html>")
    with pytest.raises(VitError, match=r"train-images-idx3-ubyte: .*delete the file to download it again"):
        load_tensor_dataset("mnist", tmp_path, download=True)


def test_no_download_lists_exact_missing_paths_and_urls(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "download_file", _no_network)
    folder = tmp_path / "mnist"
    _write_mnist(folder, gz=(False,) * 4)
    (folder / "train-images-idx3-ubyte").unlink()
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(VitError) as info:
        load_tensor_dataset("mnist", tmp_path, download=False)
    message = str(info.value)
    assert f"{folder / 'train-images-idx3-ubyte.gz'}  (md5 f68b3c2dcbeaaa9fbdd348bbdeb94873, 9,912,422 bytes)\n" in message
    assert f"{folder / 't10k-labels-idx1-ubyte.gz'}  (md5 ec29112dd5afa0611ce80d1b7f02629c, 4,542 bytes)\n" in message
    assert "mnist: 2 file(s) missing and downloads are off" in message and "(gzipped or not)" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert "http://yann.lecun.com/exdb/mnist/t10k-labels-idx1-ubyte.gz" in message
    assert "train-labels" not in message  # only what is really missing


def test_without_network_one_message_names_every_missing_file(tmp_path, monkeypatch):
    def offline(urls, dest, md5, size, **kwargs):
        raise VitError(f"{urls[0]}: network unreachable")

    monkeypatch.setattr(datasets, "download_file", offline)
    with pytest.raises(VitError) as info:
        load_tensor_dataset("mnist", tmp_path)  # downloads allowed, but there is no network
    message = str(info.value)
    assert message.startswith("mnist: 4 file(s) missing and the download failed (")
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert f"{tmp_path / 'mnist' / name}.gz  (md5 " in message
    assert "(gzipped or not)" in message and "--no-download" in message


def test_missing_files_are_downloaded_with_the_published_md5(tmp_path, monkeypatch):
    source = tmp_path / "source"
    _write_mnist(source, gz=(True,) * 4)
    calls = []

    def fake_download(urls, dest, md5, size, timeout=30.0):
        calls.append((urls, dest, md5, size))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((source / dest.name).read_bytes())
        return dest

    monkeypatch.setattr(datasets, "download_file", fake_download)
    ds = load_tensor_dataset("mnist", tmp_path / "root")
    assert len(ds.train_y) == 7 and len(ds.test_y) == 3
    assert [c[1] for c in calls] == [tmp_path / "root" / "mnist" / f"{n}.gz" for n in IDX_NAMES]
    urls, _, md5, size = calls[0]
    assert urls == ["https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
                    "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz"]
    assert md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873" and size == 9_912_422
    load_tensor_dataset("mnist", tmp_path / "root")  # second time: all present, no download
    assert len(calls) == 4


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(VitError, match="unknown dataset 'svhn'"):
        load_tensor_dataset("svhn", tmp_path)


def _write_cifar(batches: Path, per_file: int = 4):
    """Six tiny CIFAR binary batches (random pixels and labels) + meta; returns {file name: (x, y)}."""
    batches.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_file)
        write_cifar_batch(batches / name, x, y)
        written[name] = (x, y)
    (batches / "batches.meta.txt").write_text("\n".join(CIFAR_CLASSES) + "\n\n")
    return written


def test_cifar_tiny_loads_in_file_order(tmp_path):
    written = _write_cifar(tmp_path / "cifar10" / "cifar-10-batches-bin")
    ds = load_tensor_dataset("cifar10", tmp_path, download=False)
    train_x = np.concatenate([written[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    train_y = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert np.array_equal(ds.train_x.numpy(), train_x) and ds.train_y.tolist() == train_y.tolist()
    assert np.array_equal(ds.test_x.numpy(), written["test_batch.bin"][0])
    assert ds.classes == CIFAR_CLASSES
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)


def test_cifar_bad_meta(tmp_path):
    batches = tmp_path / "cifar10" / "cifar-10-batches-bin"
    _write_cifar(batches)
    (batches / "batches.meta.txt").write_text("cat\ndog\n")
    with pytest.raises(VitError, match=r"batches\.meta\.txt: expected 10 class names, one a line, found 2"):
        load_tensor_dataset("cifar10", tmp_path, download=False)


def _cifar_tarball(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    _write_cifar(src / "cifar-10-batches-bin")
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
        tar.addfile(tarfile.TarInfo("cifar-10-batches-bin/readme.html"), io.BytesIO(b""))
    return archive


def test_cifar_download_extracts_only_the_expected_members(tmp_path, monkeypatch):
    archive = _cifar_tarball(tmp_path)
    calls = []

    def fake_download(urls, dest, md5, size, timeout=30.0):
        calls.append((urls, md5, size))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(archive.read_bytes())
        return dest

    monkeypatch.setattr(datasets, "download_file", fake_download)
    ds = load_tensor_dataset("cifar10", tmp_path / "root")
    assert len(ds.train_y) == 20 and len(ds.test_y) == 4
    assert calls == [(["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"], "c32a1d4ab5d03f1284b67883e8d87530",
                      170_052_171)]
    extracted = sorted(p.name for p in (tmp_path / "root" / "cifar10" / "cifar-10-batches-bin").iterdir())
    assert extracted == sorted([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin", "batches.meta.txt"])


def test_cifar_hand_placed_archive_is_md5_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "download_file", _no_network)
    archive = _cifar_tarball(tmp_path)
    (tmp_path / "root" / "cifar10").mkdir(parents=True)
    placed = tmp_path / "root" / "cifar10" / "cifar-10-binary.tar.gz"
    placed.write_bytes(archive.read_bytes())
    with pytest.raises(VitError, match=r"cifar-10-binary\.tar\.gz: md5 is not c32a1d4ab5d03f1284b67883e8d87530"):
        load_tensor_dataset("cifar10", tmp_path / "root", download=False)
    # With the archive's own md5 as the published one, the same hand-placed file is accepted.
    source = datasets._Source(mirrors=("http://127.0.0.1:9/",), md5={"cifar-10-binary.tar.gz": md5_file(placed)},
                          size={"cifar-10-binary.tar.gz": placed.stat().st_size})
    monkeypatch.setitem(datasets._SOURCES, "cifar10", source)
    assert len(load_tensor_dataset("cifar10", tmp_path / "root", download=False).train_y) == 20


def test_cifar_no_download_message(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "download_file", _no_network)
    folder = tmp_path / "cifar10"
    with pytest.raises(VitError) as info:
        load_tensor_dataset("cifar10", tmp_path, download=False)
    message = str(info.value)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert f"{folder / 'cifar-10-binary.tar.gz'}  (md5 c32a1d4ab5d03f1284b67883e8d87530, 170,052,171 bytes)\n    from {url}" in message
    assert str(folder / "cifar-10-batches-bin" / "data_batch_1.bin") in message
    assert "c32a1d4ab5d03f1284b67883e8d87530" in message


def test_cifar_without_network_says_where_to_place_the_archive(tmp_path, monkeypatch):
    def offline(urls, dest, md5, size, **kwargs):
        raise VitError(f"{urls[0]}: network unreachable")

    monkeypatch.setattr(datasets, "download_file", offline)
    with pytest.raises(VitError) as info:
        load_tensor_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert message.startswith("cifar10: 1 file(s) missing and the download failed (")
    assert f"{tmp_path / 'cifar10' / 'cifar-10-binary.tar.gz'}  (md5 c32a1d4ab5d03f1284b67883e8d87530" in message
    assert "--no-download" in message


# ------------------------------------------------------------------------------------- real data

def test_real_mnist():
    if not (SHARED / "data" / "mnist").is_dir():
        pytest.skip(f"../shared not found: {SHARED / 'data' / 'mnist'} is missing")
    ds = load_tensor_dataset("mnist", SHARED / "data", download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(ds.train_x.float().mean().item() / 255 - 0.1307) < 0.0005


@pytest.fixture(scope="session")
def real_cifar_root(tmp_path_factory):
    """CIFAR-10 binary built once per session from ../shared's JPEG tarball with its own tool."""
    tool = SHARED / "tools" / "cifar10_bin_from_jpg.py"
    src = SHARED / "data" / "cifar10-jpg.tar.gz"
    if not (tool.is_file() and src.is_file()):
        pytest.skip(f"../shared not found: need {tool} and {src}")
    root = tmp_path_factory.mktemp("real_cifar")
    subprocess.run([sys.executable, str(tool), str(src), str(root / "cifar10")], check=True, stdout=subprocess.DEVNULL)
    return root


@pytest.mark.slow  # building the binary from the JPEG tarball takes ~15-20 s on a small machine
def test_real_cifar10(real_cifar_root):
    ds = load_tensor_dataset("cifar10", real_cifar_root, download=False)
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(ds.train_y).tolist() == [5000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.classes == CIFAR_CLASSES
    means = ds.train_x.float().mean(dim=(0, 2, 3)) / 255  # JPEG copy: close to the official statistics
    assert torch.allclose(means, torch.tensor(ds.mean), atol=0.01)


# ---------------------------------------------------------------------------------- TensorLoader

def _loader_data(n: int = 10):
    y = torch.arange(n)
    return y.view(n, 1, 1, 1).expand(n, 1, 2, 2) * 2, y  # (N,) -> (N, 1, 2, 2); x[i] == 2 * y[i] everywhere


def _order(loader: TensorLoader) -> list:
    return [i for _, y in loader for i in y.tolist()]


def test_tensor_loader_pairs_x_with_y_and_covers_every_sample():
    x, y = _loader_data()
    loader = TensorLoader(x, y, 3, shuffle=True, drop_last=False, seed=1)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [3, 3, 3, 1]
    assert all(torch.equal(bx[:, 0, 0, 0], 2 * by) for bx, by in batches)
    assert sorted(_order(loader)) == list(range(10))
    assert _order(TensorLoader(x, y, 3, shuffle=False, drop_last=False)) == list(range(10))


def test_tensor_loader_order_is_a_function_of_seed_and_epoch():
    x, y = _loader_data(100)
    a = TensorLoader(x, y, 16, shuffle=True, drop_last=True, seed=5)
    b = TensorLoader(x, y, 16, shuffle=True, drop_last=True, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert _order(a) == _order(b)
    first = _order(a)
    a.set_epoch(4)
    assert _order(a) != first
    a.set_epoch(3)
    assert _order(a) == first  # repeatable, not a running generator
    assert _order(TensorLoader(x, y, 16, shuffle=True, drop_last=True, seed=6)) != _order(
        TensorLoader(x, y, 16, shuffle=True, drop_last=True, seed=5))


def test_tensor_loader_drop_last():
    x, y = _loader_data(10)
    loader = TensorLoader(x, y, 3, shuffle=True, drop_last=True)
    assert len(loader) == 3 and [len(b) for _, b in loader] == [3, 3, 3]
    assert len(TensorLoader(x, y, 20, shuffle=True, drop_last=True)) == 0


def test_tensor_loader_rank_shards_are_disjoint_and_cover_everything():
    x, y = _loader_data(10)
    shards = []
    for rank in range(3):
        loader = TensorLoader(x, y, 2, shuffle=True, drop_last=False, seed=2, rank=rank, world_size=3)
        loader.set_epoch(1)
        shards.append(_order(loader))
        assert len(loader) == -(-len(shards[-1]) // 2)
    assert sorted(i for s in shards for i in s) == list(range(10))  # disjoint and complete
    assert [len(s) for s in shards] == [4, 3, 3]
    # drop_last: every rank yields the same number of full batches, so DDP ranks stay in step
    lens = [len(TensorLoader(x, y, 2, shuffle=True, drop_last=True, rank=r, world_size=3)) for r in range(3)]
    assert lens == [1, 1, 1]


def test_tensor_loader_rejects_bad_arguments():
    x, y = _loader_data(10)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        TensorLoader(x, y, 2, shuffle=True, drop_last=False, rank=2, world_size=2)
    with pytest.raises(ValueError, match="x has 10 samples but y has 9"):
        TensorLoader(x, y[:9], 2, shuffle=True, drop_last=False)


# ---------------------------------------------------------------------------------- image folders

class Tiny:
    """Test transform: resize to 8x8, float tensor (3, 8, 8) of raw 0..255 values; remembers input sizes."""

    size = 8

    def __init__(self) -> None:
        self.seen = []

    def __call__(self, img: Image.Image, generator: torch.Generator) -> torch.Tensor:
        self.seen.append((img.mode, img.size))
        return torch.from_numpy(np.array(img.resize((8, 8)))).permute(2, 0, 1).float()  # (8, 8, 3) -> (3, 8, 8)


class Noisy(Tiny):
    """Tiny plus one random draw from the generator, to check per-item seeding."""

    def __call__(self, img: Image.Image, generator: torch.Generator) -> torch.Tensor:
        return super().__call__(img, generator) + torch.rand(1, generator=generator)


def _save(path: Path, img: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _rgb(size=(8, 8), color=(200, 100, 50)) -> Image.Image:
    return Image.new("RGB", size, color)


def _make_classes(root: Path, counts: dict) -> None:
    for name, k in counts.items():
        for i in range(k):
            _save(root / name / f"{i:03d}.png", _rgb(color=(i, 0, 0)))


def test_find_classes_is_lexicographic_and_skips_hidden_and_files(tmp_path):
    for name in ["b", "a", "10", "2", "B", ".hidden"]:
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert find_classes(tmp_path) == ["10", "2", "B", "a", "b"]  # torchvision ImageFolder order
    with pytest.raises(VitError, match="no class folders"):
        find_classes(tmp_path / "a")
    with pytest.raises(VitError, match="not a folder"):
        find_classes(tmp_path / "missing")


def test_folder_mixed_modes_junk_and_nested(tmp_path):
    root = tmp_path / "data"
    c = root / "cats"
    _save(c / "rgb.JPG", _rgb((8, 8)))
    _save(c / "gray.png", Image.new("L", (8, 8), 77))
    _save(c / "gray_alpha.png", Image.new("LA", (8, 8), (90, 10)))
    _save(c / "one_bit.bmp", Image.new("1", (8, 8), 1))
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    _save(c / "palette_transparent.png", palette, transparency=0)
    _save(c / "anim.gif", palette)
    _save(c / "rgba.webp", Image.new("RGBA", (8, 8), (1, 2, 3, 0)), lossless=True)
    _save(c / "cmyk.jpg", Image.new("CMYK", (8, 8), (0, 0, 0, 0)), quality=100)
    _save(c / "cmyk.tiff", Image.new("CMYK", (8, 8), (0, 255, 0, 0)))
    sixteen = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    _save(c / "sixteen_bit.png", sixteen)
    _save(c / "deep" / "er" / "nested.ppm", _rgb((8, 8), (5, 6, 7)))
    _save(c / "x.pgm", Image.new("L", (8, 8), 3))
    (c / "readme.txt").write_text("not an image")
    (c / "labels.csv").write_text("a,b")
    _save(c / ".hidden.png", _rgb())
    _save(c / ".cache" / "thumb.png", _rgb())
    _save(root / "dogs" / "d.png", _rgb())
    os.mkfifo(root / "dogs" / "fifo.png")  # a special file named like an image must not hang a worker

    train, val, classes = folder_splits(root, val_fraction=0.0)
    assert classes == ["cats", "dogs"] and val == []
    names = sorted(p.name for p, _ in train)
    assert names == sorted(["rgb.JPG", "gray.png", "gray_alpha.png", "one_bit.bmp", "palette_transparent.png",
                            "anim.gif", "rgba.webp", "cmyk.jpg", "cmyk.tiff", "sixteen_bit.png", "nested.ppm",
                            "x.pgm", "d.png"])
    transform = Tiny()
    ds = ImageFolderDataset(train, transform)
    pixels = {}
    for i, (path, label) in enumerate(train):
        x, y = ds[i]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == label
        pixels[path.name] = x[:, 0, 0].tolist()
    assert all(mode == "RGB" for mode, _ in transform.seen)
    assert pixels["gray.png"] == [77, 77, 77]
    assert pixels["palette_transparent.png"] == [255, 0, 0]
    assert pixels["sixteen_bit.png"] == [255, 255, 255]  # scaled, not clipped garbage
    assert pixels["nested.ppm"] == [5, 6, 7]
    assert pixels["cmyk.tiff"] == [255, 0, 255]
    assert all(abs(v - 255) <= 2 for v in pixels["cmyk.jpg"])


def test_sixteen_bit_is_scaled_to_eight_bit(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(8, 0).repeat(2, 1)  # (8, 8)
    path = _save(tmp_path / "c" / "s.png", Image.fromarray(values))
    x, _ = ImageFolderDataset([(path, 0)], Tiny())[0]
    assert x[0, 0, ::2].tolist() == [0, 1, 128, 255]


def test_empty_class_is_an_error_naming_it(tmp_path):
    _make_classes(tmp_path, {"a": 2})
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(VitError, match=r"empty: class folder has no images"):
        folder_splits(tmp_path)


@pytest.mark.parametrize("content", ["text", "truncated", "empty"])
def test_undecodable_file_fails_at_getitem_naming_the_file(tmp_path, content):
    good = _save(tmp_path / "a" / "good.jpg", _rgb((64, 64)))
    bad = tmp_path / "a" / "bad.jpg"
    bad.write_bytes({"text": b"this is not a jpeg", "truncated": good.read_bytes()[:300], "empty": b""}[content])
    train, _, _ = folder_splits(tmp_path, val_fraction=0.0)  # listing never decodes
    ds = ImageFolderDataset(train, Tiny())
    index = [p.name for p, _ in train].index("bad.jpg")
    with pytest.raises(VitError, match=rf"{bad}: cannot read the image"):
        ds[index]
    assert ds[1 - index][0].shape == (3, 8, 8)


def test_jpeg_draft_mode_only_when_much_larger(tmp_path):
    paths = [_save(tmp_path / "a" / "big.jpg", _rgb((256, 256))),
             _save(tmp_path / "a" / "tall.jpg", _rgb((100, 300))),
             _save(tmp_path / "a" / "small.jpg", _rgb((15, 15))),
             _save(tmp_path / "a" / "big.png", _rgb((256, 256)))]
    transform = Tiny()
    ds = ImageFolderDataset([(p, 0) for p in paths], transform)
    for i in range(len(paths)):
        ds[i]
    # 256 >= 2*8: DCT-scaled by 8 to 32; 100x300 by 8 -> 13x38 (shorter side still >= 8);
    # 15 < 2*8: untouched; PNG has no draft mode.
    assert [size for _, size in transform.seen] == [(32, 32), (13, 38), (15, 15), (256, 256)]


def test_item_randomness_depends_on_seed_epoch_index_not_workers(tmp_path):
    _make_classes(tmp_path, {"a": 5, "b": 5})
    train, _, _ = folder_splits(tmp_path, val_fraction=0.0)
    ds = ImageFolderDataset(train, Noisy(), seed=3)

    def run(workers: int) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        return torch.cat([x for x, _ in loader])

    single = run(0)
    assert torch.equal(single, run(2))
    ds.set_epoch(1)
    assert not torch.equal(single, run(0))
    assert len({round(float(x[0, 0, 0] - int(x[0, 0, 0])), 6) for x in single}) == len(single)


def test_stratified_split_is_seeded_and_stratified(tmp_path):
    _make_classes(tmp_path, {"a": 20, "b": 7, "c": 2, "d": 1})
    train, val, classes = folder_splits(tmp_path, val_fraction=0.1, seed=0)
    again_train, again_val, _ = folder_splits(tmp_path, val_fraction=0.1, seed=0)
    assert (train, val) == (again_train, again_val)
    assert folder_splits(tmp_path, val_fraction=0.1, seed=1)[1] != val
    assert classes == ["a", "b", "c", "d"]
    per_class = [sum(1 for _, y in val if y == k) for k in range(4)]
    assert per_class == [2, 1, 1, 0]  # round(20*0.1)=2; 7 -> at least 1; 2 -> 1 (train keeps 1); 1 -> none
    assert {p for p, _ in train}.isdisjoint(p for p, _ in val)
    assert len(train) + len(val) == 30
    assert sorted({y for _, y in train}) == [0, 1, 2, 3]
    with pytest.raises(VitError, match="val_fraction"):
        folder_splits(tmp_path, val_fraction=1.0)


@pytest.mark.parametrize("val_name", ["val", "test"])
def test_train_val_layout(tmp_path, val_name):
    _make_classes(tmp_path / "train", {"a": 3, "b": 2, "c": 1})
    _make_classes(tmp_path / val_name, {"b": 2, "c": 1})
    train, val, classes = folder_splits(tmp_path, val_fraction=0.5)
    assert classes == ["a", "b", "c"] and len(train) == 6
    assert sorted(y for _, y in val) == [1, 1, 2]  # labels from train's class list
    assert all(p.parent.parent.name == val_name for p, _ in val)


def test_val_class_missing_from_train_is_an_error(tmp_path):
    _make_classes(tmp_path / "train", {"a": 2})
    _make_classes(tmp_path / "val", {"a": 1, "zebra": 1})
    with pytest.raises(VitError, match=r"classes \['zebra'\] are not in .*train"):
        folder_splits(tmp_path)


def test_train_folder_without_val_is_split(tmp_path):
    _make_classes(tmp_path / "train", {"a": 10, "b": 10})
    train, val, classes = folder_splits(tmp_path, val_fraction=0.2, seed=0)
    assert classes == ["a", "b"] and len(train) == 16 and len(val) == 4
    assert all(p.parent.parent.name == "train" for p, _ in train + val)


# ---------------------------------------------------------------------------------------------
# An image folder held in memory: its size checked before decoding, its statistics without a float copy


def test_pixel_stats_are_the_float_statistics_computed_before():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (37, 3, 9, 11), dtype=torch.uint8, generator=g)
    x[:, 1] //= 4  # a dark channel
    x[:, 2] = 200  # a flat one: std 0, clamped to 1e-3 as before
    pixels = x.float().div_(255).transpose(0, 1).reshape(3, -1)  # what folder_data computed, 8x the bytes
    mean, std = folders.pixel_stats(x, chunk=5)
    np.testing.assert_allclose(mean, pixels.mean(1).tolist(), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(1).clamp(min=1e-3).tolist(), rtol=1e-5)
    assert std[2] == 1e-3


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the process's size from /proc")
def test_pixel_stats_need_no_float_copy_of_the_set():
    # 60 MB of pixels and 100 MB of address space left: a float copy (240 MB) cannot be made
    code = """
import resource, torch
from vit.folders import pixel_stats
x = torch.randint(0, 256, (400, 3, 224, 224), dtype=torch.uint8)
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 100 * 2**20, resource.RLIM_INFINITY))
try:
    x.float()
    raise SystemExit("a float copy fitted: the limit tests nothing")
except RuntimeError:
    pass
mean, std = pixel_stats(x)
print(round(mean[0], 2), round(std[0], 2))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.split() == ["0.5", "0.29"], run.stdout + run.stderr


def test_available_memory_is_the_least_of_meminfo_the_cgroup_and_the_address_space(tmp_path):
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (cgroup / "memory").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    assert memory.available_memory(proc, cgroup) == (8_192_000_000, "MemAvailable")
    (cgroup / "memory.max").write_text("max\n")  # cgroup v2 without a limit
    (cgroup / "memory.current").write_text("1000\n")
    assert memory.available_memory(proc, cgroup) == (8_192_000_000, "MemAvailable")
    (cgroup / "memory.max").write_text("3000000000\n")
    (cgroup / "memory.current").write_text("1500000000\n")
    (cgroup / "memory.stat").write_text("anon 1000000000\ninactive_file 400000000\n")  # cache it can drop
    assert memory.available_memory(proc, cgroup) == (1_900_000_000, f"the cgroup limit {cgroup / 'memory.max'} "
                                                                  "less its use")
    (cgroup / "memory.max").unlink()
    (cgroup / "memory" / "memory.limit_in_bytes").write_text("2000000000\n")  # cgroup v1
    (cgroup / "memory" / "memory.usage_in_bytes").write_text("500000000\n")
    assert memory.available_memory(proc, cgroup)[0] == 1_500_000_000
    (proc / "self" / "limits").write_text("Limit                     Soft Limit           Hard Limit           Units\n"
                                          "Max address space         1000000000           unlimited            bytes\n")
    (proc / "self" / "status").write_text("Name:\tpython\nVmSize:\t  300000 kB\n")
    assert memory.available_memory(proc, cgroup) == (692_800_000, "the address-space limit (ulimit -v) less this "
                                                                "process's size")
    assert memory.available_memory(tmp_path / "none", tmp_path / "none") is None  # not Linux: no check


def test_a_folder_too_big_for_memory_is_refused_before_decoding(tmp_path, monkeypatch, capsys):
    for name in ("a", "b"):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (20, 20), (30 * i, 0, 0)).save(tmp_path / "f" / name / f"{i}.png")
    monkeypatch.setattr(memory, "available_memory", lambda: (50_000_000, "MemAvailable"))
    monkeypatch.setattr(folders, "decode_all", lambda *a: pytest.fail("decoded a folder that cannot be held"))
    from vit import train
    from vit.errors import run_cli
    argv = ["--data", str(tmp_path / "f"), "--img-size", "256", "--batch-size", "2", "--workers", "0"]
    with pytest.raises(SystemExit) as e:  # 16 x 3 x 256 x 256 bytes + 120 x a batch's 2 x 3 x 256 x 256 > 40 MB
        run_cli(lambda: train.main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.splitlines()[-1] == (
        f"error: {tmp_path / 'f'}: its 16 images held in memory at --img-size 256 take 3.1 MB, and a training step "
        "on batches of 2 about 47.2 MB more: more than 80% of the 50.0 MB available (MemAvailable); use --aug rrc, "
        "which decodes the images batch by batch instead of holding them, or a smaller --img-size or --batch-size")
    monkeypatch.undo()
    monkeypatch.setattr(memory, "available_memory", lambda: (64_000_000, "MemAvailable"))  # 50.3 MB of 51.2: a run
    assert len(data.folder_data(tmp_path / "f", TrainConfig(aug="cifar", batch_size=2), 256).train.x) == 14


def test_a_folder_without_augmentation_is_held_in_memory_and_resize_decodes_the_eval_view(tmp_path):
    root = write_scenes(tmp_path / "scenes", per_class=4)
    cfg = RECIPES["folder"].replace(batch_size=4)
    held = data.folder_data(root, cfg.replace(aug="none"), 16)  # 'none' means what it means for MNIST: identity
    assert isinstance(held.train, TensorLoader)
    x, y = next(iter(held.train))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 16, 16)
    assert torch.equal(held.prepare_train(x, y, torch.Generator())[0], held.prepare_eval(x))
    per_image = data.folder_data(root, cfg.replace(aug="resize"), 16)  # decoded every epoch, as validation is
    assert isinstance(per_image.train, data.FolderLoader)
    assert per_image.train.dataset.transform is per_image.held_out.dataset.transform
