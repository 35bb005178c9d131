"""A full or read-only workdir disk: the run stops with one line (exit 74) naming the workdir, its
free space and the checkpoint a rerun resumes from, the partial checkpoint removed; the rerun, with
space, resumes from it. The slow tests mount a small tmpfs or a read-only bind mount (root only:
skipped where mounting is refused); the others check the recognition of the disk's errors on
synthetic ones (texts as orbax 0.12 / tensorstore 0.1 raise them)."""

import errno
import glob
import json
import logging
import os
import re
import subprocess

import pytest
import toy_runs

from psops_jax import errors, train
from psops_jax import workdir as workdir_lib
from tests.test_checkpoint import cli, finish, wait_for_checkpoint

# What orbax raised for the toy run's 3rd checkpoint on a 4 MB tmpfs, and on a read-only bind mount
ORBAX_NO_SPACE = (
  'RESOURCE_EXHAUSTED: Error writing "opt_state.0.trace.Dense_1.bias/0.0" in OCDBT database at '
  'local file "{w}/checkpoints/3.orbax-checkpoint-tmp/swarm.orbax-checkpoint-tmp/ocdbt.process_0/"'
  ': Failed writing: "{w}/checkpoints/3.orbax-checkpoint-tmp/swarm.orbax-checkpoint-tmp/ocdbt.'
  'process_0/d/e1287ac4b1a059a2bbec7d504e3e1a2d": Failed to write 343414 bytes to file 15: No '
  "space left on device [os_error_code='28']"
)
ORBAX_READ_ONLY = (
  'PERMISSION_DENIED: Error writing "params.Dense_0.bias/0.0" in OCDBT database at local file '
  '"{w}/checkpoints/6.orbax-checkpoint-tmp/swarm.orbax-checkpoint-tmp/ocdbt.process_0/": Failed to '
  'open: "{w}/checkpoints/6.orbax-checkpoint-tmp/swarm.orbax-checkpoint-tmp/ocdbt.process_0/d/19c1'
  "5617402149c8153b012f87f15561\": Read-only file system [os_error_code='30']"
)
W = "/runs/w"  # the workdir of the synthetic errors (write_failure only reads their text)
ORBAX_NO_SPACE, ORBAX_READ_ONLY = ORBAX_NO_SPACE.format(w=W), ORBAX_READ_ONLY.format(w=W)
# the toy run (4 MLP particles, period 2) checkpointing every round: a checkpoint is about 1.6 MB
RUN = [*toy_runs.TINY, "--config.train.checkpoint_every=1"]


def wrapped(error: Exception, outer: Exception) -> Exception:
  """`outer`, raised from `error` (as a library that wraps orbax's error would)."""
  try:
    try:
      raise error
    except Exception as e:
      raise outer from e
  except Exception as e:
    return e


@pytest.mark.parametrize(
  "error, failure",
  [
    (ValueError(ORBAX_NO_SPACE), "No space left on device: checkpoints/3.orbax-checkpoint-tmp"),
    (ValueError(ORBAX_READ_ONLY), "Read-only file system: checkpoints/6.orbax-checkpoint-tmp"),
    (
      wrapped(ValueError(ORBAX_NO_SPACE), RuntimeError("save failed")),
      "No space left on device: checkpoints/3.orbax-checkpoint-tmp",
    ),
    (
      OSError(errno.ENOSPC, "No space left on device", f"{W}/metrics.jsonl"),
      "No space left on device: metrics.jsonl",
    ),
    (
      OSError(errno.EDQUOT, "Disk quota exceeded", f"{W}/summary.json.tmp.12"),
      "Disk quota exceeded: summary.json.tmp.12",
    ),
    (
      OSError(errno.EROFS, "Read-only file system", f"{W}/checkpoints/7.orbax-checkpoint-tmp"),
      "Read-only file system: checkpoints/7.orbax-checkpoint-tmp",
    ),
    (
      OSError(errno.EACCES, "Permission denied", f"{W}/config.json"),
      "Permission denied: config.json",
    ),
    # not the disk's: another errno, a path outside the workdir (a sibling's name starts the same),
    # no path, XLA's out-of-memory RESOURCE_EXHAUSTED, an error the library reports as it is
    (OSError(errno.ENOENT, "No such file or directory", f"{W}/metrics.jsonl"), None),
    (OSError(errno.ENOSPC, "No space left on device", f"{W}2/metrics.jsonl"), None),
    (OSError(errno.ENOSPC, "No space left on device", "/tmp/jax_cache/x"), None),
    (OSError(errno.ENOSPC, "No space left on device"), None),
    (ValueError(ORBAX_NO_SPACE.replace(W, "/elsewhere")), None),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2G"), None),
    (errors.ConfigError(ORBAX_NO_SPACE), None),
    (ValueError("shapes (3,) and (4,) do not match"), None),
  ],
)
def test_write_failure_recognises_the_disks_errors_only(error, failure):
  assert workdir_lib.write_failure(error, W) == failure


