"""RPCClient and AsyncRPCClient: call methods wherever they are served.

Both route every call with Meridian's region client: to the nearest healthy region whose
servers serve the method (or ``region``, the home region, whenever it is healthy),
balanced inside the region, failing over when a region goes dark.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    get_origin,
    overload,
)

from . import _args
from ._native import NativeClient, NativeRequestSink, NativeStream
from .tls import ClientTLS

__all__ = ["RPCClient", "AsyncRPCClient", "Reply", "CallTiming", "BidiCall", "AsyncBidiCall", "DEFAULT", "DefaultType", "Timeout"]

Metadata = Mapping[str, Union[str, bytes]]
Key = Union[str, bytes]
#: etcd client URLs: one (``"http://127.0.0.1:2379"``) or several.
Endpoints = Union[str, Sequence[str]]



class DefaultType(enum.Enum):
    """The type of :data:`DEFAULT` (an enum of one member, so type checkers can tell it
    apart from a number of seconds)."""

    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "meridian.DEFAULT"


DEFAULT = DefaultType.DEFAULT
"""``timeout=DEFAULT`` (the default of every call): use the client's ``timeout``."""

#: A call's timeout: seconds, ``None`` for no deadline, or :data:`DEFAULT` for the
#: client's own.
Timeout = Union[float, None, DefaultType]


T = TypeVar("T")


def _checked(method: str, value: Any, result_type: Optional[Type[Any]]) -> Any:
    """``value``, after checking it is a ``result_type`` (its outer type: ``List[int]``
    checks for a list). An ``int`` passes for ``float``, as in Python's typing."""
    if result_type is None:
        return value
    outer = get_origin(result_type) or result_type
    if not isinstance(outer, type):
        raise TypeError(f"result_type must be a class, got {result_type!r}")
    if isinstance(value, outer) or (outer is float and type(value) is int):
        return value
    raise TypeError(
        f"method {method!r} returned {type(value).__name__} {value!r:.80}, "
        f"expected {outer.__name__} (result_type)"
    )


def etcd_endpoints(etcd: Optional[Endpoints]) -> Optional[List[str]]:
    """etcd client URLs as a list (``None`` stays ``None``)."""
    if etcd is None:
        return None
    if isinstance(etcd, str):
        return [etcd]
    return [str(e) for e in etcd]


def _region_list(
    regions: Mapping[str, Any], default_name: str = "localhost"
) -> List[Tuple[str, List[Tuple[str, str]]]]:
    out = []
    for name, servers in regions.items():
        if isinstance(servers, str):
            servers = [servers]
        eps = []
        for s in servers:
            if isinstance(s, str):
                eps.append((s, default_name))
            else:
                addr, server_name = s
                eps.append((str(addr), str(server_name)))
        out.append((str(name), eps))
    return out


class _Base:
    def __init__(
        self,
        region: Optional[str] = None,
        *,
        regions: Optional[Mapping[str, Any]] = None,
        config: Optional[str] = None,
        roots: Optional[str] = None,
        timeout: Optional[float] = None,
        etcd: Optional[Endpoints] = None,
        etcd_prefix: Optional[str] = None,
        wait_for_ready: bool = False,
        tls: Optional[ClientTLS] = None,
    ) -> None:
        if tls is not None and not isinstance(tls, ClientTLS):
            raise TypeError(f"tls must be a meridian.ClientTLS, got {type(tls).__name__}")
        if tls is not None and roots is not None:
            raise ValueError("give either tls= or roots=, not both (tls.ca_file is the roots)")
        server_name = "localhost"
        if tls is not None:
            roots = tls.ca_file
            if tls.server_name is not None:
                server_name = tls.server_name
        self._native = NativeClient(
            home=region,
            config=None if config is None else str(config),
            regions=None if regions is None else _region_list(regions, server_name),
            roots=None if roots is None else str(roots),
            etcd=etcd_endpoints(etcd),
            etcd_prefix=etcd_prefix,
            wait_for_ready=bool(wait_for_ready),
            client_cert_file=None if tls is None else tls.cert_file,
            client_key_file=None if tls is None else tls.key_file,
        )
        self.region = region
        self.timeout = timeout

    def _timeout(self, timeout: Timeout) -> Optional[float]:
        return self.timeout if timeout is DEFAULT else timeout

    def close(self) -> None:
        """Closes the connections (later calls open new ones)."""
        self._native.close()

    def metrics_text(self) -> str:
        """The client's metrics in the Prometheus text format: RTT, health and attempts per
        region and server, retries, hedges, region switches."""
        return self._native.metrics_text()

    def reload_tls(self) -> None:
        """Reads the files of ``tls=`` (or ``roots=``) again: the CA file to trust and the
        client certificate and key. Handshakes from now on use them; open connections
        stay up and keep calling. Files that cannot be used raise ``ValueError`` and what
        was in use stays."""
        self._native.reload_tls()


