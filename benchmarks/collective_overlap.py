"""Does XLA run a collective behind independent compute in the same program? Two processes (gloo)
in a network namespace whose loopback is shaped (scripts/launch_shaped.py's namespace), one device
each; three jitted programs, each timed alone (median of --repeats calls after a warm-up):

  compute   --layers matrix products of a 300 x 300 block per device
  psum      an all-reduce of --megabytes of float32 per device over the link
  both      the two in one program, with no data dependency between them

`both` near max(compute, psum) means the collective ran behind the compute; near their sum, that
it did not. Streaming sync relies on it (psops_jax/sync/streaming_sync.py, `communicate`).

  python benchmarks/collective_overlap.py                 # 100mbit, needs root (ip netns, tc)
  python benchmarks/collective_overlap.py --rate 1gbit --layers 100

Writes benchmarks/results/collective_overlap.json (--out) with the command, machine and load.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks import harness

sys.path.insert(0, os.path.join(harness.REPO, "scripts"))
import launch_local  # noqa: E402  (scripts/ is no package)
import launch_shaped  # noqa: E402


def worker(process: int, port: int, layers: int, floats: int, repeats: int) -> dict:
  """One of the two processes: {program: median seconds}."""
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", 2, process)
  mesh = jax.make_mesh((2,), ("p",), devices=jax.devices())

  def compute(a):
    for _ in range(layers):
      a = jnp.tanh(a @ a.T / 300.0)
    return a

  programs = {
    "compute": lambda a, v: (compute(a), v),
    "psum": lambda a, v: (a, jax.lax.psum(v, "p")),
    "both": lambda a, v: (compute(a), jax.lax.psum(v, "p")),
  }
  spec = P("p")
  sharding = NamedSharding(mesh, spec)
  a = jax.make_array_from_callback((600, 300), sharding, lambda i: jnp.full((300, 300), 0.01))
  v = jax.make_array_from_callback((2 * floats,), sharding, lambda i: jnp.ones((floats,)))
  seconds = {}
  for name, body in programs.items():
    fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(spec, spec), out_specs=(spec, spec)))
    jax.block_until_ready(fn(a, v))
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(a, v))
      times.append(time.perf_counter() - t0)
    seconds[name] = statistics.median(times)
  return seconds


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--rate", default="100mbit")
  parser.add_argument("--layers", type=int, default=300)
  parser.add_argument("--megabytes", type=float, default=1.0)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--out", default=os.path.join(harness.RESULTS, "collective_overlap.json"))
  parser.add_argument("--worker", type=int, nargs=2, help=argparse.SUPPRESS)  # process, port
  args = parser.parse_args()
  floats = int(args.megabytes * 1e6 / 4)
  if args.worker:
    seconds = worker(*args.worker, args.layers, floats, args.repeats)
    if args.worker[0] == 0:
      print(json.dumps(seconds))
    return
  reason = launch_shaped.missing_requirement()
  if reason:
    sys.exit(f"collective_overlap.py: {reason}")
  name, port = f"psopsovl{os.getpid()}", launch_local.free_port()
  own = [sys.executable, os.path.abspath(__file__), "--layers", str(args.layers)]
  own += ["--megabytes", str(args.megabytes), "--repeats", str(args.repeats)]
  inside = ["ip", "netns", "exec", name]
  env = dict(os.environ, PYTHONPATH=harness.REPO)
  try:
    launch_shaped.shape_namespace(name, args.rate, "64kb", "1mb")
    other = subprocess.Popen(
      inside + own + ["--worker", "1", str(port)], env=env, stdout=subprocess.DEVNULL
    )
    first = subprocess.run(
      inside + own + ["--worker", "0", str(port)], env=env, capture_output=True, text=True
    )
    other.wait()
  finally:
    launch_shaped.remove_namespace(name)
  seconds = json.loads(first.stdout.strip().splitlines()[-1])
  serial = seconds["compute"] + seconds["psum"]
  hidden = (serial - seconds["both"]) / min(seconds["compute"], seconds["psum"])
  summary = {
    "rate": args.rate,
    "ms": {k: round(1e3 * v, 1) for k, v in seconds.items()},
    "share_of_the_shorter_hidden": round(hidden, 2),
  }
  details = {"layers": args.layers, "megabytes": args.megabytes, "repeats": args.repeats}
  harness.publish(args.out, summary, details)


if __name__ == "__main__":
  main()
