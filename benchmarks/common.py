"""What the round benchmarks build: the project's jitted round and a plain-JAX floor for one
particle, on random data, and the options they share.

JAX is imported inside the functions: a script first asks XLA for its virtual CPU devices
(`force_host_devices`), which must happen before JAX is imported.
"""

import argparse
import itertools
import os
import statistics
import time

from benchmarks import harness
from psops_jax import data  # no JAX in it

# The data set each benchmarked model trains on in a run, whose image shape and training-set size
# (psops_jax.data) the benchmarks use: a particle's shard is the training set // particles.
DATA_SETS = {
  "mlp": "digits",
  "small_cnn": "digits",
  "lenet5": "fashion_mnist",
  "vgg_small": "cifar10",
}
INPUT_SHAPES = {model: data.SHAPES[name] for model, name in DATA_SETS.items()}
TRAIN_SIZES = {model: data.TRAIN_SIZES[name] for model, name in DATA_SETS.items()}


def force_host_devices(count: int) -> None:
  """Before JAX is imported: ask XLA for `count` CPU devices."""
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
  ).strip()


def normalization(channels: int) -> tuple:
  """(mean, std) per channel of every benchmark's inputs (the speed does not depend on them)."""
  return (0.5,) * channels, (0.25,) * channels


def optimizer():
  """Every benchmark's optimizer: SGD with momentum, as the project's configs use."""
  import optax

  return optax.sgd(0.01, momentum=0.9)


def samples(particles: int, period: int, batch_size: int) -> int:
  """Training examples one round of the swarm processes."""
  return particles * period * batch_size


def random_shard(model_name: str, size: int, seed: int = 1) -> tuple:
  """`size` random uint8 images of the model's input shape and their int32 labels (the speed does
  not depend on the pixel values)."""
  import numpy as np

  rng = np.random.RandomState(seed)
  images = rng.randint(0, 256, (size,) + INPUT_SHAPES[model_name]).astype(np.uint8)
  labels = rng.randint(0, 10, (size,)).astype(np.int32)
  return images, labels


def run_config(
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
  dtype: str = "float32",
  data_name: str | None = None,
):
  """The run config of a benchmarked round: the default config with these settings, synthetic
  images of the model's data set (or `data_name`'s; `shard_size` per particle: the speed does not
  depend on the pixels), and every benchmark's optimizer (SGD 0.01, momentum 0.9)."""
  from configs import digits_pso

  config = digits_pso.get_config()
  config.update_from_flattened_dict(
    {
      "seed": seed,
      "num_particles": particles,
      "num_devices": devices,
      "model.name": model_name,
      "model.dtype": dtype,
      "data.name": data_name or DATA_SETS[model_name],
      "data.source": "synthetic",
      "data.synthetic_size": particles * shard_size,
      "optimizer.learning_rate": 0.01,
      "optimizer.momentum": 0.9,
      "sync.strategy": strategy_name,
      "sync.period": period,
      "sync.pso.fitness": fitness,
      "sync.pso.probe_size": probe_size,
      "train.batch_size": batch_size,
      "train.loop": loop,
      "train.local_layout": layout,
      "train.max_unroll": max_unroll,
    }
  )
  return config


def build_round(
  model_name: str,
  particles: int,
  devices: int,
  period: int,
  batch_size: int = 32,
  strategy_name: str = "pso",
  shard_size: int = 1024,
  **settings,
):
  """The project's compiled round, built by psops_jax.run.build_run from `run_config(...)`
  (same arguments, in the same order), ready to call.

  max_unroll > 0 splits an unrolled round into calls of at most that many steps plus a sync call, as
  train.max_unroll does. Returns (run, info): each `run()` executes the next round (the swarm is
  carried and donated from call to call) and blocks until it is done; info holds the compile
  seconds.
  """
  import jax
  import jax.numpy as jnp

  from psops_jax import run as run_lib

  config = run_config(
    model_name, particles, devices, period, batch_size, strategy_name, shard_size, **settings
  )
  built = run_lib.build_run(config)
  t0 = time.perf_counter()
  round_fn = run_lib.swarm_lib.compile_round(built.round_fn, built.swarm, built.data)
  compile_seconds = time.perf_counter() - t0
  state, rounds = {"swarm": built.swarm}, itertools.count()

  def run():
    state["swarm"], metrics = round_fn(state["swarm"], built.data, jnp.int32(next(rounds)))
    jax.block_until_ready((state["swarm"], metrics))

  return run, {"compile_seconds": round(compile_seconds, 2)}


ROUND_KEYS = ("particles", "devices", "loop", "layout", "period", "batch_size", "max_unroll")


