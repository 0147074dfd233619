"""A per-layer model summary: output shape, parameters and FLOPs of every leaf layer.

Shapes come from Flax's own `capture_intermediates` on `model.apply`, run under `jax.eval_shape`,
so nothing is computed (a 224 px ResNet-18 summarises in about a second) and there is no second,
hand-written forward pass to drift out of sync with the model.

FLOPs are per image, forward pass only, counting a multiply-add as 2 FLOPs:
  Conv       2 · Hout · Wout · Cout · kh · kw · Cin/groups   (bias adds ignored)
  Dense      2 · in · out                                    (bias adds ignored)
  Pool       window area · output elements                   (one compare/add per input read)
  BatchNorm  2 · elements                                    (a scale and a shift, folded at eval)
  Dropout    0
Activations, residual adds and global average pooling are not counted; they are a few percent of a
conv net's total. XLA's own estimate (`compiled.cost_analysis()['flops']`) agrees to within that.
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.models.layers import Conv, Pool


@dataclasses.dataclass(frozen=True)
class LayerRow:
  """One line of the summary.

  Attributes:
    name: module path joined with '/', e.g. 'stage1_block0/conv_0'; 'input' for the input row.
    kind: module class name, e.g. 'Conv', 'Pool', 'Dense'.
    output_shape: output shape of one image, without the batch dimension, e.g. (28, 28, 10).
    params: number of trainable parameters of this layer (batch-norm running stats excluded).
    flops: forward FLOPs per image (see the module docstring for the convention).
  """

  name: str
  kind: str
  output_shape: tuple
  params: int
  flops: int


def count_params(params: Any) -> int:
  """Returns the number of scalars in a pytree of arrays (or of `jax.ShapeDtypeStruct`s)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _layer_flops(module: nn.Module, params: Mapping[str, Any], out_shape: tuple) -> int:
  """FLOPs per image of one leaf layer whose output for one image has shape `out_shape`."""
  outputs = math.prod(out_shape)
  if isinstance(module, (nn.Conv, Conv)):
    # kernel [kh, kw, Cin/groups, Cout]: each output pixel does kh·kw·Cin/groups MACs per channel.
    kernel = params['kernel'].shape
    return 2 * math.prod(out_shape[:-1]) * math.prod(kernel)
  if isinstance(module, nn.Dense):
    kernel = params['kernel'].shape  # [in, out]
    return 2 * (outputs // kernel[-1]) * math.prod(kernel)
  if isinstance(module, Pool):
    return 0 if module.kind == 'none' else module.window**2 * outputs
  if isinstance(module, nn.BatchNorm):
    return 2 * outputs
  return 0


def _subtree(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  """Returns tree[path[0]][path[1]]..., or {} where the path is absent (a layer with no params)."""
  for key in path:
    if key not in tree:
      return {}
    tree = tree[key]
  return tree


def summarize(model: nn.Module, input_shape: tuple[int, int, int],
              variables: Mapping[str, Any] | None = None) -> list[LayerRow]:
  """Lists the model's leaf layers in call order with their output shape, params and FLOPs.

  Args:
    model: a linen module called as `model.apply(variables, x, train=False)`.
    input_shape: (H, W, C) of one image.
    variables: the model's variables; if None they are created with `jax.eval_shape` (free).

  Returns:
    An 'input' row, then one row per leaf module (Conv, BatchNorm, Pool, Dropout, Dense, ...).
    Rows' params sum to `count_params(variables['params'])` when only leaf modules own params.
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  if variables is None:
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  # The filter runs after each module call returns, so children come before their parent and
  # leaves appear in call order. A module that ran no submodule before returning is a leaf.
  calls: list[tuple[tuple[str, ...], nn.Module]] = []

  def record(module: nn.Module, method: str) -> bool:
    if method == '__call__' and module.path:
      calls.append((tuple(module.path), module.clone(parent=None)))
      return True
    return False

  _, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False, capture_intermediates=record,
                             mutable=['intermediates']),
    variables, x,
  )
  rows = [LayerRow('input', 'Input', tuple(input_shape), 0, 0)]
  parents = {path[:i] for path, _ in calls for i in range(1, len(path))}
  seen: dict[tuple[str, ...], int] = {}
  for path, module in calls:
    if path in parents:
      continue
    call_index = seen.get(path, 0)  # a module called twice sows a tuple of two outputs
    seen[path] = call_index + 1
    out = _subtree(state['intermediates'], path)['__call__'][call_index]
    out_shape = tuple(out.shape[1:])
    params = _subtree(variables.get('params', {}), path)
    rows.append(LayerRow(
      name='/'.join(path),
      kind=type(module).__name__,
      output_shape=out_shape,
      params=count_params(params) if call_index == 0 else 0,  # shared weights counted once
      flops=_layer_flops(module, params, out_shape),
    ))
  return rows


def _si(n: float, unit: str) -> str:
  """Formats 1_234_567 as '1.23 M' + unit."""
  for scale, prefix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if n >= scale:
      return f'{n / scale:.2f} {prefix}{unit}'
  return f'{n:.0f} {unit}'


def format_summary(rows: list[LayerRow]) -> str:
  """Renders rows as a fixed-width table with totals.

  Example (keras_mnist, 28×28×1, 10 classes; abridged):

    Layer     Type    Output shape  Params  FLOPs/image
    input     Input   28x28x1            0            0
    conv_0    Conv    26x26x32         320      389,376
    ...
    Total params: 34,826
    Total FLOPs/image: 4.90 MFLOPs (multiply-add = 2 FLOPs)
  """
  header = ('Layer', 'Type', 'Output shape', 'Params', 'FLOPs/image')
  table = [header] + [
    (r.name, r.kind, 'x'.join(map(str, r.output_shape)), f'{r.params:,}', f'{r.flops:,}')
    for r in rows
  ]
  widths = [max(len(line[i]) for line in table) for i in range(len(header))]

  def fmt(line: tuple[str, ...]) -> str:
    left = [cell.ljust(w) for cell, w in zip(line[:3], widths[:3])]
    right = [cell.rjust(w) for cell, w in zip(line[3:], widths[3:])]
    return '  '.join(left + right).rstrip()

  rule = '-' * len(fmt(tuple('x' * w for w in widths)))
  total_params = sum(r.params for r in rows)
  total_flops = sum(r.flops for r in rows)
  return '\n'.join([
    fmt(table[0]), rule, *map(fmt, table[1:]), rule,
    f'Total params: {total_params:,}',
    f'Total FLOPs/image: {_si(total_flops, "FLOPs")} (multiply-add = 2 FLOPs)',
  ])
