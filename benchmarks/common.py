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
from psops_jax import data, errors, text  # no JAX in them

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
# The byte-level language models: they train as configs/text_lm.py's run does (its model size,
# context, batch size, loop and optimizer), on windows of `context` bytes and their next bytes.
TEXT_MODELS = ("transformer",)
# Every benchmark's optimizer, in one place: the optimizer.<field> values set on the benchmarked
# run's config over its base config's (`base_config`), which the floor (optimizers.from_config) and
# torch (torch_models.optimizer) read back. Image models: SGD 0.01 with momentum 0.9, as the image
# configs; text models: configs/text_lm.py's own (AdamW, warmup and cosine, clipped gradients).
OPTIMIZERS = {
  "image": {"learning_rate": 0.01, "momentum": 0.9},
  "text": {},
}


def force_host_devices(count: int) -> None:
  """Before JAX is imported: ask XLA for `count` CPU devices."""
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
  ).strip()


def normalization(channels: int) -> tuple:
  """(mean, std) per channel of every benchmark's inputs (the speed does not depend on them)."""
  return (0.5,) * channels, (0.25,) * channels


def is_text(model_name: str) -> bool:
  """Whether the model is a language model (TEXT_MODELS), trained on text."""
  return model_name in TEXT_MODELS


def base_config(model_name: str):
  """The config a benchmarked model's run starts from: configs/text_lm.py's default run for a text
  model, configs/digits_pso.py's for the image models."""
  from configs import digits_pso, text_lm

  return (text_lm if is_text(model_name) else digits_pso).get_config()


def optimizer(config):
  """The optimizer of a benchmarked run's config (`run_config`), as the framework builds it."""
  from psops_jax import optimizers

  return optimizers.from_config(config)


def samples(particles: int, period: int, batch_size: int) -> int:
  """Training examples one round of the swarm processes."""
  return particles * period * batch_size


def random_examples(data_name: str, size: int, context: int = 0, seed: int = 1) -> tuple:
  """`size` random examples of a data set (the speed does not depend on the values): uint8 images
  of its shape and int32 labels, or (text) uint8 windows of `context` random bytes and the bytes
  that follow each (psops_jax.text.windows)."""
  import numpy as np

  rng = np.random.RandomState(seed)
  if data_name == "text":
    return text.windows(rng.randint(0, 256, size * context + 1).astype(np.uint8).tobytes(), context)
  images = rng.randint(0, 256, (size,) + data.SHAPES[data_name]).astype(np.uint8)
  labels = rng.randint(0, 10, (size,)).astype(np.int32)
  return images, labels


def random_dataset(config, seed: int = 1) -> data.Dataset:
  """The data set a benchmarked run (`run_config`) trains on: data.synthetic_size random examples of
  config.data.name (`random_examples`; text: of data.context bytes) and their first 16 as the test
  split (a round never reads it), images normalised by `normalization`, text of 256 classes."""
  c = config.data
  x, y = random_examples(c.name, c.synthetic_size, c.context, seed)
  if c.name == "text":
    return data.Dataset(x, y, x[:16], y[:16], (), (), num_classes=256)
  return data.Dataset(x, y, x[:16], y[:16], *normalization(x.shape[-1]))


def floor_parts(config) -> tuple:
  """(model, optimizer, task, data set) of a benchmarked run's config (`run_config`), built as
  psops_jax.run.build_run builds them (its `random_dataset`), without mesh, swarm or sync: what the
  floor trains on one device. With one particle, the data set is the framework particle's shard.
  """
  from psops_jax import run as run_lib
  from psops_jax import tasks

  dataset = random_dataset(config)
  model = run_lib.create_model(config, dataset)
  return model, optimizer(config), tasks.task_of(config.data.name), dataset


