"""The real round and the real training loop on digits, on 8 virtual CPU devices."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_pso
from psops_jax import config_check, errors, faults, models, train, workdir
from psops_jax import run as run_lib
from psops_jax import swarm as swarm_lib
from psops_jax import sync as sync_lib

pytestmark = pytest.mark.slow  # each test compiles and runs the real round

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**overrides):
  config = digits_pso.get_config()
  config.num_particles = 4
  config.model.name = "mlp"
  config.train.rounds = 3
  config.train.eval_every = 0
  config.sync.period = 2
  config.sync.pso.probe_size = 64
  config.update_from_flattened_dict(overrides)
  return config


def run_rounds(
  strategy, rounds, period, n=4, loop="unroll", devices=0, layout="unroll", max_unroll=0, fault=None
):
  """The project's round built by run.build_run, `rounds` times, plain SGD on digits, `strategy`
  in place of the config's; returns the swarm, the last metrics and the jitted round."""
  config = small_config(
    **{
      "num_particles": n,
      "num_devices": devices,
      "sync.period": period,
      "optimizer.learning_rate": 0.1,
      "optimizer.momentum": 0.0,
      "train.batch_size": 16,
      "train.loop": loop,
      "train.local_layout": layout,
      "train.max_unroll": max_unroll,
      "sync.pso.fitness": "round_loss",
      "sync.pso.probe_size": 32,
    }
  )
  if fault is not None:
    config.faults.update(
      kind=fault.kind,
      particles=fault.particles,
      step=fault.round * period,
      scale=fault.scale,
      z=fault.z,
    )
  run = run_lib.build_run(config, strategy)
  swarm, metrics = run.swarm, None
  for r in range(rounds):
    swarm, metrics = run.round_fn(swarm, run.data, jnp.int32(r))
  return swarm, metrics, run.round_fn


