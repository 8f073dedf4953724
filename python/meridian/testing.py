"""Development helpers: throw-away certificates for tests and local experiments.

**Development only.** The certificates come from a CA created on the spot whose private
key is discarded; they prove nothing about anyone and must never protect real traffic.
Use them to try mutual TLS and certificate rotation between processes on one machine::

    from meridian import ClientTLS, RPCClient, RPCServer, ServerTLS
    from meridian.testing import dev_certificates

    certs = dev_certificates("/tmp/pki", client_uri="spiffe://example.test/me")
    server = RPCServer("dev", tls=ServerTLS(certs.server_cert_file, certs.server_key_file,
                                           client_ca_file=certs.ca_file))
    client = RPCClient("dev", regions={"dev": [f"127.0.0.1:{server.start().port}"]},
                       tls=ClientTLS(certs.ca_file, certs.client_cert_file,
                                     certs.client_key_file))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

from ._native import _write_dev_pki
from .tls import PathLike

__all__ = ["DevCertificates", "dev_certificates"]


@dataclass(frozen=True)
class DevCertificates:
    """The PEM files written by :func:`dev_certificates`."""

    ca_file: str
    """The CA certificate (``ca.pem``): what clients and mutual-TLS servers trust."""
    server_cert_file: str
    """The server's certificate chain (``server.pem``)."""
    server_key_file: str
    """The server's private key (``server.key``)."""
    client_cert_file: str
    """The client's certificate chain (``client.pem``)."""
    client_key_file: str
    """The client's private key (``client.key``)."""


def dev_certificates(
    directory: PathLike,
    *,
    server_names: Sequence[str] = ("localhost",),
    client_name: str = "client",
    client_uri: Optional[str] = None,
) -> DevCertificates:
    """Writes a fresh development CA and a server and a client certificate issued by it
    into ``directory`` (which must exist), overwriting files of the same names.

    The server certificate carries ``server_names`` as DNS names; the client certificate
    carries ``client_name`` as its common name and DNS name, and ``client_uri`` (a SPIFFE
    ID such as ``"spiffe://example.test/web"``) as a URI name if given. Every call makes a
    new CA, so two directories never trust each other. Development only (see the module
    documentation).
    """
    paths = _write_dev_pki(
        os.fspath(directory), list(server_names), client_name, client_uri
    )
    return DevCertificates(
        ca_file=paths["ca"],
        server_cert_file=paths["server_cert"],
        server_key_file=paths["server_key"],
        client_cert_file=paths["client_cert"],
        client_key_file=paths["client_key"],
    )
