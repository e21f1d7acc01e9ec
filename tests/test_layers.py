"""The package's layers: lower workflow steps never import higher ones, and no import cycle exists.

Every import counts, at module level or inside a function, under TYPE_CHECKING or not: a lazy
import kept for start-up time is fine, but it may not point upwards. ARCHITECTURE.md draws the
same layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "maquette"

# Lowest first. A module may import its own layer or a lower one (cycles are caught apart).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("maquette.errors", "maquette.faults"),
    (
        "maquette.config",
        "maquette.data_settings",
        "maquette.model_spec",
        "maquette.platform_settings",
        "maquette.window_spec",
    ),
    # The typed record of a version: pydantic and model_spec only, so the registry can use it.
    ("maquette.version_record",),
    ("maquette.data",),
    ("maquette.features",),
    ("maquette.stream",),
    # Feature repos' helpers: Feast views of the declared stream, sources of offline tables.
    ("maquette.feast_repo",),
    ("maquette.registry",),
    ("maquette.training",),
    ("maquette.serving",),
    ("maquette.monitoring",),
    ("maquette.platform",),
    # The web console reads the registry, the platform's status and the monitoring results.
    ("maquette.console",),
    ("maquette.bench",),
    # `maquette init`: writes a project's files; only the CLI uses it.
    ("maquette.project",),
    ("maquette.cli", "maquette.__main__"),
    # The demo dataset is an adapter: it may use the library, the library never uses it.
    ("maquette.examples",),
    # The curated public API re-exports from everywhere; nothing inside imports it.
    ("maquette",),
)
# Adapters and checkouts outside the package: the library never imports them.
OUTSIDE = ("flows", "bentos", "feature_repo", "tests")


def modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(package: Path) -> dict[str, set[str]]:
    """Module -> the modules (of the package, or outside names) it imports anywhere in its body."""
    known = modules(package)
    root = package.name

    def resolve(name: str) -> str:
        if name.split(".")[0] != root:
            return name  # outside the package: kept whole, for the message
        while name not in known and "." in name:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        found: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(resolve(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                # `from maquette.x import y` imports maquette.x.y when y is a module.
                if module.split(".")[0] == root:
                    found.update(resolve(f"{module}.{a.name}") for a in node.names)
                else:
                    found.add(module)
        edges[name] = {
            t
            for t in found
            if (t == root or t.startswith(root + ".") or t.split(".")[0] in OUTSIDE)
            and t != name
            and not name.startswith(t + ".")  # a module importing its own package's __init__
        }
    return edges


def rank(module: str) -> int:
    """The module's layer: the longest matching prefix wins (`maquette` alone is the top)."""
    best, depth = len(LAYERS), -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and prefix.count(".") > depth:
                best, depth = i, prefix.count(".")
    return best


def upward_imports(package: Path) -> list[str]:
    """Each import that points to a higher layer or outside the package, as 'a -> b'."""
    bad = []
    for module, targets in imports(package).items():
        for target in sorted(targets):
            if target.split(".")[0] in OUTSIDE or rank(target) > rank(module):
                bad.append(f"{module} -> {target}")
    return bad


def cycles(package: Path) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph = imports(package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_module_belongs_to_a_declared_layer() -> None:
    undeclared = [m for m in modules(PACKAGE) if rank(m) == len(LAYERS) and m != "maquette"]
    assert not undeclared, f"add these to LAYERS in tests/test_layers.py: {undeclared}"


def test_no_module_imports_a_higher_layer() -> None:
    assert upward_imports(PACKAGE) == []


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(PACKAGE) == []


def test_only_the_public_api_and_adapters_use_the_example_dataset() -> None:
    users = sorted(
        m
        for m, targets in imports(PACKAGE).items()
        if any(t.startswith("maquette.examples") for t in targets)
        and not m.startswith("maquette.examples")
    )
    assert users == []


@pytest.fixture
def layered_package(tmp_path: Path) -> Path:
    """A small package named maquette with a config module and a serving module."""
    package = tmp_path / "maquette"
    (package / "serving").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "config.py").write_text("import os\n")
    (package / "serving" / "__init__.py").write_text("")
    (package / "serving" / "predictor.py").write_text("from maquette.config import os\n")
    return package


def test_layers_check_catches_a_lazy_upward_import(layered_package: Path) -> None:
    (layered_package / "config.py").write_text(
        "def f():\n    from maquette.serving import predictor\n    return predictor\n"
    )
    assert upward_imports(layered_package) == ["maquette.config -> maquette.serving.predictor"]
    assert cycles(layered_package) == [["maquette.config", "maquette.serving.predictor"]]


def test_layers_check_catches_the_library_importing_an_adapter(layered_package: Path) -> None:
    (layered_package / "serving" / "predictor.py").write_text("import flows.train\n")
    assert upward_imports(layered_package) == ["maquette.serving.predictor -> flows.train"]


def test_layers_check_accepts_a_downward_import(layered_package: Path) -> None:
    assert upward_imports(layered_package) == []
    assert cycles(layered_package) == []