def time_round(model: str, rounds: int, **settings) -> dict:
  """Compile the project's round (`build_round` with these settings; PSO-PS sync and a 256-example
  probe by default) and time `rounds` rounds after a warm-up.

  Returns the settings of ROUND_KEYS, the compile seconds and the median milliseconds per local step
  of the whole swarm, and per particle-step (that divided by the particle count).
  """
  defaults = {"loop": "unroll", "layout": "unroll", "batch_size": 32, "max_unroll": 0}
  settings = {**defaults, "probe_size": 256, **settings}
  run, info = build_round(model, **settings)
  seconds = harness.measure({"round": run}, rounds)["round"]["seconds"]
  ms_per_step = 1000 * statistics.median(seconds) / settings["period"]
  return {
    "model": model,
    **{k: settings[k] for k in ROUND_KEYS},
    "compile_seconds": info["compile_seconds"],
    "ms_per_step": round(ms_per_step, 2),
    "ms_per_particle_step": round(ms_per_step / settings["particles"], 3),
  }


def build_floor(model, images, labels, period: int, batch_size: int, max_unroll: int = 0):
  """One particle's local steps in plain JAX on the first device: no mesh, no sharding, no sync.

  Variants, each a callable that runs the next round of `period` steps (carrying params and
  optimizer state, donated) and blocks: "step_loop" (a jitted step in a Python loop),
  "unrolled/slice" (one jitted function of the unrolled steps, each batch the next slice of the
  shard), "unrolled/once" (the same drawing the batches as the framework does:
  `swarm.round_batch_indices`), "unrolled/per_step" (as the framework did before:
  `swarm.batch_indices` at every step) and, when the period exceeds max_unroll, "unrolled/chunks"
  (calls of max_unroll unrolled steps, as train.max_unroll cuts the framework's round).

  Returns (variants, compile seconds per variant, whether `round_batch_indices` gives exactly the
  batches of `batch_indices`, rounds crossing epochs included).
  """
  import functools

  import jax
  import jax.numpy as jnp
  import optax
  from jax import lax

  from psops_jax import swarm as swarm_lib
  from psops_jax import tasks

  tx = optimizer()
  mean, std = normalization(images.shape[-1])
  device = jax.devices()[0]
  shard_size = labels.shape[0]
  steps_per_epoch = shard_size // batch_size
  key = jax.random.key(0)

  def train_step(params, opt_state, x, y):
    loss_fn = lambda p: tasks.cross_entropy(
      model.apply({"params": p}, swarm_lib.normalize(x, mean, std)), y
    )
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def sliced(sx, sy, step):  # the shard is already in random order: batch = the next B examples
    start = (step % steps_per_epoch) * batch_size
    cut = lambda a: lax.dynamic_slice_in_dim(a, start, batch_size)
    return cut(sx), cut(sy)

  def one_step(params, opt_state, sx, sy, step):
    return train_step(params, opt_state, *sliced(sx, sy, step))

  def unrolled(params, opt_state, sx, sy, first_step, draw="slice", steps=period):
    if draw == "once":
      idx = swarm_lib.round_batch_indices(key, first_step, period, shard_size, batch_size)
    for t in range(steps):
      if draw == "slice":
        x, y = sliced(sx, sy, first_step + t)
      elif draw == "per_step":
        i = swarm_lib.batch_indices(key, first_step + t, shard_size, batch_size)
        x, y = sx[i], sy[i]
      else:
        x, y = sx[idx[t]], sy[idx[t]]
      params, opt_state, loss = train_step(params, opt_state, x, y)
    return params, opt_state, loss

  p0 = model.init(key, swarm_lib.normalize(jnp.asarray(images[:1]), mean, std))["params"]
  sx, sy = jax.device_put(images, device), jax.device_put(labels, device)
  # Rounds cycle through 3 starting steps; a chunked round reads the steps after its start.
  step_values = [jax.device_put(jnp.int32(t), device) for t in range(4 * period)]
  chunk = swarm_lib.chunk_length(period, "unroll", max_unroll)
  # name -> (function of (params, opt_state, sx, sy, step), steps per call)
  fns = {"step_loop": (one_step, 1)}
  for draw in ("slice", "once", "per_step"):
    fns[f"unrolled/{draw}"] = (functools.partial(unrolled, draw=draw), period)
  if chunk < period:
    fns["unrolled/chunks"] = (functools.partial(unrolled, steps=chunk), chunk)

  def fresh_state():  # own buffers: the jitted functions donate them
    copy = lambda tree: jax.tree.map(
      lambda a: jnp.array(a, copy=True), jax.device_put(tree, device)
    )
    return [copy(p0), copy(tx.init(p0))]

  def variant(compiled, steps_per_call):
    state, rounds = fresh_state(), itertools.count()

    def run():
      first = (next(rounds) % 3) * period
      params, opt_state = state
      for t in range(0, period, steps_per_call):
        params, opt_state, loss = compiled(params, opt_state, sx, sy, step_values[first + t])
      jax.block_until_ready(loss)
      state[:] = params, opt_state

    return run

  variants, compile_seconds = {}, {}
  for name, (fn, steps_per_call) in fns.items():
    t0 = time.perf_counter()
    jitted = jax.jit(fn, donate_argnums=(0, 1))
    compiled = jitted.lower(p0, tx.init(p0), sx, sy, step_values[0]).compile()
    compile_seconds[name] = round(time.perf_counter() - t0, 2)
    variants[name] = variant(compiled, steps_per_call)

  def same_batches(s):
    whole = swarm_lib.round_batch_indices(key, jnp.int32(s), period, shard_size, batch_size)
    each = [
      swarm_lib.batch_indices(key, jnp.int32(s + t), shard_size, batch_size) for t in range(period)
    ]
    return bool((whole == jnp.stack(each)).all())

  check_steps = [0, steps_per_epoch - 1, 3 * steps_per_epoch - period // 2]
  return variants, compile_seconds, all(same_batches(s) for s in check_steps)


# --------------------------------------------------------------------------------------------------
# The options of the benchmarks of one model's round: round_vs_floor.py, sync_cost.py, scaling.py.


def round_parser(doc: str, reps: tuple, devices: bool = True) -> argparse.ArgumentParser:
  """The shared options; `reps` = (default repetitions, with --quick)."""
  parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--model", default="small_cnn", choices=["small_cnn", "lenet5"])
  parser.add_argument("--particles", type=int, default=8)
  parser.add_argument("--period", type=int, default=8, help="local steps per round (default 8)")
  parser.add_argument("--batch-size", type=int, default=32)
  if devices:
    parser.add_argument("--devices", type=int, default=0, help="mesh size (default: --particles)")
  parser.add_argument(
    "--train-size",
    type=int,
    default=0,
    help="examples of the whole training set; shard = this // particles "
    "(default: digits 1438 for small_cnn, 60000 for lenet5)",
  )
  parser.add_argument("--fitness", default="round_loss", choices=["round_loss", "probe"])
  parser.add_argument(
    "--max-unroll",
    type=int,
    default=None,
    help="the round in calls of at most this many unrolled steps (default: "
    "train.max_unroll of configs/digits_pso.py; 0: one call)",
  )
  parser.add_argument(
    "--reps",
    type=int,
    default=0,
    help=f"interleaved repetitions (default {reps[0]}, --quick {reps[1]})",
  )
  parser.add_argument("--quick", action="store_true", help="fewer repetitions (see above)")
  parser.add_argument("--out", default="", help="JSON path (default under benchmarks/results/)")
  parser.set_defaults(default_reps=reps)
  return parser


def round_settings(parser: argparse.ArgumentParser) -> argparse.Namespace:
  """Parse the shared options and fill in the defaults that depend on others; a bad value stops
  the script with its name."""
  args = parser.parse_args()
  if hasattr(args, "devices"):
    args.devices = args.devices or args.particles
  if args.max_unroll is None:
    from configs import digits_pso

    args.max_unroll = digits_pso.get_config().train.max_unroll
  args.train_size = args.train_size or TRAIN_SIZES[args.model]
  args.reps = args.reps or args.default_reps[1 if args.quick else 0]
  for name in ("particles", "period", "batch_size", "devices", "reps"):
    if getattr(args, name, 1) < 1:
      parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
  if args.train_size // args.particles < args.batch_size:
    parser.error("--train-size // --particles must hold at least one batch")
  return args


def round_config(args: argparse.Namespace) -> dict:
  """The settings written with the results (the JSON's `config`)."""
  keys = ("model", "particles", "devices", "period", "batch_size", "train_size", "fitness")
  config = {k: getattr(args, k) for k in keys if hasattr(args, k)}
  config["shard_size"] = args.train_size // args.particles
  config.update(reps=args.reps, quick=args.quick, max_unroll=args.max_unroll)
  return config


def start(parser: argparse.ArgumentParser, name: str, host_devices: int = 0) -> argparse.Namespace:
  """Parse the shared options (`round_settings`), ask XLA for the virtual CPU devices (default
  --devices), and print what is measured with the machine's cores and load."""
  args = round_settings(parser)
  force_host_devices(host_devices or args.devices)
  settings = ", ".join(f"{k} {v}" for k, v in round_config(args).items())
  print(
    f"{name}: {settings}; {os.cpu_count()} cores, load average {harness.load_average()[0]:.2f}",
    flush=True,
  )
  return args
