"""A traced JAX function as an ONNX graph: what `cnn-jax export --format onnx` writes.

The prediction is traced to a jaxpr (`jax.make_jaxpr`), with a symbolic batch dimension when the
export takes any batch size, and each of its primitives becomes the ONNX operators that compute
the same values. The graph keeps the jaxpr's NHWC layout; convolutions and pooling, which ONNX
defines on NCHW, are wrapped in transposes that onnxruntime folds away. Weights are the jaxpr's
constants, stored as initializers. A primitive with no translation here is refused by name, so a
model that uses one fails to export rather than exporting wrongly; `export.export_onnx` also
checks every export against JAX's own output in onnxruntime.

Needs the `onnx` package (`pip install 'cnn_jax[onnx]'`), imported only here.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from cnn_jax.errors import UserError

OPSET = 18  # ReduceMax and ReduceSum take their axes as an input from opset 18 on.
IR_VERSION = 9  # What onnxruntime ≥ 1.16 reads.
BATCH = 'batch'  # The name of the symbolic batch dimension, in JAX and in the ONNX graph.

# One ONNX operator, same inputs in the same order.
_ELEMENTWISE = {
    'add': 'Add', 'sub': 'Sub', 'mul': 'Mul', 'div': 'Div', 'max': 'Max', 'min': 'Min',
    'neg': 'Neg', 'exp': 'Exp', 'log': 'Log', 'tanh': 'Tanh', 'logistic': 'Sigmoid',
    'sqrt': 'Sqrt', 'abs': 'Abs', 'sign': 'Sign', 'erf': 'Erf', 'pow': 'Pow',
    'ge': 'GreaterOrEqual', 'gt': 'Greater', 'le': 'LessOrEqual', 'lt': 'Less', 'eq': 'Equal',
    'and': 'And', 'or': 'Or', 'not': 'Not', 'floor': 'Floor', 'ceil': 'Ceil',
    'stop_gradient': 'Identity', 'copy': 'Identity', 'copy_p': 'Identity',
}
_REDUCTIONS = {'reduce_sum': 'ReduceSum', 'reduce_max': 'ReduceMax', 'reduce_min': 'ReduceMin'}
_SUPPORTED_DTYPES = ('float32', 'uint8', 'bool', 'int32', 'int64')


def _onnx():
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("exporting to ONNX needs the onnx and onnxruntime packages: "
                    "pip install 'cnn_jax[onnx]'") from None
  return onnx


def _is_static(dim: Any) -> bool:
  return isinstance(dim, (int, np.integer))


class _Graph:
  """The ONNX nodes and initializers being written, and the jaxpr variable each name holds."""

  def __init__(self, onnx):
    self.onnx = onnx
    self.nodes: list = []
    self.initializers: list = []
    self._count = 0

  def fresh(self, hint: str) -> str:
    self._count += 1
    return f'{hint}_{self._count}'

  def constant(self, value: Any, dtype: Any = None) -> str:
    array = np.asarray(value, dtype=dtype)
    _check_dtype(array.dtype, 'a constant')
    name = self.fresh('const')
    self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
    return name

  def int64s(self, values: Sequence[int]) -> str:
    return self.constant(np.asarray(list(values), np.int64))

  def node(self, op: str, inputs: Sequence[str], **attributes) -> str:
    output = self.fresh(op.lower())
    self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [output], **attributes))
    return output


def _check_dtype(dtype: Any, what: str) -> None:
  if np.dtype(dtype).name not in _SUPPORTED_DTYPES:
    raise UserError(f'cannot export to ONNX: {what} is {np.dtype(dtype).name}; the ONNX export '
                    'takes models that compute in float32 (config.dtype=float32)')


def _shape_for_reshape(shape: Sequence[Any]) -> list[int]:
  """A target shape for Reshape: the one symbolic dimension (the batch) becomes -1."""
  symbolic = [i for i, d in enumerate(shape) if not _is_static(d)]
  if len(symbolic) > 1:
    raise UserError(f'cannot export to ONNX with a dynamic batch: a reshape to {tuple(shape)} '
                    'has more than one unknown dimension; export with a fixed --batch')
  return [-1 if i in symbolic else int(d) for i, d in enumerate(shape)]


def _inner_jaxpr(params: dict) -> Any:
  """The ClosedJaxpr a call-like primitive (jit, custom_jvp_call, custom_vjp_call) runs."""
  for key in ('jaxpr', 'call_jaxpr', 'fun_jaxpr'):
    if key in params and hasattr(params[key], 'consts'):
      return params[key]
  return None


def _conv(graph: _Graph, eqn, lhs: str, rhs: str) -> str:
  p = eqn.params
  if any(d != 1 for d in p['lhs_dilation']) or p['batch_group_count'] != 1:
    raise UserError('cannot export to ONNX: transposed or batch-grouped convolutions are not '
                    'supported')
  lhs_spec, rhs_spec, out_spec = p['dimension_numbers']
  low, high = zip(*p['padding'])
  if min(low + high) < 0:
    raise UserError('cannot export to ONNX: a convolution with negative padding')
  x = graph.node('Transpose', [lhs], perm=list(lhs_spec))   # → N, C, spatial...
  w = graph.node('Transpose', [rhs], perm=list(rhs_spec))   # → O, I, spatial...
  y = graph.node('Conv', [x, w], strides=list(p['window_strides']),
                 dilations=list(p['rhs_dilation']), pads=list(low) + list(high),
                 group=int(p['feature_group_count']))
  return graph.node('Transpose', [y], perm=[int(i) for i in np.argsort(out_spec)])


def _pool(graph: _Graph, eqn, x: str, kind: str) -> str:
  """reduce_window over some axes as ONNX MaxPool / AveragePool on those axes moved last."""
  p = eqn.params
  rank = len(p['window_dimensions'])
  if any(d != 1 for d in p['base_dilation']):
    raise UserError('cannot export to ONNX: a pooling window with base dilation')
  pooled = [a for a in range(rank) if p['window_dimensions'][a] != 1
            or p['window_strides'][a] != 1 or p['padding'][a] != (0, 0)]
  kept = [a for a in range(rank) if a not in pooled]
  if len(kept) != 2 or not pooled:
    raise UserError(f'cannot export to ONNX: pooling over axes {pooled} of a rank-{rank} tensor')
  perm = kept + pooled  # N, C, pooled axes: ONNX's layout.
  low = [p['padding'][a][0] for a in pooled]
  high = [p['padding'][a][1] for a in pooled]
  attributes = dict(kernel_shape=[p['window_dimensions'][a] for a in pooled],
                    strides=[p['window_strides'][a] for a in pooled], pads=low + high)
  moved = graph.node('Transpose', [x], perm=perm)
  if kind == 'max':
    y = graph.node('MaxPool', [moved], dilations=[p['window_dilation'][a] for a in pooled],
                   **attributes)
  else:
    if any(p['window_dilation'][a] != 1 for a in pooled):
      raise UserError('cannot export to ONNX: a dilated sum pooling window')
    # A window sum is the mean of the window, padded zeros included, times its size.
    mean = graph.node('AveragePool', [moved], count_include_pad=1, **attributes)
    size = math.prod(attributes['kernel_shape'])
    y = graph.node('Mul', [mean, graph.constant(size, np.dtype(eqn.outvars[0].aval.dtype))])
  return graph.node('Transpose', [y], perm=[int(i) for i in np.argsort(perm)])


def _dot_general(graph: _Graph, eqn, lhs: str, rhs: str) -> str:
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params['dimension_numbers']
  lhs_rank, rhs_rank = (len(v.aval.shape) for v in eqn.invars)
  if (lhs_rank, rhs_rank) == (2, 2) and tuple(lhs_contract) == (1,) and \
      tuple(rhs_contract) == (0,) and not lhs_batch:
    return graph.node('MatMul', [lhs, rhs])  # The dense layer.
  letters = iter('abcdefghijklmnopqrstuvwxyz')
  lhs_letters = [next(letters) for _ in range(lhs_rank)]
  rhs_letters = [next(letters) for _ in range(rhs_rank)]
  for l, r in zip(list(lhs_contract) + list(lhs_batch), list(rhs_contract) + list(rhs_batch)):
    rhs_letters[r] = lhs_letters[l]
  out = ([lhs_letters[a] for a in lhs_batch]
         + [c for a, c in enumerate(lhs_letters) if a not in lhs_contract and a not in lhs_batch]
         + [c for a, c in enumerate(rhs_letters) if a not in rhs_contract and a not in rhs_batch])
  return graph.node('Einsum', [lhs, rhs],
                    equation=f'{"".join(lhs_letters)},{"".join(rhs_letters)}->{"".join(out)}')


def _broadcast_in_dim(graph: _Graph, eqn, x: str) -> str:
  shape = eqn.params['shape']
  operand_shape = eqn.invars[0].aval.shape
  dims = eqn.params['broadcast_dimensions']
  if tuple(operand_shape) == tuple(shape):
    return graph.node('Identity', [x])
  aligned = [1] * len(shape)  # The operand's axes at their place in the output, 1 elsewhere.
  for axis, size in zip(dims, operand_shape):
    aligned[axis] = size
  if len(operand_shape) != len(shape):
    x = graph.node('Reshape', [x, graph.int64s(_shape_for_reshape(aligned))])
  # Expand broadcasts both ways: an unknown (batch) dimension is kept from the operand as 1 → n.
  target = [int(d) if _is_static(d) else 1 for d in shape]
  return graph.node('Expand', [x, graph.int64s(target)])


def _emit(graph: _Graph, eqn, inputs: list[str]) -> list[str]:
  """The ONNX names of `eqn`'s outputs, after writing the nodes that compute them."""
  name, p = eqn.primitive.name, eqn.params
  for var in eqn.outvars:
    _check_dtype(var.aval.dtype, f'the output of {name}')
  inner = _inner_jaxpr(p)
  if inner is not None:
    return _emit_jaxpr(graph, inner, inputs)
  if name in _ELEMENTWISE:
    return [graph.node(_ELEMENTWISE[name], inputs)]
  dtype = np.dtype(eqn.outvars[0].aval.dtype)
  if name == 'ne':
    return [graph.node('Not', [graph.node('Equal', inputs)])]
  if name == 'expm1':
    return [graph.node('Sub', [graph.node('Exp', inputs), graph.constant(1, dtype)])]
  if name == 'log1p':
    return [graph.node('Log', [graph.node('Add', [inputs[0], graph.constant(1, dtype)])])]
  if name == 'rsqrt':
    return [graph.node('Reciprocal', [graph.node('Sqrt', inputs)])]
  if name == 'square':
    return [graph.node('Mul', [inputs[0], inputs[0]])]
  if name == 'integer_pow':
    if p['y'] == 2:
      return [graph.node('Mul', [inputs[0], inputs[0]])]
    return [graph.node('Pow', [inputs[0], graph.constant(p['y'], dtype)])]
  if name == 'select_n':
    if len(inputs) != 3 or np.dtype(eqn.invars[0].aval.dtype) != np.bool_:
      raise UserError('cannot export to ONNX: select_n with an integer selector')
    return [graph.node('Where', [inputs[0], inputs[2], inputs[1]])]  # True picks the second case.
  if name == 'convert_element_type':
    to = graph.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(p['new_dtype']))
    return [graph.node('Cast', inputs, to=to)]
  if name == 'reshape':
    if p.get('dimensions') is not None:
      raise UserError('cannot export to ONNX: a reshape that transposes')
    return [graph.node('Reshape', [inputs[0], graph.int64s(_shape_for_reshape(p['new_sizes']))])]
  if name == 'broadcast_in_dim':
    return [_broadcast_in_dim(graph, eqn, inputs[0])]
  if name == 'squeeze':
    return [graph.node('Squeeze', [inputs[0], graph.int64s(p['dimensions'])])]
  if name == 'transpose':
    return [graph.node('Transpose', inputs, perm=list(p['permutation']))]
  if name == 'concatenate':
    return [graph.node('Concat', inputs, axis=int(p['dimension']))]
  if name == 'rev':  # A slice that walks each reversed axis backwards from its last element.
    axes = list(p['dimensions'])
    return [graph.node('Slice', [inputs[0], graph.int64s([-1] * len(axes)),
                                 graph.int64s([np.iinfo(np.int64).min] * len(axes)),
                                 graph.int64s(axes), graph.int64s([-1] * len(axes))])]
  if name == 'slice':
    shape = eqn.invars[0].aval.shape
    steps = p['strides'] or (1,) * len(shape)
    # Only the axes that are cut: an untouched axis may be the unknown (batch) dimension.
    bounds = list(zip(p['start_indices'], p['limit_indices'], steps))
    cut = [a for a, (start, limit, step) in enumerate(bounds)
           if not (start == 0 and step == 1 and limit == shape[a])]
    return [graph.node('Slice', [inputs[0], graph.int64s(bounds[a][0] for a in cut),
                                 graph.int64s(bounds[a][1] for a in cut),
                                 graph.int64s(cut), graph.int64s(steps[a] for a in cut)])]
  if name == 'pad':
    config = p['padding_config']
    if any(interior or low < 0 or high < 0 for low, high, interior in config):
      raise UserError('cannot export to ONNX: interior or negative padding')
    pads = [low for low, _, _ in config] + [high for _, high, _ in config]
    return [graph.node('Pad', [inputs[0], graph.int64s(pads), inputs[1]])]
  if name in _REDUCTIONS:
    return [graph.node(_REDUCTIONS[name], [inputs[0], graph.int64s(p['axes'])], keepdims=0)]
  if name == 'dot_general':
    return [_dot_general(graph, eqn, *inputs)]
  if name == 'conv_general_dilated':
    return [_conv(graph, eqn, *inputs)]
  if name in ('reduce_window_max', 'reduce_window_sum'):
    return [_pool(graph, eqn, inputs[0], name.rsplit('_', 1)[1])]
  if name == 'reduce_window':  # A window reduction given as a jaxpr: the add or max it wraps.
    # Its initial value is taken to be the reduction's identity (0, -inf), as in every pooling
    # of flax and cnn_jax; the check in export.export_onnx would catch any other.
    kind = {('add',): 'sum', ('max',): 'max'}.get(tuple(e.primitive.name for e in p['jaxpr'].eqns))
    if kind is None or len(inputs) != 2:
      raise UserError('cannot export to ONNX: a window reduction other than a sum or a maximum')
    return [_pool(graph, eqn, inputs[0], kind)]
  raise UserError(f'cannot export to ONNX: the model uses the JAX primitive {name!r}, which the '
                  'ONNX export does not translate; export --format stablehlo instead')


