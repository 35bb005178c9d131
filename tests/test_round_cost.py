"""benchmarks/round_cost.py: the runners it builds, the ratios on hand-made timings, bad input."""

import os
import subprocess
import sys

from benchmarks import round_cost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cases_cover_each_probe_size_and_pso_average_at_the_largest():
  runs = round_cost.cases([1024, 256])
  assert runs["pso/probe256"] == ("pso", "probe", 256)
  assert runs["pso/probe1024"] == ("pso", "probe", 1024)
  assert runs["pso_average/probe1024"] == ("pso_average", "probe", 1024)
  assert runs["pso/round_loss"][1] == "round_loss" and runs["robust_median"][0] == "robust_average"


def test_ratios_are_medians_over_repetitions_relative_to_average_at_the_same_period():
  seconds = {
    "p4/average": [0.30, 0.10, 0.20],
    "p4/pso": [0.9, 0.5, 0.4],
    "p16/average": [1.0, 1.0],
    "p16/pso": [1.5, 1.1],
  }
  table = round_cost.ratios(seconds, [4, 16], ["average", "pso"])
  assert table[4]["average"] == {"ms_per_round": 200.0, "vs_average": 1.0}
  assert table[4]["pso"] == {"ms_per_round": 500.0, "vs_average": 2.5}  # medians 0.5 / 0.2
  assert table[16]["pso"] == {"ms_per_round": 1300.0, "vs_average": 1.3}  # (1.5 + 1.1) / 2 = 1.3


def test_bad_input_is_named():
  result = subprocess.run(
    [sys.executable, "benchmarks/round_cost.py", "--reps", "0"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2 and "--reps must be at least 1, got 0" in result.stderr
