"""One command that proves psops_jax on a GPU or TPU (about 8 minutes), or at toy size on a CPU.

  python benchmarks/accelerator_check.py                 # on the accelerator JAX finds
  python benchmarks/accelerator_check.py --cpu-smoke     # every part at toy size (CI runs it)

Each part runs in its own process under its own time limit, and the check carries on after a part
fails or times out:

  tests       the scan-loop tests (tests/test_promised_paths.py -k scan) on this backend
  digits      the default digits run with train.loop=scan
  resnet20    the CIFAR-10 config on synthetic batches (data.source=synthetic) with ResNet-20,
  vgg_small   and with the VGG-style net: accuracy, compile seconds, samples/s, peak memory
  throughput  8 particles packed on one device, local_layout unroll against vmap, against a
              plain-JAX floor of the same model (one particle; 8 independent ones vmapped),
              float32 and bfloat16; samples/s of the median round (benchmarks/harness.py)

It prints a table, then one JSON line (`{"accelerator_check": ...}`) with every part's figures and
the command, the machine and its load (`harness.record()`).
"""

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks import harness
from psops_jax import host_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# part -> (time limit in seconds on an accelerator, on --cpu-smoke)
LIMITS = {
  "tests": (120, 300),
  "digits": (60, 120),
  "resnet20": (100, 240),
  "vgg_small": (80, 180),
  "throughput": (120, 240),
}  # 8 minutes in all on an accelerator
RESULT = "accelerator_check_result "


