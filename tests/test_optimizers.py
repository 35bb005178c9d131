"""The inner optimizers (psops_jax/optimizers.py) against NumPy references of their math: the
warmup + cosine schedule, AdamW with decoupled weight decay and global-norm clipping, Muon's
orthogonalized matrix updates beside AdamW on the other leaves; the default sgd unchanged bit for
bit; every field's mistake named; adamw and muon training under two strategies."""

import inspect
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import small_config

from configs import digits_pso
from psops_jax import config_check, errors, optimizers
from psops_jax import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_warmup_cosine(t, peak, warmup, total, final):
  """lr(t) of the module's docstring, in float64."""
  if t < warmup:
    return peak * t / warmup
  progress = min(t - warmup, total - warmup) / (total - warmup)
  return peak * (final + (1 - final) * (1 + math.cos(math.pi * progress)) / 2)


@pytest.mark.parametrize(
  "warmup, total, final", [(10, 100, 0.1), (0, 50, 0.0), (1, 8, 1.0), (7, 8, 0.5)]
)
def test_warmup_cosine_matches_numpy(warmup, total, final):
  schedule = optimizers.warmup_cosine(0.3, warmup, total, final)
  steps = sorted({0, 1, warmup - 1, warmup, warmup + 1, (warmup + total) // 2, total - 1, total})
  for t in [t for t in steps if t >= 0] + [total + 5]:
    expected = numpy_warmup_cosine(t, 0.3, warmup, total, final)
    np.testing.assert_allclose(float(schedule(t)), expected, rtol=1e-6, atol=1e-8, err_msg=t)
  np.testing.assert_allclose(float(schedule(total)), final * 0.3, rtol=1e-6)


def numpy_adamw(params, grads, lr, b1, b2, weight_decay, clip_norm, nesterov=False, eps=1e-8):
  """The updates of AdamW on dicts of float64 arrays, step by step: global-norm clipping, the
  moments, bias correction (Nesterov's first moment as optax.contrib.muon's Adam), decoupled
  weight decay times the learning rate lr(t)."""
  x = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in x.items()}
  v = {k: np.zeros_like(a) for k, a in x.items()}
  updates = []
  for t, g in enumerate(grads):
    g = {k: a.astype(np.float64) for k, a in g.items()}
    if clip_norm:
      norm = math.sqrt(sum((a**2).sum() for a in g.values()))
      g = {k: a * min(1.0, clip_norm / norm) for k, a in g.items()}
    step = {}
    for k in x:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      m_hat = m[k] / (1 - b1 ** (t + 1))
      if nesterov:
        m_hat = b1 * m[k] / (1 - b1 ** (t + 2)) + (1 - b1) * g[k] / (1 - b1 ** (t + 1))
      v_hat = v[k] / (1 - b2 ** (t + 1))
      step[k] = -lr(t) * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * x[k])
      x[k] = x[k] + step[k]
    updates.append(step)
  return updates


def optax_steps(tx, params, grads):
  """The updates of `tx` over the gradients `grads`, the params moving by them."""
  state, out = tx.init(params), []
  for g in grads:
    u, state = jax.jit(tx.update)(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(jax.tree.map(np.asarray, u))
  return out


def random_tree(shapes, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}


ADAMW = dict(b1=0.8, b2=0.95, weight_decay=0.05)
SCHEDULE = dict(schedule="warmup_cosine", warmup_steps=2, final_fraction=0.2)


def test_adamw_with_clipping_and_schedule_matches_numpy():
  """Five steps: gradients of norm ~1..20 against clip_norm 3 (clipped on most steps, not all)."""
  shapes = {"w": (3, 4), "b": (4,)}
  params = random_tree(shapes, 0)
  grads = [random_tree(shapes, 1 + t, scale=[0.3, 5.0, 1.0, 4.0, 0.2][t]) for t in range(5)]
  tx = optimizers.optimizer("adamw", 0.1, 6, clip_norm=3.0, **ADAMW, **SCHEDULE)
  lr = lambda t: numpy_warmup_cosine(t, 0.1, 2, 6, 0.2)
  expected = numpy_adamw(params, grads, lr, **ADAMW, clip_norm=3.0)
  for got, want in zip(optax_steps(tx, params, grads), expected):
    for k in shapes:
      np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(8, 16), (24, 6)])
