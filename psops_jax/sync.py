"""Synchronization strategies: what the particles do with each other's weights at the end of a
round.

Every strategy is a `SyncStrategy`, a NamedTuple of pure functions in the manner of optax:

    strategy = psops_jax.sync.pso(inertia=0.5, cognitive=0.5, social=0.5, axis_name="particles")
    state = strategy.init(params)                                   # one particle's params
    params, state = strategy.sync(params, state, fitness, key)      # runs where axis_name is bound
    grads = strategy.reduce_grads(grads)                            # every local step (ssgd
    all-reduces)

`init`, `sync` and `reduce_grads` see ONE particle's pytree; the particle axis is the named axis
`axis_name`, bound by `jax.shard_map`, `jax.pmap` or `jax.vmap(..., axis_name=...)`: the same
functions run under all three. `axis_name` may also be a tuple of names, e.g. ("particles", "local")
for several particles per device (a mesh axis times a vmap axis): the particles are then numbered d
* L + l. `key` may be the same for every particle; strategies that need per-particle randomness fold
in `particle_index(axis_name)`. `opt_state = reduce_opt_state(opt_state, new_state, key)` is applied
to the optimizer state after every sync (identity except for `average(average_opt_state=True)` and
pso's `opt_state_on_move`).

Models with BatchNorm carry running statistics beside the weights. `sync_with_stats(params,
batch_stats, state, fitness, key) -> (params, batch_stats, state)` is the sync that also decides a
particle's batch statistics, in the same collective as the weights (a ravelled all-reduce carries
both): averaging strategies average them, selecting strategies take them from the particles they
select, `none` keeps them local, the robust average takes their median (or trimmed mean). `sync` is
that function with no statistics; every strategy's docstring says what it does with them.

`bytes_per_round(params, period, opt_state=None)` is the communication model: the bytes ONE particle
puts into collectives during one round of `period` local steps (the payload of each all-reduce or
all-gather that particle joins, 4 bytes per float32), not counting any algorithm-specific fan-out of
the collective. Its arguments may be arrays or jax.ShapeDtypeStruct.
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from psops_jax.clock import Collective

PyTree = Any

AxisName = str | tuple[str, ...]

FITNESS_CHOICES = ("round_loss", "probe")
SCHEDULE_CHOICES = ("constant", "linear")
MEMORY_CHOICES = ("forever", "round", "decay", "reevaluate")
OPT_STATE_CHOICES = ("keep", "reset", "follow")
RANDOM_CHOICES = ("particle", "coordinate", "none")


def keep_opt_state(opt_state: PyTree, state: PyTree, key: jax.Array) -> PyTree:
  """The default `reduce_opt_state`: each particle's optimizer state stays as it is."""
  return opt_state


def no_metrics(params: PyTree, new_params: PyTree, state: PyTree) -> dict:
  """The default `metrics`: a strategy with nothing to report at its syncs."""
  return {}


def no_refresh(state: PyTree, loss_of: Callable[[PyTree], jax.Array]) -> PyTree:
  """The default `refresh`: the state goes into the sync as it is."""
  return state


class SyncStrategy(NamedTuple):
  """A synchronization method: pure functions over one particle's pytree, under a named axis.

  Everything that depends on the strategy's state is the strategy's own: what it syncs
  (`sync_with_stats`), the model a run exports (`export`), what it reports (`metrics`) and any
  re-measurement of its state before the sync (`refresh`). Nothing outside reads the state.
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
    raise ValueError(
      "this sync strategy has no sync_with_stats: it cannot sync a model with batch "
      "statistics (BatchNorm)"
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


def masked_fetch(tree: PyTree, chosen: jax.Array, axis_name: AxisName) -> PyTree:
  """The `tree` of the one particle for which `chosen` is true, on every particle: ONE all-reduce of
  where(chosen, tree, 0) (`where`, not a multiply, keeps the others' NaN out of the sum)."""
  return psum_floats(
    jax.tree.map(lambda a: jnp.where(chosen, a, jnp.zeros_like(a)), tree), axis_name
  )


def export_best_particle(axis_name: AxisName):
  """`export` of independent particles: the particle with the lowest fitness (a training-split
  quantity; NaN never wins)."""

  def export(params, stats, state, fitness):
    j = jnp.argmin(all_gather_scalar(sanitize_fitness(fitness), axis_name))
    return masked_fetch((params, stats), particle_index(axis_name) == j, axis_name)

  return export


def tree_bytes(tree: PyTree) -> int:
  """Bytes of all leaves of `tree` (number of elements x itemsize); leaves may be arrays or
  jax.ShapeDtypeStruct."""
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _identity(tree: PyTree) -> PyTree:
  return tree


def map_floats(fn: Callable, tree: PyTree, *others: PyTree) -> PyTree:
  """fn applied to the floating-point leaves of `tree` (with the matching leaves of `others`);
  integer leaves (e.g. optax step counts) unchanged."""
  return jax.tree.map(
    lambda a, *b: fn(a, *b) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree, *others
  )


def _float_leaves(tree: PyTree) -> list:
  return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]


def _float_count(tree: PyTree) -> int:
  """The number of floating-point values in `tree` (leaves may be jax.ShapeDtypeStruct)."""
  return sum(math.prod(a.shape) for a in _float_leaves(tree))


def psum_floats(tree: PyTree, axis_name: AxisName) -> PyTree:
  """lax.psum of the floating-point leaves of `tree` in ONE all-reduce; integer leaves unchanged.

  The float leaves are concatenated into one vector (ravel_pytree, in their common dtype) and split
  back after the sum: the same sums as one psum per leaf, but one collective instead of one per
  leaf, which XLA:CPU does not combine itself (measured in docs/DESIGN.md with
  benchmarks/sync_cost.py). The price is the concatenated vector: one weight-sized buffer more than
  a per-leaf all-reduce needs (where the caller builds a masked copy anyway, as the PSO sync does,
  that copy becomes the vector).
  """
  floats = _float_leaves(tree)
  if not floats:
    return tree
  flat, unravel = ravel_pytree(floats)
  summed = iter(unravel(lax.psum(flat, axis_name)))
  return map_floats(lambda a: next(summed), tree)


def pmean_floats(tree: PyTree, axis_name: AxisName) -> PyTree:
  """(1/N) sum_k of the floating-point leaves in ONE all-reduce (psum_floats); integer leaves
  unchanged."""
  n = lax.psum(1, axis_name)
  return map_floats(lambda a: a / n, psum_floats(tree, axis_name))


