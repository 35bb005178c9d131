"""The composable outer sync (`sync.outer`) against NumPy: each aggregate (NaN particles, ties),
each compressor (error bounds, error feedback), composed strategies over several rounds under vmap,
shard_map and the nested layout, and the identities between them and the named presets."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_sync import LAYOUTS, RUNNERS, numpy_trimmed_mean, random_params

from psops_jax import errors
from psops_jax import sync as sync_lib
from psops_jax.sync import aggregates, compressors


def aggregate_fn(name, axis_name, **options):
  """The aggregate `name` (its constructor takes the options it has) as fn(v, fitness)."""
  constructor = getattr(aggregates, name)
  wanted = inspect.signature(constructor).parameters
  aggregate = constructor(**{k: v for k, v in options.items() if k in wanted})
  return lambda v, fitness: aggregate(v, fitness, axis_name)


def numpy_centered_clip(v, tau, iterations, start=None):
  """Centered clipping of the rows of v (N, D) in float64: from `start` (None: the mean of the
  finite rows), `iterations` times center += (1/N) sum_k clip_tau(v_k - center); a row whose
  offset has no finite norm adds 0."""
  v = np.asarray(v, np.float64)
  center = v[np.isfinite(v).all(1)].mean(0) if start is None else np.asarray(start, np.float64)
  for _ in range(iterations):
    offsets = v - center
    norms = np.linalg.norm(offsets, axis=1)
    ok = np.isfinite(norms)
    factor = np.minimum(1.0, tau / np.maximum(np.where(ok, norms, 1.0), 1e-12))
    clipped = np.where(ok[:, None], offsets, 0.0) * factor[:, None]
    center = center + clipped.sum(0) / len(v)
  return center


def stacked_rows(tree, n):
  """A stacked dict of N particles' leaves as rows (N, D), leaves in sorted key order (the order of
  ravel_pytree), and the function that splits a row back into the leaves of one particle."""
  keys = sorted(tree)
  rows = np.concatenate([np.asarray(tree[k]).reshape(n, -1) for k in keys], 1)
  sizes = np.cumsum([np.asarray(tree[k])[0].size for k in keys])[:-1]
  split = lambda row: {
    k: part.reshape(np.asarray(tree[k]).shape[1:]) for k, part in zip(keys, np.split(row, sizes))
  }
  return rows, split


def numpy_tree_aggregate(name, tree, fitness, tau=1.0, iterations=1, **options):
  """The reference rule of `name` over a stacked dict: leaf by leaf, but centered clipping over
  each particle's whole vector (its norm spans every leaf)."""
  if name != "centered_clip":
    return {k: numpy_aggregate(name, a, fitness, **options) for k, a in tree.items()}
  n = len(fitness)
  rows, split = stacked_rows(tree, n)
  return split(numpy_centered_clip(rows, tau, iterations))


def numpy_aggregate(name, v, fitness, trim=1, k=2, temperature=1.0, pull=0.25):
  """The reference rule over axis 0 of a stacked array v (N, ...)."""
  f = np.where(np.isfinite(fitness), fitness, np.inf).astype(np.float64)
  order = np.argsort(f, kind="stable")
  if name == "mean":
    return v.mean(0)
  if name == "median":
    return np.nanmedian(v, 0)
  if name == "trimmed_mean":
    return numpy_trimmed_mean(v, trim)
  if name == "topk":
    return v[order[:k]].mean(0)
  if name == "fitness_weighted":
    w = np.exp(-(f - f.min()) / temperature)
    w = np.where(np.isfinite(f), w, 0.0)
    w = w / w.sum()
    return np.tensordot(w, np.where(w.reshape((-1,) + (1,) * (v.ndim - 1)) > 0, v, 0.0), 1)
  if name == "best_pull":
    return (1 - pull) * v.mean(0) + pull * v[order[0]]
  raise AssertionError(name)


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("name", sync_lib.AGGREGATES)
def test_each_aggregate_matches_numpy_with_ties_and_a_nan_particle(runner, name):
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(1)
  params = random_params(rng, 8)
  fitness = np.array([3.0, np.nan, 1.0, 2.0, 1.0, 5.0, 4.0, 6.0], np.float32)  # a tie at 1.0
  nan_free = name in ("mean", "best_pull")  # rules that average every particle propagate NaN
  if not nan_free:
    params["w"][1] = np.nan  # the NaN-fitness particle has NaN weights too
  options = dict(trim=2, k=2, temperature=0.5, pull=0.3, tau=2.0, iterations=2)
  got = run(aggregate_fn(name, axis_name, **options), params, fitness, in_axes=(0, 0))
  want = numpy_tree_aggregate(name, params, fitness, **options)
  for leaf in params:
    for particle in (0, 7):  # the same on every particle
      np.testing.assert_allclose(np.asarray(got[leaf])[particle], want[leaf], rtol=2e-6, atol=1e-6)


