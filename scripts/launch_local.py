"""Run train.py as N processes on this machine, as on N hosts: JAX's multi-controller runtime with
CPU collectives over gloo, coordinator on 127.0.0.1.

  python scripts/launch_local.py --processes 2 --devices-per-process 2 -- \
      --config configs/digits_pso.py --config.num_particles=4 --workdir /tmp/two_hosts

Everything after `--` goes to every train.py process. Process 0's output is shown; process i's goes
to WORKDIR/process_i.log. SIGTERM or Ctrl-C is forwarded to every process (each checkpoints and
stops). Exits with the first non-zero exit code of the processes, or 0.
"""

import argparse
import math
import os
import signal
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def workdir_of(train_args: list[str]) -> str:
  for i, arg in enumerate(train_args):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(train_args):
      return train_args[i + 1]
  raise SystemExit("launch_local.py: pass --workdir DIR after --")


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--processes", type=positive(int), default=2)
  parser.add_argument("--devices-per-process", type=positive(int), default=2)
  parser.add_argument(
    "--timeout", type=positive(float), default=None, help="seconds before all are killed"
  )
  parser.add_argument("train_args", nargs=argparse.REMAINDER)
  args = parser.parse_args()
  train_args = [a for a in args.train_args if a != "--"]
  workdir = workdir_of(train_args)
  os.makedirs(workdir, exist_ok=True)
  address = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # each process sets its own CPU device count
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
    log = None if i == 0 else open(os.path.join(workdir, f"process_{i}.log"), "w")
    logs.append(log)
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log))

  def forward(signum, frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  codes = []
  try:
    for p in procs:
      codes.append(p.wait(timeout=args.timeout))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    raise SystemExit(f"launch_local.py: timed out after {args.timeout}s; logs in {workdir}")
  finally:
    for log in logs:
      if log:
        log.close()
  failed = [c for c in codes if c]
  if failed:
    print(f"launch_local.py: exit codes {codes}; see {workdir}/process_*.log", file=sys.stderr)
  sys.exit(failed[0] if failed else 0)


if __name__ == "__main__":
  main()
