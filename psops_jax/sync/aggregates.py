"""Aggregates: the value of the particles' pytrees that the outer sync takes, as objects.

    from psops_jax.sync import aggregates
    aggregate = aggregates.topk(4)                 # checks its own arguments
    value = aggregate(v, fitness, axis_name)       # the same on every particle

Each constructor checks its arguments (`errors.BadArgument` names the argument and what is
accepted) and returns an `Aggregate` that carries what the rest of the sync needs to know: whether
it reads the fitness (the round must then compute one, and the fitness travels in an all-gather of
N scalars), which collective moves the values, and which numbers of particles it can take.
With v_k particle k's values and f_k its fitness (lower is better; non-finite fitness ranks last):

    mean              (1/N) sum_k v_k                            one all-reduce
    median            median_k v_k (NaN values ignored)          all-gather of v
    trimmed_mean      mean of the finite v_k, `trim` lowest and highest dropped
    topk              (1/k) sum_{rank(k') < k} v_k'              one masked all-reduce
    fitness_weighted  sum_k w_k v_k, w = softmax(-f / temperature) over the finite f (a smooth
                      selection: temperature -> inf is the mean, -> 0 the best)
    best_pull         (1 - c) mean_k v_k + c v_j, j = argmin f, c = pull   one all-reduce

`where`, never a multiply, keeps a NaN particle's values out of the masked sums.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from psops_jax.errors import is_integer, is_number, require
from psops_jax.sync.collectives import (
  AxisName,
  all_fitness,
  all_gather_stacked,
  fitness_rank,
  particle_index,
  pmean_floats,
  psum_floats,
)
from psops_jax.sync.interface import any_number_of_particles

PyTree = Any


class Aggregate(NamedTuple):
  """A rule that turns the particles' values into one value, the same on every particle.

  apply(v, fitness, axis_name) -> the aggregate (a pytree like v); call the object itself.
  reads_fitness: it ranks or weighs the particles by their fitness.
  collective: "all_reduce" (a sum) or "all_gather" (every particle's values on every particle).
  check(num_particles): raises errors.BadArgument when it cannot run on that many particles.
  """

  name: str
  apply: Callable[[PyTree, jax.Array, AxisName], PyTree]
  reads_fitness: bool = False
  collective: str = "all_reduce"
  check: Callable[[int], None] = any_number_of_particles

  def __call__(self, v: PyTree, fitness: jax.Array, axis_name: AxisName) -> PyTree:
    return self.apply(v, fitness, axis_name)

  @property
  def fitness_bytes(self) -> int:
    """The bytes of this particle's fitness in the all-gather (4 when it reads fitness)."""
    return 4 if self.reads_fitness else 0


def gathered(name: str, rule: Callable[[jax.Array], jax.Array], check=any_number_of_particles):
  """An aggregate that gathers every particle's values and reduces the stack with `rule`."""

  def apply(v, fitness, axis_name):
    return jax.tree.map(lambda x: rule(all_gather_stacked(x, axis_name)), v)

  return Aggregate(name, apply, collective="all_gather", check=check)


def mean() -> Aggregate:
  """(1/N) sum_k v_k, one all-reduce."""
  return Aggregate("mean", lambda v, fitness, axis_name: pmean_floats(v, axis_name))


def median() -> Aggregate:
  """The coordinate-wise median over the particles (NaN values ignored; all NaN gives NaN)."""
  return gathered("median", lambda stacked: jnp.nanmedian(stacked, axis=0))


def trimmed_mean_of(stacked: jax.Array, trim: int) -> jax.Array:
  """The trimmed mean over axis 0 of the finite values. A coordinate whose n values are all finite
  takes the plain formula mean(sort(x)[trim:n - trim]): the same value as the masked sum, whose
  float rounding may differ in the last bit, so runs without faults stay bit-identical to the
  plain rule. Non-finite values are set aside before trimming (t = min(trim, (m - 1) // 2) of the
  m finite ones), so they do not push healthy values out of one end; no finite value gives NaN."""
  n = stacked.shape[0]
  finite = jnp.isfinite(stacked)
  ordered = jnp.sort(jnp.where(finite, stacked, jnp.nan), axis=0)  # the finite ascending, then NaN
  count = finite.sum(axis=0)
  t = jnp.minimum(trim, (count - 1) // 2)
  rank = jnp.arange(n).reshape((n,) + (1,) * (stacked.ndim - 1))
  keep = (rank >= t) & (rank < count - t)
  masked = jnp.where(keep, ordered, 0).sum(axis=0) / keep.sum(axis=0)  # no finite value: 0/0 = NaN
  return jnp.where(count == n, ordered[trim : n - trim].mean(axis=0), masked)


def trimmed_mean(trim: int = 1) -> Aggregate:
  """The coordinate-wise mean of the finite values with the `trim` lowest and highest dropped
  (`trimmed_mean_of`); needs 2 trim < N."""
  require(is_integer(trim) and trim >= 0, "trim", trim, "accepted values are integers >= 0")

  def check(num_particles):
    require(
      2 * trim < num_particles,
      "trim",
      trim,
      f"accepted values are 0..{(num_particles - 1) // 2} for {num_particles} particles "
      "(2 * trim < num_particles)",
    )

  def rule(stacked):
    check(stacked.shape[0])
    return trimmed_mean_of(stacked, trim)

  return gathered("trimmed_mean", rule, check)


def topk(k: int = 4) -> Aggregate:
  """(1/k) sum of the k particles with the lowest fitness: one all-gather of N scalars and ONE
  masked all-reduce. k = N is the mean; k = 1 the best particle."""
  require(is_integer(k) and k >= 1, "k", k, "accepted values are integers >= 1")

  def apply(v, fitness, axis_name):
    chosen = fitness_rank(fitness, axis_name) < k
    masked = jax.tree.map(lambda x: jnp.where(chosen, x, jnp.zeros_like(x)), v)
    return jax.tree.map(lambda s: s / k, psum_floats(masked, axis_name))

  def check(num_particles):
    require(
      k <= num_particles,
      "k",
      k,
      f"accepted values are the integers 1..{num_particles} (num_particles)",
    )

  return Aggregate("topk", apply, reads_fitness=True, check=check)


def fitness_weighted(temperature: float = 1.0) -> Aggregate:
  """sum_k w_k v_k, w = softmax(-f / temperature) over the particles: one all-gather of N scalars
  and one all-reduce."""
  require(
    is_number(temperature) and temperature > 0,
    "temperature",
    temperature,
    "accepted values are finite numbers > 0",
  )

  def apply(v, fitness, axis_name):
    weight = jax.nn.softmax(-all_fitness(fitness, axis_name) / temperature)
    weight = weight[particle_index(axis_name)]
    return psum_floats(
      jax.tree.map(lambda x: jnp.where(weight > 0, weight * x, jnp.zeros_like(x)), v), axis_name
    )

  return Aggregate("fitness_weighted", apply, reads_fitness=True)


def best_pull(pull: float = 0.25) -> Aggregate:
  """(1 - c) mean_k v_k + c v_j, j = argmin_k f_k, c = pull: one all-gather of N scalars and ONE
  all-reduce of psum((1 - c)/N v_i + c [i = j] v_i). c = 0 is the mean, c = 1 the best particle."""
  require(is_number(pull) and 0 <= pull <= 1, "pull", pull, "accepted values are in [0, 1]")

  def apply(v, fitness, axis_name):
    is_best = fitness_rank(fitness, axis_name) == 0
    n = lax.psum(1, axis_name)
    best_share = lambda x: jnp.where(is_best, pull * x, jnp.zeros_like(x))
    share = (lambda x: (1.0 - pull) / n * x + best_share(x)) if pull < 1 else best_share
    return psum_floats(jax.tree.map(share, v), axis_name)

  return Aggregate("best_pull", apply, reads_fitness=True)