def test_muon_orthogonalizes_a_matrix(shape):
  """The first update of a matrix gradient G = U S V^T, its singular values spread 50x: about
  -lr 0.2 sqrt(max(r, c)) U V^T, i.e. G's singular vectors with singular values all within the
  Newton-Schulz band (~[0.7, 1.15] of that scale, checked against [0.6, 1.25])."""
  rng = np.random.default_rng(0)
  k = min(shape)
  u, _ = np.linalg.qr(rng.normal(size=(shape[0], k)))
  v, _ = np.linalg.qr(rng.normal(size=(shape[1], k)))
  s = np.geomspace(0.02, 1.0, k)
  grad = (u * s) @ v.T
  params = {"w": np.zeros(shape, np.float32)}
  tx = optimizers.optimizer("muon", 0.01, weight_decay=0.0)
  (update,) = optax_steps(tx, params, [{"w": grad.astype(np.float32)}])
  scaled = -update["w"] / (0.01 * optimizers.MUON_RMS * math.sqrt(max(shape)))
  singular = np.linalg.svd(scaled, compute_uv=False)
  assert singular.min() > 0.6 and singular.max() < 1.25, singular
  assert singular.max() / singular.min() < 1.7  # the gradient's: 50
  d = u.T @ scaled @ v  # diagonal when the update's singular vectors are the gradient's
  np.testing.assert_allclose(d - np.diag(np.diag(d)), 0, atol=2e-3)
  assert np.diag(d).min() > 0.6 and np.diag(d).max() < 1.25


