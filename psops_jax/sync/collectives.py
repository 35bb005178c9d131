"""Collectives over the particle axis, and the pytree helpers they need.

Every function here sees ONE particle's values and reaches the others through the named axis
`axis_name` (a name, or a tuple of names for several particles per device: particle d * L + l),
bound by `jax.shard_map`, `jax.pmap` or `jax.vmap(..., axis_name=...)`.
"""

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

PyTree = Any
AxisName = str | tuple[str, ...]


def tree_bytes(tree: PyTree) -> int:
  """Bytes of all leaves of `tree` (number of elements x itemsize); leaves may be arrays or
  jax.ShapeDtypeStruct."""
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def map_floats(fn: Callable, tree: PyTree, *others: PyTree) -> PyTree:
  """fn applied to the floating-point leaves of `tree` (with the matching leaves of `others`);
  integer leaves (e.g. optax step counts) unchanged."""
  return jax.tree.map(
    lambda a, *b: fn(a, *b) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree, *others
  )


def float_leaves(tree: PyTree) -> list:
  """The floating-point leaves of `tree`, in tree order."""
  return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]


def float_count(tree: PyTree) -> int:
  """The number of floating-point values in `tree` (leaves may be jax.ShapeDtypeStruct)."""
  return sum(math.prod(a.shape) for a in float_leaves(tree))


def clip_by_global_norm(tree: PyTree, max_norm: float | jax.Array) -> PyTree:
  """tree * min(1, max_norm / ||tree||), ||.|| the global L2 norm over all leaves; max_norm 0 (a
  Python number): no-op."""
  if isinstance(max_norm, (int, float)) and not max_norm:
    return tree
  norm = optax.tree.norm(tree)
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
  return jax.tree.map(lambda a: a * scale, tree)


def psum_floats(tree: PyTree, axis_name: AxisName) -> PyTree:
  """lax.psum of the floating-point leaves of `tree` in ONE all-reduce; integer leaves unchanged.

  The float leaves are concatenated into one vector (ravel_pytree, in their common dtype) and split
  back after the sum: the same sums as one psum per leaf, but one collective instead of one per
  leaf, which XLA:CPU does not combine itself (measured in docs/DESIGN.md with
  benchmarks/sync_cost.py). The price is the concatenated vector: one weight-sized buffer more than
  a per-leaf all-reduce needs (where the caller builds a masked copy anyway, as the PSO sync does,
  that copy becomes the vector).
  """
  floats = float_leaves(tree)
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


def masked_fetch(tree: PyTree, chosen: jax.Array, axis_name: AxisName) -> PyTree:
  """The floating-point leaves of the one particle for which `chosen` is true, on every particle:
  ONE all-reduce of where(chosen, tree, 0) (`where`, not a multiply, keeps the others' NaN out of
  the sum). Integer leaves stay this particle's own."""
  return psum_floats(map_floats(lambda a: jnp.where(chosen, a, jnp.zeros_like(a)), tree), axis_name)


def particle_index(axis_name: AxisName) -> jax.Array:
  """This particle's number along `axis_name` (row-major over a tuple of axes)."""
  return lax.axis_index(axis_name)


def particle_key(key: jax.Array, axis_name: AxisName) -> jax.Array:
  """The round key made specific to this particle: fold_in(key, particle_index)."""
  return jax.random.fold_in(key, particle_index(axis_name))


def all_gather_stacked(x: jax.Array, axis_name: AxisName) -> jax.Array:
  """The array `x` of every particle, stacked: shape (N,) + x.shape, ordered by `particle_index`.

  Over a tuple of axes the gathers are nested, innermost axis first (jax 0.10 rejects one all_gather
  over a mesh axis and a vmap axis together).
  """
  shape = x.shape
  for name in reversed(axis_names(axis_name)):
    x = lax.all_gather(x, name)
  return x.reshape((-1,) + shape)


def all_gather_scalar(x: jax.Array, axis_name: AxisName) -> jax.Array:
  """The scalar `x` of every particle, shape (N,), ordered by `particle_index`."""
  return all_gather_stacked(x, axis_name)


def axis_names(axis_name: AxisName) -> tuple[str, ...]:
  """`axis_name` as a tuple of names."""
  return (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)


def particle_count(axis_name: AxisName) -> int:
  """N, the number of particles along `axis_name` (a Python int: the axes' sizes are static)."""
  return math.prod(lax.axis_size(name) for name in axis_names(axis_name))


def rotate(x: jax.Array, shift: int, names: tuple[str, ...]) -> jax.Array:
  """x of particle (i + shift) mod N on particle i, for a static `shift`, by lax.ppermute.

  One name: one ppermute. Several (row-major: particle i = d L + l, L the size of the last axis,
  e.g. a mesh axis and a vmap axis) -- a ppermute over them together would permute the first axis
  alone -- with shift = a L + b: the values turn by b along the last axis (l takes l + b mod L),
  then particle l takes them from d + a over the other axes when l + b < L, else from d + a + 1.
  """
  if len(names) == 1:
    n = lax.axis_size(names[0])
    if shift % n == 0:
      return x
    return lax.ppermute(x, names[0], [((i + shift) % n, i) for i in range(n)])
  size = lax.axis_size(names[-1])
  a, b = divmod(shift, size)
  turned = rotate(x, b, names[-1:])
  near = rotate(turned, a, names[:-1])
  if b == 0:
    return near
  far = rotate(turned, a + 1, names[:-1])
  return jnp.where(lax.axis_index(names[-1]) < size - b, near, far)


def shifted_floats(tree: PyTree, shift: jax.Array, axis_name: AxisName) -> PyTree:
  """The floating-point leaves of particle (i + shift) mod N on particle i, ravelled into one
  point-to-point exchange (each particle sends its values to one and receives one's; over a
  device axis and a vmap axis, two ppermutes between devices when the shift crosses a device's
  block); integer leaves unchanged. `shift` may be traced (e.g. drawn from the round's key) but
  must be the same on every particle, in 1..N-1: lax.switch picks the static exchange of that
  shift, so every particle takes the same branch."""
  floats = float_leaves(tree)
  if not floats or particle_count(axis_name) == 1:  # N = 1: the particle itself
    return tree
  flat, unravel = ravel_pytree(floats)
  names = axis_names(axis_name)
  branches = [
    functools.partial(rotate, shift=s, names=names) for s in range(1, particle_count(axis_name))
  ]
  moved = iter(unravel(lax.switch(shift - 1, branches, flat)))
  return map_floats(lambda a: next(moved), tree)


def sanitize_fitness(fitness: jax.Array) -> jax.Array:
  """NaN or +-inf fitness becomes +inf, so that such a particle never wins a comparison."""
  fitness = jnp.asarray(fitness, jnp.float32)
  return jnp.where(jnp.isfinite(fitness), fitness, jnp.inf)


def all_fitness(fitness: jax.Array, axis_name: AxisName) -> jax.Array:
  """Every particle's sanitized fitness, shape (N,): one all-gather of N scalars."""
  return all_gather_scalar(sanitize_fitness(fitness), axis_name)


def fitness_rank(fitness: jax.Array, axis_name: AxisName) -> jax.Array:
  """This particle's rank by fitness among all particles (0 = lowest; ties: lower index first;
  non-finite fitness ranks last), from one all-gather of N scalars."""
  everyone = all_fitness(fitness, axis_name)
  i = particle_index(axis_name)
  mine = everyone[i]
  others = jnp.arange(everyone.shape[0])
  return jnp.sum((everyone < mine) | ((everyone == mine) & (others < i)))
