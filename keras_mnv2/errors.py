"""The errors that mean bad input, told apart from bugs.

Where keras_mnv2 and its pipelines check what the caller gave (an argument, a recipe field, a
file, a folder, a dataset's content) they raise an ``InputError`` (a ``ValueError``) or a
``MissingFileError`` (also a ``FileNotFoundError``). ``keras-mnv2`` prints one of these as one
line and exits with status 2; any other exception is a bug, ours or a library's, and is printed
with its traceback, exit status 1 (``pipelines/cli.py``).
"""


class InputError(ValueError):
    """Input that cannot be used: an argument, a recipe field, a file or its content."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder that was named (or that a run needs) is not there."""


class NoAnchorsError(InputError):
    """A detector without the anchor table its box outputs line up with."""
