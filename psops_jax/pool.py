"""Max pooling over non-overlapping windows, with the values and gradients of
`flax.linen.max_pool(x, window, window)` bit for bit and without XLA's window ops.

For an NHWC `x` and a window (kh, kw) equal to the strides, no padding:

  y[n, i, j, c] = max over (a, b) in [0, kh) x [0, kw) of x[n, kh i + a, kw j + b, c]

computed as the elementwise maximum of the kh kw strided views x[:, a::kh, b::kw, :] (rows and
columns past the last whole window dropped, as nn.max_pool's VALID padding does). The gradient
sends each g[n, i, j, c] to one element of its window: the first, in row-major (a, b) order, equal
to the maximum, which is the element XLA's select-and-scatter picks for nn.max_pool (its select is
`>=`, so ties keep the earlier element); the others get 0. Ties are common (a ReLU's zeros, an
image's blank border), so jnp.maximum's own gradient, which splits a tie evenly, would move the
weights' last bits.

Why: on XLA:CPU nn.max_pool's reduce-window and select-and-scatter run a window loop per output
element; strided views, maxima, compares and selects are elementwise and fuse
(benchmarks/README.md, "Measured on a quiet AMD EPYC: max pooling", has the measured ratios).
"""

import functools

import jax
import jax.numpy as jnp


def _views(x, window: tuple) -> list:
  """The kh kw strided views of NHWC `x`, window position (a, b) in row-major order: view a kw + b
  is x[:, a::kh, b::kw, :], cut to whole windows."""
  kh, kw = window
  oh, ow = x.shape[1] // kh, x.shape[2] // kw
  x = x[:, : oh * kh, : ow * kw]
  return [x[:, a::kh, b::kw] for a in range(kh) for b in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x, window: tuple = (2, 2)):
  """nn.max_pool(x, window, strides=window) of NHWC `x`: the maximum of each window."""
  return functools.reduce(jnp.maximum, _views(x, window))


def _forward(x, window):
  y = max_pool(x, window)
  return y, (x, y)


def _backward(window, residuals, g):
  """Each window's cotangent g to its first maximal element (row-major), 0 elsewhere."""
  x, y = residuals
  kh, kw = window
  taken = jnp.zeros(y.shape, bool)
  parts = []
  for view in _views(x, window):
    hit = (view == y) & ~taken
    taken = taken | hit
    parts.append(jnp.where(hit, g, jnp.zeros_like(g)))
  # parts[a kw + b] is window position (a, b): stack to (N, OH, kh, OW, kw, C), then merge.
  rows = [jnp.stack(parts[a * kw : (a + 1) * kw], axis=3) for a in range(kh)]
  n, oh, ow, c = y.shape
  dx = jnp.stack(rows, axis=2).reshape(n, oh * kh, ow * kw, c)
  return (jnp.pad(dx, ((0, 0), (0, x.shape[1] - oh * kh), (0, x.shape[2] - ow * kw), (0, 0))),)


max_pool.defvjp(_forward, _backward)
