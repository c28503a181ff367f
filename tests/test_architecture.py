"""The layer rules of ../shared/ARCHITECTURE.md, checked on the code as written.

The import graph of vlmjax/ is read with `ast` (imports at module level, inside functions and
under `if TYPE_CHECKING:` alike; relative imports resolved; importing `a.b.c` also runs the
packages `a.b` and `a` it lives in). It must have no cycle, every import from one part into
another must be one the table below allows, no module may be imported by a name computed at
run time (the graph could not see it), and imports inside functions are kept for dependencies
that some users of the module must not pay for (listed here, each with its reason).
"""

import ast
import collections
import os
from collections.abc import Iterator

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vlmjax")

# Faces (entry points) may use anything.
FACES = ("vlmjax.evaluate", "vlmjax.caption", "vlmjax.convert", "vlmjax.report", "vlmjax.cli",
         "vlmjax.study", "vlmjax.train.__main__")
# Bottom-level modules every part above them may use.
SHARED = ("errors", "registry", "options", "batch")
# part -> the parts it may import (ARCHITECTURE.md's table, and where the code extends it).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "registry": {"errors"},
    "options": {"errors"},
    "batch": set(),
    "parallel": set(),
    "tokenizers": set(),
    "models": {"parallel"},
    "objectives": {"parallel"},
    "data": {"tokenizers", "parallel"},
    # Extension: CoOp tokenises its class prompts (transfer never imports models or train).
    "transfer": {"tokenizers"},
    # Extension: decoding returns text through the tokenizer.
    "generation": {"models", "tokenizers"},
    # Extension: objectives' pure array functions (FILIP's token-wise similarity, CoCa's
    # sequence log-likelihood) score evaluations the way training scores them.
    "evaluators": {"models", "data", "transfer", "generation", "parallel", "tokenizers",
                   "objectives"},
    # Extension: train reads and completes configs.
    "train": {"models", "objectives", "data", "evaluators", "parallel", "tokenizers", "config"},
    # Extension: interop writes configs (workdir_writer: base_config) and reads or writes runs
    # through the run loader only (see ONLY_THROUGH).
    "interop": {"models", "tokenizers", "config", "train"},
    # config dispatches to the registries (ONLY_THROUGH); extension: mesh axes from parallel.
    "config": {"parallel", "data", "evaluators", "models", "objectives", "tokenizers"},
}
# (part, part it imports) -> the only modules of the second part it may import.
ONLY_THROUGH: dict[tuple[str, str], set[str]] = {
    ("config", "data"): {"vlmjax.data.registry"},
    ("config", "evaluators"): {"vlmjax.evaluators.registry"},
    ("config", "models"): {"vlmjax.models.registry"},
    ("config", "objectives"): {"vlmjax.objectives.registry"},
    ("config", "tokenizers"): {"vlmjax.tokenizers.registry"},
    ("interop", "train"): {"vlmjax.train.run"},
}
# Imports of vlmjax modules inside functions, outside faces: (module, imported) -> why.
LATE_IMPORTS = {
    ("vlmjax.data.tfds_images", "vlmjax.data.karpathy_retrieval"):
        "our TFDS builders import tensorflow_datasets, which config validation and training on "
        "on-disk data (importers of tfds_images through the evaluators) never need",
    ("vlmjax.data.tfds_images", "vlmjax.data.manual_benchmarks"): "as karpathy_retrieval",
    ("vlmjax.interop.hf_files", "vlmjax.tokenizers.clip_bpe"):
        "only the tokenizer kind a Hugging Face directory holds is loaded (0.3 s of tokenizer "
        "libraries otherwise)",
    ("vlmjax.interop.hf_files", "vlmjax.tokenizers.hf_tokenizer"): "as clip_bpe",
    ("vlmjax.interop.sources", "vlmjax.interop.hf_import"):
        "one weight source's dependencies never load for another (torch, ml_dtypes, ...)",
    ("vlmjax.interop.sources", "vlmjax.interop.open_clip_import"): "as hf_import",
    ("vlmjax.interop.sources", "vlmjax.interop.big_vision_import"): "as hf_import",
}


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for directory, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


MODULES = _modules()
Import = collections.namedtuple("Import", "source target line late")


def _tree(module: str) -> ast.Module:
    with open(MODULES[module], encoding="utf-8") as f:
        return ast.parse(f.read(), MODULES[module])


