"""firecron's chaos suite: ``python -m bench.chaos`` (``make chaos``).

Bounded experiments against 127.0.0.1 only, on SQLite and the Firestore emulator, each
counting what the README's Reliability section promises: duplicates, losses, stuck runs,
5xx answers to bad input, tracebacks, overlapping attempts, results recorded by stale
attempts and partial applies (definitions in ``bench/chaos/_count.py``). The table is
printed and written to ``bench/results/chaos.json``.
"""
