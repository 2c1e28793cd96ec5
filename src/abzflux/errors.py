"""Errors a user can act on.

Every problem with user input is raised as :class:`InputError`, which names the file, the
column or variable, the row or site, and what was expected, so that a scientist can fix the
input without reading our code.
"""

from __future__ import annotations


class InputError(ValueError):
    """A user-supplied file or setting breaks the input contract (docs/formats.md).

    Parameters
    ----------
    file : str
        Path of the offending file (or config key source).
    problem : str
        What is wrong, in words.
    column : str, optional
        Column (tables) or variable (gridded data) concerned.
    where : str, optional
        Row(s), site(s), time step(s) or cell(s) concerned, e.g. ``"row 17 (site S004)"``.
    expected : str, optional
        What the contract expects instead.
    """

    def __init__(self, file, problem, *, column=None, where=None, expected=None):
        self.file = str(file)
        self.problem = problem
        self.column = column
        self.where = where
        self.expected = expected
        parts = [f"{self.file}:"]
        if column is not None:
            parts.append(f"[{column}]")
        parts.append(problem)
        msg = " ".join(parts)
        if where:
            msg += f" at {where}"
        if expected:
            msg += f"; expected {expected}"
        super().__init__(msg)


class ConfigError(InputError):
    """A run configuration (TOML) is invalid."""


class RunDirConflict(InputError):
    """A run directory holds outputs computed from another config or other inputs; running into
    it would mix them with this run's (``abzflux run --restart`` deletes them first)."""
