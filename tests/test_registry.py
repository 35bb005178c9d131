"""The config layer of the sync strategies: one set of defaults per strategy, every field named in
its errors, and a strategy registered from outside the package that trains like the others."""

import inspect

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_train import small_config

from configs import digits_pso
from psops_jax import errors, train
from psops_jax import sync as sync_lib


def config_value(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def default_of(argument: str, constructors) -> tuple[bool, object]:
  """(found, default) of `argument` in the first constructor that has it with a default."""
  for constructor in constructors:
    parameter = inspect.signature(constructor).parameters.get(argument)
    if parameter is not None and parameter.default is not inspect.Parameter.empty:
      return True, parameter.default
  return False, None


@pytest.mark.parametrize("name", sorted(sync_lib.REGISTRY))
def test_the_configs_defaults_are_the_constructors_defaults(name):
  """One strategy, one set of defaults: each field a strategy reads has, in configs/digits_pso.py,
  the default of the constructor argument it feeds."""
  entry = sync_lib.REGISTRY[name]
  config = digits_pso.get_config()
  for argument, field in entry.fields.items():
    names = {p for c in entry.constructors for p in inspect.signature(c).parameters}
    assert argument in names, f"{name}: {argument} is no argument of {entry.constructors}"
    found, default = default_of(argument, entry.constructors)
    if found:  # (coefficient_schedule's `schedule` has none: the config chooses)
      assert config_value(config, field) == default, (name, field)


def one_sync(strategy, x, fitness):
  state = jax.vmap(strategy.init)(x)
  sync = jax.vmap(strategy.sync, in_axes=(0, 0, 0, None), axis_name="particles")
  return sync(x, state, fitness, jax.random.key(3))[0]


def test_pso_average_from_the_config_is_pso_average_in_python():
  """The config's pso_average and sync.pso_average() with its defaults make the same move."""
  rng = np.random.RandomState(0)
  x = {"w": jnp.asarray(rng.normal(size=(4, 5, 3)).astype(np.float32))}
  fitness = jnp.asarray([0.3, 0.1, 0.2, 0.4], jnp.float32)
  config = digits_pso.get_config()
  config.sync.strategy = "pso_average"
  from_config = one_sync(sync_lib.from_config(config.sync), x, fitness)
  in_python = one_sync(sync_lib.pso_average(), x, fitness)
  np.testing.assert_array_equal(np.asarray(from_config["w"]), np.asarray(in_python["w"]))


# A strategy from outside the package: each particle moves part of the way to the mean,
# x_i := m + s (x_i - m), m = mean_k x_k, s = scale (0: averaging, 1: independent particles).


def shrink_to_mean(scale: float = 0.5, axis_name="particles") -> sync_lib.SyncStrategy:
  errors.require(0 <= scale <= 1, "scale", scale, "accepted values are in [0, 1]")

  def sync_with_stats(params, stats, state, fitness, key):
    mean, stats = sync_lib.pmean_floats((params, stats), axis_name)
    moved = jax.tree.map(lambda x, m: m + scale * (x - m), params, mean)
    return moved, stats, state

  return sync_lib.make_strategy(
    init=lambda params: (),
    sync_with_stats=sync_with_stats,
    reduce_grads=lambda grads: grads,
    bytes_per_round=lambda params, period, opt_state=None: sync_lib.tree_bytes(params),
    export=lambda params, stats, state, fitness: sync_lib.pmean_floats((params, stats), axis_name),
  )


@pytest.fixture
def registered_shrink():
  sync_lib.register(
    "shrink",
    sync_lib.Registered(
      build=lambda c, rounds, axis_name: shrink_to_mean(c.shrink.scale, axis_name),
      fields={"scale": "sync.shrink.scale"},
      constructors=(shrink_to_mean,),
    ),
  )
  yield
  del sync_lib.REGISTRY["shrink"]


def shrink_config(scale, **overrides):
  config = small_config(**overrides)
  config.sync.strategy = "shrink"
  config.sync.shrink = ml_collections.ConfigDict({"scale": scale})
  return config


def test_a_registered_strategy_matches_numpy_and_its_fields_are_checked(registered_shrink):
  assert "shrink" in sync_lib.strategy_names()
  rng = np.random.RandomState(1)
  x = {"w": rng.normal(size=(4, 6)).astype(np.float32)}
  config = shrink_config(0.25)
  got = one_sync(sync_lib.from_config(config.sync), jax.tree.map(jnp.asarray, x), jnp.zeros(4))
  mean = x["w"].mean(0)
  np.testing.assert_allclose(np.asarray(got["w"]), mean + 0.25 * (x["w"] - mean), rtol=1e-6)
  with pytest.raises(errors.ConfigError, match=r"^sync.shrink.scale=1.5: accepted values are in"):
    sync_lib.from_config(shrink_config(1.5).sync)
  with pytest.raises(errors.ConfigError, match=r"sync.strategy='shrnk': accepted .*'shrink'"):
    sync_lib.from_config(ml_collections.ConfigDict({"strategy": "shrnk"}))
  lacking = small_config()
  lacking.sync.strategy = "shrink"  # no sync.shrink section
  with pytest.raises(errors.ConfigError, match=r"reads config field 'shrink'.*sync.shrink.scale"):
    sync_lib.from_config(lacking.sync)


@pytest.mark.slow
def test_a_registered_strategy_trains_through_train_and_evaluate(registered_shrink, tmp_path):
  summary = train.train_and_evaluate(shrink_config(0.5), str(tmp_path / "ok"))
  assert summary["strategy"] == "shrink" and summary["final_test_accuracy"] > 0.5
  with pytest.raises(errors.ConfigError, match="sync.shrink.scale=-1.0"):
    train.train_and_evaluate(shrink_config(-1.0), str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()  # a bad config creates no workdir


def test_the_usage_guides_python_example_runs():
  """docs/usage.md's example of the outer sync's parts as values builds what it says."""
  import os

  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "usage.md")
  with open(path) as f:
    text = f.read().split("In Python the parts are values", 1)[1]
  code = text.split("```python\n", 1)[1].split("```", 1)[0]
  namespace = {}
  exec(code, namespace)
  assert isinstance(namespace["strategy"], sync_lib.SyncStrategy)
  assert namespace["strategy"].collective.kind == "all_gather"  # the median gathers
  assert namespace["streamed"].reads_fitness  # top-k ranks the particles
