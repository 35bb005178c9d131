"""`train_and_evaluate(config, workdir)`: the host loop over rounds, logging, checkpoints, the
report.

The host only dispatches one jitted round per iteration (local steps of every particle, then the
sync), reads the round's small metrics every `train.log_every` rounds (and at checkpoints),
evaluates every `train.eval_every` rounds (0: only at the end), checkpoints every
`train.checkpoint_every` rounds and at
the end, and writes (process 0 only):

  workdir/config.json    the run's config (a resumed run must match it)
  workdir/metrics.jsonl  one JSON object per logged round
  workdir/events.out.tfevents.*  the same scalars for TensorBoard (`tensorboard --logdir workdir`)
  workdir/summary.json   the final report (keys: SUMMARY_KEYS and more)
  workdir/checkpoints/   orbax checkpoints (see psops_jax/checkpoint.py)
  workdir/run.lock       held while the run lasts: a second run is refused (see workdir.py)

A workdir that holds checkpoints is resumed from the newest one that restores (damaged newer ones
are moved to workdir/checkpoints_damaged/); SIGTERM makes the run checkpoint the round in progress
and raise `Preempted`.
"""

import hashlib
import importlib.metadata
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from psops_jax import checkpoint as checkpoint_lib
from psops_jax import config_check, models
from psops_jax import data as data_lib
from psops_jax import swarm as swarm_lib
from psops_jax import sync as sync_lib
from psops_jax import workdir as workdir_lib

SUMMARY_KEYS = (
  "final_test_accuracy",
  "test_accuracy_best_particle",
  "test_accuracy_mean_particle",
  "test_accuracy_averaged_weights",
  "strategy",
  "period",
  "num_particles",
  "rounds",
  "steps",
  "communicated_bytes_per_particle",
  "train_seconds",
  "samples_per_second",
)
PROBE_POOL = 8  # sync.pso.probe_resample: probe batches are drawn from 8 x probe_size examples
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: rerun the same command to resume


class Preempted(Exception):
  """SIGTERM arrived; the run checkpointed after `rounds_done` rounds and stopped."""

  def __init__(self, rounds_done: int, directory: str):
    super().__init__(
      f"preempted (SIGTERM): checkpoint after round {rounds_done} in {directory}; "
      "rerun the same command to resume"
    )
    self.rounds_done = rounds_done


class Diverged(RuntimeError):
  """Every particle's loss is NaN or inf."""


def make_optimizer(config) -> optax.GradientTransformation:
  """optax optimizer named by config.optimizer (sgd with optional momentum, or adam)."""
  c = config.optimizer
  if c.name == "sgd":
    return optax.sgd(c.learning_rate, momentum=c.momentum or None)
  return optax.adam(c.learning_rate)


def write_json_atomically(path: str, obj) -> None:
  """Write to a temporary file in the same directory, then rename over `path` (atomic on POSIX)."""
  write_text_atomically(path, json.dumps(obj, indent=2))


def write_text_atomically(path: str, text: str) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def to_host(x) -> np.ndarray:
  """A (possibly multi-process) jax.Array as one NumPy array, the same in every process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def first_particle(tree):
  """The first particle this process holds, as NumPy (for state that is equal on every particle)."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)[0]), tree)


