"""benchmarks/accelerator_check.py cannot rot: its --cpu-smoke mode runs the parts at toy size,
except the two that repeat what the suite runs anyway (the `tests` part is
tests/test_promised_paths.py -k scan; vgg_small is resnet20's path with the other model, which
tests/test_models.py and test_batch_stats.py compile): for those, the selection and the config are
checked here."""

import importlib
import json
import os
import subprocess
import sys

import pytest

from benchmarks import accelerator_check
from psops_jax import config_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_PARTS = ("digits", "resnet20", "throughput")


@pytest.mark.slow
def test_cpu_smoke_runs_the_parts_and_ends_with_one_json_line():
  done = subprocess.run(
    [sys.executable, "benchmarks/accelerator_check.py", "--cpu-smoke", "--parts", *SMOKE_PARTS],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  record = json.loads(done.stdout.strip().splitlines()[-1])["accelerator_check"]
  assert record["mode"] == "cpu-smoke"
  parts = record["parts"]
  assert set(parts) == set(SMOKE_PARTS)
  assert all(p["status"] == "ok" for p in parts.values())
  for name in ("digits", "resnet20"):
    assert 0.0 <= parts[name]["final_test_accuracy"] <= 1.0
    assert parts[name]["samples_per_second"] > 0 and parts[name]["peak_host_rss_bytes"] > 0
    assert parts[name]["backend"] == "cpu"
  throughput = parts["throughput"]
  for dtype in ("float32", "bfloat16"):
    for row in ("swarm_unroll", "swarm_vmap", "floor_1", "floor_2_vmap"):
      assert throughput[f"{row}_{dtype}"]["samples_per_second"] > 0
    assert throughput[f"faster_layout_{dtype}"] in ("unroll", "vmap")
  assert "part" in done.stdout and "throughput" in done.stdout  # the table


def test_a_part_over_its_limit_is_reported_and_the_check_goes_on(monkeypatch):
  monkeypatch.setitem(accelerator_check.LIMITS, "digits", (1, 1))
  result = accelerator_check.run_isolated("digits", smoke=True)
  assert result["status"] == "timeout" and "limit of 1 s" in result["error"]


@pytest.mark.parametrize("smoke", [True, False])
def test_the_vgg_small_part_is_a_valid_config(smoke):
  cifar10_pso = importlib.import_module("configs.cifar10_pso")
  config = cifar10_pso.get_config("vgg_small")
  config.update_from_flattened_dict(accelerator_check.cifar_fields(smoke))
  config_check.validate(config)
  assert config.model.name == "vgg_small" and config.data.source == "synthetic"
  assert config.optimizer.learning_rate == cifar10_pso.LEARNING_RATES["vgg_small"]


@pytest.mark.parametrize("smoke", [True, False])
def test_the_tests_part_selects_scan_loop_tests(smoke):
  command = accelerator_check.tests_command(smoke) + ["--collect-only"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  selected = [line for line in done.stdout.splitlines() if "::" in line]
  assert done.returncode == 0 and selected, done.stdout[-2000:]
  assert all("scan" in line for line in selected)
