"""Synchronization strategies: what the particles do with each other's weights at the end of a round.

Every strategy is a `SyncStrategy`, a NamedTuple of pure functions in the manner of optax:

    strategy = psops_jax.sync.pso(inertia=0.5, cognitive=0.5, social=0.5, axis_name="particles")
    state = strategy.init(params)                                   # one particle's params
    params, state = strategy.sync(params, state, fitness, key)      # runs where axis_name is bound
    grads = strategy.reduce_grads(grads)                            # every local step (ssgd all-reduces)

`init`, `sync` and `reduce_grads` see ONE particle's pytree; the particle axis is the named axis
`axis_name`, bound by `jax.shard_map`, `jax.pmap` or `jax.vmap(..., axis_name=...)`: the same functions
run under all three. `key` may be the same for every particle; strategies that need per-particle
randomness fold in `lax.axis_index(axis_name)`.

`bytes_per_round(params, period)` is the communication model: the bytes ONE particle puts into
collectives during one round of `period` local steps (the payload of each all-reduce or all-gather that
particle joins, 4 bytes per float32), not counting any algorithm-specific fan-out of the collective.
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

PyTree = Any

FITNESS_CHOICES = ("round_loss", "probe")
MEMORY_CHOICES = ("forever", "round")
RANDOM_CHOICES = ("particle", "coordinate", "none")


class SyncStrategy(NamedTuple):
  """A synchronization method: pure functions over one particle's pytree, under a named axis."""

  init: Callable[[PyTree], PyTree]
  sync: Callable[[PyTree, PyTree, jax.Array, jax.Array], tuple[PyTree, PyTree]]
  reduce_grads: Callable[[PyTree], PyTree]
  bytes_per_round: Callable[[PyTree, int], int]
  export: str  # which model the run exports: "global_best", "mean" or "best_particle"


def tree_bytes(tree: PyTree) -> int:
  """Bytes of all leaves of `tree` (number of elements x itemsize); leaves may be arrays or
  jax.ShapeDtypeStruct."""
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _identity(tree: PyTree) -> PyTree:
  return tree


# --------------------------------------------------------------------------------------------------
# Baselines.


def none(axis_name: str = "particles") -> SyncStrategy:
  """Independent particles: no communication at all (a lower bound for every sync method)."""
  del axis_name
  return SyncStrategy(
      init=lambda params: (),
      sync=lambda params, state, fitness, key: (params, state),
      reduce_grads=_identity,
      bytes_per_round=lambda params, period: 0,
      export="best_particle",
  )


def average(axis_name: str = "particles") -> SyncStrategy:
  """Parameter averaging (local SGD): x_i := (1/N) sum_k x_k at every sync; optimizer state stays local."""
  return SyncStrategy(
      init=lambda params: (),
      sync=lambda params, state, fitness, key: (lax.pmean(params, axis_name), state),
      reduce_grads=_identity,
      bytes_per_round=lambda params, period: tree_bytes(params),
      export="mean",
  )


def ssgd(axis_name: str = "particles") -> SyncStrategy:
  """Synchronous SGD: gradients all-reduced every step, g := (1/N) sum_k g_k; no sync between rounds.

  Particles that start identical stay identical (same gradient, same optimizer update).
  """
  return SyncStrategy(
      init=lambda params: (),
      sync=lambda params, state, fitness, key: (params, state),
      reduce_grads=lambda grads: lax.pmean(grads, axis_name),
      bytes_per_round=lambda params, period: period * tree_bytes(params),
      export="mean",
  )


# --------------------------------------------------------------------------------------------------
# PSO-PS.


class PSOState(NamedTuple):
  """Swarm state held by one particle.

  velocity:          v_i, same structure as the params, starts at zero.
  personal_best:     p_i, starts at the initial params.
  personal_fitness:  f(p_i), starts at +inf.
  global_best:       g after the last sync (the same on every particle), starts at the initial params.
  global_fitness:    f(g), starts at +inf.
  global_index:      index of the particle whose personal best was g (-1 before the first sync).
  """

  velocity: PyTree
  personal_best: PyTree
  personal_fitness: jax.Array
  global_best: PyTree
  global_fitness: jax.Array
  global_index: jax.Array


def sanitize_fitness(fitness: jax.Array) -> jax.Array:
  """NaN or +-inf fitness becomes +inf, so that such a particle never wins a comparison."""
  fitness = jnp.asarray(fitness, jnp.float32)
  return jnp.where(jnp.isfinite(fitness), fitness, jnp.inf)


def fetch_global_best(personal_best: PyTree, personal_fitness: jax.Array, axis_name: str):
  """g := p_j with j = argmin_k f(p_k) (ties: lowest index), fetched with ONE masked all-reduce.

  The N scalar fitnesses are all-gathered; the weights are psum(where(i == j, p_i, 0)), so no device ever
  holds more than one other particle's weights. `where` (not a multiply) keeps a NaN in a losing
  particle's weights out of the sum.
  Returns (g, f(g), j).
  """
  all_fitness = lax.all_gather(personal_fitness, axis_name)
  winner = jnp.argmin(all_fitness)
  is_winner = lax.axis_index(axis_name) == winner
  masked = jax.tree.map(lambda p: jnp.where(is_winner, p, jnp.zeros_like(p)), personal_best)
  return lax.psum(masked, axis_name), all_fitness[winner], winner


