"""Status codes and the exceptions a failed call raises.

A call that fails, whether the server's handler raised or the transport gave up, raises
:class:`RpcError` (or the subclass for its code, e.g. :class:`DeadlineExceeded`), with
``.code`` (a :class:`StatusCode`), ``.message`` and ``.metadata``. Handlers may raise
them too, to end a call with a chosen code: ``raise NotFound("no such user")``.

Metadata values are ``str``, except under keys ending in ``-bin`` (as in gRPC), whose
values are ``bytes``.

The exceptions pickle and copy with their class, code, message and metadata (and any
attribute set on them), so they cross ``multiprocessing`` and
``concurrent.futures.ProcessPoolExecutor`` intact. That is Python's own machinery between
local processes; Meridian itself never pickles anything: values and error metadata cross
the wire in Meridian's own encoding.
"""

from __future__ import annotations

import enum
from typing import Any, Dict, Mapping, Optional, Tuple, Type, Union

__all__ = [
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

MetadataValue = Union[str, bytes]


class StatusCode(enum.IntEnum):
    """gRPC's status codes, with the same numbers and meanings."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """A call ended with a status other than OK.

    ``RpcError(code, message, metadata)`` can be raised by a handler to end its call with
    that status; the caller receives the same code, message and metadata.
    """

    code: StatusCode
    message: str
    metadata: Dict[str, MetadataValue]

    def __init__(
        self,
        code: Union[StatusCode, int],
        message: str = "",
        metadata: Optional[Mapping[str, MetadataValue]] = None,
    ) -> None:
        super().__init__(code, message)
        try:
            self.code = StatusCode(int(code))
        except ValueError:
            self.code = StatusCode.UNKNOWN
        self.message = message
        self.metadata = dict(metadata or {})

    @property
    def remote_traceback(self) -> Optional[str]:
        """The handler's traceback, sent only by servers that opted in."""
        tb = self.metadata.get("traceback")
        if isinstance(tb, bytes):
            return tb.decode("utf-8", "replace")
        return tb

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __reduce__(self) -> Tuple[Any, ...]:
        # Exception's own reduce calls ``type(self)(*self.args)``, which does not fit the
        # subclasses' ``(message, metadata)`` signature; rebuild without calling theirs.
        return (
            _restore,
            (type(self), int(self.code), self.message, dict(self.metadata)),
            dict(self.__dict__),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


class _CodedError(RpcError):
    """An RpcError whose class fixes the code."""

    _code = StatusCode.UNKNOWN

    def __init__(
        self, message: str = "", metadata: Optional[Mapping[str, MetadataValue]] = None
    ) -> None:
        super().__init__(self._code, message, metadata)


class Cancelled(_CodedError):
    """CANCELLED: the call was cancelled, usually by the caller."""

    _code = StatusCode.CANCELLED


class Unknown(_CodedError):
    """UNKNOWN: an error that fits no other code (an exception in a handler)."""

    _code = StatusCode.UNKNOWN


class InvalidArgument(_CodedError):
    """INVALID_ARGUMENT: the server cannot accept the arguments."""

    _code = StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(_CodedError):
    """DEADLINE_EXCEEDED: the timeout passed before the call completed."""

    _code = StatusCode.DEADLINE_EXCEEDED


class NotFound(_CodedError):
    """NOT_FOUND: a requested entity was not found."""

    _code = StatusCode.NOT_FOUND


class AlreadyExists(_CodedError):
    """ALREADY_EXISTS: the entity to create exists already."""

    _code = StatusCode.ALREADY_EXISTS


class PermissionDenied(_CodedError):
    """PERMISSION_DENIED: the caller may not run this call."""

    _code = StatusCode.PERMISSION_DENIED


class ResourceExhausted(_CodedError):
    """RESOURCE_EXHAUSTED: a size limit, quota or capacity was hit."""

    _code = StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(_CodedError):
    """FAILED_PRECONDITION: the system is not in the state the call needs."""

    _code = StatusCode.FAILED_PRECONDITION


class Aborted(_CodedError):
    """ABORTED: the call was aborted, usually by a concurrency conflict."""

    _code = StatusCode.ABORTED


class OutOfRange(_CodedError):
    """OUT_OF_RANGE: a value was outside the valid range."""

    _code = StatusCode.OUT_OF_RANGE


class Unimplemented(_CodedError):
    """UNIMPLEMENTED: the server does not know the method."""

    _code = StatusCode.UNIMPLEMENTED


class Internal(_CodedError):
    """INTERNAL: an invariant broke inside the server."""

    _code = StatusCode.INTERNAL


class Unavailable(_CodedError):
    """UNAVAILABLE: no server could take the call; retrying may help."""

    _code = StatusCode.UNAVAILABLE


class DataLoss(_CodedError):
    """DATA_LOSS: unrecoverable data loss or corruption."""

    _code = StatusCode.DATA_LOSS


class Unauthenticated(_CodedError):
    """UNAUTHENTICATED: the caller has no valid credentials."""

    _code = StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[int, Type[_CodedError]] = {
    cls._code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def _restore(
    cls: Type[RpcError], code: int, message: str, metadata: Dict[str, MetadataValue]
) -> RpcError:
    """Rebuilds a pickled or copied :class:`RpcError` of class ``cls``."""
    exc = cls.__new__(cls)
    RpcError.__init__(exc, code, message, metadata)
    return exc


def _from_status(code: int, message: str, metadata: Mapping[str, bytes]) -> RpcError:
    """The exception for a status received from the transport (called by ``_native``)."""
    md: Dict[str, MetadataValue] = {
        k: (v if k.endswith("-bin") else v.decode("utf-8", "replace")) for k, v in metadata.items()
    }
    cls = _BY_CODE.get(code)
    if cls is None:
        return RpcError(code, message, md)
    return cls(message, md)
