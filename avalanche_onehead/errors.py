"""Errors with one clear line: what file or name, and what is wrong."""
from __future__ import annotations


class OneHeadError(Exception):
    def __init__(self, where: object, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class ModelError(OneHeadError):
    """A backbone, weight file or model setting that cannot be used."""


class CheckpointError(OneHeadError):
    """A file that is not a readable avalanche-onehead checkpoint."""
