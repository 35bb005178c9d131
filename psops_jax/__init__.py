"""psops_jax: PSO-PS (particle swarm parameter synchronization) in JAX/Flax."""

import importlib

__all__ = ["sync"]


def __getattr__(name):
  """`psops_jax.sync` is imported on first use, so that importing psops_jax.workdir (as
  studies/study.py does) does not import JAX."""
  if name in __all__:
    return importlib.import_module(f"psops_jax.{name}")
  raise AttributeError(f"module 'psops_jax' has no attribute {name!r}")
