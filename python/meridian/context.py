"""The call a handler is answering: :class:`CallContext` and :func:`current_context`.

A handler gets its call's context in either of two ways, for plain, ``async def`` and
streaming (generator) handlers alike:

- it declares a parameter named ``context``; the server passes the
  :class:`CallContext` as the keyword argument ``context=`` (the parameter is found
  once, when the handler is registered, so handlers without it are called exactly as
  before)::

      @server.rpc
      def whoami(context: meridian.CallContext) -> str:
          identity = context.peer_identity
          return identity.spiffe_id if identity else "anonymous"

- or it calls :func:`current_context` anywhere in the code the handler runs (a
  ``contextvars`` variable, so it follows ``async def`` handlers across awaits).

A client cannot fill a handler's ``context`` parameter: a call that sends a keyword
argument named ``context`` to such a handler fails with ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import contextvars

from ._native import CallContext, PeerIdentity

__all__ = ["CallContext", "PeerIdentity", "current_context"]

_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("meridian_call_context")


def current_context() -> CallContext:
    """The :class:`CallContext` of the call the calling code is handling.

    Raises ``LookupError`` outside a handler (and outside code it runs in the same
    thread or task).
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError("meridian.current_context() is only available inside a handler") from None
