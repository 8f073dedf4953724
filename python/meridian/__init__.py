"""Meridian for Python: RPC over QUIC with multi-region routing.

The classic multi-region script runs as is::

    from meridian import RPCServer, RPCClient

    region1 = RPCServer('Region1')
    region2 = RPCServer('Region2')
    client = RPCClient('Region1')

    @region1.RPC
    def add(a, b):
        return a + b

    @region2.RPC
    def subtract(a, b):
        return a - b

    print(client.add(10, 5))       # 15
    print(client.subtract(10, 5))  # 5

Every call travels over QUIC with TLS 1.3; arguments and results are Meridian values
(``None``, ``bool``, 64-bit ``int``, ``float``, ``str``, ``bytes``, ``list``/``tuple``,
``dict``), never executable serializations. See ``meridian._args`` for how keyword
arguments travel.

Across machines, servers and clients use certificate files (:class:`ServerTLS`,
:class:`ClientTLS`), optionally with mutual TLS; handlers learn who called, and more,
from their :class:`CallContext` (see ``meridian.context``). ``meridian.testing`` writes
development certificates.
"""

import os as _os

from ._native import __version__, _after_fork_in_child, roundtrip
from .client import (
    DEFAULT,
    AsyncBidiCall,
    AsyncRPCClient,
    BidiCall,
    CallTiming,
    DefaultType,
    Reply,
    ResponseIterator,
    RPCClient,
    Timeout,
)
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    RpcError,
    StatusCode,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from .context import CallContext, PeerIdentity, current_context
from .server import RPCServer
from .tls import ClientTLS, ServerTLS

# A forked child reseeds the random generator its forking thread shares with the parent
# (connection IDs come from it; see python/src/fork.rs).
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = [
    "__version__",
    "roundtrip",
    "RPCServer",
    "RPCClient",
    "AsyncRPCClient",
    "ResponseIterator",
    "Reply",
    "CallTiming",
    "BidiCall",
    "AsyncBidiCall",
    "DEFAULT",
    "DefaultType",
    "Timeout",
    "ServerTLS",
    "ClientTLS",
    "CallContext",
    "PeerIdentity",
    "current_context",
    "StatusCode",
    "RpcError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
]