def test_muon_gives_the_other_leaves_adamw():
  """Biases, a convolution kernel and an embedding table follow NumPy's AdamW (optax.contrib.muon's
  Nesterov first moment) step for step, clipped by the global norm of every leaf, the matrix's
  included; the matrix alone follows Muon."""
  shapes = {"kernel": (6, 5), "bias": (5,), "conv": (3, 3, 2, 4), "embedding": (7, 3)}
  flax_like = lambda t: {
    "Dense_0": {"kernel": t["kernel"], "bias": t["bias"]},
    "Conv_0": {"kernel": t["conv"]},
    "Embed_0": {"embedding": t["embedding"]},
  }
  params = random_tree(shapes, 0)
  grads = [random_tree(shapes, 1 + t, scale=[0.5, 4.0, 1.0, 3.0][t]) for t in range(4)]
  tx = optimizers.optimizer("muon", 0.1, 6, clip_norm=3.0, **ADAMW, **SCHEDULE)
  got = optax_steps(tx, flax_like(params), [flax_like(g) for g in grads])
  lr = lambda t: numpy_warmup_cosine(t, 0.1, 2, 6, 0.2)
  expected = numpy_adamw(params, grads, lr, **ADAMW, clip_norm=3.0, nesterov=True)
  for step, want in zip(got[1:], expected[1:]):  # step 0: lr(0) = 0
    for k, leaf in [("bias", step["Dense_0"]["bias"]), ("conv", step["Conv_0"]["kernel"])]:
      np.testing.assert_allclose(leaf, want[k], rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(step["Embed_0"]["embedding"], want["embedding"], rtol=2e-5)
    assert np.abs(step["Dense_0"]["kernel"] - want["kernel"]).max() > 1e-3  # not AdamW's
  is_dims = lambda d: isinstance(d, optax.contrib.MuonDimensionNumbers)
  dims = optimizers.matrix_dimensions(flax_like(params))
  flat, _ = jax.tree_util.tree_flatten_with_path(dims, is_leaf=is_dims)
  assert [jax.tree_util.keystr(path) for path, d in flat if is_dims(d)] == ["['Dense_0']['kernel']"]


@pytest.mark.parametrize("name, reference", [("sgd", optax.sgd(0.05, momentum=0.9))])
def test_the_default_optimizer_is_optax_sgd_bit_for_bit(name, reference):
  """The default config's optimizer: optax.sgd(0.05, momentum=0.9), the same state (so old
  checkpoints restore) and the same updates to the last bit."""
  config = digits_pso.get_config()
  assert config.optimizer.name == name
  tx = optimizers.from_config(config)
  shapes = {"w": (5, 7), "b": (7,)}
  params = random_tree(shapes, 0)
  grads = [random_tree(shapes, 1 + t) for t in range(4)]
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(reference.init(params))
  for got, want in zip(optax_steps(tx, params, grads), optax_steps(reference, params, grads)):
    for k in shapes:
      np.testing.assert_array_equal(got[k], want[k])


def test_adam_is_optax_adam_bit_for_bit():
  config = digits_pso.get_config()
  config.optimizer.name = "adam"
  tx = optimizers.from_config(config)
  shapes = {"w": (5, 7)}
  params, grads = random_tree(shapes, 0), [random_tree(shapes, 1 + t) for t in range(3)]
  reference = optax.adam(0.05)
  for got, want in zip(optax_steps(tx, params, grads), optax_steps(reference, params, grads)):
    np.testing.assert_array_equal(got["w"], want["w"])


def test_the_configs_defaults_are_the_optimizers_defaults():
  """One set of defaults: each optimizer.* field of configs/digits_pso.py is the default of the
  argument of optimizers.optimizer (and of every builder that reads it)."""
  config = digits_pso.get_config()
  builders = [optimizers.optimizer, *optimizers.OPTIMIZERS.values()]
  assert set(config.optimizer) == set(optimizers.FIELDS)
  for argument, field in optimizers.FIELDS.items():
    for builder in builders:
      parameter = inspect.signature(builder).parameters.get(argument)
      if parameter is not None and parameter.default is not inspect.Parameter.empty:
        assert config.optimizer[argument] == parameter.default, (builder, field)


BAD_FIELDS = [
  ("name", "lion", r"optimizer.name='lion': accepted values are \('sgd', 'adam', 'adamw', 'muo"),
  ("learning_rate", 0.0, r"optimizer.learning_rate=0.0: accepted values are finite numbers > 0"),
  ("learning_rate", float("nan"), r"optimizer.learning_rate=nan: accepted"),
  ("schedule", "linear", r"optimizer.schedule='linear': accepted values are \('constant', 'warm"),
  ("warmup_steps", -1, r"optimizer.warmup_steps=-1: accepted values are integers >= 0"),
  (
    "final_fraction",
    1.5,
    r"optimizer.final_fraction=1.5: accepted values are finite numbers in \[0, 1\]",
  ),
  ("clip_norm", -1.0, r"optimizer.clip_norm=-1.0: accepted values are finite numbers >= 0"),
  ("weight_decay", -0.1, r"optimizer.weight_decay=-0.1: accepted values are finite numbers >= 0"),
  ("momentum", 1.0, r"optimizer.momentum=1.0: accepted values are finite numbers in \[0, 1\)"),
  ("b1", 1.0, r"optimizer.b1=1.0: accepted values are finite numbers in \[0, 1\)"),
  ("b2", -0.5, r"optimizer.b2=-0.5: accepted values are finite numbers in \[0, 1\)"),
]


@pytest.mark.parametrize("field, value, message", BAD_FIELDS)
def test_each_bad_field_is_named_with_what_is_accepted(field, value, message):
  config = digits_pso.get_config()
  config.optimizer[field] = value
  with pytest.raises(errors.ConfigError, match="^" + message):
    config_check.validate(config)


def test_the_warmup_must_end_within_the_run():
  """200 local steps (25 rounds x period 8): warmup_steps 0..199 with warmup_cosine; a constant
  schedule does not read it."""
  config = digits_pso.get_config()
  config.optimizer.update(schedule="warmup_cosine", warmup_steps=200)
  message = r"^optimizer.warmup_steps=200: accepted values are the integers 0\.\.199 \(the run has"
  with pytest.raises(errors.ConfigError, match=message):
    config_check.validate(config)
  config.optimizer.warmup_steps = 199
  config_check.validate(config)
  config.optimizer.update(schedule="constant", warmup_steps=1000)
  config_check.validate(config)


def test_a_missing_field_and_muon_with_reset_are_named():
  config = digits_pso.get_config()
  del config.optimizer["clip_norm"]
  with pytest.raises(errors.ConfigError, match=r"config field 'optimizer.clip_norm' is missing"):
    config_check.validate(config)
  config = digits_pso.get_config()  # pso reads opt_state_on_move; average does not
  config.optimizer.name = "muon"
  config.sync.pso.opt_state_on_move = "reset"
  with pytest.raises(errors.ConfigError, match=r"opt_state_on_move='reset' with optimizer.name="):
    config_check.validate(config)
  config.sync.strategy = "average"
  config_check.validate(config)


@pytest.mark.slow
def test_train_py_refuses_a_warmup_longer_than_the_run(tmp_path):
  """exit 2, the field and its accepted values, no traceback, no checkpoint."""
  command = [sys.executable, "train.py", "--config", "configs/digits_pso.py"]
  command += ["--config.optimizer.schedule=warmup_cosine", "--config.optimizer.warmup_steps=200"]
  command += ["--workdir", str(tmp_path / "w")]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == errors.EXIT_BAD_INPUT, done.stderr[-2000:]
  assert "optimizer.warmup_steps=200: accepted values are the integers 0..199" in done.stderr
  assert "Traceback" not in done.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["average", "diloco"])
@pytest.mark.parametrize("name, learning_rate", [("adamw", 1e-3), ("muon", 1e-2)])
def test_adamw_and_muon_train(name, learning_rate, strategy):
  """The MLP on digits, 4 particles, 12 rounds of 4 steps with warmup, cosine and clipping: the
  mean loss of the last round is below half that of the first."""
  config = small_config(
    **{
      "sync.strategy": strategy,
      "sync.period": 4,
      "train.rounds": 12,
      "optimizer.name": name,
      "optimizer.learning_rate": learning_rate,
      "optimizer.schedule": "warmup_cosine",
      "optimizer.warmup_steps": 4,
      "optimizer.clip_norm": 1.0,
    }
  )
  config_check.validate(config)
  run = run_lib.build_run(config)
  swarm, losses = run.swarm, []
  for r in range(config.train.rounds):
    swarm, metrics = run.round_fn(swarm, run.data, jnp.int32(r))
    losses.append(float(np.mean(metrics["loss"])))
  assert all(np.isfinite(losses)), losses
  assert losses[-1] < 0.5 * losses[0], losses
