"""studies/attack_cost.py on hand-made results: the cost paired by machine and seed against a NumPy
re-computation, diverged runs, runs without a clean pair, the command line."""

import csv
import os
import subprocess
import sys

import numpy as np
from scipy import stats

from studies import attack_cost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("variant", "seed", "diverged", "final_test_accuracy", "machine")
AMD, INTEL = "AMD EPYC x2", "Intel(R) Xeon(R) Processor x2"


def write_runs(directory, runs):
  """runs: (variant, seed, accuracy or None for diverged, machine)."""
  os.makedirs(directory)
  with open(directory / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, FIELDS)
    writer.writeheader()
    for variant, seed, accuracy, machine in runs:
      diverged = accuracy is None
      writer.writerow(dict(zip(FIELDS, (variant, seed, diverged, accuracy or "", machine))))


def reference_gap(attacked, clean):
  """100 (attacked - clean) over paired lists: the mean and its Student-t 95% interval."""
  d = 100 * (np.array(attacked) - np.array(clean))
  half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
  mark = "*" if d.mean() - half > 0 or d.mean() + half < 0 else ""
  return f"{d.mean():+.1f} [{d.mean() - half:+.1f}, {d.mean() + half:+.1f}]{mark} (n={len(d)})"


def test_costs_are_paired_by_machine_and_seed(tmp_path):
  results = tmp_path / "results"
  clean_amd, clean_intel = [0.87, 0.88, 0.86], [0.85, 0.84, 0.86]
  write_runs(
    tmp_path / "none_amd",
    [("average", s, a, AMD) for s, a in enumerate(clean_amd)]
    + [("median", s, 0.86, AMD) for s in range(3)],
  )
  write_runs(tmp_path / "none_intel", [("average", s, a, INTEL) for s, a in enumerate(clean_intel)])
  sign_flip = [0.80, 0.82, 0.79]  # Intel: paired with the Intel clean runs only
  write_runs(
    results / "byzantine_sign_flip_f1",
    [("average", s, a, INTEL) for s, a in enumerate(sign_flip)]
    + [("median", s, 0.85, INTEL) for s in range(3)],  # no Intel clean median
  )
  write_runs(
    results / "byzantine_scale_f2",
    [("average", s, None, "") for s in range(3)]
    + [("median", 0, 0.84, AMD), ("median", 1, None, ""), ("median", 2, 0.83, AMD)],
  )
  clean_runs = attack_cost.read_runs(tmp_path / "none_amd") + attack_cost.read_runs(
    tmp_path / "none_intel"
  )
  attacked = {
    a: attack_cost.read_runs(results / f"byzantine_{a}") for a in ("sign_flip_f1", "scale_f2")
  }
  clean = {v: attack_cost.finished_figures(clean_runs, v) for v in ("average", "median")}
  text = lambda a, v: attack_cost.cost_text(attacked[a], clean.get(v, {}), v)
  assert text("sign_flip_f1", "average") == reference_gap(sign_flip, clean_intel)
  assert text("sign_flip_f1", "median") == "no clean run of its machine and seed"
  assert text("scale_f2", "average") == "diverged (3/3)"
  assert text("scale_f2", "median") == reference_gap([0.84, 0.83], [0.86, 0.86]) + "; 1 diverged"
  assert text("scale_f2", "pso") == "not run"
  mean, spread = attack_cost.cost_values(attacked["sign_flip_f1"], clean["average"], "average")
  d = 100 * (np.array(sign_flip) - np.array(clean_intel))
  np.testing.assert_allclose([mean, spread], [d.mean(), d.std(ddof=1)])
  lines = attack_cost.report(attacked, clean_runs)
  assert "| average | 0.8700 ± 0.0100 (n=3) | 0.8500 ± 0.0100 (n=3) |" in lines
  assert f"- scale_f2: Run on not recorded (4 runs), {AMD} (2 runs)." in lines


def test_the_command_writes_the_report_and_refuses_a_directory_without_results(tmp_path):
  write_runs(tmp_path / "none", [("pso", s, 0.85, AMD) for s in range(2)])
  write_runs(
    tmp_path / "results" / "byzantine_alie_f2", [("pso", s, 0.86 - s / 100, AMD) for s in range(2)]
  )
  command = [sys.executable, "studies/attack_cost.py", "--results", str(tmp_path / "results")]
  ok = subprocess.run(
    command + ["--clean", str(tmp_path / "none"), "--out", str(tmp_path / "out")],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert ok.returncode == 0, ok.stderr[-2000:]
  written = (tmp_path / "out" / "attack_cost.md").read_text()
  assert "| defence | alie_f2 |" in written
  assert f"| pso | {reference_gap([0.86, 0.85], [0.85, 0.85])} |" in written
  assert (tmp_path / "out" / "attack_cost.png").stat().st_size > 10_000
  bad = subprocess.run(
    command + ["--clean", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert bad.returncode == 2 and "--clean" in bad.stderr and "no results.csv" in bad.stderr
  assert "Traceback" not in bad.stderr


def test_the_committed_report_is_what_its_command_makes(tmp_path):
  """docs/RESULTS.md's attack-cost table: attack_cost.py on the committed studies' results.csv
  writes the committed attack_cost.md again."""
  committed = os.path.join(REPO, "studies", "results", "byzantine_attack_cost", "attack_cost.md")
  clean = [os.path.join("studies", "results", g) for g in ("byzantine_none_xeon", "byzantine_none")]
  done = subprocess.run(
    [sys.executable, "studies/attack_cost.py", "--clean", *clean, "--out", str(tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  with open(committed) as f:
    assert (tmp_path / "attack_cost.md").read_text() == f.read()
