"""The errors a user sees: one table of exit codes (psops_jax/errors.py, docs/usage.md), and the
config mistakes that once passed the checks, refused by train.py with exit 2 and the field."""

import os
import re
import subprocess
import sys

import pytest

from psops_jax import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def documented_exit_codes() -> dict:
  """code -> meaning, from the table under '## Exit codes of `train.py`' in docs/usage.md."""
  with open(os.path.join(REPO, "docs", "usage.md")) as f:
    text = f.read()
  section = text.split("## Exit codes of `train.py`", 1)[1].split("\n## ", 1)[0]
  return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| (.+) \|$", section, re.M)}


def test_the_documented_exit_codes_are_the_librarys():
  assert set(documented_exit_codes()) == {code for code, _ in errors.EXIT_CODES}
  assert errors.Diverged("x").exit_code == errors.EXIT_DIVERGED == 3
  assert errors.Preempted(4, "d").exit_code == errors.EXIT_PREEMPTED == 75
  assert errors.WorkerLost([1], 14, 10, "d").exit_code == errors.EXIT_WORKER_LOST == 69


def test_a_plain_value_error_of_the_library_is_not_bad_input():
  """train.py's rule: BadInput subclasses only (a ValueError raised by a bug is a bug)."""
  import train

  assert train.bad_input_message(errors.ConfigError("sync.topk=0: ..."), "/tmp/w") is not None
  assert train.bad_input_message(ValueError("shapes do not match"), "/tmp/w") is None


@pytest.mark.slow
@pytest.mark.parametrize(
  "flags, message",
  [
    (["--config.sync.outer.aggregate=topk", "--config.sync.topk=0"], "sync.topk=0: accepted"),
    (
      ["--config.sync.outer.aggregate=topk", "--config.sync.topk=20"],
      "sync.topk=20: accepted values are the integers 1..8 (num_particles)",
    ),
  ],
)
def test_train_py_refuses_the_outer_topk_mistakes(tmp_path, flags, message):
  """The two mistakes that once trained to divergence or to 0.08 accuracy: exit 2, the field."""
  command = [sys.executable, "train.py", "--config", "configs/digits_pso.py"]
  command += ["--config.sync.strategy=outer", *flags, "--workdir", str(tmp_path / "w")]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == errors.EXIT_BAD_INPUT, done.stderr[-2000:]
  assert message in done.stderr and "Traceback" not in done.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()
