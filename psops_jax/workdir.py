"""A run's workdir: created when missing, locked while a run uses it, and the writes to it that its
disk refuses.

The lock is an flock(2) on WORKDIR/run.lock, whose text names the holder (host, pid, start time,
command) for the messages. The kernel drops an flock when its holder's process ends, however it ends
(kill -9 too), so a lock that can be taken is free: a holder named in it is gone (it did not
release the lock) and is reported as taken over. A run that finds the lock held by a live run is
refused with `WorkdirBusy`, which names the holder.

A process that holds a lock can hand it to a child process it starts (studies/study.py does, for
the train.py of a cell): `Lock.child_env()` and `pass_fds=(lock.fd,)`; the child adopts the lock
instead of being refused, and the lock stays held until both have let go. No JAX here: study.py
imports this module.

A write that the workdir's disk refuses (no space, over quota, read-only, not writable) is
recognised by `write_failure`, in the OSError of a Python write or in the error that orbax's array
writer (tensorstore) raises for it; the run then stops with errors.WorkdirWriteError (see
psops_jax/train.py). Any other error is left as it is.
"""

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time

from psops_jax import errors

LOCK_NAME = "run.lock"
INHERITED_FD = "PSOPS_WORKDIR_LOCK_FD"  # the descriptor of a lock a parent process hands down


class WorkdirError(errors.BadInput, RuntimeError):
  """A workdir that cannot be used; the message names it and what would do."""


class WorkdirBusy(WorkdirError):
  """Another live run holds the workdir's lock."""


def prepare(workdir: str) -> None:
  """Create `workdir` if missing; WorkdirError naming it when it cannot be created or written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} is a file: pass a directory (created if missing)")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(
      f"--workdir={workdir} cannot be created ({e.strerror}): pass a directory "
      "that exists or can be created, and that this user can write"
    ) from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise WorkdirError(
      f"--workdir={workdir} is not writable by this user: pass a directory this user can write"
    )


def holder_record() -> dict:
  """What the lock file says about this process: host, pid, start time, command line."""
  return {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "command": " ".join(sys.argv)[:300],
  }


def describe(holder: dict | None) -> str:
  """`pid 12 on host h (started ..., command ...)`, or a phrase when the record is unreadable."""
  if not holder:
    return "a process that has not named itself yet"
  command = f", command: {holder['command']}" if holder.get("command") else ""
  return (
    f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')}"
    f"{command})"
  )


def read_holder(fd: int) -> dict | None:
  """The holder record in the lock file, or None when it is empty or unreadable."""
  try:
    text = os.pread(fd, 1 << 16, 0).decode()
    return json.loads(text) if text.strip() else None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return None


def busy_holder(fd: int) -> dict | None:
  """The record of a live holder; it writes it just after taking the lock, so a few tries."""
  for _ in range(20):
    holder = read_holder(fd)
    if holder:
      return holder
    time.sleep(0.05)
  return None


def busy_message(workdir: str, holder: dict | None) -> str:
  """The refusal of a second run on `workdir`, with how to proceed."""
  here = holder and holder.get("host") == socket.gethostname()
  stop = (
    f"stop it (kill {holder.get('pid')}: SIGTERM checkpoints it, and a rerun resumes)"
    if here
    else "stop it on its host"
  )
  return (
    f"--workdir={workdir} is in use by another run: {describe(holder)}.\n"
    f"Wait for it to finish, {stop}, or pass another --workdir."
  )


def inherited_fd(path: str) -> int | None:
  """The descriptor of the lock at `path` that a parent process handed down, or None."""
  value = os.environ.get(INHERITED_FD, "")
  if not value.isdigit():
    return None
  try:
    same = os.path.samestat(os.fstat(int(value)), os.stat(path))
  except OSError:
    return None
  return int(value) if same else None


class Lock:
  """A held workdir lock; `release()` (or the end of a `with` block) lets go of it."""

  def __init__(self, path: str, fd: int | None, owner: bool = True):
    self.path, self.fd, self.owner = path, fd, owner

  @classmethod
  def acquire(cls, workdir: str) -> "Lock":
    """Take `workdir`'s lock (creating the workdir): WorkdirBusy when a live run holds it."""
    prepare(workdir)
    path = os.path.join(workdir, LOCK_NAME)
    adopted = inherited_fd(path)
    try:
      fd = adopted if adopted is not None else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(
        f"--workdir={workdir}: cannot write {path} ({e.strerror}): pass a "
        "directory this user can write"
      ) from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # a filesystem without flock
        print(
          f"psops_jax: warning: {path} cannot be locked ({e.strerror}): nothing keeps a second "
          "run off this workdir",
          file=sys.stderr,
        )
        if adopted is None:
          os.close(fd)
        return cls(path, None)
      holder = busy_holder(fd)
      if adopted is None:
        os.close(fd)
      raise WorkdirBusy(busy_message(workdir, holder)) from None
    if adopted is not None:  # the parent's lock: its record names the parent, which runs us
      return cls(path, fd, owner=False)
    left = read_holder(fd)
    if left:
      print(
        f"psops_jax: took over the lock of {workdir} left by {describe(left)}: that run is gone",
        file=sys.stderr,
        flush=True,
      )
    try:
      with naming(path):  # a full disk: train.py names the file (exit 2), the lock is let go
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_record()).encode(), 0)
        os.fsync(fd)
    except OSError:
      os.close(fd)
      raise
    return cls(path, fd)

  def child_env(self) -> dict:
    """Environment entries that let a child process (started with pass_fds=(fd,)) adopt the lock."""
    return {INHERITED_FD: str(self.fd)}

  def release(self) -> None:
    """Let go: the owner clears the record first (a cleared lock is not reported as taken over);
    an adopted lock is only closed here, which leaves the parent holding it."""
    if self.fd is None:
      return
    if self.owner:
      os.ftruncate(self.fd, 0)
      fcntl.flock(self.fd, fcntl.LOCK_UN)
    os.close(self.fd)
    self.fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


