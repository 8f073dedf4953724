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
import concurrent.futures
import contextvars
import inspect
import os
import threading
import traceback
import weakref
from typing import Any, Callable, Iterator, Optional, Tuple, TypeVar, Union, overload

from . import _args
from ._native import CallContext, NativeServer
from .client import Endpoints, etcd_endpoints
from .context import _current
from .errors import Cancelled, InvalidArgument, RpcError, StatusCode
from .tls import ServerTLS

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
    # Loops inherited through fork(): their thread is the parent's; kept (never closed or
    # collected) so nothing in the child touches them.
    _inherited: "list[asyncio.AbstractEventLoop]" = []

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
    def run(cls, awaitable: Any, context: CallContext, cancellable: bool = True) -> Any:
        """Runs ``awaitable`` as a task on the loop, with ``current_context()`` set, and
        waits for its result. When the call is cancelled (by the client or its deadline)
        the task is cancelled: the handler gets ``asyncio.CancelledError`` at its current
        ``await`` and its ``finally`` blocks run."""
        fut = asyncio.run_coroutine_threadsafe(_in_context(context, awaitable), cls.loop())
        watch = context._on_cancel(fut.cancel) if cancellable else None
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise Cancelled("the call was cancelled") from None
        finally:
            if watch is not None:
                watch.cancel()

    @classmethod
    def iterate(cls, agen: Any, context: CallContext) -> Iterator[Any]:
        # Each step runs as its own task on the loop: give each the call's context.
        try:
            while True:
                try:
                    yield cls.run(agen.__anext__(), context)
                except StopAsyncIteration:
                    return
        finally:
            # Closing runs even after a cancellation (it is how the generator's own
            # finally blocks run).
            cls.run(agen.aclose(), context, cancellable=False)


class _AsyncRequests:
    """The request values of a client-streaming call for an ``async def`` handler: an
    async iterator whose every step waits for the next request on a worker thread, so
    the handler event loop never blocks."""

    def __init__(self, requests: Iterator[Any]) -> None:
        self._requests = requests

    def __aiter__(self) -> "_AsyncRequests":
        return self

    async def __anext__(self) -> Any:
        loop = asyncio.get_running_loop()
        item = await loop.run_in_executor(None, next, self._requests, _END)
        if item is _END:
            raise StopAsyncIteration
        return item


_END = object()


def _after_fork_in_child() -> None:
    """Runs in a child made by ``os.fork()`` (``multiprocessing``'s "fork" start method).

    Only the forking thread exists in the child: the handler event loop's thread and the
    threads that might have held these locks are gone. The child starts a new loop when
    it needs one; servers inherited from the parent are the parent's (the native side
    leaves them alone), so here they read as not started: registering a method on one, or
    :meth:`RPCServer.start`, serves it anew from the child on its own port.
    """
    _LoopThread._lock = threading.Lock()
    if _LoopThread._loop is not None:
        _LoopThread._inherited.append(_LoopThread._loop)
        _LoopThread._loop = None
    for server in list(_live_servers):
        server._lock = threading.Lock()
        server._started = False
    _live_servers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


async def _in_context(context: CallContext, awaitable: Any) -> Any:
    """Awaits ``awaitable`` with ``current_context()`` set to ``context`` (a task runs in
    its own copy of the context variables, so nothing leaks to other calls)."""
    _current.set(context)
    return await awaitable


