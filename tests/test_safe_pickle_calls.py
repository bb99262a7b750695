"""No file qknorm reads can run code: every way src/ could unpickle is listed from the syntax tree, and the only
ones allowed are the allow-list `.metadata` reader and torch.load(..., weights_only=True).

Listed: calls of pickle.load / pickle.loads / torch.load / torch.serialization.load (through any import alias),
any class built on pickle.Unpickler and any call of an `Unpickler`, torch.distributed.checkpoint's load and
FileSystemReader (whose own readers unpickle), numpy.load without allow_pickle=False, and other pickle readers
(dill, joblib, pandas.read_pickle, cloudpickle, marshal)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "qknorm"
UNPICKLER_HOME = "io/safe_pickle.py"  # MetadataUnpickler: the one allow-list unpickler
DCP_HOME = "io/dcp_reader.py"  # the one place torch.distributed.checkpoint reads a folder (with the reader above)
FORBIDDEN_MODULES = {"dill", "joblib", "cloudpickle", "marshal", "shelve", "_pickle"}


def _aliases(tree: ast.AST) -> dict:
    """local name -> dotted thing it stands for (import pickle as p -> {'p': 'pickle'})."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST, aliases: dict) -> str:
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value, aliases)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name and isinstance(k.value, ast.Constant):
            return k.value.value
    return None


def _is_unpickler_load(call: ast.Call, aliases: dict) -> bool:
    """`SomeUnpickler(f).load()`."""
    f = call.func
    return isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Call) and \
        _dotted(f.value.func, aliases).endswith("Unpickler")


def unpickling_sites(path: Path, root: Path = SRC) -> list:
    """(file, line, what, allowed) for every way `path` (under `root`) could unpickle."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases, rel, found = _aliases(tree), path.relative_to(root).as_posix(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for m in mods:
                if m.split(".")[0] in FORBIDDEN_MODULES:
                    found.append((rel, node.lineno, f"import {m}", False))
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if _dotted(base, aliases).endswith("Unpickler"):
                    found.append((rel, node.lineno, f"class {node.name}({_dotted(base, aliases)})",
                                  rel == UNPICKLER_HOME and node.name == "MetadataUnpickler"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
            found.append((rel, node.lineno, name, False))
        elif name in ("torch.load", "torch.serialization.load"):
            found.append((rel, node.lineno, name, _kw(node, "weights_only") is True))
        elif name.endswith("Unpickler") or name.endswith("Unpickler.load") or _is_unpickler_load(node, aliases):
            found.append((rel, node.lineno, name or "Unpickler(...).load", rel == UNPICKLER_HOME))
        elif name.startswith("torch.distributed.checkpoint") and name.rsplit(".", 1)[-1] in (
                "load", "load_state_dict", "FileSystemReader", "_load_state_dict_from_keys"):
            found.append((rel, node.lineno, name, rel == DCP_HOME))
        elif name in ("numpy.load", "np.load"):
            found.append((rel, node.lineno, name, _kw(node, "allow_pickle") is False))
        elif name.endswith("read_pickle") or name.split(".")[0] in FORBIDDEN_MODULES:
            found.append((rel, node.lineno, name, False))
    return found


def _all_sites() -> list:
    return [site for path in sorted(SRC.rglob("*.py")) for site in unpickling_sites(path)]


def test_src_unpickles_only_through_the_allow_list_reader_and_weights_only_loads():
    sites = _all_sites()
    bad = [f"{f}:{line}: {what}" for f, line, what, ok in sites if not ok]
    assert not bad, "unpickling outside the allow-list reader / weights_only=True:\n" + "\n".join(bad)
    kinds = {what for _, _, what, _ in sites}
    assert any("MetadataUnpickler" in k for k in kinds) and "torch.load" in kinds  # the lister sees real code


def test_every_dcp_read_goes_through_the_safe_reader():
    """DCP folders are opened in dcp_reader.py only, with its own reader and planner passed in."""
    tree = ast.parse((SRC / DCP_HOME).read_text())
    loads = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _dotted(n.func, _aliases(tree)) ==
             "torch.distributed.checkpoint.load"]
    assert len(loads) == 1 and {k.arg for k in loads[0].keywords} >= {"storage_reader", "planner"}


BAD_SNIPPETS = {
    "pickle.loads(b)": "import pickle\npickle.loads(b)\n",
    "alias load": "import pickle as p\np.load(f)\n",
    "from-import": "from pickle import loads\nloads(b)\n",
    "torch.load without weights_only": "import torch\ntorch.load(f)\n",
    "torch.load weights_only=False": "import torch\ntorch.load(f, weights_only=False)\n",
    "own Unpickler": "import pickle\nclass U(pickle.Unpickler):\n    pass\n",
    "dcp.load elsewhere": "import torch.distributed.checkpoint as dcp\ndcp.load(s, storage_reader=r)\n",
    "np.load pickles": "import numpy as np\nnp.load(f, allow_pickle=True)\n",
    "dill": "import dill\n",
}


@pytest.mark.parametrize("name", list(BAD_SNIPPETS))
def test_the_lister_catches_each_way_in(name, tmp_path):
    """The check can fail: each snippet, placed in src/, is reported as not allowed."""
    f = tmp_path / "mod.py"
    f.write_text(BAD_SNIPPETS[name])
    sites = unpickling_sites(f, tmp_path)
    assert sites and not any(ok for *_, ok in sites), sites
