"""The webhook settings: flags, variables, defaults and the checks made at start-up."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ssehub.cli import build_parser
from ssehub.exceptions import ConfigurationError
from ssehub.settings import Settings


def test_webhooks_are_off_by_default_with_a_three_second_grace() -> None:
    settings = Settings.from_env({})
    assert settings.webhook_url == ""
    assert settings.offline_grace == 3.0
    assert settings.undelivered_after is None


def test_the_webhook_variables_are_read() -> None:
    settings = Settings.from_env(
        {
            "SSEHUB_WEBHOOK_URL": "http://127.0.0.1:9/hook",
            "SSEHUB_WEBHOOK_SECRET": "s3cret",
            "SSEHUB_OFFLINE_GRACE": "0.5",
            "SSEHUB_UNDELIVERED_AFTER": "10",
        }
    )
    assert settings.webhook_url == "http://127.0.0.1:9/hook"
    assert settings.webhook_secret == "s3cret"
    assert settings.offline_grace == 0.5
    assert settings.undelivered_after == 10.0
    assert Settings.from_env({"SSEHUB_UNDELIVERED_AFTER": "off"}).undelivered_after is None


def test_the_webhook_flags_are_parsed() -> None:
    args = build_parser().parse_args(
        ["serve", "--webhook-url", "https://example.com/h", "--webhook-secret", "k",
         "--offline-grace", "1.5", "--undelivered-after", "30"]
    )  # fmt: skip
    assert (args.webhook_url, args.webhook_secret) == ("https://example.com/h", "k")
    assert (args.offline_grace, args.undelivered_after) == (1.5, 30.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"webhook_url": "http://127.0.0.1:9/hook"}, "needs --webhook-secret"),
        ({"webhook_url": "ftp://x", "webhook_secret": "k"}, "http:// or https://"),
        ({"offline_grace": -1.0}, "offline_grace"),
        ({"undelivered_after": 0.0}, "undelivered_after"),
    ],
)
def test_bad_webhook_settings_are_refused_at_start_up(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings(**options).validate()  # type: ignore[arg-type]


def test_a_webhook_url_without_a_secret_stops_serve_with_one_line_and_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ssehub", "serve", "--store", "memory://",
         "--webhook-url", "http://127.0.0.1:9/hook"],
        capture_output=True, text=True, timeout=30, env={"PATH": ""},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "ssehub: error: --webhook-url needs --webhook-secret to sign the events\n"
    )
