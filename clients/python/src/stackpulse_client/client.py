"""The stackpulse WebSocket client, :class:`CloudWebSocketClient`.

It keeps one WebSocket connection to a stackpulse server's ``/ws`` endpoint and
turns the protocol into callbacks and an async iterator:

* ``on(type, handler)`` registers sync or async handlers per message type
  (``"*"`` receives every event); ``events()`` is an ``async for`` alternative.
* It remembers, per subscribed topic, the ``epoch`` from ``subscribed`` and the last
  ``seq`` delivered. When the connection drops (network loss, server shutdown 1001,
  slow-consumer close 4008, idle close 4000...) it reconnects with capped exponential
  backoff and full jitter and resubscribes each topic with ``since``/``epoch``, so
  handlers see every event exactly once and in order. Events whose ``seq`` is not
  above the last one delivered are dropped as a safety net.
* When the server cannot resume (``recovered: false``: history too short, or the
  server restarted and the topic has a new epoch) the ``on_resync`` callback is
  called with the snapshot that follows (or ``None`` when the topic has no state),
  so the application can refetch; the snapshot is then delivered to its handlers
  and the position restarts at the snapshot's ``seq``.
* The token (a string, or a sync or async callable asked on every connect) is sent
  as ``Authorization: Bearer``; it never appears in logs, even the ``websockets``
  debug logs. An HTTP 401/403 at connect raises :class:`AuthenticationError`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import inspect
import json
import logging
import re
import time
import urllib.parse
import weakref
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from .backoff import backoff_delay
from .errors import (
    AuthenticationError,
    HandshakeError,
    NotConnectedError,
    ReconnectError,
    SubscriptionError,
)
from .messages import Message, is_snapshot

__all__ = [
    "CloudWebSocketClient",
    "EventStream",
    "Position",
    "Token",
    "TokenProvider",
    "Handler",
    "ResyncCallback",
]

#: A callable returning the token (or an awaitable of it); called on every connect.
TokenProvider = Callable[[], Union[Optional[str], Awaitable[Optional[str]]]]
#: What ``token=`` accepts: a fixed token, a provider, or ``None`` (no token).
Token = Union[str, TokenProvider, None]
#: A message handler: ``handler(message)``, sync or async.
Handler = Callable[[Message], Any]
#: ``on_resync(deployment_id, snapshot_or_None)``, sync or async.
ResyncCallback = Callable[[str, Optional[Message]], Any]
#: ``on_connect()``, sync or async; called after every (re)connect and resubscribe.
ConnectCallback = Callable[[], Any]
#: ``on_disconnect(close_code_or_None, reason)``, sync or async.
DisconnectCallback = Callable[[Optional[int], str], Any]

_PING_FRAME = json.dumps({"action": "ping"})

if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:
    _LoggerAdapter = logging.LoggerAdapter


@dataclass
class Position:
    """Where a subscription stands: the last ``seq`` delivered and the topic's ``epoch``.

    ``seq`` is ``None`` until the first ``subscribed`` (or while a snapshot is
    awaited after a failed resume).
    """

    seq: Optional[int] = None
    epoch: Optional[str] = None


@dataclass
class _Topic:
    position: Position = field(default_factory=Position)
    #: ``recovered: false`` seen; ``on_resync`` not called yet.
    resync_pending: bool = False
    #: A subscribe was sent on the current connection.
    in_flight: bool = False
    #: Its ``subscribed`` reply arrived on the current connection.
    confirmed: bool = False
    #: The ``since`` sent with the current subscribe (``None``: a fresh subscribe).
    sent_since: Optional[int] = None
    last_subscribed: Optional[Message] = None
    waiters: List["asyncio.Future[Message]"] = field(default_factory=list)
    #: A subscribe answered with a 5xx error is retried with backoff.
    retry_step: int = 0
    retry_task: Optional["asyncio.Task[None]"] = None

    def cancel_retry(self) -> None:
        if self.retry_task is not None:
            self.retry_task.cancel()
            self.retry_task = None


class _RedactingLogger(_LoggerAdapter):
    """Logs through ``logger`` with every known token and bearer value masked."""

    _BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")
    _QUERY = re.compile(r"(?i)(token=)[^&\s'\"]+")

    def __init__(self, logger: logging.Logger, secrets: Set[str]) -> None:
        super().__init__(logger, {})
        self._secrets = secrets

    def redact(self, value: Any) -> Any:
        if not isinstance(value, (str, bytes)):
            if not self._secrets:
                return value
            text = str(value)
            if not any(s in text for s in self._secrets):
                return value
            value = text
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        for secret in self._secrets:
            value = value.replace(secret, "***")
        value = self._BEARER.sub(r"\1***", value)
        return self._QUERY.sub(r"\1***", value)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            self.logger.log(
                level,
                self.redact(msg),
                *(self.redact(a) for a in args),
                **kwargs,
            )


def _safe_url(url: str) -> str:
    """The URL without its query string and user info (which may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _normalize_endpoint(endpoint: str) -> str:
    parts = urllib.parse.urlsplit(endpoint)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"endpoint must be a ws:// or wss:// URL, got {_safe_url(endpoint)!r}")
    return urllib.parse.urlunsplit(parts._replace(scheme=scheme))


