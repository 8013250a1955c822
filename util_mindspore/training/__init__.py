"""Training: the compiled step (loss scaling, accumulation, clipping and AdamW in one graph), layer-wise lr decay
and the schedule, the epoch loop shared by fine-tuning and MAE pre-training, each run's steps, TensorBoard. May
import every package above it in util_mindspore/__init__.py's list but inference/ and cli/."""
