"""What setup built is kept out of the collector's walks, and a peer's removal still frees
the cycles it leaves. Each case runs in a child interpreter: freezing is process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_what_setup_built_is_out_of_the_collectors_walks() -> None:
    _run("""
        import gc
        from vpn.host.memory import release_setup_memory
        kept = [[n] for n in range(10_000)]  # long-lived, as peers are
        release_setup_memory()
        assert gc.get_freeze_count() >= 10_000
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(item) in tracked for item in kept)
    """)


def test_a_removed_peers_cycle_is_freed_at_the_change() -> None:
    _run("""
        import gc, weakref
        from vpn.host.memory import collect_removed, release_setup_memory

        class Node:
            pass

        peer = Node()
        peer.itself = peer  # a cycle: reference counting alone never frees it
        gone = weakref.ref(peer)
        release_setup_memory()
        del peer
        gc.collect()
        assert gone() is not None  # frozen: the collector does not see it
        collect_removed()
        assert gone() is None
        assert gc.get_freeze_count() > 0  # frozen again
    """)


def test_a_process_that_never_froze_is_left_alone() -> None:
    _run("""
        import gc
        from vpn.host.memory import collect_removed
        collect_removed()
        assert gc.get_freeze_count() == 0
    """)


def test_the_heap_keeps_its_headroom_for_the_next_wakeups_frames() -> None:
    """A receive wakeup's jumbo frames (64 KiB bodies, 2 MiB of them) made and freed again
    and again: without the headroom glibc gave the pages back each time and faulted them in
    again (480 faults a round here); with it, the pages stay."""
    _run("""
        import resource
        from vpn.host.memory import keep_heap_headroom
        assert keep_heap_headroom(), "no glibc mallopt"
        def faults():
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):  # the heap grown once
            frames = [bytearray(65536) for _ in range(32)]
            del frames
        before = faults()
        for _ in range(200):
            frames = [bytearray(65536) for _ in range(32)]
            del frames
        assert faults() - before < 200, faults() - before  # not one round's worth
    """)
