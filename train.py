"""Train a swarm of particles with PSO-PS (or another sync strategy).

  python train.py --config configs/digits_pso.py --workdir /tmp/digits_pso [--config.sync.period=4
  ...]

Writes WORKDIR/metrics.jsonl (one line per logged round), WORKDIR/summary.json and checkpoints in
WORKDIR/checkpoints; rerunning the same command on the same WORKDIR resumes from the newest
checkpoint that restores (a damaged newer one is moved to WORKDIR/checkpoints_damaged/). A run
holds WORKDIR/run.lock: a second run on a WORKDIR that a live run holds is refused.

Multi-host (JAX's multi-controller runtime): one process per host, each started with
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
or --distributed to let jax.distributed.initialize() read a cluster's environment (SLURM, TPU pod).
On CPU, processes talk over gloo. scripts/launch_local.py starts N such processes on this machine.
When a process of such a run dies, every other one exits within about 15 s (exit code 69) with one
line that names the lost process, the round and the checkpoint a rerun resumes from.

Exit codes (psops_jax/errors.py, the one place for them): 0 done; 2 bad input: a flag, a config
field or file, the data, the workdir (or another live run on it), with a short message that names it
and no traceback; 3 all particles diverged; 69 another process of a multi-process run was lost
(rerun to resume from the checkpoint it names); 74 the workdir's disk refused a write (full, over
quota, read-only: one line with the space left and the checkpoint a rerun resumes from, the partial
one removed); 75 preempted by SIGTERM (checkpoint written: rerun to resume); 1 an internal error (a
bug): its traceback, then a line that says so. Only an exception the library raises as
errors.BadInput is reported as bad input.
"""

import contextlib
import logging as std_logging
import os
import re
import sys
import traceback

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

# no JAX in them: JAX starts after the flags set XLA_FLAGS
from psops_jax import errors, host_devices
from psops_jax import workdir as workdir_lib

DEFAULT_CONFIG = "configs/digits_pso.py"
# absl's reasons for a flag value it cannot parse, and what the message says instead
FLAG_REASONS = (
  ("invalid literal for int()", "must be an integer"),
  ("could not convert string to float", "must be a number"),
  ("Non-boolean argument", "must be True or False"),
)

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, summary and checkpoints.")
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "Multi-host: HOST:PORT of process 0's coordinator."
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Multi-host: number of processes.", lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "Multi-host: this process's index.", lower_bound=0
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Multi-host: jax.distributed.initialize() from the cluster's environment (SLURM, TPU pod, ...).",
)
_LOCAL_DEVICES = flags.DEFINE_integer(
  "local_cpu_devices",
  None,
  "CPU devices of this process (default: as many as the config needs, in a single process).",
  lower_bound=1,
)
# --config: define_config_flag() below, where an error in the config file can be reported


def fail(message: str):
  """Exit with code 2 and `message`: a problem with what the user typed or pointed at."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(errors.EXIT_BAD_INPUT)


def config_path(argv) -> str:
  """The config file that argv names with --config (without a `:argument`), or the default."""
  path = DEFAULT_CONFIG
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
  return path.split(":", 1)[0]


def missing_config_message(path: str) -> str | None:
  """Why `path` cannot be a config file (not a readable file), or None."""
  if not os.path.isfile(path):
    return (
      f"--config {path}: no such file; pass a Python file that defines get_config(), "
      f"e.g. {DEFAULT_CONFIG}"
    )
  if not os.access(path, os.R_OK):
    return f"--config {path}: not readable by this user"
  return None


def config_code_message(path: str, error: BaseException) -> str | None:
  """`--config PATH: line N: Error: message` when `error` was raised by the config file's code (a
  frame of its traceback, or a syntax error, lies in the file), else None."""
  same = lambda f: bool(f) and os.path.abspath(f) == os.path.abspath(path)
  lines = [
    frame.lineno for frame in traceback.extract_tb(error.__traceback__) if same(frame.filename)
  ]
  if isinstance(error, SyntaxError) and same(error.filename):
    return f"--config {path}: line {error.lineno}: SyntaxError: {error.msg}"
  if not lines:
    return None
  return f"--config {path}: line {lines[-1]}: {type(error).__name__}: {error}"


def flag_error_message(error: flags.Error, path: str) -> str:
  """absl's complaint about a flag, as `--flag=value: what is accepted`."""
  if isinstance(error, flags.UnrecognizedFlagError):  # absl may add "Did you mean: workdir ?"
    return (
      f"{str(error).replace(' ?', '?')}; train.py's flags: --config, "
      "--config.FIELD=VALUE, --workdir, --coordinator_address, --num_processes, "
      "--process_id, --distributed, --local_cpu_devices (--helpfull explains them)"
    )
  match = re.match(r"flag --([^=]+)=(.*?): (.*)", str(error), re.DOTALL)
  if not match:
    return str(error).strip().splitlines()[0]
  name, value, reason = match.groups()
  if name == "config":  # get_config() raised TypeError or ValueError: absl gives its traceback
    where = re.findall(rf'File "[^"]*{re.escape(os.path.basename(path))}", line (\d+)', reason)
    line = f"line {where[-1]}: " if where else ""
    return f"--config {path}: cannot be loaded: {line}{reason.strip().splitlines()[-1]}"
  for said, meant in FLAG_REASONS:
    reason = meant if said in reason else reason
  return f"--{name}={value}: {reason}"