def test_aggregate_identities():
  rng = np.random.RandomState(2)
  v = random_params(rng, 8)
  fitness = rng.uniform(size=8).astype(np.float32)
  run, axis = RUNNERS["vmap"]
  mean = run(aggregate_fn("mean", axis), v, fitness, in_axes=(0, 0))
  for name, kwargs in [
    ("topk", {"k": 8}),
    ("fitness_weighted", {"temperature": 1e9}),
    ("best_pull", {"pull": 0.0}),
  ]:
    got = run(aggregate_fn(name, axis, **kwargs), v, fitness, in_axes=(0, 0))
    for leaf in v:
      np.testing.assert_allclose(
        np.asarray(got[leaf]), np.asarray(mean[leaf]), rtol=1e-5, atol=1e-6, err_msg=name
      )


def test_compressors_bound_their_error_and_count_their_bytes():
  rng = np.random.RandomState(3)
  v = jnp.asarray(rng.normal(size=1000).astype(np.float32) * np.repeat([1.0, 100.0], 500))
  block = 100
  blocks = np.abs(np.asarray(v)).reshape(-1, block).max(1).repeat(block)
  for name, levels in (("int8", 127), ("int4", 7)):
    c = getattr(compressors, name)(block_size=block)
    err = np.abs(np.asarray(c.apply(v)) - np.asarray(v))
    assert (err <= blocks / (2 * levels) * (1 + 1e-5)).all(), name  # half a step of its block
  bf16 = compressors.bfloat16()
  rel = np.abs(np.asarray(bf16.apply(v)) - np.asarray(v)) / np.abs(np.asarray(v))
  assert rel.max() <= 2.0**-8
  top = compressors.topk_fraction(fraction=0.05)
  kept = np.asarray(top.apply(v))
  assert np.count_nonzero(kept) == 50
  largest = np.argsort(-np.abs(np.asarray(v)))[:50]
  np.testing.assert_array_equal(kept[largest], np.asarray(v)[largest])
  assert compressors.none().payload_bytes(1000) == 4000
  assert bf16.payload_bytes(1000) == 2000
  assert compressors.int8(block_size=256).payload_bytes(1000) == 1000 + 4 * 4
  assert compressors.int4(block_size=256).payload_bytes(1001) == 501 + 4 * 4
  assert top.payload_bytes(1000) == 50 * 8


def test_int8_of_one_block_of_equal_values_is_exact():
  c = compressors.int8(block_size=16)
  for value in (0.1, -3.7, 1e-20, 0.0):
    v = jnp.full((16,), value, jnp.float32)
    np.testing.assert_array_equal(np.asarray(c.apply(v)), np.asarray(v))


def test_error_feedback_carries_exactly_the_residual():
  rng = np.random.RandomState(4)
  c = compressors.topk_fraction(fraction=0.1)
  tree = {"a": jnp.asarray(rng.normal(size=(5, 4)).astype(np.float32))}
  residual = jnp.zeros(20, jnp.float32)
  sent_total, input_total = np.zeros(20), np.zeros(20)
  for _ in range(6):
    received, new_residual = compressors.compress_tree(c, tree, residual)
    flat = np.asarray(tree["a"]).reshape(-1) + np.asarray(residual)
    np.testing.assert_array_equal(
      np.asarray(new_residual), flat - np.asarray(received["a"]).reshape(-1)
    )
    sent_total += np.asarray(received["a"]).reshape(-1)
    input_total += np.asarray(tree["a"]).reshape(-1)
    residual = new_residual
  # nothing is lost: what was sent plus what is still held is what came in
  np.testing.assert_allclose(sent_total + np.asarray(residual), input_total, rtol=1e-5, atol=1e-5)


