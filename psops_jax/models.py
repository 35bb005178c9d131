"""Flax (linen) classifiers, chosen by name. Inputs are normalised NHWC float images; outputs are logits.

None of the models has BatchNorm: the CIFAR-10 net normalises with GroupNorm, which keeps no running
statistics, so a particle's whole state is its `params` and every sync strategy acts on all of it.
"""

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Flatten, two hidden ReLU layers, logits."""
  num_classes: int = 10
  hidden: tuple = (256, 128)

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class LeNet5(nn.Module):
  """LeNet-5 for 28x28 images: conv5x5(6, same) - pool - conv5x5(16) - pool - 120 - 84 - logits."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (5, 5), padding="SAME")(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(120)(x))
    x = nn.relu(nn.Dense(84)(x))
    return nn.Dense(self.num_classes)(x)


class SmallCNN(nn.Module):
  """For 8x8 digits: conv3x3(32) - conv3x3(32) - pool - conv3x3(64) - pool - 128 - logits."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(64, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(self.num_classes)(x)


class VGGSmall(nn.Module):
  """VGG-style CIFAR-10 net: 3 stages of two conv3x3+GroupNorm+ReLU and a 2x2 max-pool, then logits.

  Widths (64, 128, 256) by default; GroupNorm (no running statistics) instead of BatchNorm.
  """
  num_classes: int = 10
  widths: tuple = (64, 128, 256)

  @nn.compact
  def __call__(self, x):
    for width in self.widths:
      for _ in range(2):
        x = nn.Conv(width, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.GroupNorm(num_groups=min(32, width // 4))(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


MODELS = {"mlp": MLP, "lenet5": LeNet5, "small_cnn": SmallCNN, "vgg_small": VGGSmall}


def create(name: str, num_classes: int = 10) -> nn.Module:
  """The model registered as `name`."""
  if name not in MODELS:
    raise ValueError(f"model.name={name!r}: accepted values are {tuple(MODELS)}")
  return MODELS[name](num_classes=num_classes)
