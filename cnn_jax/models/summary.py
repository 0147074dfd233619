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

from cnn_jax.models.layers import Pool

# The kinds a row names: a layer that computes one of these another way (cnn_jax.speed's) is
# shown as the layer it stands for.
_KINDS = (nn.Conv, nn.BatchNorm, nn.Dense, Pool)


@dataclasses.dataclass(frozen=True)
class LayerRow:
  """One line of the summary.

  Attributes:
    name: module path joined with '/', e.g. 'stage1_block0/conv_0'; 'input' for the input row.
    kind: module class name, e.g. 'Conv', 'Pool', 'Dense'.
    output_shape: output shape of one image, without the batch dimension, e.g. (28, 28, 10).
    params: number of trainable parameters of this layer (batch-norm running stats excluded).
    flops: forward FLOPs per image (see the module docstring for the convention).
    input_shape, kernel, stride, padding: the input of one image and F, S and P of a conv or
      pooling layer, for the arithmetic of `size_arithmetic` and `param_arithmetic`.
  """

  name: str
  kind: str
  output_shape: tuple
  params: int
  flops: int
  input_shape: tuple = ()  # Of one image; () for the input row.
  kernel: int | None = None  # Filter (or pooling window) side F, for conv and pooling layers.
  stride: int | None = None  # S.
  padding: float | None = None  # P: zeros added on each side (a half where SAME pads unevenly).


