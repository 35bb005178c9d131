"""Byzantine workers (psops_jax/faults.py: sign_flip, scale, alie) and centered clipping
(aggregates.centered_clip) against NumPy, their identities, a toy swarm in which every defence
meets every attack, and the attacks in the real round (one call and chained calls)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_outer import numpy_centered_clip, stacked_rows
from test_sync import LAYOUTS, RUNNERS, random_params
from test_train import run_rounds, small_config

from psops_jax import config_check, errors, faults, train
from psops_jax import swarm as swarm_lib
from psops_jax import sync as sync_lib
from psops_jax.sync import aggregates

N, F = 6, 2  # the attack tests' swarm: the last 2 of 6 particles are faulty


def swarm_pair(seed, n=N):
  """(x0, x'): known round-start weights and weights after the steps of n particles."""
  rng = np.random.RandomState(seed)
  x0 = random_params(rng, n)
  x1 = {k: a + rng.normal(size=a.shape).astype(np.float32) for k, a in x0.items()}
  return x0, x1


def presented(runner, fault, x0, x1, strikes=True):
  """faults.presented of every particle under the runner's axis; the last fault.particles are
  faulty."""
  run, axis_name = RUNNERS[runner]
  n = len(jax.tree.leaves(x0)[0])
  faulty = np.arange(n) >= n - fault.particles
  send = lambda a, b, hit: faults.presented(a, b, hit, jnp.asarray(strikes), fault, axis_name)
  return jax.tree.map(np.asarray, run(send, x0, x1, faulty, in_axes=(0, 0, 0)))


def numpy_presented(fault, x0, x1):
  """The reference: honest particles send x'; faulty ones the attack of their x0 and x'."""
  n = len(jax.tree.leaves(x0)[0])
  honest = np.arange(n) < n - fault.particles
  out = {}
  for k in x0:
    a, b = x0[k].astype(np.float64), x1[k].astype(np.float64)
    u = b - a
    if fault.kind == "sign_flip":
      attack = a - u
    elif fault.kind == "scale":
      attack = a + fault.scale * u
    else:  # alie: the honest particles' mean and population std, per coordinate
      attack = a + (u[honest].mean(0) - fault.z * u[honest].std(0))
    out[k] = np.where(honest.reshape((-1,) + (1,) * (a.ndim - 1)), b, attack)
  return out


ATTACKS = [
  faults.Fault("sign_flip", F, 0, 0.0),
  faults.Fault("scale", F, 0, -4.0),
  faults.Fault("scale", F, 0, 10.0),
  faults.Fault("alie", F, 0, 0.0, z=1.5),
]


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("fault", ATTACKS, ids=lambda f: f"{f.kind}{f.scale:g}")
def test_each_attack_matches_numpy(runner, fault):
  x0, x1 = swarm_pair(0)
  got = presented(runner, fault, x0, x1)
  want = numpy_presented(fault, x0, x1)
  for k in x0:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[k][: N - F], x1[k][: N - F])  # the honest send x'
  # before the fault's round nobody attacks
  before = presented(runner, fault, x0, x1, strikes=False)
  for k in x0:
    np.testing.assert_array_equal(before[k], x1[k])


def test_attack_identities():
  x0, x1 = swarm_pair(1)
  # sign_flip of a zero update changes nothing
  still = presented("vmap", ATTACKS[0], x0, x0)
  for k in x0:
    np.testing.assert_array_equal(still[k], x0[k])
  # alie with z = 0 presents the honest mean update; scale 1 is the worker's own update
  mean_update = presented("vmap", faults.Fault("alie", F, 0, 0.0, z=0.0), x0, x1)
  own = presented("vmap", faults.Fault("scale", F, 0, 1.0), x0, x1)
  for k in x0:
    honest_mean = (x1[k][: N - F] - x0[k][: N - F]).mean(0)
    np.testing.assert_allclose(mean_update[k][N - F :], x0[k][N - F :] + honest_mean, atol=1e-6)
    np.testing.assert_allclose(own[k], x1[k], atol=1e-6)
  # every alie worker presents the same update, which lies z sigma from the honest mean
  alie = presented("vmap", faults.Fault("alie", F, 0, 0.0, z=1.5), x0, x1)
  for k in x0:
    updates = alie[k][N - F :] - x0[k][N - F :]
    np.testing.assert_allclose(updates[0], updates[1], atol=1e-6)