def test_naming_gives_a_buffered_writes_error_its_file():
  with pytest.raises(OSError) as raised, workdir_lib.naming("/w/metrics.jsonl"):
    raise OSError(errno.ENOSPC, "No space left on device")
  assert raised.value.filename == "/w/metrics.jsonl"
  assert workdir_lib.write_failure(raised.value, "/w") == "No space left on device: metrics.jsonl"


def test_a_lock_record_the_disk_refuses_names_the_lock_file_and_lets_go(tmp_path, monkeypatch):
  """A disk full before the run starts: train.py's one line names run.lock (exit 2, as for any
  workdir that cannot be used), and the lock is free again."""

  def full(fd, data, offset):
    raise OSError(errno.ENOSPC, "No space left on device")

  with monkeypatch.context() as patch:
    patch.setattr(workdir_lib.os, "pwrite", full)
    with pytest.raises(OSError) as raised:
      workdir_lib.Lock.acquire(str(tmp_path))
  assert raised.value.filename == str(tmp_path / workdir_lib.LOCK_NAME)
  workdir_lib.Lock.acquire(str(tmp_path)).release()


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
  def full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(train.os, "fsync", full)
  with pytest.raises(OSError) as raised:
    train.write_json_atomically(str(tmp_path / "summary.json"), {"a": 1})
  assert os.listdir(tmp_path) == []
  assert workdir_lib.write_failure(raised.value, str(tmp_path)) == (
    f"No space left on device: summary.json.tmp.{os.getpid()}"
  )


