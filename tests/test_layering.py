"""The layers of docs/architecture.md ("Parts and layers") only point down.

Every `import` and `from ... import` in src/cotrain is read with `ast`, wherever it stands (module level,
inside a function, under `if TYPE_CHECKING:`), as are `importlib.import_module("...")` calls with a
literal name. Each rule below names who may not import what; a failure lists `file:line` and the rule.
A second test imports the whole chain package in a fresh interpreter and checks what actually loaded.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "cotrain"

# The Alembic environment imports both ORMs so that their tables register on one metadata.
EXEMPT = {PACKAGE / "db" / "migrations" / "env.py"}

BOTTOM = ("cotrain.paths", "cotrain.hashchain", "cotrain.data_roots", "cotrain.parent_death", "cotrain.config",
          "cotrain.db")
ENGINE_AND_NETWORK = ("cotrain.core", "cotrain.p2p")
TOP = ("cotrain.cli", "cotrain.client")
ABOVE_CHAIN = ("cotrain.core", "cotrain.server", "cotrain.ui")


def within(module: str, packages: tuple[str, ...] | str) -> bool:
    """Whether `module` is one of `packages` or inside one of them."""
    if isinstance(packages, str):
        packages = (packages,)
    return any(module == p or module.startswith(p + ".") for p in packages)


def is_route_module(module: str) -> bool:
    """server/api/<resource>.py; deps.py is the routes' shared dependency module, not a route."""
    return within(module, "cotrain.server.api") and module not in {"cotrain.server.api",
                                                                   "cotrain.server.api.deps"}


@dataclass(frozen=True)
class Rule:
    text: str
    importer: Callable[[str], bool]
    forbidden: Callable[[str], bool]


RULES = (
    Rule("the bottom (paths, hashchain, data_roots, parent_death, config, db) imports nothing above it",
         lambda m: within(m, BOTTOM),
         lambda t: within(t, ENGINE_AND_NETWORK + ("cotrain.chain", "cotrain.server", "cotrain.ui") + TOP)),
    Rule("core and p2p never import chain, server, ui, cli or client",
         lambda m: within(m, ENGINE_AND_NETWORK),
         lambda t: within(t, ("cotrain.chain", "cotrain.server", "cotrain.ui") + TOP)),
    Rule("chain never imports core, server, ui, cli or client",
         lambda m: within(m, "cotrain.chain"),
         lambda t: within(t, ABOVE_CHAIN + TOP)),
    Rule("server never imports ui, cli or client (the UI mounts itself on the server's app)",
         lambda m: within(m, "cotrain.server"),
         lambda t: within(t, ("cotrain.ui",) + TOP)),
    Rule("nothing outside cotrain.ui imports it (its entry point cotrain.ui.app builds the server and mounts it)",
         lambda m: not within(m, "cotrain.ui"),
         lambda t: within(t, "cotrain.ui")),
    Rule("ui never imports cli or client",
         lambda m: within(m, "cotrain.ui"),
         lambda t: within(t, TOP)),
    Rule("a route module (server/api/*) is a leaf: only cotrain.server.app imports it",
         lambda m: m != "cotrain.server.app",
         is_route_module),
    Rule("server/api/deps.py is for the server's routes and middleware: only cotrain.server imports it",
         lambda m: not within(m, "cotrain.server"),
         lambda t: t == "cotrain.server.api.deps"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p not in EXEMPT}


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from` import reads from (relative imports resolved against `importer`)."""
    if not node.level:
        return node.module or ""
    is_package = SOURCES.get(importer, Path()).name == "__init__.py"
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(importer: str, tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) for every cotrain module `tree` imports; `from pkg import sub` names pkg.sub."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            source = resolve(importer, node)
            yield node.lineno, source
            for alias in node.names:
                if f"{source}.{alias.name}" in SOURCES:
                    yield node.lineno, f"{source}.{alias.name}"
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) == "import_module")):
            yield node.lineno, node.args[0].value.partition(":")[0]


def violations() -> list[str]:
    found = []
    for importer, path in SOURCES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in imported_modules(importer, tree):
            if not within(target, "cotrain") or within(target, importer):
                continue
            for rule in RULES:
                if rule.importer(importer) and rule.forbidden(target):
                    found.append(f"{path.relative_to(REPO)}:{line}: imports {target}: {rule.text}")
    return sorted(set(found))


def test_layers_only_point_down() -> None:
    found = violations()
    assert not found, f"{len(found)} import(s) against the layering:\n" + "\n".join(found)


def test_the_scan_sees_imports_everywhere() -> None:
    """The scan reads imports inside functions, under TYPE_CHECKING and relative ones."""
    tree = ast.parse("from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from cotrain.server import orm\n"
                     "def f():\n    import cotrain.ui.app\n"
                     "from ..db import Base\n")
    found = {m for _, m in imported_modules("cotrain.chain.ledger", tree)}
    assert {"cotrain.server", "cotrain.server.orm", "cotrain.ui.app", "cotrain.db"} <= found


def test_chain_loads_no_core_or_server_in_a_fresh_interpreter() -> None:
    """What the static scan cannot see (an import made at run time, a lower module pulling a higher one in)
    shows up here: importing every chain module loads no engine, server or UI module."""
    chain = [m.name for m in pkgutil.walk_packages([str(PACKAGE / "chain")], "cotrain.chain.")]
    assert chain, "no chain modules found"
    code = ("import sys\n" + "".join(f"import {m}\n" for m in chain)
            + f"print(','.join(m for m in sys.modules if m.startswith({ABOVE_CHAIN!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing cotrain.chain loaded {out.stdout.strip()}"


def test_the_server_and_web_ui_start_without_torch_or_hivemind() -> None:
    """`cotrain up` serves the API and the UI, verifying peers' signatures (p2p/peer_keys.py) but training
    nothing: importing the apps must not load torch or hivemind (hivemind imports torch), which would add
    seconds to every server start. A peer's own key and the DHT node load them when used."""
    code = ("import sys\nimport cotrain.server.app, cotrain.ui.app, cotrain.server.worker\n"
            "print(','.join(m for m in ('torch', 'hivemind', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing the server loaded {out.stdout.strip()}"