def params_fingerprint(params, batch_stats=()) -> str:
  """sha256 of every particle's weights, then batch statistics (bytes in tree order): equal
  fingerprints, equal models. A model without statistics hashes its weights only."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves((params, batch_stats)):
    digest.update(np.ascontiguousarray(to_host(leaf)).tobytes())
  return digest.hexdigest()


ACCELERATOR_PACKAGES = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm7-plugin", "libtpu")


def accelerator_note(backend: str, installed=None) -> str | None:
  """A warning when JAX runs on CPU although a GPU/TPU build of JAX is installed (a driver or plugin
  that did not load), unless JAX_PLATFORMS asks for the CPU; None otherwise."""
  if backend != "cpu" or "cpu" in os.environ.get("JAX_PLATFORMS", "").split(","):
    return None
  if installed is None:
    installed = []
    for name in ACCELERATOR_PACKAGES:
      try:
        importlib.metadata.version(name)
        installed.append(name)
      except importlib.metadata.PackageNotFoundError:
        pass
  if not installed:
    return None
  return (
    f"psops_jax: WARNING: JAX is running on the CPU although {', '.join(installed)} is "
    "installed: the accelerator did not load (see the messages above). Set JAX_PLATFORMS=cuda "
    "(or tpu) to make that an error, or JAX_PLATFORMS=cpu to silence this."
  )


def _finite_or_none(value) -> float | None:
  """JSON has no NaN/inf: a non-finite number is written as null."""
  value = float(value)
  return value if np.isfinite(value) else None


def evaluate_swarm(
  swarm, fitness, evaluators: swarm_lib.Evaluators, test, test_one, exported_only=False
):
  """Test accuracy of every particle, the best particle, the mean particle, the averaged weights and
  the model the strategy exports (`SyncStrategy.export`: g for PSO-PS, the center for EASGD, the
  mean for averaging, the best particle for independent training), each with its batch statistics;
  `exported_only`: the exported model's alone. The best particle is the one with the lowest final
  fitness (a training-split quantity: the test split never chooses). `test` is replicated on the
  mesh (for the particles), `test_one` lies on one local device (single models)."""
  device = test_one[0].devices().pop()
  accuracy_of = lambda model: float(evaluators.one(*jax.device_put(model, device), *test_one)[0])
  result = {}
  if not exported_only:
    accuracies = to_host(evaluators.particles(swarm.params, swarm.batch_stats, *test)[0])
    accuracies = accuracies.astype(np.float64)
    best = int(np.argmin(np.where(np.isfinite(fitness), fitness, np.inf)))
    averaged = jax.tree.map(to_host, evaluators.mean(swarm.params, swarm.batch_stats))
    result = {
      "test_accuracy_particles": accuracies.tolist(),
      "test_accuracy_best_particle": float(accuracies[best]),
      "best_particle": best,
      "test_accuracy_mean_particle": float(np.mean(accuracies)),
      "test_accuracy_averaged_weights": accuracy_of(averaged),
    }
  sharding = jax.tree.leaves(swarm.params)[0].sharding
  exported = evaluators.export(
    swarm, swarm_lib.put_global(np.asarray(fitness, np.float32), sharding)
  )
  result["final_test_accuracy"] = accuracy_of(first_particle(exported))
  return result


def round_record(r, metrics, config, samples_per_round, bytes_per_round, train_seconds):
  """The metrics.jsonl line after round r (0-based) from the round's metrics (host arrays)."""
  loss = metrics["loss"]
  record = {
    "round": r + 1,
    "step": (r + 1) * config.sync.period,
    "samples": (r + 1) * samples_per_round,
    "train_loss": float(np.mean(loss[np.isfinite(loss)])) if np.isfinite(loss).any() else None,
    "train_loss_particles": [_finite_or_none(v) for v in loss],
    "fitness_particles": [_finite_or_none(v) for v in metrics["fitness"]],
    "diverged_particles": [int(i) for i in np.flatnonzero(~np.isfinite(loss))],
    "communicated_bytes_per_particle": (r + 1) * bytes_per_round,
    "train_seconds": train_seconds,
  }
  if "global_best" in metrics:
    record["global_best_particle"] = int(metrics["global_best"][0])
  for key in ("distance_to_global_best", "velocity_norm"):
    if key in metrics:
      record[key + "_particles"] = [_finite_or_none(v) for v in metrics[key]]
  return record


def tensorboard_scalars(record: dict) -> dict:
  """The scalars of a metrics.jsonl record that TensorBoard shows: losses, accuracies, bytes,
  seconds (per-particle lists and indices left out)."""
  return {
    k: v
    for k, v in record.items()
    if k not in ("round", "step")
    and isinstance(v, (int, float))
    and not isinstance(v, bool)
    and k != "best_particle"
    and k != "global_best_particle"
  }


