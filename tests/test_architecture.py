"""The package's shape, read from its source with ``ast``: layers that import only downward, no import
cycle (function-level imports count), no private name imported from another package, ``__init__`` files
that import nothing, and every function-level import declared with the reason it is lazy.

The picture and the checklist per kind of addition are in docs/architecture.md; this test is what holds
the code to it.
"""

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_llmmem"

# Bottom up: a module may import its own layer and the layers below it, never one above.
LAYERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("base", ("pytest_llmmem", "pytest_llmmem.errors", "pytest_llmmem.units", "pytest_llmmem.values", "pytest_llmmem.untrusted",
              "pytest_llmmem.record")),
    ("io", ("pytest_llmmem.io",)),
    ("model", ("pytest_llmmem.model",)),
    ("catalog", ("pytest_llmmem.catalog",)),
    ("hf", ("pytest_llmmem.hf",)),
    ("core", ("pytest_llmmem.core",)),
    ("serving", ("pytest_llmmem.serving",)),
    ("recipes", ("pytest_llmmem.recipes",)),
    ("trace", ("pytest_llmmem.trace",)),  # method = "trace": the model's own code on fake tensors (uses core's terms)
    ("estimator", ("pytest_llmmem.estimator",)),  # the dispatch: recipe, rule of thumb, engine or detailed
    ("fit", ("pytest_llmmem.fit",)),
    ("config", ("pytest_llmmem.config",)),
    ("report", ("pytest_llmmem.report",)),
    ("frontends", ("pytest_llmmem.frontends",)),
    # Thin re-exports where entry points and plugins import from (pyproject, README): nothing imports them.
    ("entry points", ("pytest_llmmem.cli", "pytest_llmmem.plugin", "pytest_llmmem.hookspecs", "pytest_llmmem.families")),
)

# Every function-level import inside the package, as "importer -> imported", grouped by why it waits.
# All of them are for start-up (llmmem check runs on every commit; the pytest plugin loads in every
# pytest run of every repo that installs the package): a module is loaded only by the run or the
# command that needs it. A function-level import that only dodges a cycle does not belong here: move
# the code it needs below both instead.
LAZY: Dict[str, Tuple[str, ...]] = {
    "`llmmem --help`, a usage error and each sub-command load only the modules that command needs": (
        "frontends.cli -> errors", "frontends.cli -> io.projects", "frontends.cli -> io.files", "frontends.cli -> config.load",
        "frontends.cli -> estimator", "frontends.cli -> frontends.repo_scan", "frontends.cli -> frontends.commands",
        "frontends.output -> report.text", "frontends.output -> report.github", "frontends.output -> errors",
        "frontends.output -> io.files", "frontends.output -> untrusted",
        "frontends.commands -> fit.search", "frontends.commands -> config.load", "frontends.commands -> estimator",
        "frontends.commands -> report.text", "frontends.commands -> units", "frontends.commands -> model.architecture",
        "frontends.commands -> frontends.measure", "frontends.commands -> report.diff", "frontends.commands -> errors",
        "frontends.commands -> catalog.registry", "frontends.commands -> hf.hub", "frontends.commands -> fit.serving",
        "frontends.commands -> hf.config", "frontends.commands -> io.files",
    ),
    "the pytest plugin imports nothing of the estimator unless --llmmem is given or the fixture is used": (
        "frontends.plugin -> frontends.pytest_checks",
    ),
    "an error message is shown rarely: its text is made safe for a CI log only then": (
        "errors -> untrusted",
    ),
    "the line of each key of a JSON file only for an error that names one (a check reads config.json without)": (
        "io.files -> io.json_lines", "config.model_config -> io.json_lines",
    ),
    "the terminal layout only when text is printed, not for --format json": (
        "report.text -> report.layout", "frontends.output -> report.layout", "frontends.commands -> report.layout",
    ),
    "importing a catalog submodule loads no registry: the package's names are looked up there on first use": (
        "catalog -> catalog.registry",
    ),
    "GitHub output only when the format is github": (
        "frontends.pytest_checks -> report.github",
    ),
    "pluggy (and the hookspecs that import it) only once a plugin is in play; the built-ins' table when a lookup needs it": (
        "catalog.registry -> catalog.hookspecs", "catalog.registry -> catalog.builtin", "catalog.builtin -> model.families",
    ),
    "a run loads the modules of its own kind only: recipes, the rule of thumb, serving engines, trainer-config readers, the Hub": (
        "estimator -> recipes.recipes", "estimator -> core.rule_of_thumb", "estimator -> serving.estimate",
        "estimator -> trace.estimate",
        "core.detailed -> core.rule_of_thumb",
        "config.load -> hf.hub", "config.load -> config.trainer_config", "config.load -> config.serve_keys",
        "config.load -> config.recipe_keys", "config.model_config -> hf.hub",
        "config.serve_keys -> serving.serve", "config.serve_keys -> serving.vllm_engine",
        "config.trainer_config -> config.readers.formats",
        "frontends.repo_scan -> config.readers.mapper",
        "fit.search -> fit.serving", "fit.search -> fit.recipes", "report.text -> serving.serve", "recipes.recipes -> serving.serve",
    ),
    "the trace imports torch (through trace.step) only after checking the measure extra is installed": (
        "trace.estimate -> trace.step",
    ),
    "the search for ways out runs only for a run over budget": (
        "frontends.output -> fit.search",
    ),
}

