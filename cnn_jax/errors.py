"""The one exception type that means "the user asked for something we cannot do".

Entry points catch `UserError` and print its message without a traceback; everything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
  """A mistake in the user's input (config, data, paths) with an actionable message."""
