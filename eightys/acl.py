"""Network ACLs: which client addresses may connect, or reach a route.

Two levels, as in LAppS: the server-wide lists (``--allow``/``--deny``), checked
once per connection right after accept, before any Lua runs; and per-route lists
(``aio:http_get(path, handler, {allow = ..., deny = ...})``, WebSocket routes, the
content server's ``httpd.acl``), checked per request, answering 403.

Precedence, the same at both levels: **deny wins**. An address in a ``deny``
network is refused; otherwise, if there is an ``allow`` list, only addresses in
it are let in; with no ``allow`` list everything not denied is. A request must
pass both levels. Addresses that are not IP (a Unix socket peer) always pass:
only processes on this machine can connect there.

Behind a reverse proxy the TCP peer is the proxy. ``--proxy-from CIDR,...`` names
the proxies whose ``X-Forwarded-For`` is believed: the client is the rightmost
address in it that is not itself a trusted proxy (each proxy appends the peer it
saw, so everything left of the first untrusted hop may be forged). A connection
from a trusted proxy is admitted; the server-wide lists are then applied to each
request's forwarded client (403), as are the route lists.

Everything is precompiled with :mod:`ipaddress`; decisions are cached per
address string (bounded), so a keep-alive client or a busy proxy costs a dict
lookup.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Sequence

from eightys.wire import FLAG_KEEP_ALIVE, error_response

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Cached decisions per ACL (address string -> bool); cleared when full.
MAX_CACHE = 4096
#: Hops of an X-Forwarded-For looked at, from the right; more is a forged header.
MAX_HOPS = 32


def parse_networks(values: Iterable[str], what: str = "network") -> tuple[Network, ...]:
    """``["10.0.0.0/8", "::1", "192.168.1.5"]`` -> networks (a bare address is a
    /32 or /128; host bits are ignored: ``10.1.2.3/8`` is ``10.0.0.0/8``).
    Each value may itself be a comma-separated list. ValueError names a bad entry."""
    networks: list[Network] = []
    for value in values:
        for item in str(value).split(","):
            item = item.strip()
            if not item:
                continue
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"bad {what} {item!r}: expected an IPv4/IPv6 address "
                                 "or CIDR, e.g. 10.0.0.0/8 or ::1") from None
            if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 \
                    and network.network_address.ipv4_mapped is not None:
                # ::ffff:10.0.0.0/104 is how a dual-stack socket shows 10.0.0.0/8
                mapped = network.network_address.ipv4_mapped
                network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
            networks.append(network)
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as a socket or a proxy header gives it, normalised: IPv4-mapped
    IPv6 (``::ffff:1.2.3.4``, what a dual-stack socket reports) becomes IPv4, a
    zone (``fe80::1%eth0``) is dropped, ``[::1]:80`` and ``1.2.3.4:80`` lose the
    port. None if it is not an IP address."""
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        end = text.find("]")
        if end == -1:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _contains(networks: tuple[Network, ...], address: Address) -> bool:
    version = address.version
    for network in networks:
        if network.version == version and address in network:
            return True
    return False


class Acl:
    """One allow/deny pair (see the module docstring for the precedence)."""

    __slots__ = ("allow", "deny", "_cache")

    def __init__(self, allow: Sequence[str] | None = None, deny: Sequence[str] = ()) -> None:
        #: None: no allow list (all that is not denied); an empty one lets nobody in
        self.allow = None if allow is None else parse_networks(allow, "allow entry")
        self.deny = parse_networks(deny, "deny entry")
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return self.allow is not None or bool(self.deny)

    def permits(self, address: str) -> bool:
        """Whether ``address`` (as the socket or proxy header gave it) may pass."""
        cache = self._cache
        verdict = cache.get(address)
        if verdict is None:
            verdict = self.permits_address(parse_address(address))
            if len(cache) >= MAX_CACHE:
                cache.clear()
            cache[address] = verdict
        return verdict

    def permits_address(self, address: Address | None) -> bool:
        """:meth:`permits` for a parsed address (None: not IP, e.g. a Unix socket)."""
        if address is None:
            return True
        if self.deny and _contains(self.deny, address):
            return False
        return self.allow is None or _contains(self.allow, address)


class ProxyTrust:
    """The proxies whose ``X-Forwarded-For`` is believed (``--proxy-from``)."""

    __slots__ = ("networks", "_cache")

    def __init__(self, networks: Sequence[str]) -> None:
        self.networks = parse_networks(networks, "--proxy-from entry")
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        """Whether ``address`` is a trusted proxy."""
        cache = self._cache
        verdict = cache.get(address)
        if verdict is None:
            parsed = parse_address(address)
            verdict = parsed is not None and _contains(self.networks, parsed)
            if len(cache) >= MAX_CACHE:
                cache.clear()
            cache[address] = verdict
        return verdict

    def client(self, peer: str, forwarded: str | None) -> str:
        """The client address for a request from ``peer`` carrying the
        ``X-Forwarded-For`` value ``forwarded`` (several fields joined with ","):
        the peer itself unless it is a trusted proxy; else the rightmost hop that
        is not a trusted proxy (or the leftmost, if all are). A hop that is not an
        address ends the walk: the last good one is the client."""
        if not forwarded or not self.trusts(peer):
            return peer
        client = peer
        hops = forwarded.split(",")
        for hop in reversed(hops[-MAX_HOPS:]):
            address = parse_address(hop)
            if address is None:
                break
            client = str(address)
            if not self.trusts(client):
                break
        return client


