"""The package's layering, which copying a part of it relies on: the core imports neither the commands
nor the tools, vit/model.py stands alone, and a tool that only reads files loads no training stack."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vit"
COMMANDS = {"train", "finetune"}  # what train.py and finetune.py run
TOOLS = {"bench", "predict", "sweep", "transfer", "visualize"}  # python -m vit.<tool>


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
