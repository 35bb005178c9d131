"""`SyncStrategy`: what every synchronization method is, and the helpers every strategy shares."""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from psops_jax import errors
from psops_jax.clock import Collective
from psops_jax.sync.collectives import (
  AxisName,
  all_fitness,
  masked_fetch,
  particle_index,
  pmean_floats,
  tree_bytes,
)

PyTree = Any


def keep_opt_state(opt_state: PyTree, state: PyTree, key: jax.Array) -> PyTree:
  """The default `reduce_opt_state`: each particle's optimizer state stays as it is."""
  return opt_state


def no_metrics(params: PyTree, new_params: PyTree, state: PyTree) -> dict:
  """The default `metrics`: a strategy with nothing to report at its syncs."""
  return {}


def no_refresh(state: PyTree, loss_of: Callable[[PyTree], jax.Array]) -> PyTree:
  """The default `refresh`: the state goes into the sync as it is."""
  return state


def any_number_of_particles(num_particles: int) -> None:
  """The default `check`: the strategy runs on any number of particles."""


def identity(tree: PyTree) -> PyTree:
  """The default `reduce_grads`: gradients stay each particle's own."""
  return tree


class SyncStrategy(NamedTuple):
  """A synchronization method: pure functions over one particle's pytree, under a named axis.

  Everything that depends on the strategy's state is the strategy's own: what it syncs
  (`sync_with_stats`), the model a run exports (`export`), what it reports (`metrics`) and any
  re-measurement of its state before the sync (`refresh`). Nothing outside reads the state. What
  the round must provide is declared here too: a fitness that ranks the particles
  (`reads_fitness`: the round computes a probe loss), particles that start from one shared copy of
  the weights (`shared_init`), and the numbers of particles it can run on (`check`).
  """

  init: Callable[[PyTree], PyTree]
  sync: Callable[[PyTree, PyTree, jax.Array, jax.Array], tuple[PyTree, PyTree]]
  reduce_grads: Callable[[PyTree], PyTree]
  bytes_per_round: Callable[..., int]
  # (params, batch_stats, state, fitness) -> (params, batch_stats) of the exported model, the same
  # on every particle (a collective under the axis)
  export: Callable[..., tuple[PyTree, PyTree]]
  reduce_opt_state: Callable[[PyTree, PyTree, jax.Array], PyTree] = keep_opt_state
  # (params, batch_stats, state, fitness, key) -> (params, batch_stats, state); None: no statistics
  sync_with_stats: Callable[..., tuple[PyTree, PyTree, PyTree]] | None = None
  shares_batch_stats: bool = True  # the batch statistics travel in the sync's collective
  # (params, new_params, state after the sync) -> {name: per-particle scalar} for metrics.jsonl
  metrics: Callable[[PyTree, PyTree, PyTree], dict] = no_metrics
  # (state, loss_of) -> state before the sync; loss_of(params) is the particle's probe loss
  refresh: Callable[[PyTree, Callable], PyTree] = no_refresh
  collective: Collective = Collective()  # how bytes_per_round travels (the clock's input)
  reads_fitness: bool = False  # the sync ranks the particles by their fitness
  shared_init: bool = False  # the particles must start from the same weights
  # num_particles -> None; raises errors.BadArgument when the strategy cannot run on that many
  check: Callable[[int], None] = any_number_of_particles
  # state -> state: the collective of the last sync's payload, which the round issues beside its
  # next local steps so that it runs behind them (streaming with a delay); None: the sync does all
  # of its collectives itself
  communicate: Callable[[PyTree], PyTree] | None = None


def make_strategy(
  init, sync_with_stats, reduce_grads, bytes_per_round, export, **kwargs
) -> SyncStrategy:
  """A SyncStrategy from its `sync_with_stats`; `sync` is the same function without statistics."""

  def sync(params, state, fitness, key):
    params, _, state = sync_with_stats(params, (), state, fitness, key)
    return params, state

  return SyncStrategy(
    init, sync, reduce_grads, bytes_per_round, export, sync_with_stats=sync_with_stats, **kwargs
  )


def sync_variables(strategy: SyncStrategy, params, batch_stats, state, fitness, key):
  """(params, batch_stats, state) after `strategy`'s sync; a strategy without `sync_with_stats`
  works for models without batch statistics only."""
  if strategy.sync_with_stats is not None:
    return strategy.sync_with_stats(params, batch_stats, state, fitness, key)
  if jax.tree.leaves(batch_stats):
    raise errors.ConfigError(
      "this sync strategy has no sync_with_stats: it cannot sync a model with batch "
      "statistics (BatchNorm); choose another model.name or give the strategy sync_with_stats"
    )
  params, state = strategy.sync(params, state, fitness, key)
  return params, batch_stats, state


def round_bytes(strategy: SyncStrategy, params, period: int, opt_state=None, batch_stats=()) -> int:
  """Bytes one particle puts into collectives per round: the strategy's model, plus the batch
  statistics once per round when the strategy shares them."""
  stats = tree_bytes(batch_stats) if strategy.shares_batch_stats else 0
  return strategy.bytes_per_round(params, period, opt_state) + stats


def export_mean(axis_name: AxisName):
  """`export` of the averaging strategies: the mean of the particles' weights and statistics."""
  return lambda params, stats, state, fitness: pmean_floats((params, stats), axis_name)


def export_best_particle(axis_name: AxisName):
  """`export` of independent particles: the particle with the lowest fitness (a training-split
  quantity; NaN never wins)."""

  def export(params, stats, state, fitness):
    j = jnp.argmin(all_fitness(fitness, axis_name))
    return masked_fetch((params, stats), particle_index(axis_name) == j, axis_name)

  return export


def weights_bytes(params, period, opt_state=None) -> int:
  """`bytes_per_round` of a strategy that sends its float32 weights once per round."""
  return tree_bytes(params)
