"""Outbox settings: one frozen, typed model, built once at start and passed down.

Sources, highest first: ``OUTBOX_*`` environment variables, then the TOML file named by
``OUTBOX_CONFIG`` (optional), then the defaults, which suit a development machine.
A bad value raises :class:`SettingsError`, whose message names the setting.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as PydanticSettingsError

from config.reputation import ReputationSettings
from config.roles import AdminToken, parse_admin_tokens

#: the account id rule of suppression.ids (config sits below it: tests/unit/test_settings.py
#: checks the two agree)
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")

ENV_PREFIX = "OUTBOX_"

#: The development default of ``OUTBOX_SECRET_KEY``; refused where the public can reach us.
DEV_SECRET_KEY = "dev-only-secret-change-me"

#: The job categories (as sender.models.Category; config imports nothing of the project).
JobCategory = Literal["marketing", "transactional", "notification"]
#: Delay tiers for retries, in seconds (``outbox.retry.<seconds>`` queues).
DEFAULT_RETRY_TIERS = (10, 60, 300, 1800, 7200)
#: The shortest retention of a job's timeline or a recipient's job index, other than 0 (off).
MIN_RETENTION = 3600
#: The most worker processes one supervisor starts (a typo must not fork thousands).
MAX_WORKER_PROCESSES = 256


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting (as its env variable)."""


