"""The study and time reports are of the study's metric (psops_jax/headline.py): a language model's
validation bits per byte (lower is better) as a classification's test accuracy (higher is better),
on fake runs (no training)."""

import json
import os

import pytest

from psops_jax import clock, headline
from studies import study, time_report

LM = headline.METRICS["language_model"]
ACCURACY = headline.METRICS["classification"]
W = 1e6  # model bytes


def fake_summary(task: str, period: int, final: float) -> dict:
  """A finished run's summary.json with the keys the reports read (`final`: its metric's)."""
  metric = headline.METRICS[task]
  summary = {k: None for k in study.ROW_KEYS + study.TASK_KEYS[task]}
  return summary | {
    "task": task,
    "metric": metric._asdict(),
    "final_test_accuracy": 0.3 if task == "language_model" else final,
    metric.key: final,
    "period": period,
    "steps": 64,
    "communicated_bytes_per_particle": 4 * W,
    "train_seconds": 10.0,
    "evaluated_on": "test",
    "model_bytes": W,
    "collective": {"kind": "all_reduce", "per_step": False, "hidden_rounds": 0},
    "code_version": "abc",
    "machine": "m",
  }


def write_run(workdir, task: str, period: int, figures: list) -> None:
  """summary.json and metrics.jsonl of a run evaluated at steps 16, 32, 48, 64 (`figures`)."""
  os.makedirs(workdir)
  metric = headline.METRICS[task]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for i, figure in enumerate(figures[:-1]):
      record = {"step": 16 * (i + 1), "communicated_bytes_per_particle": (i + 1) * W}
      f.write(json.dumps(record | {"train_seconds": 2.0 * (i + 1), metric.key: figure}) + "\n")
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(fake_summary(task, period, figures[-1]), f)


def lm_grid(**changes) -> study.Study:
  grid = {
    "base": "configs/text_lm.py",
    "variants": {"ssgd": {}, "diloco": {}},
    "periods": [16, 64],
    "num_particles": [8],
    "seeds": [0, 1],
    "total_steps": 64,
    "evals": 4,
    "overrides": {},
    "one_big_worker": False,
    "reference": ["ssgd"],
  }
  return study.Study(grid | changes)


# bits per byte at steps 16, 32, 48, 64 by (variant, period, seed): diloco p16 is the best cell
CURVES = {
  ("ssgd", 16, 0): [4.0, 3.6, 3.4, 3.30],
  ("ssgd", 16, 1): [4.1, 3.7, 3.5, 3.32],
  ("ssgd", 64, 0): [4.0, 3.6, 3.4, 3.31],
  ("ssgd", 64, 1): [4.1, 3.7, 3.5, 3.33],
  ("diloco", 16, 0): [3.9, 3.4, 3.2, 3.10],
  ("diloco", 16, 1): [3.9, 3.5, 3.3, 3.14],
  ("diloco", 64, 0): [4.3, 4.2, 4.1, 4.05],
  ("diloco", 64, 1): [4.3, 4.2, 4.1, 4.07],
}


@pytest.fixture
def lm_study(tmp_path):
  out = tmp_path / "lm"
  for (variant, period, seed), figures in CURVES.items():
    name = study.cell_name(variant, period, 8, seed)
    write_run(str(out / "runs" / name), "language_model", period, figures)
  return out


def test_a_study_takes_its_metric_from_its_data_set():
  assert study.study_metric(lm_grid()) == LM
  assert study.study_metric(study.load_study("configs/study_lm.py", "tuning")) == LM
  assert study.study_metric(study.load_study("configs/study_fashion_mnist.py")) == ACCURACY
  assert study.study_metric(lm_grid(overrides={"data.name": "digits"})) == ACCURACY
  assert headline.metric_of(fake_summary("language_model", 16, 3.0)) == LM
  assert headline.metric_of({"metric": LM._asdict()}) == LM
  assert headline.metric_of({"variant": "pso"}) == ACCURACY  # a row made before the fields
  names = [headline.report_file(m, "time_to_{}.md") for m in (ACCURACY, LM)]
  assert names == ["time_to_accuracy.md", "time_to_bits_per_byte.md"]
  assert headline.report_file(LM, "final_{}_vs_period.png") == "final_bits_per_byte_vs_period.png"