def _resolve(name: str) -> str | None:
    """The module a dotted name imports (itself or the longest prefix that is one), in vlmjax."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> Iterator[Import]:
    """Every vlmjax module `module` imports, wherever in the file."""
    path = MODULES[module]
    tree = _tree(module)
    late_nodes = {id(inner) for node in ast.walk(tree)
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                  for inner in ast.walk(node)}
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        for name in names:
            target = _resolve(name)
            if target and target != module:
                yield Import(module, target, node.lineno, id(node) in late_nodes)


IMPORTS = [imp for module in MODULES for imp in _imports(module)]


def _graph() -> dict[str, set[str]]:
    """module -> modules whose import it runs: what it imports and their enclosing packages."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        graph[imp.source].add(imp.target)
        package = imp.target.rpartition(".")[0]
        while package:  # importing a.b.c runs a.b (and a) first, unless the importer is in it
            if package in MODULES and not (imp.source + ".").startswith(package + "."):
                graph[imp.source].add(package)
            package = package.rpartition(".")[0]
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected set of modules (Tarjan, then BFS)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        start, inside = component[0], set(component)
        previous, queue = {start: None}, collections.deque([start])
        while queue:
            v = queue.popleft()
            for w in sorted(graph[v] & inside):
                if w == start:
                    path = [v]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    cycles.append([*reversed(path), start])
                    queue.clear()
                    break
                if w not in previous:
                    previous[w] = v
                    queue.append(w)
    return cycles


def part(module: str) -> str:
    """The part of ARCHITECTURE.md a module belongs to ("faces" for entry points)."""
    if any(module == face or module.startswith(face + ".") for face in FACES):
        return "faces"
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "vlmjax"


def may_import(source: str, target: str) -> bool:
    """Whether the table lets `source` import `target`."""
    a, b = part(source), part(target)
    if a == b or a == "faces":
        return True
    if a not in ALLOWED:
        return False
    shared = set(SHARED) if a not in SHARED else set()
    allowed = ALLOWED[a] | shared | ({"errors"} if a != "errors" else set())
    return b in allowed and target in ONLY_THROUGH.get((a, b), {target})


def test_the_import_graph_has_no_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (module-level and inside functions):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles)


def test_every_module_belongs_to_a_known_part():
    unknown = sorted({part(m) for m in MODULES} - set(ALLOWED) - {"faces", "vlmjax"})
    assert not unknown, f"parts missing from the table: {unknown}; add them to ALLOWED"


def test_parts_import_only_what_the_table_allows():
    broken = sorted({f"{part(i.source)} -> {part(i.target)}: {i.source} imports {i.target} "
                     f"({os.path.relpath(MODULES[i.source], os.path.dirname(ROOT))}:{i.line})"
                     for i in IMPORTS if not may_import(i.source, i.target)})
    assert not broken, "imports the layer table does not allow:\n" + "\n".join(broken)


def test_no_module_is_imported_by_a_name_computed_at_run_time():
    found = []
    for module in MODULES:
        for node in ast.walk(_tree(module)):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("importlib.import_module", "import_module", "__import__"):
                    found.append(f"{module}:{node.lineno} {name}(...)")
    assert not found, ("imports by name escape the import graph; import the module (inside a "
                       "function for an optional dependency):\n" + "\n".join(found))


def test_imports_inside_functions_are_for_dependencies_some_users_must_not_pay_for():
    late = sorted({(i.source, i.target) for i in IMPORTS if i.late and part(i.source) != "faces"})
    unlisted = [f"{s} imports {t} inside a function" for s, t in late if (s, t) not in LATE_IMPORTS]
    assert not unlisted, ("import these at module level, or list them in LATE_IMPORTS with the "
                          "reason:\n" + "\n".join(unlisted))
    stale = sorted(set(LATE_IMPORTS) - set(late))
    assert not stale, f"LATE_IMPORTS lists imports that are gone: {stale}"


@pytest.mark.parametrize("source, target, allowed", [
    ("vlmjax.models.vit", "vlmjax.train.loop", False),
    ("vlmjax.models.vit", "vlmjax.data.datasets", False),
    ("vlmjax.objectives.coca", "vlmjax.models.coca", False),
    ("vlmjax.transfer.coop", "vlmjax.train.loop", False),
    ("vlmjax.transfer.coop", "vlmjax.models.text", False),
    ("vlmjax.data.benchmarks", "vlmjax.evaluators.zeroshot", False),
    ("vlmjax.evaluators.zeroshot", "vlmjax.train.step", False),
    ("vlmjax.config.validate", "vlmjax.evaluators.zeroshot", False),
    ("vlmjax.config.validate", "vlmjax.evaluators.registry", True),
    ("vlmjax.parallel.mesh", "vlmjax.config.validate", False),
    ("vlmjax.interop.hf_export", "vlmjax.train.checkpoint", False),
    ("vlmjax.interop.hf_export", "vlmjax.train.run", True),
    ("vlmjax.evaluators.zeroshot", "vlmjax.registry", True),
    ("vlmjax.errors", "vlmjax.registry", False),
    ("vlmjax.evaluate", "vlmjax.train.loop", True),
    ("vlmjax.train.__main__", "vlmjax.cli", True),
])
def test_the_table_refuses_every_never(source, target, allowed):
    """The check itself: ARCHITECTURE.md's nevers are refused, its extensions allowed."""
    assert may_import(source, target) == allowed


def test_a_cycle_through_an_import_inside_a_function_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert _cycles(graph) == []
    graph["c"].add("a")  # e.g. a late import in c
    assert _cycles(graph) == [["a", "b", "c", "a"]]
