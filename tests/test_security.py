"""The security rules of issue 8, checked on the syntax trees of vit/*.py, train.py and finetune.py:
no pickle, no torch.load without weights_only=True, no shell=True, no eval/exec, tar extraction only
through vit.download.extract_tar or tarfile's "data" filter, network access only in vit/download.py,
and no URL in the code besides the dataset mirrors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vit.datasets import _SOURCES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*sorted((ROOT / "vit").glob("*.py")), ROOT / "train.py", ROOT / "finetune.py"]
MIRRORS = {mirror for source in _SOURCES.values() for mirror in source.mirrors}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _name(node: ast.expr) -> str:
    """'torch.load' for the expression torch.load, 'eval' for eval, '().eval' for a method of any other
    expression (`copy.deepcopy(m).eval` is a module's eval, not the builtin); '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value) or '()'}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> object:
    """The constant value of keyword `name` in `call` (None when absent or not a constant)."""
    return next((k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    return [(_name(node.func), node) for node in ast.walk(_tree(path)) if isinstance(node, ast.Call)]


FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "os.system", "os.popen"}  # model.eval() is fine


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_code_execution_from_data(path):
    for name, call in _calls(path):
        where = f"{path.name}:{call.lineno}"
        assert name not in FORBIDDEN_CALLS, f"{where}: {name}()"
        assert _keyword(call, "shell") is not True, f"{where}: shell=True"
        if name == "torch.load":
            assert _keyword(call, "weights_only") is True, f"{where}: torch.load without weights_only=True"
        if name.rpartition(".")[2] in ("extractall", "extract"):
            assert _keyword(call, "filter") == "data", f"{where}: tar extraction without filter='data'"
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                assert module.split(".")[0] not in {"pickle", "marshal", "shelve", "dill", "cloudpickle"}, \
                    f"{path.name}:{node.lineno}: imports {module}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_network_only_in_download_and_only_listed_urls(path):
    for name, call in _calls(path):
        if name.endswith(("urlopen", "urlretrieve", "create_connection", "HTTPConnection", "HTTPSConnection")):
            assert path.name == "download.py", f"{path.name}:{call.lineno}: network access outside vit/download.py"
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(("http:", "https:")):
            assert node.value in MIRRORS, f"{path.name}:{node.lineno}: URL {node.value!r} is not a listed mirror"


def test_the_checks_catch_what_they_look_for(tmp_path):
    """Each rule fails on a file that breaks it (so the tests above can fail), and the other rule does not."""
    code, network = test_no_code_execution_from_data, test_network_only_in_download_and_only_listed_urls
    bad = {
        "a.py": ("import pickle\n", code),
        "b.py": ("import torch\ntorch.load('x')\n", code),
        "c.py": ("import subprocess\nsubprocess.run('ls', shell=True)\n", code),
        "d.py": ("eval('1')\n", code),
        "e.py": ("import tarfile\ntarfile.open('a').extractall('b')\n", code),
        "f.py": ("URL = 'https://example.com/x'\n", network),
        "g.py": ("import urllib.request\nurllib.request.urlopen('x')\n", network),
    }
    for name, (text, rule) in bad.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(AssertionError):
            rule(path)
        (network if rule is code else code)(path)  # the other rule passes it: each catches its own