# __init__ files that still hold code (and so import at module level), with why.
INIT_WITH_CODE: Dict[str, str] = {}


def _modules() -> Dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class Import:
    def __init__(self, importer: str, target: str, names: List[str], line: int, lazy: bool) -> None:
        self.importer, self.target, self.names, self.line, self.lazy = importer, target, names, line, lazy

    def __repr__(self) -> str:
        return f"{self.importer}:{self.line} -> {self.target} {self.names}"


def _imports(module: str, path: Path) -> List[Import]:
    """Every import of a pytest_llmmem module in ``module``: module level, under ``if TYPE_CHECKING``, or in a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: List[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                if source == "pytest_llmmem" or source.startswith("pytest_llmmem."):
                    for alias in child.names:
                        sub = f"{source}.{alias.name}"
                        target = sub if sub in MODULES else source
                        found.append(Import(module, target, [alias.name], child.lineno, inner))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("pytest_llmmem"):
                        found.append(Import(module, alias.name, [], child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return found


IMPORTS = [imp for name, path in MODULES.items() for imp in _imports(name, path)]


def _layer(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (module.startswith(prefix + ".") and prefix != "pytest_llmmem"):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best[0]


def _short(module: str) -> str:
    return module[len("pytest_llmmem."):] if module.startswith("pytest_llmmem.") else module


def test_every_module_is_in_a_layer():
    assert [m for m in MODULES if _layer(m) is None] == []


def test_imports_go_only_downward():
    upward = [f"{imp!r} ({LAYERS[_layer(imp.importer)][0]} imports {LAYERS[_layer(imp.target)][0]})"
              for imp in IMPORTS if _layer(imp.target) > _layer(imp.importer)]
    assert upward == []


def test_nothing_imports_the_entry_points():
    top = len(LAYERS) - 1
    assert [imp for imp in IMPORTS if _layer(imp.target) == top and imp.importer != imp.target] == []


def _cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
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
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def test_no_import_cycle_counting_function_level_imports():
    edges: Dict[str, Set[str]] = {}
    for imp in IMPORTS:
        edges.setdefault(imp.importer, set()).add(imp.target)
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    # a -> b -> c -> a is one component; d -> a hangs off it; e imports itself (from . import e in e)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}) == [["a", "b", "c"], ["e"]]


def _package_of(module: str) -> str:
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def test_no_private_name_is_imported_across_packages():
    crossing = [imp for imp in IMPORTS for name in imp.names
                if name.startswith("_") and not name.startswith("__") and _package_of(imp.importer) != _package_of(imp.target)]
    assert crossing == []


def test_every_function_level_import_is_declared_with_its_reason():
    declared = {pair for pairs in LAZY.values() for pair in pairs}
    lazy = {f"{_short(imp.importer)} -> {_short(imp.target)}" for imp in IMPORTS if imp.lazy}
    assert sorted(lazy - declared) == [], "a function-level import that is not for start-up: import it at the top, or move the code"
    assert sorted(declared - lazy) == [], "declared lazy, but no longer imported in a function: drop it from LAZY"


def test_init_files_import_nothing_at_module_level():
    eager = [imp for imp in IMPORTS if MODULES[imp.importer].name == "__init__.py" and not imp.lazy
             and imp.importer not in INIT_WITH_CODE]
    assert eager == []
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name not in INIT_WITH_CODE:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body), name


def test_the_report_prints_ways_out_it_does_not_search_for_them():
    # fit.search ran 14 estimate() calls inside the report of the bundled example; the front-ends run it now
    assert [imp for imp in IMPORTS if imp.importer.startswith("pytest_llmmem.report") and imp.target.startswith("pytest_llmmem.fit")] == []
