"""psops_jax/pool.py's max pooling against flax's nn.max_pool (reduce-window, select-and-scatter):
the same values and the same gradients bit for bit, ties included, and against a NumPy loop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psops_jax import pool

# (input NHWC, window): the models' 2x2 pools, odd sizes (the last row and column dropped), a 3x3
# window, a non-square one.
CASES = {
  "lenet5_1": ((4, 28, 28, 6), (2, 2)),
  "odd": ((2, 9, 7, 3), (2, 2)),
  "3x3": ((2, 10, 11, 4), (3, 3)),
  "2x3": ((3, 8, 9, 2), (2, 3)),
}


def numpy_max_pool(x, g, window):
  """y and x's cotangent for cotangent g by loops: each window's g to its first maximal element."""
  kh, kw = window
  n, h, w, c = x.shape
  y = np.zeros((n, h // kh, w // kw, c), x.dtype)
  dx = np.zeros_like(x)
  for b, i, j, k in np.ndindex(*y.shape):
    block = x[b, i * kh : (i + 1) * kh, j * kw : (j + 1) * kw, k]
    first = np.argmax(block == block.max())  # row-major: the first maximal element
    y[b, i, j, k] = block.max()
    dx[b, i * kh + first // kw, j * kw + first % kw, k] = g[b, i, j, k]
  return y, dx


def vjp(fn, x, g):
  y, pullback = jax.vjp(fn, x)
  return np.asarray(y), np.asarray(pullback(g)[0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_equal_nn_max_pool_bit_for_bit_with_ties(case, dtype):
  shape, window = CASES[case]
  rng = np.random.default_rng(0)
  # small integers: most windows hold ties, where the choice of element decides the gradient
  x = jnp.asarray(rng.integers(-2, 3, shape), dtype)
  out_shape = (shape[0], shape[1] // window[0], shape[2] // window[1], shape[3])
  g = jnp.asarray(rng.standard_normal(out_shape), dtype)
  y, dx = vjp(lambda v: pool.max_pool(v, window), x, g)
  y_ref, dx_ref = vjp(lambda v: nn.max_pool(v, window, window), x, g)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(dx, dx_ref)
  y_np, dx_np = numpy_max_pool(np.asarray(x, np.float32), np.asarray(g, np.float32), window)
  np.testing.assert_array_equal(np.asarray(y, np.float32), y_np)
  np.testing.assert_array_equal(np.asarray(dx, np.float32), dx_np)


def test_a_nan_in_a_window_gives_nan_as_nn_max_pool_does_under_jit_and_vmap():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2, 6, 6, 2)), jnp.float32)
  x = x.at[1, 0, 2, 3, 1].set(jnp.nan)
  ours = jax.jit(jax.vmap(lambda v: pool.max_pool(v, (2, 2))))(x)
  ref = jax.vmap(lambda v: nn.max_pool(v, (2, 2), (2, 2)))(x)
  np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
  assert np.isnan(ours).sum() == 1
  np.testing.assert_array_equal(ours, ref)


def test_conv_cpu_benchmark_swaps_in_nn_max_pool_and_restores_pool():
  """benchmarks/conv_cpu.py's `*/nn_max_pool` methods: the models pool with flax's nn.max_pool
  inside `pooling`, with pool.max_pool after; the two give a model the same logits."""
  from benchmarks import conv_cpu
  from psops_jax import models

  model = models.create("lenet5")
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  variables = model.init(jax.random.key(0), x)
  ours = model.apply(variables, x)
  with conv_cpu.pooling(conv_cpu.nn_max_pool):
    assert pool.max_pool is conv_cpu.nn_max_pool
    theirs = model.apply(variables, x)
  assert pool.max_pool is not conv_cpu.nn_max_pool
  np.testing.assert_array_equal(ours, theirs)
