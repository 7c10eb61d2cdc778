"""The handshake worker: the Diffie-Hellman work of queued handshake messages, off the loop.

The core queues each mac1-valid initiation and response that passed its cheap checks as a
HandshakeJob (Device.defer_handshake), bounded by its HandshakeQueue. The worker threads run
each job's pure part (the X25519s release the GIL); the outcomes go back to the event loop in
batches (one call_soon_threadsafe per batch), where Device.finish_handshakes changes the
state and says what to send.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable

from vpn.core.drops import Drop
from vpn.core.types import Address
from vpn.core.wireguard import Device, HandshakeJob
from vpn.core.wireguard.noise import HandshakeError

log = logging.getLogger("vpn.io.handshakes")

# Threads doing the DH work: one per CPU, as wireguard-go's handshake workers. A valid
# initiation costs the worker about 185 us, nearly all of it one native call (four X25519s,
# eight KDFs, three AEADs; the GIL released once, the peer found in a native table) and the
# loop about 25-35 us: on the 2-core machine 2 workers answered 1.2-1.8x as many as 1 (2026-12-07,
# with the machine loaded by others, before the call was native).
HANDSHAKE_THREADS = os.cpu_count() or 1
# A failing job is counted every time, its traceback logged at most this often: a bug a
# message can trigger must not flood the journal (the data path's rule too).
INTERNAL_ERROR_LOG_SECONDS = 60.0


class HandshakeWorker:
    """Runs `device`'s handshake jobs on `threads` threads from `start` to `close`."""

    def __init__(self, device: Device, loop: asyncio.AbstractEventLoop,
                 clock: Callable[[], float],
                 send: Callable[[list[tuple[Address, bytes]]], None],
                 threads: int = HANDSHAKE_THREADS) -> None:
        self.device = device
        self.loop = loop
        self.clock = clock
        self.send = send
        self.jobs_done = 0
        self._jobs: queue.SimpleQueue[HandshakeJob | None] = queue.SimpleQueue()
        self._done: list[HandshakeJob] = []  # finished, for the loop; under _lock
        self._lock = threading.Lock()
        self._closed = False
        self._error_logged = float("-inf")  # under _lock
        self._threads = [threading.Thread(target=self._run, name=f"vpn-handshake-{i}",
                                          daemon=True) for i in range(threads)]

    def start(self) -> None:
        """Take the device's handshake jobs from now on."""
        for thread in self._threads:
            thread.start()
        self.device.defer_handshake = self._jobs.put

    def close(self) -> None:
        """Stop taking jobs, end the threads (a job in hand finishes; the rest are dropped,
        as a datagram the socket never delivered) and wait for them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.device.defer_handshake = None
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        self.device.handshake_queue.done(self.device.handshake_queue.depth)

    @property
    def threads_alive(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._closed:
                continue  # drain: nothing more is worked after close
            try:
                job.run()
            except Exception:  # a bug, not the message's fault: counted, the worker goes on
                self._log_internal_error("a handshake job")
                job.outcome = HandshakeError(Drop.INTERNAL_ERROR)
            with self._lock:
                first = not self._done
                self._done.append(job)
            if first:
                try:
                    self.loop.call_soon_threadsafe(self._finish)
                except RuntimeError:  # the loop is closed: nobody is left to answer
                    return

    def _finish(self) -> None:
        """On the loop: every outcome that came back since the last call, in one batch."""
        with self._lock:
            done, self._done = self._done, []
        if self._closed or not done:
            return
        self.jobs_done += len(done)
        try:
            send = self.device.finish_handshakes(done, self.clock())
        except Exception:  # as the pump's boundary: counted, logged, the endpoint goes on
            self.device.drops[Drop.INTERNAL_ERROR] += 1
            self._log_internal_error("finishing handshakes")
            return
        if send:
            self.send(send)

    def _log_internal_error(self, where: str) -> None:
        """From an except clause: the traceback, at most once a minute."""
        now = self.clock()
        with self._lock:
            due = now - self._error_logged >= INTERNAL_ERROR_LOG_SECONDS
            if due:
                self._error_logged = now
        if due:
            log.exception("internal error in %s (counted as drops.internal_error; logged at "
                          "most once a minute)", where)
