"""Sync strategies against a NumPy re-implementation of their math, under vmap, shard_map, pmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from psops_jax import sync as sync_lib
from psops_jax.sync import aggregates

AXIS = "particles"


def random_params(rng, n):
  """A stacked pytree of N particles' weights: a dict with a matrix and a vector."""
  return {
    "w": rng.normal(size=(n, 3, 4)).astype(np.float32),
    "b": rng.normal(size=(n, 5)).astype(np.float32),
  }


def run_vmap(fn, *args, in_axes):
  return jax.vmap(fn, in_axes=in_axes, axis_name=AXIS)(*args)


def run_shard_map(fn, *args, in_axes):
  """fn on one particle per device: blocks of size 1 squeezed in, expanded out."""
  n = jax.tree.leaves(args[0])[0].shape[0]
  mesh = jax.make_mesh(
    (n,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n]
  )
  specs = tuple(P(AXIS) if a == 0 else P() for a in in_axes)

  def per_device(*blocks):
    squeezed = [jax.tree.map(lambda x: x[0], b) if a == 0 else b for b, a in zip(blocks, in_axes)]
    return jax.tree.map(lambda x: x[None], fn(*squeezed))

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P(AXIS)))(*args)


def run_pmap(fn, *args, in_axes):
  return jax.pmap(fn, axis_name=AXIS, in_axes=in_axes)(*args)


def run_nested(fn, *args, in_axes):
  """Several particles per device: shard_map over 2 devices (1 if N is odd), vmap inside; the
  strategy must be built with axis_name=AXES."""
  n = jax.tree.leaves(args[0])[0].shape[0]
  d = 2 if n % 2 == 0 else 1
  mesh = jax.make_mesh(
    (d,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:d]
  )
  specs = tuple(P(AXIS) if a == 0 else P() for a in in_axes)
  per_device = jax.vmap(fn, in_axes=in_axes, axis_name="local")
  return jax.jit(
    jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P(AXIS), check_vma=False)
  )(*args)


AXES = (AXIS, "local")
RUNNERS = {
  "vmap": (run_vmap, AXIS),
  "shard_map": (run_shard_map, AXIS),
  "nested": (run_nested, AXES),
}


def marked_slow(values, slow) -> list:
  """`values` as test parameters, those in `slow` marked slow."""
  return [pytest.param(v, marks=pytest.mark.slow) if v in slow else v for v in values]


# The runners as test parameters: the nested layout's cases are slow.
LAYOUTS = marked_slow(sorted(RUNNERS), ("nested",))


def strategy_and_runner(runner, factory, **kwargs):
  """(strategy built for the runner's axis name, runner function)."""
  run, axis_name = RUNNERS[runner]
  return factory(axis_name=axis_name, **kwargs), run


def global_norms(tree, n):
  """Per particle: the L2 norm over all leaves of a stacked dict."""
  return np.sqrt(sum((a.reshape(n, -1).astype(np.float64) ** 2).sum(1) for a in tree.values()))


def numpy_pso(x, state, fitness, r1, r2, w, c1, c2, c3, memory, decay=0.0, ratio=0.0):
  """Reference PSO-PS step on stacked NumPy arrays (dict of leaves with a leading particle axis)."""
  n = len(fitness)
  f = np.where(np.isfinite(fitness), fitness, np.inf).astype(np.float32)
  old_pf = {
    "forever": state["pf"],
    "decay": state["pf"] * (1 + decay),
    "round": np.full(n, np.inf, np.float32),
  }[memory]
  improved = f < old_pf
  pf = np.where(improved, f, old_pf)
  pbest = {
    k: np.where(improved.reshape((n,) + (1,) * (x[k].ndim - 1)), x[k], state["pbest"][k]) for k in x
  }
  if memory == "round":  # p_i := x_i' at every sync, even for a particle whose fitness is NaN
    pbest = x
  j = int(np.argmin(pf))  # first minimum: ties go to the lowest index
  gbest = {k: pbest[k][j] for k in x}
  velocity = {
    k: (
      w * state["v"][k]
      + c1 * r1[k] * (pbest[k] - x[k])
      + c2 * r2[k] * (gbest[k][None] - x[k])
      + c3 * (x[k].mean(axis=0, keepdims=True) - x[k])
    )
    for k in x
  }
  if ratio:
    scale = np.minimum(
      1.0, ratio * global_norms(x, n) / np.maximum(global_norms(velocity, n), 1e-12)
    )
    velocity = {k: v * scale.reshape((n,) + (1,) * (v.ndim - 1)) for k, v in velocity.items()}
  new_x = {k: x[k] + velocity[k] for k in x}
  distance = global_norms({k: x[k] - gbest[k][None] for k in x}, n)
  return new_x, {
    "v": velocity,
    "pbest": pbest,
    "pf": pf,
    "gbest": gbest,
    "winner": j,
    "distance": distance,
  }


