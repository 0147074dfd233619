"""Population training: N models that differ in seed and numeric hyperparameters, in one program.

    python -m cnn_jax.main --config digits --workdir runs/lr_population \\
        --config.population.size=4 \\
        --config.population.learning_rates='(3e-4, 1e-3, 3e-3, 1e-2)'

One compiled step trains N stacked models: `jax.vmap` of one model's step (on GPU and TPU), or
the N members' steps one after another in the same program (on CPU, where vmap's grouped
convolutions run no faster per model; `config.speed.population_vectorize`). Every member sees
the same batches (the order of `shuffle_seed`, else `seed`) and has its own learning rate,
weight decay, label smoothing and dropout rates, which enter the compiled step as arrays, and
the seed `population.seeds` gives it (by default `seed` for all, so that members differ only in
what is compared). One dispatch then trains all N, which on a CPU amortises the per-step
overhead and on an accelerator fills the device. Batches come from the host (`data.on_device`
is for single runs). The loop is the single model's (`cnn_jax.training.loop`); this module says
what differs.

Each member is written as an ordinary run in WORKDIR/member_XX: its own config.json (the values
it trained with, so training it alone reproduces it), dataset.json, metrics.jsonl, TensorBoard
events and checkpoints. `cnn_jax.evaluate`, `cnn_jax.predict` and `cnn_jax.report` take a member's
directory as they take any workdir. WORKDIR/population.json ranks the members. Re-running the
same command resumes every member from its checkpoints.
"""

import copy
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import config_keys, data, models, speed
from cnn_jax.errors import UserError
from cnn_jax.runtime import distributed
from cnn_jax.training import losses, setup, steps
from cnn_jax.training.augment import Augmentation
from cnn_jax.training.loop import Trainee
from cnn_jax.training.validation import validate_config
from cnn_jax.training.workdir import POPULATION_FILE as SUMMARY_FILE

# config.population list → the config key it sets in each member.
VARIED = {
    'seeds': 'seed',
    'learning_rates': 'optimizer.learning_rate',
    'weight_decays': 'optimizer.weight_decay',
    'label_smoothings': 'label_smoothing',
    'dense_dropouts': 'model.dense_dropout',
    'conv_dropouts': 'model.conv_dropout',
}


def member_dir(workdir: str, index: int) -> str:
  """Returns the directory of member `index` of the population in `workdir`."""
  return os.path.join(workdir, f'member_{index:02d}')


def _problems(config: ml_collections.ConfigDict) -> list[str]:
  """What the population settings get wrong, before any member is built."""
  pop = config.population
  problems = [f'config.population.{field} has {len(pop[field])} values but population.size is '
              f'{pop.size}; give one per member, or () for the same value in all'
              for field in VARIED if pop[field] and len(pop[field]) != pop.size]
  if not any(pop[field] for field in VARIED):
    problems.append(f'config.population.size={pop.size} but no population list varies anything, '
                    'so every member would be the same model: list what differs, e.g. '
                    f'population.seeds={tuple(range(pop.size))} or population.learning_rates')
  name = config.model.name
  model_fields = models.model_fields(name) if name in models.MODELS else ()
  for field in ('dense_dropouts', 'conv_dropouts'):
    key = VARIED[field].split('.')[1]
    if pop[field] and key not in model_fields:
      problems.append(f'config.population.{field}: model {config.model.name!r} has no {key}')
  if config.data.on_device:
    problems.append('config.data.on_device: a population reads its batches from the host; '
                    'leave data.on_device off')
  if config.data.stream:
    problems.append('config.data.stream: a population trains on a split held in memory; '
                    'leave data.stream off')
  return problems


def member_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """Returns one complete single-model config per member, each checked like any config.

  Raises:
    UserError: a list whose length is not population.size, a value a member's config refuses, or
      a dropout list for a model without that setting.
  """
  problems = _problems(config)
  if problems:
    raise UserError('The population config has problems:\n  - ' + '\n  - '.join(problems))
  members = []
  for i in range(config.population.size):
    member = copy.deepcopy(config)
    config_keys.set_config_field(member, 'population.size', 0)
    for field in VARIED:
      config_keys.set_config_field(member, f'population.{field}', ())
    # Every member reads the population's batch order, so alone it needs the same shuffle seed.
    config_keys.set_config_field(member, 'shuffle_seed', setup.shuffle_seed(config))
    # Members keep `seed` unless population.seeds lists theirs, so a comparison of learning
    # rates (say) compares learning rates, not learning rates mixed with initialisations.
    values = {f'population.{field}[{i}]': config.population[field][i]
              for field in VARIED if config.population[field]}
    for field, key in VARIED.items():
      if config.population[field]:
        config_keys.set_config_field(member, key, config.population[field][i])
    try:
      validate_config(member)
      # Constructing the model checks its field values (a dropout rate in [0, 1), say).
      setup.build_model(member, 2)
    except UserError as e:
      given = ', '.join(f'{key}={value!r}' for key, value in values.items())
      raise UserError(f'Population member {i} ({given}): {e}') from None
    members.append(member)
  return members


