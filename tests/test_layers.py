"""The package's shape: imports point down the layers, never in a cycle, and a module imports
inside a function only an optional heavy dependency (or, in a command's main(), its machinery:
so that --help and a mistyped flag answer without loading JAX)."""

import ast
import os

from conftest import REPO

# Higher layers may import lower ones, never the reverse. The commands (cnn_jax/*.py) are the top;
# a command never imports another command: what two of them share moves down a layer.
LAYERS = {
    'cnn_jax.errors': 0, 'cnn_jax.config_keys': 0, 'cnn_jax.runtime': 0, 'cnn_jax.configs': 0,
    'cnn_jax.data': 1, 'cnn_jax.models': 1,
    'cnn_jax.speed': 2,  # Faster equals of the models' layers, and the run's speed settings.
    'cnn_jax.training': 3,
    'cnn_jax.serving': 4, 'cnn_jax.sweeps': 4, 'cnn_jax.benchmarks': 4, 'cnn_jax.reporting': 4,
    'cnn_jax.cli': 4,
}
COMMAND_LAYER = 5
# Imported inside functions so that a command that does not need them never pays for them.
# `cnn_jax.api` is loaded by the package's __getattr__ on first use of cnn_jax.load/train.
LAZY_ALLOWED = ('optuna', 'torch', 'matplotlib', 'tensorflow', 'tensorflow_datasets', 'sklearn',
                'tensorboardX', 'grain', 'cnn_jax.reporting.figures',
                'cnn_jax.benchmarks.torch_reference', 'cnn_jax.api', 'onnx', 'onnxruntime')
# The loader that export copies beside a model runs an ONNX model where JAX is not installed.
LAZY_IN_MODULE = {('cnn_jax.serving.exported_model', 'jax')}


def modules_of(root: str) -> dict[str, str]:
  """{'cnn_jax.training.loop': path, ...} for every module of the package `root/cnn_jax`."""
  found = {}
  for directory, _, names in os.walk(os.path.join(root, 'cnn_jax')):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        dotted = os.path.relpath(path, root)[:-3].replace(os.sep, '.')
        found[dotted.removesuffix('.__init__')] = path
  return found


def imports_of(path: str, modules) -> list[tuple[str, str | None]]:
  """(imported name, the top-level function it is imported in, or None) for every import in the
  file; `from cnn_jax.x import y` names cnn_jax.x.y when that is a module, else cnn_jax.x."""
  tree = ast.parse(open(path, encoding='utf-8').read())
  function_of = {id(n): f.name for f in tree.body
                 if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 for n in ast.walk(f)}
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(alias.name, function_of.get(id(node))) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      assert not node.level, f'{path}: relative import; cnn_jax imports by absolute name'
      for alias in node.names:
        name = f'{node.module}.{alias.name}'
        found.append((name if name in modules else node.module, function_of.get(id(node))))
  return found


def layer(module: str) -> int:
  for prefix, number in LAYERS.items():
    if module == prefix or module.startswith(prefix + '.'):
      return number
  return COMMAND_LAYER


def import_graph(root: str) -> dict[str, set[str]]:
  """{module: the package's modules it imports}."""
  modules = modules_of(root)
  return {m: {name for name, _ in imports_of(path, modules) if name in modules and name != m}
          for m, path in modules.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
  """Imports of a higher layer, and of one command by another."""
  return [f'{m} (layer {layer(m)}) imports {d} (layer {layer(d)})'
          for m, deps in graph.items() for d in deps
          if layer(d) > layer(m) or (layer(m) == COMMAND_LAYER == layer(d)
                                     and 'cnn_jax' not in (m, d))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as a path of modules, or None."""
  state = {}

  def visit(module, path):
    state[module] = 'open'
    for dep in sorted(graph[module]):
      if state.get(dep) == 'open':
        return path + [module, dep]
      if dep not in state and (cycle := visit(dep, path + [module])):
        return cycle
    state[module] = 'done'
    return None

  for module in sorted(graph):
    if module not in state and (cycle := visit(module, [])):
      return cycle
  return None


def lazy_imports(root: str) -> list[str]:
  """Imports inside functions of anything but an optional heavy dependency, except in a
  command's main()."""
  modules = modules_of(root)
  return [f'{m} imports {name} inside {function}()' for m, path in modules.items()
          for name, function in imports_of(path, modules)
          if function and not any(name == a or name.startswith(a + '.') for a in LAZY_ALLOWED)
          and (m, name) not in LAZY_IN_MODULE
          and not (layer(m) == COMMAND_LAYER and function == 'main')]


def test_imports_point_down_the_layers_only():
  violations = layer_violations(import_graph(REPO))
  assert not violations, '\n'.join(violations)


def test_there_is_no_import_cycle():
  assert find_cycle(import_graph(REPO)) is None


def test_only_optional_heavy_dependencies_are_imported_inside_functions():
  found = lazy_imports(REPO)
  assert not found, '\n'.join(found)


def _write(root, files: dict[str, str]) -> None:
  for name, text in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checks_catch_an_upward_import_a_cycle_and_a_lazy_import(tmp_path):
  _write(tmp_path, {
      'cnn_jax/__init__.py': '',
      'cnn_jax/data/__init__.py': 'from cnn_jax.training import loop\n',  # Up a layer.
      'cnn_jax/training/__init__.py': '',
      'cnn_jax/training/loop.py': 'from cnn_jax.training import steps\n',
      'cnn_jax/training/steps.py': 'def f():\n  from cnn_jax.training import loop\n',  # A cycle.
      'cnn_jax/evaluate.py': 'from cnn_jax import predict\n',  # One command using another.
      'cnn_jax/predict.py': 'def f():\n  import optuna\n',  # Allowed inside a function.
      'cnn_jax/report.py': 'def main():\n  from cnn_jax.training import loop\n',  # Allowed.
  })
  graph = import_graph(str(tmp_path))
  assert sorted(layer_violations(graph)) == [
      'cnn_jax.data (layer 1) imports cnn_jax.training.loop (layer 3)',
      'cnn_jax.evaluate (layer 5) imports cnn_jax.predict (layer 5)']
  assert find_cycle(graph)[-2:] in (['cnn_jax.training.loop', 'cnn_jax.training.steps'],
                                    ['cnn_jax.training.steps', 'cnn_jax.training.loop'])
  assert lazy_imports(str(tmp_path)) == [
      'cnn_jax.training.steps imports cnn_jax.training.loop inside f()']
