"""The streaming sync (Streaming DiLoCo) against a NumPy re-implementation of its fragments,
offsets, delay, mixing and error feedback, under vmap, shard_map and the nested layout; the
identity F = 1, d = 0, a = 0 = DiLoCo; its bytes, its config checks, and a resumed run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_sync import RUNNERS, random_params, run_syncs
from test_train import small_config

from psops_jax import config_check, errors, train
from psops_jax import sync as sync_lib
from psops_jax.sync import aggregates, compressors


def numpy_keep_largest(v, fraction):
  count = max(1, int(round(fraction * v.size)))
  out = np.zeros_like(v)
  index = np.argsort(-np.abs(v), kind="stable")[:count]
  out[index] = v[index]
  return out


def numpy_streaming(x0, drifts, fragments, delay, mix, lr, mu, compress, fraction=0.25):
  """The particles' flat weights (N, n) after each sync: fragment k mod F sent at sync k, its
  mean pseudo-gradient applied at sync k + delay by Nesterov SGD with the fragment's own momentum,
  then x_f := theta_f + mix (x_f - theta_f)."""
  n_particles, n = x0.shape
  c = -(-n // fragments)
  pad = lambda a: np.pad(a, ((0, 0), (0, fragments * c - n)))
  theta = pad(x0[:1])[0].astype(np.float64)
  momentum = np.zeros((fragments, c))
  residual = np.zeros((n_particles, fragments * c))
  queue, x, history = [], x0.astype(np.float64), []
  for k, drift in enumerate(drifts):
    xp = pad(x + drift)
    f = k % fragments
    sent = slice(f * c, (f + 1) * c)
    if compress == "none":
      u = theta[sent] - xp[:, sent].mean(0)
    else:
      v = theta[sent] - xp[:, sent] + residual[:, sent]
      received = np.stack([numpy_keep_largest(row, fraction) for row in v])
      residual[:, sent] = v - received
      u = received.mean(0)
    queue.append((f, u))
    if k >= delay:
      g, u = queue.pop(0)
      landed = slice(g * c, (g + 1) * c)
      momentum[g] = u + mu * momentum[g]
      theta[landed] = theta[landed] - lr * (u + mu * momentum[g])
      xp[:, landed] = theta[landed] + mix * (xp[:, landed] - theta[landed])
    x = xp[:, :n]
    history.append(x)
  return history


def flat(tree):
  """(N, n): each particle's leaves in tree order (the order ravel_pytree uses)."""
  return np.concatenate([np.asarray(a).reshape(a.shape[0], -1) for a in jax.tree.leaves(tree)], 1)


@pytest.mark.parametrize("compress", ["none", "topk_fraction"])
@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_streaming_matches_numpy_over_seven_syncs(runner, compress):
  """4 particles, 17 weights in 3 fragments of 6 (one padded), delay 2, mix 0.5: every fragment
  is sent twice and every update lands on the right fragment two syncs later."""
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(7)
  n, lr, mu = 4, 0.7, 0.9
  start = {k: np.repeat(a, n, 0) for k, a in random_params(rng, 1).items()}
  drifts = [{k: rng.normal(size=a.shape).astype(np.float32) * 0.1 for k, a in start.items()}]
  drifts += [jax.tree.map(lambda a: a * (r + 2), drifts[0]) for r in range(6)]
  strategy = sync_lib.streaming(
    fragments=3,
    delay=2,
    mix=0.5,
    optimizer=optax.sgd(lr, momentum=mu, nesterov=True),
    compressor=getattr(compressors, compress)(**({"fraction": 0.25} if compress != "none" else {})),
    axis_name=axis_name,
  )
  got, _ = run_syncs(run, strategy, start, drifts)
  want = numpy_streaming(
    flat(start), [flat(d) for d in drifts], 3, 2, 0.5, lr, mu, compress, fraction=0.25
  )
  for r, (g, w) in enumerate(zip(got, want)):
    np.testing.assert_allclose(flat(g), w, rtol=1e-5, atol=1e-5, err_msg=f"sync {r}")


@pytest.mark.xla_default  # two programs, one result bit for bit
@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_one_fragment_no_delay_no_mix_is_diloco_bit_for_bit(runner):
  run, axis_name = RUNNERS[runner]
  rng = np.random.RandomState(8)
  start = {k: np.repeat(a, 4, 0) for k, a in random_params(rng, 1).items()}
  drifts = [
    {k: rng.normal(size=a.shape).astype(np.float32) for k, a in start.items()} for _ in range(4)
  ]
  nesterov = optax.sgd(0.7, momentum=0.9, nesterov=True)
  streamed, _ = run_syncs(
    run, sync_lib.streaming(1, 0, 0.0, optimizer=nesterov, axis_name=axis_name), start, drifts
  )
  diloco, _ = run_syncs(run, sync_lib.diloco(axis_name=axis_name), start, drifts)
  for a, b in zip(jax.tree.leaves(streamed), jax.tree.leaves(diloco)):
    np.testing.assert_array_equal(a, b)


def test_bytes_and_collective_of_streaming():
  params = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)}
  assert sync_lib.streaming(4, delay=0).bytes_per_round(params, 16) == 4 * 250  # a quarter per sync
  assert sync_lib.streaming(4, compressor=compressors.int8()).bytes_per_round(params, 16) == 250 + 4
  assert sync_lib.streaming(3, delay=0).bytes_per_round(params, 16) == 4 * 334  # padded fragments
  # the collective runs beside the next round's steps: hidden behind one round at most
  assert sync_lib.streaming(4, delay=3).collective == sync_lib.Collective("all_reduce", False, 1)
  assert sync_lib.streaming(4, delay=0).collective.hidden_rounds == 0
  assert sync_lib.streaming(4, aggregate=aggregates.median()).collective.kind == "all_gather"


def test_bad_streaming_fields_are_named():
  with pytest.raises(errors.BadArgument, match=r"^delay=5: accepted values are 0\.\.4"):
    sync_lib.streaming(4, delay=5)
  for field, value, accepted in [
    ("delay", 5, r"0\.\.4"),
    ("fragments", 0, ">= 1"),
    ("mix", 1.5, r"\[0, 1\]"),
  ]:
    config = small_config(**{"sync.strategy": "streaming", f"sync.streaming.{field}": value})
    with pytest.raises(config_check.ConfigError, match=f"sync.streaming.{field}=.*{accepted}"):
      config_check.validate(config)


def test_a_resumed_streaming_run_ends_with_the_uninterrupted_weights(tmp_path):
  """The state (fragment counter, the update on the wire, per-fragment momentum) is checkpointed:
  3 rounds, then resumed to 7, equals 7 rounds in one go (delay 1 leaves an update pending at the
  checkpoint)."""
  fields = {
    "sync.strategy": "streaming",
    "sync.streaming.fragments": 3,
    "sync.streaming.delay": 1,
    "train.checkpoint_every": 1,
  }
  whole = train.train_and_evaluate(
    small_config(**fields, **{"train.rounds": 7}), str(tmp_path / "a")
  )
  train.train_and_evaluate(small_config(**fields, **{"train.rounds": 3}), str(tmp_path / "b"))
  resumed = train.train_and_evaluate(
    small_config(**fields, **{"train.rounds": 7, "train.allow_config_change": True}),
    str(tmp_path / "b"),
  )
  assert resumed["resumed_from_round"] == 3
  assert resumed["params_fingerprint"] == whole["params_fingerprint"]
  summary = json.loads((tmp_path / "a" / "summary.json").read_text())
  assert summary["collective"] == {"kind": "all_reduce", "per_step": False, "hidden_rounds": 1}
