"""studies/study.py end to end on a tiny digits grid: rows, tables, plots, resumability, cell
locks."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from psops_jax import host_devices, workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_STUDY = """
def get_config():
  study = {"base": "configs/digits_pso.py",
           "variants": {"pso": {"sync.strategy": "pso"}, "average": {"sync.strategy": "average"}},
           "periods": [4], "num_particles": [2], "seeds": [0], "total_steps": 16, "evals": 2,
           "overrides": {"model.name": "mlp", "sync.pso.probe_size": 64},
           "one_big_worker": True, "reference": "average"}
  study["quick"] = study
  return study
"""


def run_study(study_file, out, *flags):
  env = host_devices.child_environment()
  result = subprocess.run(
    [sys.executable, "studies/study.py", "--study", str(study_file), "--out", str(out), *flags],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow
def test_study_runs_the_grid_reports_and_resumes(tmp_path):
  study_file = tmp_path / "tiny_study.py"
  study_file.write_text(TINY_STUDY)
  out = tmp_path / "out"
  first = run_study(study_file, out)
  assert "[1/3] pso_p4_n2_s0" in first and "[3/3] one_big_worker_n2_s0" in first
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["variant"] for r in rows) == ["average", "one big worker", "pso"]
  for row in rows:
    summary = json.loads(
      (
        out
        / "runs"
        / {
          "pso": "pso_p4_n2_s0",
          "average": "average_p4_n2_s0",
          "one big worker": "one_big_worker_n2_s0",
        }[row["variant"]]
        / "summary.json"
      ).read_text()
    )
    assert float(row["final_test_accuracy"]) == summary["final_test_accuracy"]
  big = next(r for r in rows if r["variant"] == "one big worker")
  assert int(big["steps"]) == 32  # 2 particles x 16 steps, as one worker
  table = (out / "results.md").read_text()
  assert "| pso |" in table and "| average |" in table
  version = json.loads((out / "runs" / "pso_p4_n2_s0" / "summary.json").read_text())["code_version"]
  assert f"Made by commit {version} (3 runs)." in table
  assert f"the same samples, no sync): {float(big['final_test_accuracy']):.4f} (n=1)." in table
  accuracy = {r["variant"]: float(r["final_test_accuracy"]) for r in rows}
  assert "Gap to `average`" in table  # one seed: the gap is pso - average, in points
  assert f"| pso | {100 * (accuracy['pso'] - accuracy['average']):+.1f} (n=1) |" in table
  pso = next(r for r in rows if r["variant"] == "pso")
  assert (
    f"| pso | {int(pso['communicated_bytes_per_particle']) / 1e6:.1f} MB, "
    f"{float(pso['train_seconds']):.0f} s |"
  ) in table  # one seed: its own seconds
  for key in ("steps", "bytes", "seconds"):
    assert (out / f"accuracy_vs_{key}_n2.png").stat().st_size > 1000
  assert (out / "runs" / "pso_p4_n2_s0" / "run.lock").read_text() == ""  # the cell's lock, released
  check_time_report(out)
  second = run_study(study_file, out)  # every cell finished: nothing re-runs
  assert "[1/3]" not in second and "| pso |" in second
  run_study(study_file, out, "--variants", "pso", "--report-only")  # a slice still reports it all
  with open(out / "results.csv") as f:
    assert sorted(r["variant"] for r in csv.DictReader(f)) == ["average", "one big worker", "pso"]
  two_periods = tmp_path / "two_periods.py"
  two_periods.write_text(TINY_STUDY.replace('"periods": [4]', '"periods": [4, 8]'))
  run_study(two_periods, out, "--report-only")  # period 8 never ran: no plot against the period
  assert "| pso | 0." in (out / "results.md").read_text()
  assert not (out / "final_accuracy_vs_period.png").exists()
  # a cell whose workdir is gone (runs/ is not committed) keeps its row from results.json
  before = json.loads((out / "results.json").read_text())
  shutil.rmtree(out / "runs" / "average_p4_n2_s0")
  run_study(study_file, out, "--report-only")
  assert json.loads((out / "results.json").read_text()) == before
  check_recheck(study_file, out)


def check_recheck(study_file, out):
  """--check re-runs finished cells: one whose workdir is gone passes against its row of
  results.json (bit-identical on an unmodified checkout, else within the tolerance); one whose
  record was altered fails, and the check exits 1."""
  path = out / "runs" / "pso_p4_n2_s0" / "summary.json"
  summary = json.loads(path.read_text())
  path.write_text(
    json.dumps(
      summary
      | {"final_test_accuracy": summary["final_test_accuracy"] - 0.5, "params_fingerprint": "0"}
    )
  )
  env = host_devices.child_environment()
  checked = subprocess.run(
    [sys.executable, "studies/study.py", "--study", str(study_file), "--out", str(out)]
    + ["--check", "2", "--variants", "pso", "average"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert checked.returncode == 1, checked.stdout + checked.stderr
  verdicts = {line.split(":")[0].strip(): line for line in checked.stdout.splitlines()}
  assert verdicts["average_p4_n2_s0"].endswith("PASS: bit-identical"), checked.stdout
  assert "FAIL" in verdicts["pso_p4_n2_s0"], checked.stdout


def check_time_report(out):
  """results.json keeps each run's curve and clock inputs; studies/time_report.py puts them on a
  ratio: at r = 1, the first evaluation at the target costs steps + bytes / model_bytes
  all-reduces of the full weights."""
  rows = {r["variant"]: r for r in json.loads((out / "results.json").read_text())}
  average = rows["average"]
  assert [point[0] for point in average["curve"]] == [8, 16]  # evaluated at round 2 and the end
  assert average["curve"][-1][1] == average["communicated_bytes_per_particle"]
  assert average["collective"] == {"kind": "all_reduce", "per_step": False, "hidden_rounds": 0}
  assert rows["one big worker"]["collective"]["kind"] == "none"
  assert "## Time to 0.85 test accuracy" in (out / "time_to_accuracy.md").read_text()
  assert (out / "accuracy_vs_time.png").stat().st_size > 1000
  target = average["final_test_accuracy"]
  steps, sent, reached = next(p for p in average["curve"] if p[2] >= target)
  want = steps + sent / average["model_bytes"]
  report = subprocess.run(
    [
      sys.executable,
      "studies/time_report.py",
      str(out),
      "--ratio",
      "1",
      "--target",
      str(target),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert report.returncode == 0, report.stderr
  assert f"| average | 4 | {want:.3g}" in report.stdout.replace("**", "")
  one_run = subprocess.run(
    [sys.executable, "studies/time_report.py", str(out / "runs" / "average_p4_n2_s0")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert one_run.returncode == 0, one_run.stderr
  assert f"| {steps} | {sent / 1e6:.2f} | {reached:.4f} |" in one_run.stdout


def test_a_cell_lock_shares_cells_between_processes_and_stale_locks_are_taken_over(
  tmp_path, capsys
):
  from studies import study

  cell = tmp_path / "runs" / "pso_p4_n2_s0"
  lock = study.take_cell(str(cell))  # free: ours (the workdir's lock, psops_jax/workdir.py)
  assert json.loads((cell / "run.lock").read_text())["pid"] == os.getpid()
  assert study.take_cell(str(cell)) is None  # held by a live process (this one)
  lock.release()
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (cell / "run.lock").write_text(json.dumps({"host": "h", "pid": dead.pid}))  # a killed study's
  with study.take_cell(str(cell)):
    assert json.loads((cell / "run.lock").read_text())["pid"] == os.getpid()
  assert f"left by pid {dead.pid} on host h" in capsys.readouterr().err


def test_period_means_are_the_mean_and_std_over_seeds_of_the_finished_runs(tmp_path):
  from studies import study

  def row(variant, period, seed, accuracy, diverged=False):
    return {
      "variant": variant,
      "period": period,
      "num_particles": 8,
      "seed": seed,
      "diverged": diverged,
      "final_test_accuracy": accuracy,
    }

  rows = [
    row("pso", 64, 0, 0.80),
    row("pso", 4, 0, 0.70),
    row("pso", 4, 1, 0.74),
    row("pso", 4, 2, None, diverged=True),
    row(study.BIG_WORKER, 64, 0, 0.9),
    row("average", 4, 0, 0.85),
  ]
  means = study.period_means(rows)
  assert sorted(means) == [("average", 8), ("pso", 8)]  # the big worker is not a period line
  (p4, mean4, std4, n4), (p64, mean64, std64, n64) = means[("pso", 8)]
  assert (p4, n4, p64, n64) == (4, 2, 64, 1)
  assert abs(mean4 - 0.72) < 1e-12 and abs(std4 - 0.04 / 2**0.5) < 1e-12  # sample std of .70, .74
  assert (mean64, std64) == (0.80, 0.0)
  grid = study.Study(variants={"pso": {}, "average": {}}, periods=[4, 64], num_particles=[8])
  study.plot_periods(grid, rows, str(tmp_path))
  assert (tmp_path / "final_accuracy_vs_period.png").stat().st_size > 1000


def test_the_same_grid_runs_on_another_base_config_with_overrides_for_every_cell():
  import pytest

  from studies import study

  grid = study.Study(
    base="configs/fashion_mnist_pso.py",
    overrides={"data.validation_size": 0},
    variants={"pso": {"sync.strategy": "pso"}},
    periods=[16],
    num_particles=[8],
    seeds=[0],
    total_steps=32,
    evals=1,
    one_big_worker=False,
  )
  mnist = study.with_base(grid, os.path.join(REPO, "configs", "mnist_pso.py"), ["data.source=tfds"])
  assert grid.base == "configs/fashion_mnist_pso.py" and "data.source" not in grid.overrides
  ((_, _, _, _, _, overrides),) = study.cells(mnist)
  args = study.command(mnist, "/tmp/w", overrides)
  assert args[args.index("--config") + 1] == os.path.join(REPO, "configs", "mnist_pso.py")
  assert "--config.data.source=tfds" in args and "--config.data.validation_size=0" in args
  with pytest.raises(study.BadInput, match="expected KEY=VALUE"):
    study.with_base(grid, None, ["data.source"])
  with pytest.raises(study.BadInput, match="no such run config"):
    study.with_base(grid, "configs/nope.py", [])


def test_paired_gap_gives_the_t_interval_and_marks_only_intervals_without_zero():
  sys.path.insert(0, REPO)
  from studies import study

  # gaps 1.0, 1.0, 0.9 points: mean 0.967, sd 0.0577, t(0.975, 2) = 4.303, half-width 0.143
  assert study.paired_gap({0: 0.87, 1: 0.88, 2: 0.875}, {0: 0.86, 1: 0.87, 2: 0.866}) == (
    "+1.0 [+0.8, +1.1]* (n=3)"
  )
  # gaps +1 and -1: mean 0, sd 1.414, t(0.975, 1) = 12.706, half-width 12.7: no difference
  assert study.paired_gap({0: 0.87, 1: 0.86}, {0: 0.86, 1: 0.87}) == "+0.0 [-12.7, +12.7] (n=2)"
  assert study.paired_gap({0: 0.87, 5: 0.5}, {0: 0.86}) == "+1.0 (n=1)"  # paired seeds only
  assert study.paired_gap({1: 0.87}, {0: 0.86}) == "—"


@pytest.mark.parametrize(
  "study_file,out,flags,message",
  [
    ("tiny", "o", ["--grid", "nope"], "--grid nope: "),
    ("tiny", "o", ["--variants", "nope"], "--variants ['nope']: not in the study's variants"),
    ("tiny", "o", ["--seeds", "7"], "--seeds [7]: not in the study's seeds [0]"),
    ("tiny", "o", ["--report-only"], "no finished runs"),
    ("tiny", "o", ["--set", "data.source"], "expected KEY=VALUE"),
    ("configs/nope.py", "o", [], "--study configs/nope.py: no such study config file"),
    ("configs/study_outer.py", "file/o", [], "cannot make this directory"),
  ],
)
def test_bad_input_exits_2_with_a_message_naming_the_flag(
  tmp_path, study_file, out, flags, message
):
  if study_file == "tiny":
    study_file = str(tmp_path / "tiny_study.py")
    (tmp_path / "tiny_study.py").write_text(TINY_STUDY)
  (tmp_path / "file").write_text("")
  result = subprocess.run(
    [sys.executable, "studies/study.py", "--study", study_file, "--out", str(tmp_path / out)]
    + flags,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 2 and message in result.stderr, result.stderr
  assert "Traceback" not in result.stderr


def test_the_code_line_says_whether_several_commits_share_their_training_code(monkeypatch):
  sys.path.insert(0, REPO)
  from studies import study

  rows = [{"code_version": "a"}, {"code_version": "a"}, {"code_version": "b"}]
  assert study.code_line(rows[:2]) == "Made by commit a (2 runs)."
  monkeypatch.setattr(study.workdir_lib, "training_code", lambda commit: "ids")
  assert study.code_line(rows) == (
    "Made by commits a (2 runs), b (1 runs), with the same training code (psops_jax/ and train.py "
    "but the clock and workdir modules)."
  )
  with_diverged = rows + [{}]  # a run that records no commit; the others still share code
  assert study.code_line(with_diverged).endswith(
    "not recorded (1 runs), with the same training "
    "code (psops_jax/ and train.py but the clock and workdir modules)."
  )
  monkeypatch.setattr(study.workdir_lib, "training_code", lambda commit: commit)
  assert study.code_line(rows).endswith("with training code that differs or is not known.")


def test_a_diverged_run_keeps_its_steps_and_provenance(tmp_path):
  """collect() on hand-made diverged.json files: one as train.py writes it now (with
  train.provenance()), one from before it recorded its commit and machine."""
  sys.path.insert(0, REPO)
  from psops_jax import train
  from studies import study

  grid = study.Study(
    variants={"average": {"sync.strategy": "average"}},
    periods=[4],
    num_particles=[2],
    seeds=[0, 1],
    total_steps=16,
    evals=2,
    overrides={},
    one_big_worker=False,
  )
  made = train.provenance()
  records = {0: {"diverged": True, "steps": 8} | made, 1: {"diverged": True, "steps": 4}}
  for seed, record in records.items():
    os.makedirs(tmp_path / "runs" / f"average_p4_n2_s{seed}")
    (tmp_path / "runs" / f"average_p4_n2_s{seed}" / "diverged.json").write_text(json.dumps(record))
  rows, curves = study.collect(grid, str(tmp_path))
  assert [(r["seed"], r["steps"], r["diverged"]) for r in rows] == [(0, 8, True), (1, 4, True)]
  assert all(r["final_test_accuracy"] is None for r in rows) and curves == {}
  assert {k: rows[0][k] for k in made} == made and made["machine"] == workdir.machine_kind()
  assert all(rows[1][k] is None for k in made)
  assert study.machine_line(rows) == f"Run on {made['machine']} (1 runs), not recorded (1 runs)."


def test_the_report_names_its_machines_and_gives_a_gap_table_per_reference():
  sys.path.insert(0, REPO)
  from studies import study

  rows = [{"machine": "X x2"}, {"machine": "Y x2"}, {"machine": "X x2"}, {}]
  assert study.machine_line(rows) == "Run on X x2 (2 runs), Y x2 (1 runs), not recorded (1 runs)."
  grid = study.Study(variants={"a": {}, "b": {}, "c": {}}, periods=[4])
  assert study.references(study.Study(grid, reference="b")) == ["b"]
  assert study.references(study.Study(grid, reference=["c", "a", "gone"])) == ["c", "a"]
  assert study.references(grid) == []
  accuracy = {"a": [0.80, 0.82], "b": [0.81, 0.82], "c": [0.70, 0.70]}
  groups = {
    (v, 4, 8): [{"seed": s, "final_test_accuracy": x, "diverged": False} for s, x in enumerate(xs)]
    for v, xs in accuracy.items()
  }
  lines = study.gap_lines(study.Study(grid, reference=["a", "c"]), groups, 8, "c")
  assert lines[0].startswith("Gap to `c` in points")
  rows = {line.split(" | ")[0]: line for line in lines if line.startswith("| a") or "| b |" in line}
  # a - c: +10, +12 points: mean 11, half-width t(0.975, 1) 12.706 x std 1.414 / sqrt(2) = 12.7
  assert rows["| a"] == "| a | +11.0 [-1.7, +23.7] (n=2) |"
  # b - c: +11, +12: mean 11.5, half-width 12.706 x 0.707 / sqrt(2) = 6.35, excludes zero
  assert rows["| b"] == "| b | +11.5 [+5.1, +17.9]* (n=2) |"


def test_the_fastest_is_chosen_among_variants_with_at_least_3_seeds(monkeypatch):
  sys.path.insert(0, REPO)
  from studies import time_report

  # each run list holds its variant's label; mean_time gives that label's time for every seed
  runs = {("a", 16): ["a"] * 5, ("b", 16): ["b"] * 3, ("c", 16): ["c"], ("ssgd", 16): ["s"] * 5}
  mean = {"a": 50.0, "b": 40.0, "c": 10.0, "s": 100.0}
  accuracy = time_report.headline.METRICS["classification"]
  monkeypatch.setattr(time_report, "mean_time", lambda rs, target, p, m: (mean[rs[0]], len(rs)))
  lines = time_report.time_table(runs, {"r = 1": None}, 0.8, accuracy)
  assert "| b | 16 | **40** |" in lines and "| c | 16 | 10 |" in lines  # c: one seed, not ranked
  assert lines[-2:] == ["| **fastest** | | b p16 |", "| ssgd's time / fastest | | 2.5x |"]
  runs = {key: group[:1] for key, group in runs.items()}  # one seed each: all compete
  assert time_report.time_table(runs, {"r = 1": None}, 0.8, accuracy)[-2] == (
    "| **fastest** | | c p16 |"
  )
