"""autobahn-python (asyncio) sessions for the WAMP tests and the benchmark: join a
realm of a running eightys router over a real WebSocket, with either serializer
and optional WAMP-CRA / ticket authentication."""

from __future__ import annotations

import asyncio
from typing import Any

import txaio

txaio.use_asyncio()

from autobahn.asyncio.wamp import ApplicationSession  # noqa: E402
from autobahn.asyncio.websocket import WampWebSocketClientFactory  # noqa: E402
from autobahn.wamp import auth  # noqa: E402
from autobahn.wamp.serializer import CBORSerializer, JsonSerializer, MsgPackSerializer  # noqa: E402
from autobahn.wamp.types import ComponentConfig  # noqa: E402

SERIALIZERS = {"json": JsonSerializer, "msgpack": MsgPackSerializer, "cbor": CBORSerializer}


class JoinFailed(Exception):
    """The router aborted the session (the reason is the message)."""


class Session(ApplicationSession):
    """An ApplicationSession that joins with the given credentials and reports
    the join (or the abort) to a future."""

    def __init__(self, config: ComponentConfig, joined: asyncio.Future, authmethods: list[str] | None,
                 authid: str | None, secret: str | None) -> None:
        super().__init__(config)
        self._joined = joined
        self._authmethods = authmethods
        self._authid = authid
        self._secret = secret
        self.left: asyncio.Future = asyncio.get_running_loop().create_future()

    def onConnect(self) -> None:
        self.join(self.config.realm, authmethods=self._authmethods, authid=self._authid)

    def onChallenge(self, challenge: Any) -> str:
        if challenge.method == "wampcra":
            return auth.compute_wcs(self._secret.encode(), challenge.extra["challenge"].encode()).decode()
        if challenge.method == "ticket":
            return self._secret
        raise Exception(f"unexpected challenge {challenge.method}")

    def onJoin(self, details: Any) -> None:
        if not self._joined.done():
            self._joined.set_result(details)

    def onLeave(self, details: Any) -> None:
        if not self._joined.done():
            self._joined.set_exception(JoinFailed(details.reason))
        if not self.left.done():
            self.left.set_result(details)
        super().onLeave(details)

    def onDisconnect(self) -> None:
        if not self._joined.done():
            self._joined.set_exception(JoinFailed("disconnected"))
        if not self.left.done():
            self.left.set_result(None)


async def join(port: int, realm: str = "realm1", serializer: str = "json", *,
               authmethods: list[str] | None = None, authid: str | None = None,
               secret: str | None = None, path: str = "/ws", timeout: float = 10.0) -> tuple[Session, Any]:
    """Connect to ws://127.0.0.1:PORT/ws and join ``realm``; returns (session,
    SessionDetails). Raises JoinFailed with the router's reason on ABORT."""
    loop = asyncio.get_running_loop()
    joined = loop.create_future()
    session = Session(ComponentConfig(realm), joined, authmethods, authid, secret)
    factory = WampWebSocketClientFactory(lambda: session, url=f"ws://127.0.0.1:{port}{path}",
                                         serializers=[SERIALIZERS[serializer]()])
    await loop.create_connection(factory, "127.0.0.1", port)
    details = await asyncio.wait_for(joined, timeout)
    return session, details


def worker_of(details: Any) -> int:
    """The eightys worker serving a session (from WELCOME's authextra)."""
    return details.authextra["x_eightys_worker"]


async def leave(*sessions: Session) -> None:
    """Leave each session (GOODBYE) and wait for the transport to close."""
    for s in sessions:
        if s.is_attached():
            s.leave()
    for s in sessions:
        try:
            await asyncio.wait_for(s.left, 5)
        except asyncio.TimeoutError:
            pass
