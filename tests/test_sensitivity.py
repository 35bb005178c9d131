"""benchmarks/sensitivity.py pairs two studies' cells and reports their spread (hand-computed)."""

import json
import os
import subprocess
import sys

from benchmarks import sensitivity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_rows(directory, accuracies, fingerprints):
  directory.mkdir()
  rows = [
    {
      "variant": "pso",
      "period": 16,
      "num_particles": 8,
      "seed": seed,
      "diverged": False,
      "final_test_accuracy": accuracy,
      "params_fingerprint": fingerprint,
    }
    for seed, (accuracy, fingerprint) in enumerate(zip(accuracies, fingerprints))
  ]
  (directory / "results.json").write_text(json.dumps(rows))


def test_paired_spread_by_hand(tmp_path):
  write_rows(tmp_path / "a", [0.80, 0.82, 0.84], ["x", "y", "z"])
  write_rows(tmp_path / "b", [0.81, 0.80, 0.84], ["u", "v", "z"])
  table = sensitivity.table(
    sensitivity.rows_of(str(tmp_path / "a")), sensitivity.rows_of(str(tmp_path / "b"))
  )
  # gaps +1, -2, 0 points: mean -0.33, std 1.53, largest 2.00; one pair bit-identical
  assert "| pso | 16 | 3 | 0.8200 | 0.8167 | -0.33 ± 1.53 | 2.00 | 1/3 |" in table


def test_bad_directories_exit_2(tmp_path):
  write_rows(tmp_path / "a", [0.8], ["x"])
  for args in ([str(tmp_path / "a"), str(tmp_path / "missing")],):
    done = subprocess.run(
      [sys.executable, "benchmarks/sensitivity.py", *args], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2 and "results.json" in done.stderr and "Traceback" not in done.stderr
