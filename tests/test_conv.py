"""model.conv: the im2col convolution (psops_jax/conv.py) against nn.Conv's own (lax), the same
parameters, forward and gradients equal to float tolerance; "auto" on CPU; bad values refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psops_jax import conv, errors, models

# (features, kernel, strides, padding, bias, input NHWC): the models' convolutions (LeNet-5's two,
# a 3x3 SAME, ResNet-20's strided one without bias) and explicit, uneven padding.
CASES = {
  "lenet5_1": (6, (5, 5), 1, "SAME", True, (3, 28, 28, 1)),
  "lenet5_2": (16, (5, 5), 1, "VALID", True, (3, 14, 14, 6)),
  "3x3_same": (32, (3, 3), 1, "SAME", True, (2, 8, 8, 32)),
  "3x3_stride2": (32, (3, 3), 2, "SAME", False, (2, 9, 9, 16)),
  "pairs": (4, (3, 2), (2, 1), ((1, 2), (0, 1)), True, (2, 7, 6, 3)),
}
# (rtol, atol as a fraction of the largest reference magnitude) per computation dtype: float32 sums
# in another order; bfloat16 rounds the products' inputs and outputs to 8 bits of mantissa.
TOLERANCE = {"float32": (1e-5, 1e-5), "bfloat16": (2e-2, 2e-2)}


def close(a, b, dtype):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  rtol, atol = TOLERANCE[dtype]
  np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * max(np.abs(b).max(), 1e-6))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", CASES)
def test_im2col_equals_lax_forward_and_gradients(case, dtype):
  features, kernel, strides, padding, bias, shape = CASES[case]
  layer = lambda impl: conv.layer(impl, models.DTYPES[dtype])(
    features, kernel, strides, padding=padding, use_bias=bias
  )
  x = jax.random.normal(jax.random.key(1), shape)
  params = layer("lax").init(jax.random.key(0), x)["params"]
  if bias:  # nn.Conv starts the bias at 0: a random one checks that it is added
    params = {**params, "bias": jax.random.normal(jax.random.key(3), (features,))}
  apply = lambda impl, p, x: layer(impl).apply({"params": p}, x)
  y_shape = jax.eval_shape(lambda p, x: apply("lax", p, x), params, x)
  cotangent = jax.random.normal(jax.random.key(2), y_shape.shape, y_shape.dtype)

  @jax.jit
  def forward_and_gradients(params, x):
    out = {}
    for impl in ("lax", "im2col"):
      y, pullback = jax.vjp(lambda p, x, impl=impl: apply(impl, p, x), params, x)
      out[impl] = (y, *pullback(cotangent))
    return out

  out = forward_and_gradients(params, x)
  (y_ref, dp_ref, dx_ref), (y, dp, dx) = out["lax"], out["im2col"]
  assert y.shape == y_ref.shape and y.dtype == y_ref.dtype == models.DTYPES[dtype]
  close(y, y_ref, dtype)
  close(dx, dx_ref, dtype)
  assert jax.tree.structure(dp) == jax.tree.structure(dp_ref)
  for g, g_ref in zip(jax.tree.leaves(dp), jax.tree.leaves(dp_ref)):
    assert g.dtype == g_ref.dtype == jnp.float32  # parameters stay float32
    close(g, g_ref, dtype)


INPUTS = {"lenet5": (28, 28, 1), "small_cnn": (8, 8, 1), "vgg_small": (32, 32, 3)}
INPUTS["resnet20"] = INPUTS["vgg_small"]


def test_every_model_with_convolutions_is_here():
  assert set(INPUTS) == set(models.WITH_CONVOLUTIONS)


@pytest.mark.parametrize(
  "name",
  [
    pytest.param(name, marks=pytest.mark.slow) if name in ("resnet20", "vgg_small") else name
    for name in models.WITH_CONVOLUTIONS
  ],
)
def test_models_have_the_same_parameters_and_logits_with_im2col(name):
  """Same names, shapes and initial values (checkpoints are interchangeable); the same logits to
  float tolerance, and for ResNet-20 the same batch statistics after a training-mode call."""
  reference, im2col = models.create(name), models.create(name, conv="im2col")
  assert (reference.conv, im2col.conv) == ("lax", "im2col")
  x = jax.random.normal(jax.random.key(1), (4,) + INPUTS[name])
  variables = reference.init(jax.random.key(0), x)
  same = im2col.init(jax.random.key(0), x)
  assert jax.tree.structure(same) == jax.tree.structure(variables)
  assert all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(variables))
  )
  mutable = ["batch_stats"] if "batch_stats" in variables else False
  run = lambda model: jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=mutable))
  for a, b in zip(
    jax.tree.leaves(run(im2col)(variables, x)), jax.tree.leaves(run(reference)(variables, x))
  ):
    close(a, b, "float32")


@pytest.mark.parametrize("name", models.WITH_CONVOLUTIONS)
def test_im2col_input_is_im2col_on_the_first_convolution_only(name):
  """model.conv=im2col_input: the convolution that reads the model's input calls im2col_conv, every
  other one lax (counted by tracing with both wrapped); parameters identical, logits close."""
  calls = []
  original = conv.im2col_conv

  def counted_im2col(lhs, rhs, *args, **kwargs):
    calls.append(("im2col", lhs.shape[1:]))
    return original(lhs, rhs, *args, **kwargs)

  x = jax.random.normal(jax.random.key(1), (2,) + INPUTS[name])
  reference, mixed = models.create(name), models.create(name, conv="im2col_input")
  variables = reference.init(jax.random.key(0), x)
  mutable = ["batch_stats"] if "batch_stats" in variables else False
  run = lambda model: model.apply(variables, x, train=True, mutable=mutable)
  jaxpr = jax.make_jaxpr(lambda: run(reference))()
  lax_convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(conv, "im2col_conv", counted_im2col)
    mixed_jaxpr = jax.make_jaxpr(lambda: run(mixed))()
    same = mixed.init(jax.random.key(0), x)
    out = run(mixed)
  mixed_convs = [e for e in mixed_jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert calls[0] == ("im2col", INPUTS[name])  # the first convolution reads the input
  assert len(mixed_convs) == len(lax_convs) - 1
  assert {shape for _, shape in calls} == {INPUTS[name]}  # and no other one is im2col
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(variables)):
    assert np.array_equal(a, b)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(run(reference))):
    close(a, b, "float32")


def test_auto_is_im2col_on_cpu_and_bad_values_name_the_field():
  assert jax.default_backend() == "cpu"  # tests/conftest.py
  assert conv.resolve("auto") == "im2col" and conv.function("auto") is conv.im2col_conv
  assert conv.function("lax") is None  # nn.Conv's default: lax.conv_general_dilated
  assert models.create("lenet5", conv="auto").conv == "im2col"
  assert models.create("lenet5").conv == "lax"  # the default
  message = r"model.conv='fft': accepted values are \('lax', 'im2col', 'im2col_input', 'auto'\)"
  with pytest.raises(errors.ConfigError, match=message):
    models.create("mlp", conv="fft")


def test_im2col_refuses_what_it_does_not_implement():
  x, k = jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 2, 4))
  with pytest.raises(NotImplementedError, match="dilation"):
    conv.im2col_conv(x, k, (1, 1), "SAME", rhs_dilation=(2, 2))
  with pytest.raises(NotImplementedError, match="CIRCULAR"):
    conv.im2col_conv(x, k, (1, 1), "CIRCULAR")


@pytest.mark.parametrize("input_channels", [1, 6])
def test_conv_cpu_benchmarks_the_same_convolution_four_ways(input_channels):
  """benchmarks/conv_cpu.py's extra methods (im2col through lax.conv_general_dilated_patches; a
  1-channel convolution as a sum of shifted inputs) are the same convolution, and their swap of the
  models' lax convolution is undone afterwards."""
  from benchmarks import conv_cpu

  x = jax.random.normal(jax.random.key(1), (2, 14, 14, input_channels))
  k = jax.random.normal(jax.random.key(0), (5, 5, input_channels, 16))
  for padding in ("SAME", "VALID"):
    reference = jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=conv.NHWC)
    close(conv_cpu.patches_op_conv(x, k, (1, 1), padding), reference, "float32")
    close(conv_cpu.shifted_sum_conv(x, k, (1, 1), padding, conv.NHWC), reference, "float32")
  with conv_cpu.convolutions(conv_cpu.patches_op_conv):
    assert conv.function("lax") is conv_cpu.patches_op_conv
    assert conv.function("im2col") is conv.im2col_conv
  assert conv.function("lax") is None
