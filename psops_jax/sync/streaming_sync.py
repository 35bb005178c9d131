"""Streaming sync: the outer sync one fragment of the weights at a time, overlapped with compute."""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from psops_jax.clock import Collective
from psops_jax.errors import is_integer, is_number, require
from psops_jax.sync import aggregates, compressors
from psops_jax.sync.collectives import AxisName, float_count, float_leaves, map_floats
from psops_jax.sync.interface import SyncStrategy, export_mean, identity, make_strategy

PyTree = Any


class StreamingState(NamedTuple):
  """One particle's state of `streaming`. The float weights are one flat vector padded to F
  fragments of c values: `center` theta (F c), `opt_state` the outer optimizer's state of each
  fragment stacked on a leading axis of F, `residual` the particle's error feedback (F c, or ()),
  `pending` the aggregated pseudo-gradients still on the wire (delay x c, or ()), `count` the syncs
  done so far; with a delay, `outgoing` (c) and `outgoing_fitness` are what this particle sent at
  the last sync, all-reduced by `communicate` during the next round's local steps (else ());
  eager with a delay: `own_pending` this particle's own share of each update in `pending`, the
  pseudo-gradients it sent (delay x c, else ())."""

  center: jax.Array
  opt_state: PyTree
  residual: PyTree
  pending: PyTree
  count: jax.Array
  outgoing: PyTree = ()
  outgoing_fitness: PyTree = ()
  own_pending: PyTree = ()


