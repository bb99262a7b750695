"""The shape of the source tree: no import cycles (module-level or inside functions, between modules or between
packages), files short enough to read, no citations of documents outside the repository, and configs that are
frozen records."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "qknorm"
MAX_LINES = 450


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict:
    """module -> set of qknorm modules it imports anywhere in its body (functions included).

    `from a import b` counts as an import of `a.b` when that is a module, else of `a`; the implicit import of
    parent packages is not an edge (every module would otherwise depend on the package's __init__)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_pkg, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in mods and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict):
    color, stack = {}, []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if color.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in color:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(graph):
        if n not in color:
            found = visit(n)
            if found:
                return found
    return None


def test_the_checker_finds_a_cycle_it_is_shown():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_including_imports_inside_functions():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def package_graph(graph: dict) -> dict:
    """The import graph between qknorm's top-level packages and modules (qknorm.<first name>): `qknorm.train.loop`
    importing `qknorm.io.checkpoints.full` is an edge train -> io. Edges inside one package are dropped."""
    def top(mod: str) -> str:
        parts = mod.split(".")
        return parts[1] if len(parts) > 1 else parts[0]

    out: dict = {}
    for mod, edges in graph.items():
        out.setdefault(top(mod), set()).update(top(e) for e in edges if top(e) != top(mod))
    return out


def test_the_package_graph_joins_modules_by_their_first_name():
    graph = {"qknorm.a.x": {"qknorm.b.y", "qknorm.a.z"}, "qknorm.a.z": set(), "qknorm.b.y": {"qknorm.c"},
             "qknorm.c": {"qknorm.a.x"}}
    assert package_graph(graph) == {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(package_graph(graph)) == ["a", "b", "c", "a"]


def test_no_import_cycles_between_packages():
    """A package is a room: two packages that import each other (through any of their modules) are one room."""
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "package-level import cycle: " + " -> ".join(cycle)


STOP_MODULE = "qknorm.train.stop"


def stop_text_tests(source: str) -> list:
    """Lines of `source` that decide on the text of a stop reason: `x.stop_reason.startswith(...)` (or endswith,
    split), `"..." in stop_reason`, `stop_reason == "..."`. What stopped a run is read from its fields."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("startswith", "endswith", "split") and "stop_reason" in ast.unparse(node.func.value):
            found.append(node.lineno)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and isinstance(o.value, str) for o in operands) and \
                    any("stop_reason" in ast.unparse(o) for o in operands):
                found.append(node.lineno)
    return found


def test_the_stop_text_check_finds_what_it_is_shown():
    assert stop_text_tests('if r.stop_reason and r.stop_reason.startswith("stopped by SIG"): pass') == [1]
    assert stop_text_tests('ok = "callback" in stop_reason') == [1]
    assert stop_text_tests('x = (rec.stop_reason or "").startswith("stopped")') == [1]
    assert stop_text_tests("ok = r.stop_reason.kind is StopKind.SIGNAL") == []


def test_nothing_decides_on_the_text_of_a_stop_reason():
    bad = {name: lines for name, path in _modules().items() if name != STOP_MODULE
           and (lines := stop_text_tests(path.read_text()))}
    assert not bad, f"decisions on stop-reason text (read StopReason.kind / .signal instead): {bad}"


def test_no_source_file_is_longer_than_the_limit():
    long = {str(p.relative_to(SRC)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_code_cites_no_document_outside_the_repository():
    bad = [str(p.relative_to(SRC)) for p in PKG.rglob("*.py")
           if any(s in p.read_text() for s in ("DESIGN.md", "STYLE.md", "shared/"))]
    assert not bad, f"files citing documents outside the repository: {bad}"


def test_train_config_is_a_frozen_keyword_only_dataclass():
    from qknorm.train import TrainConfig

    assert dataclasses.is_dataclass(TrainConfig)
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        TrainConfig(10)  # type: ignore[misc]


def class_swaps(source: str) -> list:
    """Lines that change an object's class in place: `x.__class__ = C` (also in tuple targets and augmented or
    annotated form) or `setattr(x, "__class__", C)` / `object.__setattr__(x, "__class__", C)`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        flat = [t for target in targets for t in ast.walk(target)]
        if any(isinstance(t, ast.Attribute) and t.attr == "__class__" for t in flat):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and any(isinstance(a, ast.Constant) and a.value == "__class__"
                                                for a in node.args[1:2]):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("setattr", "__setattr__"):
                lines.append(node.lineno)
    return lines


def test_the_class_swap_check_finds_what_it_is_shown():
    assert class_swaps("m.__class__ = TensorParallelLM") == [1]
    assert class_swaps("a, b.__class__ = 1, C") == [1]
    assert class_swaps("setattr(m, '__class__', C)\nobject.__setattr__(m, '__class__', C)") == [1, 2]
    assert class_swaps("cls = m.__class__\nx.klass = C\nsetattr(m, 'name', 1)") == []


def test_no_object_changes_its_class_in_place():
    bad = {name: lines for name, path in _modules().items() if (lines := class_swaps(path.read_text()))}
    assert not bad, f"__class__ assignments (compose instead: hold a strategy object, install it by a method): {bad}"


def attention_attribute_writes(source: str, names: set) -> list:
    """Lines that assign one of `names` as an attribute of something other than `self` (`a.record_stats = True`)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for t in (t for target in targets for t in ast.walk(target)):
            if isinstance(t, ast.Attribute) and t.attr in names and not (
                    isinstance(t.value, ast.Name) and t.value.id == "self"):
                lines.append(node.lineno)
    return sorted(set(lines))


def _attention_state_names() -> set:
    """What an Attention sets on itself in its own code (its state), dunder-free."""
    tree = ast.parse((PKG / "nn" / "attention.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Attention")
    return {t.attr for n in ast.walk(cls) if isinstance(n, ast.Assign) for target in n.targets
            for t in ast.walk(target) if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
            and t.value.id == "self"}


def test_the_attention_state_check_finds_what_it_is_shown():
    names = _attention_state_names()
    assert {"qk_path", "n_heads", "scale", "q_norm"} <= names
    assert attention_attribute_writes("a.scale, a.window = 1, 2\nfor a in x:\n    a.q_norm = None", names) == [1, 3]
    assert attention_attribute_writes("self.scale = 1\nh = a.scale", names) == []


# same attribute names on objects that are not our Attention (read each before adding one here)
NOT_OUR_ATTENTION = {"qknorm.benchmarks.paired_cpu": "an argparse Namespace's head_dim",
                     "qknorm.benchmarks.train_models": "HF Olmo2 attention's q_norm/k_norm, replaced by Identity"}


def test_nothing_outside_the_attention_sets_its_state():
    names = _attention_state_names()
    bad = {name: lines for name, path in _modules().items() if name != "qknorm.nn.attention"
           and name not in NOT_OUR_ATTENTION and (lines := attention_attribute_writes(path.read_text(), names))}
    assert not bad, f"attributes of Attention set from outside (use add_qk_probe / set_qk_path): {bad}"
