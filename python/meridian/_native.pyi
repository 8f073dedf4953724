"""Type stubs of ``meridian._native``, the Rust half of the module (checked against the
built module with ``mypy.stubtest``)."""

from typing import Any, Callable, Optional, Sequence, Tuple, Union, final

__all__ = [
    "NativeServer",
    "NativeClient",
    "NativeStream",
    "NativeRequestSink",
    "NativeResponse",
    "RequestIterator",
    "CallHandle",
    "CallContext",
    "PeerIdentity",
    "RustTestServer",
    "roundtrip",
    "_runtime_workers",
    "_after_fork_in_child",
    "_start_rust_test_server",
    "_rust_call",
    "_write_dev_certificates",
    "_write_dev_pki",
    "__version__",
    "_has_etcd",
]

__version__: str
_has_etcd: bool

def roundtrip(obj: Any) -> Any:
    """Converts ``obj`` to a Meridian value, encodes and decodes it, and converts it back."""

def _runtime_workers() -> int:
    """The threads that run this process's runtime tasks at once (``MERIDIAN_WORKER_THREADS``,
    default 1)."""

def _after_fork_in_child() -> None:
    """Reseeds the calling thread's random generator (registered with ``os.register_at_fork``)."""

@final
class NativeServer:
    def __new__(
        cls,
        region: str,
        host: str = "127.0.0.1",
        port: int = 0,
        cert_file: Optional[str] = None,
        key_file: Optional[str] = None,
        server_name: str = "localhost",
        advertise: bool = True,
        grace: float = 5.0,
        etcd: Optional[Sequence[str]] = None,
        etcd_prefix: Optional[str] = None,
        etcd_ttl: float = 10.0,
        client_ca_file: Optional[str] = None,
    ) -> "NativeServer": ...
    def add(
        self,
        name: str,
        func: Callable[[Any, "CallContext"], Any],
        streaming: bool = False,
        idempotent: bool = False,
        client_streaming: bool = False,
    ) -> None: ...
    def start(self) -> Tuple[str, int]: ...
    def reload_tls(self) -> None: ...
    def stop(self, grace: Optional[float] = None) -> None: ...
    @property
    def address(self) -> Optional[Tuple[str, int]]: ...
    @property
    def region(self) -> str: ...
    @property
    def methods(self) -> list[str]: ...
    @property
    def calls_total(self) -> int: ...
    def metrics_text(self) -> str: ...

@final
class CallHandle:
    def cancel(self) -> None: ...

@final
class PeerIdentity:
    """Who the client is, from the certificate chain the server verified (mutual TLS)."""

    @property
    def dns_names(self) -> list[str]:
        """DNS names among the certificate's subject alternative names."""
    @property
    def uris(self) -> list[str]:
        """URIs among the certificate's subject alternative names."""
    @property
    def spiffe_id(self) -> Optional[str]:
        """The first ``spiffe://`` URI name (the workload's SPIFFE ID), or ``None``."""
    @property
    def common_name(self) -> Optional[str]:
        """The subject's common name, or ``None``."""
    @property
    def certificates(self) -> list[bytes]:
        """The verified chain as DER, end-entity certificate first."""
    def has_name(self, name: str) -> bool:
        """Whether any DNS or URI name, or the common name, equals ``name``."""

@final
class CallContext:
    """The call a handler is answering (see ``meridian.context``)."""

    @property
    def method(self) -> str:
        """The method name the client called."""
    @property
    def peer(self) -> Tuple[str, int]:
        """The client's address, ``(host, port)``."""
    @property
    def peer_identity(self) -> Optional[PeerIdentity]:
        """The client's verified certificate identity; ``None`` without mutual TLS."""
    @property
    def metadata(self) -> dict[str, Union[str, bytes]]:
        """The metadata the client sent (``bytes`` under keys ending in ``-bin``)."""
    @property
    def idempotent(self) -> bool:
        """Whether the caller marked the call idempotent."""
    def time_remaining(self) -> Optional[float]:
        """Seconds left before the caller's deadline, ``None`` without one."""
    def is_cancelled(self) -> bool:
        """Whether the call was cancelled (by the client or its deadline)."""
    def set_trailer(self, key: str, value: Union[str, bytes]) -> None:
        """Adds an entry to the response's trailing metadata."""
    def _on_cancel(self, callback: Callable[[], object]) -> CallHandle:
        """Calls ``callback()`` once the call is cancelled; ``cancel()`` the handle to stop."""

