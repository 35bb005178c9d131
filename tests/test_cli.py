"""train.py on bad input: every case exits with code 2 and a short message that names what was
wrong, without a traceback; an internal error shows its traceback and says it is a bug. Real
processes, run side by side (most are refused before JAX starts)."""

import concurrent.futures
import os
import subprocess
import sys

import pytest

from psops_jax import host_devices

pytestmark = pytest.mark.slow  # each case starts a train.py process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERNAL_ERROR = "psops_jax: internal error (a bug): please report it with the traceback above"
with open(os.path.join(REPO, "configs", "cifar10_pso.py")) as f:  # where get_config(model) refuses
  CIFAR_RAISE_LINE = next(i for i, line in enumerate(f, 1) if "raise ValueError" in line)

# name: (arguments after train.py, text the message must hold). {tmp} is a scratch directory; a case
# without --workdir gets one (except "no_workdir").
CASES = {
  "int_field_not_a_number": (
    ["--config.sync.period=abc"],
    "--config.sync.period=abc: must be an integer",
  ),
  "float_field_not_a_number": (
    ["--config.optimizer.learning_rate=fast"],
    "--config.optimizer.learning_rate=fast: must be a number",
  ),
  "bool_field": (
    ["--config.train.allow_config_change=maybe"],
    "--config.train.allow_config_change=maybe: must be True or False",
  ),
  "nan": (["--config.sync.pso.social=nan"], "sync.pso.social=nan: must be a finite number >= 0.0"),
  "inf": (
    ["--config.optimizer.learning_rate=inf"],
    "optimizer.learning_rate=inf: accepted values are finite numbers > 0",
  ),
  "unknown_field": (
    ["--config.sync.perod=4"],
    "unknown config field in the command line: 'perod' Did you mean \"period\"",
  ),
  "override_before_config": (
    ["--config.sync.period=4", "--config", "configs/digits_pso.py"],
    "Found --config.sync.period=4 in argv before a value for --config",
  ),
  "missing_config_file": (
    ["--config", "configs/typo.py"],
    "--config configs/typo.py: no such file; pass a Python file that "
    "defines get_config(), e.g. configs/digits_pso.py",
  ),
  "config_file_raises": (
    ["--config", "{tmp}/name_error.py"],
    "--config {tmp}/name_error.py: line 3: NameError: name 'learning_rat' is not defined",
  ),
  "config_file_syntax": (
    ["--config", "{tmp}/syntax_error.py"],
    "--config {tmp}/syntax_error.py: line 2: SyntaxError",
  ),
  "config_file_returns_none": (
    ["--config", "{tmp}/returns_none.py"],
    "get_config() must return an ml_collections.ConfigDict",
  ),
  "config_argument": (
    ["--config=configs/digits_pso.py:fast"],
    "--config configs/digits_pso.py: cannot be loaded: TypeError: get_config() "
    "takes 0 positional arguments but 1 was given",
  ),
  "config_argument_not_a_model": (
    ["--config=configs/cifar10_pso.py:vgg"],
    f"--config configs/cifar10_pso.py: cannot be loaded: line {CIFAR_RAISE_LINE}: ValueError: the "
    "argument 'vgg' (configs/cifar10_pso.py:MODEL) names no model here; accepted values are "
    "('resnet20', 'vgg_small')",
  ),
  "unknown_flag": (
    ["--worker=3"],
    "Unknown command line flag 'worker'. Did you mean: workdir?; train.py's flags: --config",
  ),
  "positional_argument": (["digits"], "unexpected arguments ['digits']: train.py takes flags only"),
  "no_workdir": ([], "--workdir is required"),
  "workdir_under_a_file": (
    ["--workdir", "{tmp}/a_file/run"],
    "--workdir={tmp}/a_file/run cannot be created (Not a directory)",
  ),
  "workdir_is_a_file": (
    ["--workdir", "{tmp}/a_file"],
    "--workdir={tmp}/a_file is a file: pass a directory",
  ),
  "workdir_not_creatable": (
    ["--workdir", "/proc/psops_jax_test"],
    "--workdir=/proc/psops_jax_test cannot be created",
  ),
  "num_processes_not_a_number": (
    ["--num_processes=two"],
    "--num_processes=two: must be an integer",
  ),
  "local_cpu_devices_zero": (
    ["--local_cpu_devices=0"],
    "--local_cpu_devices=0: 0 is not a positive integer",
  ),
  "coordinator_alone": (
    ["--coordinator_address=127.0.0.1:1234"],
    "--coordinator_address needs --num_processes and --process_id",
  ),
  "coordinator_without_port": (
    ["--coordinator_address=host0", "--num_processes=2", "--process_id=0"],
    "--coordinator_address=host0: must be HOST:PORT",
  ),
  "process_id_out_of_range": (
    ["--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2"],
    "--process_id=2: must be in 0..1 (--num_processes=2)",
  ),
  "num_processes_alone": (
    ["--num_processes=2"],
    "--num_processes and --process_id go with --coordinator_address",
  ),
  "distributed_without_cluster": (
    ["--distributed"],
    "--distributed: jax.distributed.initialize() failed",
  ),
  "model_conv": (
    ["--config.model.conv=fft"],
    "model.conv='fft': accepted values are ('lax', 'im2col', 'im2col_input', 'auto')",
  ),
  "devices_do_not_divide": (
    ["--config.num_devices=3"],
    "num_particles=8 is not a multiple of num_devices=3",
  ),
}
CONFIG_FILES = {
  "name_error.py": "def get_config():\n  from configs import digits_pso\n  learning_rat.x = 1\n",
  "syntax_error.py": "def get_config():\n  return (\n",
  "returns_none.py": "def get_config():\n  return None\n",
}


