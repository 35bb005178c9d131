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
and raise `Preempted`. A write that the workdir's disk refuses (full, over quota, read-only),
wherever it surfaces (orbax saves in the background: its error comes with the next save or wait),
stops the run with `errors.WorkdirWriteError`, the partial checkpoint removed (`stop_writing`).
"""

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import signal
import time
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from psops_jax import checkpoint as checkpoint_lib
from psops_jax import config_check, errors, peers, tasks
from psops_jax import link as link_lib
from psops_jax import run as run_lib
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
Preempted, Diverged = errors.Preempted, errors.Diverged


def write_json_atomically(path: str, obj) -> None:
  """Write to a temporary file in the same directory, then rename over `path` (atomic on POSIX)."""
  write_text_atomically(path, json.dumps(obj, indent=2))


def write_text_atomically(path: str, text: str) -> None:
  """Through a temporary file, which a failed write (a full disk) removes; its error names it."""
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with workdir_lib.naming(tmp), open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


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


def evaluate_swarm(run, compiled, swarm, fitness, exported_only=False) -> dict:
  """Test accuracy and loss (the mean cross-entropy per target) of every particle, the best
  particle, the mean particle, the averaged weights and the model the strategy exports
  (`SyncStrategy.export`: g for PSO-PS, the center for EASGD, the mean for averaging, the best
  particle for independent training), each with its batch statistics; `exported_only`: the
  exported model's alone. The best particle is the one with the lowest final fitness (a
  training-split quantity: the test split never chooses). A language model's exported model also
  gets its bits per byte and perplexity (`tasks.text_figures`)."""
  evaluators, test_one = compiled.evaluators, run.test_one
  device = test_one[0].devices().pop()
  evaluate_one = lambda model: [
    float(v) for v in evaluators.one(*jax.device_put(model, device), *test_one)
  ]
  result = {}
  if not exported_only:
    accuracies, losses = evaluators.particles(swarm.params, swarm.batch_stats, *run.test)
    accuracies, losses = (to_host(a).astype(np.float64) for a in (accuracies, losses))
    best = int(np.argmin(np.where(np.isfinite(fitness), fitness, np.inf)))
    averaged = jax.tree.map(to_host, evaluators.mean(swarm.params, swarm.batch_stats))
    averaged_accuracy, averaged_loss = evaluate_one(averaged)
    result = {
      "test_accuracy_particles": accuracies.tolist(),
      "test_accuracy_best_particle": float(accuracies[best]),
      "best_particle": best,
      "test_accuracy_mean_particle": float(np.mean(accuracies)),
      "test_accuracy_averaged_weights": averaged_accuracy,
      "test_loss_particles": [_finite_or_none(v) for v in losses],
      "test_loss_best_particle": _finite_or_none(losses[best]),
      "test_loss_mean_particle": _finite_or_none(np.mean(losses)),
      "test_loss_averaged_weights": _finite_or_none(averaged_loss),
    }
  sharding = jax.tree.leaves(swarm.params)[0].sharding
  exported = evaluators.export(
    swarm, swarm_lib.put_global(np.asarray(fitness, np.float32), sharding)
  )
  accuracy, loss = evaluate_one(first_particle(exported))
  result["final_test_accuracy"] = accuracy
  result["final_test_loss"] = _finite_or_none(loss)
  if run.round_config.task == "language_model":
    result.update({f"final_{k}": v for k, v in tasks.text_figures(loss).items()})
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


FOREVER = 10**6  # seconds (11 days): tensorboardX's flush period; 10**9 overflows its poll()


class EventsWriter:
  """TensorBoard event files in the workdir (tensorboardX: no TensorFlow needed), process 0 only; a
  resumed run purges the events logged after its checkpoint's step.

  Only `write` flushes: tensorboardX's thread would flush every `flush_secs`, and a write error
  there (a full disk) would end the thread, leaving the run to wait on its full queue; here it is
  raised in the run."""

  def __init__(self, workdir: str, enabled: bool, purge_step: int | None):
    self.path = os.path.join(workdir, "events.out.tfevents.*")
    self.writer = None
    if enabled:
      with workdir_lib.naming(self.path):
        self.writer = SummaryWriter(workdir, purge_step=purge_step, flush_secs=FOREVER)

  def write(self, record: dict) -> None:
    """The record's scalars at its step, flushed (a run that stops on an error keeps them)."""
    if self.writer is not None:
      with workdir_lib.naming(self.path):
        for name, value in tensorboard_scalars(record).items():
          self.writer.add_scalar(name, value, record["step"])
        self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      with workdir_lib.naming(self.path):
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


