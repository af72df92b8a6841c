"""The pieces of sender identity that need no service: sender domains and SMS senders as the
pre-send script reads them, sealed keys across a secret-key rotation, DKIM key records, the
OUTBOX_DNS_NAMESERVERS setting and the resolver every DNS lookup uses."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from config import SettingsError, load_settings
from config.settings import parse_nameserver
from suppression import dkim_keys
from suppression.domains import Publishing, canonical_domain, records_to_publish
from suppression.entries import BadEntry
from suppression.sealed import Sealer, Unsealable
from suppression.senders import check_arg, domains_of, sms_sender, sms_senders

K1, K2 = "first-secret-key-0123456789", "second-secret-key-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("OUTBOX_"):
            monkeypatch.delenv(key)


def test_a_sender_is_covered_by_its_domain_and_each_parent():
    assert domains_of("Shop <News@Mail.Shop.Example>") == \
        (("mail.shop.example", "shop.example"),)
    assert domains_of("a@bücher.example") == (("xn--bcher-kva.example",),)
    assert domains_of("a@x.example, b@y.example") == (("x.example",), ("y.example",))
    assert domains_of("no address here") == ((),)  # never verified
    assert domains_of("a@localhost") == ((),)


def test_the_check_argument_names_every_address():
    arg = json.loads(check_arg("email", "marketing", "S <s@shop.example>",
                               "a@help.example, b@other.example"))
    assert arg == {"f": [["shop.example"]], "m": 1,
                   "r": [["help.example"], ["other.example"]]}
    assert json.loads(check_arg("sms", "transactional", "+852 6123 4567", None)) == \
        {"s": "+85261234567"}
    assert check_arg("sms", "transactional", None, None) == "{}"  # Outbox's own sender


def test_sms_senders_are_kept_in_one_form():
    assert sms_sender("6123 4567") == "+85261234567"
    assert sms_sender(" #ShopHK ") == "#ShopHK"  # a Hong Kong registered sender ID
    assert sms_sender("MG" + "a" * 32) == "MG" + "a" * 32
    assert sms_senders("+852 6123 4567, #ShopHK,,+85261234567") == "+85261234567,#ShopHK"


def test_a_rotated_secret_key_list_still_opens_old_keys():
    sealed = Sealer([K1]).seal(b"private key", "dkim/a/shop.example/s1")
    assert Sealer([K2, K1]).open(sealed, "dkim/a/shop.example/s1") == b"private key"
    assert Sealer([K2, K1]).seal(b"x", "p") != Sealer([K2, K1]).seal(b"x", "p")  # nonce
    with pytest.raises(Unsealable, match="OUTBOX_SECRET_KEY"):
        Sealer([K2]).open(sealed, "dkim/a/shop.example/s1")
    with pytest.raises(Unsealable):  # copied to another place, it does not open
        Sealer([K1]).open(sealed, "dkim/b/shop.example/s1")
    assert "private key" not in sealed


def test_dkim_records_publish_the_public_keys():
    pem = dkim_keys.generate_rsa()
    value = dkim_keys.public_record(pem)
    assert value.startswith("v=DKIM1; k=rsa; p=")
    key = load_der_public_key(base64.b64decode(dkim_keys.record_tags(value)["p"]))
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    ed = dkim_keys.public_record(dkim_keys.generate_ed25519())
    assert ed.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(dkim_keys.record_tags(ed)["p"])) == 32
    assert dkim_keys.record_tags("v=DKIM1; k=rsa; p=AB CD\tEF") == \
        {"v": "DKIM1", "k": "rsa", "p": "ABCDEF"}  # a key split over strings


def test_records_to_publish_without_a_bounce_domain_have_no_return_path():
    record = {"domain": "shop.example", "keys": [
        {"selector": "s1", "algorithm": dkim_keys.RSA, "public": "AAA", "state": "active"},
        {"selector": "s0", "algorithm": dkim_keys.RSA, "public": "BBB", "state": "retiring"}]}
    out = records_to_publish(record, Publishing("outbox.example"))
    assert [(r["name"], r["type"]) for r in out] == [
        ("s1._domainkey.shop.example", "TXT"), ("shop.example", "TXT"),
        ("_dmarc.shop.example", "TXT")]
    assert out[1]["value"] == "v=spf1 include:outbox.example ~all"


@pytest.mark.parametrize("bad", ["localhost", "", "exa mple.com", "-x.example"])
def test_a_sending_domain_must_be_a_domain(bad):
    with pytest.raises(BadEntry):
        canonical_domain(bad)


def test_canonical_domain():
    assert canonical_domain(" Shop.Example. ") == "shop.example"
    assert canonical_domain("bücher.example") == "xn--bcher-kva.example"


def test_nameservers_are_ip_addresses_with_optional_ports():
    assert parse_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_nameserver(" 127.0.0.1:5353 ") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    for bad in ("dns.example.com", "127.0.0.1:0", "127.0.0.1:x", "[::1]x"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


def test_nameservers_from_the_toml_file(monkeypatch, tmp_path):
    cfg = tmp_path / "outbox.toml"
    cfg.write_text('dns_nameservers = ["127.0.0.1:5353", "::1"]\n')
    monkeypatch.setenv("OUTBOX_CONFIG", str(cfg))
    assert load_settings().dns_nameservers == (("127.0.0.1", 5353), ("::1", 53))
    cfg.write_text('dns_nameservers = ["ns.example"]\n')
    with pytest.raises(SettingsError, match="OUTBOX_DNS_NAMESERVERS"):
        load_settings()


def test_a_bad_nameserver_list_is_refused_naming_the_setting(monkeypatch):
    monkeypatch.setenv("OUTBOX_DNS_NAMESERVERS", "127.0.0.1:53,resolver.example")
    with pytest.raises(SettingsError, match="OUTBOX_DNS_NAMESERVERS: .*resolver.example"):
        load_settings()


def test_every_dns_lookup_uses_the_configured_nameservers(monkeypatch):
    from sender.channels.smtp import build
    from sender.resolver import make_resolver

    monkeypatch.setenv("OUTBOX_DNS_NAMESERVERS", "127.0.0.1:5300, [::1]:5301")
    settings = load_settings(email_check_mx=True)
    assert settings.dns_nameservers == (("127.0.0.1", 5300), ("::1", 5301))
    resolver = make_resolver(settings.dns_nameservers)
    assert [(n.address, n.port) for n in resolver.nameservers] == \
        [("127.0.0.1", 5300), ("::1", 5301)]
    mx = build(settings)._options.mx  # the MX check's resolver
    assert mx is not None
    assert [(n.address, n.port) for n in mx._resolver.nameservers] == \
        [("127.0.0.1", 5300), ("::1", 5301)]


def test_senders_are_checked_by_default_and_the_dev_banner_says_what_it_verified():
    from outbox.commands import DEV_SENDERS, ready_banner

    settings = load_settings()
    assert settings.require_verified_senders is True
    banner = ready_banner(settings)
    assert "demo.example, example.com verified for acct_demo without DNS" in banner
    assert "without DNS" not in ready_banner(load_settings(require_verified_senders=False))
    assert DEV_SENDERS == {"acct_demo": ("demo.example", "example.com")}


def test_dev_senders_cover_every_example_job():
    """The jobs of examples/ and the README's walkthrough go out under `outbox run --dev`."""
    import re
    from pathlib import Path

    from outbox.commands import DEV_SENDERS, EXAMPLE_JOB
    from tests.docs import docs_text

    root = Path(__file__).resolve().parents[2]
    examples = root / "examples"
    jobs = [json.loads(line) for p in examples.glob("*.jsonl")
            for line in p.read_text().splitlines() if line.strip()]
    jobs += [json.loads(p.read_text()) for p in examples.glob("*.json")]
    readme = docs_text()
    jobs += [json.loads(m) for m in re.findall(r"echo '(\{.*?\})'", readme)]
    jobs.append(EXAMPLE_JOB)
    email = [j for j in jobs if j.get("channel") == "email"]
    assert len(email) >= 5
    for job in email:
        covered = DEV_SENDERS.get(job["account_id"], ())
        for header in (job["from"], job.get("reply_to") or ""):
            for candidates in domains_of(header) if header else ():
                assert set(candidates) & set(covered), (job["id"], header)
