"""Run train.py as N processes on this machine, as on N hosts: JAX's multi-controller runtime with
CPU collectives over gloo, coordinator on 127.0.0.1.

  python scripts/launch_local.py --processes 2 --devices-per-process 2 [--max-restarts 1] -- \
      --config configs/digits_pso.py --config.num_particles=4 --workdir /tmp/two_hosts

Everything after `--` goes to every train.py process. Process 0's output is shown; process i's goes
to WORKDIR/process_i.log (appended to on a restart). SIGTERM or Ctrl-C is forwarded to every process
(each checkpoints and stops).

When a process dies, the others exit on their own with code 69 (psops_jax/peers.py); any still
running GRACE_S seconds after the first abnormal exit is killed, saying so. A lost process (killed
by a signal, or exit 69, and no process reporting an error of its own) is a loss: with
--max-restarts K, all N processes are started again, up to K times, on a fresh coordinator port, and
the run resumes from its newest checkpoint. Exits with the first non-zero exit code of the last
start's processes (a process killed by a signal: 128 + the signal), or 0.
"""

import argparse
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from psops_jax import errors, host_devices  # noqa: E402  (no JAX in them)

# How long the other processes get to exit on their own after the first abnormal exit: they notice
# a lost peer within about peers.HEARTBEAT_TIMEOUT_S + 2 s, then report it and exit.
GRACE_S = 30.0


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def positive(kind):
  """An argparse type: a finite number of `kind` (int or float) > 0."""

  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      value = None
    if value is None or not math.isfinite(value) or value <= 0:
      name = "an integer" if kind is int else "a finite number"
      raise argparse.ArgumentTypeError(f"{text!r}: must be {name} > 0")
    return value

  return parse


def non_negative_int(text: str) -> int:
  """An argparse type: an integer >= 0."""
  if not text.isdigit():
    raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 0")
  return int(text)


def workdir_of(train_args: list[str]) -> str:
  for i, arg in enumerate(train_args):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(train_args):
      return train_args[i + 1]
  raise SystemExit("launch_local.py: pass --workdir DIR after --")


def describe(code: int) -> str:
  """A process's exit status in words: `exit 69 (...)`, `killed by SIGKILL`."""
  if code < 0:
    return f"killed by {signal.Signals(-code).name}"
  meaning = re.split(r":| \(", dict(errors.EXIT_CODES).get(code, ""))[0]
  return f"exit {code}" + (f" ({meaning})" if meaning else "")


def is_loss(codes: list[int]) -> bool:
  """Whether a start failed because processes were lost, not because of the run itself: some
  process failed, and each failed one was killed by a signal or exited EXIT_WORKER_LOST (a bad
  input, a bug, a divergence or a preemption would only happen again)."""
  failed = [c for c in codes if c]
  return bool(failed) and all(c < 0 or c == errors.EXIT_WORKER_LOST for c in failed)


def start(args, train_args: list[str], workdir: str, attempt: int) -> tuple[list, list]:
  """Start the N train.py processes on a fresh coordinator port: (processes, their log files)."""
  address = f"127.0.0.1:{free_port()}"
  env = dict(host_devices.child_environment(), JAX_PLATFORMS="cpu")  # each sets its own count
  procs, logs = [], []
  for i in range(args.processes):
    cmd = [
      sys.executable,
      os.path.join(REPO, "train.py"),
      *train_args,
      f"--coordinator_address={address}",
      f"--num_processes={args.processes}",
      f"--process_id={i}",
      f"--local_cpu_devices={args.devices_per_process}",
    ]
    log = None
    if i > 0:
      log = open(os.path.join(workdir, f"process_{i}.log"), "a" if attempt else "w")
      if attempt:
        log.write(f"\n--- launch_local.py: restart {attempt} ---\n")
        log.flush()
    logs.append(log)
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log))
  return procs, logs


def say(message: str) -> None:
  print(f"launch_local.py: {message}", file=sys.stderr, flush=True)


def wait_all(procs: list, deadline: float | None) -> list[int]:
  """The processes' exit codes. After the first abnormal exit the others get GRACE_S seconds to
  exit on their own, then are killed; at the deadline every process is killed (SystemExit)."""
  first_failure = None
  while None in [p.poll() for p in procs]:  # every process polled (any() would stop at one)
    now = time.monotonic()
    failed = [i for i, p in enumerate(procs) if p.returncode]
    if failed and first_failure is None:
      first_failure = now
      i = failed[0]
      say(f"process {i} {describe(procs[i].returncode)}; the others get {GRACE_S:.0f}s to stop")
    if first_failure is not None and now - first_failure > GRACE_S:
      for i, p in enumerate(procs):
        if p.poll() is None:
          say(f"process {i} still runs {GRACE_S:.0f}s after the first failure: killing it")
          p.kill()
    if deadline is not None and now > deadline:
      for p in procs:
        p.kill()
      raise SystemExit("launch_local.py: timed out; see the process logs")
    time.sleep(0.1)
  return [p.returncode for p in procs]


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--processes", type=positive(int), default=2)
  parser.add_argument("--devices-per-process", type=positive(int), default=2)
  parser.add_argument(
    "--timeout", type=positive(float), default=None, help="seconds before all are killed"
  )
  parser.add_argument(
    "--max-restarts",
    type=non_negative_int,
    default=0,
    help="after a lost process, start all processes again (resuming) up to this many times",
  )
  parser.add_argument("train_args", nargs=argparse.REMAINDER)
  args = parser.parse_args()
  train_args = [a for a in args.train_args if a != "--"]
  workdir = workdir_of(train_args)
  os.makedirs(workdir, exist_ok=True)
  deadline = time.monotonic() + args.timeout if args.timeout else None
  stopping = []  # a signal came: no restart
  procs = []

  def forward(signum, frame):
    stopping.append(signum)
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  for attempt in range(args.max_restarts + 1):
    procs[:], logs = start(args, train_args, workdir, attempt)
    try:
      codes = wait_all(procs, deadline)
    finally:
      for log in logs:
        if log:
          log.close()
    if not is_loss(codes) or stopping or attempt == args.max_restarts:
      break
    lost = ", ".join(f"process {i} {describe(c)}" for i, c in enumerate(codes) if c)
    say(
      f"lost a process ({lost}); restart {attempt + 1} of {args.max_restarts}: starting "
      f"{args.processes} processes again, resuming from the newest checkpoint in {workdir}"
    )
  failed = [c if c > 0 else 128 - c for c in codes if c]
  if failed:
    ended = ", ".join(f"process {i} {describe(c)}" for i, c in enumerate(codes))
    say(f"{ended}; see {workdir}/process_*.log")
  sys.exit(failed[0] if failed else 0)


if __name__ == "__main__":
  main()