def particle_index(axis_name: AxisName) -> jax.Array:
  """This particle's number along `axis_name` (row-major over a tuple of axes)."""
  return lax.axis_index(axis_name)


def all_gather_stacked(x: jax.Array, axis_name: AxisName) -> jax.Array:
  """The array `x` of every particle, stacked: shape (N,) + x.shape, ordered by `particle_index`.

  Over a tuple of axes the gathers are nested, innermost axis first (jax 0.10 rejects one all_gather
  over a mesh axis and a vmap axis together).
  """
  names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  shape = x.shape
  for name in reversed(names):
    x = lax.all_gather(x, name)
  return x.reshape((-1,) + shape)


def all_gather_scalar(x: jax.Array, axis_name: AxisName) -> jax.Array:
  """The scalar `x` of every particle, shape (N,), ordered by `particle_index`."""
  return all_gather_stacked(x, axis_name)


# --------------------------------------------------------------------------------------------------
# Baselines.


def none(axis_name: AxisName = "particles") -> SyncStrategy:
  """Independent particles: no communication at all (a lower bound for every sync method).
  Batch statistics stay local. Exports the particle with the lowest fitness."""
  return make_strategy(
    init=lambda params: (),
    sync_with_stats=lambda params, stats, state, fitness, key: (params, stats, state),
    reduce_grads=_identity,
    bytes_per_round=lambda params, period, opt_state=None: 0,
    export=export_best_particle(axis_name),
    shares_batch_stats=False,
    collective=Collective("none"),
  )


def average(axis_name: AxisName = "particles", average_opt_state: bool = False) -> SyncStrategy:
  """Parameter averaging (local SGD): x_i := (1/N) sum_k x_k at every sync; `outer("mean")`.

  The optimizer state stays local unless `average_opt_state`, which also averages its floating-point
  leaves (e.g. momentum buffers), one more all-reduce of their size. Batch statistics are averaged
  in the weights' all-reduce.
  """
  strategy = outer("mean", axis_name=axis_name)
  if not average_opt_state:
    return strategy
  return strategy._replace(
    reduce_opt_state=lambda opt_state, state, key: pmean_floats(opt_state, axis_name),
    bytes_per_round=lambda params, period, opt_state=None: (
      tree_bytes(params) + (tree_bytes(_float_leaves(opt_state)) if opt_state is not None else 0)
    ),
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
  )


# --------------------------------------------------------------------------------------------------
# PSO-PS.


class PSOState(NamedTuple):
  """Swarm state held by one particle. Fields the options do not need hold `()` (no memory at all):

  velocity:          v_i, same structure as the params, starts at zero; () unless w is used.
  personal_best:     p_i, starts at the initial params; () with memory="round" (p_i = x_i' always).
  personal_fitness:  f(p_i), starts at +inf.
  global_best:       g after the last sync (the same on every particle), starts at the initial
  params;
                     () when the winner's new position is g itself (w unused, no mean pull,
                     memory="round"): then g = the params of particle `global_index`.
  global_fitness:    f(g), starts at +inf.
  global_index:      index of the particle whose personal best was g (-1 before the first sync).
  distance:          ||x_i' - g|| at the last sync (global L2 norm; a metric).
  count:             syncs done so far (the step of the coefficients' schedules).
  """

  velocity: PyTree
  personal_best: PyTree
  personal_fitness: jax.Array
  global_best: PyTree
  global_fitness: jax.Array
  global_index: jax.Array
  distance: jax.Array
  count: jax.Array


def sanitize_fitness(fitness: jax.Array) -> jax.Array:
  """NaN or +-inf fitness becomes +inf, so that such a particle never wins a comparison."""
  fitness = jnp.asarray(fitness, jnp.float32)
  return jnp.where(jnp.isfinite(fitness), fitness, jnp.inf)


def fetch_global_best(personal_best: PyTree, personal_fitness: jax.Array, axis_name: AxisName):
  """g := p_j with j = argmin_k f(p_k) (ties: lowest index), fetched with ONE masked all-reduce
  (`personal_best` may be any pytree: the weights, or the weights and the batch statistics).

  The N scalar fitnesses are all-gathered; the weights are psum(where(i == j, p_i, 0)), so no device
  ever holds more than one other particle's weights. `where` (not a multiply) keeps a NaN in a
  losing particle's weights out of the sum.
  Returns (g, f(g), j).
  """
  all_fitness = all_gather_scalar(personal_fitness, axis_name)
  winner = jnp.argmin(all_fitness)
  is_winner = particle_index(axis_name) == winner
  masked = jax.tree.map(lambda p: jnp.where(is_winner, p, jnp.zeros_like(p)), personal_best)
  return psum_floats(masked, axis_name), all_fitness[winner], winner