def test_alie_z_max_is_the_papers_bound():
  """z_max = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f, checked through Phi = erf."""
  phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
  for n, f in ((50, 12), (8, 2), (20, 5)):
    s = n // 2 + 1 - f
    assert phi(faults.alie_z_max(n, f)) == pytest.approx((n - s) / n, abs=1e-9)
  assert faults.alie_z_max(8, 1) == pytest.approx(0.0, abs=1e-12)  # s = 4 of 8: Phi(z) = 1/2
  assert faults.alie_z("fixed", 0.7, 8, 5) == 0.7
  with pytest.raises(errors.BadArgument, match=r"^particles=5: .*f in 0..4 for n=8"):
    faults.alie_z_max(8, 5)


# --------------------------------------------------------------------------------------------------
# Centered clipping.


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("iterations", [1, 3])
def test_centered_clip_matches_a_numpy_loop(runner, iterations):
  """From a given start (the outer sync's center) and from none (the finite particles' mean), with
  tau small enough that most particles are clipped."""
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(2)
  v = random_params(rng, 8)
  v["w"][5] *= 30.0  # one far particle
  start = {k: rng.normal(size=a.shape[1:]).astype(np.float32) for k, a in v.items()}
  rows, split = stacked_rows(v, 8)
  start_row = stacked_rows({k: a[None] for k, a in start.items()}, 1)[0][0]
  aggregate = aggregates.centered_clip(tau=1.5, iterations=iterations)
  fitness = np.zeros(8, np.float32)
  from_start = run(
    lambda x, f, s: aggregate(x, f, axis_name, s), v, fitness, start, in_axes=(0, 0, None)
  )
  from_mean = run(lambda x, f: aggregate(x, f, axis_name), v, fitness, in_axes=(0, 0))
  for got, begin in ((from_start, start_row), (from_mean, None)):
    want = split(numpy_centered_clip(rows, 1.5, iterations, begin))
    for k in v:
      for particle in (0, 7):
        np.testing.assert_allclose(np.asarray(got[k])[particle], want[k], rtol=1e-5, atol=1e-6)
  # the far particle moved the result by at most tau / N per iteration from a start at the mean of
  # the others; without clipping it would have moved it far more
  others = {k: np.delete(a, 5, 0) for k, a in v.items()}
  rest = stacked_rows(others, 7)[0].mean(0)
  mean_all = rows.mean(0)
  got_row = stacked_rows({k: np.asarray(a)[:1] for k, a in from_mean.items()}, 1)[0][0]
  assert np.linalg.norm(got_row - rest) < np.linalg.norm(mean_all - rest)


def test_centered_clip_identities():
  run, axis = RUNNERS["vmap"]
  rng = np.random.RandomState(3)
  v = random_params(rng, 8)
  fitness = np.zeros(8, np.float32)
  mean = run(lambda x, f: aggregates.mean()(x, f, axis), v, fitness, in_axes=(0, 0))
  zero = {k: np.zeros(a.shape[1:], np.float32) for k, a in v.items()}
  for iterations in (1, 3):
    unclipped = aggregates.centered_clip(tau=math.inf, iterations=iterations)
    got = run(lambda x, f: unclipped(x, f, axis, zero), v, fitness, in_axes=(0, 0))
    for k in v:  # tau = inf: the mean, from any start
      np.testing.assert_allclose(np.asarray(got[k]), np.asarray(mean[k]), rtol=1e-5, atol=1e-6)
  # particles already at the start do not move it, however small tau
  at_start = {k: np.repeat(a[None], 8, 0) for k, a in zero.items()}
  tight = aggregates.centered_clip(tau=1e-3, iterations=2)
  got = run(lambda x, f: tight(x, f, axis, zero), at_start, fitness, in_axes=(0, 0))
  for k in v:
    np.testing.assert_array_equal(np.asarray(got[k]), at_start[k])


@pytest.mark.parametrize("runner", LAYOUTS)
def test_outer_centered_clip_starts_from_its_center(runner):
  """outer(centered_clip) without an optimizer: theta := theta + CC of the updates from 0, two
  syncs (the second starts from the first's result); with int8 pseudo-gradients the aggregate
  starts from 0 as well (the same numbers up to the quantization)."""
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(4)
  n, tau = 6, 0.8
  x0 = {k: np.repeat(a, n, 0) for k, a in random_params(rng, 1).items()}
  strategy = sync_lib.outer(aggregates.centered_clip(tau, 2), axis_name=axis_name)
  assert strategy.shared_init and strategy.bytes_per_round(x0, 1) == 2 * 17 * 4 * n
  state = run(strategy.init, x0, in_axes=(0,))
  theta = stacked_rows(x0, n)[0][0]
  x = x0
  for r in range(2):
    x = {k: a + rng.normal(size=a.shape).astype(np.float32) * 0.5 for k, a in x.items()}
    rows, split = stacked_rows(x, n)
    new_x, state = run(
      strategy.sync, x, state, np.zeros(n, np.float32), jax.random.key(r), in_axes=(0, 0, 0, None)
    )
    theta = numpy_centered_clip(rows, tau, 2, theta)
    for k, want in split(theta).items():
      np.testing.assert_allclose(np.asarray(new_x[k])[n - 1], want, rtol=1e-5, atol=1e-5)
    x = {k: np.asarray(a) for k, a in new_x.items()}