def draws(key, params, n, random):
  """r1, r2 of each particle, as the strategy draws them, stacked and broadcast to the leaves."""
  r1s, r2s = [], []
  for i in range(n):
    one = jax.tree.map(lambda a: a[i], params)
    r1, r2 = sync_lib.draw_r(jax.random.fold_in(key, i), one, random)
    r1s.append(jax.tree.map(lambda r, a: np.broadcast_to(np.asarray(r), a.shape), r1, one))
    r2s.append(jax.tree.map(lambda r, a: np.broadcast_to(np.asarray(r), a.shape), r2, one))
  stack = lambda rs: {k: np.stack([r[k] for r in rs]) for k in params}
  return stack(r1s), stack(r2s)


@pytest.mark.parametrize("runner", marked_slow(sorted(RUNNERS), ("nested", "shard_map")))
@pytest.mark.parametrize("n", marked_slow([2, 3, 8], (8,)))
@pytest.mark.parametrize(
  "memory,random,coefs,extra",
  [
    ("forever", "particle", (0.5, 0.5, 0.5, 0.0), {}),
    ("round", "coordinate", (0.7, 1.5, 1.5, 0.0), {}),
    ("forever", "coordinate", (0.3, 0.8, 0.6, 0.4), {}),
    ("decay", "particle", (0.0, 0.5, 1.0, 0.0), {"memory_decay": 0.3, "max_velocity_ratio": 0.2}),
    ("round", "particle", (0.0, 0.0, 1.0, 0.0), {}),  # the defaults: no velocity, bests, g stored
  ],
)
def test_pso_matches_numpy_over_several_rounds(runner, n, memory, random, coefs, extra):
  w, c1, c2, c3 = coefs
  strategy, run = strategy_and_runner(
    runner,
    sync_lib.pso,
    inertia=w,
    cognitive=c1,
    social=c2,
    mean_pull=c3,
    memory=memory,
    random=random,
    **extra,
  )
  rng = np.random.RandomState(n)
  x = random_params(rng, n)
  state = run_vmap(strategy.init, x, in_axes=(0,))
  ref_state = {
    "v": {k: np.zeros_like(a) for k, a in x.items()},
    "pbest": x,
    "pf": np.full(n, np.inf),
  }
  ref_x = x
  for r in range(4):
    fitness = rng.uniform(0.5, 2.0, n).astype(np.float32)
    if r == 1:
      fitness[rng.randint(n)] = np.nan
    key = jax.random.key(100 + r)
    x_before = jax.tree.map(np.asarray, x)
    x, state = run(strategy.sync, x, state, jnp.asarray(fitness), key, in_axes=(0, 0, 0, None))
    r1, r2 = draws(key, ref_x, n, random)
    ref_x, ref_state = numpy_pso(
      ref_x,
      ref_state,
      fitness,
      r1,
      r2,
      w,
      c1,
      c2,
      c3,
      memory,
      extra.get("memory_decay", 0.0),
      extra.get("max_velocity_ratio", 0.0),
    )
    j = ref_state["winner"]
    for k in ref_x:
      np.testing.assert_allclose(np.asarray(x[k]), ref_x[k], rtol=1e-5, atol=1e-5)
      if w:
        np.testing.assert_allclose(
          np.asarray(state.velocity[k]), ref_state["v"][k], rtol=1e-5, atol=1e-5
        )
      # the global best fetched by the masked all-reduce is the winner's personal best, bit for bit
      if memory != "round":
        np.testing.assert_allclose(
          np.asarray(state.personal_best[k]), ref_state["pbest"][k], rtol=1e-5, atol=1e-5
        )
      winner_best = np.asarray(state.personal_best[k][j]) if memory != "round" else x_before[k][j]
      if jax.tree.leaves(state.global_best):
        for i in range(n):
          np.testing.assert_array_equal(np.asarray(state.global_best[k][i]), winner_best)
      else:  # not stored: then the winner stays exactly at g
        np.testing.assert_array_equal(np.asarray(x[k][j]), winner_best)
    # what each option set stores: nothing the options do not need
    assert bool(jax.tree.leaves(state.velocity)) == bool(w)
    assert bool(jax.tree.leaves(state.personal_best)) == (memory != "round")
    np.testing.assert_array_equal(np.asarray(state.global_index), j)
    np.testing.assert_allclose(np.asarray(state.personal_fitness), ref_state["pf"])
    np.testing.assert_allclose(
      np.asarray(state.distance), ref_state["distance"], rtol=1e-4, atol=1e-5
    )