def peer_address(transport: Any) -> str | None:
    """The TCP peer's address (as the socket gives it), None for a Unix socket."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return peer[0]
    return None


def forwarded_for(raw_headers: bytes) -> str | None:
    """The ``X-Forwarded-For`` fields of a request's raw header block
    (``name\\0value\\0...``), joined with ","; None if there is none."""
    if not raw_headers or b"orwarded" not in raw_headers:
        return None
    fields = raw_headers.split(b"\0")
    values = [fields[i + 1] for i in range(0, len(fields) - 1, 2)
              if len(fields[i]) == 15 and fields[i].lower() == b"x-forwarded-for"]
    return b",".join(values).decode("latin-1") if values else None


#: connection_made verdicts of :meth:`Gate.admit`
DENY = 0
ADMIT = 1
#: a trusted proxy: admitted; each request is screened with its forwarded client
PROXIED = 2


class Gate:
    """The server-wide check (``--allow``/``--deny``/``--proxy-from``), consulted by
    the protocols in ``connection_made`` through the host."""

    __slots__ = ("acl", "proxies")

    def __init__(self, acl: Acl, proxies: ProxyTrust) -> None:
        self.acl = acl
        self.proxies = proxies

    def admit(self, transport: Any, http: bool = True) -> int:
        """DENY (close it now), ADMIT, or PROXIED (an HTTP connection from a trusted
        proxy when server-wide lists exist: screen its requests)."""
        peer = peer_address(transport)
        if peer is None:
            return ADMIT
        if http and self.proxies and self.proxies.trusts(peer):
            return PROXIED if self.acl else ADMIT
        return ADMIT if self.acl.permits(peer) else DENY

    def screen(self, conn: Any, request: tuple) -> bool:
        """A request on a PROXIED connection: True (and a 403 queued) if its
        forwarded client is refused by the server-wide lists."""
        transport = conn.transport
        peer = peer_address(transport) if transport is not None else None
        if peer is None:
            return False
        client = self.proxies.client(peer, forwarded_for(request[5]))
        if self.acl.permits(client):
            return False
        response = error_response(403, close=not request[4] & FLAG_KEEP_ALIVE)
        if request[1] == b"HEAD":  # the same head, no body
            response = response[:response.index(b"\r\n\r\n") + 4]
        conn.send(request[0], response, True)
        return True


class AclHost:
    """The Lua side's functions (private host table): compile route ACLs, check
    them, and tell the client address of a request."""

    def __init__(self, connections: dict[int, Any], gate: Gate | None,
                 proxies: ProxyTrust) -> None:
        self.connections = connections
        self.gate = gate
        self.proxies = proxies
        self._ids: dict[tuple[tuple[str, ...] | None, tuple[str, ...]], int] = {}
        self._acls: list[Acl] = []

    def functions(self) -> dict[bytes, Any]:
        """The entries this adds to the private host table."""
        return {b"acl_new": self.new, b"acl_permits": self.permits,
                b"client_address": self.client_address,
                b"proxy_trust": bool(self.proxies)}

    def new(self, allow: Any, deny: Any) -> Any:
        """Compile a route ACL (lists of CIDR strings, Lua tables or None) -> an id,
        or nil, err. The same lists give the same id (reloads register routes again)."""
        try:
            allow_t = None if allow is None else tuple(_strings(allow))
            deny_t = tuple(_strings(deny))
            key = (allow_t, deny_t)
            acl_id = self._ids.get(key)
            if acl_id is None:
                acl = Acl(allow_t, deny_t)
                acl_id = len(self._acls)
                self._acls.append(acl)
                self._ids[key] = acl_id
        except (ValueError, TypeError) as exc:
            return None, str(exc).encode()
        return acl_id

    def _client_peer(self, fd: Any, forwarded: Any) -> tuple[bool, str | None]:
        """Whether connection ``fd`` is open, and its client's address: the peer, or
        behind a trusted proxy the client ``forwarded`` (X-Forwarded-For) names;
        None for a Unix socket."""
        conn = self.connections.get(fd)
        transport = getattr(conn, "transport", None)
        if transport is None:
            return False, None
        peer = peer_address(transport)
        if peer is not None and self.proxies and forwarded:
            peer = self.proxies.client(peer, forwarded.decode("latin-1"))
        return True, peer

    def client_address(self, fd: Any, forwarded: Any = None) -> Any:
        """The client of a request on connection ``fd`` carrying ``X-Forwarded-For``
        ``forwarded`` (a string or nil): the peer, or behind a trusted proxy the
        forwarded client. Nil for a Unix socket or a closed connection."""
        _, peer = self._client_peer(fd, forwarded)
        if peer is None:
            return None
        address = parse_address(peer)
        return str(address).encode() if address is not None else peer.encode()

    def permits(self, acl_id: Any, fd: Any, forwarded: Any = None) -> bool:
        """Whether route ACL ``acl_id`` lets the client of a request on ``fd`` in
        (a closed connection: no; a Unix socket client: yes)."""
        is_open, peer = self._client_peer(fd, forwarded)
        if not is_open:
            return False
        if peer is None:
            return True
        return self._acls[int(acl_id)].permits(peer)

def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    if hasattr(value, "values"):  # a Lua table
        items = list(value.values())
    else:
        items = list(value)
    out = []
    for item in items:
        if not isinstance(item, (bytes, str)):
            raise TypeError("allow/deny must be lists of CIDR strings")
        out.append(item.decode("latin-1") if isinstance(item, bytes) else item)
    return out


def build_gate(allow: Sequence[str], deny: Sequence[str], proxies: ProxyTrust) -> Gate | None:
    """The server-wide gate, or None when there are no server-wide lists (then
    connection_made checks nothing: zero cost)."""
    acl = Acl(allow or None, deny)
    if not acl:
        return None
    return Gate(acl, proxies)
