"""Checkpoint files, without building a model: MindSpore's .ckpt codec with our end marker, a .pth reader that
runs no pickled code, the published layouts as pure dict adapters, the HuggingFace hub, conversion into the
weights cache, our training checkpoints, and what a checkpoint says about the model it holds. May import
errors.py, registry.py and files/."""
