"""Train a swarm of particles with PSO-PS (or another sync strategy).

  python train.py --config configs/digits_pso.py --workdir /tmp/digits_pso [--config.sync.period=4 ...]

Writes WORKDIR/metrics.jsonl (one line per logged round) and WORKDIR/summary.json.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits_pso.py", "Path to a config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics.jsonl and summary.json.")
flags.mark_flags_as_required(["workdir"])


def ensure_host_devices(count: int) -> None:
  """Ask XLA for `count` CPU devices, before JAX starts, unless XLA_FLAGS already sets a count.

  Only the host (CPU) platform is affected: on GPU/TPU the accelerators are the devices.
  """
  flags_now = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags_now:
    os.environ["XLA_FLAGS"] = f"{flags_now} --xla_force_host_platform_device_count={count}".strip()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  wanted = config.get("num_devices") or config.get("num_particles")
  ensure_host_devices(wanted if isinstance(wanted, int) and wanted > 0 else 1)
  from psops_jax import config_check, data, train  # JAX starts here, after XLA_FLAGS is set
  try:
    summary = train.train_and_evaluate(config, _WORKDIR.value)
  except (config_check.ConfigError, data.DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"final test accuracy {summary['final_test_accuracy']:.4f} "
        f"(best particle {summary['test_accuracy_best_particle']:.4f}, "
        f"mean particle {summary['test_accuracy_mean_particle']:.4f}, "
        f"averaged weights {summary['test_accuracy_averaged_weights']:.4f}); "
        f"{summary['train_seconds']:.1f}s, {summary['samples_per_second']:.0f} samples/s; "
        f"summary in {os.path.join(_WORKDIR.value, 'summary.json')}")


if __name__ == "__main__":
  app.run(main)
