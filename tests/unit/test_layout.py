"""Imports point one way: config <- suppression <- sender <- webhooks <- outbox."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["config", "suppression", "sender", "webhooks", "outbox"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_no_package_imports_a_layer_above_it(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & above)
        for path in (ROOT / layer).rglob("*.py")
        if _imports(path) & above
    }
    assert offenders == {}


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from webhooks.app import make_app\nimport outbox.cli\n")
    assert _imports(bad) >= {"webhooks", "outbox"}


def test_exported_topology_matches_the_code():
    import json

    from config.settings import DEFAULT_RETRY_TIERS
    from sender.topology import definitions

    exported = json.loads((ROOT / "deploy/rabbitmq/definitions.json").read_text())
    assert exported == definitions(DEFAULT_RETRY_TIERS)


def test_dashboards_and_alerts_use_only_metrics_that_exist():
    import re

    from prometheus_client import CollectorRegistry

    from sender.metrics import Metrics
    from sender.outages import DependencyMetrics
    from webhooks.bounces import BounceMetrics
    from webhooks.handlers import WebhookMetrics

    registry = CollectorRegistry()
    Metrics(registry)
    WebhookMetrics(registry)
    BounceMetrics(registry)
    DependencyMetrics(registry)
    known = {name for m in registry.collect() for name in
             (m.name, f"{m.name}_total", f"{m.name}_bucket", f"{m.name}_count", f"{m.name}_sum")}
    used = set()
    for path in [ROOT / "deploy/prometheus/outbox-rules.yml",
                 ROOT / "deploy/grafana/outbox-dashboard.json"]:
        used |= set(re.findall(r"\b(outbox_[a-z_]+)", path.read_text()))
    assert used and used <= known, sorted(used - known)


def _module_graph(package: Path) -> dict[str, set[str]]:
    """Which of ``package``'s modules each of its modules imports (at the top or in a
    function: a deferred import still ties the two together)."""
    root = package.parent
    names = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = ".".join(here.split(".")[:len(here.split(".")) - node.level + 1])
                    base = f"{parent}.{base}".rstrip(".")
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in names and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in ``graph`` (as a path back to its start), or [] when there is none."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str]:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return []
        for nxt in sorted(graph[name]):
            found = visit(nxt, [*path, name])
            if found:
                return found
        done.add(name)
        return []

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return []


def test_the_outbox_package_imports_without_a_cycle():
    graph = _module_graph(ROOT / "outbox")
    assert graph["outbox.cli"] >= {"outbox.commands", "outbox.runtime"}  # the checker sees them
    assert _cycle(graph) == []


def test_the_cycle_checker_sees_a_cycle_through_a_deferred_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert _cycle(_module_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
