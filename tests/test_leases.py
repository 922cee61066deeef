from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from gateway.leases import is_gone, owner_id
from tests.helpers import dead_owner


def test_this_processes_owner_is_not_gone_and_owners_are_unique() -> None:
    first, second = owner_id(), owner_id()
    assert first != second and first.startswith(f"worker:{socket.gethostname()}:{os.getpid()}:")
    assert not is_gone(first)


def test_an_exited_process_is_gone_and_a_reused_pid_is_told_apart_by_its_start_time() -> None:
    assert is_gone(dead_owner())
    with subprocess.Popen(["sleep", "5"]) as running:
        alive = f"worker:{socket.gethostname()}:{running.pid}:"
        real_start = Path(f"/proc/{running.pid}/stat").read_text().rpartition(")")[2].split()[19]
        assert not is_gone(f"{alive}{real_start}:x")
        assert is_gone(f"{alive}1:x")  # another process once had this pid
        running.kill()


def test_owners_it_cannot_check_are_never_gone() -> None:
    assert not is_gone("worker:another-host:1:1:x")
    assert not is_gone("crashed")
    assert not is_gone(f"worker:{socket.gethostname()}:not-a-pid:1:x")
