"""The one exception type for input a user can fix.

`UserError` is raised for a bad flag, config file or field, input file, path, or a workdir trained with
another config. run.py prints its message as one line (`error: ...`, exit status 2); any other
exception is a bug in the library and keeps its traceback. It subclasses ValueError, so code that
caught ValueError for these keeps working.
"""


class UserError(ValueError):
  """Bad input, reported in one line; the message names what to change."""
