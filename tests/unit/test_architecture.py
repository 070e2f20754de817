"""The layout is the architecture: these tests fail when an import crosses a line.

Every ``import`` in ``src/outgrow`` counts — at module level, under ``TYPE_CHECKING`` and
inside functions — because a cycle hidden behind a lazy import is still a cycle to a
reader. Who may call whom (docs/control-plane.md, "Who calls whom"):

    cli ─┬─► client (SDK) ──────────────► the REST API over HTTP
         └─► server ─► api, proxy, web ─► controlplane ─► store, providers, orchestrator
                                                        └► agentapi ─► (HTTP) ─► agent
    jupyterhub (the hub's spawner) ─► client (SDK) only
    domain: pure; agentapi: models + client; transfer: object storage (agent, aws provider)
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "outgrow"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The outgrow module ``name`` refers to (a module, or the module defining a name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(outgrow modules, top-level external packages) ``module`` imports, anywhere in it."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    ours: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = (
                [f"{stem}.{a.name}" for a in node.names] if stem.startswith("outgrow") else [stem]
            )
        for name in names:
            if name.split(".")[0] == "outgrow":
                target = _resolve(name)
                if target and target != module:
                    ours.add(target)
            elif name:
                external.add(name.split(".")[0])
    return ours, external


GRAPH = {m: _imports(m)[0] for m in MODULES}
EXTERNAL = {m: _imports(m)[1] for m in MODULES}


def _layer(module: str) -> str:
    """``outgrow.controlplane.jobs`` → ``controlplane``; top-level modules are their own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "outgrow"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_scanner_sees_hidden_imports(tmp_path: Path) -> None:
    """The scanner itself: TYPE_CHECKING and function-local imports count."""
    ours, _ = _imports("outgrow.controlplane.lifecycle")
    assert "outgrow.store" in ours or "outgrow.store.store" in ours
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(GRAPH) == []


def test_no_import_cycle_between_packages() -> None:
    layers: dict[str, set[str]] = defaultdict(set)
    for mod, deps in GRAPH.items():
        for dep in deps:
            if _layer(dep) != _layer(mod) and _layer(dep) != "outgrow":
                layers[_layer(mod)].add(_layer(dep))
    assert _cycles(dict(layers)) == []


FORBIDDEN = {
    # the pure domain: no I/O, no clock (``now`` is passed in), no frameworks
    "domain": {
        "layers": {"agent", "agentapi", "api", "cli", "controlplane", "orchestrator", "providers"}
        | {"proxy", "server", "store", "transfer", "web", "client"},
        "external": {"os", "subprocess", "socket", "shutil", "fcntl", "threading", "time"}
        | {"pathlib", "io", "select", "signal", "ctypes", "httpx", "sqlalchemy", "boto3"}
        | {"botocore", "fastapi", "starlette", "uvicorn", "websockets", "urllib", "http"},
    },
    # the agent runs on instances: it never reaches into the control plane's side
    "agent": {
        "layers": {"controlplane", "store", "api", "providers", "proxy", "web", "server"}
        | {"orchestrator", "cli", "client"},
        "external": {"sqlalchemy", "boto3", "botocore"},
    },
    "agentapi": {
        "layers": {"agent", "controlplane", "store", "api", "providers", "proxy", "web"}
        | {"server", "orchestrator", "cli", "transfer"},
        "external": {"sqlalchemy", "boto3", "fastapi"},
    },
    "providers": {"layers": {"controlplane", "store", "api", "proxy", "web", "server", "cli"}},
    "orchestrator": {"layers": {"controlplane", "store", "api", "proxy", "web", "server"}},
    "controlplane": {"layers": {"api", "proxy", "web", "server", "cli", "agent"}},
    "store": {"layers": {"controlplane", "providers", "agent", "agentapi", "api", "proxy"}},
    "api": {"layers": {"agent", "providers", "store", "proxy", "web", "server"}},
    "proxy": {"layers": {"api", "web", "server", "agent", "providers", "store"}},
    # JupyterHub's spawner: a client of the SDK (and the domain's models), nothing more
    "jupyterhub": {
        "layers": {"agent", "agentapi", "api", "cli", "controlplane", "orchestrator"}
        | {"providers", "proxy", "server", "store", "transfer", "web"},
    },
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_contracts(layer: str) -> None:
    rules = FORBIDDEN[layer]
    bad = []
    for mod in MODULES:
        if _layer(mod) != layer:
            continue
        for dep in GRAPH[mod]:
            if _layer(dep) in rules.get("layers", set()):
                bad.append(f"{mod} imports {dep}")
        for ext in EXTERNAL[mod] & rules.get("external", set()):
            bad.append(f"{mod} imports {ext}")
    assert bad == []


def test_nothing_of_outgrow_imports_the_jupyterhub_spawner() -> None:
    """JupyterHub loads the spawner (an entry point); outgrow never needs JupyterHub."""
    users = {m for m, deps in GRAPH.items() if _layer(m) != "jupyterhub"}
    assert {m for m in users if any(_layer(d) == "jupyterhub" for d in GRAPH[m])} == set()
    assert {m for m, ext in EXTERNAL.items() if "jupyterhub" in ext} <= {
        m for m in MODULES if _layer(m) == "jupyterhub"
    }


def test_only_the_boto_module_imports_boto3() -> None:
    users = {m for m, ext in EXTERNAL.items() if ext & {"boto3", "botocore"}}
    assert users == {"outgrow.transfer.boto"}


def test_no_module_is_over_600_lines() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in MODULES.values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
