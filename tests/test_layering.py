"""The dependency rule of docs/architecture.md, checked on the source (parsed with ast, never imported).

A module may import only from its own layer or a lower one. Within a layer, one package may import
another only where SAME_LAYER lists it. No two modules may import each other, directly or through
others (any strongly connected component of two or more modules is a cycle). Every module under
src/seektune must sit in a layer, so a new package has to be placed before it can land.

Every import counts: top-level, inside functions, under `if TYPE_CHECKING:`. A relative import is
resolved to the absolute module it names; `from ..data import IGNORE_INDEX` names the package
`seektune.data`, `from ..data import formats` the submodule `seektune.data.formats` (the target is the
longest prefix that is a module or package in the tree).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "seektune"

# lowest first; a module belongs to the longest unit (dotted prefix) that contains it
LAYERS: dict[str, int] = {
    "seektune.utils": 0,
    "seektune.models": 1,
    "seektune.data": 2,
    "seektune.config": 3,
    "seektune.engine": 4,
    "seektune.eval": 5,
    "seektune.stages": 6,
    "seektune.export": 7,
    "seektune.serve": 7,
    "seektune.tune": 7,
    "seektune.federated": 7,
    "seektune.ui": 7,
    "seektune.cli": 8,
    "seektune.demo": 8,
    "seektune.__main__": 8,
}
# the package root imports nothing, so anything may import it (`__version__`) and it may import nothing
ROOT_LAYER = -1

# imports between different units of the same layer that are allowed (importer, imported)
SAME_LAYER: set[tuple[str, str]] = {
    ("seektune.serve", "seektune.export"),   # serve loads what export wrote
    ("seektune.ui", "seektune.export"),      # the Export page runs export_run
    ("seektune.ui", "seektune.serve"),       # the Chat page loads models as serve does
    ("seektune.__main__", "seektune.cli"),   # `python -m seektune` is the CLI
    ("seektune.cli", "seektune.demo"),       # `seektune demo`
}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    where: str  # "src/seektune/...py:LINE"


# ---------------------------------------------------------------- reading the tree


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def tree_modules(src: Path = SRC) -> dict[str, Path]:
    """Every module and package under src/seektune (a folder holding .py files counts as a package)."""
    mods: dict[str, Path] = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        mods[module_name(path, src)] = path
        for parent in path.relative_to(src).parents:
            if parent.parts:  # namespace packages (a folder without __init__.py) are packages too
                mods.setdefault(".".join(parent.parts), src / parent)
    return mods


def _longest(name: str, known: set[str]) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in known:
            return cand
    return None


def imports_of(mod: str, path: Path, known: set[str], src: Path = SRC) -> list[Edge]:
    """Every seektune module `mod` imports, as edges resolved against the modules in `known`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = mod if is_pkg else mod.rpartition(".")[0]
    rel = path.relative_to(src.parent).as_posix()
    edges: list[Edge] = []

    def add(target: str | None, node: ast.AST) -> None:
        edge = Edge(mod, target or "", f"{rel}:{node.lineno}")
        if target is not None and target != mod and edge not in edges:
            edges.append(edge)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                    add(_longest(alias.name, known), node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level - 1 > len(base) - 1:
                    raise AssertionError(f"{rel}:{node.lineno}: relative import goes above the package root")
                base = base[: len(base) - (node.level - 1)]
                if node.module:
                    base += node.module.split(".")
                absolute = ".".join(base)
            else:
                absolute = node.module or ""
            if absolute != ROOT and not absolute.startswith(ROOT + "."):
                continue
            for alias in node.names:
                sub = f"{absolute}.{alias.name}"
                add(sub if alias.name != "*" and sub in known else _longest(absolute, known), node)
    return edges


def source_graph(src: Path = SRC) -> tuple[set[str], list[Edge]]:
    mods = tree_modules(src)
    known = set(mods)
    edges: list[Edge] = []
    for mod, path in mods.items():
        if path.suffix == ".py":
            edges += imports_of(mod, path, known, src)
    return known, edges


# ---------------------------------------------------------------- the checker


def unit_of(mod: str) -> str | None:
    if mod == ROOT:
        return ROOT
    return _longest(mod, set(LAYERS))


def layer_of(mod: str) -> int | None:
    unit = unit_of(mod)
    if unit is None:
        return None
    return ROOT_LAYER if unit == ROOT else LAYERS[unit]


def _name(layer: int) -> str:
    return "root" if layer == ROOT_LAYER else f"L{layer}"


def cycles(nodes: set[str], edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan, iterative)."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        succ.setdefault(e.src, []).append(e.dst)
        succ.setdefault(e.dst, [])
    for v in succ.values():
        v.sort()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    counter = 0
    for start in sorted(succ):
        if start in index:
            continue
        work = [(start, iter(succ[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) >= 2:
                        comps.append(sorted(comp))
            elif nxt not in index:
                index[nxt] = low[nxt] = counter
                counter += 1
                stack.append(nxt)
                on_stack.add(nxt)
                work.append((nxt, iter(succ[nxt])))
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
    return sorted(comps)


def check(modules: set[str], edges: list[Edge]) -> list[str]:
    """Every breach of the rule, one line each; empty when the graph obeys it."""
    problems: list[str] = []
    for mod in sorted(modules):
        if layer_of(mod) is None:
            problems.append(f"{mod}: not in any layer (add its package to LAYERS in tests/test_layering.py "
                            f"and to docs/architecture.md)")
    for e in sorted(edges, key=lambda e: (e.src, e.dst, e.where)):
        ls, ld = layer_of(e.src), layer_of(e.dst)
        if ls is None or ld is None:
            continue  # reported above
        us, ud = unit_of(e.src), unit_of(e.dst)
        if ld > ls:
            problems.append(f"{e.where}: upward import {e.src} -> {e.dst} ({_name(ls)} -> {_name(ld)})")
        elif ld == ls and us != ud and (us, ud) not in SAME_LAYER:
            problems.append(f"{e.where}: same-layer import {e.src} -> {e.dst} ({_name(ls)}: {us} -> {ud} "
                            f"is not an allowed pair)")
    for comp in cycles(modules, edges):
        inside = set(comp)
        links = sorted({f"{e.src} -> {e.dst} ({e.where})" for e in edges if e.src in inside and e.dst in inside})
        problems.append(f"import cycle between {len(comp)} modules: {', '.join(comp)}\n      "
                        + "\n      ".join(links))
    return problems


# ---------------------------------------------------------------- the tests


def test_source_obeys_layering():
    modules, edges = source_graph()
    assert len(modules) > 50 and len(edges) > 100, "the source tree was not read"
    problems = check(modules, edges)
    assert not problems, ("dependency rule (docs/architecture.md) broken:\n  " + "\n  ".join(problems))


def test_checker_catches_breaches():
    mods = {"seektune", "seektune.utils", "seektune.utils.a", "seektune.data", "seektune.data.a",
            "seektune.data.b", "seektune.data.c", "seektune.config", "seektune.export", "seektune.export.x",
            "seektune.serve", "seektune.serve.y"}
    clean = [Edge("seektune.data.a", "seektune.utils.a", "f:1"),
             Edge("seektune.data.a", "seektune.data", "f:2"),       # a package constant, no cycle
             Edge("seektune.data.b", "seektune.data.a", "f:3"),
             Edge("seektune.serve.y", "seektune.export.x", "f:4"),  # listed same-layer pair
             Edge("seektune.data.c", "seektune", "f:5")]            # the root imports nothing
    assert check(mods, clean) == []

    up = Edge("seektune.data.a", "seektune.config", "src/seektune/data/a.py:7")
    problems = check(mods, clean + [up])
    assert problems == ["src/seektune/data/a.py:7: upward import seektune.data.a -> seektune.config (L2 -> L3)"]

    side = Edge("seektune.export.x", "seektune.serve", "f:9")  # the reverse pair is not listed
    assert check(mods, clean + [side]) == [
        "f:9: same-layer import seektune.export.x -> seektune.serve "
        "(L7: seektune.export -> seektune.serve is not an allowed pair)"]

    assert check(mods, [Edge("seektune", "seektune.utils.a", "f:1")]) == [
        "f:1: upward import seektune -> seektune.utils.a (root -> L0)"]

    loop = clean + [Edge("seektune.data.a", "seektune.data.c", "f:6"),
                    Edge("seektune.data.c", "seektune.data.b", "f:7")]  # a -> c -> b -> a
    (msg,) = check(mods, loop)
    assert msg.startswith("import cycle between 3 modules: seektune.data.a, seektune.data.b, seektune.data.c")
    assert "seektune.data.c -> seektune.data.b (f:7)" in msg

    init_loop = clean + [Edge("seektune.data", "seektune.data.a", "f:8")]  # __init__ <-> its module
    (msg,) = check(mods, init_loop)
    assert msg.startswith("import cycle between 2 modules: seektune.data, seektune.data.a")

    assert check(mods | {"seektune.newpkg.z"}, clean) == [
        "seektune.newpkg.z: not in any layer (add its package to LAYERS in tests/test_layering.py "
        "and to docs/architecture.md)"]


def test_resolves_relative_and_nested_imports(tmp_path):
    pkg = tmp_path / "seektune"
    (pkg / "data").mkdir(parents=True)
    (pkg / "engine").mkdir()  # a namespace package (no __init__.py)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("IGNORE_INDEX = -100\n")
    (pkg / "data" / "formats.py").write_text("")
    (pkg / "data" / "sft.py").write_text("from . import IGNORE_INDEX\nfrom .formats import x\n")
    (pkg / "engine" / "run.py").write_text(
        "def f():\n    from ..data import IGNORE_INDEX, formats\n    import seektune.data.sft as s\n"
        "    from seektune import data\n")
    mods, edges = source_graph(tmp_path)
    assert "seektune.engine" in mods
    got = {(e.src, e.dst, e.where.rsplit(":", 1)[1]) for e in edges}
    assert got == {("seektune.data.sft", "seektune.data", "1"),
                   ("seektune.data.sft", "seektune.data.formats", "2"),
                   ("seektune.engine.run", "seektune.data", "2"),
                   ("seektune.engine.run", "seektune.data.formats", "2"),
                   ("seektune.engine.run", "seektune.data.sft", "3"),
                   ("seektune.engine.run", "seektune.data", "4")}
    assert check(mods, edges) == []

    (pkg / "data" / "bad.py").write_text("def g():\n    if True:\n        from ..engine.run import f\n")
    mods, edges = source_graph(tmp_path)
    bad = f"{tmp_path.name}/seektune/data/bad.py:3"
    assert check(mods, edges) == [f"{bad}: upward import seektune.data.bad -> seektune.engine.run (L2 -> L4)"]
