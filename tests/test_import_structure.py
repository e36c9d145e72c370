"""The package's imports run one way (issue 25): model families -> shared pieces -> tools -> front ends (`cli`).

Read from the source (`ast`, every import statement, including those inside functions and `if` blocks), not by
importing anything:

- no import cycle between the modules of `src/lookwhere_hf` (an edge is an import statement; a package's own
  `__init__` running before its submodules is not counted);
- each module imports only modules of its own layer or a lower one ([`layer_of`]: the model families' files, the
  shared pieces, the tools, the front ends);
- nothing imports `lookwhere_hf.cli` (the command line sits at the top);
- no module imports another module's private name (a leading underscore; dunders such as `__version__` are fine):
  what two modules share is public and documented, or lives where it belongs;
- a model family's files that saved folders copy for `trust_remote_code` import their siblings with single-dot
  relative imports only (converters, which are not copied, may import from the package).

The checks are plain functions, so the tests at the end run them on a small tree that breaks each rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "lookwhere_hf"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_names(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file for every `.py` file under `root` (a package's `__init__.py` is the package)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _base_of(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an `ImportFrom` names (`from ..x import y` in `a.b.c` -> `a.x`)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, modules) -> str | None:
    """The longest prefix of `name` that is a module of the package (None for other packages)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def read_imports(modules: dict[str, Path]) -> list[tuple[str, str, str | None, int]]:
    """Every import of a package module by a package module: (importer, imported module, imported name or None for
    `import x.y`, line)."""
    found = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = _known(alias.name, modules)
                    if target is not None:
                        found.append((module, target, None, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                base = _base_of(module, path, node)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in modules:  # `from . import demo_assets`: the submodule itself
                        found.append((module, submodule, None, node.lineno))
                    elif (target := _known(base, modules)) is not None:
                        found.append((module, target, alias.name, node.lineno))
    return found


def import_graph(imports) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for importer, target, _, _ in imports:
        graph.setdefault(importer, set())
        if target != importer:
            graph[importer].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One import chain around a cycle, for the failure message (`a -> b -> a`)."""
    members, start = set(component), component[0]
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for successor in sorted(graph.get(path[-1], ())):
            if successor == start:
                return [*path, start]
            if successor in members and successor not in seen:
                seen.add(successor)
                paths.append([*path, successor])
    return component


def private_imports(imports) -> list[str]:
    return [
        f"{importer}:{line} imports {name} from {target}"
        for importer, target, name, line in imports
        if name is not None
        and name.startswith("_")
        and not (name.startswith("__") and name.endswith("__"))
        and target != importer
    ]


def cli_importers(imports, cli: str = f"{PACKAGE}.cli") -> list[str]:
    return sorted({f"{importer}:{line}" for importer, target, _, line in imports if target == cli and importer != cli})


def non_sibling_imports(modules: dict[str, Path], package: str = PACKAGE) -> list[str]:
    """Imports of a model family's copied files (all but `convert_*`) that are not single-dot relative imports of
    package modules, nor of other packages."""
    bad = []
    for module, path in modules.items():
        parts = module.split(".")
        if len(parts) != 4 or parts[1] != "models" or parts[3].startswith("convert_"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                bad.append(f"{module}:{node.lineno} imports from {'.' * node.level}{node.module or ''}")
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            bad += [f"{module}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == package]
    return bad


# The layers, bottom up; a module imports only modules of its own layer or below.
LAYERS = ("model families", "shared pieces", "tools", "front ends")
SHARED_PIECES = {"budget", "flops", "packed_linear", "utils", "image_processing", "demo_assets", "metrics"}
FRONT_ENDS = {"cli", "app"}


def layer_of(module: str) -> int:
    """0: a model family's files (not its converter); 1: the shared pieces (and the package's `__init__`); 2: the
    tools (training, export, benchmarking, visualization, model cards, converters, anything new); 3: the front ends."""
    parts = module.split(".")
    if len(parts) == 1:
        return 1
    if parts[1] == "models":
        is_converter = parts[-1].startswith("convert_") or parts[-1] == "conversion_utils"
        return 2 if is_converter else 0
    if parts[1] in SHARED_PIECES:
        return 1
    return 3 if parts[1] in FRONT_ENDS else 2


def upward_imports(imports) -> list[str]:
    return sorted(
        {
            f"{importer}:{line} ({LAYERS[layer_of(importer)]}) imports {target} ({LAYERS[layer_of(target)]})"
            for importer, target, _, line in imports
            if layer_of(target) > layer_of(importer)
        }
    )


def describe(modules: dict[str, Path]) -> dict[str, list]:
    imports = read_imports(modules)
    graph = import_graph(imports)
    return {
        "cycles": [" -> ".join(cycle_path(graph, c)) for c in find_cycles(graph)],
        "cli importers": cli_importers(imports),
        "private imports": private_imports(imports),
        "imports of a higher layer": upward_imports(imports),
        "non-sibling imports in model families": non_sibling_imports(modules),
    }


# ----------------------------------------------------------------------------------------------------- the package
def test_the_package_imports_run_one_way():
    modules = module_names(SOURCE)
    assert f"{PACKAGE}.cli" in modules and f"{PACKAGE}.models.lookwhere.modeling_lookwhere" in modules
    imports = read_imports(modules)
    assert len(imports) > 100  # the reader sees the package's imports (relative ones included)
    problems = {kind: found for kind, found in describe(modules).items() if found}
    assert not problems, "\n".join(f"{kind}:\n  " + "\n  ".join(found) for kind, found in problems.items())


def test_imports_inside_functions_are_read():
    """`export.py` reached the command line from inside a function before issue 25; such imports count too."""
    modules = module_names(SOURCE)
    imports = read_imports(modules)
    lazy = [
        (importer, target) for importer, target, _, _ in imports if importer == f"{PACKAGE}.benchmarking.deployment"
    ]
    assert (f"{PACKAGE}.benchmarking.deployment", f"{PACKAGE}.export") in lazy  # imported inside a function


# ----------------------------------------------------------------------------------------------------- the checks fail
def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    root = tmp_path / PACKAGE
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_names(root)


def test_a_cycle_is_found_also_through_function_level_and_package_imports(tmp_path):
    modules = _tree(
        tmp_path,
        {
            "tools/__init__.py": "",
            "tools/a.py": "from ..shared import helper\n",
            "shared.py": "def helper():\n    from .tools import a\n",
            "leaf.py": "import torch\n",
        },
    )
    found = describe(modules)
    assert found["cycles"] == [f"{PACKAGE}.shared -> {PACKAGE}.tools.a -> {PACKAGE}.shared"]
    assert not found["private imports"] and not found["cli importers"]


def test_an_import_of_a_higher_layer_is_found(tmp_path):
    modules = _tree(
        tmp_path,
        {
            "budget.py": "def calibrate():\n    from .export import export\n",
            "export.py": "from .budget import calibrate\n",
            "models/__init__.py": "",
            "models/fam/__init__.py": "",
            "models/fam/modeling_fam.py": "",
            "models/fam/convert_fam.py": "from ...budget import calibrate\nfrom . import modeling_fam\n",
        },
    )
    found = describe(modules)
    assert found["imports of a higher layer"] == [
        f"{PACKAGE}.budget:2 (shared pieces) imports {PACKAGE}.export (tools)"
    ]
    assert found["cycles"] == [f"{PACKAGE}.budget -> {PACKAGE}.export -> {PACKAGE}.budget"]


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    modules = _tree(
        tmp_path,
        {"bench/__init__.py": "from .main import run\n", "bench/main.py": "from lookwhere_hf.bench import other\n"},
    )
    assert describe(modules)["cycles"] == [f"{PACKAGE}.bench -> {PACKAGE}.bench.main -> {PACKAGE}.bench"]


def test_private_names_cli_imports_and_family_escapes_are_found(tmp_path):
    modules = _tree(
        tmp_path,
        {
            "cli.py": "from ._helpers import _shared\n",
            "_helpers.py": "_shared = 1\n__version__ = '1'\n",
            "export.py": "def f():\n    from .cli import main\n",
            "app.py": "from ._helpers import __version__\nimport lookwhere_hf.cli\n",
            "models/__init__.py": "",
            "models/fam/__init__.py": "",
            "models/fam/modeling_fam.py": "from .configuration_fam import C\nfrom ...utils import x\n",
            "models/fam/configuration_fam.py": "import lookwhere_hf.utils\nC = 1\n",
            "models/fam/convert_fam.py": "from ...utils import x\n",
            "utils.py": "x = 1\n",
        },
    )
    found = describe(modules)
    assert found["private imports"] == [f"{PACKAGE}.cli:1 imports _shared from {PACKAGE}._helpers"]
    assert found["cli importers"] == [f"{PACKAGE}.app:2", f"{PACKAGE}.export:2"]
    assert found["non-sibling imports in model families"] == [
        f"{PACKAGE}.models.fam.configuration_fam:1 imports {PACKAGE}.utils",
        f"{PACKAGE}.models.fam.modeling_fam:2 imports from ...utils",
    ]
    assert not found["cycles"]
