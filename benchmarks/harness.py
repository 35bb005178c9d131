"""What every benchmark shares: timing callables side by side, and the record written with each
result (the command, the commit, the machine and its load).

No JAX and no torch are imported here: the timing functions take plain callables (tests run them on
hand-made ones), and `machine()` names the versions of the frameworks the process has loaded.
"""

import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time

from psops_jax import workdir  # no JAX in it

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")


def load_average() -> list:
  """The 1, 5 and 15 minute load averages of the machine (runnable processes, all users)."""
  return [round(x, 2) for x in os.getloadavg()]


# At import, i.e. when the benchmark starts: beside the load at the write, it tells whether other
# processes shared the cores while the benchmark ran.
LOAD_AT_START = load_average()


def wall_seconds() -> float:
  """A monotonic clock in seconds (what `measure` reads; tests replace it)."""
  return time.perf_counter()


def cpu_seconds() -> float:
  """CPU seconds (user + system) this process has used so far, all its threads together."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def machine() -> dict:
  """The machine, and the versions of JAX (with its backend) and torch if this process loaded them.

  Imports neither: a benchmark calls it after its measurements, when they are loaded.
  """
  info = {
    "platform": platform.platform(),
    "processor": platform.machine(),
    "cpu": workdir.machine_kind(),  # the CPU's model: XLA:CPU's speed and last bits differ by kind
    "cpus": os.cpu_count(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if "jax" in sys.modules:
    jax = sys.modules["jax"]
    info.update(backend=jax.default_backend(), jax=jax.__version__)
  if "torch" in sys.modules:
    info["torch"] = sys.modules["torch"].__version__
  return info


def command_line() -> str:
  """The command that started this process, as one would type it from the repository root."""
  script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
  return " ".join(["python", script] + sys.argv[1:])


# git pathspecs of the code a benchmark measures (its results and notes are not: the JSONs that a
# session writes before committing them would otherwise mark every later one "+modified")
MEASURED_CODE = (
  *workdir.TRAINING_CODE,
  "benchmarks",
  ":(exclude)benchmarks/results",
  ":(exclude)*.md",
)


def record() -> dict:
  """What is written with every result: the command, the commit it ran (workdir.code_version,
  "+modified" where MEASURED_CODE differs from it), the machine, the load average at the start of
  the process and now."""
  return {
    "command": command_line(),
    "code_version": workdir.code_version(MEASURED_CODE),
    "machine": machine(),
    "load_average": {"start": LOAD_AT_START, "end": load_average()},
  }


def write_result(path: str, payload: dict) -> dict:
  """Write `record()` and `payload` as one JSON object to `path`, atomically: the JSON goes to a
  temporary file in the same folder, renamed over `path` once complete, so an interrupted run
  leaves the previous result whole. Returns the object written."""
  clash = set(payload) & {"command", "code_version", "machine", "load_average"}
  if clash:
    raise ValueError(f"the payload may not hold the record's fields: {sorted(clash)}")
  result = {**record(), **payload}
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".json.tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(result, f, indent=2)
      f.write("\n")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return result


def publish(path: str, summary: dict, details: dict) -> None:
  """Write summary + details with the record (`write_result`), then print where, and the summary
  with the machine as the last line (one JSON object, for scripts that read the output)."""
  result = write_result(path, {**summary, **details})
  print(f"wrote {os.path.relpath(path)}")
  print(json.dumps({**summary, "machine": result["machine"]}), flush=True)


def spread(values) -> dict:
  """Median, quartiles, min and max of a list of numbers (4 significant digits), and their count."""
  values = sorted(values)
  if len(values) >= 2:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
  else:
    q1 = q3 = values[0]
  r = lambda x: float(f"{x:.4g}")
  return {
    "median": r(statistics.median(values)),
    "p25": r(q1),
    "p75": r(q3),
    "min": r(values[0]),
    "max": r(values[-1]),
    "n": len(values),
  }


def paired_ratio(a: list, b: list) -> dict:
  """The spread of a[i] / b[i]: two series measured in the same interleaved repetitions, compared
  repetition by repetition (a change of load during the run hits both sides of a pair)."""
  return spread([x / y for x, y in zip(a, b)])


def repeat(call, count: int, max_seconds: float = math.inf):
  """A callable that runs `call` `count` times and returns how many times it ran (so `measure`
  gives seconds per call). It stops early, after at least 2 calls, once `max_seconds` have passed:
  a block slowed down by other processes does not stretch the run."""

  def block() -> int:
    done, deadline = 0, wall_seconds() + max_seconds
    while done < count and (done < 2 or wall_seconds() < deadline):
      call()
      done += 1
    return done

  return block


def calls_for(call, seconds: float, at_least: int = 2, at_most: int = 10**6) -> int:
  """How many calls of `call` last about `seconds`: from the fastest of 3 calls after a first one
  (which may compile or fill caches), within [at_least, at_most]."""
  call()
  fastest = math.inf
  for _ in range(3):
    t0 = wall_seconds()
    call()
    fastest = min(fastest, wall_seconds() - t0)
  return max(at_least, min(at_most, math.ceil(seconds / max(fastest, 1e-9))))


def interleaved(names: list, repetitions: int, seed=None):
  """The order of the timed calls: every name once per repetition, in the given order (A B C A B C
  ...) or, with a seed, in a new random order each repetition."""
  order, rng = list(names), random.Random(seed)
  for rep in range(repetitions):
    if seed is not None:
      rng.shuffle(order)
    yield from ((rep, name) for name in order)


def measure(
  fns: dict,
  repetitions: int,
  warmup: int = 1,
  seed=None,
  setup: dict | None = None,
  pause: float = 0.0,
  slow_factor: float = math.inf,
  slow_repetitions: int = 3,
) -> dict:
  """Time the callables of `fns` side by side: `warmup` untimed calls of each, then `repetitions`
  interleaved repetitions (see `interleaved`), so that a change of the machine's load during the run
  falls on all of them alike.

  A callable may return how many operations it ran (an int, e.g. a `repeat` block): its seconds are
  then per operation. setup: {name: fn} called untimed before each call of that name. pause:
  seconds slept after each timed call. A callable whose last warm-up call took over `slow_factor`
  times the median callable's is timed in the first `slow_repetitions` repetitions only (on a loaded
  machine some, like torch's OpenMP threads, slow down 10-40x; this bounds the run's length).

  Returns {name: {"seconds", "cpu_seconds": per timed operation, in repetition order; "wall",
  "cpu": their spread; "cpu_over_wall": the median of CPU over wall seconds, the cores the process
  kept busy; "warmup_seconds"; "slow": whether it was timed in fewer repetitions}}.
  """
  if repetitions < 1:
    raise ValueError(f"repetitions must be at least 1, got {repetitions}")
  setup = setup or {}
  warm = {}
  for _ in range(warmup):
    for name, fn in fns.items():
      if name in setup:
        setup[name]()
      t0 = wall_seconds()
      fn()
      warm[name] = wall_seconds() - t0
  cutoff = slow_factor * statistics.median(warm.values()) if warm else math.inf
  slow = {name for name, seconds in warm.items() if seconds > cutoff}
  out = {name: {"seconds": [], "cpu_seconds": [], "cpu_over_wall": []} for name in fns}
  for rep, name in interleaved(list(fns), repetitions, seed):
    if name in slow and rep >= slow_repetitions:
      continue
    if name in setup:
      setup[name]()
    c0, t0 = cpu_seconds(), wall_seconds()
    ops = fns[name]()
    t1, c1 = wall_seconds(), cpu_seconds()
    ops = ops if isinstance(ops, int) and not isinstance(ops, bool) and ops > 0 else 1
    out[name]["seconds"].append((t1 - t0) / ops)
    out[name]["cpu_seconds"].append((c1 - c0) / ops)
    out[name]["cpu_over_wall"].append((c1 - c0) / max(t1 - t0, 1e-12))
    if pause:
      time.sleep(pause)
  return {
    name: {
      "seconds": t["seconds"],
      "cpu_seconds": t["cpu_seconds"],
      "wall": spread(t["seconds"]),
      "cpu": spread(t["cpu_seconds"]),
      "cpu_over_wall": round(statistics.median(t["cpu_over_wall"]), 2),
      "warmup_seconds": round(warm[name], 4) if name in warm else None,
      "slow": name in slow,
    }
    for name, t in out.items()
  }
