"""The link between a run's processes, measured through JAX's own collectives.

A multi-process run measures, before its first round, what one all-reduce over the particle axis
costs: t(P) for a payload of P bytes per device, at two sizes (4 bytes, and one particle's float32
weights P_model), each the median of `repeats` calls after a warm-up. With the model

    t(P) = t_fixed + P / B

t_fixed = t(4 bytes) is the fixed cost of a call and B = (P_model - 4) / (t(P_model) - t_fixed) the
bytes per second one all-reduce moves. summary.json records both (`link`), with the settings of a
shaped link (scripts/launch_shaped.py, in PSOPS_LINK), so that a run's measured time can be set
beside the communication clock's projection at the measured ratio r = t_step / t(P_model).
"""

import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from psops_jax import swarm as swarm_lib

REPEATS = 5


def allreduce_fn(mesh, floats: int):
  """A compiled psum over the mesh's particle axis of `floats` float32 values per device, and its
  input (one row per device)."""
  sharding = NamedSharding(mesh, P(swarm_lib.AXIS))
  devices = int(mesh.devices.size)
  summed = jax.jit(
    jax.shard_map(
      functools.partial(jax.lax.psum, axis_name=swarm_lib.AXIS),
      mesh=mesh,
      in_specs=P(swarm_lib.AXIS),
      out_specs=P(swarm_lib.AXIS),
    )
  )
  x = jax.jit(lambda: jnp.ones((devices, floats), jnp.float32), out_shardings=sharding)()
  return summed, x


def median_seconds(fn, x, repeats: int) -> float:
  """The median wall time of fn(x) (waited for) over `repeats` calls, after one warm-up call."""
  jax.block_until_ready(fn(x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure(mesh, model_bytes: int, repeats: int = REPEATS) -> dict:
  """t_fixed, t(P_model) and B of one all-reduce over the particle axis (module doc), with the
  shaped link's settings when the run was started by launch_shaped.py."""
  seconds = {}
  for name, floats in (("fixed_seconds", 1), ("allreduce_seconds", max(1, model_bytes // 4))):
    fn, x = allreduce_fn(mesh, floats)
    seconds[name] = median_seconds(fn, x, repeats)
  spread = seconds["allreduce_seconds"] - seconds["fixed_seconds"]
  return {
    **seconds,
    "payload_bytes": model_bytes,
    "bytes_per_second": (model_bytes - 4) / spread if spread > 0 else None,
    "repeats": repeats,
    "processes": jax.process_count(),
    "devices": int(mesh.devices.size),
    "shaped": json.loads(os.environ["PSOPS_LINK"]) if "PSOPS_LINK" in os.environ else None,
  }
