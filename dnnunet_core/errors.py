"""Errors that the command line turns into a one-line message and exit code 2."""
from __future__ import annotations


class UserInputError(Exception):
    """A problem with what the user gave us (data, folders, flags); no traceback is shown."""


class InvalidDataError(UserInputError):
    """A data file is unusable. The message names the file and the problem.

    Args:
        path: the offending file or folder.
        problem: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
