"""sockperf ping-pong between two lab hosts: one UDP message of a given size out, the same
back, the next only once the answer is in, for a given time; round-trip times in
microseconds (`--full-rtt`: sockperf's default halves them).

sockperf (Debian's package, 3.7) prints its percentiles on stdout, coloured; `parse` reads
them. Its first 400 ms are a warm-up it leaves out of the figures.
"""

from __future__ import annotations

import re
import shutil

from lab.netns import Host

PORT = 11111  # sockperf's default
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PERCENTILE = re.compile(r"---> percentile (\d+\.\d+) =\s*([0-9.]+)")
_OBSERVATIONS = re.compile(r"Total (\d+) observations")
_DROPPED = re.compile(r"# dropped messages = (\d+)")
_AVERAGE = re.compile(r"avg-rtt=([0-9.]+)")


def unavailable_reason() -> str | None:
    """Why sockperf cannot run here (scripts/bootstrap.sh installs it), or None."""
    if shutil.which("sockperf") is None:
        return "sockperf is not installed (apt-get install sockperf; make deps installs it)"
    return None


def parse(output: str) -> dict[str, float]:
    """The round-trip figures of one `sockperf ping-pong --full-rtt` run, in microseconds:
    median, p99, p99.9, the mean, how many round trips were measured, and how many
    messages were dropped."""
    text = _ANSI.sub("", output)
    percentiles = {float(p): float(v) for p, v in _PERCENTILE.findall(text)}
    observations = _OBSERVATIONS.search(text)
    if 50.0 not in percentiles or 99.0 not in percentiles or observations is None:
        raise ValueError(f"no round-trip percentiles in sockperf's output:\n{output[-2000:]}")
    dropped = _DROPPED.search(text)
    average = _AVERAGE.search(text)
    return {
        "median_us": percentiles[50.0],
        "p99_us": percentiles[99.0],
        "p999_us": percentiles.get(99.9, percentiles[99.0]),
        "mean_us": float(average.group(1)) if average else float("nan"),
        "observations": int(observations.group(1)),
        "dropped": int(dropped.group(1)) if dropped else 0,
    }


def ping_pong(client: Host, server: Host, address: str, *, seconds: int = 5,
              size: int = 64, port: int = PORT) -> dict[str, float]:
    """A sockperf server on `address` in `server`, a ping-pong client in `client` for
    `seconds`; the server is stopped by its pid afterwards."""
    srv = server.start("sockperf", "server", "-i", address, "-p", str(port))
    try:
        server.wait_for(f"ss -lun | grep -q '{address}:{port} '")
        out = client.run("sockperf", "ping-pong", "-i", address, "-p", str(port),
                         "-m", str(size), "-t", str(seconds), "--full-rtt",
                         timeout=seconds + 60, check=False)
    finally:
        srv.stop()
    if out.returncode != 0:
        raise RuntimeError(f"sockperf ping-pong exited {out.returncode}: "
                           f"{out.stderr.strip() or out.stdout.strip()[-2000:]}")
    return parse(out.stdout)
