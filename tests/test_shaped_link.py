"""Runs over a shaped network link: scripts/launch_shaped.py (a namespace whose loopback is
limited by tc tbf), the link a multi-process run measures (psops_jax/link.py), and the link study's
calibration of the communication clock to it (studies/link_study.py)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import toy_runs

from psops_jax import clock
from studies import link_study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = [sys.executable, os.path.join(REPO, "scripts", "launch_shaped.py")]


def can_shape() -> str | None:
  """Why this machine cannot make a shaped namespace here, or None."""
  if os.geteuid() != 0:
    return "not root: network namespaces need root"
  if not (shutil.which("ip") and shutil.which("tc")):
    return "iproute2's ip and tc are not installed (apt-get install iproute2)"
  name = f"psops_probe{os.getpid()}"  # the two xdist workers may probe at once
  probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
  if probe.returncode != 0:
    return f"ip netns add is refused here: {probe.stderr.strip()}"
  subprocess.run(["ip", "netns", "del", name], capture_output=True)
  return None


def left_namespaces() -> list:
  """The namespaces a launcher made (scripts/launch_shaped.py names them psops<its pid>) and left
  behind when it ended; a launcher still running (another test's, on the other xdist worker) keeps
  its own."""
  listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
  made = re.findall(r"^psops(\d+)\b", listed, re.M)
  return [f"psops{pid}" for pid in made if not os.path.exists(f"/proc/{pid}")]


def test_the_measured_profile_reproduces_the_measured_link():
  link = {"fixed_seconds": 0.002, "allreduce_seconds": 0.130, "payload_bytes": 249_000}
  profile = link_study.measured_profile(link, step_seconds=0.013, workers=4)
  whole = clock.collective_seconds("all_reduce", 249_000, 4, profile.bandwidth, profile.latency)
  assert whole == pytest.approx(0.130)
  tiny = clock.collective_seconds("all_reduce", 1e-9, 4, profile.bandwidth, profile.latency)
  assert tiny == pytest.approx(0.002)
  half = clock.collective_seconds("all_reduce", 124_500, 4, profile.bandwidth, profile.latency)
  assert half == pytest.approx(0.002 + 0.128 / 2)


def test_seconds_to_a_target_is_the_first_evaluation_that_reaches_it():
  points = [(8, 0, 1.0, 0.5), (16, 0, 2.5, 0.91), (24, 0, 3.0, 0.89), (32, 0, 4.0, 0.96)]
  assert link_study.seconds_to(points, 0.9) == (16, 2.5)
  assert link_study.seconds_to(points, 0.95) == (32, 4.0)
  assert link_study.seconds_to(points, 0.99) is None


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--rate", "fast", "--", "--processes", "2"], "--rate: 'fast': must be a rate"),
    (["--rate", "20mbit", "--burst", "1kb", "--", "x"], "must be above the MTU"),
    (["--rate", "20mbit"], "pass launch_local.py's flags after --"),
  ],
)
def test_bad_flags_exit_2_with_a_message(flags, message):
  done = subprocess.run(LAUNCH + flags, capture_output=True, text=True, timeout=60)
  assert done.returncode == 2 and message in done.stderr, done.stderr


def test_without_ip_and_tc_it_refuses_with_exit_2():
  env = dict(os.environ, PATH="/nonexistent")
  done = subprocess.run(
    LAUNCH + ["--rate", "20mbit", "--", "--processes", "2"],
    capture_output=True,
    text=True,
    env=env,
    timeout=60,
  )
  if os.geteuid() != 0:
    assert "needs root" in done.stderr
  else:
    assert "needs `ip`" in done.stderr and "iproute2" in done.stderr
  assert done.returncode == 2 and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_run_over_a_shaped_link_records_the_link_and_leaves_no_namespace(tmp_path):
  reason = can_shape()
  if reason:
    pytest.skip(reason)
  workdir = tmp_path / "shaped"
  flags = ["--rate", "100mbit", "--", "--processes", "2", "--devices-per-process", "1", "--"]
  train = toy_runs.TINY + ["--config.num_devices=2", "--config.train.rounds=3"]
  done = subprocess.run(
    LAUNCH + flags + train + ["--workdir", str(workdir)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  link = json.loads((workdir / "summary.json").read_text())["link"]
  assert link["shaped"] == {
    "rate": "100mbit",
    "burst": "64kb",
    "limit": "1mb",
    "mtu": 1500,
    "slow_start_after_idle": 1,
  }
  assert link["processes"] == 2 and link["payload_bytes"] > 100_000  # the MLP's weights
  # 100 Mbit/s is 12.5 MB/s: an all-reduce of the weights cannot beat the wire
  assert link["allreduce_seconds"] > link["payload_bytes"] / 12.5e6
  assert link["fixed_seconds"] < link["allreduce_seconds"]
  assert left_namespaces() == []


def link_study_config():
  from studies import study as study_lib

  return study_lib.load_study(os.path.join(REPO, "configs", "study_link.py"))


def test_every_cell_of_the_link_study_is_a_valid_config():
  from configs import digits_pso
  from psops_jax import config_check

  study = link_study_config()
  names = set()
  for name, rate, variant, seed, overrides in link_study.cells(study):
    config = digits_pso.get_config()
    config.update_from_flattened_dict(overrides)
    config_check.validate(config)
    names.add(name)
  assert len(names) == len(study.rates) * len(study.variants) * len(study.seeds)
  assert study.calibration in study.variants


@pytest.mark.slow
def test_the_link_study_runs_at_toy_size_and_reports(tmp_path):
  """configs/study_link.py cut to one rate, its calibration and streaming, 2 rounds of 2 steps."""
  reason = can_shape()
  if reason:
    pytest.skip(reason)
  study = link_study_config()
  study["rates"] = study.rates[1:2]
  study["variants"] = {k: study.variants[k] for k in (study.calibration, "streaming")}
  study["overrides"] = dict(study.overrides, **{"train.rounds": 2, "sync.period": 2})
  study["overrides"].update({"train.eval_every": 1, "train.batch_size": 16})
  study["targets"] = (0.0, 0.2)
  link_study.run_cells(study, str(tmp_path))
  text = link_study.report(study, str(tmp_path))
  rows = json.loads((tmp_path / "results.json").read_text())
  assert [r["variant"] for r in rows] == [study.calibration, "streaming"]
  assert all(r["finished"] for r in rows) and "| streaming |" in text
  calibration = rows[0]  # no communication: its projection is its own compute
  assert calibration["projected_total"] == pytest.approx(calibration["train_seconds"])
  assert rows[1]["measured_r"] > 0 and (tmp_path / "measured_vs_projected.png").exists()
  assert left_namespaces() == []
