"""The trio client library against a scripted socket: calls, streams, and the resume contract.

Protocol-level only (test_client_fake.py); the subscriber against a real daemon is in
test_examples.py.
"""

from __future__ import annotations

import pytest
import trio
from test_client_fake import error, fake_daemon, result, stream

from events import wire
from events.model import Event
from supervisor.client import Disconnected, TooSlow, connect


def records(*seqs: int) -> list[dict]:
    return [{"seq": s, "time": s, "type": "task.exit", "id": "j", "data": {"exit_status": s}}
            for s in seqs]


async def test_call_returns_results_and_raises_error_replies(root) -> None:
    with fake_daemon(root, {"ps": result([{"id": "a"}]), "rm": error("conflict", "running")}):
        async with await connect(root=root) as client:
            assert client.peer["role"] == "daemon"
            assert await client.call("ps", all=True) == [{"id": "a"}]
            with pytest.raises(wire.RemoteError) as info:
                await client.call("rm", id="a")
            assert info.value.code == "conflict"
            assert await client.call("ps") == [{"id": "a"}]  # still usable after an error


async def test_events_yield_event_objects_and_send_the_filters(root) -> None:
    with fake_daemon(root, {"events": stream(records(3, 5))}) as fake:
        async with await connect(socket=root / "supervisord.sock") as client:
            got = [e async for e in client.events(since=2, types=["task.exit"], ids=["j"],
                                                  follow=False)]
    assert got == [Event(seq=3, time=3, type="task.exit", id="j", data={"exit_status": 3}),
                   Event(seq=5, time=5, type="task.exit", id="j", data={"exit_status": 5})]
    assert fake.requests == [("events", {"since": 2, "follow": False, "types": ["task.exit"],
                                         "ids": ["j"]})]


async def test_unknown_event_types_are_yielded_not_fatal(root) -> None:
    future = [{"seq": 1, "time": 1, "type": "task.teleport", "id": "j", "data": {"x": 1}}]
    with fake_daemon(root, {"events": stream(future)}):
        async with await connect(root=root) as client:
            got = [e async for e in client.events(follow=False)]
    assert [e.type for e in got] == ["task.teleport"]


async def test_too_slow_carries_the_last_seq_yielded(root) -> None:
    handler = stream(records(1, 2, 7), end={"error": {"code": "too_slow", "message": "full"}})
    with fake_daemon(root, {"events": handler}):
        async with await connect(root=root) as client:
            seen = []
            with pytest.raises(TooSlow) as info:
                async for event in client.events():
                    seen.append(event.seq)
    assert seen == [1, 2, 7]
    assert info.value.last_seq == 7
    assert info.value.code == "too_slow"


async def test_disconnect_mid_stream_carries_the_last_seq(root) -> None:
    handler = lambda params: [*({"item": r} for r in records(4, 5)), {"close": True}]  # noqa: E731
    with fake_daemon(root, {"events": handler}):
        async with await connect(root=root) as client:
            seen = []
            with pytest.raises(Disconnected) as info:
                async for event in client.events(since=3):
                    seen.append(event.seq)
    assert seen == [4, 5]
    assert info.value.last_seq == 5


async def test_disconnect_before_any_event_resumes_from_since(root) -> None:
    with fake_daemon(root, {"events": lambda params: [{"close": True}]}):
        async with await connect(root=root) as client:
            with pytest.raises(Disconnected) as info:
                async for _ in client.events(since=11):
                    pass
    assert info.value.last_seq == 11


async def test_leaving_a_live_stream_closes_the_connection(root) -> None:
    with fake_daemon(root, {"events": lambda params: [{"item": r} for r in records(1, 2)]}):
        async with await connect(root=root) as client:
            async for _ in client.events():
                break
            with pytest.raises(Disconnected):
                await client.call("status")


async def test_no_daemon_is_an_os_error(root) -> None:
    with pytest.raises(FileNotFoundError):
        await connect(root=root)


async def test_calls_from_two_tasks_are_serialized(root) -> None:
    with fake_daemon(root, {"status": lambda p: [{"result": p.get("n")}]}):
        async with await connect(root=root) as client:
            results: dict[int, int] = {}

            async def one(n: int) -> None:
                results[n] = await client.call("status", n=n)

            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(one, n)
    assert results == {n: n for n in range(10)}
