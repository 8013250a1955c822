"""Run logs through `logging`: messages printed as they are (upstream's line formats), on rank 0 only.

As upstream's `setup_for_distributed`, other ranks stay quiet but for warnings, errors, and their own weight
load report (each rank loads weights; a rank that cannot is worth seeing).
"""
import logging
import sys
from typing import TextIO

LOGGER = "retfound"


class _StdoutHandler(logging.StreamHandler):
    """Writes to sys.stdout as it is when a record comes (pytest and progress bars may swap it meanwhile)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def setup_logging(rank: int = 0) -> logging.Logger:
    """One stdout handler on the `retfound` logger: INFO on rank 0, WARNING elsewhere; idempotent."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "retfound", False):
            logger.removeHandler(handler)
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.retfound = True
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logging.getLogger(f"{LOGGER}.weights").setLevel(logging.INFO)
    return logger