def test_the_language_model_study_reports_bits_per_byte_lower_is_better(lm_study):
  study.report(lm_grid(), str(lm_study))
  files = set(os.listdir(lm_study))
  for name in (
    "bits_per_byte_vs_steps_n8.png",
    "bits_per_byte_vs_bytes_n8.png",
    "bits_per_byte_vs_seconds_n8.png",
    "final_bits_per_byte_vs_period.png",
    "time_to_bits_per_byte.md",
    "bits_per_byte_vs_time.png",
  ):
    assert (lm_study / name).stat().st_size > 500, name
  assert not [f for f in files if "accuracy" in f]
  table = (lm_study / "results.md").read_text()
  assert "Final validation bits per byte of the exported model (lower is better)" in table
  assert "Gap to `ssgd` in bits per byte" in table and "lower is better" in table
  captions = [line for line in table.splitlines() if not line.startswith("|")]
  assert not [line for line in captions if "accuracy" in line]
  assert "| diloco | 3.1200 ± 0.0283 (n=2) | 4.0600 ± 0.0141 (n=2) |" in table
  # the paired gap in bits per byte, not x 100: diloco - ssgd at period 16 = -0.20 and -0.18
  assert "| diloco | -0.190 [" in table
  rows = json.loads((lm_study / "results.json").read_text())
  assert {r["task"] for r in rows} == {"language_model"}
  assert {r["final_bits_per_byte"] for r in rows} == {c[-1] for c in CURVES.values()}
  report = (lm_study / "time_to_bits_per_byte.md").read_text()
  assert report.startswith("# Time to bits per byte")
  assert "at or below the target (lower is better)" in report
  headings = [line for line in report.splitlines() if line.startswith("#")]
  assert all("accuracy" not in h for h in headings) and "## Time to 3.43 validation" in report


def test_rows_made_before_the_task_was_recorded_are_not_read_as_bits_per_byte(lm_study):
  """A carried row without "task" has accuracies only: not recorded, its curve left out."""
  study.report(lm_grid(), str(lm_study))
  rows = json.loads((lm_study / "results.json").read_text())
  for row in rows:
    if row["variant"] == "diloco" and row["period"] == 64:
      del row["task"], row["final_bits_per_byte"]
  (lm_study / "results.json").write_text(json.dumps(rows))
  for seed in (0, 1):
    name = study.cell_name("diloco", 64, 8, seed)
    os.rename(lm_study / "runs" / name, lm_study / f"gone_{name}")
  study.report(lm_grid(), str(lm_study))
  assert (
    "| diloco | 3.1200 ± 0.0283 (n=2) | not recorded (2/2) |"
    in (lm_study / "results.md").read_text()
  )
  assert "| diloco | 64 |" not in (lm_study / "time_to_bits_per_byte.md").read_text()


def test_the_best_cell_is_the_lowest_bits_per_byte(monkeypatch):
  monkeypatch.setitem(study.ZOOMS, "final_bits_per_byte", 0.5)  # diloco p64 (4.06) lies beyond
  rows = [
    {"variant": v, "period": p, "num_particles": 8, "seed": s, "diverged": False}
    | {"task": "language_model", "final_bits_per_byte": c[-1]}
    for (v, p, s), c in CURVES.items()
  ]
  means = study.period_means(rows, LM)
  lowest = min(m - sd for cells in means.values() for _, m, sd, _ in cells)
  assert lowest == pytest.approx(3.12 - 0.04 / 2**0.5)  # diloco p16: mean 3.12, std of 3.10, 3.14
  low, high, edge = study.zoom_limits(means, LM)
  highest = max(m + sd for cells in means.values() for _, m, sd, _ in cells)  # diloco p64
  assert (low, high, edge) == pytest.approx((lowest - study.PAD, lowest + 0.5, lowest + 0.5))
  assert highest > edge  # diloco p64 is beyond the zoom: marked at the top edge
  # accuracy: the zoom is below the highest cell, as before
  accuracy = {("pso", 8): [(4, 0.80, 0.01, 2), (16, 0.60, 0.0, 1)]}
  assert study.zoom_limits(accuracy, ACCURACY) == pytest.approx((0.71, 0.815, 0.71))
  # the time report's targets: the lowest cell's mean, 10, 5 and 2% worse
  runs = {k[:2]: [] for k in CURVES}
  for (v, p, _), c in CURVES.items():
    runs[(v, p)].append((clock.RunShape(p, W), [(16 * (i + 1), 0, f) for i, f in enumerate(c)]))
  assert time_report.default_targets(runs, LM) == (3.43, 3.28, 3.18)
  assert time_report.default_targets(runs, ACCURACY) == (0.83, 0.85, 0.87)


