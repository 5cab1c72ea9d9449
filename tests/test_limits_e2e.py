"""The real scheduler drops a worker connection that floods it and never reads."""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path

import pytest

from tests.e2e import start_scheduler, stop
from tests.test_limits import _frame


def _rss(pid: int) -> int:
    """Resident memory of *pid* in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_a_worker_flooding_invalid_messages_without_reading_is_dropped(tmp_path: Path) -> None:
    scheduler = start_scheduler(tmp_path, "--send-backlog", "65536")
    try:
        before = _rss(scheduler.process.pid)
        with socket.socket() as sock:
            # A peer that reads nothing: keep its window small, then never recv.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", scheduler.http))
            key = base64.b64encode(os.urandom(16))
            sock.sendall(
                b"GET /ws/worker HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            sock.settimeout(10)
            assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")  # a client waits for it
            # Invalid before the hello, each answered with an error.
            batch = _frame(json.dumps({"type": "started", "job": "x" * 64}).encode()) * 1000
            sent = 0
            dropped = False
            while sent < 2_000_000:
                try:
                    sock.sendall(batch)
                except OSError:  # reset by the scheduler
                    dropped = True
                    break
                sent += 1000
        assert dropped, f"still connected after {sent} invalid messages"
        assert _rss(scheduler.process.pid) - before < 64 * 1024 * 1024
        log = scheduler.log.read_text()
        assert "dropping the connection from 127.0.0.1: it left more than 65536 bytes unread" in log
    finally:
        stop(scheduler.process)
