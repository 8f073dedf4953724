"""RPCServer: serve Python functions over Meridian.

Handlers run on the library's blocking threads, which hold the interpreter only while
Python code runs: a slow handler occupies one thread and never stalls other calls or the
transport. ``async def`` handlers (and async generators) run on one event-loop thread
shared by the process (started on first use), so they may await freely and many run at
once; a blocking thread waits for each one's result with the GIL released.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import threading
import traceback
import weakref
from typing import Any, Callable, Iterator, Optional, Tuple, TypeVar, Union, overload

from . import _args
from ._native import NativeServer
from .client import Endpoints, etcd_endpoints
from .errors import InvalidArgument, RpcError, StatusCode

__all__ = ["RPCServer"]

F = TypeVar("F", bound=Callable[..., Any])

_live_servers: "weakref.WeakSet[RPCServer]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # A script that never calls stop() still exits cleanly: servers leave before the
    # interpreter goes away under their handler threads.
    for server in list(_live_servers):
        try:
            server.stop(grace=1.0)
        except Exception:
            pass


class _LoopThread:
    """The process's event loop for ``async def`` handlers, on a daemon thread."""

    _lock = threading.Lock()
    _loop: Optional[asyncio.AbstractEventLoop] = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="meridian-async-handlers", daemon=True
                )
                thread.start()
                cls._loop = loop
            return cls._loop

    @classmethod
    def run(cls, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, cls.loop()).result()

    @classmethod
    def iterate(cls, agen: Any) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield cls.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            cls.run(agen.aclose())


def _bad_arguments(func: Callable[..., Any], args: Any, kwargs: Any) -> bool:
    """Whether a TypeError came from calling ``func`` with the wrong arguments."""
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except TypeError:
        return True
    except ValueError:
        return False
    return False


