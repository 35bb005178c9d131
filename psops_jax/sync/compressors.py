"""Compressors: what a particle puts on the wire in the outer sync, as objects.

    from psops_jax.sync import compressors
    compressor = compressors.int8(block_size=256)   # checks its own arguments
    received = compressor.apply(flat)               # quantized and dequantized
    compressor.payload_bytes(n)                     # bytes of n values at the compressed width

none: float32 (4 bytes a value); bfloat16 (2 bytes); int8 / int4: absmax per block of
`block_size` values (1 / 0.5 bytes a value + a float32 scale per block); int2: the same at a
quarter byte a value, with error feedback; topk_fraction: the `fraction` largest values as (float32
value, int32 index) pairs, with error feedback; sparse_2bit (SparseLoCo's): per block of
`block_size` values the `fraction` largest, each at 2 bits and a packed in-block index, a float32
scale per block, with error feedback.

Error feedback (`send`): the particle keeps e := u - C(u), u = v + beta e, beta the compressor's
`feedback_decay` (1: plain error feedback; SparseLoCo decays it, in place of outer momentum).
"""

import math
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
  and indices included), `error_feedback`: the particle keeps what was not sent and adds it, times
  `feedback_decay`, next time (`send`). `name` "none" sends the values as they are."""

  name: str
  apply: Callable[[jax.Array], jax.Array]
  payload_bytes: Callable[[int], int]
  error_feedback: bool = False
  feedback_decay: float = 1.0


def none() -> Compressor:
  """float32 values as they are: 4 bytes a value."""
  return Compressor("none", lambda v: v, lambda n: 4 * n)


def bfloat16() -> Compressor:
  """Each value rounded to bfloat16: 2 bytes a value."""
  return Compressor("bfloat16", lambda v: v.astype(jnp.bfloat16).astype(v.dtype), lambda n: 2 * n)


def in_blocks(v: jax.Array, block_size: int) -> jax.Array:
  """A flat vector as rows of `block_size` values, the last one padded with zeros."""
  return jnp.pad(v, (0, (-v.shape[0]) % block_size)).reshape(-1, block_size)


def quantize_blocks(v: jax.Array, levels: int, block_size: int) -> jax.Array:
  """Absmax quantization of a flat vector in blocks of `block_size`: per block s = max |v|, then
  q = round(v / s * levels) in [-levels, levels] and the received value s * (q / levels) (a block
  of equal values comes back exactly; a block of zeros stays zero)."""
  blocks = in_blocks(v, block_size)
  scale = jnp.max(jnp.abs(blocks), axis=1, keepdims=True)
  safe = jnp.where(scale > 0, scale, 1.0)
  q = jnp.round(blocks / safe * levels)
  return (safe * (q / levels)).reshape(-1)[: v.shape[0]]


def check_block_size(block_size) -> None:
  require(
    is_integer(block_size) and block_size >= 1,
    "block_size",
    block_size,
    "accepted values are integers >= 1",
  )


def check_fraction(fraction) -> None:
  require(
    is_number(fraction) and 0 < fraction <= 1,
    "fraction",
    fraction,
    "accepted values are in (0, 1] (the share of values sent)",
  )


def check_feedback_decay(feedback_decay) -> None:
  require(
    is_number(feedback_decay) and 0 <= feedback_decay <= 1,
    "feedback_decay",
    feedback_decay,
    "accepted values are in [0, 1] (1: plain error feedback)",
  )


def absmax(name: str, levels: int, value_bytes: Callable[[int], int], block_size: int):
  """Absmax quantization to `levels` levels each side of 0 per block of `block_size` values:
  value_bytes(n) for n values + a float32 scale per block."""
  check_block_size(block_size)
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


def int2(block_size: int = 256, feedback_decay: float = 1.0) -> Compressor:
  """Absmax int2 per block, with error feedback (MuLoCo's 2-bit pseudo-gradients): each value
  becomes s q, q in {-1, 0, 1} (int4's rule at one level each side of 0; the fourth code of the
  two bits is unused), a quarter byte a value + a float32 scale per block."""
  check_feedback_decay(feedback_decay)
  compressor = absmax("int2", 1, lambda n: -(-n // 4), block_size)
  return compressor._replace(error_feedback=True, feedback_decay=feedback_decay)


def keep_largest(v: jax.Array, fraction: float) -> jax.Array:
  """The max(1, round(fraction n)) entries of largest |v| kept, the others zero (top-k
  sparsification)."""
  count = max(1, int(round(fraction * v.shape[0])))
  _, index = lax.top_k(jnp.abs(v), count)
  return jnp.zeros_like(v).at[index].set(v[index])


def topk_fraction(fraction: float = 0.1, feedback_decay: float = 1.0) -> Compressor:
  """The `fraction` largest values as (float32 value, int32 index) pairs, with error feedback."""
  check_fraction(fraction)
  check_feedback_decay(feedback_decay)
  return Compressor(
    "topk_fraction",
    lambda v: keep_largest(v, fraction),
    lambda n: 8 * max(1, int(round(fraction * n))),
    error_feedback=True,
    feedback_decay=feedback_decay,
  )


SPARSE_BITS = (2, 4, 8, 32)  # bits of each value sparse_2bit keeps; 32: float32, unquantized


def quantize_to_grid(v: jax.Array, scale: jax.Array, bits: int) -> jax.Array:
  """v (|v| <= scale, scale > 0) rounded to the nearest of the 2^b points s (2j + 1 - m) / m,
  j = 0..m, m = 2^b - 1: an even grid over [-s, s] with both ends on it and no zero (the values
  top-k keeps are the large ones: b = 2 gives s {-1, -1/3, 1/3, 1}). Error <= s / m."""
  m = 2**bits - 1
  odd = 2 * jnp.floor(v / scale * m / 2) + 1  # the nearest odd integer
  return scale * (jnp.clip(odd, -m, m) / m)  # (q / m) first: +-s come back exactly


def sparse_size(block_size: int, n: int) -> int:
  """The block of sparse_2bit on n values: `block_size`, or n when n is smaller (so that a short
  vector, a streaming fragment, keeps `fraction` of its own values)."""
  return max(1, min(block_size, n))


def kept_per_block(fraction: float, size: int) -> int:
  """k = max(1, round(fraction size)) values kept per block."""
  return min(size, max(1, int(round(fraction * size))))


def keep_largest_quantized(v: jax.Array, fraction: float, block_size: int, bits: int):
  """Per block of `sparse_size` values: its k largest |v| kept (ties: the first), quantized to
  `bits` bits on the grid of `quantize_to_grid` with s = max |v| of the block (bits 32: kept as
  they are), the others zero. A kept value that is exactly 0 (a block with fewer than k nonzero
  values, or the padding of the last one) stays 0: it needs no code."""
  n = v.shape[0]
  blocks = in_blocks(v, sparse_size(block_size, n))
  _, index = lax.top_k(jnp.abs(blocks), kept_per_block(fraction, blocks.shape[1]))
  kept = jnp.take_along_axis(blocks, index, axis=1)
  if bits < 32:
    scale = jnp.max(jnp.abs(kept), axis=1, keepdims=True)
    safe = jnp.where(scale > 0, scale, 1.0)
    kept = jnp.where(kept != 0, quantize_to_grid(kept, safe, bits), 0.0)
  rows = jnp.arange(blocks.shape[0])[:, None]
  return jnp.zeros_like(blocks).at[rows, index].set(kept).reshape(-1)[:n]


def sparse_bytes(n: int, fraction: float, block_size: int, bits: int) -> int:
  """Bytes of n values through sparse_2bit: per block k values at `bits` bits and k indices at
  ceil(log2 size) bits each (the offset in the block, packed: 12 bits at 4096; none when k =
  size, every value is sent in order), packed into whole bytes over the message, + a float32
  scale per block when quantized. The last block, of r < size values, sends min(k, r)."""
  if n == 0:
    return 0
  size = sparse_size(block_size, n)
  k = kept_per_block(fraction, size)
  full, rest = divmod(n, size)
  values = full * k + min(k, rest)
  index_bits = math.ceil(math.log2(size)) if k < size else 0
  scales = 4 * -(-n // size) if bits < 32 else 0
  return -(-values * (bits + index_bits) // 8) + scales


def sparse_2bit(
  fraction: float = 0.1, block_size: int = 256, bits: int = 2, feedback_decay: float = 1.0
) -> Compressor:
  """SparseLoCo's compressor (Sarfi et al. 2025): top-k per block (the paper's chunk) of the
  error-feedback accumulator, then the kept values quantized to `bits` bits (2 in the paper) with
  a float32 absmax scale per block (`keep_largest_quantized`); bytes: `sparse_bytes`. The error
  feedback decays by `feedback_decay` (beta: e := beta e + v, then what was sent is subtracted).
  fraction 1 with bits 32 sends every value as it is."""
  check_fraction(fraction)
  check_block_size(block_size)
  require(
    is_integer(bits) and bits in SPARSE_BITS, "bits", bits, f"accepted values are {SPARSE_BITS}"
  )
  check_feedback_decay(feedback_decay)
  return Compressor(
    "sparse_2bit",
    lambda v: keep_largest_quantized(v, fraction, block_size, bits),
    lambda n: sparse_bytes(n, fraction, block_size, bits),
    error_feedback=True,
    feedback_decay=feedback_decay,
  )


def send(compressor: Compressor, v: jax.Array, residual):
  """(what the others receive, the new residual) of a flat vector v: C(u) and u - C(u) with
  u = v + beta e (error feedback, beta = feedback_decay), or C(v) and () without."""
  if not compressor.error_feedback:
    return compressor.apply(v), ()
  u = v + compressor.feedback_decay * residual
  sent = compressor.apply(u)
  return sent, u - sent


def compress_tree(compressor: Compressor, tree: PyTree, residual):
  """(received tree, new residual): the float leaves of `tree` as one flat vector through the
  compressor (`send`); the residual is what it kept back (error feedback) or ()."""
  flat, unravel = ravel_pytree(float_leaves(tree))
  sent, new_residual = send(compressor, flat, residual)
  received = iter(unravel(sent))
  return map_floats(lambda a: next(received), tree), new_residual
