"""The Python API as README shows it: its snippet runs as written (on a tiny synthetic MNIST), and
`import vit` gives a notebook user what it needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import vit
from helpers import write_mnist  # tests/helpers.py: tiny datasets written by the tests

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    """The ```python block under README's "Python" heading."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^#+ [^\n]*Python[^\n]*\n(.*?)(?=^#+ )", text, re.S | re.M)
    assert section, "README has no heading with 'Python'"
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert block, "README's Python section has no ```python block"
    return block.group(1)


def test_readme_python_snippet_trains_mnist(tmp_path, monkeypatch, capsys):
    code = readme_snippet()
    assert '"data"' in code and "vit.fit(" in code
    data = write_mnist(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # the snippet's "data" and "runs/..." are relative to the working folder
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"test accuracy \d+\.\d\d%", printed[-1])
    assert (tmp_path / "runs" / "mnist-python" / "results.json").exists() and data == tmp_path / "data"


def test_the_public_names_exist():
    for name in vit.__all__:
        assert hasattr(vit, name), name
    assert {"ViTConfig", "VisionTransformer", "PRESETS", "load_checkpoint", "TrainConfig", "RECIPES",
            "tensor_data", "folder_data", "fit"} <= set(vit.__all__)


def test_a_training_set_smaller_than_a_batch_trains_on_it_whole(tmp_path):
    data = vit.tensor_data("mnist", write_mnist(tmp_path / "data", n_train=96), vit.RECIPES["mnist"])
    assert len(data.train) == 1 and next(iter(data.train))[0].shape[0] == 96


def test_train_config_checks_and_replace():
    cfg = vit.RECIPES["mnist"].replace(epochs=3)
    assert cfg.epochs == 3 and vit.RECIPES["mnist"].epochs == 10  # a copy; recipes are frozen
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got -1"):
        cfg.replace(lr=-1)
    with pytest.raises(ValueError, match=r"unmasked_epochs must be in \[0, epochs\], got 4"):
        cfg.replace(unmasked_epochs=4)
    with pytest.raises(ValueError, match=r"epochs must be >= 1, got True"):
        cfg.replace(epochs=True)  # a bool is not an epoch count
