"""The workdir lock: one run per workdir, a dead run's lock taken over, a lock handed to a child;
and two real train.py runs on one workdir."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import toy_runs

from psops_jax import host_devices
from psops_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = toy_runs.TINY


def dead_pid() -> int:
  """The pid of a process that has ended."""
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def holder_of(workdir) -> dict | None:
  """The record in workdir's lock file, or None while it is empty or absent."""
  path = os.path.join(workdir, workdir_lib.LOCK_NAME)
  text = open(path).read() if os.path.exists(path) else ""
  return json.loads(text) if text.strip() else None


def test_a_held_lock_refuses_a_second_holder_and_is_cleared_on_release(tmp_path, capsys):
  workdir = str(tmp_path / "w")
  with workdir_lib.Lock.acquire(workdir):  # creates the workdir
    assert holder_of(workdir)["pid"] == os.getpid()
    assert holder_of(workdir)["host"] == socket.gethostname()
    pid, host = os.getpid(), socket.gethostname()
    with pytest.raises(
      workdir_lib.WorkdirBusy,
      match=rf"(?s)in use by another run: pid {pid} on "
      rf"host {host}.*kill {pid}.*another --workdir",
    ):
      workdir_lib.Lock.acquire(workdir)  # another open file: flock refuses it, even in-process
  assert holder_of(workdir) is None
  workdir_lib.Lock.acquire(workdir).release()
  assert "took over" not in capsys.readouterr().err  # released cleanly: nothing to take over


def test_the_lock_of_a_run_that_is_gone_is_taken_over_and_said(tmp_path, capsys):
  gone = {"host": socket.gethostname(), "pid": dead_pid(), "started": "earlier", "command": "x"}
  (tmp_path / workdir_lib.LOCK_NAME).write_text(json.dumps(gone))
  with workdir_lib.Lock.acquire(str(tmp_path)):
    assert holder_of(tmp_path)["pid"] == os.getpid()
  err = capsys.readouterr().err
  assert f"took over the lock of {tmp_path} left by pid {gone['pid']}" in err
  assert "that run is gone" in err


