"""The NATS side shared by the exporter and the fleet reader: connecting, the stream, reading a
node's position back from the stream.

Failures fall in two kinds, and the exporter treats them differently:

* :class:`BrokerConfigError`: nothing will change by waiting (bad URL, bad credentials, a stream
  of that name with other subjects, subjects another stream already takes). The exporter
  says so and exits non-zero: a person must act.
* :class:`BrokerUnavailable`: no server answers, no stream leader, a publish not acknowledged
  in time. The exporter waits, with back-off, and resumes from what the stream holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from supervisor.fleet import records

__all__ = ["BrokerConfigError", "BrokerUnavailable", "Credentials", "connect", "ensure_stream",
           "last_position", "parse_servers", "stream_messages_after"]

#: What the exporter's stream looks like when it creates one.
SUBJECTS = [f"{records.SUBJECT_ROOT}.>"]
#: JetStream's default duplicate window (2 min): every retry of one publish happens well within
#: it, and a restart does not rely on it (the position is read back from the stream).
DUPLICATE_WINDOW = 120.0
#: Each JetStream API request (stream info, get last message) waits this long for an answer.
API_TIMEOUT = 2.0


class BrokerConfigError(Exception):
    """A problem waiting will not fix; the message says what to change."""


class BrokerUnavailable(Exception):
    """The broker cannot take or confirm a request right now; retry with back-off."""


@dataclass(frozen=True)
class Credentials:
    creds_file: str | None = None
    user: str | None = None
    password: str | None = None


def parse_servers(urls: str) -> list[str]:
    """``nats://h1:4222,nats://h2:4222`` -> a list; each must be a ``nats://`` (or ``tls://``)
    URL with a host, so a typo is a clear error rather than a retry loop."""
    servers = [u.strip() for u in urls.split(",") if u.strip()]
    if not servers:
        raise BrokerConfigError("--nats needs at least one URL, e.g. nats://127.0.0.1:4222")
    for url in servers:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"nats://{url}")
        try:
            parsed.port  # noqa: B018 - validates the port
        except ValueError:
            raise BrokerConfigError(f"invalid NATS URL {url!r}: bad port") from None
        if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
            raise BrokerConfigError(f"invalid NATS URL {url!r}: use nats://HOST:PORT")
    return servers


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def connect(servers: list[str], creds: Credentials = Credentials(), *,
                  connect_timeout: float = 5.0, name: str = "tether") -> Client:
    """Connect to the first server of ``servers`` that answers; then reconnect for ever.

    At start, no server reachable raises :class:`BrokerUnavailable` (the caller decides whether
    that is fatal) and refused credentials :class:`BrokerConfigError`.
    """
    errors: list[str] = []
    auth_failed = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, nats.errors.Error) and "authorization" in str(exc).lower():
            auth_failed.set()
        errors.append(_describe(exc))

    options: dict[str, Any] = {
        "servers": servers, "name": name, "connect_timeout": connect_timeout,
        # at start each server is tried twice: a broker that is not there is an error to report;
        # once connected, reconnecting never stops (set below)
        "allow_reconnect": True, "max_reconnect_attempts": 1, "reconnect_time_wait": 0.5,
        "error_cb": on_error, "pending_size": 64 * 2**20,
    }
    if creds.creds_file:
        options["user_credentials"] = creds.creds_file
    if creds.user is not None:
        options["user"] = creds.user
        options["password"] = creds.password or ""
    nc = nats.NATS()  # type: ignore[attr-defined]  # nats-py re-exports NATS without __all__
    try:
        await nc.connect(**options)
    except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
        await _quiet_close(nc)
        if isinstance(exc, FileNotFoundError):
            raise BrokerConfigError(f"--creds: {exc}") from None
        if auth_failed.is_set():
            raise BrokerConfigError(_auth_message(servers, errors)) from None
        raise BrokerUnavailable(f"no NATS server answered at {','.join(servers)}: "
                                f"{errors[-1] if errors else _describe(exc)}") from None
    except nats.errors.Error as exc:
        await _quiet_close(nc)
        if auth_failed.is_set() or "authorization" in str(exc).lower():
            raise BrokerConfigError(_auth_message(servers, errors or [str(exc)])) from None
        raise BrokerConfigError(f"cannot connect to {','.join(servers)}: {exc}") from None
    nc.options["max_reconnect_attempts"] = -1
    return nc


def _auth_message(servers: list[str], errors: list[str]) -> str:
    return (f"NATS at {','.join(servers)} refused the credentials ({errors[-1]}): check "
            "--creds FILE or --user/--password")


async def _quiet_close(nc: Client) -> None:
    with contextlib.suppress(Exception):
        await nc.close()


def _unavailable(exc: BaseException, what: str) -> BrokerUnavailable:
    return BrokerUnavailable(f"{what}: {_describe(exc)}")


#: JetStream API error codes that say "no leader / no quorum / not now", not "wrong request".
_TRANSIENT_CODES = {503, 408, 504}


def _is_transient(exc: nats.js.errors.APIError) -> bool:
    return exc.code in _TRANSIENT_CODES or (exc.err_code or 0) in {10008, 10023, 10074}


async def ensure_stream(js: JetStreamContext, stream: str, replicas: int | None) -> int:
    """Create ``stream`` (subjects ``tether.>``, file storage) if missing; return its replicas.

    Replicas: ``replicas`` if given, else 3, falling back to what the cluster allows (a single
    server takes only 1). An existing stream must take ``tether.>``; anything else is a
    :class:`BrokerConfigError` naming what it takes.
    """
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        info = None
    except nats.js.errors.APIError as exc:
        if _is_transient(exc):
            raise _unavailable(exc, f"stream {stream}") from None
        raise BrokerConfigError(f"stream {stream}: {exc.description or exc}") from None
    except nats.errors.NoRespondersError:
        raise BrokerConfigError("JetStream is not enabled on the NATS server (no one answers "
                                "its API): enable it (a jetstream {} block)") from None
    except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as exc:
        raise _unavailable(exc, f"JetStream did not answer for stream {stream}") from None
    if info is not None:
        subjects = list(info.config.subjects or [])
        if SUBJECTS[0] not in subjects:
            raise BrokerConfigError(
                f"stream {stream} exists with subjects {subjects}, not {SUBJECTS[0]}: it is not "
                "a Tether fleet stream; pass another --stream NAME (or change that stream)")
        if info.cluster is not None and not info.cluster.leader:
            await _wait_leader(js, stream)
        return int(info.config.num_replicas or 1)
    tries = [replicas] if replicas else [3, 2, 1]
    last: Exception | None = None
    for r in tries:
        config = api.StreamConfig(
            name=stream, subjects=SUBJECTS, storage=api.StorageType.FILE, num_replicas=r,
            duplicate_window=DUPLICATE_WINDOW, allow_direct=True,
            description="Tether: every node's event log (supervisord-export)")
        try:
            await js.add_stream(config)
            await _wait_leader(js, stream)
            return r
        except nats.js.errors.APIError as exc:
            last = exc
            text = (exc.description or "").lower()
            if "already in use" in text:  # another exporter created it meanwhile: check it
                return await ensure_stream(js, stream, replicas)
            if "overlap" in text:
                raise BrokerConfigError(
                    f"cannot create stream {stream}: its subjects {SUBJECTS[0]} overlap another "
                    "stream's; use that stream's name with --stream, or change it") from None
            if replicas is None and ("replicas" in text or "insufficient" in text
                                     or "no suitable peers" in text):
                continue
            if _is_transient(exc):
                raise _unavailable(exc, f"creating stream {stream}") from None
            raise BrokerConfigError(f"cannot create stream {stream}: {exc.description}") from None
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                nats.errors.ConnectionClosedError) as exc:
            raise _unavailable(exc, f"creating stream {stream}") from None
    raise BrokerConfigError(f"cannot create stream {stream} with replicas {tries}: {last}")


async def _wait_leader(js: JetStreamContext, stream: str, timeout: float = 10.0) -> None:
    """A new replicated stream answers nothing until its leader is elected (requests time
    out): wait for it here rather than make the first read look like an outage."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            info = await js.stream_info(stream)
            if info.cluster is None or info.cluster.leader:
                return
        await asyncio.sleep(0.05)