def test_centered_clip_from_the_config_names_its_fields():
  config = small_config(**{"sync.strategy": "outer", "sync.outer.aggregate": "centered_clip"})
  config_check.validate(config)
  strategy = sync_lib.from_config(config.sync)
  assert strategy.collective.kind == "all_reduce" and not strategy.reads_fitness
  for field, value in (("clip_tau", 0.0), ("clip_tau", -1.0), ("clip_iterations", 0)):
    bad = small_config(
      **{
        "sync.strategy": "outer",
        "sync.outer.aggregate": "centered_clip",
        f"sync.outer.{field}": value,
      }
    )
    with pytest.raises(errors.ConfigError, match=f"^sync.outer.{field}="):
      config_check.validate(bad)


def test_fault_fields_are_checked():
  for overrides, field in (
    ({"faults.kind": "alie", "faults.particles": 4}, "faults.particles=4"),  # no honest worker
    ({"faults.kind": "alie", "faults.z_rule": "best"}, "faults.z_rule='best'"),
    ({"faults.kind": "alie", "faults.z": -1.0}, "faults.z=-1.0"),
    (
      {"faults.kind": "alie", "faults.z_rule": "paper", "faults.particles": 3},
      "faults.particles=3",
    ),  # s = 0: the paper's bound needs f <= n / 2
    ({"faults.kind": "noise", "faults.scale": -1.0}, "faults.scale=-1.0"),
  ):
    with pytest.raises(errors.ConfigError, match="^" + field.replace(".", r"\.")):
      config_check.validate(small_config(**overrides))
  config_check.validate(small_config(**{"faults.kind": "scale", "faults.scale": -4.0}))
  config_check.validate(small_config(**{"faults.kind": "alie", "faults.particles": 3}))


# --------------------------------------------------------------------------------------------------
# A toy swarm: each particle pulls toward its own target c + noise_k, one gradient step per round;
# the sync then sees what the particles present, and the fitness is the presented weights' distance
# to c (a common probe). n = 8, f = 2.

TOY_N, TOY_F, TOY_ROUNDS = 8, 2, 6
DEFENCES = {  # every robust aggregate and every selecting strategy
  "median": lambda axis: sync_lib.outer(aggregates.median(), axis_name=axis),
  "trimmed_mean": lambda axis: sync_lib.outer(aggregates.trimmed_mean(2), axis_name=axis),
  "centered_clip": lambda axis: sync_lib.outer(aggregates.centered_clip(3.0), axis_name=axis),
  "centered_clip_3": lambda axis: sync_lib.outer(aggregates.centered_clip(3.0, 3), axis_name=axis),
  "pso": lambda axis: sync_lib.pso(axis_name=axis),
  "topk_average": lambda axis: sync_lib.topk_average(4, axis_name=axis),
  "fitness_weighted": lambda axis: sync_lib.outer(aggregates.fitness_weighted(1.0), axis_name=axis),
}
UNDEFENDED = {  # the controls: averaging in the whole of every particle
  "mean": lambda axis: sync_lib.outer(axis_name=axis),
  "best_pull": lambda axis: sync_lib.best_pull(0.25, axis_name=axis),
}
TOY_ATTACKS = {
  "sign_flip": faults.Fault("sign_flip", TOY_F, 1, 0.0),
  "scale": faults.Fault("scale", TOY_F, 1, -20.0),  # strong enough to turn the mean around
  "alie": faults.Fault("alie", TOY_F, 1, 0.0, z=1.0),
}