@dataclasses.dataclass
class Progress:
  """The host's view of a run between rounds: the swarm, the rounds done, the seconds spent, and
  the last round's metrics read to the host (None before any)."""

  swarm: swarm_lib.Swarm
  rounds_done: int
  train_seconds: float
  compile_seconds: float
  host_metrics: dict | None

  def checkpoint_metadata(self) -> dict:
    """What a checkpoint keeps beside the swarm, to resume the seconds and the last metrics."""
    return {
      "train_seconds": self.train_seconds,
      "compile_seconds": self.compile_seconds,
      "loss": [_finite_or_none(v) for v in self.host_metrics["loss"]],
      "fitness": [_finite_or_none(v) for v in self.host_metrics["fitness"]],
    }


def restore_or_start(run: run_lib.Run, checkpointer, workdir: str, is_main: bool) -> Progress:
  """The progress of the newest checkpoint that restores (damaged newer ones are set aside), or a
  fresh start (and config.json written)."""
  restored = checkpointer.restore_latest(like=run.swarm)
  if restored is None:
    if is_main:
      write_json_atomically(os.path.join(workdir, "config.json"), run.config.to_dict())
    return Progress(run.swarm, 0, 0.0, 0.0, None)
  start, swarm, spent = restored
  host_metrics = None
  if "loss" in spent:  # the metrics of the checkpoint's last round
    host_metrics = {
      k: np.asarray([np.nan if v is None else v for v in spent[k]], np.float64)
      for k in ("loss", "fitness")
    }
  return Progress(
    swarm, start, spent["train_seconds"], spent.get("compile_seconds", 0.0), host_metrics
  )


def start_metrics_file(path: str, rounds_done: int) -> None:
  """metrics.jsonl with the lines of the rounds the checkpoint holds (those logged after it are
  dropped: the resumed run logs them again, and so is a last line without its newline, cut short
  by a full disk)."""
  kept = []
  if rounds_done and os.path.exists(path):
    with open(path) as f:
      kept = [
        line
        for line in f
        if line.endswith("\n") and line.strip() and json.loads(line)["round"] <= rounds_done
      ]
  write_text_atomically(path, "".join(kept))


def header_line(run: run_lib.Run, start: int, compile_seconds: float) -> str:
  """The line a run prints once its round is compiled."""
  config = run.config
  resumed = f", resumed after round {start}" if start else ""
  return (
    f"psops_jax: {config.sync.strategy}, {config.num_particles} particles on "
    f"{run.mesh.devices.size} {jax.default_backend()} devices ({jax.process_count()} "
    f"process(es)), {config.model.name} on {config.data.name} ({run.shard_size} training examples "
    f"per particle), period {config.sync.period}, {config.train.rounds} rounds, "
    f"loop={run.round_config.loop}{resumed}; round compiled in {compile_seconds:.1f}s"
  )


def stop_diverged(run: run_lib.Run, done: int, checkpointer, workdir: str, is_main: bool):
  """Every particle diverged by round `done`: diverged.json (the study records the run as
  diverged, not as missing), then Diverged naming the last good checkpoint."""
  config = run.config
  checkpointer.wait()
  last = checkpointer.latest_round()
  message = (
    f"all {config.num_particles} particles diverged by round {done} (loss NaN or inf); last good "
    f"checkpoint: {'round ' + str(last) if last is not None else 'none'} in "
    f"{checkpointer.directory}. Try a smaller optimizer.learning_rate (now "
    f"{config.optimizer.learning_rate})."
  )
  if is_main:
    write_json_atomically(
      os.path.join(workdir, "diverged.json"),
      {
        "diverged": True,
        "round": done,
        "steps": done * config.sync.period,
        "message": message,
        "strategy": config.sync.strategy,
        "config": config.to_dict(),
      }
      | provenance(),
    )
  raise Diverged(message)


def provenance() -> dict:
  """What made a run's record, finished or diverged: the backend, JAX's version, the commit
  (workdir.code_version, "+modified" only where the training code differs from it) and the kind
  of machine (a run is promised bit-identical only on the same training code and the same kind of
  machine)."""
  return {
    "backend": jax.default_backend(),
    "jax_version": jax.__version__,
    "code_version": workdir_lib.code_version(workdir_lib.TRAINING_PATHS),
    "machine": workdir_lib.machine_kind(),
  }


