"""Every command in the README's bash blocks is run here at toy size (or, for the set-up and test
commands, checked against what .ci/run runs): a command added to the README without a case here
fails `test_every_readme_command_has_a_case`."""

import json
import os
import re
import shutil
import subprocess
import sys

import fake_data
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = 'python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" && '
TOY = [
  "--config.train.rounds=2",
  "--config.sync.period=2",
  "--config.train.batch_size=8",
  "--config.sync.pso.probe_size=32",
  "--config.train.eval_every=0",
  "--config.num_particles=2",
]


def readme_commands() -> list[str]:
  with open(os.path.join(REPO, "README.md")) as f:
    blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.S)
  return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def run_train(command: str, workdir: str, extra: list[str]) -> dict:
  """A README train.py command with its --workdir replaced and toy-size flags added."""
  args = command.replace(".venv/bin/python", sys.executable).split()
  args[args.index("--workdir") + 1] = workdir
  done = subprocess.run(args + TOY + extra, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def ci_commands() -> list[str]:
  with open(os.path.join(REPO, ".ci", "run")) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def case_setup_and_default_run(command, tmp_path):
  assert command.startswith(SETUP)  # the same install as .ci/run
  assert any(line.startswith(SETUP.rstrip("& ")) for line in ci_commands())
  summary = run_train(command[len(SETUP) :], str(tmp_path / "run"), [])
  assert summary["config"]["data"]["name"] == "digits" and summary["strategy"] == "pso"


def case_setup_and_tests(command, tmp_path):
  assert command.startswith(SETUP)
  assert command[len(SETUP) :] in ci_commands()  # CI runs exactly the README's test command


def case_fast_tests(command, tmp_path):
  """The fast subset: collected here (running it would run the suite inside the suite)."""
  assert command.endswith('-m pytest -q -m "not slow" tests')
  args = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
  done = subprocess.run(
    args + ["-m", "not slow", "tests"], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stdout[-2000:]
  selected = [line for line in done.stdout.splitlines() if "::" in line]
  assert len(selected) > 50
  slow = ("test_runs_top_to_bottom", "test_cpu_smoke", "test_configs.py", "test_readme_command")
  assert not any(name in line for line in selected for name in slow)


def case_fashion_mnist(command, tmp_path):
  fake_data.write_mnist_dir(str(tmp_path / "data"), n_train=200, n_test=40)
  summary = run_train(command, str(tmp_path / "run"), [f"--config.data.dir={tmp_path / 'data'}"])
  assert summary["config"]["model"]["name"] == "lenet5"


def case_cifar10(command, tmp_path):
  """The config's default source is TFDS (network); here its python batches, written by the test."""
  fake_data.write_cifar10_dir(str(tmp_path / "data"), per_batch=64)  # as test_configs.py's
  summary = run_train(
    command,
    str(tmp_path / "run"),
    ["--config.data.source=files", f"--config.data.dir={tmp_path / 'data'}"],
  )
  assert summary["config"]["model"]["name"] == "resnet20"


def case_accelerator_check(command, tmp_path):
  """Run by tests/test_accelerator_check.py in its --cpu-smoke mode (every part at toy size)."""
  with open(os.path.join(REPO, "tests", "test_accelerator_check.py")) as f:
    assert '"benchmarks/accelerator_check.py", "--cpu-smoke"' in f.read()
  assert command.endswith("benchmarks/accelerator_check.py")


def case_time_report(command, tmp_path):
  """The committed time-to-accuracy report is what the command makes from the committed curves:
  run on a copy of the study's results.json, it writes the same time_to_accuracy.md."""
  study = command.split()[2]
  os.makedirs(tmp_path / "study")
  shutil.copy(os.path.join(REPO, study, "results.json"), tmp_path / "study")
  args = command.replace(".venv/bin/python", sys.executable).replace(study, str(tmp_path / "study"))
  done = subprocess.run(args.split(), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(REPO, study, "time_to_accuracy.md")) as f:
    assert (tmp_path / "study" / "time_to_accuracy.md").read_text() == f.read()
  assert (tmp_path / "study" / "accuracy_vs_time.png").stat().st_size > 1000


def case_install_fortunes(command, tmp_path):
  """The offline text: .ci/run installs the same package, so the text is where the loader looks."""
  from psops_jax import text

  assert command == "sudo apt-get install -y fortunes"
  assert any("apt-get install -y -q fortunes" in line for line in ci_commands())
  assert text.fortune_documents(text.FORTUNES_DIR)  # real fortunes, the default source's


def case_text_lm(command, tmp_path):
  """The language model on the real fortunes (.ci/run installs them), at toy size (no warmup in
  its 4 steps): it writes the task's metric beside the text's unigram entropy."""
  summary = run_train(command, str(tmp_path / "run"), ["--config.optimizer.warmup_steps=0"])
  assert summary["task"] == "language_model" and summary["config"]["data"]["source"] == "fortunes"
  assert summary["metric"]["key"] == "final_bits_per_byte"
  assert 4.0 < summary["unigram_bits_per_byte"] < 5.5  # English text at 1 byte per character
  assert 0.0 < summary["final_bits_per_byte"] <= 8.0 + 1.0  # 4 steps: about uniform (8 bits)


FMNIST = (
  ".venv/bin/python train.py --config configs/fashion_mnist_pso.py --workdir workdirs/fmnist_pso"
)
CIFAR = ".venv/bin/python train.py --config configs/cifar10_pso.py --workdir workdirs/cifar10_pso"
CASES = {
  SETUP + ".venv/bin/python train.py --config configs/digits_pso.py --workdir "
  "workdirs/digits_pso": case_setup_and_default_run,
  SETUP + ".venv/bin/python -m pytest -q -n 2 tests": case_setup_and_tests,
  '.venv/bin/python -m pytest -q -m "not slow" tests': case_fast_tests,
  "sudo apt-get install -y fortunes": case_install_fortunes,
  ".venv/bin/python train.py --config configs/text_lm.py --workdir workdirs/text_lm": case_text_lm,
  FMNIST: case_fashion_mnist,
  CIFAR: case_cifar10,
  ".venv/bin/python benchmarks/accelerator_check.py": case_accelerator_check,
  ".venv/bin/python studies/time_report.py studies/results/study_outer": case_time_report,
}


def test_every_readme_command_has_a_case():
  assert set(readme_commands()) == set(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(CASES))
def test_readme_command(command, tmp_path):
  CASES[command](command, tmp_path)
