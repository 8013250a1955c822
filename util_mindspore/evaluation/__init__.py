"""Numbers and pictures out: logits into probabilities, upstream's metrics (scikit-learn, called as upstream calls
it) with bootstrap intervals, the figures of a run, the HTML report. Works on arrays only: may import errors.py and
files/; no MindSpore, no model."""
