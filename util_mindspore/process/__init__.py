"""One process of a run: its device and precision settings, its rank under msrun and the few collectives the runs
need, SIGINT / SIGTERM taken at safe points, logging and progress lines, seeds, the lock that keeps one run per
folder, the compile cache. May import errors.py and files/; MindSpore only inside the functions that need it."""