def test_average_period_one_with_sgd_equals_ssgd():
  averaged, _, _ = run_rounds(sync_lib.average(swarm_lib.AXES), rounds=6, period=1)
  synchronous, _, _ = run_rounds(sync_lib.ssgd(swarm_lib.AXES), rounds=6, period=1)
  for a, b in zip(jax.tree.leaves(averaged.params), jax.tree.leaves(synchronous.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_ssgd_keeps_particles_identical_and_none_lets_them_drift():
  synchronous, _, _ = run_rounds(sync_lib.ssgd(swarm_lib.AXES), rounds=2, period=3)
  independent, _, _ = run_rounds(sync_lib.none(swarm_lib.AXES), rounds=2, period=3)
  for leaf in jax.tree.leaves(synchronous.params):
    np.testing.assert_allclose(
      np.asarray(leaf), np.broadcast_to(np.asarray(leaf)[0], leaf.shape), atol=1e-6
    )
  drift = [
    np.abs(np.asarray(leaf)[0] - np.asarray(leaf)[1]).max()
    for leaf in jax.tree.leaves(independent.params)
  ]
  assert max(drift) > 1e-3


def test_scan_and_unroll_give_the_same_round():
  unrolled, m1, _ = run_rounds(sync_lib.pso(axis_name=swarm_lib.AXES), rounds=2, period=3)
  scanned, m2, _ = run_rounds(
    sync_lib.pso(axis_name=swarm_lib.AXES), rounds=2, period=3, loop="scan"
  )
  for a, b in zip(jax.tree.leaves(unrolled.params), jax.tree.leaves(scanned.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(m1["loss"]), np.asarray(m2["loss"]), rtol=1e-4)


def test_round_compiles_once():
  _, _, round_fn = run_rounds(sync_lib.pso(axis_name=swarm_lib.AXES), rounds=3, period=2)
  assert round_fn._cache_size() == 1


def test_a_round_in_several_calls_gives_the_same_numbers():
  """period 6, max_unroll 4: 3 calls of 2 steps, then the sync; the same as one call; each jitted
  function compiles once."""
  assert (
    swarm_lib.chunk_length(6, "unroll", 4) == 3 and swarm_lib.chunk_length(64, "unroll", 16) == 16
  )
  assert (
    swarm_lib.chunk_length(64, "scan", 16) == 64 and swarm_lib.chunk_length(64, "unroll", 0) == 64
  )
  strategy = lambda: sync_lib.pso(
    inertia=0.5, cognitive=0.5, memory="forever", axis_name=swarm_lib.AXES
  )
  one, m1, _ = run_rounds(strategy(), rounds=3, period=6)
  chunked, m2, round_fn = run_rounds(strategy(), rounds=3, period=6, max_unroll=2)
  assert [f._cache_size() for f in round_fn.chunked[:2]] == [1, 1]
  np.testing.assert_allclose(np.asarray(m1["loss"]), np.asarray(m2["loss"]), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(m1["global_best"]), np.asarray(m2["global_best"]))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(chunked)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_short_digits_run_learns_and_writes_summary(tmp_path):
  config = small_config(
    **{
      "num_particles": 8,
      "model.name": "small_cnn",
      "train.rounds": 12,
      "sync.period": 8,
      "train.eval_every": 6,
      "train.log_every": 5,
      "sync.pso.probe_size": 256,
    }
  )
  summary = train.train_and_evaluate(config, str(tmp_path))
  for key in train.SUMMARY_KEYS:
    assert key in summary, key
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert on_disk["final_test_accuracy"] == summary["final_test_accuracy"]
  assert summary["final_test_accuracy"] > 0.9
  assert summary["test_accuracy_best_particle"] > 0.9
  assert summary["steps"] == 96 and summary["rounds"] == 12 and summary["num_particles"] == 8
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  # logged every 5 rounds, at the evaluation (6), the checkpoint (10) and the end
  assert [l["round"] for l in lines] == [5, 6, 10, 12]
  assert "test_accuracy_best_particle" in lines[1] and "test_accuracy_best_particle" not in lines[0]
  assert lines[-1]["train_loss"] < lines[0]["train_loss"]
  for line in lines:  # the global best is at distance 0 from itself; with w = 0, c2 = 1, |v_g| = 0
    winner = line["global_best_particle"]
    assert line["distance_to_global_best_particles"][winner] == 0.0
    assert line["velocity_norm_particles"][winner] == 0.0
    assert max(line["velocity_norm_particles"]) > 0
  params = sum(
    np.prod(np.shape(a))
    for a in jax.tree.leaves(
      models.create("small_cnn").init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    )
  )
  assert summary["communicated_bytes_per_particle"] == 12 * (4 * params + 4)


def test_im2col_convolutions_train_like_lax(tmp_path):
  """model.conv=im2col, im2col_input (im2col for the first convolution only) and auto (im2col on
  CPU): a short small_cnn run on digits starts from the same weights as lax and ends with close
  losses and accuracy (equal to float tolerance, not bit for bit: the PSO's choices may part on
  near ties, hence the loose bounds)."""
  summaries, losses = {}, {}
  for conv in ("lax", "im2col", "im2col_input", "auto"):
    config = small_config(
      **{
        "model.name": "small_cnn",
        "model.conv": conv,
        "train.rounds": 6,
        "sync.period": 4,
        "train.log_every": 1,
        "sync.pso.probe_size": 128,
      }
    )
    summaries[conv] = train.train_and_evaluate(config, str(tmp_path / conv))
    lines = (tmp_path / conv / "metrics.jsonl").read_text().splitlines()
    losses[conv] = [json.loads(l)["train_loss"] for l in lines]
  assert summaries["auto"]["final_test_accuracy"] == summaries["im2col"]["final_test_accuracy"]
  np.testing.assert_allclose(losses["auto"], losses["im2col"], rtol=1e-6)
  accuracy = lambda conv: summaries[conv]["final_test_accuracy"]
  for conv in ("im2col", "im2col_input"):
    np.testing.assert_allclose(losses[conv][0], losses["lax"][0], rtol=1e-4)
    np.testing.assert_allclose(losses[conv], losses["lax"], rtol=0.05)
    assert losses[conv][-1] < 0.5 * losses[conv][0]
    assert accuracy(conv) > 0.8 and abs(accuracy(conv) - accuracy("lax")) < 0.03


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("sync.strategy", "telepathy", r"sync.strategy='telepathy': accepted values are \('pso'"),
    ("sync.period", 0, r"sync.period=0: must be an integer >= 1"),
    ("sync.pso.social", -1.0, r"sync.pso.social=-1.0: must be a number >= 0"),
    (
      "num_devices",
      9,
      r"num_devices=9: this process sees 8 cpu devices. Accepted: 0 \(auto\) or 1..8",
    ),
    ("num_devices", 3, r"num_particles=4 is not a multiple of num_devices=3"),
    ("model.name", "resnet", r"model.name='resnet': accepted values are"),
    (
      "model.conv",
      "fft",
      r"model.conv='fft': accepted values are \('lax', 'im2col', 'im2col_input', 'auto'\)",
    ),
    ("train.batch_size", 500, r"train.batch_size=500: must be <= the shard"),
    (
      "sync.strategy,sync.topk",
      ("topk_average", 5),
      r"sync.topk=5: accepted values are the integers 1..4 \(num_particles\)",
    ),
    (
      "sync.strategy,sync.outer.aggregate,sync.topk",
      ("outer", "topk", 0),
      r"sync.topk=0: accepted values are integers >= 1",
    ),
    (
      "sync.strategy,sync.outer.aggregate,sync.topk",
      ("outer", "topk", 20),
      r"sync.topk=20: accepted values are the integers 1..4 \(num_particles\)",
    ),
    (
      "sync.strategy,sync.robust.method,sync.robust.trim",
      ("robust_average", "trimmed_mean", 2),
      r"sync.robust.trim=2: accepted values are 0..1 for 4 particles",
    ),
    ("sync.strategy,sync.easgd.alpha", ("easgd", -0.1), r"sync.easgd.alpha=-0.1: accepted"),
    ("sync.strategy,sync.diloco.momentum", ("diloco", 1.0), r"sync.diloco.momentum=1.0: accepted"),
    (
      "sync.strategy,sync.outer.compress,sync.outer.block_size",
      ("outer", "int4", 0),
      r"sync.outer.block_size=0: accepted values are integers >= 1",
    ),
    (
      "sync.strategy,sync.best_pull",
      ("best_pull", 1.5),
      r"sync.best_pull=1.5: accepted .*\[0, 1\]",
    ),
    ("sync.pso.opt_state_on_move", "drop", r"sync.pso.opt_state_on_move='drop': accepted"),
  ],
)
def test_bad_config_names_the_field(tmp_path, field, value, message):
  overrides = dict(zip(field.split(","), value)) if "," in field else {field: value}
  with pytest.raises(errors.BadInput, match=message):
    train.train_and_evaluate(small_config(**overrides), str(tmp_path))


def test_command_line_override_and_clean_error(tmp_path):
  base = [
    sys.executable,
    "train.py",
    "--config",
    "configs/digits_pso.py",
    "--config.num_particles=2",
    "--config.model.name=mlp",
    "--config.train.rounds=2",
    "--config.sync.pso.probe_size=32",
  ]
  ok = subprocess.run(
    base + ["--workdir", str(tmp_path / "ok")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert ok.returncode == 0, ok.stderr
  summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
  assert summary["num_particles"] == 2 and summary["rounds"] == 2
  assert "final test accuracy" in ok.stdout
  bad = subprocess.run(
    base + ["--config.sync.strategy=telepathy", "--workdir", str(tmp_path / "bad")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 2
  assert "sync.strategy='telepathy'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("devices,layout", [(2, "unroll"), (1, "vmap"), (4, "vmap")])
def test_particles_per_device_do_not_change_the_numbers(devices, layout):
  strategy = lambda: sync_lib.pso(
    inertia=0.5, cognitive=0.5, social=0.5, memory="forever", axis_name=swarm_lib.AXES
  )
  reference, ref_metrics, _ = run_rounds(strategy(), rounds=3, period=2, n=8, devices=8)
  packed, metrics, _ = run_rounds(
    strategy(), rounds=3, period=2, n=8, devices=devices, layout=layout
  )
  np.testing.assert_allclose(
    np.asarray(metrics["loss"]), np.asarray(ref_metrics["loss"]), rtol=1e-5
  )
  np.testing.assert_array_equal(
    np.asarray(packed.sync_state.global_index), np.asarray(reference.sync_state.global_index)
  )
  for a, b in zip(jax.tree.leaves(packed.params), jax.tree.leaves(reference.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", sync_lib.strategy_names())
def test_every_strategy_trains_through_train_and_evaluate(tmp_path, strategy):
  config = small_config(
    **{"sync.strategy": strategy, "num_devices": 2, "train.rounds": 4, "sync.period": 4}
  )
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["strategy"] == strategy
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines[-1]["train_loss"] < lines[0]["train_loss"]
  assert summary["final_test_accuracy"] > 0.5  # an MLP after 16 steps of batch 32 on digits
  if strategy == "ssgd":
    assert summary["test_accuracy_mean_particle"] == pytest.approx(summary["final_test_accuracy"])


def test_independent_init_is_refused_by_center_strategies(tmp_path):
  config = small_config(**{"sync.strategy": "easgd", "train.init": "independent"})
  with pytest.raises(config_check.ConfigError, match=r"train.init='independent'.*easgd"):
    train.train_and_evaluate(config, str(tmp_path))


def test_command_line_typo_in_a_config_field(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "train.py",
      "--config",
      "configs/digits_pso.py",
      "--config.sync.perod=4",
      "--workdir",
      str(tmp_path),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2
  assert "unknown config field" in result.stderr and '"period"' in result.stderr
  assert "Traceback" not in result.stderr


def test_pso_options_train_and_export_the_global_best(tmp_path):
  """Bests re-measured on a new probe batch every round, momentum moved with the weights, relative
  velocity clipping: trains, and the exported model is the particle holding g (not stored)."""
  config = small_config(
    **{
      "sync.pso.memory": "reevaluate",
      "sync.pso.probe_resample": True,
      "sync.pso.probe_size": 32,
      "sync.pso.opt_state_on_move": "follow",
      "sync.pso.max_velocity_ratio": 0.5,
      "train.rounds": 4,
      "sync.period": 4,
      "num_devices": 2,
    }
  )
  summary = train.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines[-1]["train_loss"] < lines[0]["train_loss"]
  assert summary["final_test_accuracy"] > 0.5
  with pytest.raises(config_check.ConfigError, match=r"memory='reevaluate'.*fitness='probe'"):
    train.train_and_evaluate(
      small_config(**{"sync.pso.memory": "reevaluate", "sync.pso.fitness": "round_loss"}),
      str(tmp_path / "b"),
    )
  # the default options keep no copy of g: the exported model is particle global_best_particle
  default = train.train_and_evaluate(small_config(), str(tmp_path / "default"))
  last = json.loads((tmp_path / "default" / "metrics.jsonl").read_text().splitlines()[-1])
  assert default["final_test_accuracy"] == pytest.approx(
    default["test_accuracy_particles"][last["global_best_particle"]], abs=1e-6
  )


def test_round_probe_is_a_new_subset_of_the_pool_every_round():
  pool = 64
  data = swarm_lib.DeviceData(
    None,
    None,
    jnp.arange(pool, dtype=jnp.uint8).reshape(pool, 1, 1, 1),
    jnp.arange(pool, dtype=jnp.int32),
  )
  picks = [np.asarray(swarm_lib.round_probe(data, 16, jax.random.key(0), r)[1]) for r in range(3)]
  for p in picks:
    assert len(set(p.tolist())) == 16 and p.max() < pool
  assert not np.array_equal(picks[0], picks[1])
  np.testing.assert_array_equal(picks[0], swarm_lib.round_probe(data, 16, jax.random.key(0), 0)[1])
  np.testing.assert_array_equal(
    swarm_lib.round_probe(data, pool, jax.random.key(0), 1)[1], np.arange(pool)
  )  # the whole pool: the fixed probe


def test_lr_fault_scales_the_faulty_particles_updates():
  """Plain SGD, one step, no sync: the last particle's displacement is 10 x the fault-free one."""
  none = lambda: sync_lib.none(axis_name=swarm_lib.AXES)
  init, _, _ = run_rounds(none(), rounds=0, period=1)
  clean, _, _ = run_rounds(none(), rounds=1, period=1)
  hit, _, _ = run_rounds(none(), rounds=1, period=1, fault=faults.Fault("lr", 1, 0, 10.0))
  for x0, a, b in zip(
    jax.tree.leaves(init.params), jax.tree.leaves(clean.params), jax.tree.leaves(hit.params)
  ):
    x0, a, b = np.asarray(x0), np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b[:3], a[:3], rtol=1e-6, atol=1e-7)  # healthy particles untouched
    np.testing.assert_allclose(b[3] - x0[3], 10 * (a[3] - x0[3]), rtol=1e-3, atol=1e-6)


def test_nan_and_noise_faults_hit_the_last_particles_at_their_round():
  pso = lambda: sync_lib.pso(axis_name=swarm_lib.AXES)
  swarm, metrics, _ = run_rounds(pso(), rounds=3, period=2, fault=faults.Fault("nan", 2, 1, 0.0))
  loss = np.asarray(metrics["loss"])
  assert np.isnan(loss[2:]).all() and np.isfinite(loss[:2]).all()  # reported, not hidden
  assert int(swarm.sync_state.global_index[0]) in (0, 1)  # a NaN particle never becomes g
  winner = int(swarm.sync_state.global_index[0])
  assert all(np.isfinite(np.asarray(a[winner])).all() for a in jax.tree.leaves(swarm.params))
  # noise: the faulty particle's weights are replaced by N(0, 5^2) at round 1 (std far above init)
  none = lambda: sync_lib.none(axis_name=swarm_lib.AXES)
  before, _, _ = run_rounds(none(), rounds=1, period=1, fault=faults.Fault("noise", 1, 1, 5.0))
  after, _, _ = run_rounds(none(), rounds=2, period=1, fault=faults.Fault("noise", 1, 1, 5.0))
  kernel = lambda swarm, i: np.asarray(swarm.params["Dense_0"]["kernel"][i])
  assert kernel(before, 3).std() < 1.0 and kernel(after, 3).std() > 3.0  # (after one SGD step)
  assert kernel(after, 0).std() < 1.0
  noise = faults.corrupt(
    {"k": jnp.zeros((100, 100))}, jax.random.key(0), faults.Fault("noise", 1, 1, 5.0)
  )["k"]
  assert 4.9 < float(noise.std()) < 5.1 and abs(float(noise.mean())) < 0.2


def test_faults_through_train_and_evaluate(tmp_path):
  """A NaN worker: PSO-PS finishes with a finite exported model and reports the NaN particle;
  averaging is poisoned: the run stops as diverged and says so in diverged.json."""
  faults = {
    "faults.kind": "nan",
    "faults.particles": 1,
    "faults.step": 2,
    "train.rounds": 4,
    "num_devices": 2,
  }
  summary = train.train_and_evaluate(small_config(**faults), str(tmp_path / "pso"))
  assert summary["final_test_accuracy"] > 0.5
  lines = [json.loads(l) for l in (tmp_path / "pso" / "metrics.jsonl").read_text().splitlines()]
  assert lines[0]["diverged_particles"] == [] and lines[-1]["diverged_particles"] == [3]
  with pytest.raises(train.Diverged, match="all 4 particles diverged by round 3"):
    train.train_and_evaluate(
      small_config(**faults, **{"sync.strategy": "average"}), str(tmp_path / "average")
    )
  record = json.loads((tmp_path / "average" / "diverged.json").read_text())
  assert record["diverged"] and record["round"] == 3 and record["steps"] == 6
  assert record["machine"] == workdir.machine_kind() and record["jax_version"] == jax.__version__
  assert record["code_version"] == workdir.code_version(workdir.TRAINING_PATHS)  # as a summary
  # the robust average drops the NaN worker and trains on
  robust = train.train_and_evaluate(
    small_config(**faults, **{"sync.strategy": "robust_average"}), str(tmp_path / "robust")
  )
  assert robust["final_test_accuracy"] > 0.5
