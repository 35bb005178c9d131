"""SparseLoCo (top-k + 2-bit compressor with decaying error feedback, outer SGD), the int2
compressor, eager updates of the streaming sync and gossip (point-to-point averaging) against NumPy
references and the identities between them and the older strategies; their bytes, their clock,
their config fields, a round of each on the 8 virtual devices, and their sync state through a
checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_streaming import flat, numpy_streaming
from test_sync import LAYOUTS, RUNNERS, random_params, run_syncs, run_vmap
from test_train import run_rounds, small_config

from psops_jax import checkpoint as checkpoint_lib
from psops_jax import clock, config_check, errors
from psops_jax import run as run_lib
from psops_jax import swarm as swarm_lib
from psops_jax import sync as sync_lib
from psops_jax.sync import aggregates, compressors

# --------------------------------------------------------------------------------------------------
# NumPy references.


def numpy_sparse(v, fraction, block, bits):
  """SparseLoCo's compressor on a flat vector: per block of min(block, n) values the k largest |v|
  (ties: the first), quantized to the 2^bits points s (2j + 1 - m) / m, m = 2^bits - 1, s the
  block's max |v| (bits 32: as they are); exact zeros stay zero."""
  n = v.size
  size = min(block, n)
  k = min(size, max(1, int(round(fraction * size))))
  blocks = np.pad(v, (0, (-n) % size)).reshape(-1, size)
  out = np.zeros_like(blocks)
  m = 2**bits - 1
  for row, values in enumerate(blocks):
    keep = np.argsort(-np.abs(values), kind="stable")[:k]
    kept = values[keep]
    if bits < 32 and np.abs(kept).max() > 0:
      s = np.abs(kept).max()
      points = s * np.arange(-m, m + 1, 2) / m
      nearest = points[np.argmin(np.abs(kept[:, None] - points[None]), 1)]
      kept = np.where(kept != 0, nearest, 0)
    out[row, keep] = kept
  return out.reshape(-1)[:n]


def numpy_sparseloco(x0, drifts, lr, fraction, block, bits, beta):
  """The particles' flat weights (N, n) after each sync of SparseLoCo."""
  n_particles, n = x0.shape
  theta = x0[0].astype(np.float64)
  e = np.zeros((n_particles, n))
  x, history = x0.astype(np.float64), []
  for drift in drifts:
    x = x + drift
    e = beta * e + (theta[None] - x)
    sent = np.stack([numpy_sparse(row.astype(np.float32), fraction, block, bits) for row in e])
    e = e - sent
    theta = theta - lr * sent.mean(0)
    x = np.repeat(theta[None], n_particles, 0)
    history.append(x)
  return history


def numpy_eager_streaming(x0, drifts, fragments, delay, mix, lr, mu):
  """Eager streaming (mean, Nesterov, no compression): each particle's own theta and momentum per
  fragment; when fragment g's update u lands, particle i applies u + (delta_i - sent_i) / N with
  delta_i its current pseudo-gradient theta_g,i - x_g,i and sent_i the one it sent."""
  n_particles, n = x0.shape
  c = -(-n // fragments)
  pad = lambda a: np.pad(a, ((0, 0), (0, fragments * c - n)))
  theta = np.repeat(pad(x0[:1]), n_particles, 0).astype(np.float64)
  momentum = np.zeros((n_particles, fragments, c))
  queue, x, history = [], x0.astype(np.float64), []
  for k, drift in enumerate(drifts):
    xp = pad(x + drift)
    f = k % fragments
    sent = theta[:, f * c : (f + 1) * c] - xp[:, f * c : (f + 1) * c]
    queue.append((f, sent.mean(0), sent))
    if k >= delay:
      g, u, own_sent = queue.pop(0)
      landed = slice(g * c, (g + 1) * c)
      own_now = theta[:, landed] - xp[:, landed]
      u = u[None] + (own_now - own_sent) / n_particles
      momentum[:, g] = u + mu * momentum[:, g]
      theta[:, landed] = theta[:, landed] - lr * (u + mu * momentum[:, g])
      xp[:, landed] = theta[:, landed] + mix * (xp[:, landed] - theta[:, landed])
    x = xp[:, :n]
    history.append(x)
  return history


def numpy_gossip(x, shifts):
  """x_i := (x_i + sum_q x_{(i + s_q) mod N}) / (p + 1) over axis 0."""
  return (x + sum(np.roll(x, -int(s), 0) for s in shifts)) / (len(shifts) + 1)


def shared_start(rng, n):
  return {k: np.repeat(a, n, 0) for k, a in random_params(rng, 1).items()}


def random_drifts(rng, start, rounds, scale=1.0):
  return [
    {k: (rng.normal(size=a.shape) * scale).astype(np.float32) for k, a in start.items()}
    for _ in range(rounds)
  ]


def max_difference(a, b):
  return max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)