async def last_position(js: JetStreamContext, stream: str, node: str
                        ) -> tuple[records.Position, records.Position] | None:
    """The node's last message in the stream, as (position, its Tether-Acked); None if none."""
    try:
        msg = await js.get_last_msg(stream, records.node_filter(node))
    except nats.js.errors.NotFoundError:
        return None
    except nats.js.errors.APIError as exc:
        if exc.code == 404:
            return None
        raise _unavailable(exc, f"reading {node}'s last message") from None
    except (nats.errors.Error, OSError) as exc:
        raise _unavailable(exc, f"reading {node}'s last message") from None
    try:
        return records.position_of(msg.headers, int(msg.seq or 0))
    except records.BadMessage as exc:
        raise BrokerConfigError(f"stream {stream}: {exc} (subject {msg.subject}): something "
                                "other than supervisord-export publishes there") from None


async def stream_messages_after(js: JetStreamContext, stream: str, node: str, after: int,
                                upto: int) -> list[tuple[int, dict[str, str]]]:
    """The node's messages with stream seq in ``(after, upto]``: (stream seq, headers) each,
    one direct-get per message (``next_by_subj``), so other nodes' messages cost nothing."""
    out: list[tuple[int, dict[str, str]]] = []
    seq = after + 1
    while seq <= upto:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=records.node_filter(node), next=True)
        except nats.js.errors.NotFoundError:
            break
        except (nats.errors.Error, OSError) as exc:
            raise _unavailable(exc, f"reading {node}'s messages after {after}") from None
        if msg.seq is None or msg.seq > upto:
            break
        out.append((int(msg.seq), dict(msg.headers or {})))
        seq = int(msg.seq) + 1
    return out
