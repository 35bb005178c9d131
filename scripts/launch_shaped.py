"""Run a multi-process job over a shaped network link: scripts/launch_local.py inside a fresh
network namespace whose loopback is limited by a token bucket (tc tbf).

  sudo python scripts/launch_shaped.py --rate 20mbit -- --processes 2 --devices-per-process 2 \
      -- --config configs/digits_pso.py --config.num_particles=4 --workdir /tmp/shaped

Everything after the first `--` goes to launch_local.py (its own flags, then `--` and train.py's).
The namespace (`ip netns add`) has only its own loopback; every process of the job runs in it and
talks to the others over 127.0.0.1, through the shaped `lo`. Its MTU is set to 1500 so that the
bucket's burst stays above it (a burst below the MTU drops every large packet and gloo stalls).
The namespace is removed on every exit path. The link's settings reach train.py in the
environment (PSOPS_LINK), and each run's summary.json records them beside the link it measured
(psops_jax/link.py).

Needs root and iproute2's `ip` and `tc`; without them it exits 2 with a message. The kernel's tbf
shapes bandwidth only: a fixed delay per packet (netem) is not available on every kernel and is not
offered here.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_LOCAL = os.path.join(REPO, "scripts", "launch_local.py")
BAD_INPUT = 2
MTU = 1500
RATE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit)$")
SIZE = re.compile(r"^\d+(\.\d+)?(b|kb|mb)$")


def fail(message: str):
  print(f"launch_shaped.py: {message}", file=sys.stderr)
  sys.exit(BAD_INPUT)


def matching(pattern: re.Pattern, what: str):
  """An argparse type: a tc quantity that matches `pattern`."""

  def parse(text: str) -> str:
    if not pattern.match(text.lower()):
      raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
    return text.lower()

  return parse


def tc_bytes(size: str) -> float:
  """A tc size (e.g. 64kb) in bytes (tc's k is 1024)."""
  number, unit = re.match(r"^([\d.]+)(b|kb|mb)$", size).groups()
  return float(number) * {"b": 1, "kb": 1024, "mb": 1024**2}[unit]


def missing_requirement() -> str | None:
  """Why this machine cannot shape a namespace's loopback, or None."""
  if os.geteuid() != 0:
    return "needs root (network namespaces and tc): run it as root or with sudo"
  for tool in ("ip", "tc"):
    if shutil.which(tool) is None:
      return f"needs `{tool}` (Debian/Ubuntu: apt-get install iproute2)"
  return None


def run(*command: str) -> None:
  subprocess.run(command, check=True, capture_output=True, text=True)


def shape_namespace(name: str, rate: str, burst: str, limit: str, slow_start: int = 1) -> None:
  """A namespace `name` whose loopback is up, at MTU 1500, behind tbf(rate, burst, limit), with
  TCP's slow start after an idle connection on (1, Linux's default) or off (0)."""
  run("ip", "netns", "add", name)
  inside = ("ip", "netns", "exec", name)
  run(*inside, "sysctl", "-q", "-w", f"net.ipv4.tcp_slow_start_after_idle={slow_start}")
  run(*inside, "ip", "link", "set", "lo", "mtu", str(MTU), "up")
  tbf = ("tbf", "rate", rate, "burst", burst, "limit", limit)
  run(*inside, "tc", "qdisc", "add", "dev", "lo", "root", *tbf)


def remove_namespace(name: str) -> None:
  subprocess.run(("ip", "netns", "del", name), capture_output=True)


def parse_args(argv):
  parser = argparse.ArgumentParser(
    description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument(
    "--rate", required=True, type=matching(RATE, "a rate such as 20mbit, 500kbit, 1gbit")
  )
  parser.add_argument(
    "--burst",
    default="64kb",
    type=matching(SIZE, "a size such as 64kb"),
    help="bytes sent at full speed before the rate applies (> the MTU, 1500 b); default 64kb",
  )
  parser.add_argument(
    "--limit",
    default="1mb",
    type=matching(SIZE, "a size such as 1mb"),
    help="bytes that may wait in the queue; default 1mb",
  )
  parser.add_argument(
    "--slow-start-after-idle",
    type=int,
    choices=(0, 1),
    default=1,
    help="TCP's congestion window restarts after an idle connection (Linux's default 1); 0: off",
  )
  parser.add_argument("launch_args", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  if args.launch_args[:1] == ["--"]:
    args.launch_args = args.launch_args[1:]
  if tc_bytes(args.burst) <= MTU:
    parser.error(f"--burst {args.burst}: must be above the MTU ({MTU} bytes), else gloo stalls")
  if not args.launch_args:
    parser.error("pass launch_local.py's flags after --")
  return args


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  reason = missing_requirement()
  if reason:
    fail(reason)
  name = f"psops{os.getpid()}"
  link = {"rate": args.rate, "burst": args.burst, "limit": args.limit, "mtu": MTU}
  link["slow_start_after_idle"] = args.slow_start_after_idle
  env = dict(os.environ, PSOPS_LINK=json.dumps(link))
  command = ["ip", "netns", "exec", name, sys.executable, LAUNCH_LOCAL, *args.launch_args]
  previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    shape_namespace(name, args.rate, args.burst, args.limit, args.slow_start_after_idle)
    job = subprocess.Popen(command, env=env)
    forward = lambda signum, frame: job.send_signal(signum)
    for s in previous:
      signal.signal(s, forward)
    return job.wait()
  except subprocess.CalledProcessError as e:
    fail(f"could not shape the namespace: {' '.join(e.cmd)}: {e.stderr.strip()}")
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    remove_namespace(name)


if __name__ == "__main__":
  sys.exit(main())
