"""The default digits run's `params_fingerprint` for each sync strategy: the check that a refactor
changed no number.

  python scripts/strategy_fingerprints.py --out /tmp/fingerprints [--strategies pso average ...]

Runs `train.py --config configs/digits_pso.py` once per strategy (workdir OUT/NAME; a finished
workdir is read, not re-run) and prints one line per strategy: name, fingerprint, final test
accuracy. Fingerprints compare on one kind of CPU only (XLA:CPU's last bits differ between kinds).
"""

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> the config overrides of the run (the default digits config otherwise)
RUNS = {
  "pso": [],
  "average": ["--config.sync.strategy=average"],
  "diloco": ["--config.sync.strategy=diloco"],
  "ssgd": ["--config.sync.strategy=ssgd"],
  "easgd": ["--config.sync.strategy=easgd"],
  "topk_average": ["--config.sync.strategy=topk_average"],
  "robust_average": ["--config.sync.strategy=robust_average"],
  "best_pull": ["--config.sync.strategy=best_pull"],
  "streaming": ["--config.sync.strategy=streaming"],
  # int8 pseudo-gradients averaged, no outer step (with the default Nesterov step this run
  # diverges at round 21 on digits)
  "outer_int8": [
    "--config.sync.strategy=outer",
    "--config.sync.outer.compress=int8",
    "--config.sync.outer.optimizer=none",
  ],
  "pso_average": ["--config.sync.strategy=pso_average"],
  "none": ["--config.sync.strategy=none"],
}


def fingerprint(name: str, out: str) -> tuple[str, float]:
  """(params_fingerprint, final_test_accuracy) of run `name`, running it if its workdir has no
  summary."""
  workdir = os.path.join(out, name)
  summary_path = os.path.join(workdir, "summary.json")
  if not os.path.exists(summary_path):
    command = [sys.executable, os.path.join(REPO, "train.py"), "--config"]
    command += [os.path.join(REPO, "configs", "digits_pso.py"), "--workdir", workdir, *RUNS[name]]
    subprocess.run(
      command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
  with open(summary_path) as f:
    summary = json.load(f)
  return summary["params_fingerprint"], summary["final_test_accuracy"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="directory of the runs' workdirs")
  parser.add_argument("--strategies", nargs="+", choices=tuple(RUNS), default=tuple(RUNS))
  args = parser.parse_args()
  for name in args.strategies:
    digest, accuracy = fingerprint(name, args.out)
    print(f"{name:15s} {digest[:16]} {accuracy:.4f}", flush=True)


if __name__ == "__main__":
  main()