@contextlib.contextmanager
def hold(workdir: str, main: bool = True, agree=lambda ok: ok):
  """Create `workdir` and hold its lock for the `with` block. Only `main` (process 0 of a
  multi-process run) takes the lock, for the run; every process creates the workdir. `agree(ok)`
  tells whether `ok` is true in every process (an all-gather), so that every process stops when one
  cannot use the workdir (the others would wait for it in the run's first collective)."""
  lock, error = None, None
  try:
    if main:
      lock = Lock.acquire(workdir)
    else:
      prepare(workdir)
  except WorkdirError as e:
    error = e
  if not agree(error is None):
    if lock:
      lock.release()
    raise error or WorkdirError(
      f"--workdir={workdir}: another process of this run cannot use it (see process 0's message)"
    )
  try:
    yield lock
  finally:
    if lock:
      lock.release()


# The errnos of a write that the disk or its filesystem refuses, whatever the run does.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
# tensorstore (orbax's array writer) reports them as a ValueError that quotes the paths, e.g.
# 'RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at local file "/w/checkpoints/
# 3.orbax-checkpoint-tmp/...": ... No space left on device [os_error_code='28']'.
TENSORSTORE_ERRNO = re.compile(r"\[os_error_code='?(\d+)'?\]")
QUOTED = re.compile(r'"([^"]+)"')


def is_inside(path: str, directory: str) -> bool:
  """Whether `path` lies in `directory`."""
  path, directory = os.path.abspath(path), os.path.abspath(directory)
  return os.path.commonpath([path, directory]) == directory


@contextlib.contextmanager
def naming(path: str):
  """Inside: an OSError that names no file (a buffered write, a flush, an fsync) is given `path`,
  the file being written, so that its message and `write_failure` know where it happened."""
  try:
    yield
  except OSError as e:
    if e.filename is None:
      e.filename = path
    raise


def causes(error: BaseException | None) -> list:
  """`error` and the exceptions it was raised from or while handling, each once: orbax re-raises the
  error of a background thread, some libraries wrap it."""
  seen, todo = [], [error]
  while todo:
    e = todo.pop(0)
    if e is not None and not any(e is s for s in seen):
      seen.append(e)
      todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
  return seen


def write_failure(error: BaseException | None, workdir: str) -> str | None:
  """`STRERROR: PATH` (PATH in `workdir`, its first two parts) when `error`, or an exception it
  came from, is a write in `workdir` that the disk refused (an errno of WRITE_ERRNOS, from an
  OSError that names a file in the workdir or from tensorstore's message that quotes one); None for
  any other error, and for an error the library already reports (errors.BadInput,
  errors.RunStopped)."""
  if isinstance(error, (errors.BadInput, errors.RunStopped)):
    return None
  for e in causes(error):
    if isinstance(e, OSError):
      code, paths = e.errno, [p for p in (e.filename, e.filename2) if isinstance(p, str)]
    else:
      found = TENSORSTORE_ERRNO.search(str(e))
      code = int(found[1]) if found else None
      paths = [p for p in QUOTED.findall(str(e)) if os.path.isabs(p)]
    paths = [p for p in paths if is_inside(p, workdir)]
    if code in WRITE_ERRNOS and paths:
      where = os.path.relpath(os.path.abspath(paths[0]), os.path.abspath(workdir))
      return f"{os.strerror(code)}: {os.path.join(*where.split(os.sep)[:2])}"
  return None


