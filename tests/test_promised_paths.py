"""The paths users are promised, through train_and_evaluate: checkpoints of BatchNorm models, mixed
precision, and the scan loop (what GPUs and TPUs run) against the unrolled one. (ResNet-20 learning
on CIFAR-10 batches: tests/test_configs.py.)"""

import json
import os

import fake_data
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar10_pso, digits_pso
from psops_jax import checkpoint as checkpoint_lib
from psops_jax import models, train
from psops_jax import swarm as swarm_lib
from psops_jax import sync as sync_lib

pytestmark = pytest.mark.slow  # each path trains through train_and_evaluate


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("cifar10"))
  fake_data.write_cifar10_dir(directory, per_batch=64)
  return directory


def cifar_config(cifar_dir, **fields):
  config = cifar10_pso.get_config()
  config.data.source, config.data.dir = "files", cifar_dir
  config.num_particles = 4
  config.num_devices = min(2, len(jax.devices()))  # 2 particles per device (4 on one accelerator)
  config.train.batch_size, config.sync.pso.probe_size = 16, 64
  config.train.eval_every, config.train.log_every = 0, 1
  config.update_from_flattened_dict(fields)
  return config


def test_checkpoints_hold_the_batch_stats(tmp_path):
  """A swarm of ResNet-20 particles with distinct statistics restores exactly."""
  mesh = swarm_lib.make_mesh(2, 2)
  model, tx = models.create("resnet20"), optax.sgd(0.1)
  images = np.zeros((4, 32, 32, 3), np.uint8)
  mean, std = (0.5,) * 3, (0.25,) * 3
  swarm = swarm_lib.init_swarm(
    model, tx, sync_lib.average(swarm_lib.AXES), images, 2, 0, mesh, mean, std, init="independent"
  )
  stats = jax.tree.map(
    lambda a: a + jnp.arange(2, dtype=a.dtype).reshape((2,) + (1,) * (a.ndim - 1)),
    swarm.batch_stats,
  )
  swarm = swarm._replace(batch_stats=stats)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=1)
  checkpointer.save(1, swarm, {"train_seconds": 0.0})
  checkpointer.wait()
  like = jax.tree.map(jnp.zeros_like, swarm)
  restored, _ = checkpointer.restore(1, like=like)
  checkpointer.close()
  assert jax.tree.leaves(restored.batch_stats)
  for a, b in zip(jax.tree.leaves(restored.batch_stats), jax.tree.leaves(swarm.batch_stats)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_run_trains_and_syncs_float32(tmp_path):
  config = digits_pso.get_config()
  config.model.dtype = "bfloat16"
  config.num_particles, config.sync.period, config.train.rounds = 4, 4, 8
  config.train.eval_every = 0
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["final_test_accuracy"] > 0.6, summary["final_test_accuracy"]
  # The sync saw float32: the bytes counted are those of float32 weights.
  model = models.create("small_cnn")
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
  assert summary["communicated_bytes_per_particle"] == 8 * (sync_lib.tree_bytes(params) + 4)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("strategy", ["pso", "average", "ssgd"])
def test_scan_loop_gives_the_unrolled_numbers(cifar_dir, tmp_path, strategy):
  """loop=scan against loop=unroll (in calls of 2 steps) through train_and_evaluate: CIFAR-10 with
  augmentation, a probe (pso), 2 particles per device; every particle's loss and fitness of every
  round and the final accuracies agree to float tolerance."""
  runs = {}
  for loop in ("scan", "unroll"):
    config = cifar_config(
      cifar_dir,
      **{
        "sync.strategy": strategy,
        "sync.period": 4,
        "train.rounds": 3,
        "train.loop": loop,
        "train.max_unroll": 2,
        "model.name": "mlp",
      },
    )
    summary = train.train_and_evaluate(config, str(tmp_path / loop))
    runs[loop] = (summary, read_metrics(str(tmp_path / loop)))
  (scan, scan_metrics), (unroll, unroll_metrics) = runs["scan"], runs["unroll"]
  assert len(scan_metrics) == len(unroll_metrics) == 3
  for a, b in zip(scan_metrics, unroll_metrics):
    np.testing.assert_allclose(a["train_loss_particles"], b["train_loss_particles"], rtol=1e-4)
    np.testing.assert_allclose(a["fitness_particles"], b["fitness_particles"], rtol=1e-4)
  np.testing.assert_allclose(
    scan["test_accuracy_particles"], unroll["test_accuracy_particles"], atol=1.5 / 64
  )


def read_events(workdir):
  """(tag, step, value) of every scalar in the workdir's TensorBoard event files: TFRecord framing
  (uint64 length, uint32 crc, payload, uint32 crc) around Event protos."""
  import struct

  from tensorboardX.proto import event_pb2

  scalars = []
  for name in sorted(os.listdir(workdir)):
    if not name.startswith("events.out.tfevents"):
      continue
    with open(os.path.join(workdir, name), "rb") as f:
      raw = f.read()
    offset = 0
    while offset < len(raw):
      (length,) = struct.unpack("<Q", raw[offset : offset + 8])
      event = event_pb2.Event.FromString(raw[offset + 12 : offset + 12 + length])
      offset += 12 + length + 4
      scalars += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  return scalars


def test_tensorboard_events_hold_the_metrics(tmp_path):
  config = digits_pso.get_config()
  config.num_particles, config.sync.period, config.train.rounds = 2, 2, 4
  config.train.eval_every, config.model.name = 2, "mlp"
  summary = train.train_and_evaluate(config, str(tmp_path))
  events = read_events(str(tmp_path))
  metrics = read_metrics(str(tmp_path))
  loss = {step: value for tag, step, value in events if tag == "train_loss"}
  assert loss == pytest.approx({m["step"]: m["train_loss"] for m in metrics})
  accuracy = [(step, value) for tag, step, value in events if tag == "final_test_accuracy"]
  assert accuracy[-1] == (8, pytest.approx(summary["final_test_accuracy"]))
  assert (
    4,
    pytest.approx(metrics[1]["final_test_accuracy"]),
  ) in accuracy  # the evaluation at round 2