def numpy_quantize(v, levels, block):
  n = v.size
  blocks = np.pad(v, (0, (-n) % block)).reshape(-1, block)
  scale = np.abs(blocks).max(1, keepdims=True)
  safe = np.where(scale > 0, scale, 1.0)
  return (safe * (np.round(blocks / safe * levels) / levels)).reshape(-1)[:n]


@pytest.mark.parametrize("runner", LAYOUTS)
def test_median_nesterov_int8_matches_numpy_over_three_rounds(runner):
  """outer(median, Nesterov SGD, int8) against a NumPy re-implementation, 3 syncs, 6 particles."""
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(5)
  n, lr, mu, block = 6, 0.7, 0.9, 8
  start = random_params(rng, 1)
  x = {k: np.repeat(a, n, 0) for k, a in start.items()}
  strategy = sync_lib.outer(
    aggregates.median(),
    optax.sgd(lr, momentum=mu, nesterov=True),
    compressors.int8(block_size=block),
    axis_name,
  )
  state = run(strategy.init, x, in_axes=(0,))
  theta = {k: a[0].astype(np.float64) for k, a in start.items()}
  momentum = {k: np.zeros_like(a) for k, a in theta.items()}
  fitness = np.zeros(n, np.float32)
  for r in range(3):
    x = {k: a + rng.normal(size=a.shape).astype(np.float32) * 0.1 for k, a in x.items()}
    new_x, state = run(strategy.sync, x, state, fitness, jax.random.key(r), in_axes=(0, 0, 0, None))
    # reference: each particle quantizes theta - x_i (leaves in tree order), median, Nesterov
    keys = sorted(theta)
    pseudo = np.stack(
      [np.concatenate([(theta[k] - x[k][i]).reshape(-1) for k in keys]) for i in range(n)]
    ).astype(np.float32)
    received = np.stack([numpy_quantize(p, 127, block) for p in pseudo])
    d = np.median(received, 0)
    offset = 0
    for k in keys:
      size = theta[k].size
      dk = d[offset : offset + size].reshape(theta[k].shape)
      offset += size
      momentum[k] = dk + mu * momentum[k]
      theta[k] = theta[k] - lr * (dk + mu * momentum[k])
    for k in keys:
      for i in (0, n - 1):
        np.testing.assert_allclose(np.asarray(new_x[k])[i], theta[k], rtol=1e-4, atol=1e-5)
    x = {k: np.asarray(a) for k, a in new_x.items()}


@pytest.mark.parametrize("runner", LAYOUTS)
def test_presets_equal_their_composition(runner):
  """average = outer(mean) bit for bit; outer(mean, sgd(1)) = averaging to float tolerance;
  diloco = outer(mean, Nesterov SGD)."""
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(6)
  start = random_params(rng, 1)
  x0 = {k: np.repeat(a, 4, 0) for k, a in start.items()}
  x1 = {k: a + rng.normal(size=a.shape).astype(np.float32) for k, a in x0.items()}
  fitness = np.arange(4, dtype=np.float32)

  def one_sync(strategy):
    state = run(strategy.init, x0, in_axes=(0,))
    return run(strategy.sync, x1, state, fitness, jax.random.key(0), in_axes=(0, 0, 0, None))[0]

  averaged = one_sync(sync_lib.average(axis_name))
  plain = one_sync(sync_lib.outer(axis_name=axis_name))
  sgd_one = one_sync(sync_lib.outer(optimizer=optax.sgd(1.0), axis_name=axis_name))
  for k in averaged:
    np.testing.assert_array_equal(np.asarray(averaged[k]), np.asarray(plain[k]))
    np.testing.assert_allclose(
      np.asarray(sgd_one[k]), np.asarray(averaged[k]), rtol=1e-5, atol=1e-6
    )


