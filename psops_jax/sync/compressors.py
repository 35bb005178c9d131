"""Compressors: what a particle puts on the wire in the outer sync, as objects.

    from psops_jax.sync import compressors
    compressor = compressors.int8(block_size=256)   # checks its own arguments
    received = compressor.apply(flat)               # quantized and dequantized
    compressor.payload_bytes(n)                     # bytes of n values at the compressed width

none: float32 (4 bytes a value); bfloat16 (2 bytes); int8 / int4: absmax per block of
`block_size` values (1 / 0.5 bytes a value + a float32 scale per block); topk_fraction: the
`fraction` largest values as (float32 value, int32 index) pairs, with error feedback.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from psops_jax.errors import is_integer, is_number, require
from psops_jax.sync.collectives import float_leaves, map_floats

PyTree = Any


class Compressor(NamedTuple):
  """What a particle puts on the wire: `apply(v)` the values the others receive (quantized and
  dequantized), `payload_bytes(n)` the bytes of n float32 values at the compressed width (scales
  and indices included), `error_feedback`: the particle keeps v - apply(v) and adds it next time.
  `name` "none" sends the values as they are."""

  name: str
  apply: Callable[[jax.Array], jax.Array]
  payload_bytes: Callable[[int], int]
  error_feedback: bool = False


def none() -> Compressor:
  """float32 values as they are: 4 bytes a value."""
  return Compressor("none", lambda v: v, lambda n: 4 * n)


def bfloat16() -> Compressor:
  """Each value rounded to bfloat16: 2 bytes a value."""
  return Compressor("bfloat16", lambda v: v.astype(jnp.bfloat16).astype(v.dtype), lambda n: 2 * n)


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


def absmax(name: str, levels: int, value_bytes: Callable[[int], int], block_size: int):
  """Absmax quantization to `levels` levels each side of 0 per block of `block_size` values:
  value_bytes(n) for n values + a float32 scale per block."""
  require(
    is_integer(block_size) and block_size >= 1,
    "block_size",
    block_size,
    "accepted values are integers >= 1",
  )
  return Compressor(
    name,
    lambda v: quantize_blocks(v, levels, block_size),
    lambda n: value_bytes(n) + 4 * -(-n // block_size),
  )


def int8(block_size: int = 256) -> Compressor:
  """Absmax int8 per block: 1 byte a value + a float32 scale per block."""
  return absmax("int8", 127, lambda n: n, block_size)


def int4(block_size: int = 256) -> Compressor:
  """Absmax int4 per block: half a byte a value + a float32 scale per block."""
  return absmax("int4", 7, lambda n: -(-n // 2), block_size)


def keep_largest(v: jax.Array, fraction: float) -> jax.Array:
  """The max(1, round(fraction n)) entries of largest |v| kept, the others zero (top-k
  sparsification)."""
  count = max(1, int(round(fraction * v.shape[0])))
  _, index = lax.top_k(jnp.abs(v), count)
  return jnp.zeros_like(v).at[index].set(v[index])


def topk_fraction(fraction: float = 0.1) -> Compressor:
  """The `fraction` largest values as (float32 value, int32 index) pairs, with error feedback."""
  require(
    is_number(fraction) and 0 < fraction <= 1,
    "fraction",
    fraction,
    "accepted values are in (0, 1] (the share of values sent)",
  )
  return Compressor(
    "topk_fraction",
    lambda v: keep_largest(v, fraction),
    lambda n: 8 * max(1, int(round(fraction * n))),
    error_feedback=True,
  )


def compress_tree(compressor: Compressor, tree: PyTree, residual):
  """(received tree, new residual): the float leaves of `tree` (+ the residual) as one flat
  vector through the compressor; the residual is what it dropped (error feedback) or ()."""
  flat, unravel = ravel_pytree(float_leaves(tree))
  if compressor.error_feedback:
    flat = flat + residual
  sent = compressor.apply(flat)
  received = iter(unravel(sent))
  new_residual = flat - sent if compressor.error_feedback else ()
  return map_floats(lambda a: next(received), tree), new_residual