def test_pso_same_result_under_vmap_shard_map_and_pmap():
  n = 4
  strategy = sync_lib.pso(
    inertia=0.5, cognitive=0.5, social=0.5, memory="forever", random="coordinate", axis_name=AXIS
  )
  x = random_params(np.random.RandomState(0), n)
  state = run_vmap(strategy.init, x, in_axes=(0,))
  fitness = jnp.asarray([1.0, 0.3, 0.7, 0.9])
  key = jax.random.key(7)
  results = [
    run(strategy.sync, x, state, fitness, key, in_axes=(0, 0, 0, None))
    for run in (run_vmap, run_shard_map, run_pmap)
  ]
  for other in results[1:]:
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(other)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("runner", LAYOUTS)
def test_zero_coefficients_is_independent_training(runner):
  strategy, run = strategy_and_runner(runner, sync_lib.pso, inertia=0.0, cognitive=0.0, social=0.0)
  x = random_params(np.random.RandomState(1), 8)
  state = run_vmap(strategy.init, x, in_axes=(0,))
  for r in range(3):
    fitness = jnp.asarray(np.random.RandomState(r).uniform(size=8), jnp.float32)
    new_x, state = run(strategy.sync, x, state, fitness, jax.random.key(r), in_axes=(0, 0, 0, None))
    for k in x:
      np.testing.assert_array_equal(np.asarray(new_x[k]), x[k])


@pytest.mark.parametrize("runner", LAYOUTS)
def test_social_one_without_randomness_jumps_to_the_best(runner):
  strategy, run = strategy_and_runner(
    runner, sync_lib.pso, inertia=0.0, cognitive=0.0, social=1.0, random="none"
  )
  x = random_params(np.random.RandomState(2), 8)
  state = run_vmap(strategy.init, x, in_axes=(0,))
  fitness = jnp.asarray([0.9, 0.8, 0.95, 0.2, 0.5, 0.6, 0.7, 0.3])
  new_x, _ = run(strategy.sync, x, state, fitness, jax.random.key(0), in_axes=(0, 0, 0, None))
  for k in x:
    for i in range(8):
      np.testing.assert_allclose(np.asarray(new_x[k][i]), x[k][3], rtol=0, atol=1e-6)


