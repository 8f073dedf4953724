"""Type stubs of ``meridian._native``, the Rust half of the module (checked against the
built module with ``mypy.stubtest``)."""

from typing import Any, Callable, Optional, Sequence, Tuple, Union, final

__all__ = [
    "NativeServer",
    "NativeClient",
    "NativeStream",
    "CallHandle",
    "RustTestServer",
    "roundtrip",
    "_start_rust_test_server",
    "_rust_call",
    "_write_dev_certificates",
    "__version__",
]

__version__: str

def roundtrip(obj: Any) -> Any:
    """Converts ``obj`` to a Meridian value, encodes and decodes it, and converts it back."""

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
    ) -> "NativeServer": ...
    def add(
        self, name: str, func: Callable[[Any], Any], streaming: bool = False, idempotent: bool = False
    ) -> None: ...
    def start(self) -> Tuple[str, int]: ...
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
class NativeStream:
    def __iter__(self) -> "NativeStream": ...
    def __next__(self) -> Any: ...
    def next_async(self, done: Callable[[bool, Any], None]) -> CallHandle: ...
    def cancel(self) -> None: ...

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
    def metrics_text(self) -> str: ...
    def close(self) -> None: ...

@final
class RustTestServer:
    @property
    def port(self) -> int: ...
    def stop(self) -> None: ...

def _start_rust_test_server(region: str) -> RustTestServer: ...
def _rust_call(method: str, a: int, b: int, named: bool = False, timeout: float = 5.0) -> int: ...
def _write_dev_certificates(dir: str) -> Tuple[str, str, str]: ...
