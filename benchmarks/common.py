"""Shared pieces of the benchmarks: timing the jitted round on random data; machine facts."""

import os
import platform
import statistics
import sys
import time

INPUT_SHAPES = {
  "mlp": (8, 8, 1),
  "small_cnn": (8, 8, 1),
  "lenet5": (28, 28, 1),
  "vgg_small": (32, 32, 3),
}


def force_host_devices(count: int) -> None:
  """Before JAX is imported: ask XLA for `count` CPU devices."""
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
  ).strip()


def machine() -> dict:
  import jax

  return {
    "platform": platform.platform(),
    "processor": platform.machine(),
    "cpus": os.cpu_count(),
    "backend": jax.default_backend(),
    "jax": jax.__version__,
  }


def time_round(
  model_name: str,
  particles: int,
  devices: int,
  loop: str,
  layout: str,
  period: int,
  rounds: int,
  batch_size: int = 32,
  strategy_name: str = "pso",
  max_unroll: int = 0,
) -> dict:
  """Compile the project's round (PSO-PS sync by default, see `build_round`) and time `rounds`
  rounds after a warm-up.

  Returns compile seconds and the median milliseconds per local step of the whole swarm, and per
  particle-step (that divided by the particle count).
  """
  run, info = build_round(
    model_name,
    particles,
    devices,
    period,
    batch_size,
    strategy_name,
    loop=loop,
    layout=layout,
    probe_size=256,
    max_unroll=max_unroll,
  )
  run(0)
  times = []
  for r in range(1, rounds + 1):
    t0 = time.perf_counter()
    run(r)
    times.append(time.perf_counter() - t0)
  ms_per_step = 1000 * statistics.median(times) / period
  return {
    "model": model_name,
    "particles": particles,
    "devices": devices,
    "loop": loop,
    "layout": layout,
    "period": period,
    "batch_size": batch_size,
    "max_unroll": max_unroll,
    "compile_seconds": info["compile_seconds"],
    "ms_per_step": round(ms_per_step, 2),
    "ms_per_particle_step": round(ms_per_step / particles, 3),
  }


# --------------------------------------------------------------------------------------------------
# Helpers of benchmarks/throughput.py, and the round set-up that time_round uses.

# Training-set size of each model's data set: a particle's shard is this // particles, as in a run
# (digits: 1,438 training images in train.py's split; MNIST / Fashion-MNIST: 60,000; CIFAR-10:
# 50,000).
TRAIN_SIZES = {"mlp": 1438, "small_cnn": 1438, "lenet5": 60000, "vgg_small": 50000}


def command_line() -> str:
  """The command that started this process, as one would type it from the repository root."""
  script = os.path.relpath(
    os.path.abspath(sys.argv[0]), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  return " ".join(["python", script] + sys.argv[1:])


def spread(values) -> dict:
  """Median, quartiles, min and max of a list of numbers (rounded), and their count."""
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


def build_round(
  model_name: str,
  particles: int,
  devices: int,
  period: int,
  batch_size: int = 32,
  strategy_name: str = "pso",
  shard_size: int = 1024,
  loop: str = "unroll",
  layout: str = "unroll",
  fitness: str = "round_loss",
  probe_size: int = 1024,
  seed: int = 0,
  max_unroll: int = 0,
):
  """The project's compiled round on random uint8 data, ready to call.

  max_unroll > 0 splits an unrolled round into calls of at most that many steps plus a sync call, as
  train.max_unroll does. Returns (run, info): `run(r)` executes round r (the swarm is carried and
  donated from call to call) and blocks until it is done; info holds the compile seconds.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from psops_jax import models
  from psops_jax import swarm as swarm_lib
  from psops_jax import sync as sync_lib

  mesh = swarm_lib.make_mesh(particles, devices)
  shape = INPUT_SHAPES[model_name]
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (particles, shard_size) + shape, dtype=np.uint8)
  labels = rng.integers(0, 10, (particles, shard_size), dtype=np.int32)
  probe_images = rng.integers(0, 256, (probe_size,) + shape, dtype=np.uint8)
  probe_labels = rng.integers(0, 10, (probe_size,), dtype=np.int32)
  model = models.create(model_name)
  tx = optax.sgd(0.01, momentum=0.9)
  strategy = getattr(sync_lib, strategy_name)(axis_name=swarm_lib.AXES)
  cfg = swarm_lib.RoundConfig(
    period=period,
    batch_size=batch_size,
    fitness=fitness,
    probe_size=probe_size,
    loop=loop,
    local_layout=layout,
    max_unroll=max_unroll,
    augment=False,
    mean=(0.5,) * shape[-1],
    std=(0.25,) * shape[-1],
  )
  swarm = swarm_lib.init_swarm(
    model, tx, strategy, images[0], particles, seed, mesh, cfg.mean, cfg.std
  )
  data = swarm_lib.put_data((images, labels), (probe_images, probe_labels), mesh)
  t0 = time.perf_counter()
  round_fn = swarm_lib.compile_round(
    swarm_lib.make_round(model, tx, strategy, cfg, mesh, seed), swarm, data
  )
  compile_seconds = time.perf_counter() - t0
  state = {"swarm": swarm}

  def run(r: int):
    state["swarm"], metrics = round_fn(state["swarm"], data, jnp.int32(r))
    jax.block_until_ready((state["swarm"], metrics))

  return run, {"compile_seconds": round(compile_seconds, 2)}