def draw_r(key: jax.Array, params: PyTree, random: str) -> tuple[PyTree, PyTree]:
  """r1, r2 ~ U(0,1): one scalar each per particle ("particle") or one per coordinate
  ("coordinate"); "none" gives r1 = r2 = 1 (deterministic PSO).

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


def particle_key(key: jax.Array, axis_name: AxisName) -> jax.Array:
  """The round key made specific to this particle: fold_in(key, particle_index)."""
  return jax.random.fold_in(key, particle_index(axis_name))


Coefficient = float | Callable[[jax.Array], jax.Array]


def clip_by_global_norm(tree: PyTree, max_norm: float | jax.Array) -> PyTree:
  """tree * min(1, max_norm / ||tree||), ||.|| the global L2 norm over all leaves; max_norm 0 (a
  Python number): no-op."""
  if isinstance(max_norm, (int, float)) and not max_norm:
    return tree
  norm = optax.tree.norm(tree)
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
  return jax.tree.map(lambda a: a * scale, tree)


def clip_relative(tree: PyTree, ratio: float, reference: PyTree) -> PyTree:
  """tree * min(1, ratio ||reference|| / ||tree||) (global L2 norms); ratio 0: no-op."""
  if not ratio:
    return tree
  return clip_by_global_norm(tree, ratio * optax.tree.norm(reference))


def _used(coefficient: Coefficient) -> bool:
  """A coefficient that is a schedule, or a nonzero number."""
  return callable(coefficient) or coefficient != 0


def pso(
  inertia: Coefficient = 0.0,
  cognitive: Coefficient = 0.0,
  social: Coefficient = 1.0,
  mean_pull: float = 0.0,
  memory: str = "round",
  memory_decay: float = 0.0,
  random: str = "particle",
  max_velocity_norm: float = 0.0,
  max_velocity_ratio: float = 0.0,
  opt_state_on_move: str = "keep",
  axis_name: AxisName = "particles",
) -> SyncStrategy:
  """PSO-PS (Ye et al. 2020): the sync is one Particle Swarm Optimization step.

  With x_i' the weights after the round's local steps and f_i their fitness (lower is better):

      p_i := x_i'  if f_i < f(p_i)                 personal best (see `memory` for f(p_i))
      g   := p_j,  j = argmin_k f(p_k)              global best (one all-gather of N scalars, one
                                                                 masked all-reduce of the weights)
      v_i := w v_i + c1 r1 (p_i - x_i') + c2 r2 (g - x_i') + c3 (mean_k x_k' - x_i')
      v_i := v_i min(1, V / ||v_i||)                if max_velocity_norm V > 0
      v_i := v_i min(1, rho ||x_i'|| / ||v_i||)     if max_velocity_ratio rho > 0
      x_i := x_i' + v_i

  w = inertia, c1 = cognitive, c2 = social: numbers, or schedules (callables of the sync count, e.g.
  `optax.linear_schedule`). c3 = mean_pull (c3 > 0 is `pso_average`, one more all-reduce);
  r1, r2 ~ U(0,1) per particle or per coordinate, or 1 (`random`). Non-finite fitness never becomes
  a personal or global best. Batch statistics: every particle takes those of particle j (its current
  running statistics), fetched in the same masked all-reduce as g.

  memory: how long a best counts. "forever" (textbook PSO: f(p_i) compared as stored), "round"
  (f(p_i) reset to +inf at every sync, i.e. p_i := x_i'), "decay" (f(p_i) := f(p_i) (1 +
  memory_decay) at every sync before the comparison: an old best must have been that much better),
  "reevaluate" (f(p_i) is measured again on this round's probe batch before the comparison: the
  round does it, see `refresh`).

  opt_state_on_move: what a particle's optimizer state does when PSO moves its weights. "keep";
  "reset" (floating-point leaves, e.g. momentum, set to 0); "follow" (they move like the weights
  without inertia: s_i := s_i + c2 r2 (s_j - s_i) + c3 (mean_k s_k - s_i), s_j the current state of
  the particle j holding g: one more all-reduce of the state's size; needs random "particle" or
  "none").
  """
  if memory not in MEMORY_CHOICES:
    raise ValueError(f"sync.pso.memory={memory!r}: accepted values are {MEMORY_CHOICES}")
  if random not in RANDOM_CHOICES:
    raise ValueError(f"sync.pso.random={random!r}: accepted values are {RANDOM_CHOICES}")
  if opt_state_on_move not in OPT_STATE_CHOICES:
    raise ValueError(
      f"sync.pso.opt_state_on_move={opt_state_on_move!r}: accepted values are {OPT_STATE_CHOICES}"
    )
  if opt_state_on_move == "follow" and random == "coordinate":
    raise ValueError(
      "sync.pso.opt_state_on_move='follow' needs sync.pso.random 'particle' or 'none' "
      "(one r2 per particle to move the optimizer state with)"
    )
  value = lambda c, count: c(count) if callable(c) else c
  keeps_velocity = _used(inertia)
  keeps_personal_best = memory != "round"
  keeps_global_best = keeps_velocity or keeps_personal_best or bool(mean_pull)
  maybe = lambda keep, tree: tree if keep else ()

  def init(params: PyTree) -> PSOState:
    inf = jnp.array(jnp.inf, jnp.float32)
    return PSOState(
      velocity=maybe(keeps_velocity, jax.tree.map(jnp.zeros_like, params)),
      personal_best=maybe(keeps_personal_best, params),
      personal_fitness=inf,
      global_best=maybe(keeps_global_best, params),
      global_fitness=inf,
      global_index=jnp.array(-1, jnp.int32),
      distance=jnp.zeros((), jnp.float32),
      count=jnp.array(0, jnp.int32),
    )

  def remembered_fitness(state: PSOState) -> jax.Array:
    if memory == "round":
      return jnp.array(jnp.inf, jnp.float32)
    if memory == "decay":
      return state.personal_fitness * (1.0 + memory_decay)
    return sanitize_fitness(state.personal_fitness)  # forever; reevaluate: measured by the round

  def sync_with_stats(params, stats, state: PSOState, fitness, key):
    fitness = sanitize_fitness(fitness)
    remembered = remembered_fitness(state)
    improved = fitness < remembered
    personal_best = (
      jax.tree.map(lambda x, p: jnp.where(improved, x, p), params, state.personal_best)
      if keeps_personal_best
      else params
    )
    personal_fitness = jnp.where(improved, fitness, remembered)
    (global_best, stats), global_fitness, winner = fetch_global_best(
      (personal_best, stats), personal_fitness, axis_name
    )
    r1, r2 = draw_r(particle_key(key, axis_name), params, random)
    w, c1, c2 = (value(c, state.count) for c in (inertia, cognitive, social))
    to_best = jax.tree.map(jnp.subtract, global_best, params)
    velocity = jax.tree.map(lambda d, b: c2 * b * d, to_best, r2)
    if keeps_personal_best and _used(cognitive):
      velocity = jax.tree.map(
        lambda v, x, p, a: v + c1 * a * (p - x), velocity, params, personal_best, r1
      )
    if keeps_velocity:
      velocity = jax.tree.map(lambda v, old: v + w * old, velocity, state.velocity)
    if mean_pull:
      mean = pmean_floats(params, axis_name)
      velocity = jax.tree.map(lambda v, x, m: v + mean_pull * (m - x), velocity, params, mean)
    velocity = clip_by_global_norm(velocity, max_velocity_norm)
    velocity = clip_relative(velocity, max_velocity_ratio, params)
    new_params = jax.tree.map(jnp.add, params, velocity)
    new_state = PSOState(
      maybe(keeps_velocity, velocity),
      maybe(keeps_personal_best, personal_best),
      personal_fitness,
      maybe(keeps_global_best, global_best),
      global_fitness,
      winner.astype(jnp.int32),
      optax.tree.norm(to_best),
      state.count + 1,
    )
    return new_params, stats, new_state

  def move_opt_state(opt_state, state: PSOState, key):
    """The optimizer state after the sync `state` came from (see opt_state_on_move)."""
    if opt_state_on_move == "keep":
      return opt_state
    if opt_state_on_move == "reset":
      return map_floats(jnp.zeros_like, opt_state)
    is_winner = particle_index(axis_name) == state.global_index
    winners = psum_floats(
      map_floats(lambda a: jnp.where(is_winner, a, jnp.zeros_like(a)), opt_state), axis_name
    )
    _, r2 = draw_r(particle_key(key, axis_name), jnp.zeros(()), random)  # the sync's r2
    c2 = value(social, state.count - 1)
    moved = map_floats(lambda a, b: a + c2 * r2 * (b - a), opt_state, winners)
    if mean_pull:
      means = pmean_floats(opt_state, axis_name)
      moved = map_floats(lambda a, m, b: a + mean_pull * (m - b), moved, means, opt_state)
    return moved

  def bytes_per_round(params, period, opt_state=None):
    num_allreduce = 2 if mean_pull else 1
    moved = tree_bytes(_float_leaves(opt_state)) if opt_state is not None else 0
    extra = num_allreduce * moved if opt_state_on_move == "follow" else 0
    return num_allreduce * tree_bytes(params) + extra + 4  # + the fitness in the all-gather

  def export(params, stats, state: PSOState, fitness):
    """g and its statistics: the stored copy of g, or the params of the particle holding it (one
    masked all-reduce); before the first sync, particle 0."""
    holder = particle_index(axis_name) == jnp.maximum(state.global_index, 0)
    if keeps_global_best:
      return state.global_best, masked_fetch(stats, holder, axis_name)
    return masked_fetch((params, stats), holder, axis_name)

  def refresh(state: PSOState, loss_of):
    """memory="reevaluate": f(p_i) measured again on this round's probe batch."""
    if memory != "reevaluate":
      return state
    return state._replace(personal_fitness=loss_of(state.personal_best))

  return make_strategy(
    init,
    sync_with_stats,
    _identity,
    bytes_per_round,
    export=export,
    reduce_opt_state=move_opt_state,
    metrics=pso_metrics,
    refresh=refresh,
  )


