"""round_vs_floor.py and scaling.py on hand-made timings: which variants are compared, and the
paired ratios (no JAX); --conv reaching every JAX method; and round_vs_floor.py run at toy size for
the transformer."""

import argparse
import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import round_vs_floor, scaling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timing(seconds):
  return {"seconds": seconds, "cpu_over_wall": 1.0}


def test_the_fastest_floor_and_torch_variants_are_compared_repetition_by_repetition():
  args = argparse.Namespace(particles=2, period=4, batch_size=8)  # 64 samples per round
  timed = {
    "framework/pso": timing([1.0, 2.0, 4.0]),
    "framework/1dev": timing([2.0, 2.0, 2.0]),
    "floor/step_loop": timing([3.0, 3.0, 3.0]),
    "floor/unrolled/slice": timing([2.0, 4.0, 2.0]),  # the faster floor (median 2 s)
    "torch/2threads": timing([8.0, 8.0, 8.0]),
    "torch/1thread": timing([4.0, 4.0, 4.0]),
  }
  rows, ratios, chosen = round_vs_floor.summarize(timed, {"framework/pso": 1.5}, args)
  assert chosen == {"floor": "floor/unrolled/slice", "torch": "torch/1thread"}
  assert rows["framework/pso"]["samples_per_second"]["median"] == 32.0
  assert (
    rows["framework/pso"]["compile_seconds"] == 1.5
    and rows["floor/step_loop"]["compile_seconds"] is None
  )
  assert ratios["framework_vs_floor"]["median"] == 2.0  # pairs 2/1, 4/2, 2/4
  assert ratios["framework_vs_floor"]["min"] == 0.5
  assert ratios["framework_vs_torch"]["median"] == 2.0 and "framework_pso_vs_none" not in ratios


def test_without_torch_there_is_no_torch_ratio():
  args = argparse.Namespace(particles=1, period=1, batch_size=1)
  timed = {"framework/pso": timing([1.0]), "floor/step_loop": timing([1.0])}
  _, ratios, chosen = round_vs_floor.summarize(timed, {}, args)
  assert chosen["torch"] is None and set(ratios) == {"framework_vs_floor"}


def test_a_text_model_reports_tokens_per_second_beside_samples_per_second():
  args = argparse.Namespace(particles=2, period=4, batch_size=8, context=64)  # 64 windows a round
  timed = {
    "framework/pso": timing([2.0, 2.0]),
    "framework/1dev": timing([4.0, 4.0]),
    "floor/scan/slice": timing([1.0, 1.0]),
  }
  rows, ratios, chosen = round_vs_floor.summarize(timed, {}, args)
  assert rows["framework/pso"]["samples_per_second"]["median"] == 32.0
  assert rows["framework/pso"]["tokens_per_second"]["median"] == 32.0 * 64
  assert chosen["floor"] == "floor/scan/slice" and ratios["framework_vs_floor"]["median"] == 0.5
  summary = round_vs_floor.headline(rows, ratios, chosen)
  assert summary["tokens_per_second"] == {"framework": 2048.0, "floor": 4096.0, "torch": None}
  assert summary["framework_1dev_vs_floor"] == 0.25 and summary["framework_vs_torch"] is None
  lines = round_vs_floor.table(rows, ratios, chosen, argparse.Namespace(devices=2, max_unroll=0))
  assert "tokens/s" in lines[0]


def test_conv_reaches_the_framework_and_the_floor_alike(monkeypatch):
  """--conv im2col: the config of every JAX method (framework rounds and floor) says model.conv
  im2col, the floor's model computes with it, and the JSON's config records it."""
  from benchmarks import common

  argv = ["round_vs_floor.py", "--model", "lenet5", "--conv", "im2col", "--train-size", "512"]
  monkeypatch.setattr(sys, "argv", argv)
  parser = common.round_parser(round_vs_floor.__doc__, reps=(21, 7), text_models=True, conv=True)
  args = common.round_settings(parser)
  assert common.round_config(args)["conv"] == "im2col"
  settings = round_vs_floor.run_settings(args)
  for particles in (args.particles, 1):  # the framework's swarm, and the floor's one particle
    config = common.run_config(args.model, particles, particles, 2, 8, **settings)
    assert config.model.conv == "im2col"
  assert common.floor_parts(config)[0].conv == "im2col"


def test_conv_choices_are_the_models():
  """--conv offers what model.conv accepts (common.py lists them itself: it imports no JAX)."""
  from benchmarks import common
  from psops_jax import conv

  parser = common.round_parser(round_vs_floor.__doc__, reps=(21, 7), text_models=True, conv=True)
  (action,) = [a for a in parser._actions if a.dest == "conv"]
  assert tuple(action.choices) == conv.CONVS


@pytest.mark.slow
def test_round_vs_floor_runs_the_transformer_at_toy_size(tmp_path):
  """configs/text_lm.py's tiny transformer, 2 particles, 2 steps a round, 1 repetition: the JSON
  holds tokens/s of every method and finite positive paired ratios (torch's where installed)."""
  out = tmp_path / "lm.json"
  command = [sys.executable, "benchmarks/round_vs_floor.py", "--quick", "--model", "transformer"]
  command += ["--particles", "2", "--period", "2", "--batch-size", "4", "--train-size", "64"]
  command += ["--reps", "1", "--out", str(out)]
  env = dict(os.environ, PYTHONPATH=REPO)
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["config"]["model"] == "transformer" and result["config"]["loop"] == "scan"
  assert result["config"]["context"] == 64 and result["config"]["size"] == "tiny"
  tokens = result["tokens_per_second"]
  torch_ran = "skipped" not in result["torch_info"]
  for method in ("framework", "floor") + (("torch",) if torch_ran else ()):
    assert math.isfinite(tokens[method]) and tokens[method] > 0
  for row in result["rows"].values():
    tokens_per_sample = row["tokens_per_second"]["median"] / row["samples_per_second"]["median"]
    assert tokens_per_sample == pytest.approx(64, rel=1e-3)  # both rounded to 4 digits
  ratios = ["framework_vs_floor", "framework_1dev_vs_floor"]
  ratios += ["framework_vs_torch", "floor_vs_torch"] if torch_ran else []
  for key in ratios:
    assert math.isfinite(result[key]) and result[key] > 0
  if torch_ran:
    assert result["torch_info"]["logits_max_abs_diff_vs_flax"] < 1e-4


def test_scaling_cells_and_the_ratio_to_the_floor():
  assert scaling.cells(8, [1, 2, 4, 8]) == [(1, 1), (2, 2), (4, 4), (8, 8), (8, 1), (8, 2), (8, 4)]
  assert scaling.cells(3, [1, 2]) == [(1, 1), (2, 2), (3, 1)]
  row = scaling.row(timing([2.0, 4.0]), 4, 2, 8, floor_seconds=[1.0, 1.0])
  assert row["samples_per_second"]["median"] == 24.0  # 64 samples in 2 s (32/s) and in 4 s (16/s)
  assert row["vs_floor"]["median"] == 1.5  # 4 particles' worth of floor (4 s) / 2 s, / 4 s
