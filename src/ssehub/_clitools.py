"""The client commands of ``ssehub``: listen, send, broadcast, status, token, config-doc.

Each is a thin layer over `ssehub.client` (or `ssehub.auth`); failures become one line
on standard error and a non-zero exit code, in `ssehub.cli.main`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import sys
from collections.abc import Callable
from typing import Any, TextIO

import orjson

from ssehub.client import Event, HubClient
from ssehub.exceptions import InvalidInput
from ssehub.settings import CLIENT_ENV, Settings, client_defaults

Command = Callable[[argparse.Namespace], int]

_EPILOG_ENV = (
    f"--url defaults to ${CLIENT_ENV['url']} or http://127.0.0.1:8000; --token to "
    f"${CLIENT_ENV['token']}; --publish-key to the first of ${CLIENT_ENV['publish_key']}."
)


def _client_options(parser: argparse.ArgumentParser, *, publisher: bool) -> None:
    defaults = client_defaults()
    group = parser.add_argument_group("hub")
    group.add_argument("--url", default=defaults["url"], help="the hub's base URL")
    group.add_argument("--token", default=defaults["token"], help="a JWT (with --auth jwt)")
    if publisher:
        group.add_argument(
            "--publish-key", default=defaults["publish_key"], help="an API key allowed to publish"
        )


def _message_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", help="the message, sent as text")
    parser.add_argument("--json", metavar="JSON", help="send this JSON value instead of text")
    parser.add_argument("--event", help="event name (default: message)")


def add_client_commands(commands: Any) -> None:
    """Add the client commands to ``ssehub``'s subparsers."""
    formatter = argparse.RawDescriptionHelpFormatter

    listen = commands.add_parser(
        "listen",
        help="watch a user's stream",
        description="Print a user's events as they arrive; resumes after drops and "
        "restarts without losing or repeating a message. Ctrl-C to stop.",
        epilog=_EPILOG_ENV,
        formatter_class=formatter,
    )
    listen.add_argument("user", help="the user id")
    listen.add_argument("--last-event-id", help="resume after this event id")
    listen.add_argument("--keepalives", action="store_true", help="show keep-alives too")
    listen.add_argument("--json", action="store_true", help="one JSON object per event")
    listen.add_argument("--count", type=int, help="exit after this many events")
    _client_options(listen, publisher=False)
    listen.set_defaults(run=run_listen)

    send = commands.add_parser(
        "send",
        help="send a message to a user",
        description="Send a message to a user and print its event id.",
        epilog="examples:\n  ssehub send alice 'Your report is ready'\n"
        "  ssehub send alice --json '{\"progress\": 50}' --event progress\n\n" + _EPILOG_ENV,
        formatter_class=formatter,
    )
    send.add_argument("user", help="the user id")
    _message_options(send)
    _client_options(send, publisher=True)
    send.set_defaults(run=run_send)

    broadcast = commands.add_parser(
        "broadcast",
        help="send a message to every connected user",
        description="Send a message to every connected user.",
        epilog=_EPILOG_ENV,
    )
    _message_options(broadcast)
    _client_options(broadcast, publisher=True)
    broadcast.set_defaults(run=run_broadcast)

    status = commands.add_parser(
        "status",
        help="show a user's status, or every user's",
        description="Show a user's status (connected, disconnected or unknown; open "
        "streams; last seen; messages waiting), or a table of every known user.",
        epilog=_EPILOG_ENV,
    )
    status.add_argument("user", nargs="?", help="the user id (default: every user)")
    status.add_argument("--json", action="store_true", help="print the hub's JSON answer")
    _client_options(status, publisher=True)
    status.set_defaults(run=run_status)

    token = commands.add_parser(
        "token",
        help="mint a development JWT",
        description="Print a signed HS256 token for a user, for a hub run with --auth jwt. "
        "Uses --secret, else $SSEHUB_JWT_SECRET; audience, issuer and user claim come from "
        "$SSEHUB_JWT_AUDIENCE, $SSEHUB_JWT_ISSUER and $SSEHUB_JWT_USER_CLAIM.",
    )
    token.add_argument("user", help="the user id the token speaks for")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    token.add_argument("--secret", help="the HS256 secret (default: $SSEHUB_JWT_SECRET)")
    token.add_argument("--publish", action="store_true", help="grant publisher rights too")
    token.set_defaults(run=run_token)

    config_doc = commands.add_parser(
        "config-doc",
        help="print the configuration reference (markdown)",
        description="Print the markdown table of every setting, generated from the code; "
        "--write FILE replaces the table between the markers in FILE (the README).",
    )
    config_doc.add_argument("--write", metavar="FILE", help="update FILE in place")
    config_doc.set_defaults(run=run_config_doc)


