"""The models' convolutions, implemented as `model.conv` chooses: `lax` (XLA's convolution,
`lax.conv_general_dilated`: nn.Conv's own), `im2col` (the patches of the input, one slice per
kernel position, concatenated along the channels, then one matrix product with the kernel
reshaped to (kh kw cin, cout)), `im2col_input` (im2col for the convolution that reads the model's
input, lax for the others), or `auto` (im2col on the CPU backend, lax elsewhere: on GPU and TPU
cuDNN's and the TPU's convolutions are the right choice).

`im2col_input` exists because im2col's cost differs by layer: its backward pass is the kernel's
gradient, one matrix product of the patches with the output's gradient, plus the input's gradient,
a sum of the kh kw shifted slices' gradients. The model's input needs no gradient, so on the first
convolution im2col's backward is the one product, while deeper layers pay for the sum too
(benchmarks/conv_cpu.py measures the three).

The layer stays flax's nn.Conv either way: im2col is passed as its `conv_general_dilated`, so the
parameters (`kernel` (kh, kw, cin, cout), `bias` (cout)), their names, shapes and initial values
are the same and checkpoints are interchangeable. The numbers are equal to lax's to float
tolerance, not bit for bit: the sums run in another order (tests/test_conv.py).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from psops_jax import errors

CONVS = ("lax", "im2col", "im2col_input", "auto")


def resolve(conv: str) -> str:
  """The implementation `conv` names on this process's default backend: "auto" becomes "im2col"
  on CPU, "lax" elsewhere; the others are themselves."""
  if conv not in CONVS:
    raise errors.ConfigError(f"model.conv={conv!r}: accepted values are {CONVS}")
  if conv == "auto":
    return "im2col" if jax.default_backend() == "cpu" else "lax"
  return conv


def function(conv: str, reads_input: bool = False):
  """What nn.Conv's `conv_general_dilated` field takes for `conv`, for a convolution that reads the
  model's input (`reads_input`) or not: None (nn.Conv's default, lax.conv_general_dilated) or
  `im2col_conv`."""
  conv = resolve(conv)
  im2col = conv == "im2col" or (conv == "im2col_input" and reads_input)
  return im2col_conv if im2col else None


def layer(conv: str, dtype, reads_input: bool = False):
  """nn.Conv computing in `dtype` with the implementation `conv` names for a convolution that reads
  the model's input (`reads_input`) or not: call it as nn.Conv, with features, kernel size and the
  other options."""
  return functools.partial(nn.Conv, dtype=dtype, conv_general_dilated=function(conv, reads_input))


# nn.Conv's layout: NHWC inputs and outputs, HWIO kernel (lax.ConvDimensionNumbers of the specs).
NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _pads(padding, spatial: tuple, window: tuple, strides: tuple) -> list:
  """(low, high) padding of each spatial dimension: "SAME", "VALID" or explicit pairs."""
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      raise NotImplementedError(f"im2col_conv: padding {padding!r} (accepted: SAME, VALID, pairs)")
    return lax.padtype_to_pads(spatial, window, strides, padding)
  return [tuple(p) for p in padding]


def shifted_inputs(x, window: tuple, strides: tuple, pads: list) -> list:
  """The kh kw views (N, OH, OW, C) of NHWC `x`, padded, under each kernel position (row, then
  column): view (i, j) holds the input that kernel entry (i, j) multiplies at every output."""
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  (kh, kw), (sh, sw) = window, strides
  oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  return [
    x[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw, :]
    for i in range(kh)
    for j in range(kw)
  ]


def patches(x, window: tuple, strides: tuple, pads: list):
  """(N, OH, OW, kh kw C) of NHWC `x`: the input under each output position, kernel row, kernel
  column, then channel (the order of an HWIO kernel reshaped to (kh kw C, O))."""
  cols = shifted_inputs(x, window, strides, pads)
  return jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]


def im2col_conv(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
):
  """lax.conv_general_dilated's signature, for what nn.Conv passes the project's models: 2-D, NHWC
  input, HWIO kernel, any strides and padding; no dilation, one feature group (else
  NotImplementedError). The convolution as patches (`patches`) times the reshaped kernel."""
  dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
  if lhs.ndim != 4 or dilated or feature_group_count != 1 or batch_group_count != 1:
    raise NotImplementedError(
      "im2col_conv: 2-D convolutions without dilation and with one feature group only "
      f"(input {lhs.shape}, dilations {lhs_dilation} {rhs_dilation}, groups {feature_group_count})"
    )
  if dimension_numbers is not None and tuple(dimension_numbers) != tuple(NHWC):
    raise NotImplementedError(f"im2col_conv: NHWC/HWIO only, got {dimension_numbers}")
  kh, kw, cin, cout = rhs.shape
  pads = _pads(padding, lhs.shape[1:3], (kh, kw), tuple(window_strides))
  cols = patches(lhs, (kh, kw), tuple(window_strides), pads)
  return lax.dot_general(
    cols,
    rhs.reshape(kh * kw * cin, cout),
    (((3,), (0,)), ((), ())),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