class RPCClient(_Base):
    """A blocking client: ``client.add(10, 5)`` calls method ``add`` wherever it is served.

    ``RPCClient()`` or ``RPCClient('Region1')`` (the preferred region) follows the servers
    of this process, with nothing to configure. ``config=`` (a TOML region file) or
    ``regions={"eu": ["10.0.0.1:7000", ("10.0.0.2:7000", "eu.example.com")]}`` name the
    servers instead, and ``roots=`` the PEM file of certificates to trust (by default, only
    this process's servers are trusted). ``tls=ClientTLS(ca_file, cert_file=None,
    key_file=None, server_name=None)`` (see :class:`meridian.ClientTLS`) sets the CAs to
    trust, a client certificate for servers that require one (mutual TLS) and the name
    expected from servers listed as plain ``"host:port"``; it replaces ``roots=``. ``timeout`` is the default for every call, in
    seconds (``None``: no deadline). ``etcd="http://127.0.0.1:2379"`` (or a list of URLs)
    follows the servers registered in etcd (see ``RPCServer(..., etcd=...)``) as they come
    and go; a region file with an ``[etcd]`` table does the same.

    When no server that could take a call is reachable, the call fails at once with
    ``UNAVAILABLE`` (gRPC's default); with ``wait_for_ready=True`` every call of this client
    waits for one instead, within its timeout (a server restarting, say).

    Attribute calls pass every keyword argument to the remote function. Use :meth:`call`
    and :meth:`stream` for per-call options. Calls release the GIL while they wait, honour
    their timeout, and let Ctrl-C interrupt them; many threads may call at once.
    """

    def __getattr__(self, name: str) -> "_Method":
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)

    @overload
    def call(
        self,
        method: str,
        *args: Any,
        result_type: Type[T],
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    def call(
        self,
        method: str,
        *args: Any,
        result_type: None = None,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
        **kwargs: Any,
    ) -> Any: ...

    def call(
        self,
        method: str,
        *args: Any,
        result_type: Optional[Type[Any]] = None,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
        **kwargs: Any,
    ) -> Any:
        """Calls ``method(*args, **kwargs)`` and returns its result.

        ``timeout`` in seconds (default: the client's), ``metadata`` sent with the call,
        ``key`` routes to the key's owner server inside the region. With ``result_type``
        (a class, such as ``int``) the result is checked to be one, raising ``TypeError``
        otherwise, and type checkers see that type: ``client.call("add", 1, 2,
        result_type=int)`` is an ``int``. Raises ``TypeError`` (or ``OverflowError`` for
        ints beyond 64 bits) before sending anything if an argument cannot be sent, and
        :class:`meridian.RpcError` if the call fails.
        """
        value = self._native.call(
            method,
            _args.pack(args, kwargs),
            timeout=self._timeout(timeout),
            metadata=None if metadata is None else dict(metadata),
            key=key,
        )
        return _checked(method, value, result_type)

    @overload
    def call_value(
        self,
        method: str,
        value: Any = None,
        *,
        result_type: Type[T],
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
    ) -> T: ...

    @overload
    def call_value(
        self,
        method: str,
        value: Any = None,
        *,
        result_type: None = None,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
    ) -> Any: ...

    def call_value(
        self,
        method: str,
        value: Any = None,
        *,
        result_type: Optional[Type[Any]] = None,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
    ) -> Any:
        """Calls ``method`` with ``value`` sent as it is, as the call's one request value,
        not wrapped in an argument list as :meth:`call` does.

        This is how to call a handler taking a bare scalar or unit, such as a Rust handler
        ``|n: u64, ctx|`` (``client.call_value("sleep", 10)``) or ``|(): (), ctx|``
        (``client.call_value("where")``: ``None``, the default, is unit). A Python handler
        receives a list value as positional arguments, a dict with string keys as keyword
        arguments, ``None`` as no argument, and anything else as its one argument (see
        ``meridian._args``). Options as for :meth:`call`.
        """
        out = self._native.call(
            method,
            value,
            timeout=self._timeout(timeout),
            metadata=None if metadata is None else dict(metadata),
            key=key,
        )
        return _checked(method, out, result_type)

    def call_detailed(
        self,
        method: str,
        *args: Any,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
        **kwargs: Any,
    ) -> "Reply":
        """:meth:`call`, returning a :class:`Reply`: the result, the trailing metadata the
        server sent, and where the call's time went (:class:`CallTiming`)."""
        value, trailers, timing = self._native.call_detailed(
            method,
            _args.pack(args, kwargs),
            timeout=self._timeout(timeout),
            metadata=None if metadata is None else dict(metadata),
            key=key,
        )
        total = timing.pop("total")
        assert total is not None
        return Reply(value, trailers, CallTiming(total=total, **timing))

    def stream(
        self,
        method: str,
        *args: Any,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
        **kwargs: Any,
    ) -> "ResponseIterator":
        """Calls a server-streaming method; iterate over the result for its responses.
        The timeout covers the whole stream."""
        native = self._native.stream(
            method,
            _args.pack(args, kwargs),
            timeout=self._timeout(timeout),
            metadata=None if metadata is None else dict(metadata),
            key=key,
        )
        return ResponseIterator(native)

    def client_stream(
        self,
        method: str,
        requests: Iterable[Any],
        *,
        result_type: Optional[Type[Any]] = None,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
    ) -> Any:
        """Calls a client-streaming method (``@server.rpc(client_streaming=True)``): sends
        every value of ``requests`` (any iterable, consumed as it is sent), then returns
        the method's one response (checked against ``result_type`` if given). The
        timeout covers the whole call. An exception raised by the iterable cancels the
        call and propagates."""
        sink, response = self._native.open_client_stream(
            method,
            timeout=self._timeout(timeout),
            metadata=None if metadata is None else dict(metadata),
            key=key,
        )
        try:
            for item in requests:
                if not sink.send(item):
                    break  # the server has answered: its response says how the call went
        except BaseException:
            sink.cancel()
            raise
        return _checked(method, response.wait(), result_type)

    def bidi(
        self,
        method: str,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
    ) -> "BidiCall":
        """Opens a bidirectional call (a generator registered with
        ``client_streaming=True``): :meth:`BidiCall.send` requests, iterate for the
        responses, :meth:`BidiCall.done_sending` when there are no more requests::

            with client.bidi("running_total") as call:
                for n in (1, 2, 3):
                    call.send(n)
                    print(next(call))   # 1, 3, 6
                call.done_sending()
        """
        sink, responses = self._native.open_bidi(
            method,
            timeout=self._timeout(timeout),
            metadata=None if metadata is None else dict(metadata),
            key=key,
        )
        return BidiCall(sink, responses)

    async def acall(
        self,
        method: str,
        *args: Any,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
        **kwargs: Any,
    ) -> Any:
        """:meth:`call` for asyncio: awaits the result without blocking the event loop."""
        return await _acall(
            self._native, method, _args.pack(args, kwargs), self._timeout(timeout), metadata, key
        )

    def __enter__(self) -> "RPCClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class CallTiming:
    """Where one call's time went, in seconds.

    ``total`` is the client's own measure, from sending the call to its last byte back.
    The server (and a proxy, if the call went through one) report their own times in the
    call's trailers, each measured on one machine's clock, so the parts add up to
    ``total`` exactly: ``network + server`` for a direct call, and
    ``client_proxy_network + proxy + proxy_server_network + server`` through a proxy.
    A part that does not apply is ``None``.
    """

    total: float
    server: Optional[float]
    network: Optional[float]
    proxy: Optional[float]
    client_proxy_network: Optional[float]
    proxy_server_network: Optional[float]


@dataclass(frozen=True)
class Reply:
    """What :meth:`RPCClient.call_detailed` returns."""

    value: Any
    """The result, as :meth:`RPCClient.call` would return it."""
    metadata: Dict[str, bytes]
    """The trailing metadata the server sent."""
    timing: CallTiming
    """Where the call's time went."""


class _Method:
    """``client.name``: calling it calls the remote method."""

    def __init__(self, client: RPCClient, name: str) -> None:
        self._client = client
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client._native.call(
            self._name, _args.pack(args, kwargs), timeout=self._client.timeout
        )

    def stream(self, *args: Any, **kwargs: Any) -> "ResponseIterator":
        """Calls the method as a server-streaming method."""
        return ResponseIterator(
            self._client._native.stream(self._name, _args.pack(args, kwargs), timeout=self._client.timeout)
        )

    def __repr__(self) -> str:
        return f"<remote method {self._name!r}>"


class ResponseIterator:
    """The responses of a server-streaming call. Closing it (or leaving a ``with`` block,
    or dropping it) cancels the call on the server."""

    def __init__(self, native: NativeStream) -> None:
        self._native = native

    def __iter__(self) -> "ResponseIterator":
        return self

    def __next__(self) -> Any:
        return self._native.__next__()

    def cancel(self) -> None:
        """Cancels the call."""
        self._native.cancel()

    close = cancel

    def __enter__(self) -> "ResponseIterator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()


class BidiCall:
    """A bidirectional call (:meth:`RPCClient.bidi`): send requests, iterate responses.

    Sending and receiving are independent: a response may be read before or after the
    request it answers, from the same thread or another. Closing (``close()``,
    ``cancel()``, leaving a ``with`` block) cancels the call on the server if it is still
    running.
    """

    def __init__(self, sink: NativeRequestSink, responses: NativeStream) -> None:
        self._sink = sink
        self._responses = responses

    def send(self, value: Any) -> None:
        """Sends one request; waits while the server is slow to read. Raises ``TypeError``
        for a value that cannot be sent, ``ValueError`` after :meth:`done_sending`. Once
        the server has ended the call, requests are discarded: iterate for its status."""
        self._sink.send(value)

    def done_sending(self) -> None:
        """Ends the requests: the server's request iterator ends (responses go on)."""
        self._sink.close()

    def __iter__(self) -> "BidiCall":
        return self

    def __next__(self) -> Any:
        return self._responses.__next__()

    def cancel(self) -> None:
        """Cancels the call."""
        self._sink.cancel()
        self._responses.cancel()

    close = cancel

    def __enter__(self) -> "BidiCall":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()


class AsyncBidiCall:
    """A bidirectional call for asyncio (:meth:`AsyncRPCClient.bidi`): ``await
    call.send(value)``, ``async for response in call``, ``await call.done_sending()``."""

    def __init__(self, sink: NativeRequestSink, responses: NativeStream) -> None:
        self._sink = sink
        self._responses = responses

    async def send(self, value: Any) -> None:
        """Sends one request without blocking the event loop (see :meth:`BidiCall.send`)."""
        await asyncio.get_running_loop().run_in_executor(None, self._sink.send, value)

    async def done_sending(self) -> None:
        """Ends the requests."""
        self._sink.close()

    def __aiter__(self) -> "AsyncBidiCall":
        return self

    async def __anext__(self) -> Any:
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[Any]" = loop.create_future()
        handle = self._responses.next_async(_bridge(loop, fut))
        try:
            item = await fut
        except asyncio.CancelledError:
            handle.cancel()
            raise
        if isinstance(item, StopIteration):
            raise StopAsyncIteration
        return item

    def cancel(self) -> None:
        """Cancels the call."""
        self._sink.cancel()
        self._responses.cancel()

    async def __aenter__(self) -> "AsyncBidiCall":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.cancel()


def _settle(fut: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _bridge(loop: asyncio.AbstractEventLoop, fut: "asyncio.Future[Any]") -> Any:
    def done(ok: bool, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(_settle, fut, ok, value)
        except RuntimeError:
            pass  # the loop is closed: nobody waits for the result any more

    return done


async def _acall(
    native: NativeClient,
    method: str,
    payload: Any,
    timeout: Optional[float],
    metadata: Optional[Metadata],
    key: Optional[Key],
) -> Any:
    loop = asyncio.get_running_loop()
    fut: "asyncio.Future[Any]" = loop.create_future()
    handle = native.call_async(
        method,
        payload,
        _bridge(loop, fut),
        timeout=timeout,
        metadata=None if metadata is None else dict(metadata),
        key=key,
    )
    try:
        return await fut
    except asyncio.CancelledError:
        handle.cancel()
        raise


async def _astream(
    native_client: NativeClient,
    method: str,
    args: Tuple[Any, ...],
    kwargs: Dict[str, Any],
    timeout: Optional[float],
    metadata: Optional[Metadata],
    key: Optional[Key],
) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    payload = _args.pack(args, kwargs)
    md = None if metadata is None else dict(metadata)
    # Opening waits briefly for a first server: keep that off the event loop.
    native = await loop.run_in_executor(
        None,
        lambda: native_client.stream(method, payload, timeout=timeout, metadata=md, key=key),
    )
    try:
        while True:
            fut: "asyncio.Future[Any]" = loop.create_future()
            handle = native.next_async(_bridge(loop, fut))
            try:
                item = await fut
            except asyncio.CancelledError:
                handle.cancel()
                raise
            if isinstance(item, StopIteration):
                return
            yield item
    finally:
        native.cancel()


class AsyncRPCClient(_Base):
    """An asyncio client: ``await client.add(10, 5)``. Same options as :class:`RPCClient`.

    Calls never block the event loop: each runs on the library's runtime and completes an
    asyncio future; cancelling the awaiting task cancels the call on the server.
    """

    def __getattr__(self, name: str) -> "_AsyncMethod":
        if name.startswith("_"):
            raise AttributeError(name)
        return _AsyncMethod(self, name)

    @overload
    async def call(
        self,
        method: str,
        *args: Any,
        result_type: Type[T],
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def call(
        self,
        method: str,
        *args: Any,
        result_type: None = None,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
        **kwargs: Any,
    ) -> Any: ...

    async def call(
        self,
        method: str,
        *args: Any,
        result_type: Optional[Type[Any]] = None,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
        **kwargs: Any,
    ) -> Any:
        """Calls ``method(*args, **kwargs)`` and returns its result, checked against
        ``result_type`` if given (see :meth:`RPCClient.call`)."""
        value = await _acall(
            self._native, method, _args.pack(args, kwargs), self._timeout(timeout), metadata, key
        )
        return _checked(method, value, result_type)

    acall = call

    @overload
    async def call_value(
        self,
        method: str,
        value: Any = None,
        *,
        result_type: Type[T],
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
    ) -> T: ...

    @overload
    async def call_value(
        self,
        method: str,
        value: Any = None,
        *,
        result_type: None = None,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
    ) -> Any: ...

    async def call_value(
        self,
        method: str,
        value: Any = None,
        *,
        result_type: Optional[Type[Any]] = None,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
    ) -> Any:
        """Calls ``method`` with ``value`` sent as it is, not wrapped in an argument list
        (see :meth:`RPCClient.call_value`): ``await client.call_value("sleep", 10)``."""
        out = await _acall(self._native, method, value, self._timeout(timeout), metadata, key)
        return _checked(method, out, result_type)

    async def client_stream(
        self,
        method: str,
        requests: Union[Iterable[Any], AsyncIterable[Any]],
        *,
        result_type: Optional[Type[Any]] = None,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
    ) -> Any:
        """Calls a client-streaming method with the values of ``requests`` (an iterable or
        an async iterable) and returns its response (see
        :meth:`RPCClient.client_stream`). Never blocks the event loop; cancelling the
        awaiting task cancels the call."""
        loop = asyncio.get_running_loop()
        md = None if metadata is None else dict(metadata)
        t = self._timeout(timeout)
        sink, response = await loop.run_in_executor(
            None, lambda: self._native.open_client_stream(method, timeout=t, metadata=md, key=key)
        )
        try:
            if isinstance(requests, AsyncIterable):
                async for item in requests:
                    if not await loop.run_in_executor(None, sink.send, item):
                        break  # the server has answered (see RPCClient.client_stream)
            else:
                for item in requests:
                    if not await loop.run_in_executor(None, sink.send, item):
                        break
            value = await loop.run_in_executor(None, response.wait)
        except BaseException:
            sink.cancel()
            raise
        return _checked(method, value, result_type)

    async def bidi(
        self,
        method: str,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
    ) -> AsyncBidiCall:
        """Opens a bidirectional call (see :meth:`RPCClient.bidi`)::

            call = await client.bidi("running_total")
            await call.send(1)
            print(await call.__anext__())
        """
        loop = asyncio.get_running_loop()
        md = None if metadata is None else dict(metadata)
        t = self._timeout(timeout)
        sink, responses = await loop.run_in_executor(
            None, lambda: self._native.open_bidi(method, timeout=t, metadata=md, key=key)
        )
        return AsyncBidiCall(sink, responses)

    async def stream(
        self,
        method: str,
        *args: Any,
        timeout: Timeout = DEFAULT,
        metadata: Optional[Metadata] = None,
        key: Optional[Key] = None,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        """Calls a server-streaming method: ``async for item in client.stream(...)``."""
        async for item in _astream(
            self._native, method, args, kwargs, self._timeout(timeout), metadata, key
        ):
            yield item

    async def __aenter__(self) -> "AsyncRPCClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class _AsyncMethod:
    """``client.name`` of an :class:`AsyncRPCClient`: calling it returns a coroutine."""

    def __init__(self, client: AsyncRPCClient, name: str) -> None:
        self._client = client
        self._name = name

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await _acall(
            self._client._native, self._name, _args.pack(args, kwargs), self._client.timeout, None, None
        )

    def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Calls the method as a server-streaming method (every keyword argument goes to
        the remote function)."""
        return _astream(self._client._native, self._name, args, kwargs, self._client.timeout, None, None)

    def __repr__(self) -> str:
        return f"<remote method {self._name!r}>"

