"""`train_and_evaluate(config, workdir)`: the host loop over rounds, logging and the final report.

The host only dispatches one jitted round per iteration (local steps of every particle, then the sync),
reads the round's small metrics every `train.log_every` rounds, evaluates every `train.eval_every`
rounds (0: only at the end), and writes:

  workdir/metrics.jsonl  one JSON object per logged round
  workdir/summary.json   the final report (keys: SUMMARY_KEYS and more)
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from psops_jax import config_check
from psops_jax import data as data_lib
from psops_jax import models
from psops_jax import swarm as swarm_lib
from psops_jax import sync as sync_lib

SUMMARY_KEYS = ("final_test_accuracy", "test_accuracy_best_particle", "test_accuracy_mean_particle",
                "test_accuracy_averaged_weights", "strategy", "period", "num_particles", "rounds",
                "steps", "communicated_bytes_per_particle", "train_seconds", "samples_per_second")


def make_optimizer(config) -> optax.GradientTransformation:
  """optax optimizer named by config.optimizer (sgd with optional momentum, or adam)."""
  c = config.optimizer
  if c.name == "sgd":
    return optax.sgd(c.learning_rate, momentum=c.momentum or None)
  return optax.adam(c.learning_rate)


def write_json_atomically(path: str, obj) -> None:
  """Write to a temporary file in the same directory, then rename over `path` (atomic on POSIX)."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def tree_index(tree, i):
  """Particle i's slice of a stacked pytree."""
  return jax.tree.map(lambda a: a[i], tree)


def evaluate_swarm(swarm, strategy, fitness, evaluators, test, test_one):
  """Test accuracy of every particle, the best particle, the mean particle, the averaged weights and
  the exported model (global best for PSO-PS, the center for EASGD, averaged weights for the other
  averaging-type strategies, the best particle for independent training). The best particle is the one with the lowest final fitness
  (a training-split quantity: the test split never chooses). `test` is replicated on the mesh (for the
  particles), `test_one` lies on one device (for single models)."""
  evaluate_particles, evaluate_one = evaluators
  accuracies, _ = evaluate_particles(swarm.params, *test)
  accuracies = np.asarray(accuracies, np.float64)
  best = int(np.argmin(np.where(np.isfinite(fitness), fitness, np.inf)))
  device = jax.devices()[0]
  averaged = jax.device_put(jax.tree.map(lambda a: jnp.mean(a, axis=0), swarm.params), device)
  averaged_accuracy = float(evaluate_one(averaged, *test_one)[0])
  result = {
      "test_accuracy_particles": accuracies.tolist(),
      "test_accuracy_best_particle": float(accuracies[best]),
      "best_particle": best,
      "test_accuracy_mean_particle": float(np.mean(accuracies)),
      "test_accuracy_averaged_weights": averaged_accuracy,
  }
  if strategy.export == "global_best":
    global_best = jax.device_put(tree_index(swarm.sync_state.global_best, 0), device)
    result["final_test_accuracy"] = float(evaluate_one(global_best, *test_one)[0])
  elif strategy.export == "center":
    center = jax.device_put(tree_index(swarm.sync_state.center, 0), device)
    result["final_test_accuracy"] = float(evaluate_one(center, *test_one)[0])
  elif strategy.export == "mean":
    result["final_test_accuracy"] = averaged_accuracy
  else:
    result["final_test_accuracy"] = result["test_accuracy_best_particle"]
  return result


