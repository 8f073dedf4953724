"""A graceful stop racing calls: every call whose handler started gets its answer, every
other call fails saying it did not run, never "it may or may not have run"."""

import threading
import time
from typing import Dict, List, Optional, Tuple

import meridian
from meridian import RPCClient, RPCServer

# How long before the stop each call is sent, in seconds (negative: after it began).
FEW = [0.05, 0.01, 0.005, 0.002, 0.0, -0.005]
BUSY = [0.05, 0.04, 0.03, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0, 0.0] * 4 + [-0.005, -0.02, -0.04]


def race(region: str, offsets: List[float], anchor: bool = True) -> Tuple[int, int, List[str]]:
    """Sends 100 ms calls at ``offsets`` before ``stop(grace=3)`` and, with ``anchor``, a
    250 ms call 150 ms before it, answered last: the stop closes right after its answer.
    Returns the calls answered, the calls refused, and every other outcome (each a bug)."""
    lock = threading.Lock()
    runs: Dict[str, int] = {"started": 0, "completed": 0}
    server = RPCServer(region)

    @server.rpc
    def work(ms):
        with lock:
            runs["started"] += 1
        time.sleep(ms / 1000)
        with lock:
            runs["completed"] += 1
        return "done"

    server.start()
    client = RPCClient(region, timeout=20)
    assert client.work(0) == "done"  # connected, catalog known
    runs["started"] = runs["completed"] = 0

    stop_at = time.monotonic() + 0.17
    calls = ([(0.15, 250)] if anchor else []) + [(d, 100) for d in offsets]
    results: List[Optional[Tuple[float, object]]] = [None] * len(calls)

    def call(i: int, before: float, ms: int) -> None:
        time.sleep(max(0.0, stop_at - before - time.monotonic()))
        try:
            results[i] = (before, client.work(ms))
        except meridian.RpcError as e:
            results[i] = (before, e)

    threads = [
        threading.Thread(target=call, args=(i, before, ms)) for i, (before, ms) in enumerate(calls)
    ]
    for t in threads:
        t.start()
    time.sleep(max(0.0, stop_at - time.monotonic()))
    # Where everything is slow, the stop waits until the long call runs.
    waited = time.monotonic()
    while anchor and runs["started"] == 0 and time.monotonic() - waited < 20:
        time.sleep(0.001)
    server.stop(grace=3)
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a call did not end after the stop"

    ok = refused = 0
    bad: List[str] = []
    for r in results:
        assert r is not None
        before, outcome = r
        if outcome == "done":
            ok += 1
        elif (
            isinstance(outcome, meridian.RpcError)
            and outcome.code == meridian.StatusCode.UNAVAILABLE
            and "may or may not have run" not in outcome.message
        ):
            refused += 1
        else:
            bad.append(f"sent {before * 1000:g} ms before the stop: {outcome!r}")
    if runs["started"] != ok or runs["completed"] != ok:
        bad.append(
            f"{runs['started']} handler(s) started and {runs['completed']} completed, "
            f"{ok} call(s) answered, {refused} refused"
        )
    client.close()
    return ok, refused, bad


def test_a_stop_answers_every_started_call_and_refuses_the_others(region):
    ok = refused = 0
    bad: List[str] = []
    # A few calls around the stop, and the long one answered last; one call alone, sent as
    # the stop begins (the stop finds nothing to wait for and closes at once); 40 calls
    # before the stop and 3 during it.
    rounds = [(FEW, True)] * 6 + [([0.0], False)] * 4 + [(BUSY, True)]
    for i, (offsets, anchor) in enumerate(rounds):
        o, r, b = race(f"{region}-{i}", offsets, anchor)
        ok += o
        refused += r
        bad += b
    calls = sum(len(offsets) + anchor for offsets, anchor in rounds)
    assert not bad, f"of {calls} calls, {ok} answered, {refused} refused; wrong: {bad}"
    assert ok + refused == calls
    assert refused >= 6 + 3, "calls sent after the stop began are refused"
