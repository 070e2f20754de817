"""What no move can beat on this machine, measured in the benchmark's own run: the first
touch of fresh memory (a restore writes every page of the job into new memory) and one
loopback TCP stream (CRIU's page server and lazy pages use one), in GB/s."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from summary import GB

Say = Callable[[str], None]


def first_touch_gb_s(nbytes: int = 1024**3) -> float:
    """Fresh anonymous memory, written once (malloc'd afresh: every page a first touch)."""
    t0 = time.perf_counter()
    data = b"\x01" * nbytes
    dt = time.perf_counter() - t0
    del data
    return nbytes / dt / GB


def loopback_tcp_gb_s(nbytes: int = 2 * 1024**3, chunk: int = 4 * 1024**2) -> float:
    """One TCP stream over 127.0.0.1 (what CRIU's page server and lazy pages use)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        got = [0]

        def receive() -> None:
            conn, _ = srv.accept()
            buf = bytearray(chunk)
            with conn:
                while n := conn.recv_into(buf):
                    got[0] += n

        rx = threading.Thread(target=receive)
        rx.start()
        payload = memoryview(b"\x01" * chunk)
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as tx:
            sent = 0
            while sent < nbytes:
                tx.sendall(payload)
                sent += chunk
        rx.join()
        dt = time.perf_counter() - t0
    return got[0] / dt / GB


def limits(say: Say, repeat: int = 3) -> dict[str, float]:
    """Medians of ``repeat`` runs of each rate (GB/s)."""
    touch = sorted(first_touch_gb_s() for _ in range(repeat))
    tcp = sorted(loopback_tcp_gb_s() for _ in range(repeat))
    out = {
        "first_touch_gb_s": round(touch[len(touch) // 2], 3),
        "loopback_tcp_gb_s": round(tcp[len(tcp) // 2], 3),
    }
    say(
        f"limits: first touch {out['first_touch_gb_s']} GB/s, loopback TCP "
        f"{out['loopback_tcp_gb_s']} GB/s"
    )
    return out


def limits_text(lim: dict[str, float] | None) -> str:
    if not lim:
        return "not measured"
    return (
        f"first touch {lim['first_touch_gb_s']:.2f} GB/s, loopback TCP "
        f"{lim['loopback_tcp_gb_s']:.2f} GB/s"
    )
