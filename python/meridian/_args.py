"""How a call's arguments travel: the keyword-argument convention.

A call's arguments are sent as one Meridian value:

- positional arguments only: a list, ``[a, b, ...]`` (what a Rust handler taking a tuple
  such as ``(i64, i64)`` expects);
- keyword arguments only: a map with string keys, ``{"a": 1, "b": 2}`` (what a Rust
  handler taking a struct expects);
- both: the same map, with the positional arguments as a list under the reserved key
  ``"$args"`` (``$`` cannot start a Python identifier, so no keyword argument can clash).

A Python handler receiving a list calls ``f(*list)``; a map whose keys are all strings,
``f(*map.pop("$args", []), **map)``; ``None`` (a Rust unit ``()``), ``f()``; any other
value, ``f(value)``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple, Union

ARGS_KEY = "$args"

Payload = Union[List[Any], Dict[str, Any]]


def pack(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Payload:
    """The value that carries ``args`` and ``kwargs``."""
    if not kwargs:
        return list(args)
    if ARGS_KEY in kwargs:
        raise TypeError(f"{ARGS_KEY!r} is reserved and cannot be a keyword argument")
    if args:
        payload: Dict[str, Any] = {ARGS_KEY: list(args)}
        payload.update(kwargs)
        return payload
    return dict(kwargs)


def unpack(payload: Any) -> Tuple[List[Any], Dict[str, Any]]:
    """The positional and keyword arguments carried by ``payload``."""
    if isinstance(payload, list):
        return payload, {}
    if payload is None:
        return [], {}
    if isinstance(payload, dict) and all(isinstance(k, str) for k in payload):
        kwargs = dict(payload)
        args = kwargs.pop(ARGS_KEY, [])
        if not isinstance(args, list):
            args = [args]
        return args, kwargs
    return [payload], {}
