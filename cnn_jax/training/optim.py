"""Optimizers and learning-rate schedules from plain arguments, built on optax."""

import optax

from cnn_jax.errors import UserError

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'onecycle')


def create_schedule(name: str, learning_rate: float, total_steps: int,
                    warmup_steps: int = 0) -> optax.Schedule:
  """Returns the learning rate as a function of the step.

  Args:
    name: 'constant'; 'cosine' (linear warmup over `warmup_steps`, then cosine decay to 0 at
      `total_steps`); or 'onecycle' (ramp up for the first 30%, anneal to ~0: Smith's 1cycle).
    learning_rate: the peak (or constant) learning rate; a float, or a traced scalar array.
    total_steps: training length, for the decaying schedules.
    warmup_steps: warmup length for 'cosine'.
  """
  if name == 'constant':
    return optax.constant_schedule(learning_rate)
  if not isinstance(learning_rate, (int, float)):
    # A traced peak (one per population member): optax's decaying schedules branch on the peak's
    # value, but every schedule here is the peak times a curve that does not depend on it.
    curve = create_schedule(name, 1.0, total_steps, warmup_steps)
    return lambda step: learning_rate * curve(step)
  if name == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)
  if name == 'onecycle':
    return optax.cosine_onecycle_schedule(transition_steps=max(total_steps, 1),
                                          peak_value=learning_rate)
  raise UserError(f'unknown schedule {name!r}; choose one of {", ".join(SCHEDULES)}')


def create_optimizer(name: str, schedule: optax.Schedule, momentum: float = 0.9,
                     nesterov: bool = False, weight_decay: float = 0.0,
                     grad_clip_norm: float = 0.0) -> optax.GradientTransformation:
  """Returns the optax optimizer: [clip] → [L2 decay] → sgd/adam, or [clip] → adamw.

  Weight decay is decoupled for 'adamw' (Loshchilov & Hutter) and added to the gradient as L2
  for 'sgd' and 'adam', which is what those optimizers' classic papers and Keras mean by it.
  The learning rate inside `schedule` and `weight_decay` may be traced arrays (a population).
  """
  if name not in OPTIMIZERS:
    raise UserError(f'unknown optimizer {name!r}; choose one of {", ".join(OPTIMIZERS)}')
  chain = []
  if grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(grad_clip_norm))
  # Always present, even at 0 (which leaves the gradient unchanged), so that the optimizer state
  # has the same structure whatever the decay: a population member trained with decay 0 beside
  # others with decay restores with its own config, and the decay may be a traced array.
  if name != 'adamw':
    chain.append(optax.add_decayed_weights(weight_decay))
  if name == 'sgd':
    chain.append(optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))
  elif name == 'adam':
    chain.append(optax.adam(schedule))
  else:
    chain.append(optax.adamw(schedule, weight_decay=weight_decay))
  return optax.chain(*chain)
