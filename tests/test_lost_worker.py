"""A lost worker: kill -9 of a non-zero process of a 2-process run at a random round. The other
process names it, the round and the checkpoint in one line and exits with code 69 well within 30 s;
launch_local.py --max-restarts 1 starts both again, and the run resumes from that checkpoint and
ends with the weights of an uninterrupted run. Real processes on loopback. Also: the lost-peer
errors as gloo and the coordination service raised them here, and the launcher's rule for a
restart."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import pytest
import toy_runs

from psops_jax import errors, host_devices, peers
from scripts import launch_local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 24
ARGS = toy_runs.TINY + [f"--config.train.rounds={ROUNDS}", "--config.train.checkpoint_every=4"]
ENV = host_devices.child_environment()  # train.py sets its own


def children(pid: int) -> dict[int, str]:
  """{pid: command line} of the processes whose parent is `pid` (Linux /proc)."""
  found = {}
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
      with open(f"/proc/{entry}/cmdline") as f:
        command = f.read().replace("\0", " ")
    except (OSError, ValueError, IndexError):
      continue
    if parent == pid:
      found[int(entry)] = command
  return found


def rounds_logged(workdir) -> int:
  try:
    return len((workdir / "metrics.jsonl").read_text().splitlines())
  except FileNotFoundError:
    return 0


def timed_lines(stream, lines: list) -> threading.Thread:
  """A thread that appends (time.monotonic(), line) for each line of `stream`."""

  def read():
    for line in stream:
      lines.append((time.monotonic(), line.rstrip("\n")))

  thread = threading.Thread(target=read, daemon=True)
  thread.start()
  return thread


@pytest.mark.slow  # real processes, one of them killed
def test_a_killed_worker_is_named_and_the_restarted_run_ends_as_an_uninterrupted_one(tmp_path):
  kill_after = random.Random(69).randint(9, ROUNDS - 4)  # rounds logged before the kill
  reference = subprocess.run(
    [sys.executable, "train.py", *ARGS, "--workdir", str(tmp_path / "whole")],
    cwd=REPO,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=200,
  )  # 1 process x 4 devices: bit for bit 2 x 2 (test_checkpoint.py)
  assert reference.returncode == 0, reference.stderr[-2000:]
  workdir = tmp_path / "killed"
  command = [sys.executable, "scripts/launch_local.py", "--processes", "2"]
  command += ["--devices-per-process", "2", "--max-restarts", "1", "--timeout", "250", "--"]
  launcher = subprocess.Popen(
    [*command, *ARGS, "--workdir", str(workdir)],
    cwd=REPO,
    env=ENV,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  lines = []
  reader = timed_lines(launcher.stderr, lines)
  deadline = time.monotonic() + 150
  while rounds_logged(workdir) < kill_after:
    assert launcher.poll() is None and time.monotonic() < deadline, lines[-30:]
    time.sleep(0.02)
  victim = next(p for p, c in children(launcher.pid).items() if "--process_id=1" in c)
  os.kill(victim, signal.SIGKILL)
  killed_at = time.monotonic()
  assert launcher.wait(timeout=250) == 0, lines[-30:]
  reader.join(10)
  text = "\n".join(line for _, line in lines)
  lost = re.search(
    r"psops_jax: lost process 1 of this multi-process run at round (\d+) .*rerun the same "
    r"command to (resume from the checkpoint after round (\d+) in "
    rf"{workdir}/checkpoints|start from round 0)",
    text,
  )
  assert lost, text[-3000:]
  at_round, checkpoint = int(lost[1]), int(lost[3] or 0)
  assert kill_after <= at_round and checkpoint <= at_round and checkpoint % 4 == 0
  assert checkpoint >= 4 * (kill_after // 4 - 1) > 0  # a save waits for the one before it
  assert "launch_local.py: process 1 killed by SIGKILL" in text and "killing it" not in text
  restarted = next(t for t, line in lines if "restart 1 of 1" in line)
  assert restarted - killed_at < peers.HEARTBEAT_TIMEOUT_S + 10  # every process had exited
  summary = json.loads((workdir / "summary.json").read_text())
  whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
  assert summary["resumed_from_round"] == checkpoint and summary["num_processes"] == 2
  assert summary["params_fingerprint"] == whole["params_fingerprint"]
  rounds = [
    json.loads(line)["round"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
  ]
  assert rounds == list(range(1, ROUNDS + 1))


# What a survivor's collective raised here when its peer was killed (a ValueError where a later
# computation is given the failed one's output), and the coordination service's verdicts.
GLOO = "UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:538] Read error "
LOST_PEER_ERRORS = [
  jax.errors.JaxRuntimeError(GLOO + "[127.0.0.1]:15260: Connection reset by peer"),
  ValueError(
    GLOO.replace("AllGather", "all-reduce") + "[127.0.0.1]:26273: Connection reset by peer"
  ),
  jax.errors.JaxRuntimeError(
    "INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout."
  ),
]
OTHER_ERRORS = [
  RuntimeError(GLOO + "[127.0.0.1]:15260: Connection reset by peer"),  # not raised by JAX
  jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1000000 bytes"),
  ValueError("UNKNOWN: Gloo AllGather failed: [gloo/context.cc] mismatched sizes"),
]


@pytest.mark.parametrize("error", LOST_PEER_ERRORS + OTHER_ERRORS, ids=repr)
def test_the_lost_peer_errors_are_recognised_and_no_others(error):
  assert peers.is_lost_peer_error(error) == (error in LOST_PEER_ERRORS)


def test_the_launcher_restarts_after_a_loss_only():
  """A process killed by a signal, or exit 69, with no error of the run's own, is a loss."""
  assert launch_local.is_loss([errors.EXIT_WORKER_LOST, -signal.SIGKILL])
  assert launch_local.is_loss([-signal.SIGKILL, -signal.SIGABRT])  # process 0 (the service) lost
  for codes in ([0, 0], [1, 69], [errors.EXIT_PREEMPTED] * 2, [errors.EXIT_BAD_INPUT, 69]):
    assert not launch_local.is_loss(codes), codes
  assert launch_local.describe(-signal.SIGKILL) == "killed by SIGKILL"
  assert launch_local.describe(69) == "exit 69 (a process of a multi-process run was lost)"
