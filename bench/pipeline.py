"""The data path's own CPU cost per 64 KiB, without the kernel: `DataPath` driven by
in-memory stand-ins for the TUN device and the UDP socket.

The send side reads one TSO super-packet, splits, encrypts and "sends" it; the datagrams it
produced are handed to the receive side as one GRO receive per GSO send, which decrypts,
checks, coalesces and "writes" the jumbo frames. Both sides are real `DataPath` objects over
real `Device`s that completed a handshake, so every line of the hot path runs; only the
system calls are replaced. The receiver's frames are checked against the sender's input, so
a fast figure cannot come from a broken path.

`throughput(workers)` (`python -m bench.pipeline --workers N --json`) is the same walk as a
rate over at least two seconds: the send side sealing on N worker threads (0: inline, on
the calling thread) and the receive side opening and delivering on as many (ReceiveWorkers),
in Gbit/s of TCP payload, with the send side's CPU time per 64 KiB on the loop thread and on
the workers (on a machine shared with other work the rates say little, the CPU times still
say what free cores would give: with loop L and workers W, n workers on n + 1 free cores go
at most 1/max(L, W/n) per 64 KiB). `--compare` runs 0, 1 and 2 workers each in its own
process, interleaved, and prints them side by side with their ratios to 1 worker.

`run()` measures the fast path the endpoint would use (fastpath.NATIVE: native when the
C module is built); `run_with_python_path()` adds the Python reference path's figures from
a child process with VPN_FAST_PATH=python, in the same run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

from lab.doubles import (
    DST,
    ENDPOINT_A,
    MTU,
    SRC,
    MemoryTun,
    MemoryUdp,
    handshaken_pair,
    tun_frame,
)
from lab.packets import tcp_super_packet, udp_packet
from vpn.core.packet.virtio import VIRTIO_NET_HDR_LEN, VirtioNetHeader
from vpn.core.wireguard import fastpath
from vpn.core.wireguard.replay import ReplayWindow
from vpn.host.memory import keep_heap_headroom
from vpn.io.datapath import DataPath
from vpn.io.pausingpool import PausingPool

# As the endpoint's process (vpn.serving) runs: without it every receive wakeup faulted its
# frames' pages in again, and the figures measured glibc's trimming, not the data path.
keep_heap_headroom()

MSS = MTU - 40 - 12  # IPv4 + TCP with the timestamps option, as Linux sends


def _doubles(path: DataPath) -> tuple[MemoryTun, MemoryUdp]:
    """The in-memory stand-ins for the TUN and the socket that handshaken_pair gave `path`."""
    tun, udp = path.tun, path.udp
    assert isinstance(tun, MemoryTun) and isinstance(udp, MemoryUdp)
    return tun, udp


def _run(a: DataPath, b: DataPath, reads: list[memoryview],
         rounds: int) -> tuple[list[float], list[float]]:
    (tun_a, udp_a), (tun_b, udp_b) = _doubles(a), _doubles(b)
    send_us, receive_us = [], []
    for _ in range(rounds):
        tun_a.reads = list(reads)
        udp_a.sent.clear()
        t0 = time.perf_counter()
        a.on_tun_readable()
        t1 = time.perf_counter()
        udp_b.incoming = [(memoryview(data), size, ENDPOINT_A) for data, size in udp_a.sent]
        tun_b.frames.clear()
        t2 = time.perf_counter()
        b.on_udp_readable()
        t3 = time.perf_counter()
        send_us.append((t1 - t0) * 1e6 / len(reads))
        receive_us.append((t3 - t2) * 1e6 / len(reads))
    return send_us, receive_us


def run(rounds: int = 400) -> dict[str, float]:
    """Microseconds per 64 KiB super-packet through each side, medians over `rounds`."""
    a, b = handshaken_pair()
    payload = os.urandom(MSS * 47)  # 47 segments: what a 64 KiB TSO read carries here
    options = b"\x01\x01\x08\x0a" + bytes(8)
    header, packet = tcp_super_packet(payload, MSS, src=SRC, dst=DST, options=options)
    reads = [memoryview(tun_frame(header, packet))]  # as read, the virtio-net header first
    # Warm up, then check the receiver got the payload back in one jumbo frame.
    _run(a, b, reads, 3)
    (tun_a, _), (tun_b, _) = _doubles(a), _doubles(b)
    frames = tun_b.frames
    if len(frames) != 1 or frames[0][-len(payload):] != payload:
        raise RuntimeError(f"pipeline benchmark: wrong output ({len(frames)} frames)")
    tun_a.keep = tun_b.keep = False
    send_us, receive_us = _run(a, b, reads, rounds)
    # Four super-packets per wakeup, as the TUN often hands over under load.
    send4, receive4 = _run(a, b, reads * 4, rounds // 4)
    return {
        "pipeline_send_us_per_64k": statistics.median(send_us),
        "pipeline_receive_us_per_64k": statistics.median(receive_us),
        "pipeline_send_us_per_64k_batch4": statistics.median(send4),
        "pipeline_receive_us_per_64k_batch4": statistics.median(receive4),
    }


SMALL_PAYLOAD = 64  # sockperf's ping-pong message: UDP 64 B


def small(rounds: int = 2000) -> dict[str, float]:
    """Microseconds per wakeup for one small packet each way (a UDP 64 B ping, as sockperf
    sends): the fixed cost of each walk, which latency pays and bulk spreads over a batch."""
    a, b = handshaken_pair()
    packet = udp_packet(bytes(SMALL_PAYLOAD), src=SRC, dst=DST)
    frame = memoryview(tun_frame(VirtioNetHeader(), packet))
    (tun_a, udp_a), (tun_b, udp_b) = _doubles(a), _doubles(b)
    send_us, receive_us = [], []
    for i in range(rounds + 50):  # the first 50 warm up
        tun_a.reads = [frame]
        udp_a.sent.clear()
        t0 = time.perf_counter()
        a.on_tun_readable()
        t1 = time.perf_counter()
        ((data, size),) = udp_a.sent
        udp_b.incoming = [(memoryview(data), size, ENDPOINT_A)]
        tun_b.frames.clear()
        t2 = time.perf_counter()
        b.on_udp_readable()
        t3 = time.perf_counter()
        if tun_b.frames != [bytes(VIRTIO_NET_HDR_LEN) + packet]:
            raise RuntimeError("pipeline benchmark: the small packet did not come through")
        if i >= 50:
            send_us.append((t1 - t0) * 1e6)
            receive_us.append((t3 - t2) * 1e6)
    return {"pipeline_send_us_per_small_wakeup": statistics.median(send_us),
            "pipeline_receive_us_per_small_wakeup": statistics.median(receive_us)}


def run_with_python_path(rounds: int = 400) -> dict[str, float]:
    """run(), then the same in a child on the Python path: its figures as `*_python`, and
    how many times slower its send and receive are."""
    figures = run(rounds)
    figures.update(small())
    if not fastpath.NATIVE.native:
        print(f"bench: NATIVE FAST PATH NOT MEASURED: {fastpath.NATIVE.reason}",
              file=sys.stderr)
        return figures
    child = subprocess.run([sys.executable, "-m", "bench.pipeline", "--json", str(rounds)],
                           env=dict(os.environ, VPN_FAST_PATH="python"), capture_output=True,
                           text=True, check=True)
    python = json.loads(child.stdout)
    figures.update({f"{key}_python": value for key, value in python.items()})
    for side in ("send", "receive"):
        key = f"pipeline_{side}_us_per_64k"
        figures[f"pipeline_{side}_python_over_native"] = python[key] / figures[key]
    return figures


WAKEUP_READS = 16  # super-packets per TUN wakeup, as under a bulk TCP stream
CYCLE = 16  # wakeups of distinct datagrams the receive side cycles through


def throughput(workers: int, seconds: float = 2.0) -> dict[str, float]:
    """send_gbps and receive_gbps: TCP payload through each side for `seconds` or more,
    the send side sealing on `workers` threads (0: inline). Nothing goes to the kernel."""
    a, b = handshaken_pair(threads=0, b_threads=workers)  # a only makes b's datagrams
    payload = os.urandom(MSS * 47)
    options = b"\x01\x01\x08\x0a" + bytes(8)
    header, packet = tcp_super_packet(payload, MSS, src=SRC, dst=DST, options=options)
    reads = [memoryview(tun_frame(header, packet))] * WAKEUP_READS
    (tun_a, udp_a), (tun_b, _) = _doubles(a), _doubles(b)
    # CYCLE wakeups' datagrams (their counters all different), kept, for the receive side;
    # then the sends go nowhere.
    cycle = []
    for _ in range(CYCLE):
        udp_a.sent.clear()
        tun_a.reads = list(reads)
        a.on_tun_readable()
        cycle.append([(memoryview(data), size, ENDPOINT_A) for data, size in udp_a.sent])
    a.close()
    a, _ = handshaken_pair(threads=workers)
    tun_a, udp_a = _doubles(a)
    udp_a._sendmsg = lambda data, cmsg, addr: None  # type: ignore[method-assign]
    tun_a.keep = tun_b.keep = False
    room = _room(a.send_workers.slots if a.send_workers is not None else None)
    wakeups = 0
    start = time.perf_counter()
    cpu, loop_cpu = time.process_time(), time.thread_time()
    while time.perf_counter() - start < seconds:
        room.wait()
        tun_a.reads = list(reads)
        a.on_tun_readable()
        wakeups += not tun_a.reads
    a.close()  # every job sealed and sent: part of the time
    send_seconds = time.perf_counter() - start
    loop_cpu = time.thread_time() - loop_cpu
    workers_cpu = time.process_time() - cpu - loop_cpu  # every other thread: the workers
    sent = a.stats.summary()["datagrams_sent"]
    if sent != wakeups * WAKEUP_READS * 47:
        raise RuntimeError(f"pipeline benchmark: {sent} datagrams for {wakeups} wakeups")
    rounds, receive_seconds, receive_loop_cpu, receive_workers_cpu = _receive(b, cycle, seconds)
    if b.stats.all_drops():
        raise RuntimeError(f"pipeline benchmark: drops {dict(b.stats.all_drops())}")
    if b.stats.packets_written != rounds * WAKEUP_READS * 47:
        raise RuntimeError(f"pipeline benchmark: {b.stats.packets_written} packets written "
                           f"for {rounds} rounds")
    bits = len(payload) * 8 * WAKEUP_READS
    per_64k = 1e6 / (wakeups * WAKEUP_READS)
    receive_per_64k = 1e6 / (rounds * WAKEUP_READS)
    return {"workers": workers, "send_gbps": bits * wakeups / send_seconds / 1e9,
            "receive_gbps": bits * rounds / receive_seconds / 1e9,
            "receive_workers": b.pool.stats.threads if b.pool is not None else 0,
            # CPU, not wall time: what the rates would be on free cores, whatever else
            # the machine runs (the loop thread's, and the workers' together).
            "send_loop_cpu_us_per_64k": loop_cpu * per_64k,
            "send_workers_cpu_us_per_64k": workers_cpu * per_64k,
            "receive_loop_cpu_us_per_64k": receive_loop_cpu * receive_per_64k,
            "receive_workers_cpu_us_per_64k": receive_workers_cpu * receive_per_64k}


def _room(pool: PausingPool | None) -> threading.Event:
    """Set while `pool` has buffers free: its backpressure (pause, resume) wired as the
    runtime wires it, the resume called at once instead of on the event loop."""
    room = threading.Event()
    room.set()
    if pool is not None:
        pool.pause, pool.resume = room.clear, room.set
        pool._call_soon_threadsafe = lambda callback: callback()
    return room


def _receive(b: DataPath, cycle: list[list], seconds: float
             ) -> tuple[int, float, float, float]:
    """Rounds of receives (one TUN wakeup's datagrams each, `cycle` of them with counters
    all different) through b's receive walk for `seconds` or more, every job done (part of
    the time): (rounds, seconds, the loop thread's CPU seconds, the workers')."""
    _, udp_b = _doubles(b)
    peer = next(iter(b.device.peers.values()))

    def fresh_windows() -> None:  # the same messages each cycle: a fresh window lets them in
        for kp in peer.keypairs:
            kp.replay = ReplayWindow()

    workers = b.receive_workers
    room = _room(workers.buffers if workers is not None else None)
    rounds = 0
    start = time.perf_counter()
    cpu, loop_cpu = time.process_time(), time.thread_time()
    while time.perf_counter() - start < seconds:
        receives = cycle[rounds % len(cycle)]
        if rounds % len(cycle) == 0:
            if workers is None or b.pool is None:
                fresh_windows()
            else:  # in the peer's receive lane: after the last cycle's accepts, before these.
                # Once a cycle, not once a round: a job that only waits for its turn holds a
                # worker, which with one peer's jobs every other job would keep from opening.
                b.pool.submit(workers.lane(peer), lambda: None, lambda _: fresh_windows())
        udp_b.incoming = list(receives)
        while udp_b.incoming:
            room.wait()
            b.on_udp_readable()
        rounds += 1
    b.close()
    elapsed = time.perf_counter() - start
    loop_cpu = time.thread_time() - loop_cpu
    return rounds, elapsed, loop_cpu, time.process_time() - cpu - loop_cpu


def compare(counts: tuple[int, ...] = (0, 1, 2), repeats: int = 5) -> dict[int, dict]:
    """throughput() of each worker count in its own process, interleaved `repeats` times;
    the medians."""
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    for _ in range(repeats):
        for n in counts:
            child = subprocess.run([sys.executable, "-m", "bench.pipeline", "--workers", str(n),
                                    "--json"], capture_output=True, text=True, check=True)
            runs[n].append(json.loads(child.stdout))
    return {n: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
            for n, rs in runs.items()}


WORKERS_GOAL = 1.8  # issue 20: 2 workers against 1, each direction


def worker_rows(report: dict | None) -> list[tuple[str, str]]:
    """The table rows of compare()'s figures (bench.run's `workers` part)."""
    if not report:
        return []
    rows = []
    for n, figures in sorted(report.items(), key=lambda item: int(item[0])):
        rows.append((f"data path, no kernel, {n} workers (0: inline): send / receive",
                     f"{figures['send_gbps']:6.2f} / {figures['receive_gbps']:6.2f} Gbit/s; "
                     f"CPU per 64 KiB, loop thread / workers: send "
                     f"{figures['send_loop_cpu_us_per_64k']:.1f} / "
                     f"{figures['send_workers_cpu_us_per_64k']:.1f} us, receive "
                     f"{figures['receive_loop_cpu_us_per_64k']:.1f} / "
                     f"{figures['receive_workers_cpu_us_per_64k']:.1f} us"))
    one, two = report.get("1"), report.get("2")
    if one and two:
        for side in ("send", "receive"):
            ratio = two[f"{side}_gbps"] / one[f"{side}_gbps"]
            verdict = "met" if ratio >= WORKERS_GOAL else "NOT met"
            rows.append((f"data path, no kernel, {side}: 2 workers / 1",
                         f"{ratio:6.2f}x (goal >= {WORKERS_GOAL}x: {verdict})"))
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--json"]:  # the child of run_with_python_path
        print(json.dumps(run(int(sys.argv[2]))))
    elif sys.argv[1:2] == ["--workers"]:
        print(json.dumps(throughput(int(sys.argv[2]))))
    elif sys.argv[1:2] == ["--small"]:
        for key, value in small().items():
            print(f"{key:40} {value:8.2f}")
    elif sys.argv[1:2] == ["--compare"]:
        results = compare()
        for n, figures in results.items():
            ratios = [figures[key] / results[1][key] if 1 in results else 0
                      for key in ("send_gbps", "receive_gbps")]
            print(f"workers {n}: send {figures['send_gbps']:6.2f} Gbit/s ({ratios[0]:.2f}x of "
                  f"1 worker), receive {figures['receive_gbps']:6.2f} Gbit/s ({ratios[1]:.2f}x "
                  f"of 1 worker); CPU per 64 KiB, loop thread / workers: send "
                  f"{figures['send_loop_cpu_us_per_64k']:5.1f} / "
                  f"{figures['send_workers_cpu_us_per_64k']:5.1f} us, receive "
                  f"{figures['receive_loop_cpu_us_per_64k']:5.1f} / "
                  f"{figures['receive_workers_cpu_us_per_64k']:5.1f} us")
    else:
        for key, value in run_with_python_path().items():
            print(f"{key:40} {value:8.1f}")