def draw_r(key: jax.Array, params: PyTree, random: str) -> tuple[PyTree, PyTree]:
  """r1, r2 ~ U(0,1): one scalar each per particle ("particle") or one per coordinate ("coordinate");
  "none" gives r1 = r2 = 1 (deterministic PSO).

  Returned as pytrees shaped like `params` (broadcastable scalars unless "coordinate").
  `key` must already be specific to the particle.
  """
  k1, k2 = jax.random.split(key)
  if random == "none":
    one = jnp.ones((), jnp.float32)
    return jax.tree.map(lambda _: one, params), jax.tree.map(lambda _: one, params)
  if random == "particle":
    r1, r2 = jax.random.uniform(k1), jax.random.uniform(k2)
    return jax.tree.map(lambda _: r1, params), jax.tree.map(lambda _: r2, params)
  leaves, treedef = jax.tree.flatten(params)
  keys1, keys2 = jax.random.split(k1, len(leaves)), jax.random.split(k2, len(leaves))
  r1 = [jax.random.uniform(k, x.shape, x.dtype) for k, x in zip(keys1, leaves)]
  r2 = [jax.random.uniform(k, x.shape, x.dtype) for k, x in zip(keys2, leaves)]
  return jax.tree.unflatten(treedef, r1), jax.tree.unflatten(treedef, r2)


def particle_key(key: jax.Array, axis_name: str) -> jax.Array:
  """The round key made specific to this particle: fold_in(key, axis_index)."""
  return jax.random.fold_in(key, lax.axis_index(axis_name))


def pso(inertia: float = 0.0,
        cognitive: float = 0.0,
        social: float = 1.0,
        mean_pull: float = 0.0,
        memory: str = "round",
        random: str = "particle",
        axis_name: str = "particles") -> SyncStrategy:
  """PSO-PS (Ye et al. 2020): the sync is one Particle Swarm Optimization step.

  With x_i' the weights after the round's local steps and f_i their fitness (lower is better):

      p_i := x_i'  if f_i < f(p_i)                 personal best   (memory="round": f(p_i) reset to
                                                                     +inf first, i.e. p_i := x_i')
      g   := p_j,  j = argmin_k f(p_k)              global best (one all-gather of N scalars, one
                                                                 masked all-reduce of the weights)
      v_i := w v_i + c1 r1 (p_i - x_i') + c2 r2 (g - x_i') + c3 (mean_k x_k' - x_i')
      x_i := x_i' + v_i

  w = inertia, c1 = cognitive, c2 = social, c3 = mean_pull (c3 > 0 is `pso_average`, one more
  all-reduce); r1, r2 ~ U(0,1) per particle or per coordinate, or 1 (`random`). Non-finite fitness never
  becomes a personal or global best.
  """
  if memory not in MEMORY_CHOICES:
    raise ValueError(f"sync.pso.memory={memory!r}: accepted values are {MEMORY_CHOICES}")
  if random not in RANDOM_CHOICES:
    raise ValueError(f"sync.pso.random={random!r}: accepted values are {RANDOM_CHOICES}")

  def init(params: PyTree) -> PSOState:
    inf = jnp.array(jnp.inf, jnp.float32)
    return PSOState(
        velocity=jax.tree.map(jnp.zeros_like, params),
        personal_best=params,
        personal_fitness=inf,
        global_best=params,
        global_fitness=inf,
        global_index=jnp.array(-1, jnp.int32),
    )

  def sync(params, state: PSOState, fitness, key):
    fitness = sanitize_fitness(fitness)
    remembered = state.personal_fitness if memory == "forever" else jnp.array(jnp.inf, jnp.float32)
    improved = fitness < remembered
    personal_best = jax.tree.map(lambda x, p: jnp.where(improved, x, p), params, state.personal_best)
    personal_fitness = jnp.where(improved, fitness, remembered)
    global_best, global_fitness, winner = fetch_global_best(personal_best, personal_fitness,
                                                            axis_name)
    r1, r2 = draw_r(particle_key(key, axis_name), params, random)
    velocity = jax.tree.map(
        lambda v, x, p, g, a, b: inertia * v + cognitive * a * (p - x) + social * b * (g - x),
        state.velocity, params, personal_best, global_best, r1, r2)
    if mean_pull:
      mean = lax.pmean(params, axis_name)
      velocity = jax.tree.map(lambda v, x, m: v + mean_pull * (m - x), velocity, params, mean)
    new_params = jax.tree.map(jnp.add, params, velocity)
    new_state = PSOState(velocity, personal_best, personal_fitness, global_best, global_fitness,
                         winner.astype(jnp.int32))
    return new_params, new_state

  def bytes_per_round(params, period):
    del period
    num_allreduce = 2 if mean_pull else 1
    return num_allreduce * tree_bytes(params) + 4  # + the particle's fitness in the all-gather

  return SyncStrategy(init, sync, _identity, bytes_per_round, export="global_best")


def pso_average(mean_pull: float = 0.5, social: float = 0.5, **kwargs) -> SyncStrategy:
  """PSO-PS with an extra pull toward the swarm mean: v_i gets + c3 (mean_k x_k' - x_i')."""
  return pso(mean_pull=mean_pull, social=social, **kwargs)


STRATEGIES = ("pso", "pso_average", "average", "ssgd", "none")


def from_config(sync_config, axis_name: str = "particles") -> SyncStrategy:
  """The strategy a `config.sync` section names."""
  name = sync_config.strategy
  if name in ("pso", "pso_average"):
    c = sync_config.pso
    kwargs = dict(inertia=c.inertia, cognitive=c.cognitive, social=c.social, memory=c.memory,
                  random=c.random, axis_name=axis_name)
    if name == "pso_average":
      return pso_average(mean_pull=c.mean_pull, **kwargs)
    return pso(**kwargs)
  if name == "average":
    return average(axis_name)
  if name == "ssgd":
    return ssgd(axis_name)
  if name == "none":
    return none(axis_name)
  raise ValueError(f"sync.strategy={name!r}: accepted values are {STRATEGIES}")