def train_and_evaluate(config, workdir: str) -> dict:
  """Train a swarm as `config` says; write metrics.jsonl and summary.json in `workdir`; return the
  summary."""
  config_check.validate(config)
  os.makedirs(workdir, exist_ok=True)
  n = config.num_particles
  mesh = swarm_lib.make_mesh(n, config.num_devices)

  dataset = data_lib.load(config.data.name, config.data.source, config.data.dir or None, config.seed)
  shards = data_lib.shard(dataset.train_images, dataset.train_labels, n, config.seed)
  if config.train.batch_size > shards[1].shape[1]:
    raise config_check.ConfigError(
        f"train.batch_size={config.train.batch_size}: must be <= the shard of each particle "
        f"({shards[1].shape[1]} examples = {len(dataset.train_labels)} // num_particles={n})")
  probe = data_lib.probe_batch(dataset.train_images, dataset.train_labels,
                               config.sync.pso.probe_size, config.seed)

  model = models.create(config.model.name, dataset.num_classes)
  tx = make_optimizer(config)
  strategy = sync_lib.from_config(config.sync, rounds=config.train.rounds, axis_name=swarm_lib.AXES)
  uses_probe = config.sync.strategy in ("pso", "pso_average") and config.sync.pso.fitness == "probe"
  round_cfg = swarm_lib.RoundConfig(
      period=config.sync.period, batch_size=config.train.batch_size,
      fitness="probe" if uses_probe else "round_loss",
      loop=swarm_lib.resolve_loop(config.train.loop), local_layout=config.train.local_layout,
      augment=config.data.name == "cifar10",
      mean=dataset.mean, std=dataset.std)

  swarm = swarm_lib.init_swarm(model, tx, strategy, dataset.train_images, n, config.seed, mesh,
                               dataset.mean, dataset.std, init=config.train.init)
  device_data = swarm_lib.put_data(shards, probe, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  test = (jax.device_put(dataset.test_images, replicated),
          jax.device_put(dataset.test_labels, replicated))
  test_one = (jax.device_put(dataset.test_images, jax.devices()[0]),
              jax.device_put(dataset.test_labels, jax.devices()[0]))
  evaluators = swarm_lib.make_evaluators(model, mesh, dataset.mean, dataset.std)

  round_fn = swarm_lib.make_round(model, tx, strategy, round_cfg, mesh, config.seed)
  t0 = time.perf_counter()
  compiled_round = round_fn.lower(swarm, device_data, jnp.int32(0)).compile()
  compile_seconds = time.perf_counter() - t0

  one_particle = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)
  bytes_per_round = strategy.bytes_per_round(one_particle(swarm.params), config.sync.period,
                                             one_particle(swarm.opt_state))
  samples_per_round = n * config.sync.period * config.train.batch_size
  rounds = config.train.rounds
  print(f"psops_jax: {config.sync.strategy}, {n} particles on {mesh.devices.size} "
        f"{jax.default_backend()} devices, {config.model.name} on {config.data.name} "
        f"({shards[1].shape[1]} training examples per particle), period {config.sync.period}, "
        f"{rounds} rounds, loop={round_cfg.loop}; round compiled in {compile_seconds:.1f}s", flush=True)

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  train_seconds = 0.0
  fitness = np.zeros(n)
  with open(metrics_path, "w") as metrics_file, tqdm(total=rounds, unit="round") as bar:
    for r in range(rounds):
      t0 = time.perf_counter()
      swarm, round_metrics = compiled_round(swarm, device_data, jnp.int32(r))
      last = r == rounds - 1
      if (r + 1) % config.train.log_every == 0 or last:
        loss = np.asarray(round_metrics["loss"], np.float64)  # host sync: the round is done
        fitness = np.asarray(round_metrics["fitness"], np.float64)
        train_seconds += time.perf_counter() - t0
        record = {"round": r + 1, "step": (r + 1) * config.sync.period,
                  "samples": (r + 1) * samples_per_round,
                  "train_loss": float(np.nanmean(loss)) if np.isfinite(loss).any() else None,
                  "train_loss_particles": [_finite_or_none(v) for v in loss],
                  "fitness_particles": [_finite_or_none(v) for v in fitness],
                  "diverged_particles": [int(i) for i in np.flatnonzero(~np.isfinite(loss))],
                  "communicated_bytes_per_particle": (r + 1) * bytes_per_round,
                  "train_seconds": train_seconds}
        if hasattr(swarm.sync_state, "global_index"):
          record["global_best_particle"] = int(swarm.sync_state.global_index[0])
        eval_now = config.train.eval_every and ((r + 1) % config.train.eval_every == 0)
        if eval_now and not last:
          record.update(evaluate_swarm(swarm, strategy, fitness, evaluators, test, test_one))
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        bar.set_postfix(loss=record["train_loss"], refresh=False)
        t0 = time.perf_counter()
      else:
        train_seconds += time.perf_counter() - t0
      bar.update(1)
    jax.block_until_ready(swarm)

  final = evaluate_swarm(swarm, strategy, fitness, evaluators, test, test_one)
  steps = rounds * config.sync.period
  summary = {
      **final,
      "strategy": config.sync.strategy,
      "period": config.sync.period,
      "num_particles": n,
      "rounds": rounds,
      "steps": steps,
      "samples": rounds * samples_per_round,
      "communicated_bytes_per_particle": rounds * bytes_per_round,
      "communicated_bytes_total": rounds * bytes_per_round * n,
      "train_seconds": train_seconds,
      "compile_seconds": compile_seconds,
      "samples_per_second": rounds * samples_per_round / train_seconds,
      "final_train_loss_particles": [_finite_or_none(v) for v in np.asarray(round_metrics["loss"])],
      "config": config.to_dict(),
      "backend": jax.default_backend(),
      "jax_version": jax.__version__,
  }
  write_json_atomically(os.path.join(workdir, "summary.json"), summary)
  return summary


def _finite_or_none(value) -> float | None:
  """JSON has no NaN/inf: a non-finite number is written as null."""
  value = float(value)
  return value if np.isfinite(value) else None
