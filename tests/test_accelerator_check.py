"""benchmarks/accelerator_check.py cannot rot: its --cpu-smoke mode runs every part at toy size."""

import json
import os
import subprocess
import sys

from benchmarks import accelerator_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_smoke_runs_every_part_and_ends_with_one_json_line():
  done = subprocess.run(
    [sys.executable, "benchmarks/accelerator_check.py", "--cpu-smoke"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  record = json.loads(done.stdout.strip().splitlines()[-1])["accelerator_check"]
  assert record["mode"] == "cpu-smoke"
  parts = record["parts"]
  assert set(parts) == set(accelerator_check.LIMITS)
  assert all(p["status"] == "ok" for p in parts.values())
  for name in ("digits", "resnet20", "vgg_small"):
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
