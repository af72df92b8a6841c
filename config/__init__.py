"""Settings of Outbox (the bottom layer: imports nothing of the project)."""

from config.settings import (
    Settings,
    SettingsError,
    SmtpTarget,
    load_settings,
    parse_processes,
    parse_smtp_url,
    parse_smtp_urls,
    split_urls,
)

__all__ = ["Settings", "SettingsError", "SmtpTarget", "load_settings", "parse_processes",
           "parse_smtp_url", "parse_smtp_urls", "split_urls"]
