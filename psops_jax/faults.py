"""Faulty workers, a test scenario: the last `particles` particles are hit from one round on.

Faults of the worker itself (it computes badly):
  "nan"    its weights become NaN (at the first step of the fault's round);
  "noise"  its weights are replaced by N(0, scale^2) noise (at the same point);
  "lr"     from that round on its updates are `scale` times larger (a learning rate `scale` x too
           high).
Byzantine workers (it sends what it likes): from the fault's round on, at every sync, with x0 the
worker's weights at the start of the round and x' after its local steps (an honest round update
u = x' - x0), the worker presents

  "sign_flip"  x0 - u                       (its pseudo-gradient negated)
  "scale"      x0 + s u, s = scale          (e.g. -4, or 10)
  "alie"       x0 + mu - z sigma            ("a little is enough", Baruch et al. 2019)

where mu_j, sigma_j are the mean and (population) standard deviation of the HONEST workers' round
updates, coordinate by coordinate, as the paper's omniscient attacker knows them: every faulty
worker presents the same crafted update, which hides inside the honest spread (z sigma) while
pulling every coordinate the same way. z is `faults.z`, or the paper's z_max(n, f)
(`alie_z_max`). The attacks act on the weights the sync receives (what a selecting strategy
measures its fitness on, too); the worker's batch statistics stay honest.

Everything here sees one particle (the round maps it over the device's particles); the ALIE
statistics reach the other particles through the round's named axes (`update_statistics`).
"""

import math
import statistics
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from psops_jax.errors import require
from psops_jax.sync.collectives import AxisName, psum_floats

PyTree = Any

BYZANTINE_KINDS = ("sign_flip", "scale", "alie")
FAULT_KINDS = ("none", "nan", "noise", "lr") + BYZANTINE_KINDS
Z_RULES = ("fixed", "paper")  # alie's z: faults.z, or z_max(n, f) of Baruch et al. 2019


class Fault(NamedTuple):
  """Faulty workers: the last `particles` particles, hit at global step `round * period`; `z` is
  the ALIE attack's number of standard deviations."""

  kind: str
  particles: int
  round: int
  scale: float
  z: float = 1.0


class UpdateStatistics(NamedTuple):
  """The honest workers' round updates, coordinate by coordinate: mean and standard deviation."""

  mean: PyTree
  std: PyTree


def active(fault: "Fault | None") -> "Fault | None":
  """The fault, or None when there is none to inject."""
  return fault if fault is not None and fault.kind != "none" else None


def byzantine(fault: "Fault | None") -> "Fault | None":
  """The fault when it is a Byzantine attack on what the workers send at the sync, else None."""
  return fault if fault is not None and fault.kind in BYZANTINE_KINDS else None


def is_faulty(index: jax.Array, num_particles: int, fault: Fault) -> jax.Array:
  """Whether particle `index` is one of the `fault.particles` faulty ones (the last indices)."""
  return index >= num_particles - fault.particles


def alie_z_max(num_workers: int, faulty: int) -> float:
  """z_max of Baruch et al. 2019 for n workers of which f are faulty: with s = floor(n / 2 + 1) - f
  the honest workers the attackers need on their side for a majority, z_max = Phi^-1((n - s) / n),
  Phi the standard normal CDF (the paper's bound on how far from the honest mean the crafted
  value may sit for normally distributed updates). Needs 1 <= s < n."""
  s = math.floor(num_workers / 2 + 1) - faulty
  require(
    1 <= s < num_workers,
    "particles",
    faulty,
    f"z_max(n, f) needs 1 <= floor(n / 2 + 1) - f < n: f in "
    f"{max(0, math.floor(num_workers / 2 + 1) - num_workers + 1)}.."
    f"{math.floor(num_workers / 2)} for n={num_workers}",
  )
  return statistics.NormalDist().inv_cdf((num_workers - s) / num_workers)


def alie_z(rule: str, z: float, num_workers: int, faulty: int) -> float:
  """The z of the ALIE attack: `z` itself ("fixed") or alie_z_max(n, f) ("paper")."""
  require(rule in Z_RULES, "z_rule", rule, f"accepted values are {Z_RULES}")
  return z if rule == "fixed" else alie_z_max(num_workers, faulty)