def toy_swarm(strategy_of, fault):
  """(distance^2 of the honest particles to c at the start, after TOY_ROUNDS rounds; the final
  weights), attacked by `fault` (None: no fault)."""
  rng = np.random.RandomState(7)
  center = {"w": np.full((3, 4), 3.0, np.float32), "b": np.full((5,), -2.0, np.float32)}
  targets = {
    k: c + rng.normal(size=(TOY_N,) + c.shape).astype(np.float32) for k, c in center.items()
  }
  x = {k: np.zeros((TOY_N,) + c.shape, np.float32) for k, c in center.items()}
  strategy = strategy_of("particles")
  distance = lambda tree: sum(jnp.sum((tree[k] - center[k]) ** 2) for k in center)

  def one_round(x0, state, target, faulty, round_index):
    x1 = jax.tree.map(lambda a, t: a - 0.5 * (a - t), x0, target)  # the local step
    sent = x1
    if fault is not None:
      strikes = round_index >= fault.round
      sent = faults.presented(x0, x1, faulty, strikes, fault, "particles")
    return strategy.sync(
      sent, state, distance(sent), jax.random.fold_in(jax.random.key(0), round_index)
    )

  step = jax.jit(jax.vmap(one_round, in_axes=(0, 0, 0, 0, None), axis_name="particles"))
  faulty = np.arange(TOY_N) >= TOY_N - (fault.particles if fault is not None else 0)
  state = jax.vmap(strategy.init)(x)
  honest_distance = lambda x: float(
    np.mean([distance({k: np.asarray(a)[i] for k, a in x.items()}) for i in range(TOY_N - TOY_F)])
  )
  before = honest_distance(x)
  for r in range(TOY_ROUNDS):
    x, state = step(x, state, targets, faulty, jnp.int32(r))
  return before, honest_distance(x), x


@pytest.mark.parametrize("name", sorted(DEFENCES) + sorted(UNDEFENDED))
def test_every_defence_meets_every_attack_on_a_toy_swarm(name):
  """Finite weights everywhere; f = 0 is the run without a fault, bit for bit; every defence brings
  the honest particles closer to c under every attack, while the controls (mean, best_pull) are
  turned around by the strong scale attack -- the test would notice an attack that did nothing."""
  strategy_of = {**DEFENCES, **UNDEFENDED}[name]
  clean_before, clean_after, clean = toy_swarm(strategy_of, None)
  assert clean_after < 0.1 * clean_before, name
  _, _, nobody = toy_swarm(strategy_of, TOY_ATTACKS["sign_flip"]._replace(particles=0))
  for k in clean:
    np.testing.assert_array_equal(np.asarray(nobody[k]), np.asarray(clean[k]), err_msg=name)
  for attack, fault in TOY_ATTACKS.items():
    before, after, x = toy_swarm(strategy_of, fault)
    assert all(np.isfinite(np.asarray(a)).all() for a in x.values()), (name, attack)
    if name in DEFENCES or attack != "scale":
      assert after < 0.5 * before, (name, attack, before, after)
    else:
      assert after > before, (name, attack, before, after)


# --------------------------------------------------------------------------------------------------
# The attacks in the real round: plain SGD, no sync, so that each particle's weights after the
# round are what it presented.


@pytest.mark.slow
@pytest.mark.parametrize("max_unroll", [0, 2], ids=["one_call", "chained_calls"])
def test_the_round_presents_the_attacks(max_unroll):
  """period 4 (max_unroll 2: two calls of 2 steps, then the sync call, which needs the round's
  starting weights); the faults strike at round 1 of 2: x0 is the weights after round 0."""
  none = lambda: sync_lib.none(axis_name=swarm_lib.AXES)
  run = lambda rounds, fault=None: run_rounds(
    none(), rounds=rounds, period=4, max_unroll=max_unroll, fault=fault
  )[0]
  start, clean = run(1), run(2)
  for fault in (
    faults.Fault("sign_flip", 1, 1, 0.0),
    faults.Fault("scale", 1, 1, -4.0),
    faults.Fault("alie", 1, 1, 0.0, z=1.5),
  ):
    hit = run(2, fault)
    for x0, a, b in zip(*(jax.tree.leaves(s.params) for s in (start, clean, hit))):
      x0, a, b = (np.asarray(t, np.float64) for t in (x0, a, b))
      np.testing.assert_array_equal(b[:3], a[:3])  # the honest particles are untouched
      u = a - x0
      want = {
        "sign_flip": x0[3] - u[3],
        "scale": x0[3] - 4.0 * u[3],
        "alie": x0[3] + u[:3].mean(0) - 1.5 * u[:3].std(0),
      }[fault.kind]
      np.testing.assert_allclose(b[3], want, rtol=1e-5, atol=1e-6, err_msg=fault.kind)


@pytest.mark.slow
def test_an_attacked_run_through_train_and_evaluate(tmp_path):
  """alie against centered clipping, from the config, in chained calls (period 4, max_unroll 2):
  the run finishes with a finite model that learned."""
  config = small_config(
    **{
      "faults.kind": "alie",
      "faults.particles": 1,
      "faults.step": 4,
      "sync.strategy": "outer",
      "sync.outer.aggregate": "centered_clip",
      "sync.outer.optimizer": "none",
      "sync.period": 4,
      "train.max_unroll": 2,
      "train.rounds": 4,
    }
  )
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["final_test_accuracy"] > 0.5
  assert all(np.isfinite(v) for v in summary["final_train_loss_particles"])
