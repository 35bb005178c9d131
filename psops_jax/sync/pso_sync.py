"""PSO-PS (Ye et al. 2020): the sync is one Particle Swarm Optimization step."""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from psops_jax.errors import is_number, require
from psops_jax.sync.collectives import (
  AxisName,
  all_gather_scalar,
  clip_by_global_norm,
  float_leaves,
  map_floats,
  masked_fetch,
  particle_index,
  particle_key,
  pmean_floats,
  sanitize_fitness,
  tree_bytes,
)
from psops_jax.sync.interface import SyncStrategy, identity, make_strategy

PyTree = Any
Coefficient = float | Callable[[jax.Array], jax.Array]

FITNESS_CHOICES = ("round_loss", "probe")
SCHEDULE_CHOICES = ("constant", "linear")
MEMORY_CHOICES = ("forever", "round", "decay", "reevaluate")
OPT_STATE_CHOICES = ("keep", "reset", "follow")
RANDOM_CHOICES = ("particle", "coordinate", "none")


class PSOState(NamedTuple):
  """Swarm state held by one particle. Fields the options do not need hold `()` (no memory at all):

  velocity:          v_i, same structure as the params, starts at zero; () unless w is used.
  personal_best:     p_i, starts at the initial params; () with memory="round" (p_i = x_i' always).
  personal_fitness:  f(p_i), starts at +inf.
  global_best:       g after the last sync (the same on every particle), starts at the initial
                     params; () when the winner's new position is g itself (w unused, no mean
                     pull, memory="round"): then g = the params of particle `global_index`.
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


class PSOOptions(NamedTuple):
  """The arguments of `pso`, checked, and what they imply for the state it keeps."""

  inertia: Coefficient
  cognitive: Coefficient
  social: Coefficient
  mean_pull: float
  memory: str
  memory_decay: float
  random: str
  max_velocity_norm: float
  max_velocity_ratio: float
  opt_state_on_move: str
  axis_name: AxisName

  @property
  def keeps_velocity(self) -> bool:
    return used(self.inertia)

  @property
  def keeps_personal_best(self) -> bool:
    return self.memory != "round"

  @property
  def keeps_global_best(self) -> bool:
    return self.keeps_velocity or self.keeps_personal_best or bool(self.mean_pull)


def used(coefficient: Coefficient) -> bool:
  """A coefficient that is a schedule, or a nonzero number."""
  return callable(coefficient) or coefficient != 0


def value_at(coefficient: Coefficient, count: jax.Array):
  """A coefficient's value at sync `count` (a schedule is called, a number is itself)."""
  return coefficient(count) if callable(coefficient) else coefficient


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


def clip_relative(tree: PyTree, ratio: float, reference: PyTree) -> PyTree:
  """tree * min(1, ratio ||reference|| / ||tree||) (global L2 norms); ratio 0: no-op."""
  if not ratio:
    return tree
  return clip_by_global_norm(tree, ratio * optax.tree.norm(reference))


def fetch_global_best(personal_best: PyTree, personal_fitness: jax.Array, axis_name: AxisName):
  """g := p_j with j = argmin_k f(p_k) (ties: lowest index), fetched with ONE masked all-reduce
  (`personal_best` may be any pytree: the weights, or the weights and the batch statistics).

  The N scalar fitnesses are all-gathered; the weights are psum(where(i == j, p_i, 0)), so no device
  ever holds more than one other particle's weights. Returns (g, f(g), j).
  """
  everyone = all_gather_scalar(personal_fitness, axis_name)
  winner = jnp.argmin(everyone)
  best = masked_fetch(personal_best, particle_index(axis_name) == winner, axis_name)
  return best, everyone[winner], winner


