"""psops_jax: PSO-PS (particle swarm parameter synchronization) in JAX/Flax."""

from psops_jax import sync

__all__ = ["sync"]
