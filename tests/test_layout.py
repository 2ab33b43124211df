"""The rules the layout keeps (README, "Architecture"), checked on the source itself."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "xpgrad"
SOURCES = sorted(PACKAGE.rglob("*.py"))
# "About 350 lines a module, about 60 a function": the hard limits leave some slack.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 70


def _imports(path):
    """Every module name ``path`` imports (``import a.b`` and ``from a.b import c`` give ``a.b``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _rel(path):
    return path.relative_to(PACKAGE.parent).as_posix()


def test_the_sources_are_found():
    assert len(SOURCES) > 10 and PACKAGE / "backend" / "__init__.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_only_the_backend_package_imports_cupy(path):
    cupy_imports = [m for m in _imports(path) if m == "cupy" or m.startswith(("cupy.", "cupyx"))]
    if path.parent.name == "backend":
        assert all(m == "cupy" for m in cupy_imports), f"{_rel(path)} imports CuPy internals: {cupy_imports}"
    else:
        assert not cupy_imports, f"{_rel(path)} imports {cupy_imports}; ask xpgrad.backend instead"


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_fused_or_generic_is_decided_only_in_the_backend(path):
    if path.parent.name == "backend":
        return
    switch = {"fused_enabled", "FUSED_ENV", "_fused", "set_fused", "use_fused"}
    for node in ast.walk(ast.parse(path.read_text())):
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
        assert name not in switch, f"{_rel(path)}:{node.lineno} reads the fused switch; call backend.get_ops"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("XPGRAD_FUSED"):
            raise AssertionError(f"{_rel(path)}:{node.lineno} reads XPGRAD_FUSED; only xpgrad.backend may")


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_modules_and_functions_fit_on_a_screen(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{_rel(path)} has {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{_rel(path)}:{node.lineno} {node.name} has {length} lines"
