"""Using a trained model: the runtimes that run it (MindSpore, onnxruntime, OpenVINO; the last two without
MindSpore), prediction over many images and what it writes, heat maps, export to MindIR / ONNX / OpenVINO with its
verification and cache, and the preprocessing an export's .json describes. May import every package above it in
util_mindspore/__init__.py's list but training/ and cli/."""
