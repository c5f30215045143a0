"""The package's layering, which studying and copying it rely on: the study shelf (the idea) imports only
torch, numpy, Pillow, the standard library and its own shelf, each file reaching the plumbing through at
most one door; the core imports neither the commands nor the tools; the copy-paste units import only
each other; a tool that only reads files loads no training stack."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vit"
COMMANDS = {"train", "finetune"}  # what train.py and finetune.py run
TOOLS = {"bench", "predict", "sweep", "transfer", "visualize"}  # python -m vit.<tool>
# the files a student reads for the idea: the model, augmentation, byte formats, checkpoint mapping, the
# training loop and its configs, the loaders, and the error vocabulary they share
STUDY = {"model", "augment", "formats", "weights", "config", "recipes", "engine", "data", "datasets", "folders",
         "errors"}
# the one plumbing module a study file may call: the loop's run folder, the datasets' downloads, the folder
# loader's memory check
DOORS = {"engine": {"runs"}, "datasets": {"download"}, "data": {"memory"}}


def _vit_imports(path: Path) -> set[str]:
    """The package modules a file imports: `from vit.x import`, `from .x import`, `import vit.x`, `from vit import x`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("vit")):
            module = (node.module or "").removeprefix("vit").lstrip(".")
            found |= {module.split(".")[0]} if module else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vit.")}
    return found


def test_the_core_imports_neither_the_commands_nor_the_tools():
    core = [p for p in PACKAGE.glob("*.py") if p.stem not in COMMANDS | TOOLS | {"__init__"}]
    assert len(core) > 10
    for path in core:
        assert not _vit_imports(path) & (COMMANDS | TOOLS), f"{path.name} imports {_vit_imports(path) & (COMMANDS | TOOLS)}"


def test_the_commands_import_no_tool():
    for name in COMMANDS:
        imported = _vit_imports(PACKAGE / f"{name}.py")
        assert "cli" in imported and not imported & TOOLS, imported


def _external_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return roots | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}


def test_the_study_shelf_imports_only_its_shelf_and_one_door():
    assert STUDY | set(DOORS) <= {p.stem for p in PACKAGE.glob("*.py")}
    for name in STUDY:
        path = PACKAGE / f"{name}.py"
        outside = _external_imports(path) - sys.stdlib_module_names - {"torch", "numpy", "PIL"}
        assert not outside, f"{name}.py imports {outside}"
        plumbing = _vit_imports(path) - STUDY
        assert plumbing == DOORS.get(name, set()), f"{name}.py reaches the plumbing through {plumbing}"


def test_the_copy_paste_units_import_only_each_other():
    assert _vit_imports(PACKAGE / "model.py") == set() and _vit_imports(PACKAGE / "formats.py") == set()
    assert _vit_imports(PACKAGE / "weights.py") == {"model", "formats"}


def test_imports_inside_the_package_are_relative():
    """`from .x import`, never `from vit.x import`: a unit copied under another package name still imports."""
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            absolute = (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vit")
                        or isinstance(node, ast.Import) and any(a.name.startswith("vit") for a in node.names))
            assert not absolute, f"{path.name}:{node.lineno} imports the package by name"


def test_model_py_imports_only_torch_and_the_standard_library():
    tree = ast.parse((PACKAGE / "model.py").read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert roots == {"__future__", "dataclasses", "math", "torch"}


def test_nothing_in_the_package_loads_code_from_a_path():
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        for call in ("spec_from_file_location", "exec_module", "run_path", "SourceFileLoader"):
            assert call not in text, f"{path.name} loads code from a file path ({call})"


def test_the_file_reading_tools_load_no_training_stack():
    code = "import sys, vit.predict, vit.visualize; print(' '.join(sorted(m for m in sys.modules if m.startswith('vit'))))"
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split())
    assert {"vit.errors", "vit.weights", "vit.folders"} <= loaded
    assert not loaded & {"vit.cli", "vit.engine", "vit.data", "vit.config", "vit.runs", "vit.train"}, loaded
