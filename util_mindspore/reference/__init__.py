"""Upstream's PyTorch models (timm 0.9.2; DINOv3 on timm 1.0.31 in a child process) and the published checkpoint
layouts written with torch: what the tests and benchmarks compare the port against. Needs `pip install -e
".[dev]"`; nothing else in the package imports it."""
