"""What a rank says when a collective fails because another rank died or stopped answering.

gloo and NCCL report a broken connection or a timeout, not which rank is gone. After such a
failure every surviving rank checks in at the rendezvous store (the one torch.distributed was
initialized with) and reads who else did within a few seconds: the ranks that did not are the
ones named. If the store itself is unreachable, the process that hosted it is gone (rank 0
under the deepspeed launcher, srun and mpirun; torchrun's agent under torchrun).

A named rank on the survivor's own host is SIGKILLed (every rank leaves its host and pid at the
store when the job starts): a stopped or hung process ignores the launcher's SIGTERM, and the
deepspeed launcher waits 30 s before its SIGKILL, torchrun longer. The job is over once a
collective has timed out; this only ends it sooner. The kill comes after the survivor has
printed its line (`PeerLost.end_hung`): the launcher answers the killed rank by terminating the
survivor within a second, which would otherwise take the line with it.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from datetime import timedelta

import torch

CHECK_IN_S = 5.0  # how long survivors wait for each other at the store


# How gloo and NCCL word a lost peer or a collective that timed out.
LOST_PEER_MARKERS = ("Connection closed by peer", "Connection reset", "Broken pipe", "timed out", "Timed out", "NCCL")


class PeerLost(RuntimeError):
    """A collective failed because other ranks are gone; the message names them and the step.
    `hung`: the pids of the named ranks still running on this host, which `end_hung` kills."""

    def __init__(self, message: str, hung: list[int] = ()):
        super().__init__(message)
        self.hung = list(hung)

    def end_hung(self) -> None:
        """SIGKILL the hung ranks on this host; call it after the line is printed."""
        for pid in self.hung:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # gone since: nothing to end
                continue


def lost_peer(err: Exception) -> bool:
    """Whether `err` is a collective's failure rather than this rank's own bug."""
    text = str(err)
    return isinstance(err, torch.distributed.DistError) or any(marker in text for marker in LOST_PEER_MARKERS)


def register(rank: int) -> None:
    """Leave this rank's host and pid at the store, for `describe` to end it if it hangs."""
    store = torch.distributed.distributed_c10d._get_default_store()
    store.set(f"bigtrain/pid/{rank}", f"{socket.gethostname()} {os.getpid()}")


def running_here(ranks: list[int]) -> dict[int, int]:
    """The pids of those of `ranks` still running on this host, by rank (a zombie is not running)."""
    found = {}
    for rank in ranks:
        try:
            store = torch.distributed.distributed_c10d._get_default_store()
            host, pid = store.get(f"bigtrain/pid/{rank}").decode().split()
            if host != socket.gethostname() or int(pid) == os.getpid():
                continue
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            if state not in ("Z", "X"):
                found[rank] = int(pid)
        except Exception:  # noqa: BLE001, S112  (no store, no /proc, a process already gone: nothing to end)
            continue
    return found


def missing_ranks(rank: int, world: int, wait_s: float = CHECK_IN_S) -> list[int] | None:
    """The ranks that did not check in at the store within `wait_s`; None if the store itself
    cannot be reached."""
    try:
        store = torch.distributed.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=wait_s))
        store.set(f"bigtrain/alive/{rank}", "1")
        deadline = time.time() + wait_s
        keys = [f"bigtrain/alive/{r}" for r in range(world)]
        while time.time() < deadline and not store.check(keys):
            time.sleep(0.2)
        return [r for r, key in enumerate(keys) if not store.check([key])]
    except Exception:  # noqa: BLE001  (any failure to reach the store means it is gone)
        return None


def describe(err: Exception, rank: int, world: int, step: int, saving: bool, latest: str | None) -> PeerLost:
    """The one line a surviving rank prints for a failed collective, with the hung ranks on this
    host for `PeerLost.end_hung` to end once it is printed."""
    gone = missing_ranks(rank, world)
    if gone is None:
        who = "the rendezvous store is unreachable, so the process hosting it is gone (rank 0, or torchrun's agent)"
    elif gone:
        who = f"rank{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone))} died or stopped responding"
    else:
        who = "every rank is alive, but a collective failed"
    where = f"while saving the checkpoint of step {step}" if saving else f"during step {step + 1}"
    resume = f"the latest complete checkpoint is {latest}" if latest else "there is no complete checkpoint yet"
    if hung := running_here(gone or []):
        resume += f"; rank{'s' if len(hung) > 1 else ''} {', '.join(map(str, hung))} hung on this host, now killed"
    text = str(err).strip()
    first = text.splitlines()[0].split(". ")[0][:200] if text else type(err).__name__
    return PeerLost(
        f"{who} ({where}; last completed step {step}; {resume}): relaunch the same command to resume "
        f"from it [{type(err).__name__}: {first}]",
        hung=list(hung.values()),
    )
