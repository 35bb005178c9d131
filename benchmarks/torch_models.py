"""PyTorch copies of psops_jax/models.py's SmallCNN and LeNet5 (NCHW), for the benchmarks that put
the project beside torch (round_vs_floor.py).

torch is optional (the `bench` extra): `available()` says whether it is installed and `MISSING` what
to print when it is not. Nothing here imports torch before a function is called.
"""

import functools
import importlib.util

MISSING = 'torch not installed: pip install -e ".[bench]" (PyTorch CPU)'

# The last feature map (H, W, C) each model flattens before its first Dense layer.
FLAT_HWC = {"small_cnn": (2, 2, 64), "lenet5": (5, 5, 16)}


def available() -> bool:
  """Whether torch can be imported."""
  return importlib.util.find_spec("torch") is not None


@functools.cache
def modules() -> dict:
  """{model name: torch.nn.Module class} of the models with a torch copy."""
  import torch
  from torch import nn

  class SmallCNN(nn.Module):
    """conv3x3(32, same) - conv3x3(32, same) - pool - conv3x3(64, same) - pool - 128 - logits."""

    def __init__(self, num_classes=10):
      super().__init__()
      self.conv0 = nn.Conv2d(1, 32, 3, padding=1)
      self.conv1 = nn.Conv2d(32, 32, 3, padding=1)
      self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
      self.dense0 = nn.Linear(64 * 2 * 2, 128)
      self.dense1 = nn.Linear(128, num_classes)

    def forward(self, x):
      x = torch.relu(self.conv0(x))
      x = torch.relu(self.conv1(x))
      x = nn.functional.max_pool2d(x, 2, 2)
      x = torch.relu(self.conv2(x))
      x = nn.functional.max_pool2d(x, 2, 2)
      x = torch.relu(self.dense0(x.flatten(1)))
      return self.dense1(x)

  class LeNet5(nn.Module):
    """conv5x5(6, same) - pool - conv5x5(16, valid) - pool - 120 - 84 - logits."""

    def __init__(self, num_classes=10):
      super().__init__()
      self.conv0 = nn.Conv2d(1, 6, 5, padding=2)
      self.conv1 = nn.Conv2d(6, 16, 5, padding=0)
      self.dense0 = nn.Linear(16 * 5 * 5, 120)
      self.dense1 = nn.Linear(120, 84)
      self.dense2 = nn.Linear(84, num_classes)

    def forward(self, x):
      x = nn.functional.max_pool2d(torch.relu(self.conv0(x)), 2, 2)
      x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2, 2)
      x = torch.relu(self.dense0(x.flatten(1)))
      x = torch.relu(self.dense1(x))
      return self.dense2(x)

  return {"small_cnn": SmallCNN, "lenet5": LeNet5}


def load_flax_params(module, params, flat_hwc: tuple) -> None:
  """Copy Flax params into the torch module (Conv_k -> conv{k}, Dense_k -> dense{k}). Flax flattens
  the last feature map as (H, W, C), torch as (C, H, W): the first Dense kernel's rows permuted."""
  import numpy as np
  import torch

  with torch.no_grad():
    for name, leaf in params.items():
      kind, index = name.split("_")
      layer = getattr(module, f"{kind.lower()}{index}")
      kernel = np.array(leaf["kernel"])
      if kind == "Conv":  # (kh, kw, in, out) -> (out, in, kh, kw)
        weight = kernel.transpose(3, 2, 0, 1)
      elif index == "0":  # first Dense after the flatten
        h, w, c = flat_hwc
        weight = kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
      else:
        weight = kernel.T
      layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
      layer.bias.copy_(torch.from_numpy(np.array(leaf["bias"])))


def from_flax(model_name: str, params):
  """The torch copy of a model, holding the given Flax params."""
  module = modules()[model_name]()
  load_flax_params(module, params, FLAT_HWC[model_name])
  return module


def to_nchw(images):
  """NHWC numpy (or JAX) images -> an NCHW torch tensor."""
  import numpy as np
  import torch

  return torch.from_numpy(np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2)))


def normalizer(mean, std):
  """uint8 NCHW tensor -> float32, scaled to [0, 1], then (x - mean) / std per channel (what
  psops_jax.swarm.normalize does)."""
  import torch

  mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
  std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
  return lambda u8: (u8.float() / 255.0 - mean_t) / std_t


def check_against_flax(model_name: str, flax_model, params, images, mean, std) -> dict:
  """The torch copy given the Flax params, on the same uint8 images: its largest absolute logit
  difference to Flax and whether both count the same parameters (the copy has the same
  architecture)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from psops_jax import swarm as swarm_lib

  flax_logits = flax_model.apply(
    {"params": params}, swarm_lib.normalize(jnp.asarray(images), mean, std)
  )
  module = from_flax(model_name, params)
  with torch.no_grad():
    torch_logits = module(normalizer(mean, std)(to_nchw(images))).numpy()
  return {
    "logits_max_abs_diff_vs_flax": float(np.abs(torch_logits - np.asarray(flax_logits)).max()),
    "same_parameter_count": sum(p.numel() for p in module.parameters())
    == sum(a.size for a in jax.tree.leaves(params)),
  }
