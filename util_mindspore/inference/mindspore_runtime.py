"""Run a trained model on batches in MindSpore (our checkpoint, an upstream .pth, a published encoder): the runtime
predict_mindspore.py uses unless an exported file is given (util_mindspore/inference/runtimes.py).

It pads a short last batch to the batch size, so one compiled graph serves the run.
"""
from typing import TYPE_CHECKING, Optional, Tuple

import mindspore as ms
import numpy as np

from util_mindspore.inference.runtimes import pad_batch
from util_mindspore.models.compute_policy import ComputePolicy, apply_policy

if TYPE_CHECKING:
    from util_mindspore.models.blocks import EncoderInterface
    from util_mindspore.models.factory import TrainedModel


class _LogitsAndEmbedding(ms.nn.Cell):
    """One pass through the blocks for both outputs."""

    def __init__(self, model: "EncoderInterface") -> None:
        super().__init__()
        self.model = model

    def construct(self, x: ms.Tensor) -> Tuple[ms.Tensor, ms.Tensor]:
        tokens = self.model.forward_tokens(x)
        return self.model.forward_head(self.model.pool_features(tokens)), self.model.pool_embedding(tokens)


def policy_name(policy: ComputePolicy) -> str:
    return "float32" if not policy.reduced else f"{policy.matmul} matmuls"


class MindSporeRuntime:
    """A TrainedModel (models_vit_mindspore.load_trained_model) at a precision policy."""

    engine = "MindSpore"

    def __init__(self, trained: "TrainedModel", policy: ComputePolicy, batch_size: int, want_embedding: bool) -> None:
        self.trained = trained
        self.model, self.batch_size = trained.model, batch_size
        self.embedding_description = trained.embedding
        self.class_names, self.input_size = trained.class_names, trained.input_size
        self.embedding_dim = self.model.num_features if want_embedding else None
        self.description = f"{trained.name} from {trained.source} (MindSpore, {policy_name(policy)})"
        apply_policy(self.model, policy)
        self.net = _LogitsAndEmbedding(self.model)

    def __call__(self, images: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """(logits or None, embeddings or None) for a batch of preprocessed images."""
        images, n = pad_batch(images, self.batch_size)
        logits, embedding = self.net(ms.Tensor(images))
        logits = logits.asnumpy()[:n].astype(np.float32) if self.class_names else None
        return logits, embedding.asnumpy()[:n].astype(np.float32) if self.embedding_dim else None