def pso_metrics(params, new_params, state: PSOState) -> dict:
  """What the swarm did at a sync, for one particle (no extra communication): global_best = index
  of the global best's particle, distance_to_global_best = ||x_i' - g|| (x_i' before the move, g the
  new global best) and velocity_norm = ||v_i|| = ||x_i - x_i'||, the length of the move; global L2
  norms over all leaves."""
  move = jax.tree.map(jnp.subtract, new_params, params)
  return {
    "global_best": state.global_index,
    "distance_to_global_best": state.distance,
    "velocity_norm": optax.tree.norm(move),
  }


def pso_average(mean_pull: float = 0.5, social: Coefficient = 0.5, **kwargs) -> SyncStrategy:
  """PSO-PS with an extra pull toward the swarm mean: v_i gets + c3 (mean_k x_k' - x_i')."""
  return pso(mean_pull=mean_pull, social=social, **kwargs)


def trimmed_mean(stacked: jax.Array, trim: int) -> jax.Array:
  """The trimmed mean over axis 0 of the finite values (robust_average's rule). A coordinate whose n
  values are all finite takes the plain formula mean(sort(x)[trim:n - trim]): the same value as the
  masked sum, whose float rounding may differ in the last bit, so runs without faults stay
  bit-identical to the plain rule."""
  n = stacked.shape[0]
  finite = jnp.isfinite(stacked)
  ordered = jnp.sort(jnp.where(finite, stacked, jnp.nan), axis=0)  # the finite ascending, then NaN
  count = finite.sum(axis=0)
  t = jnp.minimum(trim, (count - 1) // 2)
  rank = jnp.arange(n).reshape((n,) + (1,) * (stacked.ndim - 1))
  keep = (rank >= t) & (rank < count - t)
  masked = jnp.where(keep, ordered, 0).sum(axis=0) / keep.sum(axis=0)  # no finite value: 0/0 = NaN
  return jnp.where(count == n, ordered[trim : n - trim].mean(axis=0), masked)


# --------------------------------------------------------------------------------------------------
# The composable outer sync: aggregate the particles, compress what they send, an outer optimizer.

AGGREGATES = ("mean", "median", "trimmed_mean", "topk", "fitness_weighted", "best_pull")
FITNESS_AGGREGATES = ("topk", "fitness_weighted", "best_pull")  # they rank the particles
COMPRESSORS = ("none", "bfloat16", "int8", "int4", "topk_fraction")
OUTER_OPTIMIZERS = ("none", "sgd", "nesterov", "adam")


def _ranks(fitness: jax.Array, axis_name: AxisName) -> jax.Array:
  """This particle's rank by fitness among all particles (0 = lowest; ties: lower index first;
  non-finite fitness ranks last), from one all-gather of N scalars."""
  all_fitness = all_gather_scalar(sanitize_fitness(fitness), axis_name)
  i = particle_index(axis_name)
  mine = all_fitness[i]
  others = jnp.arange(all_fitness.shape[0])
  return jnp.sum((all_fitness < mine) | ((all_fitness == mine) & (others < i)))


def make_aggregate(
  name: str,
  axis_name: AxisName,
  trim: int = 1,
  k: int = 4,
  temperature: float = 1.0,
  pull: float = 0.25,
) -> Callable[[PyTree, jax.Array], PyTree]:
  """`aggregate(v, fitness)`: one value of the particles' pytrees v_k, the same on every particle,
  coordinate by coordinate (f_k the fitness, lower is better; non-finite fitness ranks last):

      mean              (1/N) sum_k v_k                            one all-reduce
      median            median_k v_k (NaN values ignored)          all-gather of v
      trimmed_mean      mean of the finite v_k, `trim` lowest and highest dropped (robust_average)
      topk              (1/k) sum_{rank(k') < k} v_k'              one masked all-reduce
      fitness_weighted  sum_k w_k v_k, w = softmax(-f / temperature) over the finite f (a smooth
                        selection: temperature -> inf is the mean, -> 0 the best)
      best_pull         (1 - c) mean_k v_k + c v_j, j = argmin f, c = pull   one all-reduce

  The selecting ones gather the N fitnesses first (N scalars). `where`, never a multiply, keeps a
  NaN particle's values out of the masked sums.
  """
  if name not in AGGREGATES:
    raise ValueError(f"sync.outer.aggregate={name!r}: accepted values are {AGGREGATES}")

  def gathered(rule):
    return lambda v, fitness: jax.tree.map(lambda x: rule(all_gather_stacked(x, axis_name)), v)

  def trimmed(stacked):
    n = stacked.shape[0]
    if not 0 <= 2 * trim < n:
      raise ValueError(
        f"sync.robust.trim={trim}: accepted values are 0..{(n - 1) // 2} for {n} "
        "particles (2 * trim < num_particles)"
      )
    return trimmed_mean(stacked, trim)

  def topk(v, fitness):
    chosen = _ranks(fitness, axis_name) < k
    masked = jax.tree.map(lambda x: jnp.where(chosen, x, jnp.zeros_like(x)), v)
    return jax.tree.map(lambda s: s / k, psum_floats(masked, axis_name))

  def fitness_weighted(v, fitness):
    all_fitness = all_gather_scalar(sanitize_fitness(fitness), axis_name)
    weight = jax.nn.softmax(-all_fitness / temperature)[particle_index(axis_name)]
    return psum_floats(
      jax.tree.map(lambda x: jnp.where(weight > 0, weight * x, jnp.zeros_like(x)), v), axis_name
    )

  def best_pull(v, fitness):
    is_best = _ranks(fitness, axis_name) == 0
    n = lax.psum(1, axis_name)
    best_share = lambda x: jnp.where(is_best, pull * x, jnp.zeros_like(x))
    share = (lambda x: (1.0 - pull) / n * x + best_share(x)) if pull < 1 else best_share
    return psum_floats(jax.tree.map(share, v), axis_name)

  return {
    "mean": lambda v, fitness: pmean_floats(v, axis_name),
    "median": gathered(lambda stacked: jnp.nanmedian(stacked, axis=0)),
    "trimmed_mean": gathered(trimmed),
    "topk": topk,
    "fitness_weighted": fitness_weighted,
    "best_pull": best_pull,
  }[name]


def aggregate_collective(name: str) -> str:
  """The collective an aggregate needs: the coordinate-wise robust rules gather every particle's
  values; the others are sums (one all-reduce)."""
  return "all_gather" if name in ("median", "trimmed_mean") else "all_reduce"


class Compressor(NamedTuple):
  """What a particle puts on the wire: `apply(v)` the values the others receive (quantized and
  dequantized), `payload_bytes(n)` the bytes of n float32 values at the compressed width (scales
  and indices included), `error_feedback`: the particle keeps v - apply(v) and adds it next time."""

  apply: Callable[[jax.Array], jax.Array]
  payload_bytes: Callable[[int], int]
  error_feedback: bool = False


def quantize_blocks(v: jax.Array, levels: int, block_size: int) -> jax.Array:
  """Absmax quantization of a flat vector in blocks of `block_size`: per block s = max |v|, then
  q = round(v / s * levels) in [-levels, levels] and the received value s * (q / levels) (a block
  of equal values comes back exactly; a block of zeros stays zero)."""
  n = v.shape[0]
  blocks = jnp.pad(v, (0, (-n) % block_size)).reshape(-1, block_size)
  scale = jnp.max(jnp.abs(blocks), axis=1, keepdims=True)
  safe = jnp.where(scale > 0, scale, 1.0)
  q = jnp.round(blocks / safe * levels)
  return (safe * (q / levels)).reshape(-1)[:n]


def keep_largest(v: jax.Array, fraction: float) -> jax.Array:
  """The max(1, round(fraction n)) entries of largest |v| kept, the others zero (top-k
  sparsification)."""
  count = max(1, int(round(fraction * v.shape[0])))
  _, index = lax.top_k(jnp.abs(v), count)
  return jnp.zeros_like(v).at[index].set(v[index])


def make_compressor(name: str, block_size: int = 256, fraction: float = 0.1) -> Compressor:
  """none: float32 (4 bytes a value); bfloat16 (2 bytes); int8 / int4: absmax per block of
  `block_size` values (1 / 0.5 bytes a value + a float32 scale per block); topk_fraction: the
  `fraction` largest values as (float32 value, int32 index) pairs, with error feedback."""
  if name not in COMPRESSORS:
    raise ValueError(f"sync.outer.compress={name!r}: accepted values are {COMPRESSORS}")
  blocks = lambda n: -(-n // block_size)
  return {
    "none": Compressor(lambda v: v, lambda n: 4 * n),
    "bfloat16": Compressor(lambda v: v.astype(jnp.bfloat16).astype(v.dtype), lambda n: 2 * n),
    "int8": Compressor(lambda v: quantize_blocks(v, 127, block_size), lambda n: n + 4 * blocks(n)),
    "int4": Compressor(
      lambda v: quantize_blocks(v, 7, block_size), lambda n: -(-n // 2) + 4 * blocks(n)
    ),
    "topk_fraction": Compressor(
      lambda v: keep_largest(v, fraction),
      lambda n: 8 * max(1, int(round(fraction * n))),
      error_feedback=True,
    ),
  }[name]


class OuterState(NamedTuple):
  """One particle's state of `outer`: the shared outer weights theta (a copy on every particle),
  the outer optimizer's state, and (error feedback) the particle's residual, a flat vector. Fields
  the configuration does not need hold ()."""

  center: PyTree
  opt_state: PyTree
  residual: PyTree


def compress_tree(compressor: Compressor, tree: PyTree, residual):
  """(received tree, new residual): the float leaves of `tree` (+ the residual) as one flat
  vector through the compressor; the residual is what it dropped (error feedback) or ()."""
  floats = _float_leaves(tree)
  flat, unravel = ravel_pytree(floats)
  if compressor.error_feedback:
    flat = flat + residual
  sent = compressor.apply(flat)
  received = iter(unravel(sent))
  new_residual = flat - sent if compressor.error_feedback else ()
  return map_floats(lambda a: next(received), tree), new_residual


def outer(
  aggregate: str = "mean",
  optimizer: optax.GradientTransformation | None = None,
  compress: str = "none",
  axis_name: AxisName = "particles",
  trim: int = 1,
  k: int = 4,
  temperature: float = 1.0,
  pull: float = 0.25,
  block_size: int = 256,
  fraction: float = 0.1,
) -> SyncStrategy:
  """A sync built from parts: aggregate the particles, an outer optimizer on shared weights theta,
  and a compressor for what each particle sends. With x_i' the weights after the local steps,
  A the aggregate over particles (`make_aggregate`) and C the compressor (`make_compressor`):

      compress "none":   a     := A(x')                          (the weights themselves)
                         d     := theta - a                       (optimizer only)
      otherwise:         d     := A(C(theta - x_i' + e_i))        (pseudo-gradients, compressed;
                         e_i   := theta - x_i' + e_i - C(...)      error feedback: topk_fraction)
      optimizer None:    x_i   := a, or theta - d
      optimizer opt:     theta := theta + opt.update(d)          (optax: sgd(1) is averaging,
                         x_i   := theta                           sgd(eta, mu, nesterov) DiLoCo)

  Each particle quantizes and dequantizes its own pseudo-gradient and the aggregate is taken over
  the dequantized float32 values: the numbers are those of a compressed exchange, but the
  collective here still moves float32; `bytes_per_round` counts the compressed payload (values,
  scales, indices) that a real compressed exchange would send. Batch statistics are aggregated by
  the same rule (never compressed, no outer step). `average`, `diloco`, `robust_average`,
  `topk_average` and `best_pull` are presets of this function.
  """
  combine = make_aggregate(aggregate, axis_name, trim, k, temperature, pull)
  compressor = make_compressor(compress, block_size, fraction)
  keeps_center = optimizer is not None or compress != "none"

  def init(params):
    if not keeps_center:
      return ()
    flat, _ = ravel_pytree(_float_leaves(params))
    return OuterState(
      center=params,
      opt_state=optimizer.init(params) if optimizer is not None else (),
      residual=jnp.zeros_like(flat) if compressor.error_feedback else (),
    )

  def sync_with_stats(params, stats, state, fitness, key):
    stats = combine(stats, fitness)
    if compress == "none":
      aggregated = combine(params, fitness)
      if optimizer is None:
        return aggregated, stats, state
      step = jax.tree.map(jnp.subtract, state.center, aggregated)
      residual = state.residual
    else:
      pseudo = jax.tree.map(jnp.subtract, state.center, params)
      received, residual = compress_tree(compressor, pseudo, state.residual)
      step = combine(received, fitness)
    if optimizer is None:
      theta, opt_state = jax.tree.map(jnp.subtract, state.center, step), state.opt_state
    else:
      updates, opt_state = optimizer.update(step, state.opt_state, state.center)
      theta = optax.apply_updates(state.center, updates)
    return theta, stats, OuterState(theta, opt_state, residual)

  def bytes_per_round(params, period, opt_state=None):
    count = _float_count(params)
    return compressor.payload_bytes(count) + (4 if aggregate in FITNESS_AGGREGATES else 0)

  return make_strategy(
    init,
    sync_with_stats,
    _identity,
    bytes_per_round,
    export=export_mean(axis_name),
    collective=Collective(aggregate_collective(aggregate)),
  )


def outer_optimizer(name: str, learning_rate: float, momentum: float):
  """The optax transformation named by sync.outer.optimizer (None for "none")."""
  if name not in OUTER_OPTIMIZERS:
    raise ValueError(f"sync.outer.optimizer={name!r}: accepted values are {OUTER_OPTIMIZERS}")
  if name == "none":
    return None
  if name == "adam":
    return optax.adam(learning_rate)
  return optax.sgd(learning_rate, momentum=momentum or None, nesterov=name == "nesterov")


ROBUST_METHODS = ("median", "trimmed_mean")


def robust_average(
  method: str = "median", trim: int = 1, axis_name: AxisName = "particles"
) -> SyncStrategy:
  """A robust parameter average, coordinate by coordinate, over all N particles; `outer(method)`:

      median:        x_i := median_k x_k'            (NaN values ignored; all NaN gives NaN)
      trimmed_mean:  x_i := mean of the m finite x_k' of the coordinate, sorted, the t lowest and
                     t highest dropped, t = min(trim, (m - 1) // 2): non-finite values (NaN, inf)
                     are set aside before trimming, so they do not push healthy values out of one
                     end; no finite value gives NaN

  The obvious defence against faulty workers, for comparison with selection (PSO-PS). It needs every
  particle's weights on every device: an all-gather of the weights (N x the memory and received
  bytes of an all-reduce; bytes_per_round counts the payload each particle sends, its params).
  Batch statistics get the same rule, coordinate by coordinate.
  """
  if method not in ROBUST_METHODS:
    raise ValueError(f"sync.robust.method={method!r}: accepted values are {ROBUST_METHODS}")
  return outer(method, axis_name=axis_name, trim=trim)


def topk_average(k: int = 4, axis_name: AxisName = "particles") -> SyncStrategy:
  """The mean of the k best particles by fitness: x_i := (1/k) sum_{rank(j) < k} x_j' for every i;
  `outer("topk")`.

  k = N is parameter averaging; k = 1 is "everyone jumps to the best". One all-gather of N scalars
  and ONE all-reduce of the weights. Batch statistics: the mean of the same k, in the same
  all-reduce.
  """
  return outer("topk", axis_name=axis_name, k=k)


def best_pull(pull: float = 0.25, axis_name: AxisName = "particles") -> SyncStrategy:
  """Averaging pulled toward the best particle: x_i := m + c (g - m) = (1 - c) m + c g, with
  m = mean_k x_k', g = x_j', j = argmin_k f_k (this round's fitness), c = pull;
  `outer("best_pull")`.

  c = 0 is parameter averaging, c = 1 is "everyone jumps to the best" (PSO-PS with w = c1 = 0,
  c2 = 1, r2 = 1). One all-gather of N scalars and ONE all-reduce of the weights:
  psum((1 - c)/N x_i + c [i = j] x_i). Batch statistics get the same rule, in the same all-reduce.
  """
  return outer("best_pull", axis_name=axis_name, pull=pull)


def diloco(
  learning_rate: float = 0.7,
  momentum: float = 0.9,
  nesterov: bool = True,
  axis_name: AxisName = "particles",
) -> SyncStrategy:
  """DiLoCo-style outer optimizer (Douillard et al. 2023): the round's mean displacement is a
  pseudo-gradient for SGD with (Nesterov) momentum on shared outer weights theta; `outer("mean",
  optax.sgd(eta, mu, nesterov))`:

      delta := theta - mean_k x_k'                 (one all-reduce)
      m     := mu m + delta
      theta := theta - eta (delta + mu m)          (nesterov; plain momentum: theta - eta m)
      x_i   := theta

  eta = learning_rate, mu = momentum. eta = 1, mu = 0 is parameter averaging. The inner optimizers'
  states stay local. Batch statistics are averaged (no outer step), in the same all-reduce.
  """
  optimizer = optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)
  return outer("mean", optimizer, axis_name=axis_name)


# --------------------------------------------------------------------------------------------------
# Streaming sync: the outer sync one fragment at a time, overlapped with compute.


class StreamingState(NamedTuple):
  """One particle's state of `streaming`. The float weights are one flat vector padded to F
  fragments of c values: `center` theta (F c), `opt_state` the outer optimizer's state of each
  fragment stacked on a leading axis of F, `residual` the particle's error feedback (F c, or ()),
  `pending` the aggregated pseudo-gradients still on the wire (delay x c, or ()), `count` the syncs
  done so far."""

  center: jax.Array
  opt_state: PyTree
  residual: PyTree
  pending: PyTree
  count: jax.Array


def fragment_size(count: int, fragments: int) -> int:
  """c = ceil(count / F): the values of one fragment (the last one padded with zeros)."""
  return -(-count // fragments)


def streaming(
  fragments: int = 4,
  delay: int = 0,
  mix: float = 0.0,
  aggregate: str = "mean",
  optimizer: optax.GradientTransformation | None = None,
  compress: str = "none",
  axis_name: AxisName = "particles",
  trim: int = 1,
  k: int = 4,
  temperature: float = 1.0,
  pull: float = 0.25,
  block_size: int = 256,
  fraction: float = 0.1,
) -> SyncStrategy:
  """Streaming DiLoCo (Douillard et al. 2025): the outer sync of `outer`, one fragment per round.

  The float weights, ravelled in layer order, are cut into F = `fragments` contiguous slices of
  equal size c (equal sizes rather than layer boundaries: LeNet-5's layers are too unequal for
  fragments of similar size). Sync k (0-based, every `period` local steps) sends fragment
  f = k mod F, so each fragment is synced every F rounds with offset f rounds and each sync sends
  1/F of the weights. With d = `delay`, a = `mix`, A the aggregate and C the compressor of `outer`:

      at sync k:      u_k     := theta_f - A(x'_f)  or  A(C(theta_f - x'_f + e_f))   (f = k mod F)
      at sync k + d:  theta_f := theta_f + opt_f.update(u_k)     (the fragment's own outer state;
                      x_f     := theta_f + a (x_f - theta_f)      optimizer None: theta_f - u_k)

  u_k travels while the particles run d more rounds (tau = d x period local steps); then fragment f
  of each particle is mixed with the new theta_f: a = 0 takes theta_f, a = 1 keeps the local
  weights. The other fragments train on locally. F = 1, d = 0, a = 0 is `outer` with the same
  parts (DiLoCo with the Nesterov optimizer); 0 <= d < F, so a fragment's update lands before it is
  sent again. Batch statistics are averaged at every sync (aggregate A), in the same collective.
  The simulation reduces fragment f only; `bytes_per_round` counts its c values at the
  compressor's width.
  """
  if fragments < 1 or not 0 <= delay < fragments:
    raise ValueError(
      f"sync.streaming.delay={delay}: accepted values are 0..{fragments - 1} (fragments - 1)"
    )
  combine = make_aggregate(aggregate, axis_name, trim, k, temperature, pull)
  compressor = make_compressor(compress, block_size, fraction)

  def padded(params):
    flat, unravel = ravel_pytree(_float_leaves(params))
    c = fragment_size(flat.shape[0], fragments)
    return jnp.pad(flat, (0, fragments * c - flat.shape[0])), unravel, c

  def init(params):
    center, _, c = padded(params)
    slices = center.reshape(fragments, c)
    return StreamingState(
      center=center,
      opt_state=jax.vmap(optimizer.init)(slices) if optimizer is not None else (),
      residual=jnp.zeros_like(center) if compressor.error_feedback else (),
      pending=jnp.zeros((delay, c), center.dtype) if delay else (),
      count=jnp.zeros((), jnp.int32),
    )

  def sync_with_stats(params, stats, state: StreamingState, fitness, key):
    stats = combine(stats, fitness)
    x, unravel, c = padded(params)
    fragment = lambda v, f: lax.dynamic_slice(v, (f * c,), (c,))
    sent = state.count % fragments
    theta_sent = fragment(state.center, sent)
    residual = state.residual
    if compress == "none":
      u = theta_sent - combine(fragment(x, sent), fitness)
    else:
      pseudo = theta_sent - fragment(x, sent)
      if compressor.error_feedback:
        pseudo = pseudo + fragment(residual, sent)
      received = compressor.apply(pseudo)
      if compressor.error_feedback:
        residual = lax.dynamic_update_slice(residual, pseudo - received, (sent * c,))
      u = combine(received, fitness)
    if delay:
      queue = jnp.concatenate([state.pending, u[None]])
      u, pending = queue[0], queue[1:]
    else:
      pending = ()
    landed = (state.count - delay) % fragments  # the fragment whose update arrives now
    active = state.count >= delay  # nothing has arrived during the first d syncs
    theta = fragment(state.center, landed)
    opt_state = state.opt_state
    if optimizer is None:
      new_theta = theta - u
    else:
      mine = jax.tree.map(lambda s: s[landed], opt_state)
      updates, mine = optimizer.update(u, mine, theta)
      new_theta = optax.apply_updates(theta, updates)
      opt_state = jax.tree.map(
        lambda s, m: s.at[landed].set(jnp.where(active, m, s[landed])), opt_state, mine
      )
    new_theta = jnp.where(active, new_theta, theta)
    local = fragment(x, landed)
    mixed = jnp.where(active, new_theta + mix * (local - new_theta), local)
    center = lax.dynamic_update_slice(state.center, new_theta, (landed * c,))
    x = lax.dynamic_update_slice(x, mixed, (landed * c,))
    received = iter(unravel(x[: _float_count(params)]))
    params = map_floats(lambda a: next(received), params)
    return params, stats, StreamingState(center, opt_state, residual, pending, state.count + 1)

  def bytes_per_round(params, period, opt_state=None):
    c = fragment_size(_float_count(params), fragments)
    return compressor.payload_bytes(c) + (4 if aggregate in FITNESS_AGGREGATES else 0)

  return make_strategy(
    init,
    sync_with_stats,
    _identity,
    bytes_per_round,
    export=export_mean(axis_name),
    collective=Collective(aggregate_collective(aggregate), hidden_rounds=delay),
  )


# --------------------------------------------------------------------------------------------------
# Elastic averaging.


class CenterState(NamedTuple):
  """EASGD's center, a copy on every particle. `init` takes it from the particle's own params, so
  the particles must start from the same weights (train.init="shared")."""

  center: PyTree


def easgd(alpha: float = 0.1, axis_name: AxisName = "particles") -> SyncStrategy:
  """Elastic averaging SGD (Zhang, Choromanska, LeCun 2015), synchronous form, at every sync:

      x_i := x_i - alpha (x_i - c)
      c   := c + alpha sum_k (x_k - c)          (both from the values before the sync)

  alpha = 0 is independent training; N alpha <= 1 keeps the center between itself and the mean.
  The exported model is the center c. Batch statistics are averaged (the center has none of its
  own), in the same all-reduce.
  """

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
    CenterState,
    sync_with_stats,
    _identity,
    lambda params, period, opt_state=None: tree_bytes(params),
    export=export,
  )


# --------------------------------------------------------------------------------------------------
# The registry: every strategy by its config name.


def coefficient_schedule(start: float, end: float, schedule: str, rounds: int) -> Coefficient:
  """`start` (constant), or linear from `start` at the first sync to `end` at sync `rounds`."""
  if schedule == "constant":
    return start
  if schedule == "linear":
    return optax.linear_schedule(start, end, max(1, rounds - 1))
  raise ValueError(f"sync.pso.schedule={schedule!r}: accepted values are {SCHEDULE_CHOICES}")


def pso_from_config(sync_config, rounds: int, axis_name: AxisName, mean_pull: float = 0.0):
  """`pso` with the options of config.sync.pso (`rounds`: length of the coefficients' schedules)."""
  c = sync_config.pso
  w, c1, c2 = (
    coefficient_schedule(
      c[k], c[k + "_final"] if c.schedule == "linear" else c[k], c.schedule, rounds
    )
    for k in ("inertia", "cognitive", "social")
  )
  return pso(
    inertia=w,
    cognitive=c1,
    social=c2,
    mean_pull=mean_pull,
    memory=c.memory,
    memory_decay=c.memory_decay,
    random=c.random,
    max_velocity_norm=c.max_velocity_norm,
    max_velocity_ratio=c.max_velocity_ratio,
    opt_state_on_move=c.opt_state_on_move,
    axis_name=axis_name,
  )


def outer_parts(sync_config) -> dict:
  """The keyword arguments of `outer` (and `streaming`) that config.sync.outer names (trim, k and
  pull from sync.robust.trim, sync.topk and sync.best_pull)."""
  o = sync_config.outer
  return dict(
    aggregate=o.aggregate,
    optimizer=outer_optimizer(o.optimizer, o.learning_rate, o.momentum),
    compress=o.compress,
    trim=sync_config.robust.trim,
    k=sync_config.topk,
    temperature=o.temperature,
    pull=sync_config.best_pull,
    block_size=o.block_size,
    fraction=o.fraction,
  )


def outer_from_config(sync_config, axis_name: AxisName) -> SyncStrategy:
  """`outer` with the parts config.sync.outer names."""
  return outer(axis_name=axis_name, **outer_parts(sync_config))


def streaming_from_config(sync_config, axis_name: AxisName) -> SyncStrategy:
  """`streaming` with config.sync.streaming's fragments, delay and mix and sync.outer's parts."""
  s = sync_config.streaming
  return streaming(s.fragments, s.delay, s.mix, axis_name=axis_name, **outer_parts(sync_config))


class Registered(NamedTuple):
  """A strategy as the config names it: `build(config.sync, rounds, axis_name)`, whether the round
  must compute a fitness that ranks the particles (a probe batch; `reads_fitness(config.sync)`),
  and whether the particles must start from one shared copy of the weights (`shared_init`)."""

  build: Callable[[Any, int, AxisName], SyncStrategy]
  reads_fitness: Callable[[Any], bool] = lambda sync_config: False
  shared_init: Callable[[Any], bool] = lambda sync_config: False


_always = lambda sync_config: True

REGISTRY: dict[str, Registered] = {
  "pso": Registered(lambda c, rounds, axis: pso_from_config(c, rounds, axis), _always),
  "pso_average": Registered(
    lambda c, rounds, axis: pso_from_config(c, rounds, axis, mean_pull=c.pso.mean_pull), _always
  ),
  "average": Registered(lambda c, rounds, axis: average(axis, c.average_opt_state)),
  "ssgd": Registered(lambda c, rounds, axis: ssgd(axis), shared_init=_always),
  "easgd": Registered(lambda c, rounds, axis: easgd(c.easgd.alpha, axis), shared_init=_always),
  "diloco": Registered(
    lambda c, rounds, axis: diloco(
      c.diloco.learning_rate, c.diloco.momentum, c.diloco.nesterov, axis
    ),
    shared_init=_always,
  ),
  "none": Registered(lambda c, rounds, axis: none(axis)),
  "best_pull": Registered(lambda c, rounds, axis: best_pull(c.best_pull, axis), _always),
  "topk_average": Registered(lambda c, rounds, axis: topk_average(c.topk, axis), _always),
  "robust_average": Registered(
    lambda c, rounds, axis: robust_average(c.robust.method, c.robust.trim, axis)
  ),
  "outer": Registered(
    lambda c, rounds, axis: outer_from_config(c, axis),
    reads_fitness=lambda c: c.outer.aggregate in FITNESS_AGGREGATES,
    shared_init=lambda c: c.outer.optimizer != "none" or c.outer.compress != "none",
  ),
  "streaming": Registered(
    lambda c, rounds, axis: streaming_from_config(c, axis),
    reads_fitness=lambda c: c.outer.aggregate in FITNESS_AGGREGATES,
    shared_init=_always,
  ),
}
STRATEGIES = tuple(REGISTRY)


def registered(name: str) -> Registered:
  """The registry entry of `name`; ValueError naming the accepted names."""
  if name not in REGISTRY:
    raise ValueError(f"sync.strategy={name!r}: accepted values are {STRATEGIES}")
  return REGISTRY[name]


def from_config(sync_config, rounds: int = 1, axis_name: AxisName = "particles") -> SyncStrategy:
  """The strategy a `config.sync` section names (`rounds`: length of the schedules)."""
  return registered(sync_config.strategy).build(sync_config, rounds, axis_name)
