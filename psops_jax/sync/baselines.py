"""The baselines that are not an outer sync: independent particles, synchronous SGD, EASGD."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from psops_jax.clock import Collective
from psops_jax.errors import is_number, require
from psops_jax.sync.collectives import AxisName, map_floats, pmean_floats, psum_floats, tree_bytes
from psops_jax.sync.interface import (
  SyncStrategy,
  export_best_particle,
  export_mean,
  identity,
  make_strategy,
  weights_bytes,
)

PyTree = Any


def none(axis_name: AxisName = "particles") -> SyncStrategy:
  """Independent particles: no communication at all (a lower bound for every sync method).
  Batch statistics stay local. Exports the particle with the lowest fitness."""
  return make_strategy(
    init=lambda params: (),
    sync_with_stats=lambda params, stats, state, fitness, key: (params, stats, state),
    reduce_grads=identity,
    bytes_per_round=lambda params, period, opt_state=None: 0,
    export=export_best_particle(axis_name),
    shares_batch_stats=False,
    collective=Collective("none"),
  )


def ssgd(axis_name: AxisName = "particles") -> SyncStrategy:
  """Synchronous SGD: gradients all-reduced every step, g := (1/N) sum_k g_k; no sync between
  rounds.

  Particles that start identical stay identical (same gradient, same optimizer update). Batch
  statistics (each particle's own batches) are averaged at the end of every round, one all-reduce.
  """
  return make_strategy(
    init=lambda params: (),
    sync_with_stats=lambda params, stats, state, fitness, key: (
      params,
      pmean_floats(stats, axis_name),
      state,
    ),
    reduce_grads=lambda grads: pmean_floats(grads, axis_name),
    bytes_per_round=lambda params, period, opt_state=None: period * tree_bytes(params),
    export=export_mean(axis_name),
    collective=Collective(per_step=True),
    shared_init=True,
  )


class CenterState(NamedTuple):
  """EASGD's center, a copy on every particle. `init` takes it from the particle's own params, so
  the particles must start from the same weights (`shared_init`)."""

  center: PyTree


def easgd(alpha: float = 0.1, axis_name: AxisName = "particles") -> SyncStrategy:
  """Elastic averaging SGD (Zhang, Choromanska, LeCun 2015), synchronous form, at every sync:

      x_i := x_i - alpha (x_i - c)
      c   := c + alpha sum_k (x_k - c)          (both from the values before the sync)

  alpha = 0 is independent training; N alpha <= 1 keeps the center between itself and the mean.
  The exported model is the center c. Batch statistics are averaged (the center has none of its
  own), in the same all-reduce.
  """
  require(is_number(alpha) and alpha >= 0, "alpha", alpha, "accepted values are numbers >= 0")

  def sync_with_stats(params, stats, state: CenterState, fitness, key):
    diff = jax.tree.map(jnp.subtract, params, state.center)
    total, stats_sum = psum_floats((diff, stats), axis_name)
    n = lax.psum(1, axis_name)
    new_params = jax.tree.map(lambda x, d: x - alpha * d, params, diff)
    center = jax.tree.map(lambda c, t: c + alpha * t, state.center, total)
    return new_params, map_floats(lambda s: s / n, stats_sum), state._replace(center=center)

  def export(params, stats, state: CenterState, fitness):
    return state.center, pmean_floats(stats, axis_name)

  return make_strategy(
    CenterState, sync_with_stats, identity, weights_bytes, export=export, shared_init=True
  )
