"""The command line: the flag groups every script shares, how a script starts (signals, MindSpore's log) and ends
(one line and exit 1 for bad input, 130 / 143 for a signal, a traceback for a bug), and the console entry points.
The top of the import order: nothing in the package imports it; the upstream-named scripts do."""
