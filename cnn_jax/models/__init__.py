"""The model registry: every model the config can name, and how to build one.

A model is a Flax linen module whose `__call__(x, train=False)` maps float32 images [B, H, W, C] to
float32 logits [B, num_classes]. A variant is a `functools.partial` of a module class, so its
preset fields are just defaults that a config can still override by name.

  model = create_model('keras_mnist', num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  logits = model.apply(variables, images)  # [B, 10]
"""

import dataclasses
import difflib
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn

from cnn_jax.errors import UserError
from cnn_jax.models.convnet import KERAS_MNIST, LENET5, SINGLE_CONV, TINY, ConvNet
from cnn_jax.models.layers import Pool
from cnn_jax.models.resnet import RESNET10, RESNET18, RESNET_SMALL, ResNet
from cnn_jax.models.shapes import check_fits, conv_output_size

MODELS: dict[str, Callable[..., nn.Module]] = {
  'convnet': ConvNet,
  'keras_mnist': KERAS_MNIST,
  'single_conv': SINGLE_CONV,
  'lenet5': LENET5,
  'tiny': TINY,
  'resnet': ResNet,
  'resnet18': RESNET18,
  'resnet10': RESNET10,
  'resnet_small': RESNET_SMALL,
}

# Dataclass fields every linen module has that are not model settings; `num_classes` is its own
# argument of `create_model` (it comes from the data, not the model config).
_NOT_KWARGS = ('parent', 'name', 'num_classes')

# Names people reach for that difflib would not match; `init` cannot be a field, as it would shadow
# `Module.init`.
_HINTS = {'init': 'initializer', 'kernel_init': 'initializer', 'filters': 'features'}

_BUILT_IN = frozenset(MODELS)

__all__ = ['MODELS', 'ConvNet', 'Pool', 'ResNet', 'check_fits', 'conv_output_size', 'create_model',
           'model_fields', 'register']


def register(name: str, factory: Callable[..., nn.Module]) -> None:
  """Makes `factory` (a linen module class, or a `functools.partial` of one, taking
  `num_classes` and `dtype`) available as `config.model.name=name`. A config file that defines
  a model registers it this way; loading the file again replaces its own entry, but no built-in
  model can be replaced."""
  if name in _BUILT_IN:
    raise ValueError(f'{name!r} is a built-in model; register yours under another name')
  MODELS[name] = factory


def _lookup(name: str) -> Callable[..., nn.Module]:
  """Returns MODELS[name], or raises a UserError listing the known names."""
  if name in MODELS:
    return MODELS[name]
  close = difflib.get_close_matches(str(name), list(MODELS), n=1)
  hint = f" (did you mean '{close[0]}'?)" if close else ''
  raise UserError(f"unknown model {name!r}{hint}; choose one of: {', '.join(MODELS)}")


def _module_class(factory: Callable[..., nn.Module]) -> type[nn.Module]:
  """Unwraps (possibly nested) functools.partials down to the module class."""
  while isinstance(factory, functools.partial):
    factory = factory.func
  return factory


def model_fields(name: str) -> tuple[str, ...]:
  """Returns the keyword arguments `create_model(name, ...)` accepts, in declaration order.

  These are the dataclass fields of the model's module class, without `parent`, `name` and
  `num_classes` (which `create_model` takes as its own argument).

  Raises:
    UserError: unknown model name.
  """
  cls = _module_class(_lookup(name))
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _NOT_KWARGS)


def _freeze(value: Any) -> Any:
  """Turns lists (as configs and JSON give them) into tuples, so the module stays hashable."""
  if isinstance(value, Sequence) and not isinstance(value, str):
    return tuple(_freeze(v) for v in value)
  return value


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds the model registered as `name`.

  Args:
    name: a key of `MODELS`.
    num_classes: number of logits.
    **kwargs: overrides of the model's fields (see `model_fields(name)`).

  Returns:
    An unbound linen module; call `init` / `apply` on it.

  Raises:
    UserError: unknown name, unknown keyword, or an invalid field value.
  """
  factory = _lookup(name)
  allowed = model_fields(name)
  for key in kwargs:
    if key not in allowed:
      close = [_HINTS[key]] if key in _HINTS else difflib.get_close_matches(key, allowed, n=1)
      hint = f" (did you mean '{close[0]}'?)" if close else ''
      raise UserError(
        f"model {name!r} got unknown argument {key!r}{hint}; accepted: {', '.join(allowed)}"
      )
  return factory(num_classes=num_classes, **{k: _freeze(v) for k, v in kwargs.items()})
