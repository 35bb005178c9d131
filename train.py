"""Train a swarm of particles with PSO-PS (or another sync strategy).

  python train.py --config configs/digits_pso.py --workdir /tmp/digits_pso [--config.sync.period=4 ...]

Writes WORKDIR/metrics.jsonl (one line per logged round), WORKDIR/summary.json and checkpoints in
WORKDIR/checkpoints; rerunning the same command on the same WORKDIR resumes from the last checkpoint.

Multi-host (JAX's multi-controller runtime): one process per host, each started with
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
or --distributed to let jax.distributed.initialize() read a cluster's environment (SLURM, TPU pod).
On CPU, processes talk over gloo. scripts/launch_local.py starts N such processes on this machine.

Exit codes: 0 done; 2 bad config, data or workdir; 3 all particles diverged; 75 preempted by SIGTERM
(checkpoint written: rerun to resume).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits_pso.py", "Path to a config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, summary and checkpoints.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "Multi-host: HOST:PORT of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Multi-host: jax.distributed.initialize() from the cluster's "
                                 "environment (SLURM, TPU pod, ...).")
_LOCAL_DEVICES = flags.DEFINE_integer("local_cpu_devices", None,
                                      "CPU devices of this process (default: as many as the "
                                      "config needs, in a single process).")
flags.mark_flags_as_required(["workdir"])


def ensure_host_devices(count: int) -> None:
  """Ask XLA for `count` CPU devices, before JAX starts, unless XLA_FLAGS already sets a count.

  Only the host (CPU) platform is affected: on GPU/TPU the accelerators are the devices.
  """
  flags_now = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags_now:
    os.environ["XLA_FLAGS"] = f"{flags_now} --xla_force_host_platform_device_count={count}".strip()


def initialize_distributed() -> None:
  """jax.distributed.initialize from the flags (CPU collectives over gloo), if asked."""
  import jax
  explicit = _COORDINATOR.value is not None
  if not (explicit or _DISTRIBUTED.value):
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  else:
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  wanted = _LOCAL_DEVICES.value or config.get("num_devices") or config.get("num_particles")
  ensure_host_devices(wanted if isinstance(wanted, int) and wanted > 0 else 1)
  initialize_distributed()  # JAX starts here, after XLA_FLAGS is set
  from psops_jax import checkpoint, config_check, data, train
  try:
    summary = train.train_and_evaluate(config, _WORKDIR.value)
  except (config_check.ConfigError, data.DataError, checkpoint.CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except train.Diverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except train.Preempted as e:
    print(f"psops_jax: {e}", file=sys.stderr)
    sys.exit(train.PREEMPTED_EXIT_CODE)
  import jax
  if jax.process_index() == 0:
    print(f"final test accuracy {summary['final_test_accuracy']:.4f} "
          f"(best particle {summary['test_accuracy_best_particle']:.4f}, "
          f"mean particle {summary['test_accuracy_mean_particle']:.4f}, "
          f"averaged weights {summary['test_accuracy_averaged_weights']:.4f}); "
          f"{summary['train_seconds']:.1f}s, {summary['samples_per_second']:.0f} samples/s; "
          f"summary in {os.path.join(_WORKDIR.value, 'summary.json')}")


def parse_flags(argv):
  """absl flag parsing, with an unknown --config.field (a typo) reported in one line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    message = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    print(f"error: unknown config field in the command line: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