def peak_memory() -> dict:
  """Peak bytes in use on the first device (GPU/TPU), or the process's peak resident set (CPU)."""
  import jax

  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return {"peak_device_bytes": int(stats["peak_bytes_in_use"])}
  return {"peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_training(config_name: str, fields: dict, *argument: str) -> dict:
  """train_and_evaluate of a config (get_config(*argument): e.g. cifar10_pso's model, which brings
  its learning rate) with dotted `fields` set: the summary's figures, peak memory."""
  import importlib
  import tempfile

  from psops_jax import train

  config = importlib.import_module(f"configs.{config_name}").get_config(*argument)
  config.update_from_flattened_dict(fields)
  with tempfile.TemporaryDirectory() as workdir:
    summary = train.train_and_evaluate(config, workdir)
  keys = (
    "final_test_accuracy",
    "compile_seconds",
    "train_seconds",
    "samples_per_second",
    "backend",
    "num_devices",
    "steps",
  )
  return {**{k: summary[k] for k in keys}, **peak_memory()}


def cifar_fields(smoke: bool) -> dict:
  """The CIFAR-10 parts' fields on top of the config (its argument picks the model)."""
  fields = {
    "data.source": "synthetic",
    "train.loop": "scan",
    "train.eval_every": 0,
  }
  if smoke:
    return {
      **fields,
      "data.synthetic_size": 128,
      "num_particles": 2,
      "sync.period": 2,
      "train.rounds": 1,
      "train.batch_size": 4,
      "sync.pso.probe_size": 16,
    }
  return {**fields, "train.rounds": 20, "train.log_every": 10}  # 320 steps of the real config


def timed_rounds(run, rounds: int, samples_per_round: int, compile_seconds: float) -> dict:
  """Compile seconds, and samples/s of the median of `rounds` calls of `run` (one round each,
  waited for) after a warm-up call."""
  seconds = harness.measure({"round": run}, rounds)["round"]["wall"]["median"]
  return {
    "compile_seconds": round(compile_seconds, 2),
    "samples_per_second": round(samples_per_round / seconds, 1),
  }


def time_swarm(model, dtype, layout, particles, period, rounds, batch_size) -> dict:
  """Samples/s of the project's round: `particles` on one device, averaging sync, on synthetic
  CIFAR-10 images (augmented, as a CIFAR-10 run is)."""
  from benchmarks import common

  run, info = common.build_round(
    model,
    particles,
    1,
    period,
    batch_size=batch_size,
    strategy_name="average",
    shard_size=2048,
    loop="scan",
    layout=layout,
    dtype=dtype,
    data_name="cifar10",
  )
  return timed_rounds(run, rounds, period * batch_size * particles, info["compile_seconds"])


def time_floor(model, dtype, particles, period, rounds, batch_size) -> dict:
  """Samples/s of plain JAX: a jitted lax.scan of `period` SGD steps on random batches of device-
  resident data, one model (particles=1) or `particles` independent models vmapped; no sync, no
  augmentation, no bookkeeping: the floor the swarm's round is measured against."""
  import jax
  import jax.numpy as jnp
  import optax

  from psops_jax import data as data_lib
  from psops_jax import models, tasks
  from psops_jax import swarm as swarm_lib

  net, tx = models.create(model, dtype=dtype), optax.sgd(0.01, momentum=0.9)
  images, labels, _, _ = data_lib.load_synthetic("cifar10", 2048, 0)
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  mean, std = data_lib.NORMALIZATION["cifar10"]

  def init(key):
    variables = net.init(key, swarm_lib.normalize(images[:1], mean, std))
    params = variables["params"]
    return params, variables.get("batch_stats", {}), tx.init(params)

  def loss(params, stats, x, y):
    logits, stats = swarm_lib.apply_model(
      net, params, stats, swarm_lib.normalize(x, mean, std), True
    )
    return tasks.cross_entropy(logits, y), stats

  def steps(state, key):
    def step(state, k):
      params, stats, opt = state
      idx = jax.random.randint(k, (batch_size,), 0, images.shape[0])
      (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(
        params, stats, images[idx], labels[idx]
      )
      updates, opt = tx.update(grads, opt, params)
      return (optax.apply_updates(params, updates), stats, opt), value

    return jax.lax.scan(step, state, jax.random.split(key, period))

  keys = jax.random.split(jax.random.key(0), particles)
  if particles == 1:
    state, run = init(keys[0]), jax.jit(steps, donate_argnums=0)
    key_of = lambda r: jax.random.key(r)
  else:
    state, run = jax.vmap(init)(keys), jax.jit(jax.vmap(steps), donate_argnums=0)
    key_of = lambda r: jax.random.split(jax.random.key(r), particles)
  t0 = time.perf_counter()
  run = run.lower(state, key_of(0)).compile()
  compile_seconds = time.perf_counter() - t0
  held, index = [state], itertools.count()

  def run_round():
    held[0], values = run(held[0], key_of(next(index)))
    jax.block_until_ready((held[0], values))

  return timed_rounds(run_round, rounds, period * batch_size * particles, compile_seconds)


def throughput(smoke: bool) -> dict:
  """Every layout and floor in float32 and bfloat16; the faster layout per dtype."""
  model, particles, period, rounds, batch = (
    ("mlp", 2, 2, 1, 8) if smoke else ("resnet20", 8, 16, 5, 32)
  )
  rows = {}
  for dtype in ("float32", "bfloat16"):
    for layout in ("unroll", "vmap"):
      rows[f"swarm_{layout}_{dtype}"] = time_swarm(
        model, dtype, layout, particles, period, rounds, batch
      )
    rows[f"floor_1_{dtype}"] = time_floor(model, dtype, 1, period, rounds, batch)
    rows[f"floor_{particles}_vmap_{dtype}"] = time_floor(
      model, dtype, particles, period, rounds, batch
    )
    faster = max(("unroll", "vmap"), key=lambda l: rows[f"swarm_{l}_{dtype}"]["samples_per_second"])
    rows[f"faster_layout_{dtype}"] = faster
  return {
    "model": model,
    "particles_on_one_device": particles,
    "period": period,
    "batch_size": batch,
    **rows,
  }


def run_part(part: str, smoke: bool) -> dict:
  """One part, in this process (the parent starts one process per part)."""
  if part == "digits":
    fields = {"train.loop": "scan"}
    if smoke:
      fields.update({"train.rounds": 2, "num_particles": 2, "sync.pso.probe_size": 64})
    return run_training("digits_pso", fields)
  if part in ("resnet20", "vgg_small"):
    return run_training("cifar10_pso", cifar_fields(smoke), part)
  if part == "throughput":
    return throughput(smoke)
  raise ValueError(part)


def tests_command(smoke: bool) -> list[str]:
  """The `tests` part: the scan-loop tests (only the averaging one with --cpu-smoke)."""
  return [
    sys.executable,
    "-m",
    "pytest",
    "-q",
    "-p",
    "no:cacheprovider",
    os.path.join(REPO, "tests", "test_promised_paths.py"),
    "-k",
    "scan and average" if smoke else "scan",
  ]


def run_tests(smoke: bool, env: dict, limit: int) -> dict:
  command = tests_command(smoke)
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
  last = (done.stdout.strip().splitlines() or [""])[-1]
  if done.returncode:
    raise RuntimeError(f"pytest exit {done.returncode}: {last}")
  return {"pytest": last}


def child_env(smoke: bool) -> dict:
  env = dict(os.environ)
  if smoke:  # 8 virtual CPU devices, as the tests use
    env["JAX_PLATFORMS"] = "cpu"
    flags = host_devices.without_device_count(env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = host_devices.with_device_count(flags, 8)
  else:
    env.setdefault("JAX_PLATFORMS", "")  # the tests' conftest would pick the CPU otherwise
  return env


def run_isolated(part: str, smoke: bool) -> dict:
  """The part in its own process under its time limit: {"status", "seconds", figures or error}."""
  limit = LIMITS[part][1 if smoke else 0]
  env = child_env(smoke)
  t0 = time.perf_counter()
  try:
    if part == "tests":
      figures = run_tests(smoke, env, limit)
    else:
      command = [sys.executable, os.path.abspath(__file__), "--part", part] + (
        ["--cpu-smoke"] if smoke else []
      )
      done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit
      )
      lines = [l for l in done.stdout.splitlines() if l.startswith(RESULT)]
      if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit {done.returncode}: {tail}")
      figures = json.loads(lines[-1][len(RESULT) :])
    status = "ok"
  except subprocess.TimeoutExpired:
    status, figures = "timeout", {"error": f"over its limit of {limit} s"}
  except Exception as e:  # a failed part is reported, and the check goes on
    status, figures = "failed", {"error": str(e)[-300:]}
  return {"status": status, "seconds": round(time.perf_counter() - t0, 1), **figures}


def table(results: dict) -> str:
  """One line per part: status, seconds and its main figures."""
  lines = [f"{'part':<11} {'status':<8} {'seconds':>8}  figures"]
  for part, r in results.items():
    shown = {k: v for k, v in r.items() if k not in ("status", "seconds")}
    if part == "throughput" and r["status"] == "ok":
      shown = {k: (v["samples_per_second"] if isinstance(v, dict) else v) for k, v in shown.items()}
    lines.append(
      f"{part:<11} {r['status']:<8} {r['seconds']:>8}  "
      + ", ".join(f"{k}={v}" for k, v in shown.items())
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cpu-smoke", action="store_true", help="every part at toy size on CPU")
  parser.add_argument("--parts", nargs="+", choices=tuple(LIMITS), default=list(LIMITS))
  parser.add_argument("--part", choices=tuple(LIMITS), help=argparse.SUPPRESS)  # child process
  args = parser.parse_args()
  if args.part:
    print(RESULT + json.dumps(run_part(args.part, args.cpu_smoke)), flush=True)
    return
  results = {}
  for part in args.parts:
    print(f"accelerator_check: {part} ...", flush=True)
    results[part] = run_isolated(part, args.cpu_smoke)
  print(table(results))
  record = {"mode": "cpu-smoke" if args.cpu_smoke else "accelerator", **harness.record()}
  record["parts"] = results
  print(json.dumps({"accelerator_check": record}), flush=True)
  sys.exit(0 if all(r["status"] == "ok" for r in results.values()) else 1)


if __name__ == "__main__":
  main()
