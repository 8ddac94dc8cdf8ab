"""The package's layers, read from the imports of every module (issue 20).

The layers, bottom up: the base modules (errors, record, options), fs (filesystem
access), wire (frames and codecs), engine (scan, file list, delta, sender, the
receiving stages), run (who plays which side, spawning peers), cli (the terminal).
A layer imports only layers below it; testfs stands apart and the engine never
imports it. The receiving stages take typed hand-offs, never the receiver itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fscsync"
BASE = {"fscsync", "fscsync.errors", "fscsync.record", "fscsync.options"}
LAYERS = ["base", "fs", "wire", "engine", "run", "cli"]
STAGES = {f"fscsync.engine.{m}" for m in (
    "generator", "writer", "finalize", "basis", "encpolicy", "existing")}
"""The receiving stages and the generator's helpers: typed hand-offs, never the receiver."""
SENDING = {f"fscsync.engine.{m}" for m in ("sender", "scan", "sources", "srcfiles")}
RECEIVING = STAGES | {"fscsync.engine.receiver", "fscsync.engine.rxstate"}
"""The two sides meet only in the modules both use (flist, filters, delta, ...) and on
the wire: neither imports the other's modules."""
FOREIGN = {
    "fs": {"rich", "argparse", "mpi4py"},
    "wire": {"rich", "argparse", "mpi4py"},
    "engine": {"rich", "argparse", "mpi4py"},
}


def layer(module: str) -> str:
    if module == "fscsync.__main__":
        return "cli"
    part = module.split(".")[1] if "." in module else "base"
    return part if part in LAYERS or part == "testfs" else "base"


def imports(source: str, module: str) -> set[str]:
    """Every module named by an import anywhere in the source (also inside functions,
    where lazy imports hide), resolved to dotted names."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            subs = {f"{name}.{alias.name}" for alias in node.names}
            found.update(subs & MODULES or {name})
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def violations(module: str, source: str) -> list[str]:
    """The forbidden edges of one module: an import of a higher layer, of testfs from
    the product, of a foreign library a lower layer must not know, of the receiver
    from a stage."""
    mine = layer(module)
    out = []
    for name in sorted(imports(source, module)):
        top = name.split(".")[0]
        if top != "fscsync":
            if top in FOREIGN.get(mine, ()) or (mine == "base" and top in {"rich", "argparse"}):
                out.append(f"{module} ({mine}) imports {name}")
            continue
        theirs = layer(name)
        if theirs == "testfs":
            if mine != "testfs":
                out.append(f"{module} ({mine}) imports the test filesystem {name}")
            continue
        if mine == "testfs":
            if theirs not in ("base", "fs"):
                out.append(f"{module} (testfs) imports {name} ({theirs})")
            continue
        if LAYERS.index(theirs) > LAYERS.index(mine):
            out.append(f"{module} ({mine}) imports {name} ({theirs}), a layer above it")
        if module in STAGES and name == "fscsync.engine.receiver":
            out.append(f"{module} (a receiving stage) imports the receiver")
        for side, other in ((SENDING, RECEIVING), (RECEIVING, SENDING)):
            if module in side and name in other:
                out.append(f"{module} imports {name}, a module of the other side")
    return out


def test_no_module_imports_across_its_layer():
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        found.update(violations(module_name(path), path.read_text()))
    assert sorted(found) == []


def test_every_module_belongs_to_a_layer():
    loose = [m for m in MODULES
             if m.count(".") == 1 and m not in BASE and layer(m) == "base"
             and m != "fscsync.__main__"]
    assert loose == [], "top-level modules besides the base ones: put them in a layer"


@pytest.mark.parametrize("module, source, edge", [
    ("fscsync.fs.destfs", "from fscsync.engine import scan\n", "a layer above"),
    ("fscsync.wire.protocol", "def f():\n    from fscsync.engine.flist import Entry\n",
     "a layer above"),
    ("fscsync.engine.scan", "import fscsync.cli.main\n", "a layer above"),
    ("fscsync.engine.scan", "import rich.console\n", "imports rich.console"),
    ("fscsync.engine.sender", "import argparse\n", "imports argparse"),
    ("fscsync.engine.sender", "from mpi4py import MPI\n", "imports mpi4py"),
    ("fscsync.engine.scan", "from fscsync.testfs import model\n", "test filesystem"),
    ("fscsync.engine.writer", "from fscsync.engine.receiver import Receiver\n",
     "imports the receiver"),
    ("fscsync.engine.generator", "from . import receiver\n", "imports the receiver"),
    ("fscsync.engine.existing", "from fscsync.engine import receiver\n",
     "imports the receiver"),
    ("fscsync.engine.scan", "def f():\n    from fscsync.engine.generator import g\n",
     "the other side"),
    ("fscsync.engine.srcfiles", "from fscsync.engine.rxstate import RxState\n",
     "the other side"),
    ("fscsync.engine.basis", "from fscsync.engine.sources import split_source\n",
     "the other side"),
    ("fscsync.errors", "from fscsync.fs import cipher\n", "a layer above"),
    ("fscsync.testfs.model", "from fscsync.engine import scan\n", "testfs"),
])
def test_a_forbidden_edge_is_caught(module, source, edge):
    found = violations(module, source)
    assert len(found) == 1 and edge in found[0], found


def test_allowed_edges_pass():
    assert violations("fscsync.engine.scan", "from fscsync.fs import cipher\n"
                      "from fscsync.wire import protocol\nimport os\n") == []
    assert violations("fscsync.testfs.model", "from fscsync.fs.cipher import pack_context\n") == []
    assert violations("fscsync.cli.main", "from fscsync.run.session import run_client\n") == []
    assert violations("fscsync.engine.scan", "from fscsync.engine import filters, flist\n"
                      "from fscsync.engine.sources import split_source\n") == []
    assert violations("fscsync.engine.generator", "from fscsync.engine import basis, filters\n"
                      "from fscsync.engine.rxstate import RxState\n") == []
