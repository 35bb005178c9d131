"""Batch statistics (BatchNorm) through every sync strategy, against a NumPy reference of each rule,
under vmap, shard_map and the nested layout; and the models' float32/bfloat16 computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sync import RUNNERS, numpy_trimmed_mean, random_params

from configs import digits_pso
from psops_jax import models
from psops_jax import sync as sync_lib
from psops_jax.sync import gossip_sync


def random_stats(rng, n):
  return {
    "bn": {
      "mean": rng.normal(size=(n, 4)).astype(np.float32),
      "var": rng.uniform(0.5, 2.0, size=(n, 4)).astype(np.float32),
    }
  }


def expected_stats(name, stats, fitness, config):
  """The NumPy rule for the statistics after the sync (leaves stacked over particles)."""
  f = np.where(np.isfinite(fitness), fitness, np.inf)
  order = np.argsort(f, kind="stable")
  every = lambda fn: jax.tree.map(lambda a: np.broadcast_to(fn(a), a.shape), stats)
  if name == "none":
    return stats
  # outer and streaming: the default aggregate, mean
  if name in ("average", "ssgd", "easgd", "diloco", "outer", "streaming", "sparseloco"):
    return every(lambda a: a.mean(0))
  if name in ("pso", "pso_average"):
    return every(lambda a: a[order[0]])
  if name == "best_pull":
    c = config.sync.best_pull
    return every(lambda a: (1 - c) * a.mean(0) + c * a[order[0]])
  if name == "topk_average":
    return every(lambda a: a[order[: config.sync.topk]].mean(0))
  if name == "robust_average":
    return every(lambda a: np.nanmedian(a, 0))
  if name == "gossip":  # each particle with its peers at the round key's shifts
    n, peers = len(fitness), config.sync.gossip.peers
    shifts = np.asarray(gossip_sync.gossip_shifts(jax.random.key(0), n, peers))
    mix = lambda a: sum(np.roll(a, -s, axis=0) for s in (0, *shifts)) / (peers + 1)
    return jax.tree.map(mix, stats)
  raise AssertionError(name)


def sync_config(n):
  config = digits_pso.get_config()
  config.sync.topk = 2
  config.num_particles = n
  return config


@pytest.mark.parametrize(
  "runner,n", [("vmap", 3), ("shard_map", 8), pytest.param("nested", 8, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("name", sync_lib.strategy_names())
def test_every_strategy_syncs_batch_stats_as_documented(runner, n, name):
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(n)
  params, stats = random_params(rng, n), random_stats(rng, n)
  fitness = rng.permutation(n).astype(np.float32) + 1.0
  fitness[1] = np.nan  # never selected
  config = sync_config(n)
  config.sync.strategy = name
  strategy = sync_lib.from_config(config.sync, axis_name=axis_name)
  state = run(strategy.init, params, in_axes=(0,))
  key = jax.random.key(0)
  new_params, new_stats, _ = run(
    strategy.sync_with_stats, params, stats, state, fitness, key, in_axes=(0, 0, 0, 0, None)
  )
  want = expected_stats(name, stats, fitness, config)
  for got, ref in zip(jax.tree.leaves(new_stats), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=1e-6)
  # The weights are what `sync` gives without statistics: the statistics ride along, nothing else.
  plain_params, _ = run(strategy.sync, params, state, fitness, key, in_axes=(0, 0, 0, None))
  for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(plain_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_trimmed_mean_of_batch_stats(runner):
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(0)
  params, stats = random_params(rng, 8), random_stats(rng, 8)
  stats["bn"]["mean"][2] = np.nan
  strategy = sync_lib.robust_average("trimmed_mean", trim=2, axis_name=axis_name)
  _, new_stats, _ = run(
    strategy.sync_with_stats,
    params,
    stats,
    (),
    np.zeros(8, np.float32),
    jax.random.key(0),
    in_axes=(0, 0, None, 0, None),
  )
  for got, leaf in zip(jax.tree.leaves(new_stats), jax.tree.leaves(stats)):
    np.testing.assert_allclose(np.asarray(got)[0], numpy_trimmed_mean(leaf, 2), rtol=1e-6)


def test_round_bytes_count_the_statistics_of_strategies_that_share_them():
  params = {"w": jax.ShapeDtypeStruct((10,), jnp.float32)}
  stats = {"mean": jax.ShapeDtypeStruct((3,), jnp.float32)}
  assert sync_lib.round_bytes(sync_lib.average(), params, 4, None, stats) == 40 + 12
  assert sync_lib.round_bytes(sync_lib.ssgd(), params, 4, None, stats) == 4 * 40 + 12
  assert sync_lib.round_bytes(sync_lib.none(), params, 4, None, stats) == 0


@pytest.mark.slow
def test_resnet20_has_batch_stats_and_the_size_of_the_paper():
  model = models.create("resnet20")
  variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
  assert set(variables) == {"params", "batch_stats"}
  count = sum(a.size for a in jax.tree.leaves(variables["params"]))
  assert 0.26e6 < count < 0.28e6  # He et al. 2016: 0.27M
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 10)
  moved = jax.tree.map(
    lambda a, b: float(jnp.abs(a - b).max()), updates["batch_stats"], variables["batch_stats"]
  )
  assert min(jax.tree.leaves(moved)) > 0  # training mode updates every running statistic
  eval_logits = model.apply({"params": variables["params"], **updates}, x, train=False)
  assert not np.allclose(eval_logits, logits)  # evaluation normalises with the running statistics


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_bfloat16_computes_in_bfloat16_with_float32_params(name):
  if name in models.LANGUAGE_MODELS:  # 16 bytes of text
    x = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
  else:
    shape = {"mlp": (8, 8, 1), "small_cnn": (8, 8, 1), "lenet5": (28, 28, 1)}.get(name, (32, 32, 3))
    x = jax.random.normal(jax.random.key(1), (2,) + shape)
  classes = 256 if name in models.LANGUAGE_MODELS else 10
  full = models.create(name, classes, context=16)
  half = models.create(name, classes, dtype="bfloat16", context=16)
  variables = full.init(jax.random.key(0), x)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(half.init(jax.random.key(0), x)))
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  out_full, out_half = full.apply(variables, x), half.apply(variables, x)
  assert out_half.dtype == jnp.float32  # the logits (and so the loss) are float32
  jaxpr = str(jax.make_jaxpr(lambda v: half.apply(v, x))(variables))
  assert "bf16" in jaxpr and "bf16" not in str(
    jax.make_jaxpr(lambda v: full.apply(v, x))(variables)
  )
  np.testing.assert_allclose(out_half, out_full, atol=0.1 * float(jnp.abs(out_full).max()) + 0.05)
