"""Checkpoints, resume after kill -9 and SIGTERM, config guard, damaged checkpoints, divergence, and
2 processes x 2 devices against 1 process x 4 devices. Real processes on loopback, with timeouts."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import toy_runs

from psops_jax import checkpoint as checkpoint_lib
from psops_jax import errors, host_devices, train
from tests.test_train import small_config

pytestmark = pytest.mark.slow  # real processes, killed and resumed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 8 particles of small_cnn, period 8: about a quarter of a second per round on 2 cores
RUN = [
  "--config",
  "configs/digits_pso.py",
  "--config.train.rounds=40",
  "--config.train.eval_every=0",
  "--config.train.checkpoint_every=3",
  "--config.sync.pso.probe_size=128",
]


def cli(args, workdir, **kwargs):
  env = host_devices.child_environment()  # train.py sets its own
  return subprocess.Popen(
    [sys.executable, "train.py", *args, "--workdir", str(workdir)],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    **kwargs,
  )


def finish(args, workdir, timeout=300):
  proc = cli(args, workdir)
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def wait_for_checkpoint(workdir, at_least, proc, timeout=240):
  """Poll until a checkpoint after round >= at_least is complete (orbax renames it into place)."""
  deadline = time.time() + timeout
  directory = os.path.join(workdir, "checkpoints")
  while time.time() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    steps = (
      [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
    )
    if steps and max(steps) >= at_least:
      return
    time.sleep(0.05)
  raise AssertionError("no checkpoint in time")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  code, _, err = finish(RUN, workdir)
  assert code == 0, err[-2000:]
  return json.loads((workdir / "summary.json").read_text())


@pytest.mark.parametrize("how", ["kill", "sigterm"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, uninterrupted, how):
  proc = cli(RUN, tmp_path)
  wait_for_checkpoint(tmp_path, 6, proc)
  if how == "kill":
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
  else:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == errors.EXIT_PREEMPTED, err[-2000:]
    assert "preempted (SIGTERM): checkpoint after round" in err and "Traceback" not in err
  assert not (tmp_path / "summary.json").exists(), "the run ended before it was interrupted"
  code, out, err = finish(RUN, tmp_path)
  assert code == 0, err[-2000:]
  resumed = json.loads((tmp_path / "summary.json").read_text())
  assert resumed["resumed_from_round"] >= 6
  assert resumed["params_fingerprint"] == uninterrupted["params_fingerprint"]
  for key in (
    "final_test_accuracy",
    "test_accuracy_particles",
    "final_train_loss_particles",
    "communicated_bytes_per_particle",
  ):
    assert resumed[key] == uninterrupted[key], key
  rounds = [json.loads(l)["round"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rounds == list(range(1, 41))  # no round logged twice or lost


def test_different_config_is_refused_unless_allowed(tmp_path):
  train.train_and_evaluate(small_config(), str(tmp_path))
  changed = small_config(**{"optimizer.learning_rate": 0.2, "train.rounds": 5})
  with pytest.raises(
    checkpoint_lib.CheckpointError,
    match=r"(?s)different config.*optimizer.learning_rate: 0.05 -> 0.2",
  ):
    train.train_and_evaluate(changed, str(tmp_path))
  changed.train.allow_config_change = True
  summary = train.train_and_evaluate(changed, str(tmp_path))
  assert summary["resumed_from_round"] == 3 and summary["rounds"] == 5


def test_a_field_added_since_the_save_is_no_change_at_the_value_the_run_had():
  """A config.json saved before model.conv existed resumes under model.conv="lax" (what every
  run did then), and is refused under another value."""
  saved = {"model": {"name": "lenet5"}, "seed": 0}
  same = {"model": {"name": "lenet5", "conv": "lax"}, "seed": 0}
  assert checkpoint_lib.config_differences(saved, same) == []
  other = {"model": {"name": "lenet5", "conv": "im2col"}, "seed": 0}
  assert checkpoint_lib.config_differences(saved, other) == ["model.conv: 'lax' -> 'im2col'"]
  assert checkpoint_lib.config_differences({**saved, "seed": 1}, same) == ["seed: 1 -> 0"]


def test_when_no_checkpoint_restores_the_run_stops_and_moves_nothing(tmp_path):
  train.train_and_evaluate(small_config(), str(tmp_path))
  latest = tmp_path / "checkpoints" / "3"  # the only one
  for root, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(7)
  with pytest.raises(
    checkpoint_lib.CheckpointError, match=f"checkpoint {latest} cannot be restored .*It is damaged"
  ):
    train.train_and_evaluate(small_config(**{"train.rounds": 5}), str(tmp_path))
  assert latest.is_dir() and not (tmp_path / checkpoint_lib.DAMAGED_DIR).exists()


def damage(step_dir, how: str) -> None:
  """Truncate every file, overwrite every file with random bytes, overwrite 64 bytes in the middle
  of the largest file (orbax does not notice: the checksum does), or delete every file."""
  files = sorted(os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names)
  assert files
  if how == "random_middle":
    files = [max(files, key=os.path.getsize)]
  for path in files:
    size = os.path.getsize(path)
    if how == "missing":
      os.remove(path)
      continue
    with open(path, "r+b") as f:
      if how == "truncated":
        f.truncate(7)
      elif how == "random":
        f.write(os.urandom(size))
      else:
        f.seek(size // 2)
        f.write(os.urandom(64))


TINY = toy_runs.TINY + [
  "--config.train.rounds=5",
  "--config.train.checkpoint_every=1",
  "--config.train.keep_checkpoints=5",
]


def test_damaged_newest_checkpoints_are_set_aside_and_the_run_resumes_to_the_same_weights(tmp_path):
  """A crashed run: its lock left behind, its 4 newest checkpoints damaged 4 ways. The rerun takes
  over the lock, names and moves aside each damaged checkpoint, resumes from round 1 and ends with
  the weights of the uninterrupted run."""
  code, _, err = finish(TINY, tmp_path / "reference")
  assert code == 0, err[-2000:]
  reference = json.loads((tmp_path / "reference" / "summary.json").read_text())
  workdir = tmp_path / "crashed"
  shutil.copytree(tmp_path / "reference", workdir)
  (workdir / "summary.json").unlink()
  hows = {5: "truncated", 4: "random", 3: "random_middle", 2: "missing"}
  for step, how in hows.items():
    damage(workdir / "checkpoints" / str(step), how)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (workdir / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
  code, _, err = finish(TINY, workdir)
  assert code == 0, err[-3000:]
  assert f"took over the lock of {workdir} left by pid {dead.pid}" in err
  for step in hows:
    assert (
      f"checkpoint {workdir}/checkpoints/{step} cannot be restored" in err
      and f"moved to {workdir}/{checkpoint_lib.DAMAGED_DIR}/{step}; resuming from round 1" in err
    )
  assert "its arrays do not match the checksum" in err  # random_middle: only the checksum sees it
  assert sorted(os.listdir(workdir / checkpoint_lib.DAMAGED_DIR)) == ["2", "3", "4", "5"]
  resumed = json.loads((workdir / "summary.json").read_text())
  assert resumed["resumed_from_round"] == 1
  assert resumed["params_fingerprint"] == reference["params_fingerprint"]
  rounds = [json.loads(l)["round"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rounds == [1, 2, 3, 4, 5]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2", "3", "4", "5"]  # written again


def test_all_particles_diverging_stops_and_keeps_good_checkpoints(tmp_path):
  config = small_config(
    **{
      "optimizer.learning_rate": 1e4,
      "train.rounds": 30,
      "train.checkpoint_every": 1,
      "sync.strategy": "average",
    }
  )
  with pytest.raises(train.Diverged, match=r"all 4 particles diverged by round \d+.*learning_rate"):
    train.train_and_evaluate(config, str(tmp_path))
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  for step in checkpointer.manager.all_steps():
    meta = checkpointer.manager.restore(
      step, args=checkpoint_lib.ocp.args.Composite(meta=checkpoint_lib.ocp.args.JsonRestore())
    )["meta"]
    assert any(v is not None for v in meta["loss"])  # a checkpoint holds a round with a finite loss


def test_bad_data_dir_gets_a_message_not_a_traceback(tmp_path):
  code, _, err = finish(
    ["--config", "configs/fashion_mnist_pso.py", f"--config.data.dir={tmp_path}/none"],
    tmp_path / "w",
  )
  assert code == 2
  assert "no train-images-idx3-ubyte[.gz]" in err and "Traceback" not in err


def test_two_processes_equal_one_process(tmp_path):
  args = [
    "--config",
    "configs/digits_pso.py",
    "--config.num_particles=4",
    "--config.model.name=mlp",
    "--config.train.rounds=6",
    "--config.sync.period=4",
    "--config.sync.pso.probe_size=64",
  ]
  single_code, _, err = finish(args, tmp_path / "one")
  assert single_code == 0, err[-2000:]
  env = host_devices.child_environment()
  launched = subprocess.run(
    [
      sys.executable,
      "scripts/launch_local.py",
      "--processes",
      "2",
      "--devices-per-process",
      "2",
      "--timeout",
      "300",
      "--",
      *args,
      "--workdir",
      str(tmp_path / "two"),
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=360,
  )
  assert launched.returncode == 0, launched.stderr[-3000:]
  one = json.loads((tmp_path / "one" / "summary.json").read_text())
  two = json.loads((tmp_path / "two" / "summary.json").read_text())
  assert two["num_processes"] == 2 and one["num_processes"] == 1
  for key in (
    "params_fingerprint",
    "final_test_accuracy",
    "test_accuracy_particles",
    "test_accuracy_averaged_weights",
    "final_train_loss_particles",
  ):
    assert two[key] == one[key], key
