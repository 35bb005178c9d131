"""Faulty workers, a test scenario: the last `particles` particles are hit at one round.

kind "nan": their weights become NaN; "noise": their weights are replaced by N(0, scale^2) noise
(both at the first step of the fault's round); "lr": from that round on their updates are `scale`
times larger (a learning rate `scale` x too high). Everything here sees one particle (the round
maps it over the device's particles).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

FAULT_KINDS = ("none", "nan", "noise", "lr")


class Fault(NamedTuple):
  """Faulty workers: the last `particles` particles, hit at global step `round * period`."""

  kind: str
  particles: int
  round: int
  scale: float


def active(fault: "Fault | None") -> "Fault | None":
  """The fault, or None when there is none to inject."""
  return fault if fault is not None and fault.kind != "none" else None


def is_faulty(index: jax.Array, num_particles: int, fault: Fault) -> jax.Array:
  """Whether particle `index` is one of the `fault.particles` faulty ones (the last indices)."""
  return index >= num_particles - fault.particles


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