class SmtpTarget(BaseModel):
    """The relay parsed from ``OUTBOX_SMTP_URL``."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    username: str | None = None
    password: SecretStr | None = None
    use_tls: bool = False  # implicit TLS (smtps://)
    start_tls: bool | None = None  # None: upgrade when the server offers it
    verify_tls: bool = True
    local_hostname: str | None = None

    @property
    def name(self) -> str:
        """``host:port``: how logs and metrics name the relay (no credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_smtp_url(url: str) -> SmtpTarget:
    """Parse ``smtp://user:pass@host:port?starttls=true`` or ``smtps://...``."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(f"scheme must be smtp:// or smtps://, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("no host in SMTP URL")
    query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"starttls", "verify", "local_hostname"}
    if unknown:
        raise ValueError(f"unknown SMTP URL option(s): {', '.join(sorted(unknown))}")
    implicit = parts.scheme == "smtps"
    try:
        port = parts.port or (465 if implicit else 25)
    except ValueError as exc:
        raise ValueError(f"bad port in SMTP URL: {exc}") from None
    return SmtpTarget(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=SecretStr(unquote(parts.password)) if parts.password else None,
        use_tls=implicit,
        start_tls=_flag(query["starttls"], "starttls") if "starttls" in query else None,
        verify_tls=_flag(query.get("verify", "true"), "verify"),
        local_hostname=query.get("local_hostname"),
    )


def split_urls(value: str) -> list[str]:
    """The URLs of a setting that may list several, comma-separated, in order of preference
    (``OUTBOX_SMTP_URL``, ``OUTBOX_AMQP_URL``); blanks around them are dropped. A comma inside
    a password is written ``%2C``."""
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_smtp_urls(value: str) -> list[SmtpTarget]:
    """Every relay of ``OUTBOX_SMTP_URL``, the primary first; ValueError naming the bad one
    (by its position: the URL may hold a password)."""
    urls = split_urls(value)
    if not urls:
        raise ValueError("no SMTP URL")
    targets = []
    for n, url in enumerate(urls, 1):
        try:
            targets.append(parse_smtp_url(url))
        except ValueError as exc:
            raise ValueError(f"relay {n} of {len(urls)}: {exc}" if len(urls) > 1 else str(exc)
                             ) from None
    names = [t.name for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"relay {', '.join(twice)} is listed twice")
    return targets


def parse_nameserver(text: str) -> tuple[str, int]:
    """``host[:port]`` of ``OUTBOX_DNS_NAMESERVERS``: an IPv4 or IPv6 address (IPv6 with a
    port in brackets, ``[::1]:5353``), port 53 by default; ValueError otherwise."""
    text = text.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not host[:port]")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{text!r}: a name server is an IP address[:port], "
                         f"e.g. 127.0.0.1:5353 or [::1]:53") from None
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return address, int(port)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity: a container's limit), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_processes(value: Any) -> int:
    """``OUTBOX_WORKER_PROCESSES`` or ``--processes``: a whole number from 1 to
    :data:`MAX_WORKER_PROCESSES`, or ``auto`` (:func:`cpu_count`); ValueError otherwise."""
    text = str(value).strip().lower()
    if text == "auto":
        return min(cpu_count(), MAX_WORKER_PROCESSES)
    if (isinstance(value, bool) or not (text.isascii() and text.isdigit())
            or not 1 <= int(text) <= MAX_WORKER_PROCESSES):
        raise ValueError(f"must be a whole number from 1 to {MAX_WORKER_PROCESSES} or auto, "
                         f"not {value!r}")
    return int(text)


def _int_pairs(value: str, error: str, *, lower: bool = True) -> dict[str, int]:
    """``a=1, B=2`` (from the environment) as ``{"a": 1, "b": 2}`` (names kept as written
    with ``lower=False``); ``ValueError(error)`` for an item that is not a name=whole number
    pair."""
    try:
        pairs = (item.split("=", 1) for item in value.split(",") if item.strip())
        return {(name.strip().lower() if lower else name.strip()): int(n)
                for name, n in pairs}
    except ValueError:
        raise ValueError(error) from None


def _flag(value: str, name: str) -> bool:
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean")


class Settings(ReputationSettings, BaseSettings):
    """Every knob of Outbox. Frozen: build once with :func:`load_settings`, pass it down.

    The account limits and reputation settings (``account_rate`` ... ``probation_seconds``)
    come from :class:`ReputationSettings`, made from their one declaration in
    :mod:`config.reputation`; read them as a :class:`config.reputation.Policy`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", case_sensitive=False
    )

    # --- connections -------------------------------------------------------------------
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    #: OUTBOX_REDIS_URL names one node of a Redis Cluster (the client reads the others from it)
    redis_cluster: bool = False
    smtp_url: SecretStr = SecretStr("smtp://127.0.0.1:2525")
    smtp_pool_size: int = Field(16, ge=1, le=512)
    smtp_timeout: float = Field(30.0, gt=0)
    #: the wait for the relay's reply to the end of DATA (RFC 5321 4.5.3.2.6: 10 minutes); a
    #: send that gets none is of unknown outcome and is retried only as after a crash
    smtp_data_timeout: float = Field(600.0, gt=0)
    smtp_max_messages_per_connection: int = Field(1000, ge=1)
    smtp_idle_timeout: float = Field(60.0, gt=0)
    #: seconds between two probes of a relay marked down (a fallback of OUTBOX_SMTP_URL
    #: carries its traffic until a probe finds it up)
    smtp_relay_probe_interval: float = Field(15.0, gt=0)
    #: sends in flight per recipient domain: "domain=n,..." over the built-in defaults
    smtp_domain_concurrency: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    smtp_domain_concurrency_default: int = Field(32, ge=1)
    #: per job category, the relay of OUTBOX_SMTP_URL (by position, 1 = the first) its mail goes
    #: through first: "marketing=2"; the other relays, in their order, are its fallbacks
    smtp_routes: Annotated[dict[JobCategory, int], NoDecode] = Field(default_factory=dict)
    #: per account, its first relay the same way ("acct_bank=2"); over the category's route
    smtp_account_routes: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    #: reply-driven shaping (suppression.destinations): a slow-down reply (Gmail 421 4.7.28,
    #: Yahoo [TSS04], Microsoft 451 4.7.650...) slows its destination (provider and relay)
    shaping: bool = True
    #: a destination's nominal rate (messages a second over every worker), where a first cut
    #: starts and recovery ends
    shaping_rate: float = Field(50.0, gt=0)
    #: a cut multiplies the destination's rate by this
    shaping_decrease: float = Field(0.5, gt=0, lt=1)
    #: the lowest rate a cut leaves (and the rate a pause resumes at)
    shaping_min_rate: float = Field(0.5, gt=0)
    #: seconds a cut rate holds before recovery begins
    shaping_hold: float = Field(60.0, ge=0)
    #: messages a second given back every OUTBOX_SHAPING_STEP_PERIOD seconds of recovery
    shaping_step: float = Field(5.0, gt=0)
    shaping_step_period: float = Field(30.0, gt=0)
    #: this many cuts within OUTBOX_SHAPING_WINDOW seconds pause the destination
    shaping_pause_after: int = Field(5, ge=1)
    shaping_window: float = Field(600.0, gt=0)
    #: seconds a paused destination gets no mail; then it resumes on its own
    shaping_pause: float = Field(900.0, gt=0)

    # --- worker --------------------------------------------------------------------------
    prefetch: int = Field(64, ge=1, le=10000)
    concurrency: int = Field(64, ge=1, le=10000)
    #: the share of the concurrency slots the bulk lanes (marketing) may hold while priority
    #: jobs wait or run; with no priority work they may use them all
    bulk_share: float = Field(0.5, gt=0, le=1)
    #: micro-batching: the longest a job's Redis round trip waits for other jobs' to share
    #: one write (milliseconds; 0 = those made in the same turn of the event loop) ...
    batch_wait_ms: float = Field(2.0, ge=0, le=100)
    #: ... and the most jobs whose round trips share one write (1 = no batching)
    batch_max: int = Field(128, ge=1, le=10000)
    #: on SIGTERM, time for sends in flight; at least smtp_timeout (a send may wait that long
    #: for the relay's reply, and one cut mid-DATA may already be stored: a duplicate)
    shutdown_grace: float = Field(40.0, ge=0)
    #: worker processes of ``outbox worker`` (and of ``outbox run``'s worker part): above 1, a
    #: supervisor starts, restarts and drains them (outbox/supervisor.py); "auto" = CPU count
    worker_processes: int = 1
    idempotency_ttl: int = Field(3 * 86400, ge=3600, description="seconds a job id is remembered")
    #: seconds a job's timeline is kept beyond its newest entry (which the job record holds,
    #: for idempotency_ttl), and the recipients' job indexes (``outbox history``); unset: as
    #: idempotency_ttl; 0: not written (saves Redis memory: README "Sizing Redis")
    retention_timelines: int | None = Field(None, ge=0)
    retention_history: int | None = Field(None, ge=0)
    retry_tiers: Annotated[tuple[int, ...], NoDecode] = DEFAULT_RETRY_TIERS
    retry_max_attempts: int = Field(12, ge=1)
    retry_max_age: int = Field(86400, ge=60, description="seconds after enqueue to give up")
    max_job_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    #: jobs of a blocked or suspended account are held (suppression/held.py): this long at
    #: most, then they end `expired`; and at most this many jobs and bytes per account (one
    #: more ends `blocked`, reason hold_full, logged at ERROR)
    hold_seconds: int = Field(72 * 3600, ge=1)
    hold_max_jobs: int = Field(10_000, ge=1)
    hold_max_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    #: the furthest ahead a job's ``send_at`` may be (seconds); a job further ahead is
    #: rejected with the reason (README, "Send later")
    schedule_max_ahead: int = Field(30 * 86400, ge=60, le=366 * 86400)
    #: an email job's attachments: at most this many, of at most this many bytes together
    #: (decoded; the job itself must still fit max_job_bytes: base64 adds a third)
    max_attachments: int = Field(10, ge=0)
    max_attachment_bytes: int = Field(10 * 1024 * 1024, ge=0)
    #: status events kept in outbox.status when the CRM does not consume (oldest dropped
    #: first); 0 = unbounded. Must match the queue's existing x-max-length.
    status_queue_max_length: int = Field(100_000, ge=0)
    message_id_domain: str = "outbox.localhost"
    bounce_domain: str | None = None  # VERP: envelope sender bounce+<acct>+<job>@<this>
    #: the relay behind OUTBOX_SMTP_URL, so its events can name the job and account again
    smtp_relay: Literal["smtp", "ses", "sendgrid", "mailgun", "postmark"] = "smtp"
    email_check_mx: bool = False
    #: DKIM-sign every email with its account's key for the From domain (off for a relay
    #: that signs itself, e.g. SES with Easy DKIM)
    dkim: bool = True
    #: every DNS lookup of Outbox (MX checks, `outbox domains verify`): comma-separated
    #: host[:port] (IP addresses); empty = the system's resolver
    dns_nameservers: Annotated[tuple[tuple[str, int], ...], NoDecode] = ()
    #: a job's from (and reply_to) must be on a domain verified for its account, an SMS's
    #: sender one configured for it (`outbox domains`, `accounts configure --sms-senders`)
    require_verified_senders: bool = True
    metrics_port: int = Field(0, ge=0, le=65535)
    #: Outbox's own loggers (libraries log at WARNING unless DEBUG); --log-level overrides
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: json: one object a line (ts, level, logger, msg, fields); text: readable, for a terminal
    log_format: Literal["json", "text"] = "json"
    # account limits and reputation (account_rate ... probation_seconds): ReputationSettings

    # --- twilio ---------------------------------------------------------------------------
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_api_base: str = "https://api.twilio.com"
    twilio_rate_per_sender: float = Field(10.0, gt=0, description="messages/s per number")
    #: a second path for SMS while the first cannot be used (sender/channels/twilio.py): another
    #: account (SID and token; the first's when not given) or the first account's other
    #: Messaging Service, with its own sender (FROM or MESSAGING_SERVICE_SID) and API base
    twilio_fallback_account_sid: str | None = None
    twilio_fallback_auth_token: SecretStr | None = None
    twilio_fallback_from: str | None = None
    twilio_fallback_messaging_service_sid: str | None = None
    twilio_fallback_api_base: str | None = None
    #: seconds an SMS path that could not be used stays marked down before it is tried again
    twilio_probe_interval: float = Field(15.0, gt=0)
    sms_region: str = Field("HK", pattern=r"^[A-Z]{2}$", description="for numbers without +")
    sms_max_segments: int = Field(10, ge=1, le=10)

    # --- email provider webhooks (webhooks/providers/routes.py; unset secret = 404) -----------
    #: SNS topics whose messages are accepted; none = /webhooks/ses off (any AWS account can
    #: get SNS to sign a message, so the topic is what makes one ours)
    ses_topic_arns: Annotated[tuple[str, ...], NoDecode] = ()
    sendgrid_public_key: SecretStr | None = None  # base64 DER, as SendGrid shows it
    mailgun_signing_key: SecretStr | None = None
    postmark_webhook_user: str | None = None
    postmark_webhook_password: SecretStr | None = None

    # --- webhooks / http --------------------------------------------------------------------
    public_url: str = "http://127.0.0.1:8080"
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    #: a connection idle this long is closed, and so is one whose request headers have not
    #: all come this long after it opened (or after its previous answer): a slow-loris
    http_idle_timeout: float = Field(30.0, gt=0, le=3600)
    #: a request's body must have come whole this long after its headers (408 and closed)
    http_body_timeout: float = Field(20.0, gt=0, le=3600)
    #: comma-separated: the first signs (unsubscribe tokens, VERP addresses), all verify, so a
    #: rotated-out key keeps old links working (UEMO: at least 30 days after sending)
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)
    #: NAME:ROLE:TOKEN entries (or bare tokens: admin), comma-separated: config/roles.py
    admin_tokens: Annotated[tuple[AdminToken, ...], NoDecode] = ()
    bounces_port: int = Field(2626, ge=0, le=65535)
    #: the bounce listener's SIZE: real delivery reports are a few kilobytes
    bounces_max_bytes: int = Field(2 * 1024 * 1024, ge=64 * 1024)
    #: per peer IP, each connection and each message takes a token (421/450 when none is left)
    bounces_rate: float = Field(2.0, gt=0, description="tokens/s per peer IP")
    bounces_burst: int = Field(60, ge=1)
    #: bytes of a message the reader examines at most (its first ones; real reports are a
    #: few kilobytes and the returned original's headers come first)
    bounces_scan_bytes: int = Field(256 * 1024, ge=16 * 1024)
    #: reader processes (the reading runs there, never on the listener's event loop)
    bounces_readers: int = Field(1, ge=1, le=32)
    #: seconds one message may take to read (the reader is then restarted; the message kept)
    bounces_read_timeout: float = Field(5.0, gt=0)
    #: per peer IP over OUTBOX_BOUNCES_SOURCE_WINDOW seconds: message bytes received and CPU
    #: seconds spent reading them (450 past either, until the window has drained)
    bounces_source_bytes: int = Field(10 * 1024 * 1024, ge=64 * 1024)
    bounces_source_cpu: float = Field(2.0, gt=0)
    bounces_source_window: float = Field(60.0, gt=0)
    #: seconds: without a command; from DATA to the end of the message; a whole connection
    bounces_idle_timeout: float = Field(30.0, gt=0)
    bounces_data_timeout: float = Field(30.0, gt=0)
    bounces_connection_timeout: float = Field(60.0, gt=0)

    # --- development sinks -------------------------------------------------------------------
    dev_mail_dir: Path = Path("var/mail")
    dev_sms_dir: Path = Path("var/sms")
    dev_smtp_port: int = Field(2525, ge=0, le=65535)
    dev_twilio_port: int = Field(8081, ge=0, le=65535)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # explicit overrides, then OUTBOX_* variables, then the TOML file, then defaults
        path = os.environ.get(f"{ENV_PREFIX}CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        return tuple(sources)

    @field_validator("smtp_url")
    @classmethod
    def _check_smtp_url(cls, value: SecretStr) -> SecretStr:
        parse_smtp_urls(value.get_secret_value())
        return value

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: SecretStr) -> SecretStr:
        urls = split_urls(value.get_secret_value())
        if not urls:
            raise ValueError("must be an amqp:// or amqps:// URL")
        for n, url in enumerate(urls, 1):
            parts = urlsplit(url)
            which = f"node {n} of {len(urls)}: " if len(urls) > 1 else ""
            if parts.scheme not in ("amqp", "amqps"):
                raise ValueError(f"{which}must be an amqp:// or amqps:// URL")
            if not parts.hostname:
                raise ValueError(f"{which}no host in the URL")
            try:
                parts.port  # noqa: B018 (a bad port raises)
            except ValueError:
                raise ValueError(f"{which}bad port in the URL") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr) -> SecretStr:
        urls = split_urls(value.get_secret_value())
        for n, url in enumerate(urls, 1):
            if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
                where = f"node {n} of {len(urls)}: " if len(urls) > 1 else ""
                raise ValueError(f"{where}must be a redis://, rediss:// or unix:// URL")
        if not urls:
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("public_url", "twilio_api_base", "twilio_fallback_api_base")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _log_case(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    @field_validator("worker_processes", mode="before")
    @classmethod
    def _check_processes(cls, value: Any) -> int:
        return parse_processes(value)

    @field_validator("retry_tiers")
    @classmethod
    def _check_tiers(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(t <= 0 for t in value) or list(value) != sorted(set(value)):
            raise ValueError("must be positive seconds, strictly increasing")
        return value

    @field_validator("admin_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> tuple[AdminToken, ...]:
        return parse_admin_tokens(value)

    @field_validator("ses_topic_arns", mode="before")
    @classmethod
    def _split_arns(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("dns_nameservers", mode="before")
    @classmethod
    def _split_nameservers(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment: comma-separated
            value = value.split(",")
        if isinstance(value, list | tuple):  # TOML: a list of "host[:port]" (or pairs)
            return tuple(parse_nameserver(t) if isinstance(t, str) else t
                         for t in value if not isinstance(t, str) or t.strip())
        return value

    @field_validator("smtp_domain_concurrency", mode="before")
    @classmethod
    def _split_domains(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return _int_pairs(value, "must be domain=count pairs, e.g. gmail.com=20,qq.com=5")

    @field_validator("smtp_routes", mode="before")
    @classmethod
    def _split_routes(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        routes = _int_pairs(value, "must be category=relay pairs (the relay's position in "
                                   "OUTBOX_SMTP_URL), e.g. marketing=2,transactional=1")
        known = get_args(JobCategory)
        for category in routes:
            if category not in known:
                raise ValueError(f"unknown category {category!r}: one of {', '.join(known)}")
        return routes

    @field_validator("smtp_account_routes", mode="before")
    @classmethod
    def _split_account_routes(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        routes = _int_pairs(value, "must be account=relay pairs (the relay's position in "
                                   "OUTBOX_SMTP_URL), e.g. acct_bank=2,acct_shop=1",
                            lower=False)  # account ids are case-sensitive
        for account in routes:
            if not _ACCOUNT_ID.fullmatch(account):
                raise ValueError(f"{account[:40]!r} is not an account id (1-128 characters "
                                 "of A-Z a-z 0-9 . _ -, starting with a letter or digit)")
        return routes

    @field_validator("retry_tiers", mode="before")
    @classmethod
    def _split_tiers(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return tuple(int(t) for t in value.split(",") if t.strip())
            except ValueError:
                raise ValueError("must be comma-separated whole seconds, e.g. 10,60,300") from None
        return value

    @field_validator("secret_key")
    @classmethod
    def _check_secret_keys(cls, value: SecretStr) -> SecretStr:
        keys = [k.strip() for k in value.get_secret_value().split(",")]
        if not keys or any(not k for k in keys):
            raise ValueError("must be one key or a comma-separated list of keys, none empty")
        if any(len(k) < 16 for k in keys if k != DEV_SECRET_KEY):
            raise ValueError("each key must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _grace_covers_a_send(self) -> Settings:
        if self.shutdown_grace < self.smtp_timeout:
            raise ValueError(
                f"OUTBOX_SHUTDOWN_GRACE ({self.shutdown_grace:g} s) must be at least "
                f"OUTBOX_SMTP_TIMEOUT ({self.smtp_timeout:g} s): a send in flight at shutdown "
                "may wait that long for the relay's reply")
        return self

    @model_validator(mode="after")
    def _retention_within_jobs(self) -> Settings:
        for name in ("retention_timelines", "retention_history"):
            value = getattr(self, name)
            if value is None or value == 0:
                continue
            env = f"{ENV_PREFIX}{name.upper()}"
            if value < MIN_RETENTION:
                raise ValueError(f"{env} ({value} s) must be 0 (not kept) or at least "
                                 f"{MIN_RETENTION} s")
            if value > self.idempotency_ttl:
                raise ValueError(
                    f"{env} ({value} s) must not exceed OUTBOX_IDEMPOTENCY_TTL "
                    f"({self.idempotency_ttl} s): what it keeps is read with the job's record")
        return self

    @property
    def timeline_ttl(self) -> int:
        """Seconds a job's timeline list is kept (0: not written)."""
        value = self.retention_timelines
        return self.idempotency_ttl if value is None else value

    @property
    def history_ttl(self) -> int:
        """Seconds the recipients' job indexes are kept (0: not written)."""
        value = self.retention_history
        return self.idempotency_ttl if value is None else value

    @model_validator(mode="after")
    def _cluster_url(self) -> Settings:
        urls = split_urls(self.redis_url.get_secret_value())
        if not self.redis_cluster:
            if len(urls) > 1:
                raise ValueError("OUTBOX_REDIS_URL lists several nodes: that is a Redis "
                                 "Cluster's (set OUTBOX_REDIS_CLUSTER=true); one Redis is "
                                 "one URL")
            return self
        for parts in map(urlsplit, urls):
            if parts.scheme == "unix":
                raise ValueError("OUTBOX_REDIS_CLUSTER: a Redis Cluster is reached over TCP: "
                                 "OUTBOX_REDIS_URL must be a redis:// or rediss:// URL")
            if parts.path.strip("/") not in ("", "0"):
                raise ValueError("OUTBOX_REDIS_CLUSTER: a Redis Cluster has only db 0, not "
                                 f"{parts.path.strip('/')!r} (OUTBOX_REDIS_URL)")
        return self

    @model_validator(mode="after")
    def _twilio_complete(self) -> Settings:
        parts = (self.twilio_account_sid, self.twilio_auth_token)
        if any(parts) and not all(parts):
            raise ValueError("OUTBOX_TWILIO_ACCOUNT_SID and OUTBOX_TWILIO_AUTH_TOKEN go together")
        if all(parts) and not (self.twilio_from or self.twilio_messaging_service_sid):
            raise ValueError("Twilio needs OUTBOX_TWILIO_FROM or "
                             "OUTBOX_TWILIO_MESSAGING_SERVICE_SID")
        return self._twilio_fallback_complete()

    def _twilio_fallback_complete(self) -> Settings:
        fallback = (self.twilio_fallback_account_sid, self.twilio_fallback_auth_token,
                    self.twilio_fallback_from, self.twilio_fallback_messaging_service_sid,
                    self.twilio_fallback_api_base)
        if not any(fallback):
            return self
        if not self.twilio_configured:
            raise ValueError("OUTBOX_TWILIO_FALLBACK_*: a fallback needs the first path "
                             "(OUTBOX_TWILIO_ACCOUNT_SID and OUTBOX_TWILIO_AUTH_TOKEN)")
        other = self.twilio_fallback_account_sid not in (None, self.twilio_account_sid)
        if other and self.twilio_fallback_auth_token is None:
            raise ValueError("OUTBOX_TWILIO_FALLBACK_ACCOUNT_SID of another account needs "
                             "OUTBOX_TWILIO_FALLBACK_AUTH_TOKEN")
        if not (self.twilio_fallback_from or self.twilio_fallback_messaging_service_sid):
            raise ValueError("the Twilio fallback needs OUTBOX_TWILIO_FALLBACK_FROM or "
                             "OUTBOX_TWILIO_FALLBACK_MESSAGING_SERVICE_SID")
        return self

    @model_validator(mode="after")
    def _routes_name_relays(self) -> Settings:
        count = len(self.smtp_relays)
        for name, routes in (("OUTBOX_SMTP_ROUTES", self.smtp_routes),
                             ("OUTBOX_SMTP_ACCOUNT_ROUTES", self.smtp_account_routes)):
            for key, n in routes.items():
                if not 1 <= n <= count:
                    raise ValueError(f"{name}: {key}={n}, but OUTBOX_SMTP_URL names {count} "
                                     f"relay{'s' if count > 1 else ''}")
        return self

    @model_validator(mode="after")
    def _shaping_rates(self) -> Settings:
        if self.shaping_min_rate > self.shaping_rate:
            raise ValueError("OUTBOX_SHAPING_MIN_RATE must not exceed OUTBOX_SHAPING_RATE")
        return self

    @property
    def smtp(self) -> SmtpTarget:
        """The primary SMTP relay (the first of ``OUTBOX_SMTP_URL``)."""
        return self.smtp_relays[0]

    @property
    def smtp_relays(self) -> list[SmtpTarget]:
        """Every relay of ``OUTBOX_SMTP_URL``, in order of preference."""
        return parse_smtp_urls(self.smtp_url.get_secret_value())

    @property
    def amqp_urls(self) -> list[str]:
        """The RabbitMQ nodes of ``OUTBOX_AMQP_URL`` (any of them will do)."""
        return split_urls(self.amqp_url.get_secret_value())

    @property
    def secret_keys(self) -> tuple[str, ...]:
        """``OUTBOX_SECRET_KEY`` as a list: the first signs, every one verifies."""
        return tuple(k.strip() for k in self.secret_key.get_secret_value().split(","))

    @property
    def signing_key(self) -> str:
        """The key new tokens and VERP addresses are signed with."""
        return self.secret_keys[0]

    @property
    def uses_dev_secret(self) -> bool:
        """Whether the development default is among the keys."""
        return DEV_SECRET_KEY in self.secret_keys

    @property
    def twilio_configured(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    @property
    def twilio_fallback_configured(self) -> bool:
        return self.twilio_configured and bool(self.twilio_fallback_from or
                                               self.twilio_fallback_messaging_service_sid)

    def twilio_auth_tokens(self) -> dict[str, str]:
        """Account SID → auth token of every Twilio account configured (the webhook server
        checks a callback's signature with the token of the account it names)."""
        tokens: dict[str, str] = {}  # the first account's first
        if self.twilio_account_sid and self.twilio_auth_token:
            tokens[self.twilio_account_sid] = self.twilio_auth_token.get_secret_value()
        if self.twilio_fallback_configured and self.twilio_fallback_auth_token:
            tokens.setdefault(self.twilio_fallback_account_sid or "",
                              self.twilio_fallback_auth_token.get_secret_value())
        return tokens


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from ``os.environ`` and the optional TOML file ``OUTBOX_CONFIG``.

    Keyword ``overrides`` win over both (the CLI and tests use them).
    """
    _read_toml(os.environ.get(f"{ENV_PREFIX}CONFIG"))  # fail early, with the file named
    unknown_env = _unknown_env(dict(os.environ))
    if unknown_env:
        raise SettingsError(f"unknown setting(s): {', '.join(unknown_env)}")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except PydanticSettingsError as exc:  # a value the source itself could not decode
        raise SettingsError(f"invalid settings: {exc}") from None


def _read_toml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(f"OUTBOX_CONFIG: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"OUTBOX_CONFIG: {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise SettingsError(f"OUTBOX_CONFIG: unknown setting(s) in {path}: {', '.join(unknown)}")
    return data


def _unknown_env(env: dict[str, str]) -> list[str]:
    known = {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}
    known.add(f"{ENV_PREFIX}CONFIG")
    allowed_other = {f"{ENV_PREFIX}TEST_", f"{ENV_PREFIX}BENCH_"}  # harness variables
    return sorted(
        k
        for k in env
        if k.upper().startswith(ENV_PREFIX)
        and k.upper() not in known
        and not any(k.upper().startswith(p) for p in allowed_other)
    )


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if not name:  # a rule across settings: its message names them
            lines.append(msg)
            continue
        label = f"{ENV_PREFIX}{name.upper()}" if name in Settings.model_fields else name
        lines.append(f"{label}: {msg}")
    return "invalid settings: " + "; ".join(lines)
