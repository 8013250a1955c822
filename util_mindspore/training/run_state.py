"""Where a training run stands (fine-tuning and pre-training alike): the first epoch to train, the best validation
score so far, the last checkpoint saved, and the one line a stop by SIGINT / SIGTERM prints from it."""
import dataclasses
import math
from typing import Optional

from util_mindspore.process import interrupts


@dataclasses.dataclass
class RunState:
    """The run's position; `last_saved` / `last_saved_epoch` name the newest complete checkpoint this run can be
    continued from (known in memory: reading a ViT-L checkpoint back takes seconds)."""

    start_epoch: int
    best_score: float = -math.inf
    best_epoch: Optional[int] = None
    last_saved: Optional[str] = None
    last_saved_epoch: Optional[int] = None
    resumed_from: Optional[str] = None

    def saved(self, path: str, epoch: int) -> None:
        self.last_saved, self.last_saved_epoch = path, epoch


def stopped_message(state: Optional[RunState], signum: int, resumed_from: str = "") -> str:
    """One line: where the last complete checkpoint is and how to go on from it."""
    name = interrupts.signal_name(signum)
    if state is None or state.last_saved is None:
        if resumed_from:
            return (f"stopped by {name} before this run saved a checkpoint: run the same command again (--resume "
                    f"{resumed_from})")
        return f"stopped by {name} before any checkpoint was saved: run the command again to start over"
    return (f"stopped by {name}: the last complete checkpoint is {state.last_saved} (epoch {state.last_saved_epoch});"
            f" to continue, run the same command with --resume {state.last_saved}")
