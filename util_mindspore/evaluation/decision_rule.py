"""The decision rule a fine-tuning run fits on its validation split and stores with its best checkpoint (and in an
export's .json): a calibration temperature, and optionally the referable classes and the threshold on their summed
probability that an operating point chose. Prediction and the screening service apply it; evaluation writes it.

    rule = DecisionRule.from_meta(checkpoint.meta)        # None when the checkpoint holds none
    probs = rule.probabilities(logits)                    # softmax(logits / temperature)
    refer = rule.referral(probs, class_names)             # referable probability >= threshold

Stored as JSON under the key `decision_rule` (DECISION_RULE_KEY) of a checkpoint's metadata and of an export's
description; a value that is not a rule is refused in one line naming where it was read.
"""
import dataclasses
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from util_mindspore.errors import WeightError
from util_mindspore.evaluation.probabilities import softmax

DECISION_RULE_KEY = "decision_rule"


@dataclasses.dataclass(frozen=True)
class DecisionRule:
    """temperature: softmax(z / T) are the calibrated probabilities (1: none fitted). referable: the classes whose
    summed (calibrated) probability is the referable probability; threshold: refer when it is >= threshold.
    operating_point: what chose the threshold ("sensitivity:0.87", "specificity:0.90", "youden"), on which split
    and with what it achieved there (`chosen_on`)."""

    temperature: float = 1.0
    referable: Optional[List[str]] = None
    threshold: Optional[float] = None
    operating_point: Optional[str] = None
    chosen_on: Dict[str, object] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, not {self.temperature!r}")
        if (self.referable is None) != (self.threshold is None):
            raise ValueError("referable classes and a threshold go together")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], not {self.threshold!r}")

    @property
    def refers(self) -> bool:
        """Whether the rule makes referral decisions (referable classes and a threshold), not only calibrates."""
        return self.threshold is not None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, float64."""
        return softmax(logits, self.temperature)

    def referable_probability(self, probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """The summed probability of the referable classes, per row of `probs`."""
        missing = [c for c in self.referable or [] if c not in class_names]
        if missing:
            raise WeightError(f"the decision rule names classes the model does not have: {', '.join(missing)}")
        columns = [list(class_names).index(c) for c in self.referable or []]
        return np.asarray(probs, np.float64)[..., columns].sum(axis=-1)

    def referral(self, probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """True where the referable probability reaches the threshold (a rule that only calibrates refers none)."""
        if not self.refers:
            raise ValueError("this decision rule has no referable classes and threshold")
        return self.referable_probability(probs, class_names) >= float(self.threshold)

    def to_meta(self) -> Dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: Dict[str, object], where: str = "the checkpoint") -> Optional["DecisionRule"]:
        """The rule stored in a checkpoint's metadata or an export's description, or None when there is none."""
        value = meta.get(DECISION_RULE_KEY) if isinstance(meta, dict) else None
        if value is None:
            return None
        if not isinstance(value, dict):
            raise WeightError(f"{where}: '{DECISION_RULE_KEY}' is not a decision rule")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise WeightError(f"{where}: '{DECISION_RULE_KEY}' has unknown keys {', '.join(unknown)}")
        try:
            return cls(**value)
        except (TypeError, ValueError) as exc:
            raise WeightError(f"{where}: '{DECISION_RULE_KEY}' is not a valid decision rule: {exc}") from exc
