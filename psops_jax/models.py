"""Flax (linen) models, chosen by name: classifiers of normalised NHWC float images, and a
byte-level decoder-only transformer (`transformer`) of int32 tokens. Outputs are float32 logits.

Every model is called as `model.apply(variables, x, train=...)`. `resnet20` has BatchNorm: its
variables hold `batch_stats` (running means and variances) beside `params`; `train=True` normalises
with the batch's statistics and updates the running ones (`mutable=["batch_stats"]`), `train=False`
uses the running ones. The other models hold only `params` and ignore `train`.

`dtype` is the computation dtype (`float32`, or `bfloat16` for mixed precision): activations and
matrix products run in it, while parameters (`param_dtype`), batch statistics and the logits stay
float32, so the optimizer and every sync strategy see float32 only.

`conv` (the models with convolutions) picks how their convolutions are computed
(psops_jax/conv.py): `lax` (XLA's convolution, the default), `im2col` (patches and one matrix
product), `im2col_input` (im2col for the first convolution only, lax for the others) or `auto`
(im2col on CPU, lax on GPU/TPU); the parameters are the same.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from psops_jax import conv as conv_lib
from psops_jax import errors
from psops_jax import pool as pool_lib

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
  conv: str = "lax"  # conv.CONVS: lax | im2col | im2col_input | auto

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = conv_lib.layer(self.conv, self.dtype)
    first = conv_lib.layer(self.conv, self.dtype, reads_input=True)
    x = x.astype(self.dtype)
    x = nn.relu(first(6, (5, 5), padding="SAME")(x))
    x = pool_lib.max_pool(x, (2, 2))
    x = nn.relu(conv(16, (5, 5), padding="VALID")(x))
    x = pool_lib.max_pool(x, (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(120, dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(84, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class SmallCNN(nn.Module):
  """For 8x8 digits: conv3x3(32) - conv3x3(32) - pool - conv3x3(64) - pool - 128 - logits."""

  num_classes: int = 10
  dtype: Any = jnp.float32
  conv: str = "lax"  # conv.CONVS: lax | im2col | im2col_input | auto

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = conv_lib.layer(self.conv, self.dtype)
    first = conv_lib.layer(self.conv, self.dtype, reads_input=True)
    x = x.astype(self.dtype)
    x = nn.relu(first(32, (3, 3))(x))
    x = nn.relu(conv(32, (3, 3))(x))
    x = pool_lib.max_pool(x, (2, 2))
    x = nn.relu(conv(64, (3, 3))(x))
    x = pool_lib.max_pool(x, (2, 2))
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
  conv: str = "lax"  # conv.CONVS: lax | im2col | im2col_input | auto

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    for stage, width in enumerate(self.widths):
      for layer in range(2):
        conv = conv_lib.layer(self.conv, self.dtype, reads_input=stage == layer == 0)
        x = conv(width, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.GroupNorm(num_groups=min(32, width // 4), dtype=self.dtype)(x))
      x = pool_lib.max_pool(x, (2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class BasicBlock(nn.Module):
  """conv3x3 - BN - ReLU - conv3x3 - BN, plus the shortcut, then ReLU. A block that halves the size
  and doubles the width takes the identity shortcut subsampled and zero-padded in channels (option A
  of He et al. 2016: no parameters)."""

  width: int
  stride: int
  dtype: Any = jnp.float32
  conv: str = "lax"

  @nn.compact
  def __call__(self, x, train: bool):
    conv = conv_lib.layer(self.conv, self.dtype)
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)
    y = conv(self.width, (3, 3), self.stride, use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = conv(self.width, (3, 3), use_bias=False)(y)
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
  conv: str = "lax"  # conv.CONVS: lax | im2col | im2col_input | auto

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = conv_lib.layer(self.conv, self.dtype, reads_input=True)
    x = conv(self.widths[0], (3, 3), use_bias=False)(x.astype(self.dtype))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, stride, dtype=self.dtype, conv=self.conv)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention: per head, softmax(q k^T / sqrt(d_head) + mask) v, where the
  mask forbids position t to attend to positions after t; scores and softmax in float32."""

  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, width = x.shape
    head = width // self.heads
    qkv = nn.Dense(3 * width, use_bias=False, dtype=self.dtype)(x)
    q, k, v = jnp.split(qkv.reshape(b, t, 3 * self.heads, head), 3, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(head)
    causal = jnp.tril(jnp.ones((t, t), bool))
    weights = nn.softmax(jnp.where(causal, scores, -1e30), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, width)
    return nn.Dense(width, use_bias=False, dtype=self.dtype)(out)


class TransformerBlock(nn.Module):
  """Pre-norm block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)), the MLP
  Dense(4 width) - GELU - Dense(width)."""

  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = x + CausalSelfAttention(self.heads, self.dtype)(nn.LayerNorm(dtype=self.dtype)(x))
    y = nn.Dense(4 * width, dtype=self.dtype)(nn.LayerNorm(dtype=self.dtype)(x))
    return x + nn.Dense(width, dtype=self.dtype)(nn.gelu(y))


class Transformer(nn.Module):
  """A decoder-only byte-level language model: token (byte) and learned position embeddings,
  `depth` pre-norm blocks, a final LayerNorm, and logits over the `num_classes` (256) bytes at
  every position, through the token embedding's transpose (`tie_embeddings`) or their own Dense.

  Input: int32 tokens (B, T), T <= context; output: float32 logits (B, T, num_classes)."""

  num_classes: int = 256
  width: int = 64
  depth: int = 2
  heads: int = 4
  context: int = 64
  tie_embeddings: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    embed = nn.Embed(self.num_classes, self.width, embedding_init=nn.initializers.normal(0.02))
    positions = self.param(
      "positions", nn.initializers.normal(0.02), (self.context, self.width), jnp.float32
    )
    x = (embed(tokens) + positions[: tokens.shape[1]]).astype(self.dtype)
    for _ in range(self.depth):
      x = TransformerBlock(self.heads, self.dtype)(x)
    x = nn.LayerNorm(dtype=self.dtype)(x)
    if self.tie_embeddings:
      return embed.attend(x.astype(jnp.float32))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


# width, depth, heads of the transformer's sizes (parameters at context 128, tied embeddings):
# tiny for tests (0.12M), small for studies on 2 CPU cores (0.8M), medium for longer CPU runs
# (3.2M), and the accelerator sizes of the DiLoCo papers' smallest runs, m35 (38M) and m150 (151M).
TRANSFORMER_SIZES = {
  "tiny": (64, 2, 4),
  "small": (128, 4, 4),
  "medium": (256, 4, 8),
  "m35": (512, 12, 8),
  "m150": (1024, 12, 16),
}

MODELS = {
  "mlp": MLP,
  "lenet5": LeNet5,
  "small_cnn": SmallCNN,
  "vgg_small": VGGSmall,
  "resnet20": ResNet20,
  "transformer": Transformer,
}
LANGUAGE_MODELS = ("transformer",)
CLASSIFIERS = tuple(name for name in MODELS if name not in LANGUAGE_MODELS)
# the models with convolutions: the ones whose fields include `conv` (they read model.conv)
WITH_CONVOLUTIONS = tuple(name for name, m in MODELS.items() if "conv" in m.__dataclass_fields__)


def create(
  name: str,
  num_classes: int = 10,
  dtype: str = "float32",
  size: str = "tiny",
  context: int = 64,
  tie_embeddings: bool = True,
  conv: str = "lax",
) -> nn.Module:
  """The model registered as `name`, computing in `dtype` ("float32" or "bfloat16"), its
  convolutions (if any) by `conv` (conv.CONVS: "auto" is resolved here, on this backend); a
  transformer takes its width, depth and heads from TRANSFORMER_SIZES[size] and its longest input
  `context`."""
  if name not in MODELS:
    raise errors.ConfigError(f"model.name={name!r}: accepted values are {tuple(MODELS)}")
  if dtype not in DTYPES:
    raise errors.ConfigError(f"model.dtype={dtype!r}: accepted values are {tuple(DTYPES)}")
  conv = conv_lib.resolve(conv)
  if name in WITH_CONVOLUTIONS:
    return MODELS[name](num_classes=num_classes, dtype=DTYPES[dtype], conv=conv)
  if name in CLASSIFIERS:
    return MODELS[name](num_classes=num_classes, dtype=DTYPES[dtype])
  if size not in TRANSFORMER_SIZES:
    raise errors.ConfigError(f"model.size={size!r}: accepted values are {tuple(TRANSFORMER_SIZES)}")
  width, depth, heads = TRANSFORMER_SIZES[size]
  return Transformer(num_classes, width, depth, heads, context, bool(tie_embeddings), DTYPES[dtype])