def fragment_size(count: int, fragments: int) -> int:
  """c = ceil(count / F): the values of one fragment (the last one padded with zeros)."""
  return -(-count // fragments)


def check_streaming(fragments, delay, mix, eager, aggregate) -> None:
  """errors.BadArgument unless F >= 1, 0 <= d <= F, 0 <= a <= 1 and eager is a bool, False
  unless the aggregate is the mean."""
  require(
    is_integer(fragments) and fragments >= 1,
    "fragments",
    fragments,
    "accepted values are integers >= 1",
  )
  require(
    is_integer(delay) and 0 <= delay <= fragments,
    "delay",
    delay,
    f"accepted values are 0..{fragments} (fragments)",
  )
  require(is_number(mix) and 0 <= mix <= 1, "mix", mix, "accepted values are in [0, 1]")
  require(isinstance(eager, bool), "eager", eager, "accepted values are True and False")
  require(
    not eager or aggregate.name == "mean",
    "eager",
    eager,
    f"accepted values are False with the aggregate {aggregate.name!r}: eager replaces this "
    "particle's share of the mean, which only the mean has",
  )


class StreamingParts(NamedTuple):
  """The arguments of `streaming`, checked, with the parts' defaults filled in."""

  fragments: int
  delay: int
  mix: float
  eager: bool
  aggregate: aggregates.Aggregate
  optimizer: optax.GradientTransformation | None
  compressor: compressors.Compressor
  axis_name: AxisName


def sends_weights(s: StreamingParts) -> bool:
  """Whether the payload is the weights' fragment (compressor none) rather than the
  pseudo-gradient. Not with eager, which needs each particle's pseudo-gradient against its own
  theta (they differ), nor with d = F, where theta_f changes (the update landing as the fragment
  is sent) before `communicate` would subtract the aggregate from it."""
  return s.compressor.name == "none" and not s.eager and s.delay < s.fragments


def padded(s: StreamingParts, params):
  """(the float weights as one flat vector padded to F c values, its unravel, c)."""
  flat, unravel = ravel_pytree(float_leaves(params))
  c = fragment_size(flat.shape[0], s.fragments)
  return jnp.pad(flat, (0, s.fragments * c - flat.shape[0])), unravel, c


def init_state(s: StreamingParts, params) -> StreamingState:
  """theta := the initial weights; the outer state of every fragment; nothing on the wire."""
  center, _, c = padded(s, params)
  slices = center.reshape(s.fragments, c)
  return StreamingState(
    center=center,
    opt_state=jax.vmap(s.optimizer.init)(slices) if s.optimizer is not None else (),
    residual=jnp.zeros_like(center) if s.compressor.error_feedback else (),
    pending=jnp.zeros((s.delay, c), center.dtype) if s.delay else (),
    count=jnp.zeros((), jnp.int32),
    outgoing=jnp.zeros((c,), center.dtype) if s.delay else (),
    outgoing_fitness=jnp.zeros((), jnp.float32) if s.delay else (),
    own_pending=jnp.zeros((s.delay, c), center.dtype) if s.eager and s.delay else (),
  )


def local_payload(s: StreamingParts, x, state: StreamingState, c):
  """(what this particle sends for fragment f = k mod F, its new residual): the fragment of its
  weights (`sends_weights`), or its compressed pseudo-gradient theta_f - x_f (+ beta e_f)."""
  sent = state.count % s.fragments
  fragment = lambda v: lax.dynamic_slice(v, (sent * c,), (c,))
  if sends_weights(s):
    return fragment(x), state.residual
  residual = fragment(state.residual) if s.compressor.error_feedback else ()
  received, kept = compressors.send(s.compressor, fragment(state.center) - fragment(x), residual)
  if not s.compressor.error_feedback:
    return received, state.residual
  return received, lax.dynamic_update_slice(state.residual, kept, (sent * c,))


def aggregated_update(s: StreamingParts, payload, theta_f, fitness):
  """u: theta_f - A(payload) (the weights' fragments) or A(payload) (pseudo-gradients): the
  collective of a sync (an aggregate that iterates from a start starts from theta_f, or 0)."""
  if sends_weights(s):
    return theta_f - s.aggregate(payload, fitness, s.axis_name, theta_f)
  return s.aggregate(payload, fitness, s.axis_name, jnp.zeros_like(payload))


def communicate(s: StreamingParts, state: StreamingState) -> StreamingState:
  """The all-reduce of the last sync's payload (fragment (k - 1) mod F, whose theta no update has
  changed since), into the last slot of `pending`. The round runs it beside its local steps."""
  c = state.outgoing.shape[0]
  f = (state.count - 1) % s.fragments
  theta_f = lax.dynamic_slice(state.center, (f * c,), (c,))
  u = aggregated_update(s, state.outgoing, theta_f, state.outgoing_fitness)
  return state._replace(pending=state.pending.at[-1].set(u))


def landed_update(s: StreamingParts, theta, u, opt_state, landed, active):
  """(theta_f after the update u, the optimizer states) of the fragment that lands now."""
  if s.optimizer is None:
    return jnp.where(active, theta - u, theta), opt_state
  mine = jax.tree.map(lambda a: a[landed], opt_state)
  updates, mine = s.optimizer.update(u, mine, theta)
  new_theta = optax.apply_updates(theta, updates)
  opt_state = jax.tree.map(
    lambda a, m: a.at[landed].set(jnp.where(active, m, a[landed])), opt_state, mine
  )
  return jnp.where(active, new_theta, theta), opt_state


def sync_with_stats(s: StreamingParts, params, stats, state: StreamingState, fitness, key):
  """Send fragment k mod F, land the update sent d syncs ago, mix it into the local weights.

  delay 0: the update is aggregated here and lands at once. delay d > 0: this sync only prepares
  the payload (`outgoing`); `communicate` all-reduces it during the next round, so that `pending`
  holds u_{k-d} .. u_{k-1} at sync k, and u_{k-d} lands (`eager`: with this particle's share of
  it replaced by its current pseudo-gradient)."""
  stats = s.aggregate(stats, fitness, s.axis_name)
  x, unravel, c = padded(s, params)
  payload, residual = local_payload(s, x, state, c)
  if s.delay:
    u = state.pending[0]  # u_{k-d}; the last slot waits for this sync's update (communicate)
    pending = jnp.concatenate([state.pending[1:], jnp.zeros_like(state.pending[:1])])
  else:
    sent = state.count % s.fragments
    theta_sent = lax.dynamic_slice(state.center, (sent * c,), (c,))
    u, pending = aggregated_update(s, payload, theta_sent, fitness), ()
  landed = (state.count - s.delay) % s.fragments  # the fragment whose update arrives now
  active = state.count >= s.delay  # nothing has arrived during the first d syncs
  theta = lax.dynamic_slice(state.center, (landed * c,), (c,))
  own_pending = state.own_pending
  if s.eager:
    own_sent = state.own_pending[0] if s.delay else payload  # this particle's share of u, sent
    own_now = theta - lax.dynamic_slice(x, (landed * c,), (c,))
    u = u + (own_now - own_sent) / lax.psum(1, s.axis_name)
    if s.delay:
      own_pending = jnp.concatenate([state.own_pending[1:], payload[None]])
  new_theta, opt_state = landed_update(s, theta, u, state.opt_state, landed, active)
  local = lax.dynamic_slice(x, (landed * c,), (c,))
  mixed = jnp.where(active, new_theta + s.mix * (local - new_theta), local)
  center = lax.dynamic_update_slice(state.center, new_theta, (landed * c,))
  x = lax.dynamic_update_slice(x, mixed, (landed * c,))
  received = iter(unravel(x[: float_count(params)]))
  params = map_floats(lambda a: next(received), params)
  outgoing = (payload, jnp.asarray(fitness, jnp.float32)) if s.delay else ((), ())
  return (
    params,
    stats,
    StreamingState(
      center, opt_state, residual, pending, state.count + 1, *outgoing, own_pending=own_pending
    ),
  )


def bytes_per_round(s: StreamingParts, params, period, opt_state=None) -> int:
  """One fragment's c values at the compressor's width (+ the fitness if the aggregate ranks)."""
  c = fragment_size(float_count(params), s.fragments)
  return s.aggregate.sends * s.compressor.payload_bytes(c) + s.aggregate.fitness_bytes


def streaming(
  fragments: int = 4,
  delay: int = 1,
  mix: float = 0.5,
  aggregate: aggregates.Aggregate | None = None,
  optimizer: optax.GradientTransformation | None = None,
  compressor: compressors.Compressor | None = None,
  axis_name: AxisName = "particles",
  eager: bool = False,
) -> SyncStrategy:
  """Streaming DiLoCo (Douillard et al. 2025): the outer sync of `outer`, one fragment per round.

  The float weights, ravelled in layer order, are cut into F = `fragments` contiguous slices of
  equal size c (equal sizes rather than layer boundaries: LeNet-5's layers are too unequal for
  fragments of similar size). Sync k (0-based, every `period` local steps) sends fragment
  f = k mod F, so each fragment is synced every F rounds with offset f rounds and each sync sends
  1/F of the weights. With d = `delay`, a = `mix`, A the aggregate and C the compressor of `outer`:

      at sync k:      u_k     := theta_f - A(x'_f)  or  A(C(theta_f - x'_f + e_f))   (f = k mod F)
      at sync k + d:  theta_f := theta_f + opt_f.update(u_k)     (the fragment's own outer state;
                      x_f     := theta_f + a (x_f - theta_f)      optimizer None: theta_f - u_k)

  u_k travels while the particles run d more rounds (tau = d x period local steps): with d > 0 its
  all-reduce is issued in the next round's program, beside the local steps (`communicate`), so that
  XLA runs it behind them (also on CPU with gloo: docs/DESIGN.md); it must end with that program,
  so it hides behind one round of compute at most (the clock's `hidden_rounds`). Then fragment f
  of each particle is mixed with the new theta_f: a = 0 takes theta_f, a = 1 keeps the local
  weights. The other fragments train on locally. F = 1, d = 0, a = 0 is `outer` with the same
  parts (DiLoCo with the Nesterov optimizer); 0 <= d <= F, so a fragment's update lands at the
  latest at the sync that sends it again, after its payload is taken (F = d = 1: DiLoCo with the
  outer step delayed by one round, Kale et al. 2025's setting). Batch statistics are averaged at
  every sync (aggregate A), in the same collective. The simulation reduces fragment f only;
  `bytes_per_round` counts its c values at the compressor's width.

  `eager` (Kale, Douillard, Donchev 2025; aggregate mean only): when u_k lands, particle i
  applies, instead of the mean of the pseudo-gradients sent d syncs ago, a mix of its own current
  pseudo-gradient and the others' delayed ones,

      u_i := u_k + (1/N) (delta_i - sent_i),   delta_i = theta_f,i - x_f,i now,
                                               sent_i = its own share of u_k, as sent

  (= (1/N) delta_i + (1/N) sum_{j != i} sent_j), so the outer step sees this particle's fresh
  progress rather than none of it. The particles then step their own copies of theta_f and of
  the outer optimizer state, which differ (each sends its pseudo-gradient against its own theta,
  also with compressor none). With compression, delta_i is the exact local value. d = 0: u_i = u_k
  up to float rounding with compressor none (delta_i = sent_i).
  """
  aggregate = aggregate if aggregate is not None else aggregates.mean()
  check_streaming(fragments, delay, mix, eager, aggregate)
  compressor = compressor if compressor is not None else compressors.none()
  s = StreamingParts(fragments, delay, mix, eager, aggregate, optimizer, compressor, axis_name)
  bind = lambda fn: functools.partial(fn, s)
  return make_strategy(
    bind(init_state),
    bind(sync_with_stats),
    identity,
    bind(bytes_per_round),
    export=export_mean(axis_name),
    # the collective runs behind the next round's steps, and must end with that round's program
    collective=Collective(aggregate.collective, hidden_rounds=min(delay, 1)),
    reads_fitness=aggregate.reads_fitness,
    shared_init=True,
    check=aggregate.check,
    communicate=bind(communicate) if delay else None,
  )
