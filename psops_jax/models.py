"""Flax (linen) classifiers, chosen by name. Inputs are normalised NHWC float images; outputs are
float32 logits.

Every model is called as `model.apply(variables, x, train=...)`. `resnet20` has BatchNorm: its
variables hold `batch_stats` (running means and variances) beside `params`; `train=True` normalises
with the batch's statistics and updates the running ones (`mutable=["batch_stats"]`), `train=False`
uses the running ones. The other models hold only `params` and ignore `train`.

`dtype` is the computation dtype (`float32`, or `bfloat16` for mixed precision): activations and
matrix products run in it, while parameters (`param_dtype`), batch statistics and the logits stay
float32, so the optimizer and every sync strategy see float32 only.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from psops_jax import errors

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class MLP(nn.Module):
  """Flatten, two hidden ReLU layers, logits."""

  num_classes: int = 10
  hidden: tuple = (256, 128)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class LeNet5(nn.Module):
  """LeNet-5 for 28x28 images: conv5x5(6, same) - pool - conv5x5(16) - pool - 120 - 84 - logits."""

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    x = nn.relu(nn.Conv(6, (5, 5), padding="SAME", dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(16, (5, 5), padding="VALID", dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(120, dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(84, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class SmallCNN(nn.Module):
  """For 8x8 digits: conv3x3(32) - conv3x3(32) - pool - conv3x3(64) - pool - 128 - logits."""

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    x = nn.relu(nn.Conv(32, (3, 3), dtype=self.dtype)(x))
    x = nn.relu(nn.Conv(32, (3, 3), dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(64, (3, 3), dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class VGGSmall(nn.Module):
  """VGG-style CIFAR-10 net: 3 stages of two conv3x3+GroupNorm+ReLU and a 2x2 max-pool, then logits.

  Widths (64, 128, 256) by default; GroupNorm (no running statistics) instead of BatchNorm.
  """

  num_classes: int = 10
  widths: tuple = (64, 128, 256)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    for width in self.widths:
      for _ in range(2):
        x = nn.Conv(width, (3, 3), use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(nn.GroupNorm(num_groups=min(32, width // 4), dtype=self.dtype)(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class BasicBlock(nn.Module):
  """conv3x3 - BN - ReLU - conv3x3 - BN, plus the shortcut, then ReLU. A block that halves the size
  and doubles the width takes the identity shortcut subsampled and zero-padded in channels (option A
  of He et al. 2016: no parameters)."""

  width: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)
    y = nn.Conv(self.width, (3, 3), self.stride, use_bias=False, dtype=self.dtype)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(y)
    y = norm()(y)
    if self.stride != 1 or x.shape[-1] != self.width:
      x = x[:, :: self.stride, :: self.stride, :]
      extra = self.width - x.shape[-1]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return nn.relu(x + y)


class ResNet20(nn.Module):
  """The CIFAR ResNet-20 of He et al. 2016: conv3x3(16)-BN-ReLU, 3 stages of 3 basic blocks of
  widths 16/32/64 (stride 2 at the start of stages 2 and 3), average pooling, logits; 0.27M
  params."""

  num_classes: int = 10
  widths: tuple = (16, 32, 64)
  blocks: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False, dtype=self.dtype)(x.astype(self.dtype))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, stride, dtype=self.dtype)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


MODELS = {
  "mlp": MLP,
  "lenet5": LeNet5,
  "small_cnn": SmallCNN,
  "vgg_small": VGGSmall,
  "resnet20": ResNet20,
}


def create(name: str, num_classes: int = 10, dtype: str = "float32") -> nn.Module:
  """The model registered as `name`, computing in `dtype` ("float32" or "bfloat16")."""
  if name not in MODELS:
    raise errors.ConfigError(f"model.name={name!r}: accepted values are {tuple(MODELS)}")
  if dtype not in DTYPES:
    raise errors.ConfigError(f"model.dtype={dtype!r}: accepted values are {tuple(DTYPES)}")
  return MODELS[name](num_classes=num_classes, dtype=DTYPES[dtype])
