"""RpcError and its subclasses pickle and copy with code, message and metadata (B3)."""

import concurrent.futures
import copy
import multiprocessing
import pickle

import pytest

import meridian
from meridian import RPCClient, RpcError, StatusCode
from meridian.errors import _BY_CODE

ALL_CLASSES = [RpcError] + sorted(_BY_CODE.values(), key=lambda c: c._code)


def make(cls, message="went wrong", metadata=None):
    metadata = {"retry-after": "3", "blob-bin": b"\x00\xff"} if metadata is None else metadata
    if cls is RpcError:
        return RpcError(StatusCode.ABORTED, message, metadata)
    return cls(message, metadata)


def same(a, b):
    return (
        type(a) is type(b)
        and a.code == b.code
        and isinstance(b.code, StatusCode)
        and a.message == b.message
        and a.metadata == b.metadata
        and str(a) == str(b)
        and a.args == b.args
    )


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_survives_pickle_and_copy(cls):
    err = make(cls)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert same(err, pickle.loads(pickle.dumps(err, protocol)))
    shallow, deep = copy.copy(err), copy.deepcopy(err)
    assert same(err, shallow) and same(err, deep)
    deep.metadata["retry-after"] = "9"
    assert err.metadata["retry-after"] == "3"


def test_extra_attributes_and_an_unknown_code_survive():
    err = RpcError(99, "odd")
    err.attempt = 3
    back = pickle.loads(pickle.dumps(err))
    assert back.code == StatusCode.UNKNOWN and back.attempt == 3 and back.message == "odd"


def test_a_received_error_pickles(make_server, region):
    server = make_server(region)

    @server.rpc
    def refuse():
        raise meridian.PermissionDenied("not you", {"who-bin": b"\x01", "policy": "p7"})

    with pytest.raises(meridian.PermissionDenied) as info:
        RPCClient(region, timeout=10).refuse()
    back = pickle.loads(pickle.dumps(info.value))
    assert same(info.value, back)
    assert back.metadata["who-bin"] == b"\x01" and back.metadata["policy"] == "p7"


def _raise_in_worker(code):
    cls = _BY_CODE[code]
    raise cls(f"from a worker: {cls.__name__}", {"k": "v"})


def test_errors_cross_a_process_pool():
    # "spawn": a fresh interpreter imports meridian and raises; the parent unpickles.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        futures = {code: pool.submit(_raise_in_worker, code) for code in (4, 5, 14)}
        for code, fut in futures.items():
            with pytest.raises(_BY_CODE[code]) as info:
                fut.result(timeout=60)
            assert info.value.code == code
            assert info.value.message == f"from a worker: {_BY_CODE[code].__name__}"
            assert info.value.metadata == {"k": "v"}
