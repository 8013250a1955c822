"""Our training checkpoints: what they hold, how they are written, read back and restored into a train step.

Every checkpoint (.ckpt) holds the model parameters under their PyTorch names (so it is also a valid --finetune
source) and the epoch, best score, class names and args. Two kinds:
- "last" (checkpoint-last.ckpt, MAE's checkpoint-<epoch>.ckpt): also the optimizer's moments and step
  (`optimizer.*`), the loss scaler (`loss_scale.*`) and gradient accumulators (`accum.*`): a run continues from it.
- "best" (checkpoint-best.ckpt): what evaluation and prediction need, as upstream's checkpoint-best.pth holds the
  model only: a third of a "last" one (ViT-L: 1.2 GB against 3.6 GB).
A converted published checkpoint is read the same way: weights only. Written to a temp file and renamed, by rank 0.
"""
import argparse
import dataclasses
import json
from typing import Dict, List, Mapping, Optional, Sequence

import mindspore as ms
import numpy as np

from util_mindspore.checkpoints.ckpt_format import CkptEntries, read_ckpt_entries, save_arrays_ckpt
from util_mindspore.errors import WeightError
from util_mindspore.files.names import printable

CHECKPOINT_FORMAT = "retfound-mindspore-train-1"
# What a training checkpoint holds beside the model: never model weights.
TRAINING_STATE_PREFIXES = ("optimizer.", "loss_scale.", "accum.")


@dataclasses.dataclass
class TrainingCheckpoint:
    weights: dict  # model parameter name -> array
    state: dict  # optimizer / loss-scale / accumulator name -> array
    epoch: Optional[int] = None
    best_score: Optional[float] = None
    meta: dict = dataclasses.field(default_factory=dict)  # format, model, class_names, args

    @property
    def class_names(self) -> Optional[List[str]]:
        return self.meta.get("class_names")


def _jsonable_args(args: argparse.Namespace) -> Dict[str, object]:
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def save_checkpoint(path: str, model: ms.nn.Cell, train_step: Optional[ms.nn.Cell], epoch: int, best_score: float,
                    class_names: Optional[Sequence[str]], args: argparse.Namespace,
                    outputs: Optional[Mapping[str, int]] = None, kind: str = "last",
                    extra_meta: Optional[Mapping[str, object]] = None) -> None:
    """Model + epoch + best score + class names + args, atomically; kind "last" adds the optimizer, loss scale and
    accumulators (a train step's state). `outputs`: how many rows each output file had when it was saved (a
    resumed run cuts them back to that)."""
    arrays = {name: p.asnumpy() for name, p in model.parameters_and_names()}
    if train_step is not None and kind == "last":
        arrays.update({p.name: p.asnumpy() for p in train_step.state_parameters()})
    meta = {"format": CHECKPOINT_FORMAT, "kind": kind, "class_names": [printable(c) for c in class_names or []],
            "args": _jsonable_args(args), "model": args.model, "outputs": dict(outputs or {}), **(extra_meta or {})}
    save_arrays_ckpt(arrays, path, append_dict={"epoch": int(epoch), "best_score": float(best_score),
                                                "meta": json.dumps(meta)})


def _written_by_earlier_version(entries: CkptEntries, last_name: Optional[str]) -> bool:
    """Training checkpoints of versions before the end marker are whole when their metadata, written last, is
    there."""
    return last_name == "meta" and isinstance(entries.get("meta"), str) and \
        f'"format": "{CHECKPOINT_FORMAT}"' in entries["meta"]


def read_checkpoint(path: str) -> TrainingCheckpoint:
    """A training checkpoint or a converted published checkpoint (weights only) from one of our .ckpt files;
    refused in one line when incomplete or damaged (util_mindspore/checkpoints/ckpt_format.py)."""
    loaded = read_ckpt_entries(path, complete_without_marker=_written_by_earlier_version)
    meta = json.loads(loaded.pop("meta")) if isinstance(loaded.get("meta"), str) else {}
    epoch = int(np.asarray(loaded.pop("epoch")).item()) if "epoch" in loaded else None
    best_score = float(np.asarray(loaded.pop("best_score")).item()) if "best_score" in loaded else None
    arrays = {k: v for k, v in loaded.items() if isinstance(v, np.ndarray)}
    return TrainingCheckpoint(
        weights={k: v for k, v in arrays.items() if not k.startswith(TRAINING_STATE_PREFIXES)},
        state={k: v for k, v in arrays.items() if k.startswith(TRAINING_STATE_PREFIXES)},
        epoch=epoch, best_score=best_score, meta=meta)


def is_training_checkpoint(checkpoint: TrainingCheckpoint) -> bool:
    return checkpoint.meta.get("format") == CHECKPOINT_FORMAT


def holds_training_state(checkpoint: TrainingCheckpoint) -> bool:
    """Whether a run can continue from it: ours, of kind "last" (checkpoints of earlier versions had no kind and
    always held the state)."""
    return is_training_checkpoint(checkpoint) and checkpoint.meta.get("kind", "last") == "last"


def restore_training_state(checkpoint: TrainingCheckpoint, train_step: ms.nn.Cell, source: str) -> int:
    """Optimizer moments and step, loss scale, accumulators into `train_step`; returns how many were restored.

    Every optimizer and loss-scale tensor this run has must be there, and the epoch: a run is never continued
    with part of its state. Accumulators are not needed (they are empty at an epoch's end).
    """
    params = {p.name: p for p in train_step.state_parameters()}
    needed = [name for name in params if not name.startswith("accum.")]
    missing = [name for name in needed if name not in checkpoint.state]
    if missing or checkpoint.epoch is None:
        what = f"{len(missing)} of its {len(needed)} optimizer / loss-scale tensors ({', '.join(missing[:3])})" \
            if missing else "its epoch"
        raise WeightError(f"{source}: cannot continue this run: the checkpoint lacks {what}; to start from its "
                          "weights only, give it as --finetune")
    restored = 0
    for name, array in checkpoint.state.items():
        if name not in params:
            continue
        param = params[name]
        if array.size != param.size:
            raise WeightError(f"{source}: {name} has shape {array.shape}, this run needs {tuple(param.shape)}")
        # .ckpt files store scalars as shape (1,): reshape to the parameter's own shape
        param.set_data(ms.Tensor(array.reshape(param.shape), dtype=param.dtype))
        restored += 1
    return restored