def test_bytes_of_composed_strategies():
  params = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)}
  assert sync_lib.outer().bytes_per_round(params, 16) == 4000
  assert (
    sync_lib.outer(aggregates.topk(), compressor=compressors.int8()).bytes_per_round(params, 16)
    == 1000 + 16 + 4
  )
  assert sync_lib.diloco().bytes_per_round(params, 16) == sync_lib.average().bytes_per_round(
    params, 16
  )


@pytest.mark.parametrize(
  "make, argument",
  [
    (lambda: aggregates.topk(0), "k"),
    (lambda: aggregates.topk(2.5), "k"),
    (lambda: aggregates.trimmed_mean(-1), "trim"),
    (lambda: aggregates.fitness_weighted(0.0), "temperature"),
    (lambda: aggregates.best_pull(1.5), "pull"),
    (lambda: aggregates.centered_clip(0.0), "tau"),
    (lambda: aggregates.centered_clip(float("nan")), "tau"),
    (lambda: aggregates.centered_clip(1.0, 0), "iterations"),
    (lambda: aggregates.centered_clip(1.0, 1.5), "iterations"),
    (lambda: compressors.int8(0), "block_size"),
    (lambda: compressors.int4(True), "block_size"),
    (lambda: compressors.topk_fraction(0.0), "fraction"),
    (lambda: compressors.topk_fraction(1.5), "fraction"),
  ],
)
def test_each_part_checks_its_own_arguments(make, argument):
  with pytest.raises(errors.BadArgument, match=f"^{argument}=") as raised:
    make()
  assert raised.value.argument == argument


def test_parts_check_the_number_of_particles():
  aggregates.topk(8).check(8)
  with pytest.raises(errors.BadArgument, match="k=9: accepted values are the integers 1..8"):
    aggregates.topk(9).check(8)
  aggregates.trimmed_mean(3).check(7)
  with pytest.raises(errors.BadArgument, match="trim=4"):
    aggregates.trimmed_mean(4).check(8)
  strategy = sync_lib.outer(aggregates.topk(20))
  with pytest.raises(errors.BadArgument, match="k=20"):
    strategy.check(8)


def test_parts_say_what_the_sync_needs():
  assert [a.reads_fitness for a in (aggregates.mean(), aggregates.topk(), aggregates.median())] == [
    False,
    True,
    False,
  ]
  assert aggregates.median().collective == aggregates.trimmed_mean().collective == "all_gather"
  assert aggregates.best_pull().collective == "all_reduce"
  assert sync_lib.outer(aggregates.fitness_weighted()).reads_fitness
  assert not sync_lib.outer().shared_init  # averaging keeps no center
  assert sync_lib.outer(compressor=compressors.int8()).shared_init


@pytest.mark.slow
def test_a_composed_strategy_runs_from_the_command_line(tmp_path):
  """median + Nesterov + int8 through train.py, one line of flags."""
  import json
  import os
  import subprocess
  import sys

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = [
    "--config.sync.strategy=outer",
    "--config.sync.outer.aggregate=median",
    "--config.sync.outer.optimizer=nesterov",
    "--config.sync.outer.compress=int8",
    "--config.num_particles=4",
    "--config.model.name=mlp",
    "--config.train.rounds=4",
    "--config.sync.period=4",
    "--config.train.eval_every=0",
  ]
  done = subprocess.run(
    [
      sys.executable,
      "train.py",
      "--config",
      "configs/digits_pso.py",
      "--workdir",
      str(tmp_path),
      *flags,
    ],
    cwd=repo,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["strategy"] == "outer" and summary["final_test_accuracy"] > 0.5
  params = sum(a for a in [64 * 256 + 256, 256 * 128 + 128, 128 * 10 + 10])  # the MLP on 8x8
  int8 = params + 4 * -(-params // 256)
  assert summary["communicated_bytes_per_particle"] == 4 * int8
