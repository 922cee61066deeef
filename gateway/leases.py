"""Who holds a lease: a worker's owner id says which process on which machine, so that its successor can tell it
is gone and take its deliveries back at once, instead of waiting for the leases to expire.

The id is `worker:<host>:<pid>:<process start>:<random>`. A process on the same host whose pid no longer runs, or
now runs a process started at another time (the pid was reused), is gone. A worker on another host cannot be
checked from here: its leases expire as before.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

PREFIX = "worker"


def owner_id() -> str:
    """A new owner id for a worker in this process."""
    pid = os.getpid()
    return f"{PREFIX}:{socket.gethostname()}:{pid}:{_started(pid)}:{uuid.uuid4().hex[:12]}"


def is_gone(owner: str) -> bool:
    """Whether the process behind `owner` certainly no longer runs (False when that cannot be told)."""
    parts = owner.split(":")
    if len(parts) != 5 or parts[0] != PREFIX or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False
    pid, started = int(parts[2]), parts[3]
    if pid == os.getpid():
        return False  # this process: another worker object in it may hold these leases
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it runs, as someone else
    return started != "?" and _started(pid) not in ("?", started)


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat, field 22), or "?" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rpartition(")")[2].split()[19]