def parse_error_message(error: Exception, path: str) -> str | None:
  """The message for an error in the flags or in the config file `path`, or None when the error
  is neither (a bug)."""
  if isinstance(error, flags.Error):
    return flag_error_message(error, path)
  message = missing_config_message(path) or config_code_message(path, error)
  if message is None and isinstance(error, (AttributeError, KeyError)):  # --config.typo=...
    message = str(error).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    message = f"unknown config field in the command line: {message}"
  return message


@contextlib.contextmanager
def user_input_errors(path: str):
  """Inside: an error in the flags or the config file exits with code 2 and its message."""
  try:
    yield
  except Exception as e:
    message = parse_error_message(e, path)
    if message is None:
      raise
    fail(message)


def define_config_flag():
  """--config. Without --config on the command line, ml_collections loads the default config here,
  at import, with the command line's overrides: their errors are reported here too."""
  with user_input_errors(config_path(sys.argv)):
    return config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Path to a config file.")


_CONFIG = define_config_flag()


def parse_flags(argv):
  """absl flag parsing; a bad flag, config field, value or config file exits with code 2 and one
  message that names it."""
  path = config_path(argv)
  with user_input_errors(path):
    rest = flags.FLAGS(argv)
  if not isinstance(flags.FLAGS["config"].value, ml_collections.ConfigDict):
    fail(
      missing_config_message(path)  # a load error, or get_config() returned something else
      or f"--config {path}: get_config() must return an ml_collections.ConfigDict"
    )
  return rest


def ensure_host_devices(count: int) -> None:
  """Ask XLA for `count` CPU devices, before JAX starts, unless XLA_FLAGS already sets a count.

  Only the host (CPU) platform is affected: on GPU/TPU the accelerators are the devices.
  """
  os.environ["XLA_FLAGS"] = host_devices.with_device_count(os.environ.get("XLA_FLAGS", ""), count)


def check_distributed_flags() -> None:
  """Refuse multi-host flags that do not go together, before JAX starts."""
  address, count, index = _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  if address is None:
    if count is not None or index is not None:
      fail("--num_processes and --process_id go with --coordinator_address=HOST:PORT")
    return
  if count is None or index is None:
    fail("--coordinator_address needs --num_processes and --process_id")
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    fail(
      f"--coordinator_address={address}: must be HOST:PORT with a port in 1..65535, "
      "e.g. 10.0.0.1:12345"
    )
  if index >= count:
    fail(f"--process_id={index}: must be in 0..{count - 1} (--num_processes={count})")


def initialize_distributed() -> None:
  """jax.distributed from the flags (CPU collectives over gloo), if asked, with the watchdog that
  ends every process of the run when one is lost (psops_jax/peers.py)."""
  explicit = _COORDINATOR.value is not None
  if not (explicit or _DISTRIBUTED.value):
    return
  import jax

  from psops_jax import peers

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    if explicit:
      peers.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
      )
    else:
      peers.initialize()
  except (ValueError, RuntimeError) as e:  # no cluster environment, coordinator unreachable
    flag = "--coordinator_address" if explicit else "--distributed"
    fail(f"{flag}: jax.distributed.initialize() failed: {str(e).strip().splitlines()[0]}")


def bad_input_message(error: Exception, workdir: str) -> str | None:
  """The message of an error in what the user pointed at (a config field, the data, the workdir or
  its checkpoints: the library raised errors.BadInput), or None for an internal error."""
  if isinstance(error, errors.BadInput):
    return str(error)
  if (
    isinstance(error, OSError)
    and error.filename
    and workdir_lib.is_inside(str(error.filename), workdir)
  ):
    return f"{error.filename}: {error.strerror} (in --workdir={workdir})"
  return None


