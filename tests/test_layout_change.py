"""Resuming on another layout: a checkpoint written by P processes x D devices resumes on P' x D'
devices holding the same particles (a job that lost a host carries on with fewer), without
train.allow_config_change (num_devices is a layout field: checkpoint.LAYOUT_FIELDS). The weights
are bit for bit those of an uninterrupted run where the sync sums nothing over particles (`none`,
and `pso`, whose global best is fetched by a masked sum: x + 0 is exact), and equal to float
tolerance where it sums them (`average`: the order of the sum changes with the layout)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import toy_runs

from psops_jax import checkpoint as checkpoint_lib
from psops_jax import host_devices, train
from psops_jax import run as run_lib
from tests.test_train import small_config

pytestmark = pytest.mark.slow  # several runs each

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = 6


def final_params(config, workdir) -> list[np.ndarray]:
  """The weights of every particle in the newest checkpoint of `workdir`, as NumPy."""
  run = run_lib.build_run(config)
  checkpointer = checkpoint_lib.Checkpointer(str(workdir), config.train.keep_checkpoints)
  _, swarm, _ = checkpointer.restore_latest(like=run.swarm)
  checkpointer.close()
  return [np.asarray(leaf) for leaf in jax.tree.leaves(swarm.params)]


@pytest.mark.parametrize(
  "strategy", [pytest.param("none", marks=pytest.mark.xla_default), "average"]
)  # `none`: two layouts, one result bit for bit
def test_a_run_resumed_on_other_devices_ends_as_an_uninterrupted_one(tmp_path, strategy):
  """2 devices (2 particles each), then 1 (all 4), 3 rounds each, against 4 devices (1 each)
  throughout."""
  config = lambda devices, rounds: small_config(
    **{"sync.strategy": strategy, "num_devices": devices, "train.rounds": rounds}
  )
  whole = train.train_and_evaluate(config(4, ROUNDS), str(tmp_path / "whole"))
  for devices, rounds in ((2, 3), (1, ROUNDS)):
    resumed = train.train_and_evaluate(config(devices, rounds), str(tmp_path / "resumed"))
  assert resumed["resumed_from_round"] == 3 and resumed["num_devices"] == 1
  if strategy == "none":
    assert resumed["params_fingerprint"] == whole["params_fingerprint"]
  else:
    ours = final_params(config(1, ROUNDS), tmp_path / "resumed")
    theirs = final_params(config(4, ROUNDS), tmp_path / "whole")
    for a, b in zip(ours, theirs):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def launch(processes: int, devices: int, args: list, workdir) -> None:
  """scripts/launch_local.py: `processes` train.py processes of `devices` CPU devices each."""
  env = host_devices.child_environment()
  command = [sys.executable, "scripts/launch_local.py", "--processes", str(processes)]
  command += ["--devices-per-process", str(devices), "--timeout", "200", "--", *args]
  done = subprocess.run(
    [*command, "--workdir", str(workdir)], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stderr[-3000:]


def test_a_multi_process_checkpoint_resumes_on_other_process_counts_bit_for_bit(tmp_path):
  """pso: 2 processes x 2 devices, then 1 process x 2 devices (2 particles each, in this
  process), then 2 processes x 1 device, 3 rounds each: the weights of 1 x 4 throughout. (4 x 1
  gives them too, in 15 s more.)"""
  args = toy_runs.TINY + ["--config.train.checkpoint_every=3"]
  whole = train.train_and_evaluate(small_config(**{"train.rounds": 9}), str(tmp_path / "whole"))
  launch(2, 2, [*args, "--config.train.rounds=3"], tmp_path / "resumed")
  middle = small_config(**{"train.rounds": 6, "num_devices": 2, "train.checkpoint_every": 3})
  assert train.train_and_evaluate(middle, str(tmp_path / "resumed"))["resumed_from_round"] == 3
  launch(2, 1, [*args, "--config.train.rounds=9"], tmp_path / "resumed")
  resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
  assert (resumed["resumed_from_round"], resumed["num_devices"]) == (6, 2)
  assert resumed["params_fingerprint"] == whole["params_fingerprint"]