def test_a_metrics_line_cut_short_by_a_full_disk_is_dropped_on_resume(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"round": 1}\n{"round": 2}\n{"round": 3, "train_lo')
  train.start_metrics_file(str(path), rounds_done=3)
  assert path.read_text() == '{"round": 1}\n{"round": 2}\n'


def test_the_message_is_one_line_with_the_space_and_the_checkpoint():
  error = errors.WorkdirWriteError("/w", "No space left on device: metrics.jsonl", "12.0 KiB", 2)
  assert error.exit_code == errors.EXIT_WRITE_FAILED == 74
  assert "\n" not in str(error)
  assert str(error).startswith("cannot write --workdir=/w (No space left on device: metrics.jsonl")
  assert "12.0 KiB free" in str(error) and "round 2 in /w/checkpoints" in str(error)
  left = errors.WorkdirWriteError("/w", "x", "1 bytes", None, ["6.orbax-checkpoint-tmp"])
  assert "could not remove the partial 6.orbax-checkpoint-tmp" in str(left)
  assert "no checkpoint yet" in str(left)


def test_train_py_leaves_out_the_noise_of_a_failed_save_only(tmp_path):
  """orbax's log records of the failed save and tensorstore's closed-loop tracebacks go; other
  records and unraisable errors stay."""
  import train as train_py

  w = str(tmp_path)
  records = train_py.WriteFailureRecords(w)
  record = lambda e: logging.LogRecord(
    "absl", logging.ERROR, "f.py", 1, "failed", (), (None, e, None)
  )
  assert not records.filter(record(ValueError(ORBAX_NO_SPACE.replace(W, w))))
  assert records.filter(record(ValueError("something else")))
  assert records.filter(logging.LogRecord("absl", logging.WARNING, "f.py", 1, "note", (), None))
  shown = []
  hook = train_py.quiet_closed_loops(shown.append)
  unraisable = lambda e: type("Unraisable", (), {"exc_value": e})()
  hook(unraisable(RuntimeError("Event loop is closed")))
  hook(unraisable(RuntimeError("something else")))
  assert [str(u.exc_value) for u in shown] == ["something else"]


def mount(*args) -> str | None:
  """Run mount(8); None when it worked, else why not."""
  done = subprocess.run(["mount", *args], capture_output=True, text=True)
  return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


@pytest.fixture
def small_disk(tmp_path):
  """A 4 MB tmpfs: two of the toy run's checkpoints fit, the 3rd does not. Unmounted after."""
  where = tmp_path / "disk"
  where.mkdir()
  refused = mount("-t", "tmpfs", "-o", "size=4000k", "tmpfs", str(where))
  if refused:
    pytest.skip(f"cannot mount a tmpfs here (root only): {refused}")
  try:
    yield where
  finally:
    subprocess.run(["umount", "-l", str(where)], check=True)


def stopped_on_the_disk(code: int, err: str, workdir) -> int:
  """Check the stop: exit 74, one line naming the workdir, its free space and the latest good
  checkpoint (the newest on disk), no traceback; no partial checkpoint left but those the line
  names (a read-only disk keeps them), no temporary file. Returns that checkpoint's round."""
  assert code == errors.EXIT_WRITE_FAILED, err[-3000:]
  assert "Traceback" not in err and "internal error" not in err
  lines = [line for line in err.splitlines() if "cannot write" in line]
  assert len(lines) == 1, err[-3000:]
  assert f"psops_jax: cannot write --workdir={workdir} (" in lines[0]
  assert re.search(r"with [\d.]+ (bytes|KiB|MiB|GiB) free on its filesystem\)", lines[0])
  latest = int(re.search(r"the latest good checkpoint is round (\d+) in ", lines[0])[1])
  assert latest == max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  named = re.search(r"could not remove the partial (.*) \(a rerun will\)", lines[0])
  partial = glob.glob(str(workdir / "checkpoints" / "*.orbax-checkpoint-tmp*"))
  assert sorted(os.path.basename(p) for p in partial) == (named[1].split(", ") if named else [])
  assert not glob.glob(str(workdir / "*.tmp.*"))
  return latest


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_a_rerun_with_space_resumes(small_disk):
  workdir = small_disk / "w"
  args = [*RUN, "--config.train.rounds=8"]
  code, _, err = finish(args, workdir)
  latest = stopped_on_the_disk(code, err, workdir)
  assert "(No space left on device: checkpoints/" in err
  assert latest in (1, 2)  # a 4 MB disk holds two checkpoints of the toy run
  assert mount("-o", "remount,size=64m", str(small_disk)) is None
  code, _, err = finish(args, workdir)  # the same command
  assert code == 0, err[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["resumed_from_round"] == latest and summary["rounds"] == 8
  assert [json.loads(line)["round"] for line in open(workdir / "metrics.jsonl")] == [*range(1, 9)]


def make_read_only(workdir, stage) -> str | None:
  """Put a read-only bind mount of `workdir` over it, in one step (remounting a mount that a run
  writes through is refused as busy): bound and made read-only at `stage`, then moved over."""
  refused = mount("--bind", str(workdir), str(stage))
  if refused:
    return refused
  refused = mount("-o", "remount,bind,ro", str(stage)) or mount("--move", str(stage), str(workdir))
  if refused:
    subprocess.run(["umount", str(stage)])
  return refused


@pytest.mark.slow
def test_a_workdir_made_read_only_mid_run_stops_it_and_a_rerun_resumes(tmp_path):
  workdir, stage = tmp_path / "w", tmp_path / "stage"
  stage.mkdir()
  args = [*RUN, "--config.train.rounds=60", "--config.train.checkpoint_every=2"]
  run = cli(args, workdir)
  refused = "not tried"
  try:
    wait_for_checkpoint(workdir, 2, run)
    refused = make_read_only(workdir, stage)
    _, err = run.communicate(timeout=None if refused else 120)
  finally:
    if run.poll() is None:
      run.kill()
    if refused is None:
      subprocess.run(["umount", "-l", str(workdir)], check=True)
  if refused:
    pytest.skip(f"cannot make the workdir read-only mid-run (root only): {refused}")
  latest = stopped_on_the_disk(run.returncode, err, workdir)
  assert "(Read-only file system: checkpoints/" in err
  code, _, err = finish(args, workdir)  # writable again: the same command
  assert code == 0, err[-3000:]
  assert json.loads((workdir / "summary.json").read_text())["resumed_from_round"] == latest
  assert not glob.glob(str(workdir / "checkpoints" / "*.orbax-checkpoint-tmp*"))
