"""The layering rules, read from the source: what each layer may import, and what stays free of PyTorch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raypfl"

# layer → layers of raypfl it must never import (at module level or inside a function)
FORBIDDEN = {
    "models": ("fl", "sim", "runtime", "data"),
    "data": ("fl", "sim", "runtime", "models"),
    "fl": ("runtime",),
    "sim": ("fl", "runtime"),
}


def raypfl_imports(path: Path) -> set[str]:
    """Every `raypfl.*` module a file imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("raypfl.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raypfl"):
            out.add(node.module)
            if node.module == "raypfl":
                out |= {f"raypfl.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_what_is_below_them(layer: str) -> None:
    wrong = [f"{path.relative_to(PACKAGE.parent)} imports {module}"
             for path in sorted((PACKAGE / layer).rglob("*.py"))
             for module in sorted(raypfl_imports(path))
             if module.split(".")[1] in FORBIDDEN[layer]]
    assert not wrong, "\n".join(wrong)


def test_rules_see_an_import_that_breaks_them(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from raypfl.runtime.pool import Pilot\n    import raypfl.fl.server\n")
    assert raypfl_imports(bad) == {"raypfl.runtime.pool", "raypfl.fl.server"}


def test_the_driver_and_the_aggregator_never_import_pytorch() -> None:
    code = ("import sys; import raypfl.cli, raypfl.config, raypfl.models, raypfl.fl.server, raypfl.runtime.driver, "
            "raypfl.runtime.aggregator, raypfl.runtime.dispatch, raypfl.runtime.pool, raypfl.tune, raypfl.compare; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