def _client(args: argparse.Namespace) -> HubClient:
    return HubClient(args.url, token=args.token, publish_key=getattr(args, "publish_key", None))


def _payload(args: argparse.Namespace) -> object:
    if args.json is not None:
        if args.text is not None:
            raise InvalidInput("give the message as TEXT or as --json, not both")
        try:
            return orjson.loads(args.json)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"--json is not valid JSON: {exc}") from exc
    if args.text is None:
        raise InvalidInput("give the message as TEXT or as --json JSON")
    return args.text


def run_send(args: argparse.Namespace) -> int:
    """``ssehub send``."""
    data = _payload(args)

    async def go() -> str:
        async with _client(args) as client:
            return await client.send(args.user, data, event=args.event)

    print(asyncio.run(go()))
    return 0


def run_broadcast(args: argparse.Namespace) -> int:
    """``ssehub broadcast``."""
    data = _payload(args)

    async def go() -> None:
        async with _client(args) as client:
            await client.broadcast(data, event=args.event)

    asyncio.run(go())
    print("broadcast accepted")
    return 0


def _status_line(user: dict[str, Any]) -> str:
    last_seen = user.get("last_seen") or "never"
    return (
        f"{user['user_id']}  {user['status']}  streams={user.get('connections', 0)}  "
        f"pending={user.get('pending', 0)}  last_seen={last_seen}"
    )


def run_status(args: argparse.Namespace) -> int:
    """``ssehub status``."""

    async def go() -> Any:
        async with _client(args) as client:
            if args.user:
                return await client.status(args.user)
            return await client.users()

    answer = asyncio.run(go())
    if args.json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    elif args.user:
        print(_status_line(answer))
    elif not answer:
        print("no users yet")
    else:
        for user in answer:
            print(_status_line(user))
    return 0


def run_token(args: argparse.Namespace) -> int:
    """``ssehub token``."""
    from ssehub.auth import mint_token

    settings = Settings.from_env()
    secret = args.secret or settings.jwt_secret
    if not secret:
        raise InvalidInput("no secret: pass --secret or set SSEHUB_JWT_SECRET")
    if args.ttl <= 0:
        raise InvalidInput("--ttl must be greater than 0")
    print(
        mint_token(
            secret,
            args.user,
            ttl=args.ttl,
            publish=args.publish,
            audience=settings.jwt_audience or None,
            issuer=settings.jwt_issuer or None,
            user_claim=settings.jwt_user_claim,
        )
    )
    return 0


class LiveView:
    """Prints events readably (or as JSON lines) and connection changes on stderr."""

    def __init__(self, out: TextIO, err: TextIO, *, as_json: bool) -> None:
        self.out = out
        self.err = err
        self.as_json = as_json

    def state(self, state: str, detail: str) -> None:
        line = f"-- {state}" + (f" ({detail})" if detail else "")
        print(line, file=self.err, flush=True)

    def event(self, event: Event) -> None:
        if self.as_json:
            entry = {"event": event.event, "id": event.id, "data": event.data}
            print(orjson.dumps(entry).decode(), file=self.out, flush=True)
            return
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        head = f"{stamp}  {event.event}" + (f"  #{event.id}" if event.id else "")
        text = event.data
        if text.startswith(("{", "[")):
            with contextlib.suppress(orjson.JSONDecodeError):  # not JSON after all: as text
                text = orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
        separator = "\n" if "\n" in text else "  "
        print(f"{head}{separator}{text}", file=self.out, flush=True)


def run_listen(args: argparse.Namespace) -> int:
    """``ssehub listen``."""
    if args.count is not None and args.count <= 0:
        raise InvalidInput("--count must be greater than 0")
    view = LiveView(sys.stdout, sys.stderr, as_json=args.json)

    async def go() -> None:
        async with _client(args) as client:
            await client.alive()  # fail at once when the hub is not there at all
            stream = client.events(
                args.user,
                last_event_id=args.last_event_id,
                keepalives=args.keepalives,
                on_state=view.state,
            )
            seen = 0
            async with stream:
                async for event in stream:
                    view.event(event)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        return

    asyncio.run(go())
    return 0


def run_config_doc(args: argparse.Namespace) -> int:
    """``ssehub config-doc``."""
    from pathlib import Path

    from ssehub._configdoc import config_reference, replace_reference

    if args.write is None:
        print(config_reference(), end="")
        return 0
    path = Path(args.write)
    try:
        text = path.read_text()
        path.write_text(replace_reference(text))
    except OSError as exc:
        raise InvalidInput(f"cannot update {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InvalidInput(f"{path} has no config-reference markers") from exc
    return 0
