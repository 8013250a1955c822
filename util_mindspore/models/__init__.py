"""The cells: layers in plain and CPU forms, the transformer blocks, the ViT / DINOv3 / MAE families under the
PyTorch parameter names, the mixed-precision policy, loading weights into a model, and `create_model` /
`load_trained_model` for every row of registry.py. A new family plugs in here (docs/ARCHITECTURE.md). May import
errors.py, registry.py, files/ and checkpoints/."""
