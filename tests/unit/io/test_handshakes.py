"""The handshake worker: the DH work on its own thread, the outcome applied on the loop, and
nothing left running after close."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.unit.core.wireguard.helpers import A_ADDR, B_ADDR, mac1_valid, make_pair
from vpn.core.types import Address
from vpn.core.wireguard import HandshakeJob
from vpn.io.handshakes import HandshakeWorker


def handshake_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vpn-handshake")]


def test_a_handshake_through_the_worker_completes() -> None:
    pair = make_pair()

    async def main() -> list[tuple[Address, bytes]]:
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[list[tuple[Address, bytes]]] = loop.create_future()
        worker = HandshakeWorker(pair.b, loop, loop.time, answered.set_result)
        worker.start()
        try:
            (init,) = pair.pa.initiate_handshake(0.0)
            assert pair.b.handle_handshake_message(init, A_ADDR, 0.0).event == "queued"
            return await asyncio.wait_for(answered, 10)
        finally:
            worker.close()

    ((dest, response),) = asyncio.run(main())
    assert dest == A_ADDR
    assert pair.a.handle_handshake_message(response, B_ADDR, 0.0).event == "response_consumed"
    assert "handshake_complete" in pair.pa.events
    assert pair.b.handshake_queue.depth == 0
    assert not handshake_threads()


def test_close_with_handshakes_in_flight_leaks_no_thread() -> None:
    pair = make_pair()

    async def main() -> HandshakeWorker:
        loop = asyncio.get_running_loop()
        worker = HandshakeWorker(pair.b, loop, loop.time, lambda sent: None, threads=2)
        worker.start()
        for i in range(300):
            pair.b.handle_handshake_message(mac1_valid(1, pair.b.public_key),
                                            (f"198.18.5.{2 + i % 200}", 1024 + i), 0.0,
                                            under_load=False)
        assert pair.b.handshake_queue.depth > 0
        worker.close()
        return worker

    worker = asyncio.run(main())
    assert worker.threads_alive == 0 and not handshake_threads()
    assert pair.b.handshake_queue.depth == 0 and pair.b.defer_handshake is None
    # After close the device works inline again, as without a worker.
    (init,) = pair.pa.initiate_handshake(0.0)
    assert pair.b.handle_handshake_message(init, A_ADDR, 0.0).event == "initiation_consumed"


def test_a_job_that_raises_is_counted_and_the_worker_goes_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    pair = make_pair()
    real_run = HandshakeJob.run
    broken = {"left": 2}

    def run(job: HandshakeJob) -> None:
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("a bug no drop reason foresaw")
        real_run(job)

    monkeypatch.setattr(HandshakeJob, "run", run)

    async def main() -> list[tuple[Address, bytes]]:
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[list[tuple[Address, bytes]]] = loop.create_future()
        worker = HandshakeWorker(pair.b, loop, loop.time, answered.set_result, threads=1)
        worker.start()
        try:
            for _ in range(2):  # both fail in the worker
                pair.b.handle_handshake_message(mac1_valid(1, pair.b.public_key),
                                                ("198.18.5.2", 1024), 0.0, under_load=False)
            (init,) = pair.pa.initiate_handshake(0.0)  # then a real one goes through
            pair.b.handle_handshake_message(init, A_ADDR, 0.0)
            return await asyncio.wait_for(answered, 10)
        finally:
            worker.close()

    ((dest, _),) = asyncio.run(main())
    assert dest == A_ADDR
    assert pair.b.drops["internal_error"] == 2
    assert len([r for r in caplog.records if "internal error" in r.getMessage()]) == 1
    assert pair.b.handshake_queue.depth == 0
