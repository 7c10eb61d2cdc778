"""The handshake worker: the DH work on its own thread, the outcome applied on the loop, and
nothing left running after close."""

from __future__ import annotations

import asyncio
import threading

from tests.unit.core.wireguard.helpers import A_ADDR, B_ADDR, mac1_valid, make_pair
from vpn.core.types import Address
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
