"""The loss registry: `config.loss` names the function training minimises.

A loss maps float32 logits [B, K], integer labels [B] and a label-smoothing amount (a float, or
a population member's traced value) to one value per example [B]; the steps average it over the
batch, and evaluation sums it over the split with no smoothing. To try another, write such a
function and register it from your config file (experiments/extending/ does):

    from cnn_jax.training import losses
    losses.register('my_loss', my_loss)
    config.loss = 'my_loss'
"""

import difflib
from collections.abc import Callable

import jax
import optax

from cnn_jax.errors import UserError
from cnn_jax.models.layers import is_static_zero

Loss = Callable[[jax.Array, jax.Array, float | jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float | jax.Array = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy [B] of logits [B, K] against integer labels [B], with
  `label_smoothing` of the target's mass spread uniformly over the K classes."""
  if is_static_zero(label_smoothing):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


LOSSES: dict[str, Loss] = {'cross_entropy': cross_entropy}
_BUILT_IN = frozenset(LOSSES)


def register(name: str, loss: Loss) -> None:
  """Makes `loss` available as `config.loss=name`. A config file that defines a loss registers
  it this way; loading the file again replaces its own entry, but no built-in loss can be
  replaced."""
  if name in _BUILT_IN:
    raise ValueError(f'{name!r} is a built-in loss; register yours under another name')
  LOSSES[name] = loss


def get(name: str) -> Loss:
  """Returns the loss registered as `name`.

  Raises:
    UserError: no loss of that name; the message lists the registered ones.
  """
  if name in LOSSES:
    return LOSSES[name]
  close = difflib.get_close_matches(str(name), list(LOSSES), n=1)
  hint = f" (did you mean '{close[0]}'?)" if close else ''
  raise UserError(f"unknown loss {name!r}{hint}; registered: {', '.join(LOSSES)}")
