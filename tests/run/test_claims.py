"""Cell claims: create-exclusive, live claims skipped, stale ones (owner gone, heartbeat old) taken over by one."""

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

from benchmarks.run import claims


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(path, **info):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "x", **info}))


def test_claim_is_exclusive_and_released(tmp_path):
    record = tmp_path / "r" / "seed0.json"
    first = claims.try_claim(record)
    assert first is not None
    info = json.loads(claims.claim_path(record).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["token"] == first.token
    assert claims.stale_reason(claims.claim_path(record)) is None
    assert claims.try_claim(record) is None  # live (held by this process)
    first.release()
    assert not claims.claim_path(record).exists()
    second = claims.try_claim(record)
    assert second is not None and second.token != first.token
    second.release()


def test_stale_claims_are_taken_over(tmp_path):
    record = tmp_path / "seed0.json"
    path = claims.claim_path(record)
    plant(path, pid=dead_pid())
    assert "is gone" in claims.stale_reason(path)
    taken = claims.try_claim(record)
    assert taken is not None and taken.owned()
    taken.release()
    # another host: live while its heartbeat is fresh, stale once older than the timeout
    plant(path, host="elsewhere", pid=1)
    assert claims.try_claim(record, stale_after=60) is None
    old = time.time() - 120
    os.utime(path, (old, old))
    assert "heartbeat is" in claims.stale_reason(path, stale_after=60)
    taken = claims.try_claim(record, stale_after=60)
    assert taken is not None
    taken.release()
    # a claim this very process left behind (its token is not held) is stale; so is a reused pid
    plant(path, token="forgotten")
    assert claims.stale_reason(path) == "this process left it behind"
    plant(path, pid=os.getppid(), pid_start="1")
    assert "another process" in claims.stale_reason(path)
    path.unlink()


def test_heartbeat_keeps_a_claim_fresh(tmp_path):
    record = tmp_path / "seed0.json"
    claim = claims.try_claim(record, heartbeat=0.05)
    path = claims.claim_path(record)
    old = time.time() - 1000
    os.utime(path, (old, old))
    deadline = time.time() + 30
    while path.stat().st_mtime < old + 500 and time.time() < deadline:
        time.sleep(0.02)
    assert path.stat().st_mtime > old + 500  # touched again by the heartbeat thread
    claim.release()


def _race(record, start, hold, wins):
    start.wait()
    claim = claims.try_claim(record)
    if claim is not None:
        wins.put(os.getpid())
    hold.wait()
    if claim is not None:
        claim.release()


def test_one_of_many_racers_takes_a_stale_claim(tmp_path):
    record = tmp_path / "seed0.json"
    plant(claims.claim_path(record), pid=dead_pid())
    ctx = mp.get_context("fork")
    n = 6
    start, hold, wins = ctx.Barrier(n), ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(record, start, hold, wins)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    winners = []
    while not wins.empty():
        winners.append(wins.get())
    assert len(winners) == 1
    assert not claims.claim_path(record).exists()  # released by the winner