class RPCServer:
    """A Meridian server in ``region``, serving the functions registered on it.

    ``RPCServer('Region1')`` listens on 127.0.0.1 on a free port with a certificate from
    the process's development CA, and lists itself in the in-process registry, so that an
    ``RPCClient()`` of the same process finds it with no configuration. ``certs=(cert_file,
    key_file)`` (PEM) sets the certificate, ``server_name`` the name it carries.

    The server starts serving in the background on the first registration (or on
    :meth:`start`). Registering on a running server adds the method in place and
    announces it to connected clients. Exceptions raised by handlers reach the
    caller as :class:`meridian.RpcError` (``UNKNOWN``, ``"TypeName: text"``) or with
    the code of an ``RpcError`` the handler raised; tracebacks are sent only with
    ``send_tracebacks=True``, in the metadata entry ``traceback``.

    ``etcd="http://127.0.0.1:2379"`` (or a list of URLs) also registers the server in etcd
    when it starts, under ``etcd_prefix`` (default ``/meridian/``) with a lease of
    ``etcd_ttl`` seconds kept alive in the background: clients anywhere that follow etcd
    (``RPCClient(etcd=...)``) find it. :meth:`stop` removes it at once; a process that
    dies disappears when its lease expires.
    """

    def __init__(
        self,
        region: str,
        host: str = "127.0.0.1",
        port: int = 0,
        certs: Optional[Tuple[str, str]] = None,
        *,
        server_name: str = "localhost",
        send_tracebacks: bool = False,
        grace: float = 5.0,
        etcd: Optional[Endpoints] = None,
        etcd_prefix: Optional[str] = None,
        etcd_ttl: float = 10.0,
    ) -> None:
        cert_file, key_file = certs if certs is not None else (None, None)
        self._native = NativeServer(
            region,
            host=host,
            port=port,
            cert_file=cert_file,
            key_file=key_file,
            server_name=server_name,
            grace=grace,
            etcd=etcd_endpoints(etcd),
            etcd_prefix=etcd_prefix,
            etcd_ttl=etcd_ttl,
        )
        self._send_tracebacks = send_tracebacks
        self._started = False
        self._lock = threading.Lock()

    # -- registration -------------------------------------------------------------------

    @overload
    def rpc(self, func: F) -> F: ...

    @overload
    def rpc(
        self,
        func: None = None,
        *,
        name: Optional[str] = None,
        idempotent: bool = False,
        streaming: Optional[bool] = None,
    ) -> Callable[[F], F]: ...

    def rpc(
        self,
        func: Optional[F] = None,
        *,
        name: Optional[str] = None,
        idempotent: bool = False,
        streaming: Optional[bool] = None,
    ) -> Union[F, Callable[[F], F]]:
        """Registers a function as a method: ``@server.rpc`` or ``@server.rpc(name=...,
        idempotent=True)``.

        The method's name is the function's unless ``name`` is given. ``idempotent=True``
        declares it safe to run more than once (retried on failover, may travel in 0-RTT
        data). Generator functions (sync or async) become server-streaming methods
        (``streaming=True`` forces it for a function returning an iterator). ``async def``
        functions run on the handler event loop. Returns the function unchanged.
        """

        def register(f: F) -> F:
            self.register(f, name=name, idempotent=idempotent, streaming=streaming)
            return f

        if func is not None:
            return register(func)
        return register

    #: Alias of :meth:`rpc`, the spelling of the original multi-region article.
    RPC = rpc

    def register(
        self,
        func: Callable[..., Any],
        *,
        name: Optional[str] = None,
        idempotent: bool = False,
        streaming: Optional[bool] = None,
    ) -> None:
        """Registers ``func`` (see :meth:`rpc`) and starts the server if it is not yet."""
        method = name or getattr(func, "__name__", None)
        if not method:
            raise ValueError("a method needs a name: pass name=...")
        is_async_gen = inspect.isasyncgenfunction(func)
        if streaming is None:
            streaming = inspect.isgeneratorfunction(func) or is_async_gen
        handler = self._adapt(func, streaming, is_async_gen)
        with self._lock:
            self._native.add(method, handler, streaming=streaming, idempotent=idempotent)
            if not self._started:
                self._native.start()
                self._started = True
                _live_servers.add(self)

    def _adapt(self, func: Callable[..., Any], streaming: bool, is_async_gen: bool) -> Callable[[Any], Any]:
        """The callable the native server runs: unpacks the arguments, runs ``func``
        (on the event loop if it is async) and turns exceptions into RpcErrors."""
        is_coro = inspect.iscoroutinefunction(func)
        tracebacks = self._send_tracebacks

        def failure(e: Exception, args: Any, kwargs: Any) -> RpcError:
            if isinstance(e, RpcError):
                return e
            metadata = {"traceback": traceback.format_exc()} if tracebacks else None
            if isinstance(e, TypeError) and _bad_arguments(func, args, kwargs):
                return InvalidArgument(str(e), metadata)
            return RpcError(StatusCode.UNKNOWN, f"{type(e).__name__}: {e}", metadata)

        if streaming:

            def stream(payload: Any) -> Iterator[Any]:
                args, kwargs = _args.unpack(payload)
                try:
                    if is_async_gen:
                        yield from _LoopThread.iterate(func(*args, **kwargs))
                    else:
                        yield from func(*args, **kwargs)
                except Exception as e:
                    raise failure(e, args, kwargs) from None

            return stream

        def unary(payload: Any) -> Any:
            args, kwargs = _args.unpack(payload)
            try:
                if is_coro:
                    return _LoopThread.run(func(*args, **kwargs))
                return func(*args, **kwargs)
            except Exception as e:
                raise failure(e, args, kwargs) from None

        return unary

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> "RPCServer":
        """Starts serving (a no-op if running). Returns the server."""
        with self._lock:
            if not self._started:
                self._native.start()
                self._started = True
                _live_servers.add(self)
        return self

    def stop(self, grace: Optional[float] = None) -> None:
        """Stops serving: leaves the registry, refuses new calls (they fail with
        ``UNAVAILABLE`` saying they did not run, so they are safe to send again), lets
        calls in flight finish and their answers reach the callers for up to ``grace``
        seconds (default: the constructor's), then closes. Stopping a stopped server does
        nothing."""
        with self._lock:
            self._started = False
            _live_servers.discard(self)
        self._native.stop(grace)

    def __enter__(self) -> "RPCServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- introspection ------------------------------------------------------------------

    @property
    def region(self) -> str:
        """The server's region."""
        return self._native.region

    @property
    def address(self) -> Optional[Tuple[str, int]]:
        """``(host, port)`` while serving, else ``None``."""
        return self._native.address

    @property
    def port(self) -> Optional[int]:
        """The bound port while serving, else ``None``."""
        addr = self._native.address
        return addr[1] if addr else None

    @property
    def methods(self) -> list[str]:
        """Names of the registered methods."""
        return self._native.methods

    @property
    def calls_total(self) -> int:
        """Calls answered by the current server instance."""
        return self._native.calls_total

    def metrics_text(self) -> str:
        """The running server's metrics in the Prometheus text format ("" when stopped):
        calls by method and status, latency histograms, calls in flight, connections."""
        return self._native.metrics_text()

    def __repr__(self) -> str:
        return f"RPCServer({self.region!r}, address={self.address}, methods={self.methods})"