def varied_values(config: ml_collections.ConfigDict,
                  members: list[ml_collections.ConfigDict]) -> dict[str, np.ndarray]:
  """Returns {config key: [N] values} for the hyperparameters that enter the step as arrays."""
  return {key: np.asarray([float(config_keys.config_field(m, key)) for m in members], np.float32)
          for field, key in VARIED.items() if field != 'seeds' and config.population[field]}


class Population:
  """The population's model and optimizer for traced hyperparameters (one member's values)."""

  def __init__(self, config: ml_collections.ConfigDict, model, num_steps: int):
    self.config, self.model, self.num_steps = config, model, num_steps

  def member_model(self, values: dict):
    fields = {k.split('.')[1]: v for k, v in values.items() if k.startswith('model.')}
    return self.model.clone(**fields) if fields else self.model

  def member_optimizer(self, values: dict):
    return setup.build_optimizer(self.config, self.num_steps,
                                 values.get('optimizer.learning_rate'),
                                 values.get('optimizer.weight_decay'))[0]

  def init(self, seed, values: dict, image_shape) -> steps.TrainState:
    """One member's fresh state; `vmap` it over seeds and values."""
    return steps.create_train_state(self.member_model(values), self.member_optimizer(values),
                                    jax.random.key(seed), image_shape)

  def member_steps(self, values: dict) -> steps.Steps:
    """One member's steps, for its values (traced inside the population's step)."""
    smoothing = values.get('label_smoothing', self.config.label_smoothing)
    return steps.build_steps(self.member_model(values), self.member_optimizer(values),
                             losses.get(self.config.loss), label_smoothing=smoothing,
                             augmentation=Augmentation(**self.config.augment))

  def train_step(self, state: steps.TrainState, values: dict, batch: steps.Batch):
    """One member's train step; `vmap` it over states and values, sharing the batch."""
    return self.member_steps(values).train(state, batch)


def population_trainee(config: ml_collections.ConfigDict,
                       members: list[ml_collections.ConfigDict], model,
                       image_shape: tuple[int, int, int], num_steps: int,
                       run_speed: speed.Speed, workdirs: list[str]) -> Trainee:
  """The loop's view of the population: N stacked states and the steps that step them all,
  batched by `jax.vmap` or one member after another (`run_speed.population_vectorize`)."""
  population = Population(config, model, num_steps)
  # NumPy arrays: constants of the compiled steps, on whatever devices the state lives on.
  values = varied_values(config, members)
  seeds = np.asarray([member.seed for member in members])
  eval_step = population.member_steps({}).eval  # Evaluation uses no member's own value.
  if run_speed.population_vectorize == 'vmap':
    vmapped_step = jax.vmap(population.train_step, in_axes=(0, 0, None))
    train_step = lambda states, batch: vmapped_step(states, values, batch)
    evaluate = jax.vmap(eval_step, in_axes=(0, None))
  else:  # One member after another, inside the one compiled program.
    size = len(members)
    member = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
    stack = lambda outputs: jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)
    train_step = lambda states, batch: stack([
        population.train_step(member(states, i), member(values, i), batch) for i in range(size)])
    evaluate = lambda states, batch: stack([eval_step(member(states, i), batch)
                                            for i in range(size)])
  return Trainee(
      init=lambda: jax.vmap(lambda s, v: population.init(s, v, image_shape))(seeds, values),
      steps=steps.Steps(train_step, evaluate, run_speed.compiler_options()),
      configs=tuple(members), workdirs=tuple(workdirs),
      schedules=tuple(setup.build_schedule(member, num_steps) for member in members),
      stacked=True)


def describe(config: ml_collections.ConfigDict, members: list[ml_collections.ConfigDict],
             info: data.DatasetInfo, num_steps: int) -> str:
  """One line: how many models, on what, varying what."""
  varied = ['seed', *varied_values(config, members)]
  return (f'Population of {len(members)} {config.model.name} models on {info.name}, varying '
          f'{", ".join(varied)}; {num_steps:,} steps of {config.batch_size}.')


def summarise(workdir: str, workdirs: tuple[str, ...],
              members: tuple[ml_collections.ConfigDict, ...], config: ml_collections.ConfigDict,
              finals: list[dict], tests: list[dict] | None = None) -> None:
  """Writes WORKDIR/population.json and prints the members ranked by eval accuracy (the ranking
  is a choice, so it is made on the eval split; the test accuracy is reported beside it)."""
  values = varied_values(config, members)
  rows = [{'member': os.path.relpath(workdirs[i], workdir), 'seed': member.seed,
           **{key: float(v[i]) for key, v in values.items()}, **finals[i],
           **({'test_accuracy': tests[i]['accuracy']} if tests else {})}
          for i, member in enumerate(members)]
  if distributed.is_main_process():
    with open(os.path.join(workdir, SUMMARY_FILE), 'w', encoding='utf-8') as f:
      json.dump({'members': rows}, f, indent=1)
  header = ['member', 'seed', *values, 'accuracy', 'loss', *(['test_accuracy'] if tests else [])]
  cell = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
  widths = [max(len(h), *(len(cell(r[h])) for r in rows)) for h in header]
  distributed.log('  '.join(h.rjust(w) for h, w in zip(header, widths)))
  for r in sorted(rows, key=lambda r: -r['accuracy']):
    distributed.log('  '.join(cell(r[h]).rjust(w) for h, w in zip(header, widths)))