@final
class NativeStream:
    def __iter__(self) -> "NativeStream": ...
    def __next__(self) -> Any: ...
    def next_async(self, done: Callable[[bool, Any], None]) -> CallHandle: ...
    def cancel(self) -> None: ...

@final
class RequestIterator:
    """The request values of a client-streaming or bidirectional call."""

    def __iter__(self) -> "RequestIterator": ...
    def __next__(self) -> Any:
        """The next request value; waits with the GIL released."""

@final
class NativeRequestSink:
    def send(self, value: Any) -> bool:
        """Sends one request value; waits while the server is slow to read. False once
        the server has ended the call (the value was discarded)."""
    def close(self) -> None:
        """Ends the request stream."""
    def cancel(self) -> None:
        """Abandons the call."""

@final
class NativeResponse:
    def wait(self) -> Any:
        """Closes sending if still open, then waits for the response."""

@final
class NativeClient:
    def __new__(
        cls,
        home: Optional[str] = None,
        config: Optional[str] = None,
        regions: Optional[Sequence[Tuple[str, Sequence[Tuple[str, str]]]]] = None,
        roots: Optional[str] = None,
        etcd: Optional[Sequence[str]] = None,
        etcd_prefix: Optional[str] = None,
        wait_for_ready: bool = False,
        client_cert_file: Optional[str] = None,
        client_key_file: Optional[str] = None,
    ) -> "NativeClient": ...
    def call(
        self,
        method: str,
        args: Any,
        timeout: Optional[float] = None,
        metadata: Optional[dict[str, Union[str, bytes]]] = None,
        key: Optional[Union[str, bytes]] = None,
    ) -> Any: ...
    def call_detailed(
        self,
        method: str,
        args: Any,
        timeout: Optional[float] = None,
        metadata: Optional[dict[str, Union[str, bytes]]] = None,
        key: Optional[Union[str, bytes]] = None,
    ) -> Tuple[Any, dict[str, bytes], dict[str, Optional[float]]]: ...
    def call_async(
        self,
        method: str,
        args: Any,
        done: Callable[[bool, Any], None],
        timeout: Optional[float] = None,
        metadata: Optional[dict[str, Union[str, bytes]]] = None,
        key: Optional[Union[str, bytes]] = None,
    ) -> CallHandle: ...
    def stream(
        self,
        method: str,
        args: Any,
        timeout: Optional[float] = None,
        metadata: Optional[dict[str, Union[str, bytes]]] = None,
        key: Optional[Union[str, bytes]] = None,
    ) -> NativeStream: ...
    def open_client_stream(
        self,
        method: str,
        timeout: Optional[float] = None,
        metadata: Optional[dict[str, Union[str, bytes]]] = None,
        key: Optional[Union[str, bytes]] = None,
    ) -> Tuple[NativeRequestSink, NativeResponse]: ...
    def open_bidi(
        self,
        method: str,
        timeout: Optional[float] = None,
        metadata: Optional[dict[str, Union[str, bytes]]] = None,
        key: Optional[Union[str, bytes]] = None,
    ) -> Tuple[NativeRequestSink, NativeStream]: ...
    def metrics_text(self) -> str: ...
    def reload_tls(self) -> None: ...
    def close(self) -> None: ...

@final
class RustTestServer:
    @property
    def port(self) -> int: ...
    def stop(self) -> None: ...

def _start_rust_test_server(region: str) -> RustTestServer: ...
def _rust_call(method: str, a: int, b: int, named: bool = False, timeout: float = 5.0) -> int: ...
def _write_dev_certificates(dir: str) -> Tuple[str, str, str]: ...
def _write_dev_pki(
    dir: str, server_names: Sequence[str], client_name: str, client_uri: Optional[str] = None
) -> dict[str, str]: ...
