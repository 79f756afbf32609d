"""Cell claims: which process runs a cell, so that runs sharing one results directory run each cell once.

Before a cell trains, its runner creates `<record>.claim` beside the record with O_CREAT|O_EXCL (atomic on
local file systems and on NFS v3+): the file names the owner (host, pid, the pid's start time, boot id) and a
token, and a heartbeat thread touches it every `HEARTBEAT_S` seconds. Another run that finds the file
- skips the cell while the claim is live;
- takes it over when it is stale: its owner is on this host and gone (or the pid now belongs to another
  process, or the host has rebooted), or its heartbeat is older than `stale_after` seconds (an owner on
  another host that died or lost the file system).
The claim is removed after the record (or the error record) is written, and on SIGTERM/SIGINT. A SIGKILLed
owner leaves its claim behind; it is stale at once on the same host, after `stale_after` from elsewhere.

Taking over goes through a second create-exclusive file, `<record>.claim.takeover`, so that of two runs that
both see a stale claim only one replaces it. Records and step checkpoints are written atomically whatever
happens here: a claim only saves duplicate work, it never guards a file's integrity.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
#: a claim whose heartbeat is older than this is taken over (keep it well above HEARTBEAT_S and any clock skew
#: between the hosts that share the results directory)
STALE_AFTER_S = 120.0


def claim_path(record: Path) -> Path:
    return Path(record).with_suffix(".claim")


def _process_start(pid: int) -> str | None:
    """The pid's start time in clock ticks since boot (field 22 of /proc/<pid>/stat): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def owner() -> dict:
    """This process as a claim owner."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "boot_id": _boot_id(),
    }


@dataclass
class Claim:
    """A held claim; `release()` (or leaving the `with` block) removes it if it is still ours."""

    path: Path
    token: str
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start_heartbeat(self, every: float) -> None:
        self._thread = threading.Thread(target=self._beat, args=(every,), daemon=True, name=f"claim {self.path.name}")
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self.owned():
                log.warning("  claim %s was taken over by another run (a stall longer than the timeout?)", self.path)
                return
            try:
                os.utime(self.path)
            except OSError:
                return

    def owned(self) -> bool:
        info = read_claim(self.path)
        return info is not None and info.get("token") == self.token

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)
        _HELD.pop(self.token, None)
        if self.owned():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


#: the claims this process holds now, by token (released together on preemption)
_HELD: dict[str, Claim] = {}


def read_claim(path: Path) -> dict | None:
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def stale_reason(path: Path, stale_after: float = STALE_AFTER_S) -> str | None:
    """Why the claim at `path` may be taken over, or None while it is live (or gone)."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    info = read_claim(path)
    if info is None:
        # a claim is written in one small write right after its creation: give a writer that was just
        # preempted between the two the heartbeat timeout, then call it stale
        return "unreadable claim" if age > stale_after else None
    me = owner()
    if info.get("host") == me["host"]:
        if info.get("boot_id") and me["boot_id"] and info["boot_id"] != me["boot_id"]:
            return f"its owner ran before this host rebooted (pid {info.get('pid')})"
        pid = int(info.get("pid", -1))
        if not _pid_alive(pid):
            return f"its owner (pid {pid}) is gone"
        if info.get("pid_start") and _process_start(pid) != info["pid_start"]:
            return f"its owner's pid {pid} now belongs to another process"
        if pid == me["pid"] and info.get("token") not in _HELD:
            return "this process left it behind"
    if age > stale_after:
        return f"its heartbeat is {age:.0f}s old (owner {info.get('host')}:{info.get('pid')})"
    return None


def _create(path: Path, info: dict) -> bool:
    """Create the claim file exclusively with `info`; False when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _take_over(path: Path, info: dict, stale_after: float) -> bool:
    """Replace a stale claim by ours, one taker at a time."""
    gate = path.with_name(path.name + ".takeover")
    if not _create(gate, info):
        try:  # a taker that died inside the gate; the gate is held for milliseconds otherwise
            if time.time() - gate.stat().st_mtime > stale_after:
                gate.unlink()
        except FileNotFoundError:
            pass
        return False
    try:
        reason = stale_reason(path, stale_after)  # again, inside the gate: another taker may have won meanwhile
        if reason is None and path.exists():
            return False
        if reason is not None:
            log.info("  taking over the claim %s: %s", path, reason)
        path.unlink(missing_ok=True)
        return _create(path, info)
    finally:
        gate.unlink(missing_ok=True)


def try_claim(
    record: Path, stale_after: float = STALE_AFTER_S, heartbeat: float = HEARTBEAT_S, attempts: int = 3
) -> Claim | None:
    """Claim the cell whose record is `record`; None while another live run holds it."""
    path = claim_path(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    info = {**owner(), "token": token, "claimed": time.time()}
    for _ in range(attempts):
        if _create(path, info) or (stale_reason(path, stale_after) and _take_over(path, info, stale_after)):
            claim = Claim(path, token)
            _HELD[token] = claim
            claim.start_heartbeat(heartbeat)
            return claim
        if path.exists():
            return None  # live
    return None


def release_all() -> None:
    """Release every claim this process holds (on preemption, before the process is stopped)."""
    for claim in list(_HELD.values()):
        claim.release()
