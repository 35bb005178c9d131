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
    centered_clip     v := v + (1/N) sum_k clip_tau(v_k - v), L times from a start v_0
                      (Karimireddy et al. 2021)                  L all-reduces

`where`, never a multiply, keeps a NaN particle's values out of the masked sums.
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from psops_jax.errors import is_integer, is_number, require
from psops_jax.sync.collectives import (
  AxisName,
  all_fitness,
  all_gather_stacked,
  clip_by_global_norm,
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
  takes_start: it iterates from a starting point, apply(v, fitness, axis_name, start): the place
      of the previous aggregate, which the caller knows (the outer sync: its center for weights,
      zero for pseudo-gradients); None: the aggregate chooses (centered_clip).
  sends: the collectives of the values per aggregation (each moves one payload).
  """

  name: str
  apply: Callable[..., PyTree]
  reads_fitness: bool = False
  collective: str = "all_reduce"
  check: Callable[[int], None] = any_number_of_particles
  takes_start: bool = False
  sends: int = 1

  def __call__(
    self, v: PyTree, fitness: jax.Array, axis_name: AxisName, start: PyTree | None = None
  ) -> PyTree:
    if self.takes_start:
      return self.apply(v, fitness, axis_name, start)
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


def finite_mean(v: PyTree, axis_name: AxisName) -> PyTree:
  """The mean over the particles whose values are all finite, on every particle (an all-reduce of
  the masked values and one of the count; none finite gives NaN)."""
  finite = jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(v)]))
  count = lax.psum(finite.astype(jnp.float32), axis_name)
  masked = jax.tree.map(lambda x: jnp.where(finite, x, jnp.zeros_like(x)), v)
  return jax.tree.map(lambda s: s / count, psum_floats(masked, axis_name))


def clipped_offset(v: PyTree, center: PyTree, tau: float) -> PyTree:
  """clip_tau(v - center) = (v - center) min(1, tau / ||v - center||), the global L2 norm of the
  particle's whole vector; a vector whose norm is not finite (NaN, or infinitely far) gives 0."""
  offset = jax.tree.map(jnp.subtract, v, center)
  finite = jnp.isfinite(optax.tree.norm(offset))
  return clip_by_global_norm(
    jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), offset), tau
  )


def centered_clip(tau: float = 1.0, iterations: int = 1) -> Aggregate:
  """Centered clipping (Karimireddy, He, Jaggi 2021): from a start v_0, L = iterations times

      v_{l+1} := v_l + (1/N) sum_k clip_tau(v_k - v_l),   clip_tau(u) = u min(1, tau / ||u||)

  with ||.|| the L2 norm of a particle's whole vector (all leaves): one all-reduce per iteration.
  A particle moves the aggregate by at most tau / N per iteration, however far it is; tau = inf
  is the mean. A particle whose offset is not finite (NaN weights) contributes 0.

  The start: the paper starts from the previous aggregate, its history. The outer sync gives the
  previous aggregate's place where the particles left it, its center theta: for weights the start
  is theta (the aggregate of the last sync, where every particle began the round), for
  pseudo-gradients theta - x' it is 0 -- the same point. We start there, not from the last round's
  aggregated update: the paper's history start pays because its workers send momenta, which change
  little from one step to the next by construction; our workers send a round's pseudo-gradient,
  with no such smoothing, and a start carried over from round to round is one the attackers can
  shift a little every round, while from theta their pull is bounded by f tau / N per iteration in
  every round afresh, with no state to keep (or to checkpoint). Without a start (the batch
  statistics, which no center tracks) v_0 is the mean of the particles whose values are all
  finite.
  """
  require(
    (is_number(tau) or tau == math.inf) and tau > 0,
    "tau",
    tau,
    "accepted values are numbers > 0 (inf: the mean)",
  )
  require(
    is_integer(iterations) and iterations >= 1,
    "iterations",
    iterations,
    "accepted values are integers >= 1",
  )

  def apply(v, fitness, axis_name, start):
    if not jax.tree.leaves(v):  # e.g. the batch statistics of a model without them
      return v
    center = finite_mean(v, axis_name) if start is None else start
    for _ in range(iterations):
      step = pmean_floats(clipped_offset(v, center, tau), axis_name)
      center = jax.tree.map(jnp.add, center, step)
    return center

  return Aggregate("centered_clip", apply, takes_start=True, sends=iterations)