def init_state(o: PSOOptions, params: PyTree) -> PSOState:
  """The state before the first sync: zero velocity, bests at the initial params, fitness +inf."""
  maybe = lambda keep, tree: tree if keep else ()
  inf = jnp.array(jnp.inf, jnp.float32)
  return PSOState(
    velocity=maybe(o.keeps_velocity, jax.tree.map(jnp.zeros_like, params)),
    personal_best=maybe(o.keeps_personal_best, params),
    personal_fitness=inf,
    global_best=maybe(o.keeps_global_best, params),
    global_fitness=inf,
    global_index=jnp.array(-1, jnp.int32),
    distance=jnp.zeros((), jnp.float32),
    count=jnp.array(0, jnp.int32),
  )


def remembered_fitness(o: PSOOptions, state: PSOState) -> jax.Array:
  """f(p_i) as the comparison sees it (see `memory`)."""
  if o.memory == "round":
    return jnp.array(jnp.inf, jnp.float32)
  if o.memory == "decay":
    return state.personal_fitness * (1.0 + o.memory_decay)
  return sanitize_fitness(state.personal_fitness)  # forever; reevaluate: measured by the round


def velocity_of(o: PSOOptions, params, personal_best, global_best, state: PSOState, key):
  """v_i := w v_i + c1 r1 (p_i - x_i') + c2 r2 (g - x_i') + c3 (mean - x_i'), clipped."""
  r1, r2 = draw_r(particle_key(key, o.axis_name), params, o.random)
  w, c1, c2 = (value_at(c, state.count) for c in (o.inertia, o.cognitive, o.social))
  to_best = jax.tree.map(jnp.subtract, global_best, params)
  velocity = jax.tree.map(lambda d, b: c2 * b * d, to_best, r2)
  if o.keeps_personal_best and used(o.cognitive):
    velocity = jax.tree.map(
      lambda v, x, p, a: v + c1 * a * (p - x), velocity, params, personal_best, r1
    )
  if o.keeps_velocity:
    velocity = jax.tree.map(lambda v, old: v + w * old, velocity, state.velocity)
  if o.mean_pull:
    mean = pmean_floats(params, o.axis_name)
    velocity = jax.tree.map(lambda v, x, m: v + o.mean_pull * (m - x), velocity, params, mean)
  velocity = clip_by_global_norm(velocity, o.max_velocity_norm)
  return clip_relative(velocity, o.max_velocity_ratio, params), to_best


def sync_with_stats(o: PSOOptions, params, stats, state: PSOState, fitness, key):
  """The PSO step (see `pso`); the batch statistics are those of the global best's particle."""
  maybe = lambda keep, tree: tree if keep else ()
  fitness = sanitize_fitness(fitness)
  remembered = remembered_fitness(o, state)
  improved = fitness < remembered
  personal_best = (
    jax.tree.map(lambda x, p: jnp.where(improved, x, p), params, state.personal_best)
    if o.keeps_personal_best
    else params
  )
  personal_fitness = jnp.where(improved, fitness, remembered)
  (global_best, stats), global_fitness, winner = fetch_global_best(
    (personal_best, stats), personal_fitness, o.axis_name
  )
  velocity, to_best = velocity_of(o, params, personal_best, global_best, state, key)
  new_state = PSOState(
    maybe(o.keeps_velocity, velocity),
    maybe(o.keeps_personal_best, personal_best),
    personal_fitness,
    maybe(o.keeps_global_best, global_best),
    global_fitness,
    winner.astype(jnp.int32),
    optax.tree.norm(to_best),
    state.count + 1,
  )
  return jax.tree.map(jnp.add, params, velocity), stats, new_state


def move_opt_state(o: PSOOptions, opt_state, state: PSOState, key):
  """The optimizer state after the sync `state` came from (see opt_state_on_move)."""
  if o.opt_state_on_move == "keep":
    return opt_state
  if o.opt_state_on_move == "reset":
    return map_floats(jnp.zeros_like, opt_state)
  winners = masked_fetch(opt_state, particle_index(o.axis_name) == state.global_index, o.axis_name)
  _, r2 = draw_r(particle_key(key, o.axis_name), jnp.zeros(()), o.random)  # the sync's r2
  c2 = value_at(o.social, state.count - 1)
  moved = map_floats(lambda a, b: a + c2 * r2 * (b - a), opt_state, winners)
  if o.mean_pull:
    means = pmean_floats(opt_state, o.axis_name)
    moved = map_floats(lambda a, m, b: a + o.mean_pull * (m - b), moved, means, opt_state)
  return moved