@pytest.mark.parametrize("runner", LAYOUTS)
def test_nan_particle_never_becomes_best(runner):
  strategy, run = strategy_and_runner(
    runner, sync_lib.pso, inertia=0.0, cognitive=0.0, social=1.0, random="none"
  )
  x = random_params(np.random.RandomState(3), 8)
  x = {k: a.copy() for k, a in x.items()}
  for k in x:
    x[k][2] = np.nan  # a diverged particle: NaN weights, and its loss NaN (or -inf)
  state = run_vmap(strategy.init, x, in_axes=(0,))
  fitness = jnp.asarray([0.9, 0.8, np.nan, 0.5, 0.4, 0.6, 0.7, 0.3])
  fitness_neg_inf = fitness.at[2].set(-np.inf)
  for f in (fitness, fitness_neg_inf):
    new_x, new_state = run(strategy.sync, x, state, f, jax.random.key(0), in_axes=(0, 0, 0, None))
    assert int(new_state.global_index[0]) == 7
    for k in x:
      assert np.isfinite(np.asarray(new_x[k][7])).all()  # the exported g (not stored: particle 7)
      healthy = np.delete(np.asarray(new_x[k]), 2, axis=0)
      np.testing.assert_allclose(healthy, np.broadcast_to(x[k][7], healthy.shape), atol=1e-6)


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("n", [2, 3, 8])
def test_average_is_the_mean(runner, n):
  strategy, run = strategy_and_runner(runner, sync_lib.average)
  x = random_params(np.random.RandomState(n), n)
  state = run_vmap(strategy.init, x, in_axes=(0,))
  new_x, _ = run(strategy.sync, x, state, jnp.zeros(n), jax.random.key(0), in_axes=(0, 0, 0, None))
  for k in x:
    expected = np.broadcast_to(x[k].mean(axis=0, dtype=np.float64), x[k].shape)
    np.testing.assert_allclose(np.asarray(new_x[k]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("runner", LAYOUTS)
def test_ssgd_reduces_gradients_to_their_mean_and_none_does_nothing(runner):
  grads = random_params(np.random.RandomState(4), 4)
  ssgd, run = strategy_and_runner(runner, sync_lib.ssgd)
  none, _ = strategy_and_runner(runner, sync_lib.none)
  reduced = run(ssgd.reduce_grads, grads, in_axes=(0,))
  untouched = run(none.reduce_grads, grads, in_axes=(0,))
  for k in grads:
    np.testing.assert_allclose(
      np.asarray(reduced[k]),
      np.broadcast_to(grads[k].mean(axis=0), grads[k].shape),
      rtol=1e-5,
      atol=1e-6,
    )
    np.testing.assert_array_equal(np.asarray(untouched[k]), grads[k])


def test_bytes_per_round_counts_the_collectives():
  params = {"w": np.zeros((3, 4), np.float32), "b": np.zeros((5,), np.float32)}
  size = 17 * 4
  assert sync_lib.average().bytes_per_round(params, 16) == size
  assert sync_lib.ssgd().bytes_per_round(params, 16) == 16 * size
  assert sync_lib.none().bytes_per_round(params, 16) == 0
  assert sync_lib.pso().bytes_per_round(params, 16) == size + 4
  assert sync_lib.pso_average().bytes_per_round(params, 16) == 2 * size + 4


def test_bad_options_name_the_field():
  with pytest.raises(ValueError, match=r"^memory='sometimes'.*forever"):
    sync_lib.pso(memory="sometimes")
  with pytest.raises(ValueError, match=r"^random='gauss'.*particle"):
    sync_lib.pso(random="gauss")


def shared_start(n, seed):
  """N identical copies of one random init (what train.init=shared gives) and, per round, the local
  progress each particle makes between syncs (different for every particle)."""
  one = random_params(np.random.RandomState(seed), 1)
  start = {k: np.repeat(a, n, axis=0) for k, a in one.items()}
  rng = np.random.RandomState(seed + 1)
  drifts = [
    {k: 0.1 * rng.normal(size=a.shape).astype(np.float32) for k, a in start.items()}
    for _ in range(3)
  ]
  return start, drifts


def run_syncs(run, strategy, start, drifts, seed=0):
  """init at `start`; then per round: the strategy's `communicate` (as the round issues it beside
  its local steps), local drift, sync (random fitnesses). Returns the params after each sync and
  the last state."""
  state = run_vmap(strategy.init, start, in_axes=(0,))
  rng = np.random.RandomState(seed)
  x, history = start, []
  for r, drift in enumerate(drifts):
    if strategy.communicate is not None:
      state = run(strategy.communicate, state, in_axes=(0,))
    x = jax.tree.map(lambda a, d: a + d, x, drift)
    fitness = jnp.asarray(rng.uniform(size=len(drift["b"])), jnp.float32)
    x, state = run(strategy.sync, x, state, fitness, jax.random.key(r), in_axes=(0, 0, 0, None))
    history.append(jax.tree.map(np.asarray, x))
  return history, state


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("n", [2, 3, 8])
def test_easgd_matches_numpy(runner, n):
  alpha = 0.3 / n
  strategy, run = strategy_and_runner(runner, sync_lib.easgd, alpha=alpha)
  start, drifts = shared_start(n, seed=n)
  history, state = run_syncs(run, strategy, start, drifts)
  x, center = start, {k: a[0] for k, a in start.items()}
  for r, drift in enumerate(drifts):
    x = {k: x[k] + drift[k] for k in x}
    diff = {k: x[k] - center[k] for k in x}
    x = {k: x[k] - alpha * diff[k] for k in x}
    center = {k: center[k] + alpha * diff[k].sum(axis=0) for k in x}
    for k in x:
      np.testing.assert_allclose(history[r][k], x[k], rtol=1e-5, atol=1e-5)
  for k in x:
    np.testing.assert_allclose(
      np.asarray(state.center[k]), np.broadcast_to(center[k], x[k].shape), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("n", [2, 3, 8])
@pytest.mark.parametrize("nesterov", [True, False])
def test_diloco_matches_numpy(runner, n, nesterov):
  lr, mu = 0.7, 0.9
  strategy, run = strategy_and_runner(
    runner, sync_lib.diloco, learning_rate=lr, momentum=mu, nesterov=nesterov
  )
  start, drifts = shared_start(n, seed=n)
  history, _ = run_syncs(run, strategy, start, drifts)
  theta = {k: a[0] for k, a in start.items()}
  m = {k: np.zeros_like(a) for k, a in theta.items()}
  x = start
  for r, drift in enumerate(drifts):
    for k in x:
      delta = theta[k] - (x[k] + drift[k]).mean(axis=0)
      m[k] = mu * m[k] + delta
      theta[k] = theta[k] - lr * ((delta + mu * m[k]) if nesterov else m[k])
    x = {k: np.broadcast_to(theta[k], start[k].shape) for k in x}
    for k in x:
      np.testing.assert_allclose(history[r][k], x[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("runner", LAYOUTS)
def test_identities_between_strategies(runner):
  """diloco(lr 1, momentum 0) = average; easgd(alpha 0) = none = pso with zero coefficients."""
  start, drifts = shared_start(4, seed=5)
  results = {}
  for name, factory, kwargs in [
    ("diloco", sync_lib.diloco, dict(learning_rate=1.0, momentum=0.0)),
    ("average", sync_lib.average, {}),
    ("easgd", sync_lib.easgd, dict(alpha=0.0)),
    ("none", sync_lib.none, {}),
    ("pso0", sync_lib.pso, dict(inertia=0.0, cognitive=0.0, social=0.0)),
  ]:
    strategy, run = strategy_and_runner(runner, factory, **kwargs)
    results[name], _ = run_syncs(run, strategy, start, drifts)
  for r in range(3):
    for k in start:
      np.testing.assert_allclose(results["diloco"][r][k], results["average"][r][k], atol=1e-6)
      np.testing.assert_array_equal(results["easgd"][r][k], results["none"][r][k])
      np.testing.assert_array_equal(results["pso0"][r][k], results["none"][r][k])


@pytest.mark.parametrize("runner", LAYOUTS)
def test_average_with_optimizer_state(runner):
  strategy, run = strategy_and_runner(runner, sync_lib.average, average_opt_state=True)
  opt_state = {
    "momentum": np.random.RandomState(6).normal(size=(4, 3)).astype(np.float32),
    "count": np.arange(4, dtype=np.int32),
  }
  reduced = run(lambda o: strategy.reduce_opt_state(o, (), None), opt_state, in_axes=(0,))
  np.testing.assert_allclose(
    np.asarray(reduced["momentum"]),
    np.broadcast_to(opt_state["momentum"].mean(0), (4, 3)),
    atol=1e-6,
  )
  np.testing.assert_array_equal(np.asarray(reduced["count"]), opt_state["count"])  # ints untouched
  local, _ = strategy_and_runner(runner, sync_lib.average)
  kept = run(lambda o: local.reduce_opt_state(o, (), None), opt_state, in_axes=(0,))
  np.testing.assert_array_equal(np.asarray(kept["momentum"]), opt_state["momentum"])


@pytest.mark.parametrize("runner", LAYOUTS)
def test_pso_velocity_clipping_and_linear_schedule(runner):
  """Clipping: ||v_i|| <= V, direction kept. Schedule: w at sync t is the schedule's value."""
  n, max_norm = 4, 0.05
  schedule = optax.linear_schedule(0.9, 0.4, 2)
  strategy, run = strategy_and_runner(
    runner,
    sync_lib.pso,
    inertia=schedule,
    cognitive=0.0,
    social=1.0,
    random="none",
    memory="forever",
    max_velocity_norm=max_norm,
  )
  unclipped, _ = strategy_and_runner(
    runner,
    sync_lib.pso,
    inertia=schedule,
    cognitive=0.0,
    social=1.0,
    random="none",
    memory="forever",
  )
  x = random_params(np.random.RandomState(8), n)
  fitness = jnp.asarray([0.4, 0.1, 0.3, 0.2])
  new_x, state = run(
    strategy.sync,
    x,
    run_vmap(strategy.init, x, in_axes=(0,)),
    fitness,
    jax.random.key(0),
    in_axes=(0, 0, 0, None),
  )
  free_x, free_state = run(
    unclipped.sync,
    x,
    run_vmap(unclipped.init, x, in_axes=(0,)),
    fitness,
    jax.random.key(0),
    in_axes=(0, 0, 0, None),
  )
  for i in range(n):
    v = np.concatenate([np.asarray(state.velocity[k][i]).ravel() for k in sorted(x)])
    free_v = np.concatenate([np.asarray(free_state.velocity[k][i]).ravel() for k in sorted(x)])
    expected = free_v * min(1.0, max_norm / max(np.linalg.norm(free_v), 1e-12))
    np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-7)
    assert np.linalg.norm(v) <= max_norm * (1 + 1e-5)
  # second sync: w = schedule(1) = 0.65 multiplies the first velocity; g unchanged (same fitness)
  x2, state2 = run(
    unclipped.sync, free_x, free_state, fitness, jax.random.key(1), in_axes=(0, 0, 0, None)
  )
  best = {k: x[k][1] for k in x}
  for k in x:
    expected_v = 0.65 * np.asarray(free_state.velocity[k]) + (best[k][None] - np.asarray(free_x[k]))
    np.testing.assert_allclose(np.asarray(state2.velocity[k]), expected_v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("n", [3, 8])
def test_best_pull_and_topk_average_match_numpy(runner, n):
  x = random_params(np.random.RandomState(10 + n), n)
  x["b"][1] = np.nan  # a diverged particle (its fitness NaN): never the best, never in a top-k < N
  fitness = np.random.RandomState(n).uniform(size=n).astype(np.float32)
  fitness[1] = np.nan
  fitness[n - 1] = fitness[0]  # a tie: the lower index ranks first
  order = sorted(range(n), key=lambda i: (np.inf if np.isnan(fitness[i]) else fitness[i], i))
  for factory, kwargs, expected in [
    (sync_lib.best_pull, dict(pull=1.0), lambda k: x[k][order[0]]),
    (sync_lib.topk_average, dict(k=1), lambda k: x[k][order[0]]),
    (sync_lib.topk_average, dict(k=n - 1), lambda k: x[k][order[: n - 1]].mean(0)),
  ]:
    strategy, run = strategy_and_runner(runner, factory, **kwargs)
    new_x, _ = run(
      strategy.sync,
      x,
      run_vmap(strategy.init, x, in_axes=(0,)),
      jnp.asarray(fitness),
      jax.random.key(0),
      in_axes=(0, 0, 0, None),
    )
    for k in x:
      np.testing.assert_allclose(
        np.asarray(new_x[k]), np.broadcast_to(expected(k), x[k].shape), rtol=1e-5, atol=1e-6
      )
  # with the NaN particle, best_pull < 1 includes it in the mean: NaN, reported, not hidden
  clean = {k: np.where(np.isnan(a), 0.0, a).astype(np.float32) for k, a in x.items()}
  for c in (0.0, 0.3):
    strategy, run = strategy_and_runner(runner, sync_lib.best_pull, pull=c)
    new_x, _ = run(
      strategy.sync, clean, (), jnp.asarray(fitness), jax.random.key(0), in_axes=(0, None, 0, None)
    )
    for k in clean:
      expected = (1 - c) * clean[k].mean(0) + c * clean[k][order[0]]
      np.testing.assert_allclose(
        np.asarray(new_x[k]), np.broadcast_to(expected, clean[k].shape), rtol=1e-5, atol=1e-6
      )
  strategy, run = strategy_and_runner(runner, sync_lib.best_pull, pull=0.3)
  poisoned, _ = run(
    strategy.sync, x, (), jnp.asarray(fitness), jax.random.key(0), in_axes=(0, None, 0, None)
  )
  assert np.isnan(np.asarray(poisoned["b"])).all()


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("random", ["particle", "none"])
def test_pso_optimizer_state_on_move(runner, random):
  """reset: float leaves zeroed; follow: s_i + c2 r2 (s_j - s_i) + c3 (mean s - s_i), ints kept."""
  n, c2, c3 = 4, 0.8, 0.3
  x = random_params(np.random.RandomState(11), n)
  opt_state = {
    "trace": np.random.RandomState(12).normal(size=(n, 6)).astype(np.float32),
    "count": np.arange(n, dtype=np.int32),
  }
  fitness = jnp.asarray([0.5, 0.9, 0.2, 0.7])  # particle 2 holds g
  key = jax.random.key(5)
  for mode in ("keep", "reset", "follow"):
    strategy, run = strategy_and_runner(
      runner, sync_lib.pso, social=c2, mean_pull=c3, random=random, opt_state_on_move=mode
    )

    def sync_and_move(params, state, opt, f, k):
      new_params, new_state = strategy.sync(params, state, f, k)
      return strategy.reduce_opt_state(opt, new_state, k)

    moved = run(
      sync_and_move,
      x,
      run_vmap(strategy.init, x, in_axes=(0,)),
      opt_state,
      fitness,
      key,
      in_axes=(0, 0, 0, 0, None),
    )
    np.testing.assert_array_equal(np.asarray(moved["count"]), opt_state["count"])
    s = opt_state["trace"]
    if mode == "keep":
      expected = s
    elif mode == "reset":
      expected = np.zeros_like(s)
    else:
      _, r2 = draws(key, x, n, random)
      r2 = np.array([r2["b"][i].flat[0] for i in range(n)])[:, None]
      expected = s + c2 * r2 * (s[2][None] - s) + c3 * (s.mean(0, keepdims=True) - s)
    np.testing.assert_allclose(np.asarray(moved["trace"]), expected, rtol=1e-5, atol=1e-6)


def test_new_strategies_bytes_and_bad_options():
  params = {"w": np.zeros((3, 4), np.float32), "b": np.zeros((5,), np.float32)}
  opt_state = {"trace": params, "count": np.zeros((), np.int32)}
  size = 17 * 4
  assert sync_lib.best_pull().bytes_per_round(params, 16) == size + 4
  assert sync_lib.topk_average().bytes_per_round(params, 16) == size + 4
  assert sync_lib.pso(opt_state_on_move="follow").bytes_per_round(params, 16, opt_state) == (
    2 * size + 4
  )
  with pytest.raises(ValueError, match=r"opt_state_on_move='moved'.*keep"):
    sync_lib.pso(opt_state_on_move="moved")
  with pytest.raises(ValueError, match=r"follow.*random"):
    sync_lib.pso(opt_state_on_move="follow", random="coordinate")


def numpy_trimmed_mean(x, trim):
  """Per coordinate: the finite values sorted, t = min(trim, (m - 1) // 2) dropped at each end."""
  columns = x.reshape(x.shape[0], -1).T
  out = []
  for column in columns:
    finite = np.sort(column[np.isfinite(column)])
    t = min(trim, (len(finite) - 1) // 2)
    out.append(finite[t : len(finite) - t].mean() if len(finite) else np.nan)
  return np.array(out).reshape(x.shape[1:])


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("n", [3, 8])
def test_robust_average_matches_numpy(runner, n):
  x = random_params(np.random.RandomState(20 + n), n)
  x["w"][0] = np.nan  # a NaN worker: ignored by the median, set aside by the trimmed mean
  x["b"][n - 1] = 1e6  # a worker gone wild
  x["b"][0, ..., 0] = np.inf
  trims = (1, 2) if n == 8 else (1,)
  for method, trim in [("median", 1)] + [("trimmed_mean", t) for t in trims]:
    strategy, run = strategy_and_runner(runner, sync_lib.robust_average, method=method, trim=trim)
    new_x, _ = run(
      strategy.sync, x, (), jnp.zeros(n), jax.random.key(0), in_axes=(0, None, 0, None)
    )
    for k in x:
      if method == "median":
        expected = np.nanmedian(x[k], axis=0)  # inf counts as a value, NaN does not
      else:
        expected = numpy_trimmed_mean(x[k], trim)
      np.testing.assert_allclose(
        np.asarray(new_x[k]), np.broadcast_to(expected, x[k].shape), rtol=1e-5, atol=1e-6
      )
      assert np.isfinite(np.asarray(new_x[k])).all()
  with pytest.raises(ValueError, match=r"^method='mode'.*median"):
    sync_lib.robust_average(method="mode")


def test_trimmed_mean_sets_non_finite_values_aside_and_keeps_the_plain_rule_when_all_are_finite():
  rs = np.random.RandomState(3)
  x = rs.randn(8, 40, 30).astype(np.float32)
  plain = np.asarray(jax.jit(lambda v: jnp.sort(v, axis=0)[2:6].mean(axis=0))(x))
  np.testing.assert_array_equal(
    np.asarray(jax.jit(aggregates.trimmed_mean_of, static_argnums=1)(x, 2)), plain
  )  # bit for bit: runs without faults are unchanged
  x[:2, 0, 0] = np.nan  # 2 NaN of 8: the 6 finite values, 2 dropped at each end (not 2 low + 2 NaN)
  x[:7, 1, 0] = np.nan  # 1 finite value: it is the mean
  x[:, 2, 0] = np.nan  # none finite: NaN
  x[0, 3, 0], x[1, 3, 0] = np.inf, -np.inf
  got = np.asarray(aggregates.trimmed_mean_of(jnp.asarray(x), 2))
  np.testing.assert_allclose(got, numpy_trimmed_mean(x, 2), rtol=1e-6)
  assert got[1, 0] == x[7, 1, 0] and np.isnan(got[2, 0])
  healthy = np.sort(x[2:, 0, 0])
  assert abs(got[0, 0] - healthy[2:4].mean()) < 1e-6  # the old rule gave healthy[2:6].mean()