def assert_each_sync_matches(got, want):
  """The particles' weights after each sync (stacked trees) against the flat NumPy ones."""
  for r, (g, w) in enumerate(zip(got, want)):
    np.testing.assert_allclose(flat(g), w, rtol=1e-5, atol=1e-5, err_msg=f"sync {r}")


def nesterov_streaming(fragments, delay, axis_name, eager=False):
  """Streaming of the mean with outer Nesterov SGD (0.7, 0.9), mix 0.5."""
  nesterov = optax.sgd(0.7, momentum=0.9, nesterov=True)
  return sync_lib.streaming(
    fragments, delay, 0.5, optimizer=nesterov, axis_name=axis_name, eager=eager
  )


# --------------------------------------------------------------------------------------------------
# The compressors: sparse_2bit and int2.


@pytest.mark.parametrize("bits", [2, 4, 32])
@pytest.mark.parametrize("n, block, fraction", [(1000, 64, 0.05), (300, 4096, 0.02), (40, 8, 1.0)])
def test_sparse_2bit_matches_numpy(bits, n, block, fraction):
  """Top-k per block, then the kept values on the 2^bits-point grid of their block's absmax; the
  last block partial (1000 = 15 x 64 + 40), one block shorter than block_size (300 < 4096)."""
  rng = np.random.RandomState(n + bits)
  v = (rng.normal(size=n) * np.repeat(rng.uniform(0.01, 10, size=-(-n // 10)), 10)[:n]).astype(
    np.float32
  )
  v[3] = 0.0  # an exact zero among the values
  got = np.asarray(compressors.sparse_2bit(fraction, block, bits).apply(jnp.asarray(v)))
  want = numpy_sparse(v, fraction, block, bits)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
  size = min(block, n)
  k = max(1, round(fraction * size))
  assert np.count_nonzero(got) <= -(-n // size) * k
  if bits == 32 and fraction == 1.0:
    np.testing.assert_array_equal(got, v)  # every value, as it is


def test_sparse_2bit_error_bound_and_levels():
  """Two bits: every kept value is s/3 or s away from 0 (sign kept), at most s/3 from the value;
  the largest of each block is exact."""
  rng = np.random.RandomState(1)
  v = rng.normal(size=512).astype(np.float32)
  got = np.asarray(compressors.sparse_2bit(0.25, 64, 2).apply(jnp.asarray(v))).reshape(8, 64)
  blocks = v.reshape(8, 64)
  s = np.abs(blocks).max(1, keepdims=True)
  kept = got != 0
  assert (kept.sum(1) == 16).all()
  scale = np.broadcast_to(s, got.shape)[kept]
  ratio = np.abs(got[kept]) / scale
  assert (np.isclose(ratio, 1 / 3) | np.isclose(ratio, 1.0)).all()
  assert (np.isclose(ratio, 1 / 3)).any() and (np.isclose(ratio, 1.0)).any()
  assert (np.sign(got[kept]) == np.sign(blocks[kept])).all()
  assert (np.abs(got - blocks)[kept] <= scale / 3 * (1 + 1e-6)).all()
  largest = np.abs(blocks).argmax(1)
  np.testing.assert_array_equal(got[np.arange(8), largest], blocks[np.arange(8), largest])


def test_int2_matches_numpy_and_keeps_error_feedback():
  from test_outer import numpy_quantize

  rng = np.random.RandomState(2)
  v = rng.normal(size=1000).astype(np.float32)
  c = compressors.int2(block_size=100)
  got = np.asarray(c.apply(jnp.asarray(v)))
  np.testing.assert_allclose(got, numpy_quantize(v, 1, 100), rtol=1e-6, atol=0)
  scale = np.abs(v.reshape(10, 100)).max(1, keepdims=True)
  assert set(np.unique(np.round(got.reshape(10, 100) / scale, 6)).tolist()) == {-1.0, 0.0, 1.0}
  assert c.error_feedback and c.feedback_decay == 1.0


def test_decayed_error_feedback_matches_numpy():
  """e := (v + beta e) - C(v + beta e), over several sends."""
  rng = np.random.RandomState(3)
  c = compressors.sparse_2bit(0.1, 16, 2, feedback_decay=0.5)
  tree = {"a": jnp.asarray(rng.normal(size=(6, 8)).astype(np.float32))}
  residual, want = jnp.zeros(48, jnp.float32), np.zeros(48, np.float32)
  for _ in range(4):
    received, residual = compressors.compress_tree(c, tree, residual)
    u = np.asarray(tree["a"]).reshape(-1) + 0.5 * want
    sent = numpy_sparse(u, 0.1, 16, 2)
    want = u - sent
    np.testing.assert_allclose(np.asarray(received["a"]).reshape(-1), sent, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(residual), want, rtol=1e-5, atol=1e-6)


def test_compressed_bytes_by_hand():
  # 1000 values, blocks of 64: 15 full blocks of k = 3 and a last block of 40 sending 3, at
  # 2 + 6 bits: 48 x 8 bits = 48 bytes, + 16 float32 scales
  assert compressors.sparse_2bit(0.05, 64, 2).payload_bytes(1000) == 48 + 64
  # LeNet-5 (61,706 values) at SparseLoCo's defaults: 15 blocks of 4096 and one of 266; 82 values
  # a block (82 of the last one's 266) at 2 + 12 bits, 16 scales
  assert compressors.sparse_2bit(0.02, 4096, 2).payload_bytes(61_706) == -(-16 * 82 * 14 // 8) + 64
  # every value at 32 bits needs neither indices nor scales: float32's bytes
  assert compressors.sparse_2bit(1.0, 64, 32).payload_bytes(1000) == 4000
  assert compressors.sparse_2bit(0.5, 64, 32).payload_bytes(1000) == 16 * 32 * (32 + 6) // 8
  assert compressors.int2(256).payload_bytes(1001) == 251 + 4 * 4
  assert compressors.int2(256).payload_bytes(61_706) == 16_395  # LeNet-5, as docs/usage.md says
  params = {"w": jax.ShapeDtypeStruct((61_706,), jnp.float32)}
  assert sync_lib.sparseloco().bytes_per_round(params, 8) == 2296 + 64
  assert sync_lib.sparseloco().collective == sync_lib.Collective("all_reduce")


@pytest.mark.parametrize(
  "make, argument",
  [
    (lambda: compressors.sparse_2bit(fraction=0.0), "fraction"),
    (lambda: compressors.sparse_2bit(block_size=0), "block_size"),
    (lambda: compressors.sparse_2bit(bits=3), "bits"),
    (lambda: compressors.sparse_2bit(bits=2.0), "bits"),
    (lambda: compressors.sparse_2bit(feedback_decay=1.5), "feedback_decay"),
    (lambda: compressors.int2(block_size=-1), "block_size"),
    (lambda: compressors.int2(feedback_decay=-0.1), "feedback_decay"),
    (lambda: sync_lib.sparseloco(learning_rate=0.0), "learning_rate"),
    (lambda: sync_lib.gossip(peers=0), "peers"),
    (lambda: sync_lib.streaming(eager=1), "eager"),
    (lambda: sync_lib.streaming(eager=True, aggregate=aggregates.median()), "eager"),
  ],
)
def test_new_parts_check_their_arguments(make, argument):
  with pytest.raises(errors.BadArgument, match=f"^{argument}=") as raised:
    make()
  assert raised.value.argument == argument


# --------------------------------------------------------------------------------------------------
# SparseLoCo.


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("beta", [1.0, 0.9])
def test_sparseloco_dense_unquantized_is_diloco_without_momentum(runner, beta):
  """fraction 1, 32 bits: the accumulator is sent whole (and is 0 after each sync, whatever beta),
  so the step is outer SGD on the mean pseudo-gradient: diloco(momentum=0) at the same rate."""
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(4)
  start = shared_start(rng, 4)
  drifts = random_drifts(rng, start, 4)
  sparse, state = run_syncs(
    run, sync_lib.sparseloco(0.7, 1.0, 8, 32, beta, axis_name=axis_name), start, drifts
  )
  dense, _ = run_syncs(run, sync_lib.diloco(0.7, 0.0, axis_name=axis_name), start, drifts)
  for r, (a, b) in enumerate(zip(sparse, dense)):
    assert max_difference(a, b) < 1e-5, r
  np.testing.assert_allclose(np.asarray(state.residual), 0.0, atol=1e-5)


@pytest.mark.parametrize("runner", LAYOUTS)
def test_sparseloco_matches_numpy_over_three_syncs(runner):
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(5)
  start = shared_start(rng, 4)
  drifts = random_drifts(rng, start, 3, scale=0.1)
  strategy = sync_lib.sparseloco(0.8, 0.25, 8, 2, 0.9, axis_name=axis_name)
  got, state = run_syncs(run, strategy, start, drifts)
  assert_each_sync_matches(
    got, numpy_sparseloco(flat(start), [flat(d) for d in drifts], 0.8, 0.25, 8, 2, 0.9)
  )
  assert np.abs(np.asarray(state.residual)).max() > 0  # what was not sent is kept


# --------------------------------------------------------------------------------------------------
# Eager updates.


@pytest.mark.parametrize("runner", LAYOUTS)
def test_eager_without_delay_is_plain_streaming(runner):
  """delay 0: a particle's share of the update is its current pseudo-gradient already; eager
  changes only how the mean is formed (of pseudo-gradients, not of weights): float tolerance."""
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(6)
  start = shared_start(rng, 4)
  drifts = random_drifts(rng, start, 5)
  eager, _ = run_syncs(run, nesterov_streaming(3, 0, axis_name, eager=True), start, drifts)
  plain, _ = run_syncs(run, nesterov_streaming(3, 0, axis_name), start, drifts)
  for r, (a, b) in enumerate(zip(eager, plain)):
    assert max_difference(a, b) < 1e-5, r


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("fragments, delay", [(1, 0), (1, 1), (2, 1), (2, 2), (3, 2)])
def test_eager_streaming_matches_numpy(runner, fragments, delay):
  """4 particles, 17 weights, mean + Nesterov; the particles' thetas part after the first eager
  step, and each fragment lands d syncs after it was sent."""
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(7 + delay)
  start = shared_start(rng, 4)
  drifts = random_drifts(rng, start, 6, scale=0.1)
  strategy = nesterov_streaming(fragments, delay, axis_name, eager=True)
  got, state = run_syncs(run, strategy, start, drifts)
  drifts = [flat(d) for d in drifts]
  assert_each_sync_matches(
    got, numpy_eager_streaming(flat(start), drifts, fragments, delay, 0.5, 0.7, 0.9)
  )
  center = np.asarray(state.center)
  if delay:  # each particle steps its own theta
    assert np.abs(center - center[:1]).max() > 1e-4


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("fragments", [1, 3])
def test_a_delay_of_every_fragment_matches_numpy(runner, fragments):
  """d = F (F = 1: DiLoCo with its outer step one round late): the update lands at the sync that
  sends the fragment again, after the payload is taken; the payload is then the pseudo-gradient."""
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(9)
  start = shared_start(rng, 4)
  drifts = random_drifts(rng, start, 7, scale=0.1)
  got, _ = run_syncs(run, nesterov_streaming(fragments, fragments, axis_name), start, drifts)
  drifts = [flat(d) for d in drifts]
  assert_each_sync_matches(
    got, numpy_streaming(flat(start), drifts, fragments, fragments, 0.5, 0.7, 0.9, "none")
  )


def test_one_eager_step_by_hand():
  """F = 1, d = 1 (DiLoCo one round late), 3 particles of one weight (and a bias that stays 0),
  outer SGD at rate 1, mix 0: at sync 1 particle i lands u_0 + (delta_i - sent_i) / 3."""
  start = {"w": np.zeros((3, 1), np.float32), "b": np.zeros((3, 1), np.float32)}
  drifts = [{"w": np.array([[1.0], [2.0], [6.0]], np.float32), "b": start["b"]}] * 2
  strategy = sync_lib.streaming(1, 1, 0.0, optimizer=optax.sgd(1.0), eager=True)
  assert strategy.communicate is not None
  got, _ = run_syncs(run_vmap, strategy, start, drifts)
  # sync 0: sent = theta - x = -(1, 2, 6), u_0 = -3; nothing lands: x = (1, 2, 6)
  np.testing.assert_allclose(got[0]["w"][:, 0], [1.0, 2.0, 6.0])
  # sync 1: x = (2, 4, 12), delta = -(2, 4, 12); u_i = -3 + (delta_i + (1, 2, 6)_i) / 3
  u = -3 + (-np.array([2.0, 4.0, 12.0]) + np.array([1.0, 2.0, 6.0])) / 3
  np.testing.assert_allclose(got[1]["w"][:, 0], -u, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Gossip.


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize("n", [8, 6])
def test_shifted_floats_for_every_shift(runner, n):
  """Particle i gets particle (i + s) mod N's floats for every s, also on 2 devices x N/2 local
  particles, where a shift crosses the devices' blocks; integer leaves stay."""
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(n)
  tree = {**random_params(rng, n), "step": np.arange(n, dtype=np.int32)}
  for s in range(1, n):
    got = run(
      lambda t, s: sync_lib.shifted_floats(t, s, axis_name), tree, jnp.int32(s), in_axes=(0, None)
    )
    for leaf in ("w", "b"):
      np.testing.assert_array_equal(np.asarray(got[leaf]), np.roll(tree[leaf], -s, 0), err_msg=s)
    np.testing.assert_array_equal(np.asarray(got["step"]), tree["step"])


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("n, peers", [(8, 1), (8, 3), (5, 2)])
def test_gossip_matches_numpy_and_keeps_the_mean(runner, n, peers):
  """Several rounds' keys: each step is numpy_gossip with the shifts drawn from the round's key, and
  the mean of the particles (weights and batch statistics) is what it was."""
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(10 + n)
  x = random_params(rng, n)
  stats = {"mean": rng.normal(size=(n, 3)).astype(np.float32)}
  strategy = sync_lib.gossip(peers, axis_name=axis_name)
  state = run(strategy.init, x, in_axes=(0,))
  for r in range(4):
    key = jax.random.key(r)
    shifts = np.asarray(sync_lib.gossip_shifts(key, n, peers))
    assert len(set(shifts.tolist())) == peers and shifts.min() >= 1 and shifts.max() <= n - 1
    new_x, new_stats, state = run(
      strategy.sync_with_stats, x, stats, state, jnp.zeros(n), key, in_axes=(0, 0, 0, 0, None)
    )
    for tree, new in ((x, new_x), (stats, new_stats)):
      for leaf in tree:
        want = numpy_gossip(tree[leaf].astype(np.float64), shifts)
        np.testing.assert_allclose(np.asarray(new[leaf]), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
          np.asarray(new[leaf]).mean(0), tree[leaf].mean(0), rtol=1e-5, atol=1e-6
        )
    x, stats = jax.tree.map(np.asarray, (new_x, new_stats))


@pytest.mark.parametrize("runner", LAYOUTS)
@pytest.mark.parametrize("n", [8, 5])
def test_gossip_with_every_peer_is_the_mean(runner, n):
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(20 + n)
  x = random_params(rng, n)

  def one_sync(strategy):
    state = run(strategy.init, x, in_axes=(0,))
    return run(strategy.sync, x, state, jnp.zeros(n), jax.random.key(1), in_axes=(0, 0, 0, None))[0]

  everyone = one_sync(sync_lib.gossip(n - 1, axis_name=axis_name))
  averaged = one_sync(sync_lib.average(axis_name))
  assert max_difference(everyone, averaged) < 1e-5


def test_gossip_bytes_collective_and_particles():
  params = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)}
  assert sync_lib.gossip(1).bytes_per_round(params, 8) == 4000
  assert sync_lib.gossip(3).bytes_per_round(params, 8) == 12000
  strategy = sync_lib.gossip(1)
  assert strategy.collective == sync_lib.Collective("point_to_point")
  assert not strategy.shared_init and not strategy.reads_fitness
  sync_lib.gossip(7).check(8)
  with pytest.raises(errors.BadArgument, match=r"peers=8: accepted values are the integers 1\.\.7"):
    sync_lib.gossip(8).check(8)


def test_the_clock_prices_gossip_as_one_exchange():
  """point to point: one message and the payload once each way, against a ring all-reduce's
  2 (N - 1) messages and 2 (N - 1) / N payloads."""
  assert clock.collective_seconds("point_to_point", 1e6, 8, 1e9, 1e-5) == pytest.approx(1e-5 + 1e-3)
  assert clock.collective_seconds("point_to_point", 1e6, 1, 1e9, 1e-5) == 0.0  # one worker
  assert clock.collective_seconds("all_reduce", 1e6, 8, 1e9, 1e-5) == pytest.approx(14e-5 + 1.75e-3)
  assert "point_to_point" in clock.COLLECTIVE_KINDS
  # a run of 44 rounds of 16 steps of 10 ms, each sending the weights W once to a peer
  w = 1e6
  shape = clock.RunShape(period=16, model_bytes=w, kind="point_to_point")
  profile = clock.Profile(0.01, 1e9, 1e-5, 8, w)
  assert clock.projected_seconds(704, 44 * w, shape, profile) == pytest.approx(
    44 * (0.16 + 1e-5 + 1e-3)
  )


# --------------------------------------------------------------------------------------------------
# The config layer.


def test_the_new_strategies_from_the_config():
  config = small_config(**{"sync.strategy": "sparseloco"})
  strategy = sync_lib.from_config(config.sync)
  params = {"w": jax.ShapeDtypeStruct((61_706,), jnp.float32)}
  assert strategy.bytes_per_round(params, 8) == sync_lib.sparseloco().bytes_per_round(params, 8)
  config = small_config(**{"sync.strategy": "gossip", "sync.gossip.peers": 2})
  assert sync_lib.from_config(config.sync).bytes_per_round(params, 8) == 2 * 4 * 61_706
  config = small_config(
    **{"sync.strategy": "outer", "sync.outer.compress": "sparse_2bit", "sync.outer.bits": 4}
  )
  assert sync_lib.from_config(config.sync).bytes_per_round(params, 8) == (
    compressors.sparse_2bit(0.1, 256, 4).payload_bytes(61_706)
  )


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"sync.strategy": "sparseloco", "sync.sparseloco.bits": 3}, r"sync.sparseloco.bits=3"),
    ({"sync.strategy": "sparseloco", "sync.sparseloco.fraction": 0.0}, "sync.sparseloco.fraction"),
    (
      {"sync.strategy": "outer", "sync.outer.compress": "int2", "sync.outer.feedback_decay": 2.0},
      r"sync.outer.feedback_decay=2.0: accepted values are in \[0, 1\]",
    ),
    ({"sync.strategy": "gossip", "sync.gossip.peers": 4}, r"sync.gossip.peers=4: .*1\.\.3"),
    (
      {
        "sync.strategy": "streaming",
        "sync.streaming.eager": True,
        "sync.outer.aggregate": "median",
      },
      r"sync.streaming.eager=True: accepted values are False with the aggregate 'median'",
    ),
  ],
)
def test_bad_new_fields_are_named(overrides, message):
  with pytest.raises(config_check.ConfigError, match=message):
    config_check.validate(small_config(**overrides))