def corrupt(params: PyTree, key: jax.Array, fault: Fault) -> PyTree:
  """The weights of a particle hit by a "nan" or "noise" fault."""
  if fault.kind == "nan":
    return jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), params)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
    treedef, [fault.scale * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)]
  )


def strike_weights(params, index, faulty, first_step, fault: Fault, period: int, key):
  """One particle's weights at the start of the steps from `first_step`: corrupted when it is
  faulty and they start the fault's round ("nan", "noise"); `key` is the faults' stream, into which
  the particle's index is folded."""
  if fault.kind not in ("nan", "noise"):
    return params
  hit = faulty & (first_step == fault.round * period)
  broken = corrupt(params, jax.random.fold_in(key, index), fault)
  return jax.tree.map(lambda b, a: jnp.where(hit, b, a), broken, params)


def scale_updates(updates, faulty, step, fault: Fault, period: int):
  """One particle's optimizer updates at global step `step`: `scale` x larger for a faulty
  particle from the fault's round on ("lr")."""
  if fault.kind != "lr":
    return updates
  factor = jnp.where(faulty & (step >= fault.round * period), fault.scale, 1.0)
  return jax.tree.map(lambda a: a * factor, updates)


def round_update(start: PyTree, end: PyTree) -> PyTree:
  """u = x' - x0: what a worker's local steps did in a round."""
  return jax.tree.map(jnp.subtract, end, start)


def sign_flipped(start: PyTree, end: PyTree) -> PyTree:
  """x0 - (x' - x0): the round update reversed ("sign_flip")."""
  return jax.tree.map(lambda a, b: a - (b - a), start, end)


def scaled(start: PyTree, end: PyTree, scale: float) -> PyTree:
  """x0 + s (x' - x0) ("scale")."""
  return jax.tree.map(lambda a, b: a + scale * (b - a), start, end)


def alie(start: PyTree, stats: UpdateStatistics, z: float) -> PyTree:
  """x0 + (mu - z sigma), coordinate by coordinate ("alie")."""
  return jax.tree.map(lambda a, m, s: a + (m - z * s), start, stats.mean, stats.std)


def update_statistics(update: PyTree, honest: jax.Array, axis_name: AxisName) -> UpdateStatistics:
  """Mean and population standard deviation over the honest particles of `update`, on every
  particle: two all-reduces (the mean, then the squared deviations from it: two passes, no
  cancellation of E[u^2] - mu^2). `honest` is this particle's membership; no honest particle
  gives NaN (0 / 0)."""
  count = lax.psum(honest.astype(jnp.float32), axis_name)
  masked_sum = lambda tree: psum_floats(
    jax.tree.map(lambda a: jnp.where(honest, a, jnp.zeros_like(a)), tree), axis_name
  )
  mean = jax.tree.map(lambda a: a / count, masked_sum(update))
  squares = masked_sum(jax.tree.map(lambda a, m: (a - m) ** 2, update, mean))
  return UpdateStatistics(mean, jax.tree.map(lambda a: jnp.sqrt(a / count), squares))


def crafted(start: PyTree, end: PyTree, stats: UpdateStatistics | None, fault: Fault) -> PyTree:
  """The weights a faulty worker presents, from its round start `start` = x0 and end `end` = x'
  (and, for "alie", the honest workers' statistics)."""
  if fault.kind == "sign_flip":
    return sign_flipped(start, end)
  if fault.kind == "scale":
    return scaled(start, end, fault.scale)
  if fault.kind == "alie":
    return alie(start, stats, fault.z)
  raise ValueError(f"no Byzantine attack {fault.kind!r}: {BYZANTINE_KINDS}")


def presented(start, end, faulty, strikes, fault: Fault, axis_name: AxisName) -> PyTree:
  """The weights one particle sends to the sync: its own `end` = x', or (faulty, and `strikes`:
  the fault's round has come) the attack's crafted weights. Runs under `axis_name` (ALIE's
  statistics are a collective over all particles)."""
  stats = None
  if fault.kind == "alie":
    stats = update_statistics(round_update(start, end), jnp.logical_not(faulty), axis_name)
  attack = crafted(start, end, stats, fault)
  hit = faulty & strikes
  return jax.tree.map(lambda a, b: jnp.where(hit, a, b), attack, end)
