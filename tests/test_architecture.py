"""The layout guard: ``nodeapp``'s subpackages import only downwards, ``api`` only from the layers
it may use, and no two modules import each other (ADR 0009, ``docs/ARCHITECTURE.md``).

Every import counts, those under ``TYPE_CHECKING`` and inside functions too: a lazy import is
still a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent

# Lowest first: a module may import its own subpackage and any listed before it.
LAYERS: Final = (
    "core", "broker", "security", "orders", "readmodel", "cluster", "shop", "worker", "ops",
    "local", "cli",
)  # fmt: skip
# What the HTTP edge may use: the domain, never the worker engine or the process wiring.
API_MAY_IMPORT: Final = frozenset(
    {"core", "broker", "security", "orders", "readmodel", "cluster", "shop"}
)
# Process entry points parse the command line like ``orderflow`` does.
ENTRY_POINTS: Final = {"api.__main__": frozenset({"cli"}), "nodeapp.__main__": frozenset({"cli"})}
MAX_MODULE_LINES: Final = 330


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p for pkg in ("api", "nodeapp") for p in sorted((ROOT / pkg).rglob("*.py"))
    }


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (resolved to the longest known module)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            anchor = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def layer(module: str) -> str | None:
    """``nodeapp.<layer>.x`` -> ``<layer>``; None for ``nodeapp`` itself and non-nodeapp."""
    parts = module.split(".")
    return parts[1] if parts[0] == "nodeapp" and len(parts) > 1 else None


def test_every_nodeapp_module_lives_in_a_layer() -> None:
    loose = [m for m in modules() if m.startswith("nodeapp.") and layer(m) not in LAYERS]
    assert loose == [m for m in loose if m == "nodeapp.__main__"], (
        f"modules outside the layers {LAYERS}: {loose}; give them a subpackage (ADR 0009)"
    )


def test_nodeapp_imports_only_downwards() -> None:
    upward = []
    for module, targets in graph().items():
        own = layer(module)
        if own not in LAYERS:
            continue
        for target in targets:
            other = layer(target)
            if target.startswith("api") or (
                other in LAYERS and LAYERS.index(other) > LAYERS.index(own)
            ):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layer order " + " < ".join(LAYERS) + f": {upward}"


def test_api_uses_only_the_domain_layers() -> None:
    wrong = []
    for module, targets in graph().items():
        if not module.startswith("api"):
            continue
        allowed = API_MAY_IMPORT | ENTRY_POINTS.get(module, frozenset())
        wrong += [f"{module} -> {t}" for t in targets if layer(t) and layer(t) not in allowed]
    assert not wrong, f"api may import nodeapp.{{{', '.join(sorted(API_MAY_IMPORT))}}}: {wrong}"


def test_no_import_cycles() -> None:
    edges = graph()
    cycles = []
    for start in edges:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, f"import cycles: {sorted(set(cycles))[:5]}"


def test_modules_stay_small() -> None:
    large = {
        name: lines
        for name, path in modules().items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not large, f"modules over {MAX_MODULE_LINES} lines, split by concept: {large}"


def test_the_guard_sees_an_upward_import(tmp_path: Path) -> None:
    """The graph is read from source: an import planted in a module is found."""
    path = ROOT / "nodeapp" / "core" / "settings.py"
    planted = tmp_path / "settings.py"
    planted.write_text(path.read_text() + "\nfrom nodeapp.worker.node import Node\n")
    found = imported("nodeapp.core.settings", planted, modules())
    assert "nodeapp.worker.node" in found
