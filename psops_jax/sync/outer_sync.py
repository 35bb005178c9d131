"""The composable outer sync, and the strategies that are presets of it: averaging, DiLoCo, the
robust average, the top-k average, the pull to the best particle and SparseLoCo.

    from psops_jax.sync import aggregates, compressors, outer
    strategy = outer(aggregates.median(), optax.sgd(0.7, 0.9, nesterov=True), compressors.int8())
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from psops_jax.clock import Collective
from psops_jax.errors import is_number, require
from psops_jax.sync import aggregates, compressors
from psops_jax.sync.collectives import AxisName, float_count, float_leaves, pmean_floats, tree_bytes
from psops_jax.sync.interface import SyncStrategy, export_mean, identity, make_strategy

PyTree = Any


class OuterState(NamedTuple):
  """One particle's state of `outer`: the shared outer weights theta (a copy on every particle),
  the outer optimizer's state, and (error feedback) the particle's residual, a flat vector. Fields
  the configuration does not need hold ()."""

  center: PyTree
  opt_state: PyTree
  residual: PyTree


def outer(
  aggregate: aggregates.Aggregate | None = None,
  optimizer: optax.GradientTransformation | None = None,
  compressor: compressors.Compressor | None = None,
  axis_name: AxisName = "particles",
) -> SyncStrategy:
  """A sync built from parts: aggregate the particles, an outer optimizer on shared weights theta,
  and a compressor for what each particle sends. With x_i' the weights after the local steps,
  A the aggregate over particles (default: the mean) and C the compressor (default: none):

      compressor "none": a     := A(x')                          (the weights themselves)
                         d     := theta - a                       (optimizer only)
      otherwise:         u_i   := theta - x_i' + beta e_i         (pseudo-gradients, compressed;
                         d     := A(C(u_i))                        error feedback: int2,
                         e_i   := u_i - C(u_i)                     topk_fraction, sparse_2bit;
                                                                   beta its feedback_decay)
      optimizer None:    x_i   := a, or theta - d
      optimizer opt:     theta := theta + opt.update(d)          (optax: sgd(1) is averaging,
                         x_i   := theta                           sgd(eta, mu, nesterov) DiLoCo)

  Each particle quantizes and dequantizes its own pseudo-gradient and the aggregate is taken over
  the dequantized float32 values: the numbers are those of a compressed exchange, but the
  collective here still moves float32; `bytes_per_round` counts the compressed payload (values,
  scales, indices) that a real compressed exchange would send. Batch statistics are aggregated by
  the same rule (never compressed, no outer step). An aggregate that iterates from a start
  (`centered_clip`) starts from theta (weights) or 0 (pseudo-gradients), the place of the last
  aggregate: it keeps theta even without an optimizer or a compressor. `average`, `diloco`,
  `robust_average`, `topk_average`, `best_pull` and `sparseloco` are presets of this function.
  """
  aggregate = aggregate if aggregate is not None else aggregates.mean()
  compressor = compressor if compressor is not None else compressors.none()
  compresses = compressor.name != "none"
  keeps_center = optimizer is not None or compresses or aggregate.takes_start

  def init(params):
    if not keeps_center:
      return ()
    flat, _ = ravel_pytree(float_leaves(params))
    return OuterState(
      center=params,
      opt_state=optimizer.init(params) if optimizer is not None else (),
      residual=jnp.zeros_like(flat) if compressor.error_feedback else (),
    )

  def sync_with_stats(params, stats, state, fitness, key):
    stats = aggregate(stats, fitness, axis_name)
    if not compresses:
      start = state.center if keeps_center else None
      aggregated = aggregate(params, fitness, axis_name, start)
      if optimizer is None:
        return aggregated, stats, state._replace(center=aggregated) if keeps_center else state
      step = jax.tree.map(jnp.subtract, state.center, aggregated)
      residual = state.residual
    else:
      pseudo = jax.tree.map(jnp.subtract, state.center, params)
      received, residual = compressors.compress_tree(compressor, pseudo, state.residual)
      step = aggregate(received, fitness, axis_name, jax.tree.map(jnp.zeros_like, received))
    if optimizer is None:
      theta, opt_state = jax.tree.map(jnp.subtract, state.center, step), state.opt_state
    else:
      updates, opt_state = optimizer.update(step, state.opt_state, state.center)
      theta = optax.apply_updates(state.center, updates)
    return theta, stats, OuterState(theta, opt_state, residual)

  def bytes_per_round(params, period, opt_state=None):
    return aggregate.sends * compressor.payload_bytes(float_count(params)) + aggregate.fitness_bytes

  return make_strategy(
    init,
    sync_with_stats,
    identity,
    bytes_per_round,
    export=export_mean(axis_name),
    collective=Collective(aggregate.collective),
    reads_fitness=aggregate.reads_fitness,
    shared_init=keeps_center,
    check=aggregate.check,
  )


def average(axis_name: AxisName = "particles", average_opt_state: bool = False) -> SyncStrategy:
  """Parameter averaging (local SGD): x_i := (1/N) sum_k x_k at every sync; `outer()`.

  The optimizer state stays local unless `average_opt_state`, which also averages its floating-point
  leaves (e.g. momentum buffers), one more all-reduce of their size. Batch statistics are averaged
  in the weights' all-reduce.
  """
  strategy = outer(axis_name=axis_name)
  if not average_opt_state:
    return strategy
  return strategy._replace(
    reduce_opt_state=lambda opt_state, state, key: pmean_floats(opt_state, axis_name),
    bytes_per_round=lambda params, period, opt_state=None: (
      tree_bytes(params) + (tree_bytes(float_leaves(opt_state)) if opt_state is not None else 0)
    ),
  )


def check_learning_rate(learning_rate) -> None:
  require(
    is_number(learning_rate) and learning_rate > 0,
    "learning_rate",
    learning_rate,
    "accepted values are numbers > 0",
  )


def diloco(
  learning_rate: float = 0.7,
  momentum: float = 0.9,
  nesterov: bool = True,
  axis_name: AxisName = "particles",
) -> SyncStrategy:
  """DiLoCo-style outer optimizer (Douillard et al. 2023): the round's mean displacement is a
  pseudo-gradient for SGD with (Nesterov) momentum on shared outer weights theta;
  `outer(optimizer=optax.sgd(eta, mu, nesterov))`:

      delta := theta - mean_k x_k'                 (one all-reduce)
      m     := mu m + delta
      theta := theta - eta (delta + mu m)          (nesterov; plain momentum: theta - eta m)
      x_i   := theta

  eta = learning_rate, mu = momentum. eta = 1, mu = 0 is parameter averaging. The inner optimizers'
  states stay local. Batch statistics are averaged (no outer step), in the same all-reduce.
  """
  check_learning_rate(learning_rate)
  require(
    is_number(momentum) and 0 <= momentum < 1, "momentum", momentum, "accepted values are in [0, 1)"
  )
  optimizer = optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)
  return outer(optimizer=optimizer, axis_name=axis_name)


def sparseloco(
  learning_rate: float = 1.0,
  fraction: float = 0.02,
  block_size: int = 4096,
  bits: int = 2,
  feedback_decay: float = 0.95,
  axis_name: AxisName = "particles",
) -> SyncStrategy:
  """SparseLoCo (Sarfi et al. 2025): top-k sparsified, 2-bit quantized pseudo-gradients with a
  decaying error feedback in place of outer momentum; `outer(optimizer=optax.sgd(eta),
  compressor=compressors.sparse_2bit(fraction, block_size, bits, beta))`:

      e_i   := beta e_i + theta - x_i'               (the particle's accumulator)
      s_i   := Q(TopK(e_i))                          (per block of `block_size` values: the
                                                      `fraction` largest, at `bits` bits)
      e_i   := e_i - s_i
      theta := theta - eta mean_k s_k                (one all-reduce; outer SGD, no momentum)
      x_i   := theta

  eta = learning_rate, beta = feedback_decay. fraction 1 with bits 32 sends e_i whole, which is
  then 0 after every sync: DiLoCo without momentum at the same eta, whatever beta. Bytes: the
  compressor's (`compressors.sparse_bytes`): at the defaults, 82 of every 4096 values at 2 + 12
  bits and a float32 scale: 148 bytes, 0.9% of float32. Batch statistics are averaged, never
  compressed.
  """
  check_learning_rate(learning_rate)
  compressor = compressors.sparse_2bit(fraction, block_size, bits, feedback_decay)
  return outer(optimizer=optax.sgd(learning_rate), compressor=compressor, axis_name=axis_name)


ROBUST_METHODS = {
  "median": lambda trim: aggregates.median(),
  "trimmed_mean": aggregates.trimmed_mean,
}


def robust_average(
  method: str = "median", trim: int = 1, axis_name: AxisName = "particles"
) -> SyncStrategy:
  """A robust parameter average, coordinate by coordinate, over all N particles;
  `outer(aggregates.median())` or `outer(aggregates.trimmed_mean(trim))`:

      median:        x_i := median_k x_k'            (NaN values ignored; all NaN gives NaN)
      trimmed_mean:  x_i := mean of the m finite x_k' of the coordinate, sorted, the t lowest and
                     t highest dropped, t = min(trim, (m - 1) // 2)

  The obvious defence against faulty workers, for comparison with selection (PSO-PS). It needs every
  particle's weights on every device: an all-gather of the weights (N x the memory and received
  bytes of an all-reduce; bytes_per_round counts the payload each particle sends, its params).
  Batch statistics get the same rule, coordinate by coordinate.
  """
  require(
    method in ROBUST_METHODS, "method", method, f"accepted values are {tuple(ROBUST_METHODS)}"
  )
  return outer(ROBUST_METHODS[method](trim), axis_name=axis_name)


def topk_average(k: int = 4, axis_name: AxisName = "particles") -> SyncStrategy:
  """The mean of the k best particles by fitness: x_i := (1/k) sum_{rank(j) < k} x_j' for every i;
  `outer(aggregates.topk(k))`.

  k = N is parameter averaging; k = 1 is "everyone jumps to the best". One all-gather of N scalars
  and ONE all-reduce of the weights. Batch statistics: the mean of the same k, in the same
  all-reduce.
  """
  return outer(aggregates.topk(k), axis_name=axis_name)


def best_pull(pull: float = 0.25, axis_name: AxisName = "particles") -> SyncStrategy:
  """Averaging pulled toward the best particle: x_i := m + c (g - m) = (1 - c) m + c g, with
  m = mean_k x_k', g = x_j', j = argmin_k f_k (this round's fitness), c = pull;
  `outer(aggregates.best_pull(pull))`.

  c = 0 is parameter averaging, c = 1 is "everyone jumps to the best" (PSO-PS with w = c1 = 0,
  c2 = 1, r2 = 1). Batch statistics get the same rule, in the same all-reduce.
  """
  return outer(aggregates.best_pull(pull), axis_name=axis_name)
