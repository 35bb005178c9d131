"""Gossip: each particle averages with randomly chosen peers, point to point, no all-reduce."""

import jax
import jax.numpy as jnp

from psops_jax.clock import Collective
from psops_jax.errors import is_integer, require
from psops_jax.sync.collectives import (
  AxisName,
  map_floats,
  particle_count,
  shifted_floats,
  tree_bytes,
)
from psops_jax.sync.interface import SyncStrategy, export_mean, identity, make_strategy


def gossip_shifts(key: jax.Array, num_particles: int, peers: int) -> jax.Array:
  """The round's `peers` distinct shifts s_1..s_p in 1..N-1, drawn from `key` (the same on every
  particle): particle i averages with particles (i + s_q) mod N."""
  return 1 + jax.random.permutation(key, num_particles - 1)[:peers]


def gossip(peers: int = 1, axis_name: AxisName = "particles") -> SyncStrategy:
  """Gossip averaging (NoLoCo, arXiv 2506.10911; SwarmSGD, Nadiradze et al. 2021): at every
  sync each particle averages its weights with `peers` = p others, drawn at random,

      x_i := (x_i' + sum_{q=1..p} x'_{(i + s_q) mod N}) / (p + 1),

  s_1..s_p distinct shifts drawn uniformly from 1..N-1 with the round's key, the same on every
  particle (`gossip_shifts`): every particle's partner is uniform over the others. Each shift is a
  point-to-point exchange (lax.ppermute): a particle sends its weights to one peer and receives
  one's, 1 / N of what an all-reduce moves through each particle (`collectives.shifted_floats`).
  The step is doubly stochastic, so it keeps the mean of the particles; p = N - 1 is the mean
  (`average`). The particles differ between syncs: the exported model is their mean. Batch
  statistics are averaged with the same peers in the same exchange. No state: the shifts come
  from the round's key, so a resumed run draws the same ones. bytes_per_round: p x the weights.
  """
  require(is_integer(peers) and peers >= 1, "peers", peers, "accepted values are integers >= 1")

  def sync_with_stats(params, stats, state, fitness, key):
    shifts = gossip_shifts(key, particle_count(axis_name), peers)
    total = (params, stats)
    for q in range(peers):
      peer = shifted_floats((params, stats), shifts[q], axis_name)
      total = map_floats(jnp.add, total, peer)
    params, stats = map_floats(lambda a: a / (peers + 1), total)
    return params, stats, state

  def check(num_particles):
    require(
      peers <= num_particles - 1,
      "peers",
      peers,
      f"accepted values are the integers 1..{num_particles - 1} (num_particles - 1)",
    )

  return make_strategy(
    init=lambda params: (),
    sync_with_stats=sync_with_stats,
    reduce_grads=identity,
    bytes_per_round=lambda params, period, opt_state=None: peers * tree_bytes(params),
    export=export_mean(axis_name),
    collective=Collective("point_to_point"),
    check=check,
  )
