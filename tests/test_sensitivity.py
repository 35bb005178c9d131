"""studies/sensitivity.py pairs two studies' cells and reports their spread (hand-computed)."""

import json
import os
import subprocess
import sys

from studies import sensitivity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_rows(directory, accuracies, fingerprints, machines=None):
  directory.mkdir()
  rows = [
    {
      "machine": machine,
      "variant": "pso",
      "period": 16,
      "num_particles": 8,
      "seed": seed,
      "diverged": False,
      "final_test_accuracy": accuracy,
      "params_fingerprint": fingerprint,
    }
    for seed, (accuracy, fingerprint, machine) in enumerate(
      zip(accuracies, fingerprints, machines or ["m"] * len(accuracies))
    )
  ]
  (directory / "results.json").write_text(json.dumps(rows))


def test_paired_spread_by_hand(tmp_path):
  write_rows(tmp_path / "a", [0.80, 0.82, 0.84], ["x", "y", "z"])
  write_rows(tmp_path / "b", [0.81, 0.80, 0.84], ["u", "v", "z"])
  table = sensitivity.table(
    sensitivity.rows_of(str(tmp_path / "a")), sensitivity.rows_of(str(tmp_path / "b"))
  )
  # gaps +1, -2, 0 points: mean -0.33, std 1.53, largest 2.00; one pair bit-identical
  assert "| pso | 16 | same | 3 | 0.8200 | 0.8167 | -0.33 ± 1.53 | 2.00 | 1/3 |" in table


def test_runs_on_other_machines_are_paired_apart_and_run_directories_are_read(tmp_path):
  write_rows(tmp_path / "a", [0.80, 0.82, 0.84], ["x", "y", "z"])
  check = tmp_path / "check"  # study.py --check's re-runs: a directory per cell, named as cells are
  for seed, (accuracy, machine) in enumerate([(0.81, "m"), (0.80, "n"), (0.83, "n")]):
    run = check / f"pso_p16_n8_s{seed}"
    run.mkdir(parents=True)
    summary = {"final_test_accuracy": accuracy, "params_fingerprint": "w", "machine": machine}
    (run / "summary.json").write_text(json.dumps(summary))
  (check / "notes").mkdir()  # not a cell: skipped
  rows = sensitivity.rows_of(str(check))
  assert sorted(rows) == [("pso", 16, 8, seed) for seed in range(3)]
  table = sensitivity.table(sensitivity.rows_of(str(tmp_path / "a")), rows)
  assert "| pso | 16 | same | 1 | 0.8000 | 0.8100 | +1.00 | 1.00 | 0/1 |" in table
  # seeds 1 and 2 moved to machine n: gaps -2, -1 points, mean -1.5, std 0.71
  assert "| pso | 16 | m -> n | 2 | 0.8300 | 0.8150 | -1.50 ± 0.71 | 2.00 | 0/2 |" in table


def test_bad_directories_exit_2(tmp_path):
  write_rows(tmp_path / "a", [0.8], ["x"])
  for args in ([str(tmp_path / "a"), str(tmp_path / "missing")],):
    done = subprocess.run(
      [sys.executable, "studies/sensitivity.py", *args], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2 and "results.json" in done.stderr and "Traceback" not in done.stderr