# --------------------------------------------------------------------------------------------------
# Real rounds, on the 8 virtual devices.

NEW_STRATEGIES = {
  "sparseloco": lambda axis: sync_lib.sparseloco(fraction=0.05, block_size=512, axis_name=axis),
  "eager_streaming": lambda axis: sync_lib.streaming(
    2, 1, 0.5, optimizer=optax.sgd(0.7, momentum=0.9, nesterov=True), axis_name=axis, eager=True
  ),
  "gossip": lambda axis: sync_lib.gossip(2, axis_name=axis),
}


@pytest.mark.slow
@pytest.mark.parametrize(
  "name",
  [
    # SparseLoCo's top-k is discontinuous: a last-bit difference in the two layouts' sums can
    # swap a borderline entry. At XLA's level 0 (the tests' level) it does on an Intel Xeon (32
    # of 131,072 weights 1.7e-4 apart after 3 rounds); at the default level, which users run, the
    # layouts agree. So it runs there.
    pytest.param(name, marks=pytest.mark.xla_default) if name == "sparseloco" else name
    for name in sorted(NEW_STRATEGIES)
  ],
)
def test_a_round_on_8_devices_equals_the_round_on_2(name):
  """8 particles on 8 devices, and 4 per device on 2 (the collectives over a mesh axis and a
  vmap axis): the same numbers after 3 rounds."""
  strategy = lambda: NEW_STRATEGIES[name](swarm_lib.AXES)
  one_each, metrics, _ = run_rounds(strategy(), rounds=3, period=2, n=8, devices=8)
  packed, packed_metrics, _ = run_rounds(strategy(), rounds=3, period=2, n=8, devices=2)
  assert np.isfinite(np.asarray(metrics["loss"])).all()
  np.testing.assert_allclose(
    np.asarray(packed_metrics["loss"]), np.asarray(metrics["loss"]), rtol=1e-5
  )
  for a, b in zip(jax.tree.leaves(packed.params), jax.tree.leaves(one_each.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  if name == "gossip":  # the particles differ after gossip
    w = np.asarray(jax.tree.leaves(one_each.params)[0])
    assert np.abs(w - w[:1]).max() > 0


@pytest.mark.slow
@pytest.mark.parametrize(
  "overrides",
  [
    {"sync.strategy": "sparseloco", "sync.sparseloco.block_size": 512},
    {
      "sync.strategy": "streaming",
      "sync.streaming.eager": True,
      "sync.streaming.fragments": 3,
      "sync.streaming.delay": 2,
      "sync.outer.compress": "sparse_2bit",
    },
    {"sync.strategy": "outer", "sync.outer.compress": "int2", "sync.outer.feedback_decay": 0.9},
    {"sync.strategy": "gossip"},
  ],
  ids=["sparseloco", "eager_streaming", "int2", "gossip"],
)
def test_the_sync_state_round_trips_through_a_checkpoint(tmp_path, overrides):
  """Two rounds, saved and restored: the sync state (error feedback, updates on the wire, own
  shares) comes back bit for bit, and the next round from it equals the next round from the
  original."""
  config = small_config(**{"num_devices": 2, **overrides})
  run = run_lib.build_run(config)
  swarm = run.swarm
  for r in range(2):
    swarm, _ = run.round_fn(swarm, run.data, jnp.int32(r))
  state_leaves = jax.tree.leaves(swarm.sync_state)
  if overrides["sync.strategy"] != "gossip":  # gossip keeps no state: its key is the round's
    assert any(np.abs(np.asarray(a)).max() > 0 for a in state_leaves)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=1)
  checkpointer.save(2, swarm, {"rounds_done": 2})
  checkpointer.wait()
  restored, meta = checkpointer.restore(2, swarm)
  checkpointer.close()
  assert meta["rounds_done"] == 2
  assert jax.tree.structure(restored) == jax.tree.structure(swarm)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(swarm)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  continued, _ = run.round_fn(swarm, run.data, jnp.int32(2))
  resumed, _ = run.round_fn(restored, run.data, jnp.int32(2))
  for a, b in zip(jax.tree.leaves(continued), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
