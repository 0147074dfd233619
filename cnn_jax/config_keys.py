"""Config fields by dotted key ('optimizer.learning_rate'): read one, or set one that exists.

Used wherever a key arrives as text (a population's lists, a sweep's space, the Python API's
overrides), so a misspelled key gets the same message everywhere. Needs nothing but ml_collections,
so the commands that use it still answer --help without loading JAX.
"""

import difflib

import ml_collections

from cnn_jax.errors import UserError


def config_field(config: ml_collections.ConfigDict, key: str):
  """The value of the dotted `key` ('optimizer.learning_rate') in `config`.

  Raises:
    UserError: no such field; the message names where the walk stopped and the closest field.
  """
  node, parts = config, key.split('.')
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      names = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, names, n=1)
      raise UserError(f'unknown config key {key!r}: {".".join(parts[:i]) or "the config"} has '
                      f'no field {part!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
    node = node[part]
  return node


def set_config_field(config: ml_collections.ConfigDict, key: str, value) -> None:
  """Sets the dotted `key` of `config` (which may be locked) to `value`.

  Raises:
    UserError: no such field, or a value of another type than the field's.
  """
  parent, _, leaf = key.rpartition('.')
  node = config_field(config, parent) if parent else config
  config_field(config, key)  # The field must exist: a misspelled key is an error, not a new one.
  try:
    with node.unlocked():
      node[leaf] = value
  except (TypeError, ValueError) as e:
    raise UserError(f'config key {key!r}: {e}') from None
