"""The processes of a multi-process run watch each other: when one is lost (killed, its host gone),
every other process says so in one line (`errors.WorkerLost`: which process, the round, the
checkpoint a rerun resumes from) and exits with errors.EXIT_WORKER_LOST within seconds. Without
this, a survivor either fails at once in a gloo collective (a traceback that reads as a bug) or
waits in one until JAX's runtime aborts it (SIGABRT, 100 s later by default), and says neither
what was lost nor what to do.

All of it is JAX's own runtime (jax.distributed and its coordination service in process 0):

- `initialize` starts jax.distributed with a heartbeat timeout of HEARTBEAT_TIMEOUT_S, after which
  the service counts a silent process as dead, and with `jax_enable_recoverability`, so that the
  service lets the others live on to report it (by default it makes every process abort, with
  JAX's message only).
- `Watchdog`, a daemon thread in every process, asks the service which processes are alive every
  CHECK_EVERY_S (`get_live_nodes`, the call under jax.experimental.multihost_utils.live_devices: a
  barrier of the live processes). When one is missing it prints the line and ends the process,
  whatever the main thread does: after a peer dies a gloo collective may fail at once
  (`is_lost_peer_error` tells the main thread to wait for the verdict) or wait for it forever.
- Recoverable, the service no longer holds every process at JAX's shutdown barrier, and a process
  whose coordinator is gone aborts; so the processes leave together (`leave`): a barrier, then every
  process but 0 disconnects, and process 0, which holds the service, goes last.

Losing process 0 loses the service too: the others abort at once with JAX's "Terminating process
because the JAX distributed service detected fatal errors"; scripts/launch_local.py names it.
"""

import contextlib
import os
import re
import sys
import threading
import time

import jax
from jax._src import distributed  # the coordination service's client (as orbax and live_devices)

from psops_jax import checkpoint as checkpoint_lib
from psops_jax import errors

# Seconds without a heartbeat after which a process counts as lost (JAX's default: 100). Low enough
# that the survivors stop within ~HEARTBEAT_TIMEOUT_S + 2 s; heartbeats come from a thread of their
# own, so a busy or compiling process still sends them.
HEARTBEAT_TIMEOUT_S = 10
CHECK_EVERY_S = 1.0  # between two questions to the service: one small RPC
LEAVE_TIMEOUT_S = 60  # at the end, how long a process waits for the others to finish too
REPORT_TIMEOUT_S = 5  # how long the survivors wait for each other to report, before process 0 exits

# What a survivor's collective raises when its peer's process is gone, as seen here: gloo's read or
# write on the dead peer's socket ("UNKNOWN: Gloo AllGather failed: [.../tcp/pair.cc:538] Read error
# [127.0.0.1]:15260: Connection reset by peer"), or the coordination service's verdict ("Barrier
# failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout ...", "The following
# tasks are unhealthy (stopped sending heartbeats)").
LOST_PEER = re.compile(
  r"Gloo [\w -]+ failed: .*(Connection reset by peer|Connection closed by peer|Broken pipe)"
  r"|heartbeat timeout|stopped sending heartbeats",
  re.DOTALL,
)


def is_lost_peer_error(error: BaseException) -> bool:
  """Whether `error` is a collective or barrier that failed because another process is gone. It is
  a jax.errors.JaxRuntimeError where the collective runs, and a ValueError (same message) where a
  later computation is given the failed one's output."""
  return isinstance(error, (jax.errors.JaxRuntimeError, ValueError)) and bool(
    LOST_PEER.search(str(error))
  )


def initialize(**kwargs) -> None:
  """jax.distributed.initialize(**kwargs), recoverable and with HEARTBEAT_TIMEOUT_S, then the
  watchdog (kwargs empty: from the cluster's environment)."""
  jax.config.update("jax_enable_recoverability", True)
  jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S, **kwargs)
  global _watchdog
  _watchdog = Watchdog(distributed.global_state.client, jax.process_index(), jax.process_count())
  _watchdog.thread.start()


class Watchdog:
  """A daemon thread that asks the coordination service which processes are alive every
  CHECK_EVERY_S; it reports a loss and ends the process (`lost`), or returns once leaving."""

  def __init__(self, client, index: int, count: int):
    self.client, self.index, self.everyone = client, index, list(range(count))
    self.leaving = threading.Event()
    self.status = lambda: (None, None)  # (rounds done, checkpoints): set by `follow`
    self.thread = threading.Thread(target=self.run, name="psops_jax.peers", daemon=True)

  def run(self) -> None:
    while True:
      try:
        live = set(self.client.get_live_nodes(self.everyone))
      except jax.errors.JaxRuntimeError:  # the service itself is gone, i.e. process 0
        live = set(self.everyone) - {0}
      if not self.leaving.is_set():
        if len(live) < len(self.everyone):
          self.lost(sorted(set(self.everyone) - live))
        time.sleep(CHECK_EVERY_S)
      elif self.index != 0 or live == {0}:  # process 0 returns once every other has left
        return

  def lost(self, ids: list) -> None:
    """Print the WorkerLost line, wait (briefly) for the other survivors to print theirs, exit.

    os._exit: the interpreter's own exit would wait for threads and barriers that include the lost
    process (orbax's commit thread, JAX's shutdown); what is on disk is as after kill -9, which a
    rerun resumes from."""
    rounds_done, directory = self.status()
    newest = checkpoint_lib.newest_complete(directory) if directory else None
    error = errors.WorkerLost(ids, rounds_done, newest, directory)
    bar_line_end = "\n" if self.index == 0 else ""  # process 0's progress bar has no line end
    print(f"{bar_line_end}psops_jax: {error}", file=sys.stderr, flush=True)
    survivors = [i for i in self.everyone if i not in ids]
    with contextlib.suppress(jax.errors.JaxRuntimeError):
      self.client.wait_at_barrier(f"psops_jax: lost {ids}", REPORT_TIMEOUT_S * 1000, survivors)
    if self.index == 0:
      time.sleep(0.5)  # the service (process 0) ends last: the others have exited by now
    os._exit(error.exit_code)

  def leave(self) -> None:
    """Leave the job with the others (process 0 last), after a barrier of every process."""
    try:
      self.client.wait_at_barrier("psops_jax: leave", LEAVE_TIMEOUT_S * 1000)
    except jax.errors.JaxRuntimeError:  # one never came: it was lost (the thread says so) or hangs
      return
    self.leaving.set()
    self.thread.join(LEAVE_TIMEOUT_S)
    jax.distributed.shutdown()


_watchdog: Watchdog | None = None


def follow(status) -> None:
  """Let the lost-worker line say where the run is: `status()` -> (rounds done, or None before
  the first round; the checkpoints' directory, or None)."""
  if _watchdog is not None:
    _watchdog.status = status


def await_verdict() -> None:
  """After `is_lost_peer_error`: wait for the watchdog to name the lost process and end this one
  (it returns only if no process is found lost in that time)."""
  if _watchdog is not None:
    _watchdog.thread.join(HEARTBEAT_TIMEOUT_S + REPORT_TIMEOUT_S + 4 * CHECK_EVERY_S)


def leave() -> None:
  """At the end of a multi-process run, whatever its exit code: `Watchdog.leave` (else nothing)."""
  if _watchdog is not None:
    _watchdog.leave()
