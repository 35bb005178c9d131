"""PyTorch copies of psops_jax/models.py's SmallCNN and LeNet5 (NCHW) and of its byte-level
Transformer (tied embeddings), for the benchmarks that put the project beside torch
(round_vs_floor.py): each built from the Flax model's settings and loaded with its Flax params.

torch is optional (the `bench` extra): `available()` says whether it is installed and `MISSING` what
to print when it is not. Nothing here imports torch before a function is called.
"""

import functools
import importlib.util

from benchmarks import common  # no JAX in it

MISSING = 'torch not installed: pip install -e ".[bench]" (PyTorch CPU)'
# flax.linen.LayerNorm's epsilon (torch's default is 1e-5)
FLAX_LAYER_NORM_EPS = 1e-6

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

  class Block(nn.Module):
    """Pre-norm: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)), MLP Dense(4 width) -
    GELU (tanh, as flax.linen.gelu) - Dense(width); causal attention without biases."""

    def __init__(self, width, heads):
      super().__init__()
      self.heads = heads
      self.norm0 = nn.LayerNorm(width, eps=FLAX_LAYER_NORM_EPS)
      self.qkv = nn.Linear(width, 3 * width, bias=False)
      self.out = nn.Linear(width, width, bias=False)
      self.norm1 = nn.LayerNorm(width, eps=FLAX_LAYER_NORM_EPS)
      self.dense0 = nn.Linear(width, 4 * width)
      self.dense1 = nn.Linear(4 * width, width)

    def attention(self, x):
      b, t, width = x.shape
      heads = lambda a: a.reshape(b, t, self.heads, width // self.heads).transpose(1, 2)
      q, k, v = (heads(a) for a in self.qkv(x).split(width, dim=-1))
      y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
      return self.out(y.transpose(1, 2).reshape(b, t, width))

    def forward(self, x):
      x = x + self.attention(self.norm0(x))
      y = nn.functional.gelu(self.dense0(self.norm1(x)), approximate="tanh")
      return x + self.dense1(y)

  class Transformer(nn.Module):
    """Token and learned position embeddings, `depth` blocks, a final LayerNorm, logits through
    the token embedding's transpose. Input: int64 tokens (B, T); output: logits (B, T, classes)."""

    def __init__(self, num_classes=256, width=64, depth=2, heads=4, context=64):
      super().__init__()
      self.embed = nn.Embedding(num_classes, width)
      self.positions = nn.Parameter(torch.zeros(context, width))
      self.blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
      self.norm = nn.LayerNorm(width, eps=FLAX_LAYER_NORM_EPS)

    def forward(self, tokens):
      x = self.embed(tokens) + self.positions[: tokens.shape[1]]
      for block in self.blocks:
        x = block(x)
      return self.norm(x) @ self.embed.weight.T

  return {"small_cnn": SmallCNN, "lenet5": LeNet5, "transformer": Transformer}


def twin(model_name: str, flax_model):
  """An untrained torch copy of the Flax model: the same architecture and sizes."""
  if not common.is_text(model_name):
    return modules()[model_name](num_classes=flax_model.num_classes)
  if not flax_model.tie_embeddings:
    raise ValueError("the torch transformer ties its embeddings; the Flax model does not")
  m = flax_model
  return modules()[model_name](m.num_classes, m.width, m.depth, m.heads, m.context)


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


def load_transformer_params(module, params) -> None:
  """Copy the Flax Transformer's params into its torch copy (Dense kernels (in, out) transposed to
  torch's (out, in); LayerNorm scale -> weight)."""
  import numpy as np
  import torch

  def put(target, value):
    target.copy_(torch.from_numpy(np.ascontiguousarray(np.array(value))))

  def norm(layer, p):
    put(layer.weight, p["scale"])
    put(layer.bias, p["bias"])

  def dense(layer, p):
    put(layer.weight, np.array(p["kernel"]).T)
    if "bias" in p:
      put(layer.bias, p["bias"])

  with torch.no_grad():
    put(module.embed.weight, params["Embed_0"]["embedding"])
    put(module.positions, params["positions"])
    norm(module.norm, params["LayerNorm_0"])
    for i, block in enumerate(module.blocks):
      p = params[f"TransformerBlock_{i}"]
      norm(block.norm0, p["LayerNorm_0"])
      dense(block.qkv, p["CausalSelfAttention_0"]["Dense_0"])
      dense(block.out, p["CausalSelfAttention_0"]["Dense_1"])
      norm(block.norm1, p["LayerNorm_1"])
      dense(block.dense0, p["Dense_0"])
      dense(block.dense1, p["Dense_1"])


def from_flax(model_name: str, flax_model, params):
  """The torch copy of a Flax model (`twin`), holding the given Flax params."""
  module = twin(model_name, flax_model)
  if common.is_text(model_name):
    load_transformer_params(module, params)
  else:
    load_flax_params(module, params, FLAT_HWC[model_name])
  return module


def to_nchw(images):
  """NHWC numpy (or JAX) images -> an NCHW torch tensor."""
  import numpy as np
  import torch

  return torch.from_numpy(np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2)))