def bytes_per_round(o: PSOOptions, params, period, opt_state=None) -> int:
  """The weights (twice with a mean pull), the moved optimizer state, and the fitness."""
  num_allreduce = 2 if o.mean_pull else 1
  moved = tree_bytes(float_leaves(opt_state)) if opt_state is not None else 0
  extra = num_allreduce * moved if o.opt_state_on_move == "follow" else 0
  return num_allreduce * tree_bytes(params) + extra + 4  # + the fitness in the all-gather


def export(o: PSOOptions, params, stats, state: PSOState, fitness):
  """g and its statistics: the stored copy of g, or the params of the particle holding it (one
  masked all-reduce); before the first sync, particle 0."""
  holder = particle_index(o.axis_name) == jnp.maximum(state.global_index, 0)
  if o.keeps_global_best:
    return state.global_best, masked_fetch(stats, holder, o.axis_name)
  return masked_fetch((params, stats), holder, o.axis_name)


def refresh(o: PSOOptions, state: PSOState, loss_of):
  """memory="reevaluate": f(p_i) measured again on this round's probe batch."""
  if o.memory != "reevaluate":
    return state
  return state._replace(personal_fitness=loss_of(state.personal_best))


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


def check_options(o: PSOOptions) -> None:
  """errors.BadArgument for an option out of range."""
  for name in ("mean_pull", "memory_decay", "max_velocity_norm", "max_velocity_ratio"):
    value = getattr(o, name)
    require(is_number(value) and value >= 0, name, value, "accepted values are numbers >= 0")
  for name, accepted in (
    ("memory", MEMORY_CHOICES),
    ("random", RANDOM_CHOICES),
    ("opt_state_on_move", OPT_STATE_CHOICES),
  ):
    value = getattr(o, name)
    require(value in accepted, name, value, f"accepted values are {accepted}")
  require(
    not (o.opt_state_on_move == "follow" and o.random == "coordinate"),
    "opt_state_on_move",
    o.opt_state_on_move,
    "'follow' needs random 'particle' or 'none' (one r2 per particle to move the optimizer "
    "state with)",
  )


def pso(
  inertia: Coefficient = 0.0,
  cognitive: Coefficient = 0.0,
  social: Coefficient = 1.0,
  mean_pull: float = 0.0,
  memory: str = "round",
  memory_decay: float = 0.1,
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
  o = PSOOptions(
    inertia,
    cognitive,
    social,
    mean_pull,
    memory,
    memory_decay,
    random,
    max_velocity_norm,
    max_velocity_ratio,
    opt_state_on_move,
    axis_name,
  )
  check_options(o)
  bind = lambda fn: functools.partial(fn, o)
  return make_strategy(
    bind(init_state),
    bind(sync_with_stats),
    identity,
    bind(bytes_per_round),
    export=bind(export),
    reduce_opt_state=bind(move_opt_state),
    metrics=pso_metrics,
    refresh=bind(refresh),
    reads_fitness=True,
  )


def pso_average(mean_pull: float = 0.5, **kwargs) -> SyncStrategy:
  """PSO-PS with an extra pull toward the swarm mean: v_i gets + c3 (mean_k x_k' - x_i'), c3 =
  `mean_pull`; every other argument as `pso` (with its defaults)."""
  return pso(mean_pull=mean_pull, **kwargs)


def coefficient_schedule(start: float, end: float, schedule: str, rounds: int) -> Coefficient:
  """`start` (constant), or linear from `start` at the first sync to `end` at sync `rounds`."""
  require(
    schedule in SCHEDULE_CHOICES, "schedule", schedule, f"accepted values are {SCHEDULE_CHOICES}"
  )
  if schedule == "constant":
    return start
  return optax.linear_schedule(start, end, max(1, rounds - 1))
