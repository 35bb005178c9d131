"""The errors a run reports to its user, and the exit codes of train.py: one place for both.

Only an exception of a type below is reported as what it is; anything else is a bug of the
library (exit 1, with its traceback). In particular a plain ValueError raised inside the package
is never taken for a user's mistake: the code that knows an input is bad raises `BadInput` (or a
subclass) and says which field, flag or file.

No JAX here: the workdir checks (psops_jax/workdir.py) run before JAX starts.
"""

import math
import numbers
import os

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1  # a bug: the traceback, then INTERNAL_ERROR
EXIT_BAD_INPUT = 2  # a flag, a config field or file, the data, the workdir: a short message
EXIT_DIVERGED = 3  # every particle's loss became NaN or inf
EXIT_WORKER_LOST = 69  # EX_UNAVAILABLE: another process of the run died; rerun to resume
EXIT_WRITE_FAILED = 74  # EX_IOERR: the workdir's disk is full or read-only; rerun to resume
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM; the checkpoint is written, rerun to resume

# (exit code, meaning): the table of docs/usage.md and train.py's docstring
EXIT_CODES = (
  (EXIT_OK, "done"),
  (EXIT_INTERNAL_ERROR, "an internal error (a bug): its traceback, then a line that says so"),
  (EXIT_BAD_INPUT, "bad input: a flag, a config field or file, the data, the workdir"),
  (EXIT_DIVERGED, "every particle diverged (loss NaN or inf)"),
  (
    EXIT_WORKER_LOST,
    "a process of a multi-process run was lost (killed, its host gone): every other process "
    "names it, the round and the checkpoint a rerun resumes from",
  ),
  (
    EXIT_WRITE_FAILED,
    "the workdir cannot be written (disk full, over quota, read-only): free space and rerun to "
    "resume",
  ),
  (EXIT_PREEMPTED, "preempted by SIGTERM: the checkpoint is written, rerun to resume"),
)

INTERNAL_ERROR = "psops_jax: internal error (a bug): please report it with the traceback above"


class BadInput(Exception):
  """Something the user typed or pointed at cannot be used; the message names it and says what is
  accepted. train.py exits with EXIT_BAD_INPUT and the message, no traceback."""


class ConfigError(BadInput, ValueError):
  """A config field with a value the run cannot use."""


class BadArgument(BadInput, ValueError):
  """An argument of a library constructor (a sync strategy or one of its parts) out of range.

  `argument` is the parameter's name; the config layer names the config field that fed it
  (`psops_jax.sync.registry`), so that a config user reads `sync.topk=0: ...`."""

  def __init__(self, argument: str, value, accepted: str):
    super().__init__(f"{argument}={value!r}: {accepted}")
    self.argument, self.value, self.accepted = argument, value, accepted


class RunStopped(Exception):
  """A run that ended early for a reason the user must act on; `exit_code` says which."""

  exit_code = EXIT_INTERNAL_ERROR


class Diverged(RunStopped, RuntimeError):
  """Every particle's loss is NaN or inf."""

  exit_code = EXIT_DIVERGED


class Preempted(RunStopped):
  """SIGTERM arrived; the run checkpointed after `rounds_done` rounds and stopped."""

  exit_code = EXIT_PREEMPTED

  def __init__(self, rounds_done: int, directory: str):
    super().__init__(
      f"preempted (SIGTERM): checkpoint after round {rounds_done} in {directory}; "
      "rerun the same command to resume"
    )
    self.rounds_done = rounds_done


class WorkerLost(RunStopped):
  """Processes `lost` of a multi-process run stopped answering at round `rounds_done` (None: before
  the first round); `checkpoint` is the newest complete checkpoint's round (None: none yet), in
  `directory`."""

  exit_code = EXIT_WORKER_LOST

  def __init__(
    self, lost: list, rounds_done: int | None, checkpoint: int | None, directory: str | None
  ):
    names = ("process " if len(lost) == 1 else "processes ") + ", ".join(str(i) for i in lost)
    when = "before its first round" if rounds_done is None else f"at round {rounds_done}"
    resume = (
      f"resume from the checkpoint after round {checkpoint} in {directory}"
      if checkpoint is not None
      else "start from round 0 (no checkpoint yet)"
    )
    super().__init__(
      f"lost {names} of this multi-process run {when} (its heartbeats "
      f"stopped: killed, hung, or its host is gone); rerun the same command to {resume}"
    )
    self.lost, self.rounds_done, self.checkpoint = lost, rounds_done, checkpoint


class WorkdirWriteError(RunStopped):
  """A write to the workdir (a checkpoint, metrics.jsonl, the TensorBoard events, a JSON file) that
  its disk refused: full, over quota, read-only. Not a bug and not bad input: the run stopped after
  its last good checkpoint, which a rerun with space resumes from; the message says what failed,
  the space left and that checkpoint (`latest`: its round, None when there is none)."""

  exit_code = EXIT_WRITE_FAILED

  def __init__(self, workdir: str, failure: str, free: str, latest: int | None, left=()):
    resume = (
      f"the latest good checkpoint is round {latest} in {os.path.join(workdir, 'checkpoints')}: "
      "free space (or make the workdir writable) and rerun the same command to resume from it"
      if latest is not None
      else "there is no checkpoint yet: free space (or make the workdir writable) and rerun"
    )
    kept = f"; could not remove the partial {', '.join(left)} (a rerun will)" if left else ""
    super().__init__(
      f"cannot write --workdir={workdir} ({failure}, with {free} free on its filesystem){kept}; "
      f"{resume}"
    )
    self.latest = latest


def require(ok: bool, argument: str, value, accepted: str) -> None:
  """Raise BadArgument(argument, value, accepted) unless `ok`: a constructor's argument check."""
  if not ok:
    raise BadArgument(argument, value, accepted)


def is_integer(value) -> bool:
  """An int (numpy's too), not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
  """A finite real number, not a bool."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