def count_params(params: Any) -> int:
  """Returns the number of scalars in a pytree of arrays (or of `jax.ShapeDtypeStruct`s)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _layer_flops(module: nn.Module, params: Mapping[str, Any], out_shape: tuple) -> int:
  """FLOPs per image of one leaf layer whose output for one image has shape `out_shape`."""
  outputs = math.prod(out_shape)
  if isinstance(module, nn.Conv):
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
  inputs: dict[tuple[str, ...], tuple] = {}  # Each module's first input, of one image.

  def record_input(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == '__call__' and module.path and args and hasattr(args[0], 'shape'):
      inputs.setdefault(tuple(module.path), tuple(args[0].shape[1:]))
    return next_fun(*args, **kwargs)

  def record(module: nn.Module, method: str) -> bool:
    if method == '__call__' and module.path:
      calls.append((tuple(module.path), module.clone(parent=None)))
      return True
    return False

  def apply(v, x):
    with nn.intercept_methods(record_input):
      return model.apply(v, x, train=False, capture_intermediates=record,
                         mutable=['intermediates'])

  _, state = jax.eval_shape(apply, variables, x)
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
    in_shape = inputs.get(path, ())
    rows.append(LayerRow(
      name='/'.join(path),
      kind=next((k.__name__ for k in _KINDS if isinstance(module, k)), type(module).__name__),
      output_shape=out_shape,
      params=count_params(params) if call_index == 0 else 0,  # shared weights counted once
      flops=_layer_flops(module, params, out_shape),
      input_shape=in_shape,
      **_geometry(module, in_shape),
    ))
  return rows


def _side(value) -> int:
  """A square kernel's or stride's side, from an int or a (h, w) pair."""
  return int(value if isinstance(value, int) else value[0])


def _geometry(module: nn.Module, in_shape: tuple) -> dict:
  """{'kernel', 'stride', 'padding'} (F, S, P along the height) of a conv or pooling layer."""
  if isinstance(module, nn.Conv):
    kernel, stride, padding = _side(module.kernel_size), _side(module.strides or 1), module.padding
  elif isinstance(module, Pool) and module.kind != 'none':
    kernel, stride, padding = module.window, module.stride, module.padding
  else:
    return {}
  if not in_shape:
    return {}
  return {'kernel': kernel, 'stride': stride,
          'padding': padding_zeros(in_shape[0], kernel, stride, padding)}


def padding_zeros(size: int, kernel: int, stride: int, padding) -> float:
  """P, the zeros on each side: 0 for 'VALID'; for 'SAME', half of the total padding that makes
  the output ceil(W / S) (a half when it is odd: SAME pads the extra zero after); for explicit
  ((low, high), ...) pairs, the mean of the first pair."""
  if padding == 'VALID':
    return 0
  if padding == 'SAME':
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total / 2 if total % 2 else total // 2
  low, high = padding[0]
  return (low + high) / 2 if (low + high) % 2 else (low + high) // 2


def _number(value: float) -> str:
  return f'{value:g}' if isinstance(value, float) else f'{value:,}'


def size_arithmetic(row: LayerRow) -> str:
  """The output side of a conv or pooling layer, worked out as introductions write it:
  '(32 − 5 + 2·0)/1 + 1 = 28' ('⌊…⌋' where the division is not exact); '' for other layers."""
  if row.kernel is None:
    return ''
  w, f, p, s = row.input_shape[0], row.kernel, row.padding, row.stride
  top = w - f + 2 * p
  division = f'({w} − {f} + 2·{_number(p)})/{s}'
  if top % s:
    division = f'⌊{division}⌋'
  return f'{division} + 1 = {row.output_shape[0]}'


def param_arithmetic(row: LayerRow) -> str:
  """How a layer's parameter count comes about: '5·5·3·10 + 10 = 760' for a conv (F·F·Cin·Cout
  weights, a bias per filter), '1,600·10 + 10 = 16,010' for a dense layer, '2·32 = 64' for batch
  norm (a scale and a shift per channel); '' for a layer without parameters."""
  if not row.params:
    return ''
  out = row.output_shape[-1]
  if row.kind in ('Conv',) and row.kernel is not None and row.input_shape:
    weights = row.kernel * row.kernel * row.input_shape[-1] * out
    product = f'{row.kernel}·{row.kernel}·{row.input_shape[-1]:,}·{out:,}'
  elif row.kind == 'Dense' and row.input_shape:
    weights = math.prod(row.input_shape) * out
    product = f'{math.prod(row.input_shape):,}·{out:,}'
  elif row.kind == 'BatchNorm':
    return f'2·{out} = {row.params:,}'
  else:
    return ''
  bias = row.params - weights
  return f'{product}' + (f' + {bias:,}' if bias else '') + f' = {row.params:,}'


def mlp_params(input_shape: tuple, hidden: tuple[int, ...], num_classes: int) -> int:
  """Parameters of a fully connected network from the flattened image through `hidden` widths to
  `num_classes` outputs, each layer with a bias: what the convolutions are compared against."""
  widths = [math.prod(input_shape), *hidden, num_classes]
  return sum(a * b + b for a, b in zip(widths, widths[1:]))


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
  cells = [(r.name, r.kind, 'x'.join(map(str, r.output_shape)), f'{r.params:,}', f'{r.flops:,}')
           for r in rows]
  return _table(header, cells, right_aligned={3, 4}, rows=rows)


def _table(header: tuple[str, ...], cells: list[tuple[str, ...]], right_aligned: set[int],
           rows: list[LayerRow]) -> str:
  """A fixed-width table of `cells` under `header` (numbers right-aligned), ruled, then the
  totals of `rows`."""
  table = [header, *cells]
  widths = [max(len(line[i]) for line in table) for i in range(len(header))]
  fmt = lambda line: '  '.join(cell.rjust(w) if i in right_aligned else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
  rule = '-' * len(fmt(tuple('x' * w for w in widths)))
  return '\n'.join([
    fmt(header), rule, *map(fmt, cells), rule,
    f'Total params: {sum(r.params for r in rows):,}',
    f'Total FLOPs/image: {_si(sum(r.flops for r in rows), "FLOPs")} (multiply-add = 2 FLOPs)',
  ])


def explained_rows(rows: list[LayerRow]) -> list[dict]:
  """Each row as a dict with its arithmetic worked out (what `format_explained` prints)."""
  return [{'name': r.name, 'type': r.kind, 'input_shape': list(r.input_shape),
           'output_shape': list(r.output_shape), 'kernel': r.kernel, 'stride': r.stride,
           'padding': r.padding, 'output_size': size_arithmetic(r), 'params': r.params,
           'params_worked_out': param_arithmetic(r), 'flops': r.flops} for r in rows]


def format_explained(rows: list[LayerRow], mlp: int | None = None) -> str:
  """The summary with, per layer, F, S and P, the output size and the parameters worked out, then
  the totals and (given `mlp`, see `mlp_params`) what a fully connected network would need."""
  header = ('Layer', 'Type', 'Output shape', 'F', 'S', 'P', 'Output size (W − F + 2P)/S + 1',
            'Params', 'Params worked out', 'FLOPs/image')
  optional = lambda value: '' if value is None else _number(value)
  cells = [(r.name, r.kind, 'x'.join(map(str, r.output_shape)), optional(r.kernel),
            optional(r.stride), optional(r.padding), size_arithmetic(r), f'{r.params:,}',
            param_arithmetic(r), f'{r.flops:,}') for r in rows]
  text = _table(header, cells, right_aligned={3, 4, 5, 7, 9}, rows=rows)
  if mlp is not None:
    total = sum(r.params for r in rows)
    text += (f'\nA fully connected network with the same inputs, hidden widths and outputs: '
             f'{mlp:,} params ({mlp / max(total, 1):,.1f}× as many).')
  return text
