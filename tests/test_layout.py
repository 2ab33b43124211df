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
        # NCCL is a module of its own in CuPy, which its documented API names cupy.cuda.nccl.
        allowed = {"cupy"} | ({"cupy.cuda.nccl"} if path.name == "nccl.py" else set())
        assert set(cupy_imports) <= allowed, f"{_rel(path)} imports CuPy internals: {cupy_imports}"
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


def _module_name(path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict:
    """Module -> the xpgrad modules it imports, from every import statement in it (function bodies included)."""
    modules = {_module_name(p): p for p in SOURCES}

    def known(name):  # the module itself, or the package whose attribute it is
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(known(a.name) for a in node.names if a.name.startswith("xpgrad"))
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module or ""
                if base.startswith("xpgrad"):
                    deps.update(known(f"{base}.{a.name}") for a in node.names)
        graph[name] = deps - {name, ""}
    return graph


def test_no_import_cycle_inside_xpgrad():
    """A layer imports only the layers below it; a name needed from above is looked up when used, as DeZero
    does (``xpgrad.tensor`` finds its operators' Functions that way)."""
    graph = _import_graph()
    assert "xpgrad.tensor" in graph and "xpgrad.functions" in graph["xpgrad.functions.network"] | {"xpgrad.functions"}
    state, path = {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_public_modules_are_attributes_of_the_package():
    """``import xpgrad`` then ``xpgrad.optim`` (and the rest) work, in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import xpgrad\n"
            "names = [xpgrad.optim.Adam, xpgrad.nn.Linear, xpgrad.functional.relu, xpgrad.models.mlp, xpgrad.Tensor,\n"
            "         xpgrad.graph_step, xpgrad.no_grad, xpgrad.manual_seed, xpgrad.ops.Matmul, xpgrad.backend.get_ops]\n"
            "print(len(names))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert proc.returncode == 0 and proc.stdout.strip() == "10", proc.stderr
