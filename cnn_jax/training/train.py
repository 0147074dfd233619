"""`train_and_evaluate(config, workdir)`: one model, or a population of them, from config to result.

This is the one place besides the command-line tools that reads the config; everything it calls
takes plain arguments. It reads top to bottom in data-flow order: check, data, model, state,
the loop (`cnn_jax.training.loop`), the result. Copy it and change it: there are no callbacks or
hooks to learn.
"""

import os
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnn_jax import data, models, speed
from cnn_jax.errors import UserError
from cnn_jax.models import summary
from cnn_jax.runtime import compilation_cache, distributed, workdir_lock
from cnn_jax.training import checkpoint, loop, losses, population, resume, runners, setup, steps
from cnn_jax.training.augment import Augmentation
from cnn_jax.training.validation import validate_config
from cnn_jax.training.workdir import check_workdir, save_dataset_record, save_run_record


def report_skipped(dataset, workdir: str) -> None:
  """Prints how many unreadable files were left out and lists them all in the workdir."""
  if not distributed.is_main_process():
    return
  skipped = [(split, f, reason) for split, part in (('train', dataset.train),
                                                     ('eval', dataset.eval))
             for f, reason in getattr(part, 'skipped', ())]  # A TFDS source has none.
  if not skipped:
    return
  path = os.path.join(workdir, 'skipped_files.txt')
  os.makedirs(workdir, exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(f'{split}\t{name}\t{reason}\n' for split, name, reason in skipped)
  shown = '; '.join(f'{name} ({reason})' for _, name, reason in skipped[:3])
  print(f'Skipped {len(skipped):,} unreadable file(s), e.g. {shown}. All are listed in {path}.',
        flush=True)


def single_model(config: ml_collections.ConfigDict, model, image_shape: tuple[int, int, int],
                 num_steps: int, workdir: str, run_speed: speed.Speed | None = None
                 ) -> loop.Trainee:
  """The loop's view of one model trained as `config` says, compiled as `run_speed` says."""
  tx, schedule = setup.build_optimizer(config, num_steps)
  return loop.Trainee(
      init=lambda: steps.create_train_state(model, tx, jax.random.key(config.seed), image_shape),
      steps=steps.build_steps(model, tx, losses.get(config.loss), run_speed,
                              config.label_smoothing, Augmentation(**config.augment)),
      configs=(config,), workdirs=(workdir,), schedules=(schedule,))


def _runner(trainee: loop.Trainee, config, dataset, plan: setup.Plan, start_step: int, mesh: Mesh):
  """The step runner, chosen once: batches from the host, or gathered from a split on the device."""
  batch_sharding = NamedSharding(mesh, PartitionSpec('data'))
  if config.data.on_device:  # A uint8 split stays uint8 there, normalised by each step.
    return runners.DeviceSplit(trainee.steps, dataset, config.batch_size, plan.shuffle_seed,
                            batch_sharding, NamedSharding(mesh, PartitionSpec()),
                            plan.steps_per_dispatch, runners.pixel_table(dataset))
  d = config.data
  return runners.HostBatches.from_dataset(trainee.steps, dataset, config.batch_size,
                                       plan.shuffle_seed, start_step, batch_sharding, d.workers,
                                       d.worker_processes, d.prefetch)


def _describe(config, info: data.DatasetInfo, dataset, plan: setup.Plan, mesh: Mesh,
              model) -> str:
  """What a single-model run is about to do, with its model summary."""
  processes = f' in {jax.process_count()} processes' if jax.process_count() > 1 else ''
  return (f'{info.name}: {len(dataset.train):,} training and {len(dataset.eval):,} eval images of '
          f'{info.image_shape}, {info.num_classes} classes; {plan.num_steps:,} steps of '
          f'{config.batch_size} ({plan.num_steps / plan.steps_per_epoch:.1f} epochs) on '
          f'{mesh.size} {jax.devices()[0].platform.upper()} device(s){processes}.\n'
          + summary.format_summary(summary.summarize(model, info.image_shape)))


def _score(metrics: dict[str, float]) -> str:
  """'98.61% (355/360)'."""
  correct = int(round(metrics['accuracy'] * metrics['count']))
  return f'{metrics["accuracy"]:.2%} ({correct:,}/{int(metrics["count"]):,})'


def _result(finals: list[dict], tests: list[dict] | None, trainee: loop.Trainee, config,
            plan: setup.Plan, workdir: str, seconds: float, trained_now: int,
            compiling: str) -> dict:
  """Reports the result: the test split's score of the checkpoint chosen on the eval split (else
  the last evaluation); a population also ranks its members in population.json. `trained_now`
  steps ran in this call (0: a finished run re-run); `compiling` says what compiling cost."""
  best = int(np.argmax([f['accuracy'] for f in finals]))
  d = config.data
  tested = (f'{_score(tests[best])} of the checkpoint at step '
            f'{tests[best]["checkpoint_step"]:,}, chosen on {d.eval_split}') if tests else ''
  took = (f'{plan.num_steps:,} steps in {seconds:.1f} s ({compiling}).' if trained_now else
          f'{plan.num_steps:,} steps, all trained before: this run had nothing to train.')
  if trainee.stacked:
    os.makedirs(workdir, exist_ok=True)
    population.summarise(workdir, trainee.workdirs, trainee.configs, config, finals, tests)
    distributed.log(f'Best member on {d.eval_split}: {best} ({trainee.workdirs[best]}), '
                    f'{d.eval_split} accuracy {finals[best]["accuracy"]:.2%}'
                    + (f'; {d.test_split} accuracy {tested}' if tests else '')
                    + f'; {len(finals)} models, {took}')
  elif tests:
    distributed.log(f'Final {d.test_split} accuracy: {tested}; after {took}')
  else:
    distributed.log(f'Final {d.eval_split} accuracy: {_score(finals[0])} after {took}')
  return {**finals[best], 'member': best, 'test': tests[best] if tests else None}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_eval: Callable[[int, dict[str, float]], None] | None = None,
                       member_workdirs: list[str] | None = None) -> dict[str, float]:
  """Trains the model described by `config`, or resumes the run in `workdir` if it has one.

  With config.population.size > 1, trains that many models at once (`training.population`), each
  written as a run of its own in WORKDIR/member_XX, or in `member_workdirs` (a sweep's trial
  directories; WORKDIR then holds only population.json). `on_eval(step, eval_metrics)`, if given,
  is called after each evaluation of a single model; an exception it raises ends training there
  (a sweep uses this to prune an unpromising trial).

  Returns:
    The best member's final metrics on config.data.eval_split, {'loss', 'accuracy', 'count',
    'member'} (a single model is member 0).

  Raises:
    UserError: a mistake in the config or data, a workdir another run is using, or one this
      config cannot resume.
    signals.TrainingInterrupted: SIGTERM or Ctrl-C; a checkpoint of every member was saved first.
    loop.TrainingDiverged: the training loss stopped being finite (config.stop_on_nan).
  """
  speed.before_backend(config.speed)  # Before anything starts JAX's backend.
  check_workdir(workdir)
  # One run per workdir, for the run's lifetime (process 0 holds it for a multi-process run).
  with workdir_lock.held(workdir, enabled=distributed.is_main_process()):
    return _train_and_evaluate(config, workdir, on_eval, member_workdirs)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, on_eval,
                        member_workdirs: list[str] | None) -> dict[str, float]:
  """`train_and_evaluate` once the workdir is this run's."""
  # ---- check everything before any work ----------------------------------------------------------
  mesh = Mesh(np.asarray(jax.devices()), ('data',))  # One data axis; one device is a mesh of one.
  validate_config(config, num_devices=mesh.size)
  compilation_cache.enable(config.compilation_cache)
  run_speed = setup.build_speed(config)
  run_speed.apply()
  compiling = compilation_cache.CompileClock()
  for path in [workdir, *(member_workdirs or [])]:
    check_workdir(path)
  distributed.check_same_workdir(workdir)
  if config.init_from:
    checkpoint.locate(config.init_from)  # A warm start's checkpoint exists, before data loads.
  members = population.member_configs(config) if config.population.size > 1 else None
  source = data.open_source(setup.data_spec(config))
  info = source.describe()
  mirrored = data.flip_problems(info.name, config.augment)  # IDX files are named by content.
  if mirrored:
    raise UserError(mirrored[0])
  model = setup.build_model(config, info.num_classes, run_speed)
  models.check_fits(model, info.image_shape)

  # ---- data, plan, and what trains: one model or a population -------------------------------------
  started = time.time()
  dataset = setup.load_data(config, source)
  report_skipped(dataset, workdir)
  plan = setup.make_plan(config, len(dataset.train), run_speed)
  if members:
    trainee = population.population_trainee(
        config, members, model, info.image_shape, plan.num_steps, run_speed,
        member_workdirs or [population.member_dir(workdir, i) for i in range(len(members))])
    distributed.log(population.describe(config, members, info, plan.num_steps))
  else:
    trainee = single_model(config, model, info.image_shape, plan.num_steps, workdir, run_speed)
    distributed.log(_describe(config, info, dataset, plan, mesh, model))

  # ---- state: fresh, warm-started or resumed; then the loop ---------------------------------------
  replicated = NamedSharding(mesh, PartitionSpec())
  # Created inside jit with a replicated output: every process then holds the same global state.
  state = jax.jit(trainee.init, out_shardings=replicated)()
  ckpt = config.checkpoint
  managers = [checkpoint.open_manager(w, ckpt.keep_last, ckpt.keep_best, ckpt.best_metric)
              for w in trainee.workdirs]
  runner = None
  try:  # `finally` closes the managers and the runner (a stream's workers), however the run ends.
    state, progress = resume.restore(trainee, managers, state)
    start_step = loop.step_of(trainee, state)
    if start_step > plan.num_steps:
      raise UserError(
          f'{workdir} holds a run trained to step {start_step:,}, past the {plan.num_steps:,} '
          'steps this config asks for: nothing to train. Ask for more (config.num_epochs or '
          'config.num_steps) to train further, or see its result with python -m '
          f'cnn_jax.evaluate --workdir {workdir}.')
    if not progress[0] and config.init_from:
      state = trainee.join([checkpoint.warm_start(s, config.init_from, config.init_layers)
                            for s in trainee.split(state)])
    if distributed.is_main_process():
      for member_workdir, member_config in zip(trainee.workdirs, trainee.configs):
        save_run_record(member_workdir, member_config)
        save_dataset_record(member_workdir, dataset.info, dataset.normalizer)
    runner = _runner(trainee, config, dataset, plan, start_step, mesh)
    eval_step = trainee.steps.jit_eval()
    batch_sharding = NamedSharding(mesh, PartitionSpec('data'))
    evaluate_all = lambda s: loop.evaluate(eval_step, s, runners.device_eval_batches(
        dataset, config.eval_batch_size, batch_sharding, config.data.workers))
    single_on_eval = None if on_eval is None else lambda step, finals: on_eval(step, finals[0])
    evaluate_test = None if dataset.test is None else lambda s: loop.evaluate(
        eval_step, s, runners.device_eval_batches(dataset, config.eval_batch_size, batch_sharding,
                                               config.data.workers, split='test'))
    finals, tests = loop.fit(trainee, state, runner, evaluate_all, plan, managers, progress,
                             config.data.eval_split, started, config.progress_bar,
                             single_on_eval, evaluate_test)
  finally:
    if runner is not None:
      runner.close()
    for manager in managers:
      checkpoint.close(manager)
  return _result(finals, tests, trainee, config, plan, workdir, time.time() - started,
                 trained_now=plan.num_steps - start_step, compiling=compiling.summary())
