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
    from webhooks.handlers import WebhookMetrics

    registry = CollectorRegistry()
    Metrics(registry)
    WebhookMetrics(registry)
    known = {name for m in registry.collect() for name in
             (m.name, f"{m.name}_total", f"{m.name}_bucket", f"{m.name}_count", f"{m.name}_sum")}
    used = set()
    for path in [ROOT / "deploy/prometheus/outbox-rules.yml",
                 ROOT / "deploy/grafana/outbox-dashboard.json"]:
        used |= set(re.findall(r"\b(outbox_[a-z_]+)", path.read_text()))
    assert used and used <= known, sorted(used - known)