def _wants_context(func: Callable[..., Any]) -> bool:
    """Whether ``func`` declares a parameter named ``context`` that can be given by
    keyword (the server then passes the call's :class:`CallContext` there)."""
    try:
        parameter = inspect.signature(func).parameters.get("context")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _reset(token: "contextvars.Token[CallContext]") -> None:
    try:
        _current.reset(token)
    except ValueError:
        # Closed from another context (a generator finalised elsewhere): nothing to undo
        # in this one.
        pass


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
    ``RPCClient()`` of the same process finds it with no configuration.
    ``tls=ServerTLS(cert_file, key_file, client_ca_file=None)`` (see
    :class:`meridian.ServerTLS`) serves with the certificate of those PEM files and, with
    ``client_ca_file``, requires every client to present a certificate from one of its
    CAs (mutual TLS); :meth:`reload_tls` rotates the certificate. ``certs=(cert_file,
    key_file)`` is the older spelling of ``tls=ServerTLS(cert_file, key_file)``.
    ``server_name`` is the name clients of this process expect in the certificate.

    A handler that declares a parameter named ``context`` receives the call's
    :class:`meridian.CallContext` there (peer address and certificate identity,
    metadata, time remaining, cancellation); any handler can also call
    :func:`meridian.current_context`.

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
        tls: Optional[ServerTLS] = None,
    ) -> None:
        if tls is not None and certs is not None:
            raise ValueError("give either tls= or certs=, not both")
        if tls is not None and not isinstance(tls, ServerTLS):
            raise TypeError(f"tls must be a meridian.ServerTLS, got {type(tls).__name__}")
        client_ca_file: Optional[str] = None
        if tls is not None:
            cert_file, key_file = tls.cert_file, tls.key_file
            client_ca_file = tls.client_ca_file
        elif certs is not None:
            cert_file, key_file = certs
        else:
            cert_file, key_file = None, None
        self._tls = tls
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
            client_ca_file=client_ca_file,
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
        client_streaming: bool = False,
    ) -> Callable[[F], F]: ...

    def rpc(
        self,
        func: Optional[F] = None,
        *,
        name: Optional[str] = None,
        idempotent: bool = False,
        streaming: Optional[bool] = None,
        client_streaming: bool = False,
    ) -> Union[F, Callable[[F], F]]:
        """Registers a function as a method: ``@server.rpc`` or ``@server.rpc(name=...,
        idempotent=True)``.

        The method's name is the function's unless ``name`` is given. ``idempotent=True``
        declares it safe to run more than once (retried on failover, may travel in 0-RTT
        data). Generator functions (sync or async) become server-streaming methods
        (``streaming=True`` forces it for a function returning an iterator). ``async def``
        functions run on the handler event loop. Returns the function unchanged.

        ``client_streaming=True`` makes a method the client sends a stream of requests to
        (:meth:`RPCClient.client_stream`, :meth:`RPCClient.bidi`): the function's one
        argument is an iterator of the request values (an async iterator for ``async
        def`` functions and async generators), which ends when the client finishes
        sending. It returns the one response, or, as a generator, yields responses while
        it reads requests (a bidirectional method)::

            @server.rpc(client_streaming=True)
            def total(numbers):
                return sum(numbers)

            @server.rpc(client_streaming=True)
            def running_total(numbers):
                subtotal = 0
                for n in numbers:
                    subtotal += n
                    yield subtotal
        """

        def register(f: F) -> F:
            self.register(
                f,
                name=name,
                idempotent=idempotent,
                streaming=streaming,
                client_streaming=client_streaming,
            )
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
        client_streaming: bool = False,
    ) -> None:
        """Registers ``func`` (see :meth:`rpc`) and starts the server if it is not yet."""
        method = name or getattr(func, "__name__", None)
        if not method:
            raise ValueError("a method needs a name: pass name=...")
        is_async_gen = inspect.isasyncgenfunction(func)
        if streaming is None:
            streaming = inspect.isgeneratorfunction(func) or is_async_gen
        handler = self._adapt(func, streaming, is_async_gen, client_streaming)
        with self._lock:
            self._native.add(
                method,
                handler,
                streaming=streaming,
                idempotent=idempotent,
                client_streaming=client_streaming,
            )
            if not self._started:
                self._native.start()
                self._started = True
                _live_servers.add(self)

    def _adapt(
        self,
        func: Callable[..., Any],
        streaming: bool,
        is_async_gen: bool,
        client_streaming: bool = False,
    ) -> Callable[[Any, CallContext], Any]:
        """The callable the native server runs: unpacks the arguments, makes the call's
        context current (and passes it as ``context=`` if ``func`` declares that
        parameter), runs ``func`` (on the event loop if it is async) and turns exceptions
        into RpcErrors."""
        is_coro = inspect.iscoroutinefunction(func)
        tracebacks = self._send_tracebacks
        wants_context = _wants_context(func)

        def arguments(payload: Any, context: CallContext) -> Tuple[Any, Any]:
            if client_streaming:
                # The payload is the native RequestIterator.
                requests = _AsyncRequests(payload) if is_coro or is_async_gen else payload
                args: Any = [requests]
                kwargs: Any = {}
            else:
                args, kwargs = _args.unpack(payload)
            if wants_context:
                if "context" in kwargs:
                    raise InvalidArgument("'context' is given by the server and cannot be sent")
                kwargs["context"] = context
            return args, kwargs

        def failure(e: Exception, args: Any, kwargs: Any) -> RpcError:
            if isinstance(e, RpcError):
                return e
            metadata = {"traceback": traceback.format_exc()} if tracebacks else None
            if isinstance(e, TypeError) and _bad_arguments(func, args, kwargs):
                return InvalidArgument(str(e), metadata)
            return RpcError(StatusCode.UNKNOWN, f"{type(e).__name__}: {e}", metadata)

        if streaming:

            def stream(payload: Any, context: CallContext) -> Iterator[Any]:
                args, kwargs = arguments(payload, context)
                # The native server drives this generator on one thread to its end.
                token = _current.set(context)
                try:
                    if is_async_gen:
                        yield from _LoopThread.iterate(func(*args, **kwargs), context)
                    else:
                        yield from func(*args, **kwargs)
                except Exception as e:
                    raise failure(e, args, kwargs) from None
                finally:
                    _reset(token)

            return stream

        def unary(payload: Any, context: CallContext) -> Any:
            args, kwargs = arguments(payload, context)
            token = _current.set(context)
            try:
                if is_coro:
                    return _LoopThread.run(func(*args, **kwargs), context)
                return func(*args, **kwargs)
            except Exception as e:
                raise failure(e, args, kwargs) from None
            finally:
                _reset(token)

        return unary

    # -- lifecycle ----------------------------------------------------------------------

    def reload_tls(self) -> None:
        """Reads the certificate and key files of ``tls=`` (or ``certs=``) again and
        presents the new certificate from the next TLS handshake on.

        Connections already open keep the certificate they were made with and stay up,
        so connected clients go on calling; clients connecting afterwards see the new
        one. Files that cannot be read, hold no usable certificate or key, or whose key
        does not match the certificate raise ``ValueError``, and the certificate in use
        stays. With mutual TLS, ``client_ca_file`` is read again too: clients connecting
        afterwards need a certificate from the CAs it now holds (sessions stored before
        are not resumed). A server using a development certificate (no files) raises
        ``RuntimeError``.

        Typical use: a certificate renewal job replaces the files (write new files, then
        rename them over the old ones, so the server never reads half a file) and then
        asks the server to reload.
        """
        self._native.reload_tls()

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
    def tls(self) -> Optional[ServerTLS]:
        """The ``tls=`` settings the server was created with (``None`` without)."""
        return self._tls

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
