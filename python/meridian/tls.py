"""TLS settings of servers and clients: certificates from PEM files, mutual TLS.

Every Meridian connection is QUIC with TLS 1.3. Without settings, an ``RPCServer``
presents a certificate from the process's development CA and an ``RPCClient`` trusts
only the servers of its own process: fine for a script, not for two machines. These
classes name real certificate files instead::

    server = RPCServer("eu", tls=ServerTLS("server.pem", "server.key",
                                          client_ca_file="clients-ca.pem"))
    client = RPCClient("eu", regions={"eu": ["10.0.0.1:7000"]},
                       tls=ClientTLS("ca.pem", cert_file="client.pem",
                                     key_file="client.key", server_name="eu.example.com"))

Files are read when the server or client is created; unreadable or unusable ones raise
``ValueError`` there. :meth:`RPCServer.reload_tls` reads the server's certificate and key
again (certificate rotation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

__all__ = ["ServerTLS", "ClientTLS", "PathLike"]

#: A file path: ``str`` or ``os.PathLike`` (``pathlib.Path``).
PathLike = Union[str, "os.PathLike[str]"]


def _path(value: Optional[PathLike], what: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(value).__name__}")
    return os.fspath(value)


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and, for mutual TLS, the CAs its clients must come from.

    ``cert_file`` is a PEM file of the certificate chain (the server's certificate first),
    ``key_file`` the PEM private key. With ``client_ca_file`` (PEM, one or more CA
    certificates) every client must present a certificate issued by one of those CAs;
    a client without one is refused during the handshake, before any handler runs, and
    handlers see who called in :attr:`CallContext.peer_identity`.

    :meth:`RPCServer.reload_tls` reads ``cert_file`` and ``key_file`` again;
    ``client_ca_file`` is read once, when the server is created.
    """

    cert_file: str
    key_file: str
    client_ca_file: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("cert_file", "key_file", "client_ca_file"):
            value = _path(getattr(self, name), name)
            if value is None and name != "client_ca_file":
                raise TypeError(f"{name} is required")
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class ClientTLS:
    """What a client trusts and, for mutual TLS, the certificate it presents.

    ``ca_file`` is a PEM file of the CA certificates to trust (only those: the process's
    development CA is not added). ``cert_file`` and ``key_file`` (PEM, both or neither)
    are the client's own certificate chain and key, presented to servers that require
    one. ``server_name`` is the name expected in the server certificates of servers given
    as plain ``"host:port"`` strings in ``regions=`` (default ``"localhost"``); a
    ``(address, name)`` pair there, a region file or discovery names its own.
    """

    ca_file: str
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    server_name: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            value = _path(getattr(self, name), name)
            if value is None and name == "ca_file":
                raise TypeError("ca_file is required")
            object.__setattr__(self, name, value)
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        if self.server_name is not None and not isinstance(self.server_name, str):
            raise TypeError("server_name must be str")
