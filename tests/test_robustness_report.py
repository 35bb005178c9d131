"""studies/robustness_report.py on hand-made results: gaps paired by seed, diverged runs, cost,
periods."""

import csv
import os
import subprocess
import sys

from studies import robustness_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIELDS = (
  "variant",
  "period",
  "seed",
  "diverged",
  "final_test_accuracy",
  "train_seconds",
  "communicated_bytes_per_particle",
)


def write_scenario(results, scenario, runs):
  """runs: (variant, period, seed, accuracy or None for diverged, seconds, bytes)."""
  os.makedirs(results / f"robustness_{scenario}")
  with open(results / f"robustness_{scenario}" / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, FIELDS)
    writer.writeheader()
    for variant, period, seed, accuracy, seconds, sent in runs:
      writer.writerow(
        dict(
          zip(
            FIELDS,
            (
              variant,
              period,
              seed,
              accuracy is None,
              "nan" if accuracy is None else accuracy,
              seconds,
              sent,
            ),
          )
        )
      )


def test_gaps_are_paired_by_seed_and_diverged_runs_are_named(tmp_path):
  write_scenario(
    tmp_path,
    "dirichlet_1",
    [
      ("pso", 16, 0, 0.80, 30.0, 1000),
      ("pso", 16, 1, 0.82, 40.0, 1000),
      ("pso", 16, 2, 0.90, 50.0, 1000),  # no average for seed 2: not in the gap
      ("average", 16, 0, 0.85, 10.0, 2000),
      ("average", 16, 1, 0.86, 20.0, 2000),
      ("robust_median", 16, 0, 0.84, 10.0, 16000),
      ("robust_median", 16, 1, 0.83, 10.0, 16000),
    ],
  )
  write_scenario(
    tmp_path,
    "nan",
    [
      ("pso", 16, 0, 0.83, 30.0, 1000),
      ("average", 16, 0, None, 5.0, 500),
      ("robust_median", 16, 0, 0.87, 15.0, 16000),
      ("pso", 4, 0, 0.70, 90.0, 4000),
      ("average", 4, 0, 0.75, 30.0, 8000),
      ("robust_median", 4, 0, 0.76, 30.0, 64000),
    ],
  )

  scenarios, table = robustness_report.period_table(str(tmp_path), 16)
  assert scenarios == ["nan", "dirichlet_1"]
  pso, average = table["pso"]["dirichlet_1"], table["average"]["dirichlet_1"]
  # (0.80 - 0.85, 0.82 - 0.86) x 100 = (-5, -4): mean -4.5, sample std 0.707
  assert robustness_report.gap(pso, average) == "-4.5 [-10.9, +1.9] (n=2)"
  assert robustness_report.gap(table["pso"]["nan"], table["average"]["nan"]) == "reference diverged"
  assert robustness_report.describe(table["average"]["nan"]) == "diverged (1/1)"
  assert robustness_report.describe(pso) == "0.8400 ± 0.0529 (n=3)"
  # pairs where both finished: dirichlet_1 seeds 0, 1 (30/10, 40/20); nan's average diverged
  ratio = robustness_report.seconds_ratio(
    [table["pso"][s] for s in scenarios], [table["average"][s] for s in scenarios]
  )
  assert ratio == 2.5
  report = "\n".join(robustness_report.period_report(table, scenarios, 16))
  assert "| pso | 0.0 MB | 2.50x |" in report and "| robust_median | 0.0 MB | 0.75x |" in report

  out = subprocess.run(
    [
      sys.executable,
      "studies/robustness_report.py",
      "--periods",
      "4",
      "16",
      "--results",
      str(tmp_path),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  summary = (tmp_path / "robustness_periods.md").read_text()
  # nan: at p4 pso - average = -5.0, pso - median = -6.0; at p16 average diverged, median +4
  # above pso
  assert "| nan | -5.0 (n=1) | -6.0 (n=1) | reference diverged | -4.0 (n=1) |" in summary
  row = "| dirichlet_1 | not run | not run | -4.5 [-10.9, +1.9] (n=2) | -2.5 [-21.6, +16.6] (n=2) |"
  assert row in summary
  for name in ("robustness_p4.png", "robustness_p16.png", "robustness_periods.png"):
    assert (tmp_path / name).stat().st_size > 1000


def test_gap_names_the_side_that_diverged():
  finished = robustness_report.cell_stats(
    [
      {
        "seed": "0",
        "diverged": "False",
        "final_test_accuracy": "0.8",
        "train_seconds": "1",
        "communicated_bytes_per_particle": "1",
      }
    ]
  )
  diverged = robustness_report.cell_stats(
    [
      {
        "seed": "0",
        "diverged": "True",
        "final_test_accuracy": "nan",
        "train_seconds": "1",
        "communicated_bytes_per_particle": "1",
      }
    ]
  )
  assert robustness_report.gap(finished, diverged) == "reference diverged"
  assert robustness_report.gap(diverged, finished) == "diverged"
  assert robustness_report.gap(diverged, diverged) == "both diverged"
  assert robustness_report.gap(finished, finished) == "+0.0 (n=1)"