def free_space(workdir: str) -> str:
  """The space left on `workdir`'s filesystem, e.g. `12.0 KiB`."""
  try:
    free = float(shutil.disk_usage(workdir).free)
  except OSError as e:
    return f"unknown space ({e.strerror})"
  units = ("bytes", "KiB", "MiB", "GiB", "TiB")
  k = 0
  while free >= 1024 and k < len(units) - 1:
    free, k = free / 1024, k + 1
  return f"{free:.0f} bytes" if k == 0 else f"{free:.1f} {units[k]}"


# Config fields added since runs were saved, with the value that runs as those runs did: a saved
# config that lacks one is read as holding it (a resumed workdir, a re-run study cell).
ADDED_FIELDS = {"model.conv": "lax"}


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def config_differences(saved: dict, current: dict, ignored: tuple = ()) -> list[str]:
  """`field: saved -> current` for every field of two configs (nested dicts) that differs, the
  `ignored` fields aside; a field of ADDED_FIELDS that `saved` lacks holds its old value there."""
  a, b = {**ADDED_FIELDS, **flatten(saved)}, flatten(current)
  return [
    f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
    for k in sorted(set(a) | set(b))
    if k not in ignored and a.get(k) != b.get(k)
  ]


# What a run's numbers depend on besides its config (which summary.json records in full), less the
# files of it that no array passes through: the communication clock (a projection made after the
# run) and this module (locks, code versions).
TRAINING_CODE = ("psops_jax", "train.py")
NOT_TRAINING = ("psops_jax/clock.py", "psops_jax/workdir.py")
# git pathspecs of TRAINING_CODE less NOT_TRAINING
TRAINING_PATHS = (*TRAINING_CODE, *(f":(exclude){path}" for path in NOT_TRAINING))


# the checkout this package runs from (a git work tree, or none)
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args) -> str | None:
  """git's output in CHECKOUT; None outside a git checkout or on any failure."""
  try:
    result = subprocess.run(
      ["git", "-C", CHECKOUT, *args], capture_output=True, text=True, timeout=30
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout.strip() if result.returncode == 0 else None


def modified(paths: tuple[str, ...] = ()) -> bool:
  """Whether tracked files under the git pathspecs `paths` (all of the checkout by default)
  differ from HEAD."""
  return bool(_git("status", "--porcelain", "--untracked-files=no", "--", *paths))


def code_version(paths: tuple[str, ...] = ()) -> str | None:
  """The commit of the checkout this package runs from, with "+modified" when tracked files under
  `paths` differ from it (a run's figures can then be tied to, and re-made from, a commit); None
  outside a git checkout. A run passes TRAINING_PATHS: a study rewrites its own tracked reports
  between invocations, and those change no run's numbers."""
  head = _git("rev-parse", "HEAD")
  if head is None:
    return None
  return head + ("+modified" if modified(paths) else "")


def training_code(commit: str | None = "HEAD") -> str | None:
  """A digest of the git blobs of TRAINING_CODE's files at `commit` (a code_version), less
  NOT_TRAINING: equal for two commits that differ only elsewhere (docs, tests, benchmarks, configs,
  the clock), so that a run of one reproduces bit for bit on the other. None for a modified
  checkout ("+modified"), when at HEAD those files differ from it, or outside a git checkout."""
  if commit is None or commit.endswith("+modified"):
    return None
  if commit == "HEAD" and modified(TRAINING_PATHS):
    return None
  listing = _git("ls-tree", "-r", commit, "--", *TRAINING_CODE)  # "mode blob id\tpath" lines
  if not listing:
    return None
  blobs = [line for line in listing.splitlines() if line.split("\t")[-1] not in NOT_TRAINING]
  return hashlib.sha1("\n".join(blobs).encode()).hexdigest()[:16]


def machine_kind() -> str:
  """The CPU model and core count of this machine (a run's numbers are promised bit-identical on
  the same kind of machine with the same code, see studies/study.py --check)."""
  model = platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    model = names[0] if names else model
  except OSError:
    pass
  return f"{model} x{os.cpu_count()}"
