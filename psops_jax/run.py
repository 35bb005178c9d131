"""`build_run(config)`: everything a run is made of, built from its config, before any round.

    run = build_run(config)                       # data, mesh, model, strategy, swarm, round
    swarm, metrics = run.round_fn(run.swarm, run.data, jnp.int32(0))

train.py, the tests and the benchmarks build their runs here: one place that turns a config into
a round.
"""

from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from psops_jax import data as data_lib
from psops_jax import errors, models, optimizers, tasks
from psops_jax import faults as faults_lib
from psops_jax import swarm as swarm_lib
from psops_jax import sync as sync_lib

PROBE_POOL = 8  # sync.pso.probe_resample: probe batches are drawn from 8 x probe_size examples


class Run(NamedTuple):
  """A run as built from its config, before any round.

  swarm is the initial swarm (every particle at its initial weights), data the training shards and
  probe on the devices, test the evaluation split replicated on the mesh and test_one the same on
  one local device (for single models), round_fn the jitted round (`swarm_lib.make_round`).
  bytes_per_round is what one particle puts into collectives per round, samples_per_round the
  training examples the whole swarm processes per round.
  """

  config: Any
  mesh: jax.sharding.Mesh
  dataset: data_lib.Dataset
  shard_size: int
  model: Any
  tx: optax.GradientTransformation
  strategy: sync_lib.SyncStrategy
  round_config: swarm_lib.RoundConfig
  swarm: swarm_lib.Swarm
  data: swarm_lib.DeviceData
  test: tuple
  test_one: tuple
  round_fn: Any
  bytes_per_round: int
  samples_per_round: int


def create_model(config, dataset: data_lib.Dataset):
  """The model config.model names, with the data set's number of classes (256 bytes for text),
  its convolutions' implementation (model.conv) and, for the transformer, its size and the text's
  context."""
  c = config.model
  if c.name != "transformer":
    return models.create(c.name, dataset.num_classes, c.dtype, conv=c.conv)
  return models.create(
    c.name, dataset.num_classes, c.dtype, c.size, config.data.context, c.tie_embeddings, c.conv
  )


def load_dataset(config) -> data_lib.Dataset:
  """The data set config.data names, with its validation split carved out when asked (text has
  its own fixed validation split: psops_jax/text.py)."""
  c = config.data
  if tasks.task_of(c.name) == "language_model":
    return data_lib.load_text(
      c.source, c.dir, c.tfds_name, c.context, c.validation_fraction, c.eval_windows, config.seed
    )
  dataset = data_lib.load(
    config.data.name,
    config.data.source,
    config.data.dir or None,
    config.seed,
    config.data.synthetic_size,
  )
  if config.data.validation_size:  # evaluate on a held-out part of the training split
    dataset = data_lib.carve_validation(dataset, config.data.validation_size, config.seed)
  return dataset


def shard_dataset(config, dataset: data_lib.Dataset) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) of every particle's shard, stacked: IID, Dirichlet label mixes, or runs of
  consecutive examples (text: of documents)."""
  n = config.num_particles
  if config.data.partition == "dirichlet":
    shards = data_lib.shard_by_labels(
      dataset.train_inputs, dataset.train_targets, n, config.data.dirichlet_alpha, config.seed
    )
  elif config.data.partition == "contiguous":
    shards = data_lib.shard_contiguous(dataset.train_inputs, dataset.train_targets, n)
  else:
    shards = data_lib.shard(dataset.train_inputs, dataset.train_targets, n, config.seed)
  if config.train.batch_size > shards[1].shape[1]:
    raise errors.ConfigError(
      f"train.batch_size={config.train.batch_size}: must be <= the shard of each particle "
      f"({shards[1].shape[1]} examples = {len(dataset.train_targets)} // num_particles={n})"
    )
  return shards


def fault_of(config) -> faults_lib.Fault:
  """The faulty workers config.faults describes (the round index of its step, ALIE's z)."""
  f = config.faults
  return faults_lib.Fault(
    f.kind,
    f.particles,
    f.step // config.sync.period,
    f.scale,
    faults_lib.alie_z(f.z_rule, f.z, config.num_particles, f.particles)
    if f.kind == "alie"
    else f.z,
  )


def round_config(config, dataset: data_lib.Dataset, strategy) -> swarm_lib.RoundConfig:
  """The round's static settings: a probe fitness when the strategy ranks the particles and the
  config asks for one."""
  uses_probe = strategy.reads_fitness and config.sync.pso.fitness == "probe"
  return swarm_lib.RoundConfig(
    period=config.sync.period,
    batch_size=config.train.batch_size,
    fitness="probe" if uses_probe else "round_loss",
    probe_size=config.sync.pso.probe_size,
    loop=swarm_lib.resolve_loop(config.train.loop),
    local_layout=config.train.local_layout,
    max_unroll=config.train.max_unroll,
    fault=fault_of(config),
    augment=config.data.name == "cifar10",
    mean=dataset.mean,
    std=dataset.std,
    task=tasks.task_of(config.data.name),
  )


def one_particle(tree):
  """The shapes of one particle's slice of a stacked swarm pytree."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)


def place_test(dataset: data_lib.Dataset, mesh) -> tuple[tuple, tuple]:
  """The evaluation split replicated on the mesh, and on one local device."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  test = (
    swarm_lib.put_global(dataset.test_inputs, replicated),
    swarm_lib.put_global(dataset.test_targets, replicated),
  )
  local_device = jax.local_devices()[0]
  test_one = (
    jax.device_put(dataset.test_inputs, local_device),
    jax.device_put(dataset.test_targets, local_device),
  )
  return test, test_one


