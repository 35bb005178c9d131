"""studies/best_worker.py on hand-made metrics.jsonl files: rounds and runs per worker, workers
never the best listed with 0, a directory without runs refused."""

import json
import os
import subprocess
import sys

from studies import best_worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(directory, name, bests, workers=4):
  os.makedirs(directory / "runs" / name)
  lines = [{"round": r, "train_loss_particles": [1.0] * workers} for r in range(len(bests))]
  for line, best in zip(lines, bests):
    if best is not None:  # a round logged without a global best (another strategy's) is skipped
      line["global_best_particle"] = best
  (directory / "runs" / name / "metrics.jsonl").write_text(
    "".join(json.dumps(l) + "\n" for l in lines)
  )


def test_counts_per_worker_over_runs(tmp_path):
  write_run(tmp_path, "pso_p16_n4_s0", [0, 0, 1, None])
  write_run(tmp_path, "pso_p16_n4_s1", [1, 2, 2])
  write_run(tmp_path, "average_p16_n4_s0", [3, 3])  # another variant: not counted
  rounds, runs, total, workers = best_worker.best_counts(str(tmp_path))
  assert total == 6 and workers == 4
  assert [rounds[w] for w in range(4)] == [2, 2, 2, 0]
  assert [runs[w] for w in range(4)] == [1, 2, 1, 0]
  command = [sys.executable, "studies/best_worker.py", str(tmp_path)]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert "6 logged rounds over 2 runs of pso" in done.stdout
  assert "  worker 3: the best in 0 rounds, in 0 runs" in done.stdout
  bad = subprocess.run(
    [sys.executable, "studies/best_worker.py", str(tmp_path / "none")],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert bad.returncode == 2 and "global_best_particle" in bad.stderr
  assert "Traceback" not in bad.stderr