def reference_time(curve, target, shape, profile, reaches):
  """The first evaluation whose figure reaches the target, by hand, on the clock."""
  for steps, sent, figure in curve:
    if reaches(figure, target):
      return clock.projected_seconds(steps, sent, shape, profile)
  return None


def test_the_time_to_a_bits_per_byte_target_is_the_first_evaluation_at_or_below_it():
  shape, profile = clock.RunShape(period=16, model_bytes=W), clock.ratio_profile(1.0)
  curve = [(16, 1 * W, 4.0), (32, 2 * W, 3.4), (48, 3 * W, 3.5), (64, 4 * W, 3.2)]
  for target in (5.0, 3.45, 3.4, 3.3, 3.2, 3.1):
    want = reference_time(curve, target, shape, profile, lambda f, t: f <= t)
    assert clock.time_to_target(curve, target, shape, profile, LM) == want
  assert clock.time_to_target(curve, 3.45, shape, profile, LM) == pytest.approx(32 + 2)
  assert clock.time_to_target(curve, 3.1, shape, profile, LM) is None
  accuracy = [(16, 1 * W, 0.5), (32, 2 * W, 0.86), (48, 3 * W, 0.84), (64, 4 * W, 0.9)]
  for target in (0.4, 0.85, 0.86, 0.88, 0.95):
    want = reference_time(accuracy, target, shape, profile, lambda f, t: f >= t)
    assert clock.time_to_target(accuracy, target, shape, profile, ACCURACY) == want


def test_a_classification_study_keeps_its_accuracy_reports(tmp_path):
  out = tmp_path / "fmnist"
  rows = []
  for (variant, period, seed), c in CURVES.items():
    accuracies = [1 - f / 5 for f in c]
    row = fake_summary("classification", period, accuracies[-1]) | {
      "variant": variant,
      "num_particles": 8,
      "seed": seed,
      "diverged": False,
    }
    del row["task"], row["metric"]  # as the committed classification studies' rows
    rows.append(row | {"curve": [[16 * (i + 1), (i + 1) * W, a] for i, a in enumerate(accuracies)]})
  os.makedirs(out)
  (out / "results.json").write_text(json.dumps(rows))
  text = time_report.write_study(str(out), ratios=(1.0,), targets=(0.3,))
  assert sorted(os.listdir(out)) == ["accuracy_vs_time.png", "results.json", "time_to_accuracy.md"]
  assert text.startswith("# Time to accuracy (a projection")
  assert "at or above the target, over the seeds" in text and "## Time to 0.3 test accuracy" in text
  grid = lm_grid(base="configs/digits_pso.py")
  table = study.markdown(grid, rows, ACCURACY)
  assert "Final test accuracy of the exported model, mean ± std over seeds" in table
  assert "Gap to `ssgd` in points (variant - reference, x 100, paired by seed" in table
  study.plot_periods(grid, rows, str(out), ACCURACY)
  assert (out / "final_accuracy_vs_period.png").stat().st_size > 1000


def test_finalists_and_sensitivity_follow_the_metric():
  from studies import pick_finalists, sensitivity

  def row(variant, bpb, accuracy):
    return {"variant": variant, "final_test_accuracy": accuracy, "final_bits_per_byte": bpb}

  rows = [
    row("a", "3.3", "0.40"),
    row("b", "3.1", "0.30"),
    row("c", "", "0.35"),
    row("d", "3.2", ""),
  ]
  assert pick_finalists.finalists(rows, 3) == ["b", "d", "a"]  # lowest bits per byte first
  accuracy_rows = [{k: v for k, v in r.items() if k != "final_bits_per_byte"} for r in rows]
  assert pick_finalists.finalists(accuracy_rows, 3) == ["a", "c", "b"]  # highest accuracy first
  first = {("a", 16, 8, 0): fake_summary("language_model", 16, 3.30)}
  second = {("a", 16, 8, 0): fake_summary("language_model", 16, 3.25)}
  table = sensitivity.table(first, second)
  assert "second - first (bits per byte)" in table and "| -0.0500 | 0.0500 |" in table