class EventsWriter:
  """TensorBoard event files in the workdir (tensorboardX: no TensorFlow needed), process 0 only; a
  resumed run purges the events logged after its checkpoint's step."""

  def __init__(self, workdir: str, enabled: bool, purge_step: int | None):
    self.writer = SummaryWriter(workdir, purge_step=purge_step) if enabled else None

  def write(self, record: dict) -> None:
    """The record's scalars at its step, flushed (a run that stops on an error keeps them)."""
    if self.writer is not None:
      for name, value in tensorboard_scalars(record).items():
        self.writer.add_scalar(name, value, record["step"])
      self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


class SigtermFlag:
  """Context manager: while inside, SIGTERM sets `.raised` instead of killing the process."""

  def __init__(self):
    self.raised = False

  def __enter__(self):
    try:
      self.previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self.previous = None
    return self

  def _handle(self, signum, frame):
    self.raised = True

  def __exit__(self, *exc):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)

  def any_process(self) -> bool:
    """True if any process got SIGTERM (all processes must stop at the same round)."""
    if jax.process_count() == 1:
      return self.raised
    return bool(multihost_utils.process_allgather(np.int32(self.raised)).any())


def train_and_evaluate(config, workdir: str) -> dict:
  """Train a swarm as `config` says, resuming from `workdir`'s checkpoints if any; write
  config.json, metrics.jsonl, checkpoints and summary.json in `workdir`; return the summary. Holds
  the workdir's lock while it runs (process 0 takes it for the run): WorkdirBusy when another live
  run holds it."""
  config_check.validate(config)  # a bad config creates no workdir
  with workdir_lib.hold(workdir, jax.process_index() == 0, checkpoint_lib.all_processes):
    return train_in_locked_workdir(config, workdir)


