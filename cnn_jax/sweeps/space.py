"""What a sweep varies: `KEY=SPEC` strings, checked against the config before anything runs.

    optimizer.learning_rate=loguniform(1e-4,1e-1)   a log-uniform float range
    model.dropout=uniform(0,0.5)                     a uniform float range
    batch_size=int(32,256)                           an integer range (inclusive)
    model.features=[16,32,64]                        a list of values (what a grid sweeps)

A scalar value for a tuple-valued field (model.features=16) means a one-element tuple, so the
single-conv network's filter count sweeps as plainly as a learning rate does.
"""

import ast
import dataclasses
import difflib
import itertools
import math
import re
from typing import Any

import ml_collections

from cnn_jax import config_keys
from cnn_jax.errors import UserError

KINDS = ('choice', 'uniform', 'loguniform', 'int')
SAMPLERS = ('grid', 'random', 'tpe')  # How the space is explored (Optuna samplers).
PRUNERS = ('none', 'median', 'halving')  # How unpromising trials are stopped early.


@dataclasses.dataclass(frozen=True)
class Param:
  """One swept key: a list of choices, or a range of the given kind."""
  key: str
  kind: str
  values: tuple = ()  # kind 'choice'
  low: float = 0.0
  high: float = 0.0
  # As the user wrote it ('optimizer.learning_rate=loguniform(1e-4,1e-1)'), for the pages that
  # show the sweep; not part of what the Param is.
  text: str = dataclasses.field(default='', compare=False, repr=False)


def parse(text: str) -> Param:
  """Parses one 'KEY=SPEC'.

  Raises:
    UserError: the text is not KEY=[...], KEY=uniform(a,b), KEY=loguniform(a,b) or KEY=int(a,b).
  """
  key, sep, spec = text.partition('=')
  key, spec = key.strip(), spec.strip()
  if not sep or not key or not spec:
    raise UserError(f'--sweep {text!r}: write KEY=SPEC, e.g. optimizer.learning_rate='
                    'loguniform(1e-4,1e-1) or model.features=[16,32,64].')
  match = re.fullmatch(r'(uniform|loguniform|int)\(\s*([^,]+?)\s*,\s*([^,]+?)\s*\)', spec)
  called = re.fullmatch(r'(\w+)\s*\(.*', spec)
  if called and not match:
    name, ranges = called.group(1), ('uniform', 'loguniform', 'int')
    close = difflib.get_close_matches(name, ranges, n=1)
    problem = (f'{name} takes two numbers' if name in ranges else
               f'{name!r} is not a range' + (f' (did you mean {close[0]!r}?)' if close else ''))
    raise UserError(f'--sweep {text!r}: {problem}. Write uniform(a,b), loguniform(a,b), '
                    'int(a,b) or a list [a,b,c].')
  try:
    if match:
      kind, low, high = match.group(1), float(match.group(2)), float(match.group(3))
      if not low < high or (kind == 'loguniform' and low <= 0):
        raise ValueError(f'{kind} needs low < high' + (' and low > 0' if kind == 'loguniform'
                                                       else ''))
      return Param(key, kind, low=low, high=high, text=text.strip())
    values = ast.literal_eval(spec)
  except (ValueError, SyntaxError) as e:
    raise UserError(f'--sweep {text!r}: cannot read {spec!r} ({e}).') from None
  if not isinstance(values, (list, tuple)) or not values:
    raise UserError(f'--sweep {text!r}: a list of values is written [a,b,c].')
  return Param(key, 'choice', values=tuple(values), text=text.strip())


def _field(config: ml_collections.ConfigDict, key: str):
  try:
    return config_keys.config_field(config, key)
  except UserError as e:
    raise UserError(f'--sweep: {e}.') from None


def coerce(config: ml_collections.ConfigDict, key: str, value: Any) -> Any:
  """Returns `value` in the type of config field `key` (a scalar for a tuple field → 1-tuple)."""
  current = _field(config, key)
  if isinstance(current, tuple):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
  if isinstance(current, bool) or current is None:
    return value
  if isinstance(current, float) and isinstance(value, int):
    return float(value)
  if isinstance(current, int) and isinstance(value, float) and value.is_integer():
    return int(value)
  return value


def check(config: ml_collections.ConfigDict, params: list[Param]) -> None:
  """Raises UserError if a key is missing, repeated, or a value does not fit its field's type."""
  keys = [p.key for p in params]
  repeated = {k for k in keys if keys.count(k) > 1}
  if repeated:
    raise UserError(f'--sweep names {sorted(repeated)} more than once.')
  for param in params:
    current = _field(config, param.key)
    samples = param.values if param.kind == 'choice' else (param.low, param.high)
    for value in samples:
      value = coerce(config, param.key, value)
      if current is not None and not isinstance(value, type(current)):
        raise UserError(f'--sweep {param.key}: {value!r} is a {type(value).__name__}, the field '
                        f'is a {type(current).__name__} ({current!r}).')


def apply(config: ml_collections.ConfigDict, values: dict[str, Any]) -> ml_collections.ConfigDict:
  """Returns an unlocked copy of `config` with the swept `values` set."""
  result = ml_collections.ConfigDict(config.to_dict())
  for key, value in values.items():
    config_keys.set_config_field(result, key, coerce(config, key, value))
  return result


def suggest(trial, param: Param) -> Any:
  """Asks the Optuna trial for this parameter's value."""
  if param.kind == 'choice':
    # Optuna stores choices as simple types; index them so tuples and mixed values work too.
    index = trial.suggest_categorical(param.key, list(range(len(param.values))))
    return param.values[index]
  if param.kind == 'int':
    return trial.suggest_int(param.key, int(param.low), int(param.high))
  return trial.suggest_float(param.key, param.low, param.high, log=param.kind == 'loguniform')


def grid(params: list[Param]) -> list[dict[str, int]]:
  """Every combination of the choices, as Optuna parameter dicts (choice indices).

  Raises:
    UserError: a parameter is a range, which a grid cannot enumerate.
  """
  ranges = [p.key for p in params if p.kind != 'choice']
  if ranges:
    raise UserError(f'a grid needs lists of values; {ranges} are ranges: use --sampler=random '
                    'or --sampler=tpe, or give lists.')
  keys = [p.key for p in params]
  return [dict(zip(keys, combo))
          for combo in itertools.product(*(range(len(p.values)) for p in params))]


def values_of(params: list[Param], optuna_params: dict[str, Any]) -> dict[str, Any]:
  """Maps Optuna's stored parameters (choice indices) back to the swept values."""
  by_key = {p.key: p for p in params}
  return {key: by_key[key].values[value] if by_key[key].kind == 'choice' else value
          for key, value in optuna_params.items() if key in by_key}


def describe(param: Param) -> str:
  """'[16, 32, 64]' or 'loguniform(0.0001, 0.1)', for tables and logs."""
  if param.kind == 'choice':
    return '[' + ', '.join(map(str, param.values)) + ']'
  return f'{param.kind}({param.low:g}, {param.high:g})'


def grid_size(params: list[Param]) -> int:
  """Number of combinations of the choices."""
  return math.prod(len(p.values) for p in params)
