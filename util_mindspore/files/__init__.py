"""Files that appear whole or not at all (written under a temporary name, fsynced, renamed), names that print
whatever their bytes, and where our caches live. Imports nothing of the package but errors.py; no MindSpore."""