def test_a_lock_handed_to_a_child_process_is_adopted_and_stays_held(tmp_path):
  adopt = (
    "import sys; from psops_jax import workdir; "
    "workdir.Lock.acquire(sys.argv[1]).release(); print('adopted')"
  )
  child = [sys.executable, "-c", adopt, str(tmp_path)]
  with workdir_lib.Lock.acquire(str(tmp_path)) as lock:
    handed = subprocess.run(
      child,
      cwd=REPO,
      env=os.environ | lock.child_env(),
      pass_fds=(lock.fd,),
      capture_output=True,
      text=True,
      timeout=60,
    )
    assert handed.returncode == 0 and "adopted" in handed.stdout, handed.stderr
    stranger = subprocess.run(child, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert stranger.returncode != 0 and "WorkdirBusy" in stranger.stderr
    with pytest.raises(workdir_lib.WorkdirBusy):  # the child's release left it ours
      workdir_lib.Lock.acquire(str(tmp_path))
    assert holder_of(tmp_path)["pid"] == os.getpid()


def test_hold_stops_every_process_when_one_cannot_use_the_workdir(tmp_path):
  workdir = str(tmp_path / "w")
  with pytest.raises(workdir_lib.WorkdirError, match="another process of this run cannot use it"):
    with workdir_lib.hold(workdir, main=True, agree=lambda ok: False):
      pass
  with workdir_lib.Lock.acquire(workdir):  # the refused hold released the lock it had taken
    with workdir_lib.hold(workdir, main=False) as lock:  # process i > 0 takes no lock
      assert lock is None
  (tmp_path / "file").write_text("")
  with pytest.raises(workdir_lib.WorkdirError, match="is a file"):
    with workdir_lib.hold(str(tmp_path / "file")):
      pass


@pytest.mark.slow
def test_a_second_train_py_on_a_live_runs_workdir_is_refused(tmp_path):
  """A real run holds the workdir; a second one is refused and names it; once the first is killed
  (-9, no chance to release), its lock is free and says who left it."""
  env = host_devices.child_environment()
  command = [sys.executable, "train.py", *TINY, "--workdir", str(tmp_path)]
  first = subprocess.Popen(
    command + ["--config.train.rounds=100000", "--config.train.checkpoint_every=100000"],
    cwd=REPO,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.time() + 120
    while holder_of(tmp_path) is None:
      assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
      time.sleep(0.1)
    t0 = time.time()
    second = subprocess.run(
      command + ["--config.train.rounds=2"],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
    )
    refused_in = time.time() - t0
    assert first.poll() is None, "the first run ended before the second one was refused"
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
  assert second.returncode == 2, second.stderr[-2000:]
  assert (
    f"--workdir={tmp_path} is in use by another run: pid {first.pid} on host {socket.gethostname()}"
  ) in second.stderr
  assert f"kill {first.pid}" in second.stderr and "Traceback" not in second.stderr
  assert not (tmp_path / "summary.json").exists()
  assert refused_in < 60  # before any compilation
  assert holder_of(tmp_path)["pid"] == first.pid  # left behind by kill -9 ...
  with workdir_lib.Lock.acquire(str(tmp_path)):  # ... but free: the kernel dropped the flock
    pass


def test_training_code_leaves_out_the_clock_and_the_workdir_module_only():
  """edc8e8b and b6ea831 differ, within psops_jax/ and train.py, in exactly the NOT_TRAINING files
  (git says so): one training code. c7b3e18 -> edc8e8b changed the sync code: another."""
  commits = ("edc8e8b69dcaab0ecbfc440f4d8c7e39bec712c8", "b6ea831de906e5bd0912f1fa10cbb316f0b21e29")
  if any(workdir_lib._git("cat-file", "-e", c) is None for c in (*commits, "c7b3e18")):
    pytest.skip("needs this repository's history (a shallow clone lacks it)")
  changed = workdir_lib._git("diff", "--name-only", *commits, "--", *workdir_lib.TRAINING_CODE)
  assert set(changed.split()) == set(workdir_lib.NOT_TRAINING)
  first, second = (workdir_lib.training_code(c) for c in commits)
  assert first is not None and first == second
  assert workdir_lib.training_code("c7b3e18") not in (None, first)
  assert workdir_lib.training_code("no-such-commit") is None
  assert workdir_lib.training_code(commits[0] + "+modified") is None


def test_a_run_is_modified_only_where_its_training_code_differs(tmp_path, monkeypatch):
  """In a clone whose checkout holds only psops_jax/ and train.py (every other tracked file
  missing, so the checkout differs), the whole checkout is "+modified" and the training code is
  not; a change to a NOT_TRAINING file leaves it so, a change to the sync code does not."""
  head = workdir_lib._git("rev-parse", "HEAD")
  if head is None:
    pytest.skip("needs this package's git checkout")
  clone = tmp_path / "clone"
  subprocess.run(["git", "clone", "-q", "--no-checkout", REPO, str(clone)], check=True)
  subprocess.run(
    ["git", "-C", str(clone), "checkout", "-q", "HEAD", "--", "psops_jax", "train.py"], check=True
  )
  monkeypatch.setattr(workdir_lib, "CHECKOUT", str(clone))
  versions = lambda: (
    workdir_lib.code_version(),
    workdir_lib.code_version(workdir_lib.TRAINING_PATHS),
    workdir_lib.training_code(),
  )
  code = workdir_lib.training_code(head)
  assert code is not None and versions() == (head + "+modified", head, code)
  with open(clone / "psops_jax" / "clock.py", "a") as f:
    f.write("\n# a change to the clock changes no run's numbers\n")
  assert versions() == (head + "+modified", head, code)
  with open(clone / "psops_jax" / "sync" / "__init__.py", "a") as f:
    f.write("\n# a change to the sync code does\n")
  assert versions() == (head + "+modified", head + "+modified", None)