def train_in_locked_workdir(config, workdir: str) -> dict:
  """train_and_evaluate, once the workdir's lock is held."""
  is_main = jax.process_index() == 0
  note = accelerator_note(jax.default_backend())
  if note and is_main:
    print(note, flush=True)
  os.makedirs(workdir, exist_ok=True)
  checkpoint_lib.check_config(workdir, config.to_dict(), config.train.allow_config_change)
  n = config.num_particles
  mesh = swarm_lib.make_mesh(n, config.num_devices)

  dataset = data_lib.load(
    config.data.name,
    config.data.source,
    config.data.dir or None,
    config.seed,
    config.data.synthetic_size,
  )
  if config.data.validation_size:  # evaluate on a held-out part of the training split
    dataset = data_lib.carve_validation(dataset, config.data.validation_size, config.seed)
  if config.data.partition == "dirichlet":
    shards = data_lib.shard_by_labels(
      dataset.train_images, dataset.train_labels, n, config.data.dirichlet_alpha, config.seed
    )
  else:
    shards = data_lib.shard(dataset.train_images, dataset.train_labels, n, config.seed)
  if config.train.batch_size > shards[1].shape[1]:
    raise config_check.ConfigError(
      f"train.batch_size={config.train.batch_size}: must be <= the shard of each particle "
      f"({shards[1].shape[1]} examples = {len(dataset.train_labels)} // num_particles={n})"
    )
  probe_pool = config.sync.pso.probe_size * (PROBE_POOL if config.sync.pso.probe_resample else 1)
  probe = data_lib.probe_batch(dataset.train_images, dataset.train_labels, probe_pool, config.seed)

  model = models.create(config.model.name, dataset.num_classes, config.model.dtype)
  tx = make_optimizer(config)
  strategy = sync_lib.from_config(config.sync, rounds=config.train.rounds, axis_name=swarm_lib.AXES)
  reads_fitness = strategy.reads_fitness
  uses_probe = reads_fitness and config.sync.pso.fitness == "probe"
  round_cfg = swarm_lib.RoundConfig(
    period=config.sync.period,
    batch_size=config.train.batch_size,
    fitness="probe" if uses_probe else "round_loss",
    probe_size=config.sync.pso.probe_size,
    loop=swarm_lib.resolve_loop(config.train.loop),
    local_layout=config.train.local_layout,
    max_unroll=config.train.max_unroll,
    fault=swarm_lib.Fault(
      config.faults.kind,
      config.faults.particles,
      config.faults.step // config.sync.period,
      config.faults.scale,
    ),
    augment=config.data.name == "cifar10",
    mean=dataset.mean,
    std=dataset.std,
  )

  swarm = swarm_lib.init_swarm(
    model,
    tx,
    strategy,
    dataset.train_images,
    n,
    config.seed,
    mesh,
    dataset.mean,
    dataset.std,
    init=config.train.init,
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  device_data = swarm_lib.put_data(shards, probe, mesh)
  test = (
    swarm_lib.put_global(dataset.test_images, replicated),
    swarm_lib.put_global(dataset.test_labels, replicated),
  )
  local_device = jax.local_devices()[0]
  test_one = (
    jax.device_put(dataset.test_images, local_device),
    jax.device_put(dataset.test_labels, local_device),
  )

  checkpointer = checkpoint_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  start, spent = 0, {"train_seconds": 0.0, "compile_seconds": 0.0}
  restored = checkpointer.restore_latest(like=swarm)  # damaged newer checkpoints are set aside
  if restored is not None:
    start, swarm, spent = restored
  elif is_main:
    write_json_atomically(os.path.join(workdir, "config.json"), config.to_dict())

  round_fn = swarm_lib.make_round(model, tx, strategy, round_cfg, mesh, config.seed)
  t0 = time.perf_counter()
  compiled_round = swarm_lib.compile_round(round_fn, swarm, device_data)
  evaluators = swarm_lib.compile_evaluators(
    model, strategy, swarm, test, test_one, dataset.mean, dataset.std
  )
  compile_seconds = spent["compile_seconds"] + time.perf_counter() - t0

  one_particle = lambda tree: jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree
  )
  bytes_per_round = sync_lib.round_bytes(
    strategy,
    one_particle(swarm.params),
    config.sync.period,
    one_particle(swarm.opt_state),
    one_particle(swarm.batch_stats),
  )
  samples_per_round = n * config.sync.period * config.train.batch_size
  rounds = config.train.rounds
  if is_main:
    resumed = f", resumed after round {start}" if start else ""
    print(
      f"psops_jax: {config.sync.strategy}, {n} particles on {mesh.devices.size} "
      f"{jax.default_backend()} devices ({jax.process_count()} process(es)), {config.model.name} "
      f"on {config.data.name} ({shards[1].shape[1]} training examples per particle), period "
      f"{config.sync.period}, {rounds} rounds, loop={round_cfg.loop}{resumed}; round compiled in "
      f"{compile_seconds:.1f}s",
      flush=True,
    )

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if is_main:  # keep the lines of the rounds the checkpoint holds, drop any logged after it
    kept = []
    if start and os.path.exists(metrics_path):
      with open(metrics_path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["round"] <= start]
    write_text_atomically(metrics_path, "".join(kept))

  train_seconds = spent["train_seconds"]
  host_metrics = None
  if "loss" in spent:  # the metrics of the checkpoint's last round
    host_metrics = {
      k: np.asarray([np.nan if v is None else v for v in spent[k]], np.float64)
      for k in ("loss", "fitness")
    }

  def save(rounds_done):
    checkpointer.save(
      rounds_done,
      swarm,
      {
        "train_seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "loss": [_finite_or_none(v) for v in host_metrics["loss"]],
        "fitness": [_finite_or_none(v) for v in host_metrics["fitness"]],
      },
    )

  events = EventsWriter(workdir, is_main, start * config.sync.period + 1 if start else None)
  with (
    open(metrics_path, "a") if is_main else open(os.devnull, "w") as metrics_file,
    tqdm(total=rounds, initial=start, unit="round", disable=not is_main) as bar,
    SigtermFlag() as sigterm,
  ):
    for r in range(start, rounds):
      t0 = time.perf_counter()
      swarm, round_metrics = compiled_round(swarm, device_data, jnp.int32(r))
      done = r + 1
      checkpoint_now = done % config.train.checkpoint_every == 0 or done == rounds
      evaluate_now = bool(config.train.eval_every) and done % config.train.eval_every == 0
      logged = done % config.train.log_every == 0 or checkpoint_now or evaluate_now
      # Several processes agree on a stop only at logged rounds: the agreement is a host sync.
      stop = sigterm.any_process() if logged or jax.process_count() == 1 else False
      if logged or stop:
        host_metrics = {k: to_host(v).astype(np.float64) for k, v in round_metrics.items()}
        train_seconds += time.perf_counter() - t0
        record = round_record(
          r, host_metrics, config, samples_per_round, bytes_per_round, train_seconds
        )
        if not np.isfinite(host_metrics["loss"]).any():
          checkpointer.wait()
          last = checkpointer.latest_round()
          message = (
            f"all {n} particles diverged by round {done} (loss NaN or inf); last good checkpoint: "
            f"{'round ' + str(last) if last is not None else 'none'} in {checkpointer.directory}. "
            f"Try a smaller optimizer.learning_rate (now {config.optimizer.learning_rate})."
          )
          if is_main:  # the study records the run as diverged (not as missing)
            write_json_atomically(
              os.path.join(workdir, "diverged.json"),
              {
                "diverged": True,
                "round": done,
                "steps": done * config.sync.period,
                "message": message,
                "strategy": config.sync.strategy,
                "config": config.to_dict(),
              },
            )
          raise Diverged(message)
        if evaluate_now and done != rounds:
          record.update(
            evaluate_swarm(
              swarm,
              host_metrics["fitness"],
              evaluators,
              test,
              test_one,
              exported_only=not config.train.eval_particles,
            )
          )
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        events.write(record)
        bar.set_postfix(loss=record["train_loss"], refresh=False)
        if checkpoint_now or stop:
          save(done)
        if stop:
          checkpointer.wait()
          raise Preempted(done, checkpointer.directory)
      else:
        train_seconds += time.perf_counter() - t0
      bar.update(1)
    checkpointer.wait()

  final = evaluate_swarm(swarm, host_metrics["fitness"], evaluators, test, test_one)
  events.write({"step": rounds * config.sync.period, **final})
  events.close()
  summary = {
    **final,
    "strategy": config.sync.strategy,
    "period": config.sync.period,
    "num_particles": n,
    "num_devices": int(mesh.devices.size),
    "num_processes": jax.process_count(),
    "rounds": rounds,
    "steps": rounds * config.sync.period,
    "samples": rounds * samples_per_round,
    "communicated_bytes_per_particle": rounds * bytes_per_round,
    "communicated_bytes_total": rounds * bytes_per_round * n,
    # the communication clock's inputs (psops_jax/clock.py)
    "collective": strategy.collective._asdict(),
    "model_bytes": sync_lib.tree_bytes(
      (one_particle(swarm.params), one_particle(swarm.batch_stats))
    ),
    "train_seconds": train_seconds,
    "compile_seconds": compile_seconds,
    "samples_per_second": rounds * samples_per_round / train_seconds,
    "final_train_loss_particles": [_finite_or_none(v) for v in host_metrics["loss"]],
    "params_fingerprint": params_fingerprint(swarm.params, swarm.batch_stats),
    "resumed_from_round": start,
    "evaluated_on": "validation" if config.data.validation_size else "test",
    "config": config.to_dict(),
    "backend": jax.default_backend(),
    "jax_version": jax.__version__,
    "code_version": workdir_lib.code_version(),
    "machine": workdir_lib.machine_kind(),
  }
  if is_main:
    write_json_atomically(os.path.join(workdir, "summary.json"), summary)
  checkpointer.close()
  return summary
