"""Imports module by module, not only package by package (``test_layout.py``): what a fresh
interpreter loads for one import. The CRM's client and the queue layout load no sender (no SMTP,
Twilio, aiohttp or DNS code); the webhook server loads neither the job pipeline nor the senders;
the worker imports a channel's sender when it builds it (the registry names it by a dotted
path)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: what sends: the senders and what only they use, and their libraries
SENDERS = ("sender.channels.smtp", "sender.channels.twilio", "sender.channels.mx",
           "sender.mime", "sender.dkim", "sender.resolver", "aiosmtplib")
#: what runs jobs
PIPELINE = ("sender.pipeline", "sender.worker", "sender.service", "sender.provider_event_applier")
#: what a publisher needs none of. The renderer (``sender.mime``, standard library only) is
#: not among them: the client validates a job with the worker's code (``sender.validation``),
#: which asks the renderer what it would refuse of the headers and addresses
PUBLISHER = (*(s for s in SENDERS if s != "sender.mime"), *PIPELINE, "twilio", "aiohttp", "dns")

RULES = {
    "sender.client": PUBLISHER,
    "sender.topology": PUBLISHER,
    "sender.channels.registry": PUBLISHER,
    "webhooks.app": (*SENDERS, *PIPELINE),
}


def loaded(*modules: str, then: str = "") -> set[str]:
    """The modules a fresh interpreter holds after importing ``modules`` (and running
    ``then``): ``sys.modules``, so an import inside a function counts once it has run."""
    code = "".join(f"import {m}\n" for m in modules) + then + \
        "\nimport sys\nprint('\\n'.join(sys.modules))\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def offenders(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    """The loaded modules that are, or are inside, one of ``forbidden``."""
    return sorted(m for m in modules
                  if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("module", sorted(RULES))
def test_a_module_loads_nothing_of_what_it_must_not(module: str) -> None:
    modules = loaded(module)
    assert module in modules
    assert offenders(modules, RULES[module]) == []


@pytest.mark.parametrize("name", sorted(set(PUBLISHER)))
def test_every_forbidden_name_is_a_module_that_exists(name: str) -> None:
    """A renamed module would make its rule pass silently."""
    assert importlib.util.find_spec(name) is not None


def test_the_checker_sees_the_senders_a_worker_loads() -> None:
    """The same check on a worker that has built its senders finds them."""
    found = offenders(loaded("sender.service", then="from sender.channels import registry\n"
                             "for d in registry.deliveries(): d.factory()"),
                      (*SENDERS, *PIPELINE, "twilio", "aiohttp", "dns"))
    assert {"sender.channels.smtp", "sender.channels.twilio", "sender.mime", "aiosmtplib",
            "twilio", "dns", "sender.pipeline"} <= set(found)


def test_the_worker_imports_a_sender_when_it_builds_it() -> None:
    before = loaded("sender.channels.registry")
    after = loaded("sender.channels.registry",
                   then="from sender.channels import registry\nregistry.EMAIL.factory()")
    assert "sender.channels.smtp" not in before and "sender.channels.smtp" in after
    assert "sender.channels.twilio" not in after  # only the one asked for


def test_a_malformed_sender_path_is_refused_at_declaration() -> None:
    from sender.channels import registry

    with pytest.raises(ValueError, match="package.module:function"):
        registry.Delivery(registry.EMAIL.channel, registry.EMAIL.job, "outbox.x",
                          "sender.channels.smtp.build")