def default_train_size(model_name: str) -> int:
  """The training examples of the model's data set in a run: the image data set's size, or the
  windows of the base config's text (configs/text_lm.py: Debian's fortunes, `apt-get install
  fortunes`; errors.BadInput when it is missing)."""
  if not is_text(model_name):
    return TRAIN_SIZES[model_name]
  c = base_config(model_name).data
  dataset = data.load_text(
    c.source, c.dir, c.tfds_name, c.context, c.validation_fraction, c.eval_windows
  )
  return len(dataset.train_inputs)


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
  size: str = "",
  conv: str = "lax",
):
  """The run config of a benchmarked round: the model's base config (`base_config`) with these
  settings, synthetic data of the model's data set (or `data_name`'s; `shard_size` per particle:
  the speed does not depend on the values), the transformer's `size` (default: the base config's),
  the convolutions' implementation `conv` (model.conv) and every benchmark's optimizer
  (OPTIMIZERS)."""
  text_model = is_text(model_name)
  config = base_config(model_name)
  optimizer_fields = OPTIMIZERS["text" if text_model else "image"]
  config.update_from_flattened_dict(
    {
      "seed": seed,
      "num_particles": particles,
      "num_devices": devices,
      "model.name": model_name,
      "model.dtype": dtype,
      "model.size": size or config.model.size,
      "model.conv": conv,
      "data.name": data_name or ("text" if text_model else DATA_SETS[model_name]),
      "data.source": "synthetic",
      "data.synthetic_size": particles * shard_size,
      **{f"optimizer.{k}": v for k, v in optimizer_fields.items()},
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
  """The project's compiled round, built by psops_jax.run.build_run from `run_config(...)` (same
  arguments, in the same order) on its `random_dataset`, ready to call.

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
  built = run_lib.build_run(config, dataset=random_dataset(config))
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


def build_floor(
  model,
  tx,
  task: str,
  shard: data.Dataset,
  period: int,
  batch_size: int,
  max_unroll: int = 0,
  loop: str = "unroll",
):
  """One particle's local steps in plain JAX on the first device: no mesh, no sharding, no sync.

  model and tx: the Flax model and the optax optimizer; task: "classification" or
  "language_model" (the model is called on tasks.model_inputs, the loss is tasks.cross_entropy);
  shard: the particle's examples (train_inputs, train_targets; images normalised with its mean and
  std on the device, inside the step). loop: "unroll" or "scan", how the framework's round is
  compiled (train.loop), which the variants follow.

  Variants, each a callable that runs the next round of `period` steps (carrying params and
  optimizer state, donated) and blocks: "step_loop" (a jitted step in a Python loop), then for
  loop "unroll": "unrolled/slice" (one jitted function of the unrolled steps, each batch the next
  slice of the shard), "unrolled/once" (the same drawing the batches as the framework does:
  `swarm.round_batch_indices`), "unrolled/per_step" (as the framework did before:
  `swarm.batch_indices` at every step) and, when the period exceeds max_unroll, "unrolled/chunks"
  (calls of max_unroll unrolled steps, as train.max_unroll cuts the framework's round); for loop
  "scan": "scan/slice" and "scan/once" (the steps in a jitted `lax.scan`, batches drawn as above).

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

  inputs, targets = shard.train_inputs, shard.train_targets
  model_inputs = lambda x: tasks.model_inputs(task, x, shard.mean, shard.std)
  device = jax.devices()[0]
  shard_size = targets.shape[0]
  steps_per_epoch = shard_size // batch_size
  key = jax.random.key(0)

  def train_step(params, opt_state, x, y):
    loss_fn = lambda p: tasks.cross_entropy(model.apply({"params": p}, model_inputs(x)), y)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def sliced(sx, sy, step):  # the shard is already in random order: batch = the next B examples
    start = (step % steps_per_epoch) * batch_size
    cut = lambda a: lax.dynamic_slice_in_dim(a, start, batch_size)
    return cut(sx), cut(sy)

  def batch(sx, sy, step, draw, idx):
    """The batch of step `step`: the next slice, or at the indices `idx` (the framework's)."""
    if draw == "slice":
      return sliced(sx, sy, step)
    if draw == "per_step":
      i = swarm_lib.batch_indices(key, step, shard_size, batch_size)
      return sx[i], sy[i]
    return sx[idx], sy[idx]

  def one_step(params, opt_state, sx, sy, step):
    return train_step(params, opt_state, *sliced(sx, sy, step))

  def round_indices(first_step, draw):
    if draw != "once":
      return None
    return swarm_lib.round_batch_indices(key, first_step, period, shard_size, batch_size)

  def unrolled(params, opt_state, sx, sy, first_step, draw="slice", steps=period):
    idx = round_indices(first_step, draw)
    for t in range(steps):
      x, y = batch(sx, sy, first_step + t, draw, None if idx is None else idx[t])
      params, opt_state, loss = train_step(params, opt_state, x, y)
    return params, opt_state, loss

  def scanned(params, opt_state, sx, sy, first_step, draw="slice"):
    idx = round_indices(first_step, draw)

    def body(carry, t):
      x, y = batch(sx, sy, first_step + t, draw, None if idx is None else idx[t])
      params, opt_state, loss = train_step(*carry, x, y)
      return (params, opt_state), loss

    (params, opt_state), losses = lax.scan(body, (params, opt_state), jnp.arange(period))
    return params, opt_state, losses[-1]

  p0 = model.init(key, model_inputs(jnp.asarray(inputs[:1])))["params"]
  sx, sy = jax.device_put(inputs, device), jax.device_put(targets, device)
  # Rounds cycle through 3 starting steps; a chunked round reads the steps after its start.
  step_values = [jax.device_put(jnp.int32(t), device) for t in range(4 * period)]
  chunk = swarm_lib.chunk_length(period, loop, max_unroll)
  # name -> (function of (params, opt_state, sx, sy, step), steps per call)
  fns = {"step_loop": (one_step, 1)}
  if loop == "scan":
    for draw in ("slice", "once"):
      fns[f"scan/{draw}"] = (functools.partial(scanned, draw=draw), period)
  else:
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


def round_parser(
  doc: str, reps: tuple, devices: bool = True, text_models: bool = False, conv: bool = False
) -> argparse.ArgumentParser:
  """The shared options; `reps` = (default repetitions, with --quick). text_models: --model also
  accepts TEXT_MODELS, with their --size, and --loop. conv: --conv, the convolutions' implementation
  (model.conv) of the JAX methods."""
  parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
  models = ["small_cnn", "lenet5"] + (list(TEXT_MODELS) if text_models else [])
  parser.add_argument("--model", default="small_cnn", choices=models)
  if text_models:
    parser.add_argument(
      "--size", default="", help="transformer size (default: configs/text_lm.py's model.size)"
    )
    parser.add_argument(
      "--loop",
      default="",
      choices=["", "unroll", "scan"],
      help="how the round's steps are compiled (default: scan where the model's config says so, "
      "as configs/text_lm.py, else unroll)",
    )
  if conv:
    parser.add_argument(
      "--conv",
      default="lax",
      choices=["lax", "im2col", "im2col_input", "auto"],  # conv.CONVS (a test checks)
      help="how the JAX models compute their convolutions, the framework's and the floor's alike "
      "(model.conv, psops_jax/conv.py; torch stays torch)",
    )
  parser.add_argument("--particles", type=int, default=8)
  parser.add_argument(
    "--period",
    type=int,
    default=0,
    help="local steps per round (default: the model's config's sync.period: 8, text 16)",
  )
  parser.add_argument(
    "--batch-size",
    type=int,
    default=0,
    help="examples per step (default: the model's config's train.batch_size: 32, text 8 windows)",
  )
  if devices:
    parser.add_argument("--devices", type=int, default=0, help="mesh size (default: --particles)")
  parser.add_argument(
    "--train-size",
    type=int,
    default=0,
    help="examples of the whole training set; shard = this // particles "
    "(default: digits 1437 for small_cnn, 60000 for lenet5, the windows of "
    "configs/text_lm.py's text for the transformer)",
  )
  parser.add_argument("--fitness", default="round_loss", choices=["round_loss", "probe"])
  parser.add_argument(
    "--max-unroll",
    type=int,
    default=None,
    help="the round in calls of at most this many unrolled steps (default: "
    "train.max_unroll of the model's config; 0: one call)",
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
  config = base_config(args.model)
  if hasattr(args, "devices"):
    args.devices = args.devices or args.particles
  if args.max_unroll is None:
    args.max_unroll = config.train.max_unroll
  args.period = args.period or config.sync.period
  args.batch_size = args.batch_size or config.train.batch_size
  if hasattr(args, "loop"):
    args.loop = args.loop or ("scan" if config.train.loop == "scan" else "unroll")
    args.size = args.size or config.model.size
  args.context = config.data.context if is_text(args.model) else None
  try:
    args.train_size = args.train_size or default_train_size(args.model)
  except errors.BadInput as e:
    parser.error(f"{e}; or pass --train-size")
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
  if getattr(args, "context", None):  # a text model
    config.update(size=args.size, context=args.context, loop=args.loop)
  if hasattr(args, "conv"):
    config["conv"] = args.conv
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