def _emit_jaxpr(graph: _Graph, closed, inputs: list[str]) -> list[str]:
  """Writes the nodes of a ClosedJaxpr applied to the ONNX names `inputs`; returns its outputs."""
  jaxpr = closed.jaxpr
  names: dict = {}
  for var, value in zip(jaxpr.constvars, closed.consts):
    names[var] = graph.constant(np.asarray(value))
  for var, name in zip(jaxpr.invars, inputs):
    names[var] = name

  def read(atom) -> str:
    if hasattr(atom, 'val'):  # A literal.
      return graph.constant(np.asarray(atom.val, dtype=atom.aval.dtype))
    return names[atom]

  for eqn in jaxpr.eqns:
    for var, name in zip(eqn.outvars, _emit(graph, eqn, [read(a) for a in eqn.invars])):
      names[var] = name
  return [read(v) for v in jaxpr.outvars]


def to_onnx(fn: Callable, example: jax.ShapeDtypeStruct, input_name: str, output_name: str,
            doc: str = '') -> Any:
  """The ONNX model (an `onnx.ModelProto`) computing `fn` on arrays like `example`.

  Args:
    fn: a JAX function of one array returning one array; what it closes over (the weights)
      becomes the graph's initializers.
    example: the input's shape and dtype; a dimension from `jax.export.symbolic_shape(BATCH)`
      becomes the graph's dynamic 'batch' dimension.
    input_name, output_name: the names of the graph's input and output.
    doc: the model's doc_string.

  Raises:
    UserError: the onnx package is missing, or `fn` uses what ONNX export cannot translate.
  """
  onnx = _onnx()
  closed = jax.make_jaxpr(fn)(example)
  graph = _Graph(onnx)
  output, = _emit_jaxpr(graph, closed, [input_name])
  graph.nodes.append(onnx.helper.make_node('Identity', [output], [output_name]))

  def value_info(name, aval):
    dims = [int(d) if _is_static(d) else BATCH for d in aval.shape]
    return onnx.helper.make_tensor_value_info(
        name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(aval.dtype)), dims)

  body = onnx.helper.make_graph(
      graph.nodes, 'cnn_jax', [value_info(input_name, closed.in_avals[0])],
      [value_info(output_name, closed.out_avals[0])], initializer=graph.initializers)
  model = onnx.helper.make_model(body, opset_imports=[onnx.helper.make_opsetid('', OPSET)],
                                 producer_name='cnn_jax', doc_string=doc)
  model.ir_version = IR_VERSION
  onnx.checker.check_model(model, full_check=True)
  return model
