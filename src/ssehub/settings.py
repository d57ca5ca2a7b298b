"""Every knob of ssehub, read from arguments or ``SSEHUB_*`` environment variables.

This is the only module that reads the environment. Each field's metadata gives its
help text; the command line and the README's configuration reference are generated
from it, so they cannot drift.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from ssehub.exceptions import ConfigurationError
from ssehub.limits import Limits
from ssehub.stores.base import Retention

ENV_PREFIX = "SSEHUB_"


def _field(default: Any, help: str, *, group: str = "server") -> Any:
    if isinstance(default, list):
        return dataclasses.field(
            default_factory=lambda: list(default), metadata={"help": help, "group": group}
        )
    return dataclasses.field(default=default, metadata={"help": help, "group": group})


@dataclasses.dataclass(slots=True)
class Settings:
    """ssehub's configuration. Build it with `Settings.from_env` or keyword arguments."""

    host: str = _field("127.0.0.1", "address to listen on")
    port: int = _field(8000, "port to listen on")
    store: str = _field(
        "sqlite:///data/ssehub.db",
        "where messages are kept: memory://, sqlite:///path/to/file.db or redis://host:port/db",
        group="store",
    )
    keepalive: float = _field(5.0, "seconds between keep-alive events on each stream")
    workers: int = _field(1, "worker processes (more than one needs a redis:// store)")
    portable: bool = _field(
        False, "serve streams through the ASGI route instead of writing to the socket"
    )
    retry_ms: int = _field(2000, "reconnection time (ms) sent to clients on shutdown")
    ssl_certfile: str = _field("", "PEM certificate (chain) file: serve HTTPS")
    ssl_keyfile: str = _field("", "PEM private key file of --ssl-certfile")
    http2: bool = _field(
        False, "serve HTTP/2 as well as HTTP/1.1 over TLS (pip install 'ssehub[http2]')"
    )
    history_max_events: int = _field(1000, "events kept per user for replay", group="store")
    history_max_age: float = _field(86400.0, "seconds an event is kept for replay", group="store")
    sqlite_synchronous: str = _field(
        "normal",
        "SQLite durability: 'full' survives power loss, 'normal' survives a crash of ssehub",
        group="store",
    )
    max_user_id_length: int = _field(256, "characters in a user id", group="limits")
    max_payload_bytes: int = _field(65536, "bytes of one message's data", group="limits")
    max_body_bytes: int = _field(16 * 1024 * 1024, "bytes of one request body", group="limits")
    max_batch: int = _field(1000, "messages in one batch", group="limits")
    max_connections: int = _field(100_000, "open streams per process", group="limits")
    max_connections_per_user: int = _field(100, "open streams per user", group="limits")
    buffer_bytes: int = _field(
        1024 * 1024, "bytes queued for one stream before it is closed as too slow", group="limits"
    )
    auth: str = _field("open", "who may subscribe and publish: open or jwt", group="auth")
    jwt_secret: str = _field("", "HS256 secret for --auth jwt", group="auth")
    jwt_public_key: str = _field("", "PEM file with an RS256/ES256 public key", group="auth")
    jwks_file: str = _field("", "JWKS file with RS256/ES256 public keys", group="auth")
    jwt_algorithms: list[str] = _field(
        [], "accepted JWT algorithms (default: by key type)", group="auth"
    )
    jwt_audience: str = _field("", "required 'aud' claim, if set", group="auth")
    jwt_issuer: str = _field("", "required 'iss' claim, if set", group="auth")
    jwt_user_claim: str = _field("sub", "claim that holds the user id", group="auth")
    publish_key: list[str] = _field([], "API key that may publish (repeatable)", group="auth")
    cors_origin: list[str] = _field(
        [], "origin allowed by CORS (repeatable, * for any)", group="auth"
    )
    cors_credentials: bool = _field(False, "allow credentials in CORS requests", group="auth")
    webhook_url: str = _field(
        "", "URL the hub POSTs presence and undelivered-message events to", group="webhooks"
    )
    webhook_secret: str = _field(
        "", "HMAC-SHA256 key of the webhooks' Ssehub-Signature header", group="webhooks"
    )
    offline_grace: float = _field(
        3.0, "seconds a user's last stream stays closed before user.offline", group="webhooks"
    )
    undelivered_after: float | None = _field(
        None,
        "seconds after which a message no stream received is message.undelivered",
        group="webhooks",
    )
    demo_step: float = _field(1.0, "seconds between the demo tasks' messages", group="server")
    log_level: str = _field("info", "debug, info, warning or error", group="server")
    log_json: bool = _field(False, "write logs as JSON lines", group="server")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``SSEHUB_*`` variables, then apply ``overrides`` (e.g. from arguments).

        Raises:
            ConfigurationError: a variable cannot be parsed.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = parse_value(field, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check the settings as a whole.

        Raises:
            ConfigurationError: a value is out of range or settings contradict.
        """
        positive = (
            "keepalive", "history_max_events", "history_max_age", "max_user_id_length",
            "max_payload_bytes", "max_body_bytes", "max_batch", "max_connections",
            "max_connections_per_user", "buffer_bytes", "workers",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be greater than 0")
        if not 0 < self.port < 65536:
            raise ConfigurationError("port must be between 1 and 65535")
        if self.auth not in ("open", "jwt"):
            raise ConfigurationError("auth must be 'open' or 'jwt'")
        if self.sqlite_synchronous not in ("full", "normal", "off"):
            raise ConfigurationError("sqlite_synchronous must be full, normal or off")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigurationError("--ssl-certfile and --ssl-keyfile go together")
        if self.http2 and not self.ssl_certfile:
            raise ConfigurationError("--http2 needs TLS: add --ssl-certfile and --ssl-keyfile")
        self._validate_webhooks()

    def _validate_webhooks(self) -> None:
        if self.webhook_url and not self.webhook_secret:
            raise ConfigurationError("--webhook-url needs --webhook-secret to sign the events")
        if self.webhook_url and not self.webhook_url.lower().startswith(("http://", "https://")):
            raise ConfigurationError("--webhook-url must be an http:// or https:// URL")
        if self.offline_grace < 0:
            raise ConfigurationError("offline_grace must be 0 or more")
        if self.undelivered_after is not None and self.undelivered_after <= 0:
            raise ConfigurationError("undelivered_after must be greater than 0")

    @property
    def limits(self) -> Limits:
        """The input and connection limits."""
        return Limits(
            max_user_id_length=self.max_user_id_length,
            max_payload_bytes=self.max_payload_bytes,
            max_body_bytes=self.max_body_bytes,
            max_batch=self.max_batch,
            max_connections=self.max_connections,
            max_connections_per_user=self.max_connections_per_user,
            buffer_bytes=self.buffer_bytes,
        )

    @property
    def retention(self) -> Retention:
        """How much history the store keeps."""
        return Retention(max_events=self.history_max_events, max_age=self.history_max_age)

    @property
    def store_url(self) -> str:
        """`store`, with `sqlite_synchronous` added to a ``sqlite:`` URL that sets none.

        A ``synchronous=`` in the URL itself wins over the setting.
        """
        if not self.store.lower().startswith("sqlite:") or "synchronous=" in self.store:
            return self.store
        separator = "&" if "?" in self.store else "?"
        return f"{self.store}{separator}synchronous={self.sqlite_synchronous}"


CLIENT_ENV: Mapping[str, str] = {
    "url": "SSEHUB_URL",
    "token": "SSEHUB_TOKEN",
    "publish_key": "SSEHUB_PUBLISH_KEY",
}
DEFAULT_URL = "http://127.0.0.1:8000"


def client_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Defaults of the client commands (``listen``, ``send``...): the hub's URL
    (``SSEHUB_URL``), a token (``SSEHUB_TOKEN``) and a publish key (the first of
    ``SSEHUB_PUBLISH_KEY``)."""
    env = os.environ if environ is None else environ
    keys = [k.strip() for k in env.get(CLIENT_ENV["publish_key"], "").split(",") if k.strip()]
    return {
        "url": env.get(CLIENT_ENV["url"]) or DEFAULT_URL,
        "token": env.get(CLIENT_ENV["token"]) or None,
        "publish_key": keys[0] if keys else None,
    }


def parse_value(field: dataclasses.Field[Any], raw: str) -> Any:
    """Parse one setting from its text form.

    Raises:
        ConfigurationError: the text is not a valid value for the field.
    """
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    name = ENV_PREFIX + field.name.upper()
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "float | None":
            return None if raw.strip().lower() in ("", "off") else float(raw)
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind.startswith("list"):
            return [part.strip() for part in raw.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigurationError(f"{name}: cannot parse {raw!r} as {kind}") from exc
    return raw