class WriteFailureRecords(std_logging.Filter):
  """Leaves out the log records whose exception is a write that the workdir's disk refused: orbax
  logs its failed save with the traceback from each of its threads, asyncio its futures that failed
  with it, and the run's one line (errors.WorkdirWriteError) says it all."""

  def __init__(self, workdir: str):
    super().__init__()
    self.workdir = workdir

  def filter(self, record) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return workdir_lib.write_failure(error, self.workdir) is None


def quiet_closed_loops(previous):
  """A sys.unraisablehook that leaves out `RuntimeError: Event loop is closed`: tensorstore's
  writes that end after orbax gave up a failed save (and closed its event loop) print it, a
  traceback that says nothing; any other unraisable error goes to `previous`."""

  def hook(unraisable):
    value = unraisable.exc_value
    if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
      previous(unraisable)

  return hook


def main(argv):
  if len(argv) > 1:
    fail(
      f"unexpected arguments {argv[1:]}: train.py takes flags only, as --name=value "
      "(--helpfull lists them)"
    )
  if not _WORKDIR.value:
    fail(
      "--workdir is required: the directory of the run's metrics, summary and checkpoints "
      "(created if missing), e.g. --workdir /tmp/digits_pso"
    )
  check_distributed_flags()
  try:
    workdir_lib.prepare(_WORKDIR.value)  # no JAX yet: a bad workdir is refused before it starts
  except workdir_lib.WorkdirError as e:
    fail(str(e))
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(WriteFailureRecords(_WORKDIR.value))  # every logger's
  sys.unraisablehook = quiet_closed_loops(sys.unraisablehook)
  config = _CONFIG.value
  wanted = _LOCAL_DEVICES.value or config.get("num_devices") or config.get("num_particles")
  ensure_host_devices(wanted if isinstance(wanted, int) and wanted > 0 else 1)
  initialize_distributed()  # JAX starts here, after XLA_FLAGS is set
  from psops_jax import train

  try:
    summary = train.train_and_evaluate(config, _WORKDIR.value)
  except errors.Diverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except errors.RunStopped as e:
    print(f"psops_jax: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except Exception as e:
    from psops_jax import peers

    if peers.is_lost_peer_error(e):  # another process is gone: its watchdog names it and exits
      peers.await_verdict()
    message = bad_input_message(e, _WORKDIR.value)
    if message is None:
      raise
    fail(message)
  import jax

  if jax.process_index() == 0:
    print(f"{result_line(summary)}; summary in {os.path.join(_WORKDIR.value, 'summary.json')}")


def result_line(summary: dict) -> str:
  """The run's last line: its task's headline figures and its speed."""
  if summary["task"] == "language_model":
    f = lambda key: "nan" if summary[key] is None else f"{summary[key]:.4f}"  # JSON null: NaN
    return (
      f"final validation bits per byte {f('final_bits_per_byte')} (unigram entropy of the text "
      f"{f('unigram_bits_per_byte')}; loss {f('final_test_loss')} nats, best particle "
      f"{f('test_loss_best_particle')}, averaged weights {f('test_loss_averaged_weights')}); "
      f"{summary['train_seconds']:.1f}s, {summary['tokens_per_second']:.0f} tokens/s"
    )
  return (
    f"final test accuracy {summary['final_test_accuracy']:.4f} "
    f"(best particle {summary['test_accuracy_best_particle']:.4f}, "
    f"mean particle {summary['test_accuracy_mean_particle']:.4f}, "
    f"averaged weights {summary['test_accuracy_averaged_weights']:.4f}); "
    f"{summary['train_seconds']:.1f}s, {summary['samples_per_second']:.0f} samples/s"
  )


def run() -> None:
  """app.run with the exit codes above: an error that no message explains is a bug, shown with its
  traceback and a line that says so."""
  try:
    app.run(main, flags_parser=parse_flags)
  except Exception:  # not SystemExit: the exits above are not errors
    traceback.print_exc()
    print(errors.INTERNAL_ERROR, file=sys.stderr)
    sys.exit(errors.EXIT_INTERNAL_ERROR)
  finally:
    leave_together()


def leave_together() -> None:
  """Every exit of a multi-process run: the processes leave together, process 0 (the coordination
  service) last (psops_jax/peers.py). Nothing when JAX never started (no import of it here)."""
  peers = sys.modules.get("psops_jax.peers")
  if peers is not None:
    peers.leave()


if __name__ == "__main__":
  run()