def normalizer(mean, std):
  """uint8 NCHW tensor -> float32, scaled to [0, 1], then (x - mean) / std per channel (what
  psops_jax.tasks.normalize does)."""
  import torch

  mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
  std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
  return lambda u8: (u8.float() / 255.0 - mean_t) / std_t


def model_inputs(model_name: str, mean, std) -> tuple:
  """(to_torch, per_batch): what turns a numpy shard of the model's inputs into a torch tensor once
  (images: NCHW uint8; text: int64 tokens), and what each batch of it goes through before the model
  (images: `normalizer`; text: nothing), as psops_jax.tasks.model_inputs does for Flax."""
  import numpy as np
  import torch

  if common.is_text(model_name):
    return lambda x: torch.from_numpy(np.asarray(x).astype(np.int64)), lambda x: x
  return to_nchw, normalizer(mean, std)


def optimizer(parameters, name: str, learning_rate: float, **fields):
  """torch's optimizer of the same name and hyperparameters as config.optimizer's fields (sgd:
  momentum; adamw: b1, b2, weight_decay, eps 1e-8 as optax). Its schedule is left out (optax's costs
  a few scalar operations per step); config.optimizer.clip_norm is applied by the caller
  (torch.nn.utils.clip_grad_norm_)."""
  import torch

  if name == "sgd":
    return torch.optim.SGD(parameters, lr=learning_rate, momentum=fields["momentum"])
  if name == "adamw":
    betas = (fields["b1"], fields["b2"])
    return torch.optim.AdamW(
      parameters, lr=learning_rate, betas=betas, eps=1e-8, weight_decay=fields["weight_decay"]
    )
  raise ValueError(f"optimizer {name!r} has no torch counterpart here (sgd, adamw)")


def check_against_flax(model_name: str, flax_model, params, inputs, mean, std) -> dict:
  """The torch copy given the Flax params, on the same uint8 inputs (images or byte windows): its
  largest absolute logit difference to Flax and whether both count the same parameters (the copy
  has the same architecture)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from psops_jax import tasks

  task = "language_model" if common.is_text(model_name) else "classification"
  flax_logits = flax_model.apply(
    {"params": params}, tasks.model_inputs(task, jnp.asarray(inputs), mean, std)
  )
  module = from_flax(model_name, flax_model, params)
  to_torch, per_batch = model_inputs(model_name, mean, std)
  with torch.no_grad():
    torch_logits = module(per_batch(to_torch(inputs))).numpy()
  return {
    "logits_max_abs_diff_vs_flax": float(np.abs(torch_logits - np.asarray(flax_logits)).max()),
    "same_parameter_count": sum(p.numel() for p in module.parameters())
    == sum(a.size for a in jax.tree.leaves(params)),
  }