class RoundLog(NamedTuple):
  """Where a run's rounds are written: the workdir, metrics.jsonl (an open file, /dev/null off
  process 0), the TensorBoard events, and the checkpointer."""

  workdir: str
  metrics_file: Any
  events: "EventsWriter"
  checkpointer: Any


def log_round(run, compiled, progress: Progress, log: RoundLog, evaluate: bool) -> dict:
  """Round `progress.rounds_done`, its metrics read to the host: stop if every particle diverged,
  evaluate when asked, and write the metrics.jsonl line and the TensorBoard scalars."""
  config, done = run.config, progress.rounds_done
  record = round_record(
    done - 1,
    progress.host_metrics,
    config,
    run.samples_per_round,
    run.bytes_per_round,
    progress.train_seconds,
  )
  if not np.isfinite(progress.host_metrics["loss"]).any():
    stop_diverged(run, done, log.checkpointer, log.workdir, jax.process_index() == 0)
  if evaluate and done != config.train.rounds:
    exported_only = not config.train.eval_particles
    record.update(
      evaluate_swarm(run, compiled, progress.swarm, progress.host_metrics["fitness"], exported_only)
    )
  with workdir_lib.naming(log.metrics_file.name):
    log.metrics_file.write(json.dumps(record) + "\n")
    log.metrics_file.flush()
  log.events.write(record)
  return record


def train_rounds(run, compiled, progress: Progress, log: RoundLog, bar, sigterm) -> None:
  """The rounds from `progress.rounds_done` to the end: one jitted call each; every
  `train.log_every` rounds (and at evaluations and checkpoints) the metrics are read and logged;
  checkpoints every `train.checkpoint_every` rounds and at the end; SIGTERM checkpoints the round
  in progress and raises Preempted."""
  c = run.config.train
  for r in range(progress.rounds_done, c.rounds):
    t0 = time.perf_counter()
    progress.swarm, round_metrics = compiled.round_fn(progress.swarm, run.data, np.int32(r))
    progress.rounds_done = done = r + 1
    checkpoint_now = done % c.checkpoint_every == 0 or done == c.rounds
    evaluate_now = bool(c.eval_every) and done % c.eval_every == 0
    logged = done % c.log_every == 0 or checkpoint_now or evaluate_now
    # Several processes agree on a stop only at logged rounds: the agreement is a host sync.
    stop = sigterm.any_process() if logged or jax.process_count() == 1 else False
    if logged or stop:
      # reading the metrics waits for the round: its seconds are counted after
      progress.host_metrics = {k: to_host(v).astype(np.float64) for k, v in round_metrics.items()}
      progress.train_seconds += time.perf_counter() - t0
      record = log_round(run, compiled, progress, log, evaluate_now)
      bar.set_postfix(loss=record["train_loss"], refresh=False)
      if checkpoint_now or stop:
        log.checkpointer.save(done, progress.swarm, progress.checkpoint_metadata())
      if stop:
        log.checkpointer.wait()
        raise Preempted(done, log.checkpointer.directory)
    else:
      progress.train_seconds += time.perf_counter() - t0
    bar.update(1)
  log.checkpointer.wait()


def summary_of(run: run_lib.Run, progress: Progress, final: dict, start: int, link=None) -> dict:
  """summary.json: the final evaluation, the run's shape, its bytes, seconds and fingerprint, the
  communication clock's inputs (and the measured link between processes, psops_jax/link.py), and
  where and on what it ran."""
  config, rounds, swarm = run.config, run.config.train.rounds, progress.swarm
  task = run.round_config.task
  text_facts = {}
  if task == "language_model":
    tokens = rounds * run.samples_per_round * config.data.context
    text_facts = {
      "unigram_bits_per_byte": run.dataset.unigram_bits_per_byte,
      "tokens": tokens,
      "tokens_per_second": tokens / progress.train_seconds,
    }
  return {
    **final,
    "task": task,
    "metric": tasks.METRICS[task]._asdict(),
    **text_facts,
    "strategy": config.sync.strategy,
    "period": config.sync.period,
    "num_particles": config.num_particles,
    "num_devices": int(run.mesh.devices.size),
    "num_processes": jax.process_count(),
    "rounds": rounds,
    "steps": rounds * config.sync.period,
    "samples": rounds * run.samples_per_round,
    "communicated_bytes_per_particle": rounds * run.bytes_per_round,
    "communicated_bytes_total": rounds * run.bytes_per_round * config.num_particles,
    # the communication clock's inputs (psops_jax/clock.py)
    "collective": run.strategy.collective._asdict(),
    "model_bytes": sync_lib.tree_bytes(
      (run_lib.one_particle(swarm.params), run_lib.one_particle(swarm.batch_stats))
    ),
    "link": link,
    "train_seconds": progress.train_seconds,
    "compile_seconds": progress.compile_seconds,
    "samples_per_second": rounds * run.samples_per_round / progress.train_seconds,
    "final_train_loss_particles": [_finite_or_none(v) for v in progress.host_metrics["loss"]],
    "params_fingerprint": params_fingerprint(swarm.params, swarm.batch_stats),
    "resumed_from_round": start,
    # text is scored on its fixed validation split (psops_jax/text.py), images on the test split
    # unless data.validation_size carves one out of the training split
    "evaluated_on": "validation"
    if config.data.validation_size or task == "language_model"
    else "test",
    "config": config.to_dict(),
  } | provenance()