def scratch(tmp) -> None:
  """The files the cases point at."""
  for name, text in CONFIG_FILES.items():
    (tmp / name).write_text(text)
  (tmp / "a_file").write_text("")


def arguments(name, tmp) -> list[str]:
  args = [a.replace("{tmp}", str(tmp)) for a in CASES[name][0]]
  if name != "no_workdir" and "--workdir" not in args:
    args += ["--workdir", str(tmp / "runs" / name)]
  return args


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
  """{case: (tmp, CompletedProcess)}, the cases run 4 at a time."""
  tmp = tmp_path_factory.mktemp("cli")
  scratch(tmp)
  env = host_devices.child_environment()
  run = lambda name: subprocess.run(
    [sys.executable, "train.py", *arguments(name, tmp)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=180,
  )
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return {name: (tmp, result) for name, result in zip(CASES, pool.map(run, CASES))}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_2_with_a_short_message_and_no_traceback(refusals, name):
  tmp, result = refusals[name]
  expected = CASES[name][1].replace("{tmp}", str(tmp))
  assert result.returncode == 2, result.stderr[-3000:]
  assert expected in result.stderr, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") or lines[-2].startswith("error: "), lines
  assert len(lines) <= 4, lines  # (absl may add a warning line before it)
  assert not os.path.exists(tmp / "runs" / name / "summary.json")


def test_an_internal_error_shows_its_traceback_and_says_it_is_a_bug(tmp_path):
  """A bug planted in train_and_evaluate: the traceback is kept (it is the bug report), exit 1."""
  plant = (
    "import runpy, sys; from psops_jax import train\n"
    "def broken(config, workdir): raise KeyError('planted bug')\n"
    "train.train_and_evaluate = broken\n"
    "sys.argv = ['train.py', '--workdir', sys.argv[1]]\n"
    "runpy.run_path('train.py', run_name='__main__')\n"
  )
  env = host_devices.child_environment()
  result = subprocess.run(
    [sys.executable, "-c", plant, str(tmp_path)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=180,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback (most recent call last)" in result.stderr
  assert "KeyError: 'planted bug'" in result.stderr
  assert result.stderr.strip().splitlines()[-1] == INTERNAL_ERROR


@pytest.mark.parametrize(
  "flag,value,message",
  [
    ("--timeout", "nan", "'nan': must be a finite number > 0"),
    ("--processes", "0", "'0': must be an integer > 0"),
  ],
)
def test_launch_local_refuses_bad_numbers(tmp_path, flag, value, message):
  result = subprocess.run(
    [sys.executable, "scripts/launch_local.py", flag, value, "--", "--workdir", str(tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