def _with_token_query(url: str, token: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k != "token"] + [("token", token)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _body_message(body: Optional[Union[bytes, bytearray]]) -> str:
    """The ``message`` of a JSON error body, else the body's text (shortened)."""
    if not body:
        return ""
    text = bytes(body).decode("utf-8", "replace")
    try:
        decoded = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return str(decoded["message"])
    return text[:200]


def _jwt_exp(token: str) -> Optional[float]:
    """The ``exp`` claim of a JWT (not verified: only to time a refresh), else ``None``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        return float(exp)
    return None


class _End:
    """Marks the end of an :class:`EventStream`."""


_END = _End()


class EventStream:
    """``async for event in client.events()``: the client's events in order.

    Created by :meth:`CloudWebSocketClient.events`; it collects from its creation
    (the first stream of a client also gets the events received before it, see
    ``event_backlog``), buffers without limit until iterated, and ends when the
    client disconnects for good
    (re-raising the error that ended the client, if any). ``close()`` (or leaving an
    ``async with`` block, or dropping the last reference) stops it.
    """

    def __init__(
        self, client: "CloudWebSocketClient", types: Optional[FrozenSet[str]]
    ) -> None:
        self._client = client
        self._types = types
        self._queue: "asyncio.Queue[Union[Message, _End]]" = asyncio.Queue()
        self._error: Optional[BaseException] = None
        self._done = False
        client._streams.add(self)
        backlog, client._backlog = client._backlog, None
        for message in backlog or ():
            self._offer(message)
        if client._finished():
            self._finish(client._fatal)

    def _offer(self, message: Message) -> None:
        if not self._done and (self._types is None or message["type"] in self._types):
            self._queue.put_nowait(message)

    def _finish(self, error: Optional[BaseException]) -> None:
        if self._error is None:
            self._error = error
        self._queue.put_nowait(_END)

    def close(self) -> None:
        """Stops collecting; iteration ends after what is already buffered."""
        self._client._streams.discard(self)
        self._finish(None)

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> Message:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            self._done = True
            self._client._streams.discard(self)
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return item

    async def __aenter__(self) -> "EventStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class CloudWebSocketClient:
    """WebSocket client for stackpulse real-time deployment monitoring.

    Args:
        endpoint: the server's WebSocket URL, e.g. ``ws://127.0.0.1:8000/ws``
            (``http(s)://`` is accepted and turned into ``ws(s)://``).
        token: a JWT string, or a callable (sync or async) returning one, called
            before every connect and reconnect so expiring tokens are refreshed;
            ``None`` for a server without auth. Sent as ``Authorization: Bearer``.
        auto_reconnect: reconnect and resume after the connection drops.
        ping_interval: seconds between keep-alive pings (an application
            ``{"action":"ping"}`` and a WebSocket ping whose pong must come back within
            the same interval, at least 5 s, or the connection is dropped and
            reconnected); ``None`` or 0 disables them.
        backoff_base, backoff_max: reconnect delays are drawn uniformly from
            ``[0, min(backoff_max, backoff_base * 2**attempt))`` (full jitter).
            ``attempt`` restarts at 0 once a connection has stayed up for
            ``backoff_max`` seconds; a connection dropped sooner continues the
            sequence, so a server that accepts and drops at once is not hammered.
        max_reconnect_attempts: give up after this many failed attempts in a row
            (``None``: never); the client then ends with :class:`ReconnectError`.
        on_resync: ``on_resync(deployment_id, snapshot_or_None)``, called when the
            server could not resume a subscription (``recovered: false``); events
            may have been missed, so refetch state. ``snapshot`` is the
            ``*.snapshot`` message that follows (it is also delivered to its
            handlers), or ``None`` when the topic has no state yet.
        on_connect: called after every successful connect (resubscriptions sent).
        on_disconnect: ``on_disconnect(code, reason)`` after a connection ends
            (``code`` is the WebSocket close code, ``None`` if the socket just died).
        token_in_query: also send the token as ``?token=`` (for proxies that drop
            the header); off by default because URLs end up in access logs.
        refresh_margin: with a token provider and a JWT carrying ``exp``, the
            provider is asked for a fresh token this many seconds before the
            current one expires (or halfway through a shorter lifetime) and the new
            token is sent in-band (``{"action":"auth"}``), so the server does not
            close the connection (4001) when the old one expires. ``None``
            disables this (the client then reconnects after a 4001 close).
        open_timeout: seconds allowed for one connection handshake.
        reply_timeout: seconds :meth:`subscribe` waits for ``subscribed``.
        max_message_size: largest server message accepted, in bytes.
        event_backlog: events received before the first :meth:`events` call are
            kept (the most recent ``event_backlog``) and yielded first by that
            stream, so ``await subscribe(...)`` then ``async for e in events()``
            misses nothing; 0 disables this. Later streams start empty.
        logger: logger to use (default ``logging.getLogger("stackpulse_client")``).
    """

    def __init__(
        self,
        endpoint: str,
        token: Token = None,
        auto_reconnect: bool = True,
        ping_interval: Optional[float] = 30,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_reconnect_attempts: Optional[int] = None,
        on_resync: Optional[ResyncCallback] = None,
        on_connect: Optional[ConnectCallback] = None,
        on_disconnect: Optional[DisconnectCallback] = None,
        token_in_query: bool = False,
        refresh_margin: Optional[float] = 60.0,
        open_timeout: float = 10.0,
        reply_timeout: float = 10.0,
        max_message_size: Optional[int] = 16 * 1024 * 1024,
        event_backlog: int = 1000,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self.endpoint = _normalize_endpoint(endpoint)
        self.auto_reconnect = auto_reconnect
        self.ping_interval = ping_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_reconnect_attempts = max_reconnect_attempts
        self.on_resync = on_resync
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.token_in_query = token_in_query
        self.refresh_margin = refresh_margin
        self.open_timeout = open_timeout
        self.reply_timeout = reply_timeout
        self.max_message_size = max_message_size
        #: Handlers per message type, in registration order.
        self.message_handlers: Dict[str, List[Handler]] = {}

        self._token = token
        self._secrets: Set[str] = set()
        if isinstance(token, str) and token:
            self._secrets.add(token)
        base_logger = logger or logging.getLogger("stackpulse_client")
        self._log = _RedactingLogger(base_logger, self._secrets)
        self._ws_log = _RedactingLogger(logging.getLogger("websockets.client"), self._secrets)
        self._safe_endpoint = _safe_url(self.endpoint)

        self._topics: Dict[str, _Topic] = {}
        self._ws: Optional[ClientConnection] = None
        self._supervisor: Optional["asyncio.Task[None]"] = None
        self._ping_task: Optional["asyncio.Task[None]"] = None
        self._refresh_task: Optional["asyncio.Task[None]"] = None
        self._current_token: Optional[str] = None
        self._closer: Optional["asyncio.Future[None]"] = None
        self._stop: Optional[asyncio.Event] = None
        self._closing = False
        self._fatal: Optional[BaseException] = None
        self._streams: "weakref.WeakSet[EventStream]" = weakref.WeakSet()
        # Events before the first events() call, handed to that stream.
        self._backlog: Optional["collections.deque[Message]"] = (
            collections.deque(maxlen=event_backlog) if event_backlog > 0 else None
        )
        #: Successful connections so far (the first one included).
        self.connection_count = 0
        self._connected_at = 0.0
        # Position in the backoff sequence; it restarts after a stable connection.
        self._backoff_step = 0

    # ------------------------------------------------------------------ state

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("running" if self.running else "idle")
        return f"<CloudWebSocketClient {self._safe_endpoint} {state}>"

    @property
    def ws(self) -> Optional[ClientConnection]:
        """The current ``websockets`` connection, or ``None`` while disconnected."""
        return self._ws

    @property
    def connected(self) -> bool:
        """Whether a connection is open right now."""
        return self._ws is not None

    @property
    def running(self) -> bool:
        """Whether the client is connected or reconnecting (between ``connect()`` and its end)."""
        return self._supervisor is not None and not self._supervisor.done()

    @property
    def subscriptions(self) -> Set[str]:
        """The topics subscribed (kept across reconnects)."""
        return set(self._topics)

    @property
    def positions(self) -> Dict[str, Position]:
        """A copy of each subscription's position (last seq delivered, epoch)."""
        return {t: Position(s.position.seq, s.position.epoch) for t, s in self._topics.items()}

    def _finished(self) -> bool:
        return self._supervisor is not None and self._supervisor.done()

    # --------------------------------------------------------------- handlers

    def on(self, message_type: str, handler: Handler) -> Handler:
        """Registers ``handler`` (sync or async) for messages of ``message_type``.

        Event types: ``deployment.status``, ``stack.deployed``, ``stack.failed``,
        ``log.created``, ``resource.status``, ``deployment.snapshot``,
        ``stack.snapshot`` or any other the server publishes; ``"*"`` receives every
        event (not the control replies). Control replies: ``subscribed``,
        ``unsubscribed``, ``pong``, ``authenticated`` (an in-band token refresh was
        accepted) and ``error`` (server error replies; without an ``error`` handler
        they are logged). Several handlers per type run in
        registration order; a handler's exception is logged and does not stop the
        client. Returns ``handler``.
        """
        self.message_handlers.setdefault(message_type, []).append(handler)
        return handler

    def off(self, message_type: str, handler: Optional[Handler] = None) -> None:
        """Removes ``handler`` (or every handler) for ``message_type``."""
        if handler is None:
            self.message_handlers.pop(message_type, None)
            return
        handlers = self.message_handlers.get(message_type, [])
        if handler in handlers:
            handlers.remove(handler)

    def events(self, types: Optional[Iterable[str]] = None) -> EventStream:
        """An async iterator over events (optionally only ``types``), in delivery order.

        ``async for event in client.events(): ...`` yields the same events the
        ``"*"`` handlers get (snapshots included, control replies excluded) and ends
        when the client disconnects for good. The first stream also yields the
        events received before it was created (``event_backlog``); later ones start
        from their creation.
        """
        return EventStream(self, frozenset(types) if types is not None else None)

    # ----------------------------------------------------------- connection

    async def connect(self) -> None:
        """Opens the connection (one attempt) and starts receiving in the background.

        Topics subscribed before ``connect()`` are subscribed now. Raises
        :class:`AuthenticationError` on HTTP 401/403, :class:`HandshakeError` on
        another HTTP error status, ``OSError``/``TimeoutError`` when the server
        cannot be reached. Calling it while running does nothing.
        """
        if self.running:
            return
        self._closing = False
        self._fatal = None
        self._backoff_step = 0
        self._stop = asyncio.Event()
        ws = await self._open()
        self._supervisor = asyncio.ensure_future(self._supervise(ws))

    async def disconnect(self) -> None:
        """Closes the connection and stops reconnecting; ``run()`` and ``events()`` end.

        Safe to call from a handler (the close then completes in the background).
        """
        self._closing = True
        if self._stop is not None:
            self._stop.set()
        ws = self._ws
        task = self._supervisor
        inside = task is not None and asyncio.current_task() is task
        if ws is not None:
            if inside:
                self._closer = asyncio.ensure_future(ws.close())
                self._closer.add_done_callback(lambda f: f.cancelled() or f.exception())
            else:
                try:
                    await ws.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        if task is not None and not inside and not task.done():
            done, _ = await asyncio.wait({task}, timeout=self.open_timeout)
            if not done:
                task.cancel()
                await asyncio.wait({task})
        self._log.info("disconnected from %s", self._safe_endpoint)

    async def run(self) -> None:
        """Connects if needed, then receives until :meth:`disconnect` (blocking).

        Returns when the client is disconnected (or, with ``auto_reconnect=False``,
        when the connection ends); raises the error that ended it otherwise
        (:class:`AuthenticationError`, :class:`ReconnectError`). Cancelling it
        disconnects.
        """
        if not self.running:
            await self.connect()
        task = self._supervisor
        assert task is not None
        try:
            await asyncio.shield(task)
        finally:
            if not self._closing:
                await self.disconnect()
        if self._fatal is not None:
            raise self._fatal

    async def wait_closed(self) -> None:
        """Waits until the client has ended (without disconnecting it)."""
        if self._supervisor is not None:
            await asyncio.shield(self._supervisor)

    # --------------------------------------------------------- subscriptions

    async def subscribe(
        self,
        deployment_id: str,
        since: Optional[int] = None,
        epoch: Optional[str] = None,
    ) -> Optional[Message]:
        """Subscribes to a topic (a deployment id or stack name); kept across reconnects.

        ``since``/``epoch`` resume from a position saved earlier (e.g. a previous
        run's :attr:`positions`): the events after ``since`` are replayed instead of
        a snapshot; if the server cannot, ``on_resync`` is called as after a
        reconnect. Without them the topic starts from its current state.

        While connected it waits for the server's ``subscribed`` reply and returns
        it (``{"type":"subscribed","deployment_id","seq","epoch","recovered"}``);
        an error reply raises :class:`SubscriptionError` (the topic is then not
        subscribed), except a 5xx one (the server's backplane is unavailable),
        which is retried with backoff while the call keeps waiting; and a reply slower than ``reply_timeout`` raises
        ``asyncio.TimeoutError`` (the topic stays in :attr:`subscriptions`; the reply
        may still come). While disconnected (or from inside a handler, which must not
        wait for the receiving loop it runs in) it returns ``None`` and the
        subscription is sent on (re)connect. A topic with state first yields a
        ``*.snapshot`` event, then live events.
        """
        if not isinstance(deployment_id, str) or not deployment_id:
            raise ValueError("deployment_id must be a non-empty string")
        if since is not None and (not isinstance(since, int) or since < 0):
            raise ValueError("since must be a non-negative integer")
        st = self._topics.get(deployment_id)
        if st is None:
            st = _Topic(position=Position(since, epoch if since is not None else None))
            self._topics[deployment_id] = st
        elif st.confirmed:
            return st.last_subscribed
        ws = self._ws
        if ws is None:
            self._log.info("will subscribe to %s once connected", deployment_id)
            return None
        in_loop = self._supervisor is not None and asyncio.current_task() is self._supervisor
        waiter: Optional["asyncio.Future[Message]"] = None
        if not in_loop:
            waiter = asyncio.get_running_loop().create_future()
            st.waiters.append(waiter)
        if not st.in_flight:
            try:
                await self._send_subscribe(ws, deployment_id, st)
            except ConnectionClosed:
                pass  # the reconnect resubscribes
        if waiter is None:
            return None
        try:
            return await asyncio.wait_for(waiter, self.reply_timeout)
        finally:
            if waiter in st.waiters:
                st.waiters.remove(waiter)

    async def unsubscribe(self, deployment_id: str) -> None:
        """Unsubscribes; no event of that topic is delivered after this returns."""
        st = self._topics.pop(deployment_id, None)
        if st is not None:
            st.cancel_retry()
            for waiter in st.waiters:
                if not waiter.done():
                    waiter.set_exception(
                        SubscriptionError(deployment_id, 0, "unsubscribed before the server replied")
                    )
        ws = self._ws
        if ws is not None:
            try:
                await ws.send(json.dumps({"action": "unsubscribe", "deployment_id": deployment_id}))
            except ConnectionClosed:
                pass
        self._log.info("unsubscribed from %s", deployment_id)

    async def send(self, message: Dict[str, Any]) -> None:
        """Sends one raw protocol message (a JSON object); raises :class:`NotConnectedError`."""
        ws = self._ws
        if ws is None:
            raise NotConnectedError("not connected")
        await ws.send(json.dumps(message))

    async def ping(self) -> None:
        """Sends ``{"action":"ping"}``; the ``pong`` reply goes to ``on("pong")`` handlers."""
        await self.send({"action": "ping"})

    # ------------------------------------------------------------- internals

    async def _get_token(self) -> Optional[str]:
        token = self._token
        if token is None or isinstance(token, str):
            return token or None
        value = token()
        if inspect.isawaitable(value):
            value = await value
        if value is not None and not isinstance(value, str):
            raise TypeError("the token provider must return a str or None")
        if value:
            if len(self._secrets) > 16:
                self._secrets.clear()
            self._secrets.add(value)
        return value or None

    async def _open(self) -> ClientConnection:
        """One connection attempt: token, handshake, resubscribe, keep-alive."""
        token = await self._get_token()
        self._current_token = token
        url = self.endpoint
        headers: Dict[str, str] = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
            if self.token_in_query:
                url = _with_token_query(url, token)
        keepalive = self.ping_interval or None
        self._log.info("connecting to %s", self._safe_endpoint)
        try:
            ws = await ws_connect(
                url,
                additional_headers=headers or None,
                open_timeout=self.open_timeout,
                ping_interval=keepalive,
                ping_timeout=max(keepalive, 5.0) if keepalive else None,
                max_size=self.max_message_size,
                logger=self._ws_log,
            )
        except InvalidStatus as e:
            status = e.response.status_code
            message = _body_message(e.response.body)
            if status in (401, 403):
                raise AuthenticationError(status, message) from None
            raise HandshakeError(status, message) from None
        except InvalidURI:
            raise ValueError(f"invalid endpoint {self._safe_endpoint!r}") from None
        # Published before resubscribing: a subscribe() that runs meanwhile sends
        # its own request on this connection instead of being missed.
        self._ws = ws
        try:
            for topic, st in list(self._topics.items()):
                if self._topics.get(topic) is st and not st.in_flight:
                    await self._send_subscribe(ws, topic, st)
        except BaseException:
            self._ws = None
            for st in self._topics.values():
                st.in_flight = False
            ws.transport.abort()
            raise
        self._connected_at = time.monotonic()
        self.connection_count += 1
        if self.ping_interval:
            self._ping_task = asyncio.ensure_future(self._ping_loop(ws, self.ping_interval))
        if (
            self.refresh_margin is not None
            and callable(self._token)
            and token
            and _jwt_exp(token) is not None
        ):
            self._refresh_task = asyncio.ensure_future(self._refresh_loop(ws))
        self._log.info(
            "connected to %s (%d topic(s) resubscribed)", self._safe_endpoint, len(self._topics)
        )
        if self.on_connect is not None:
            await self._call(self.on_connect)
        return ws

    async def _send_subscribe(self, ws: ClientConnection, topic: str, st: _Topic) -> None:
        message: Dict[str, Any] = {"action": "subscribe", "deployment_id": topic}
        pos = st.position
        if pos.seq is not None:
            message["since"] = pos.seq
            if pos.epoch is not None:
                message["epoch"] = pos.epoch
            st.sent_since = pos.seq
        else:
            st.sent_since = None
        st.confirmed = False
        st.in_flight = True
        await ws.send(json.dumps(message))
        self._log.debug("subscribe %s since=%s", topic, st.sent_since)

    async def _ping_loop(self, ws: ClientConnection, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await ws.send(_PING_FRAME)
            except ConnectionClosed:
                return

    def _stop_ping(self) -> None:
        """Stops the per-connection tasks (keep-alive, token refresh)."""
        if self._ping_task is not None:
            self._ping_task.cancel()
            self._ping_task = None
        task = self._refresh_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._refresh_task = None

    async def _refresh_loop(self, ws: ClientConnection) -> None:
        """Sends a fresh token in-band before the current one expires."""
        while True:
            token = self._current_token
            exp = _jwt_exp(token) if token else None
            if exp is None:
                return
            remaining = exp - time.time()
            if remaining <= 0:
                return  # too late: the server closes with 4001 and we reconnect
            margin = self.refresh_margin or 0.0
            await asyncio.sleep(max(remaining - margin, remaining / 2))
            try:
                fresh = await self._get_token()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - retry a little later
                self._log.warning("token provider failed: %s", e)
                await asyncio.sleep(min(10.0, max(remaining / 4, 0.5)))
                continue
            if not fresh or fresh == token:
                if exp - time.time() <= 1.0:
                    return
                await asyncio.sleep(min(10.0, max((exp - time.time()) / 4, 0.5)))
                continue
            try:
                await ws.send(json.dumps({"action": "auth", "token": fresh}))
            except ConnectionClosed:
                return
            self._current_token = fresh
            self._log.info("sent a fresh token in-band")

    async def _supervise(self, ws: Optional[ClientConnection]) -> None:
        """Receives, and reconnects when the connection ends, until told to stop."""
        try:
            while ws is not None:
                code, reason = await self._read_loop(ws)
                self._stop_ping()
                self._ws = None
                for st in self._topics.values():
                    st.in_flight = False
                    st.confirmed = False
                    st.cancel_retry()
                if self._closing:
                    self._log.info("connection closed (code %s)", code)
                else:
                    self._log.warning("connection lost (code %s %s)", code, reason)
                if self.on_disconnect is not None:
                    await self._call(self.on_disconnect, code, reason)
                if self._closing or not self.auto_reconnect:
                    break
                if code == 4001 and not callable(self._token):
                    raise AuthenticationError(
                        401,
                        "the token expired (close 4001); a fixed token cannot be renewed, "
                        "pass a token provider",
                    )
                if time.monotonic() - self._connected_at >= self.backoff_max:
                    self._backoff_step = 0  # that connection was stable
                ws = await self._reconnect()
                if ws is not None and self._closing:
                    # disconnect() was called while this attempt was connecting.
                    self._ws = None
                    self._stop_ping()
                    await ws.close()
                    ws = None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - kept and re-raised by run()/events()
            self._fatal = e
            self._log.error("client stopped: %s", e)
        finally:
            self._stop_ping()
            current = self._ws
            self._ws = None
            if current is not None:
                current.transport.abort()
            error = self._fatal or NotConnectedError("client disconnected")
            for st in self._topics.values():
                st.cancel_retry()
                for waiter in st.waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
            for stream in list(self._streams):
                stream._finish(self._fatal)

    async def _read_loop(self, ws: ClientConnection) -> Tuple[Optional[int], str]:
        """Dispatches messages until the connection ends; returns its close code and reason."""
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed as e:
                if e.rcvd is not None:
                    return e.rcvd.code, e.rcvd.reason
                return None, ""
            if self._closing:
                continue  # disconnect() asked: drain without delivering
            await self._handle_raw(raw)

    async def _reconnect(self) -> Optional[ClientConnection]:
        """Attempts connections with backoff; ``None`` if told to stop meanwhile."""
        attempt = 0
        auth_failures = 0
        last_error: Optional[BaseException] = None
        while not self._closing:
            if self.max_reconnect_attempts is not None and attempt >= self.max_reconnect_attempts:
                raise ReconnectError(attempt, last_error)
            delay = backoff_delay(self._backoff_step, self.backoff_base, self.backoff_max)
            self._backoff_step += 1
            self._log.info("reconnecting in %.2fs (attempt %d)", delay, attempt + 1)
            if await self._sleep_unless_closing(delay):
                return None
            attempt += 1
            try:
                return await self._open()
            except AuthenticationError as e:
                auth_failures += 1
                last_error = e
                # A provider gets one more chance to hand out a fresh token.
                if not callable(self._token) or auth_failures >= 2:
                    raise
                self._log.warning("token refused (HTTP %d); asking for a new one", e.status)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - network, handshake, provider errors
                last_error = e
                self._log.warning("reconnect attempt %d failed: %s", attempt, e)
        return None

    async def _sleep_unless_closing(self, delay: float) -> bool:
        """Sleeps ``delay`` seconds; True if :meth:`disconnect` was called meanwhile."""
        stop = self._stop
        if stop is None:
            await asyncio.sleep(delay)
            return self._closing
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except asyncio.TimeoutError:
            pass
        return self._closing

    async def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a handler's failure must not stop the client
            self._log.exception("callback %r failed", fn)

    async def _handle_raw(self, raw: Union[str, bytes]) -> None:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            message = json.loads(text)
        except ValueError:
            self._log.warning("ignoring a frame that is not JSON")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._log.warning("ignoring a frame without a type")
            return
        await self._dispatch(message)

    async def _dispatch(self, message: Message) -> None:
        kind = message["type"]
        if kind == "subscribed":
            await self._on_subscribed(message)
        elif kind == "error":
            await self._on_error(message)
        elif kind in ("unsubscribed", "pong", "authenticated"):
            await self._run_handlers(kind, message)
        else:
            await self._on_event(message)

    async def _run_handlers(self, kind: str, message: Message) -> None:
        for handler in list(self.message_handlers.get(kind, ())):
            await self._call(handler, message)

    async def _on_subscribed(self, message: Message) -> None:
        topic = message.get("deployment_id")
        st = self._topics.get(topic) if isinstance(topic, str) else None
        if st is None or not isinstance(topic, str):
            self._log.debug("ignoring subscribed for %r (not subscribed)", topic)
            return
        recovered = message.get("recovered", True) is not False
        latest = message.get("seq")
        epoch = message.get("epoch")
        if not recovered or st.sent_since is None:
            # A snapshot (if the topic has state) follows and sets the position.
            st.position.seq = None
        if not recovered:
            st.resync_pending = True
            self._log.warning("could not resume %s: events may be missing; resyncing", topic)
        st.position.epoch = epoch if isinstance(epoch, str) else None
        st.confirmed = True
        st.in_flight = False
        st.retry_step = 0
        st.cancel_retry()
        st.last_subscribed = message
        await self._run_handlers("subscribed", message)
        if st.position.seq is None and latest == 0:
            st.position.seq = 0  # an empty topic: no snapshot follows
            if st.resync_pending:
                st.resync_pending = False
                await self._resync(topic, None)
        for waiter in st.waiters:
            if not waiter.done():
                waiter.set_result(message)

    async def _on_error(self, message: Message) -> None:
        if str(message.get("message", "")).startswith("Authentication is not enabled"):
            # Our in-band refresh reached a server without auth: stop refreshing.
            self._log.debug("server has no auth: in-band token refresh stopped")
            if self._refresh_task is not None:
                self._refresh_task.cancel()
                self._refresh_task = None
            return
        topic = message.get("deployment_id")
        if isinstance(topic, str):
            st = self._topics.get(topic)
            code = message.get("code")
            if st is not None and not st.confirmed and isinstance(code, int) and code >= 500:
                # The server could not subscribe right now (backplane unavailable):
                # the topic stays subscribed and the request is retried.
                st.in_flight = False
                self._retry_subscribe(topic, st)
            elif st is not None and not st.confirmed:
                # The server refused this subscribe: the topic is not subscribed.
                del self._topics[topic]
                error = SubscriptionError(
                    topic, code if isinstance(code, int) else 0, str(message.get("message", ""))
                )
                for waiter in st.waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
        if self.message_handlers.get("error"):
            await self._run_handlers("error", message)
        else:
            self._log.warning(
                "server error %s: %s", message.get("code"), message.get("message")
            )

    def _retry_subscribe(self, topic: str, st: _Topic) -> None:
        ws = self._ws
        if ws is None:
            return  # the reconnect resubscribes
        delay = backoff_delay(st.retry_step, self.backoff_base, self.backoff_max)
        st.retry_step += 1
        self._log.warning("subscribe %s failed on the server; retrying in %.2fs", topic, delay)

        async def retry() -> None:
            await asyncio.sleep(delay)
            st.retry_task = None
            if self._ws is ws and self._topics.get(topic) is st and not st.in_flight:
                try:
                    await self._send_subscribe(ws, topic, st)
                except ConnectionClosed:
                    pass

        st.cancel_retry()
        st.retry_task = asyncio.ensure_future(retry())

    async def _on_event(self, message: Message) -> None:
        topic = message.get("deployment_id")
        st = self._topics.get(topic) if isinstance(topic, str) else None
        if st is None or not isinstance(topic, str):
            self._log.debug("dropping %s for %r (not subscribed)", message["type"], topic)
            return
        seq = message.get("seq")
        has_seq = isinstance(seq, int) and not isinstance(seq, bool)
        if is_snapshot(message["type"]):
            if has_seq:
                st.position.seq = seq
            if st.resync_pending:
                st.resync_pending = False
                await self._resync(topic, message)
        else:
            if has_seq:
                assert isinstance(seq, int)
                last = st.position.seq
                if last is not None and seq <= last:
                    self._log.debug("dropping duplicate %s seq %d (at %d)", topic, seq, last)
                    return
                if last is not None and seq != last + 1:
                    self._log.warning("gap on %s: seq %d after %d", topic, seq, last)
                st.position.seq = seq
            if st.resync_pending:
                st.resync_pending = False
                await self._resync(topic, None)
        await self._run_handlers(message["type"], message)
        await self._run_handlers("*", message)
        if self._backlog is not None:
            self._backlog.append(message)
        for stream in list(self._streams):
            stream._offer(message)

    async def _resync(self, topic: str, snapshot: Optional[Message]) -> None:
        if self.on_resync is not None:
            await self._call(self.on_resync, topic, snapshot)