def build_run(
  config,
  strategy: sync_lib.SyncStrategy | None = None,
  dataset: data_lib.Dataset | None = None,
) -> Run:
  """The run `config` describes: data, mesh, model, optimizer, strategy (the config's, or
  `strategy`, built with axis_name=swarm.AXES), initial swarm and round. `dataset` replaces the data
  set config.data names (the benchmarks train on random data of a chosen size; config.data.name
  still gives the task). Raises errors.BadInput subclasses for what the user must change
  (ConfigError, DataError)."""
  n = config.num_particles
  mesh = swarm_lib.make_mesh(n, config.num_devices)
  dataset = load_dataset(config) if dataset is None else dataset
  shards = shard_dataset(config, dataset)
  probe_pool = config.sync.pso.probe_size * (PROBE_POOL if config.sync.pso.probe_resample else 1)
  probe = data_lib.probe_batch(dataset.train_inputs, dataset.train_targets, probe_pool, config.seed)
  model = create_model(config, dataset)
  tx = optimizers.from_config(config)
  if strategy is None:
    strategy = sync_lib.from_config(config.sync, config.train.rounds, swarm_lib.AXES, n)
  cfg = round_config(config, dataset, strategy)
  swarm = swarm_lib.init_swarm(
    model,
    tx,
    strategy,
    dataset.train_inputs,
    n,
    config.seed,
    mesh,
    dataset.mean,
    dataset.std,
    init=config.train.init,
    task=cfg.task,
  )
  test, test_one = place_test(dataset, mesh)
  bytes_per_round = sync_lib.round_bytes(
    strategy,
    one_particle(swarm.params),
    config.sync.period,
    one_particle(swarm.opt_state),
    one_particle(swarm.batch_stats),
  )
  return Run(
    config=config,
    mesh=mesh,
    dataset=dataset,
    shard_size=int(shards[1].shape[1]),
    model=model,
    tx=tx,
    strategy=strategy,
    round_config=cfg,
    swarm=swarm,
    data=swarm_lib.put_data(shards, probe, mesh),
    test=test,
    test_one=test_one,
    round_fn=swarm_lib.make_round(model, tx, strategy, cfg, mesh, config.seed),
    bytes_per_round=bytes_per_round,
    samples_per_round=n * config.sync.period * config.train.batch_size,
  )


class Compiled(NamedTuple):
  """A run's round and evaluators, compiled ahead of time for its swarm's shapes."""

  round_fn: Any
  evaluators: swarm_lib.Evaluators


def compile_run(run: Run, swarm: swarm_lib.Swarm | None = None) -> Compiled:
  """The round and evaluators of `run` compiled for `swarm` (default: the initial one)."""
  swarm = run.swarm if swarm is None else swarm
  round_fn = swarm_lib.compile_round(run.round_fn, swarm, run.data)
  evaluators = swarm_lib.compile_evaluators(
    run.model,
    run.strategy,
    swarm,
    run.test,
    run.test_one,
    run.dataset.mean,
    run.dataset.std,
    run.round_config.task,
  )
  return Compiled(round_fn, evaluators)
