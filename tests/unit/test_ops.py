"""The ops files run: alerting rules (promtool), docker-compose, Grafana provisioning, the
Dockerfile's hashed lock and its health check. Docker does not run here, so the compose file
and the Dockerfile are checked for structure; promtool does run, and is required (Debian's
``prometheus`` package, which ``make deps`` installs): a missing promtool fails, never skips."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from prometheus_client import CollectorRegistry, generate_latest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus/outbox-rules.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus/tests").glob("*.yml"))
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
OUTBOX_SERVICES = ("worker", "webhooks", "bounces")


# --- alerting rules ----------------------------------------------------------------------


def _promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, ("promtool is missing: install Debian's `prometheus` package "
                      "(`make deps` does) to test the alerting rules")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, check=False)


def test_promtool_accepts_the_rules_and_the_prometheus_config():
    for args in (("check", "rules", str(RULES)),
                 ("check", "config", str(DEPLOY / "prometheus/prometheus.yml"))):
        done = _promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def test_the_promtool_rule_tests_pass():
    assert RULE_TESTS
    done = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    fired, quiet = set(), set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert "OutboxAccountBlocked" in alerts
    assert fired == alerts, sorted(alerts ^ fired)
    assert quiet == alerts, sorted(alerts ^ quiet)


def test_the_rule_tests_catch_an_alert_that_misses_the_first_block(tmp_path):
    """The rule as it was (a bare increase()) fails the first-block tests: they can fail."""
    rules = RULES.read_text()
    start = rules.index("        expr: |\n          sum by (job, instance) (increase(")
    end = rules.index("        labels: {severity: page}", start)
    old = ('        expr: increase(outbox_account_transitions_total{to="blocked"}[10m]) > 0\n')
    (tmp_path / "outbox-rules.yml").write_text(rules[:start] + old + rules[end:])
    (tmp_path / "tests").mkdir()
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    done = _promtool("test", "rules", *(f"tests/{p.name}" for p in RULE_TESTS), cwd=tmp_path)
    assert done.returncode != 0
    assert "a block before the process's first scrape pages" in done.stdout + done.stderr


def test_transition_series_are_exposed_at_zero_from_the_start():
    """So increase() sees the first block after a start as 0 -> 1."""
    from sender.metrics import AUTOMATIC_TRANSITIONS, Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    text = generate_latest(registry).decode()
    assert ("active", "blocked") in AUTOMATIC_TRANSITIONS
    assert ("throttled", "blocked") in AUTOMATIC_TRANSITIONS
    for from_state, to_state in AUTOMATIC_TRANSITIONS:
        assert (f'outbox_account_transitions_total{{from="{from_state}",to="{to_state}"}} 0.0'
                in text)


# --- docker-compose ------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        found = env.get(name)
        if op is None:
            return found or ""
        missing = found is None or (op.startswith(":") and found == "")
        if op.endswith("-"):
            return arg if missing else str(found)
        if missing:
            raise KeyError(f"{name}: {arg}")
        return str(found)

    return _VAR.sub(value, text)


def _dotenv(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#"))


def _filled_env() -> dict[str, str]:
    """.env.example with its empty (secret) values filled in, as an operator would."""
    secrets = {"RABBITMQ_PASSWORD": "a1b2c3d4e5f6", "GRAFANA_ADMIN_PASSWORD": "grafana-pw",
               "OUTBOX_SECRET_KEY": "k" * 32}
    env = _dotenv(ENV_EXAMPLE.read_text())
    assert {k for k, v in env.items() if not v} == set(secrets)
    return {**env, **secrets}


def _compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(_interpolate(COMPOSE.read_text(),
                                                       env or _filled_env()))
    return data


def test_every_service_has_a_healthcheck_and_a_restart_policy():
    services = _compose()["services"]
    assert set(services) >= {"rabbitmq", "redis", *OUTBOX_SERVICES, "prometheus", "grafana"}
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name
    assert services["rabbitmq"]["healthcheck"]["test"] == [
        "CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert services["webhooks"]["healthcheck"]["test"] == [
        "CMD", "outbox-healthcheck", "http://127.0.0.1:8080/healthz"]


def test_outbox_services_start_once_rabbitmq_and_redis_are_healthy():
    services = _compose()["services"]
    for name in OUTBOX_SERVICES:
        assert services[name]["depends_on"] == {
            "rabbitmq": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"}}, name
        assert services[name]["build"]["context"] == ".."
        assert (DEPLOY / services[name]["build"]["context"] / "Dockerfile").is_file()
    grafana = services["grafana"]["depends_on"]
    assert grafana == {"prometheus": {"condition": "service_healthy"}}


def test_redis_keeps_an_append_only_file_synced_every_second():
    command = _compose()["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options == {"--appendonly": "yes", "--appendfsync": "everysec"}
    assert any(v.endswith(":/data") for v in _compose()["services"]["redis"]["volumes"])


def test_every_compose_variable_is_in_env_example_and_every_other_is_used():
    used = {m.group(1) for m in _VAR.finditer(COMPOSE.read_text())}
    declared = _dotenv(ENV_EXAMPLE.read_text())
    assert used and used <= set(declared), sorted(used - set(declared))
    # a name that is neither interpolated nor an Outbox setting would be a stale line
    assert {k for k in declared if not k.startswith("OUTBOX_")} <= used


def test_compose_refuses_to_start_while_a_secret_is_left_empty():
    """Each value .env.example leaves empty is required (``${VAR:?...}``): compose stops with
    a message instead of running with an empty password or no signing key."""
    raw = COMPOSE.read_text()
    empty = {k for k, v in _dotenv(ENV_EXAMPLE.read_text()).items() if not v}
    assert empty
    for name in empty:
        assert re.search(r"\$\{" + name + r":\?[^}]+\}", raw), name
        with pytest.raises(KeyError, match=name):
            _compose({**_filled_env(), name: ""})


def test_env_example_names_only_real_outbox_settings():
    """An unknown OUTBOX_* variable stops Outbox at start, so a typo here would too."""
    from config.settings import Settings

    names = set(re.findall(r"^#?\s*(OUTBOX_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    known = {f"OUTBOX_{name.upper()}" for name in Settings.model_fields}
    assert names and names <= known, sorted(names - known)


@pytest.mark.parametrize("name", OUTBOX_SERVICES)
def test_each_outbox_service_starts_with_the_example_settings(name, monkeypatch):
    """Its environment (.env as env_file, then the service's own) passes the settings, and
    the public servers' own start-up checks."""
    from config.settings import load_settings
    from outbox.commands import dev_secret_problem
    from webhooks.bounces import ListenerConfig

    service = _compose()["services"][name]
    assert service["env_file"] == [".env"]
    env = {**_filled_env(), **{k: str(v) for k, v in service["environment"].items()}}
    for key in list(os.environ):
        if key.startswith("OUTBOX_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = load_settings()
    assert cfg.amqp_url.get_secret_value() == "amqp://outbox:a1b2c3d4e5f6@rabbitmq:5672/"
    assert cfg.redis_url.get_secret_value() == "redis://redis:6379/0"
    assert cfg.http_host == "0.0.0.0"
    assert dev_secret_problem(cfg) is None and not cfg.uses_dev_secret
    if name == "bounces":
        assert ListenerConfig.from_settings(cfg).domain == "bounces.example.com"


def test_prometheus_scrapes_every_outbox_process_where_it_serves_metrics():
    services = _compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = {t: job["job_name"] for job in config["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]}
    for name in OUTBOX_SERVICES:
        env = services[name]["environment"]
        port = env.get("OUTBOX_METRICS_PORT") if name != "webhooks" else "8080"
        assert port, f"{name} serves no metrics"
        assert targets.get(f"{name}:{port}", "").startswith("outbox-"), name
        # its health check looks at the same endpoint
        assert f"http://127.0.0.1:{port}/" in " ".join(services[name]["healthcheck"]["test"])
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"] if v.startswith(".")}
    assert "/etc/prometheus/prometheus.yml" in mounted
    assert {f"/etc/prometheus/{f}" for f in config["rule_files"]} <= mounted


def test_every_bind_mount_names_a_file_of_the_repository():
    mounts = [v for s in _compose()["services"].values() for v in s.get("volumes", [])
              if v.startswith(".")]
    assert len(mounts) >= 5
    for mount in mounts:
        assert (DEPLOY / mount.split(":")[0]).exists(), mount


def test_grafana_provisions_the_prometheus_data_source_and_the_dashboard():
    services = _compose()["services"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("."))
    by_target = {target: source for source, target in mounts.items()}
    provisioning = "/etc/grafana/provisioning"
    sources = yaml.safe_load((DEPLOY / by_target[f"{provisioning}/datasources"]
                              / "prometheus.yml").read_text())["datasources"]
    [source] = sources
    assert source["type"] == "prometheus" and source["isDefault"] is True
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in services and port == "9090"
    providers = yaml.safe_load((DEPLOY / by_target[f"{provisioning}/dashboards"]
                                / "outbox.yml").read_text())["providers"]
    [provider] = providers
    folder = provider["options"]["path"]
    dashboards = [source for target, source in by_target.items()
                  if target.startswith(folder + "/")]
    assert dashboards == ["./grafana/outbox-dashboard.json"]
    import json

    dashboard = json.loads((DEPLOY / dashboards[0]).read_text())
    assert {"name": "datasource", "type": "datasource", "query": "prometheus"} in (
        dashboard["templating"]["list"])


def test_the_env_file_with_secrets_is_kept_out_of_git_and_the_image():
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/.env" in (ROOT / ".dockerignore").read_text().splitlines()


# --- Dockerfile and its lock ---------------------------------------------------------------


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock as {name: (version, hashes)}."""
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split()
        name, sep, version = spec.partition("==")
        assert sep and version, f"not pinned: {line}"
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=")]
        assert len(hashes) == len(options), f"unexpected option in: {line}"
        pins[_normal(name)] = (version, hashes)
    return pins


def test_the_lock_pins_every_dependency_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in (*project["project"]["dependencies"],
                                       *project["build-system"]["requires"])]
    pins = _lock()
    assert len(pins) > len(wanted)
    for req in wanted:
        assert _normal(req.name) in pins, f"{req.name} is not in requirements.lock"
        version, _ = pins[_normal(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version}"
    for name, (_version, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    hiredis = [r for r in wanted if r.name == "redis"][0]
    assert hiredis.extras == {"hiredis"} and "hiredis" in pins


def test_the_lock_holds_everything_the_dependencies_need():
    """Walk the installed dependency tree from pyproject's dependencies (markers for this
    interpreter): with --require-hashes a package missing from the lock fails the build."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = _lock()
    # (a requirement, the extra of the package that asked for it)
    todo = [(Requirement(r), "") for r in project["project"]["dependencies"]]
    seen: set[tuple[str, str]] = set()
    while todo:
        req, asked_with = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": asked_with}):
            continue
        key = _normal(req.name)
        assert key in pins, f"{req.name} (needed by the dependencies) is not in the lock"
        for extra in ("", *sorted(req.extras)):
            if (key, extra) not in seen:
                seen.add((key, extra))
                todo += [(Requirement(sub), extra) for sub in metadata.requires(req.name) or []]
    assert {"aiohttp", "pydantic-core", "hiredis", "multidict"} <= {k for k, _ in seen}


def test_the_dockerfile_installs_from_the_lock_and_checks_its_health():
    text = (ROOT / "Dockerfile").read_text()
    runs = " ".join(re.findall(r"^RUN (.*(?:\\\n.*)*)", text, re.M))
    assert "pip install --require-hashes -r requirements.lock" in runs
    assert "pip install --no-deps --no-build-isolation ." in runs
    assert re.search(r"^HEALTHCHECK .*\\\n\s+CMD \[\"outbox-healthcheck\"\]", text, re.M)
    copied = re.findall(r"^COPY (\S+) ", text, re.M)
    assert "requirements.lock" in copied and "deploy/healthcheck.py" in copied
    for source in copied:
        assert (ROOT / source).exists(), source
    # the lock comes before the code, so a code change does not reinstall the dependencies
    assert text.index("COPY requirements.lock") < text.index("COPY outbox")
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert not set(copied) & set(ignored)


# --- the health check script ----------------------------------------------------------------


def _healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_health_check_finds_what_each_command_serves():
    hc = _healthcheck()
    env = {"OUTBOX_HTTP_HOST": "0.0.0.0", "OUTBOX_METRICS_PORT": "9100"}
    assert hc.default_targets(env, "worker") == ["http://127.0.0.1:9100/metrics"]
    assert hc.default_targets(env, "webhooks") == ["http://127.0.0.1:8080/healthz"]
    assert hc.default_targets({**env, "OUTBOX_HTTP_PORT": "9000"}, "run") == [
        "http://127.0.0.1:9000/healthz"]
    assert hc.default_targets({**env, "OUTBOX_METRICS_PORT": "9101"}, "bounces") == [
        "http://127.0.0.1:9101/metrics", "tcp://127.0.0.1:2626"]
    assert hc.default_targets({"OUTBOX_HTTP_HOST": "::1"}, "webhooks") == [
        "http://[::1]:8080/healthz"]
    assert hc.default_targets({"OUTBOX_METRICS_PORT": "0"}, "worker") == []
    assert hc.main_command(b"/usr/local/bin/python3.11\0/usr/local/bin/outbox\0"
                           b"--log-level\0DEBUG\0worker\0") == "worker"
    assert hc.main_command(b"/usr/local/bin/outbox\0webhooks\0--port\x008080\0") == "webhooks"
    assert hc.main_command(b"sleep\0infinity\0") is None


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_healthcheck(*targets: str) -> subprocess.CompletedProcess[str]:
    # a proxy in the environment must not be used for a check on this host
    env = {**os.environ, "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    return subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py"), *targets],
                          capture_output=True, text=True, timeout=30, env=env, check=False)


def test_the_health_check_passes_only_when_every_target_answers(http_port):
    ok = _run_healthcheck(f"http://127.0.0.1:{http_port}/healthz", f"tcp://127.0.0.1:{http_port}")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    down = _run_healthcheck(f"http://127.0.0.1:{http_port}/healthz",
                            f"http://127.0.0.1:{http_port}/readyz")
    assert down.returncode == 1
    assert down.stderr == f"unhealthy: http://127.0.0.1:{http_port}/readyz: HTTP 503\n"
    closed = _free_port()
    for target in (f"tcp://127.0.0.1:{closed}", f"http://127.0.0.1:{closed}/metrics",
                   "ftp://127.0.0.1/x"):
        refused = _run_healthcheck(target)
        assert refused.returncode == 1, target
        assert refused.stderr.startswith(f"unhealthy: {target}: ")
        assert refused.stderr.count("\n") == 1