def train_in_locked_workdir(config, workdir: str) -> dict:
  """train_and_evaluate, once the workdir's lock is held: build the run, then train it from its
  checkpoints; a write that the workdir's disk refuses stops it with WorkdirWriteError."""
  peers.follow(lambda: (None, checkpoint_lib.directory_of(workdir)))  # for a lost process's line
  note = accelerator_note(jax.default_backend())
  if note and jax.process_index() == 0:
    print(note, flush=True)
  os.makedirs(workdir, exist_ok=True)
  checkpoint_lib.check_config(workdir, config.to_dict(), config.train.allow_config_change)
  run = run_lib.build_run(config)
  checkpointer = None
  try:
    checkpointer = checkpoint_lib.Checkpointer(workdir, config.train.keep_checkpoints)
    return train_from_checkpoints(run, checkpointer, workdir)
  except Exception as e:
    failure = workdir_lib.write_failure(e, workdir)
    if failure is None:
      raise
    raise stop_writing(failure, checkpointer, workdir) from e


def stop_writing(failure: str, checkpointer, workdir: str) -> errors.WorkdirWriteError:
  """The error that stops a run whose write `failure` the disk refused, once the save in flight has
  ended (it fails the same way, or completes and is then the latest good checkpoint) and process 0
  has removed the partial checkpoint: it names the workdir, the space left and the checkpoint that a
  rerun resumes from."""
  if checkpointer is None:  # the checkpoints directory could not be created
    return errors.WorkdirWriteError(workdir, failure, workdir_lib.free_space(workdir), None)
  try:
    checkpointer.wait()
  except Exception as e:
    if workdir_lib.write_failure(e, workdir) is None:
      raise
  free = workdir_lib.free_space(workdir)  # what the write found, before the partial is removed
  left = checkpointer.remove_partial() if jax.process_index() == 0 else []
  latest = checkpoint_lib.newest_complete(checkpointer.directory)
  return errors.WorkdirWriteError(workdir, failure, free, latest, left)


def train_from_checkpoints(run: run_lib.Run, checkpointer, workdir: str) -> dict:
  """Restore or start the run, compile, train the rounds, evaluate and write the summary."""
  config, is_main = run.config, jax.process_index() == 0
  progress = restore_or_start(run, checkpointer, workdir, is_main)
  peers.follow(lambda: (progress.rounds_done, checkpointer.directory))
  start = progress.rounds_done
  t0 = time.perf_counter()
  compiled = run_lib.compile_run(run, progress.swarm)
  progress.compile_seconds += time.perf_counter() - t0
  link = None
  if jax.process_count() > 1:  # the link between processes (one process: shared memory)
    weights = sync_lib.tree_bytes(run_lib.one_particle(progress.swarm.params))
    link = link_lib.measure(run.mesh, weights)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if is_main:
    print(header_line(run, start, progress.compile_seconds), flush=True)
    start_metrics_file(metrics_path, start)
  events = EventsWriter(workdir, is_main, start * config.sync.period + 1 if start else None)
  with (
    open(metrics_path, "a") if is_main else open(os.devnull, "w") as metrics_file,
    tqdm(total=config.train.rounds, initial=start, unit="round", disable=not is_main) as bar,
    SigtermFlag() as sigterm,
  ):
    log = RoundLog(workdir, metrics_file, events, checkpointer)
    train_rounds(run, compiled, progress, log, bar, sigterm)
  fitness = progress.host_metrics["fitness"]
  final = evaluate_swarm(run, compiled, progress.swarm, fitness)
  events.write({"step": config.train.rounds * config.sync.period, **final})
  events.close()
  summary = summary_of(run, progress, final, start, link)
  if is_main:
    write_json_atomically(os.path.join(workdir, "summary.json"), summary)
  checkpointer.close()
  return summary
