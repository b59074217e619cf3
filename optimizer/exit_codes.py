"""The ``graphopt`` command's exit codes, each a distinct number, all in this one place (README "Exit codes").

When several gates fail in one run (``optimize --strict --compare --max-ratio ...``),
every failure is printed and the exit code is the first of: ``STRICT_FAILED``,
``LESS_ACCURATE``, ``SLOWER``.
"""

from __future__ import annotations

OK = 0
# A traceback: a bug in graphopt (Python's own exit code for an uncaught exception).
BUG = 1
# A mistake in what the user gave (flag, file, inputs): one line, ``graphopt: error: ...``
# (``optimizer.errors.GraphoptError.exit_code``; argparse's own errors exit 2 too).
USAGE = 2
# ``optimize --strict``: a pass the user asked for by name or flag was rolled back or failed.
STRICT_FAILED = 3
# ``compare --max-ratio R``: AFTER's latency ratio (upper end of its 95 % interval) is above R.
SLOWER = 4
# ``compare --min-cosine X``: an output of AFTER has a cosine similarity to BEFORE's below X.
LESS_ACCURATE = 5
# Interrupted: 128 + the signal's number (``optimizer.errors.Interrupted``).
SIGINT = 130
SIGTERM = 143
# ``--version`` or ``--print-config`` into a pipe whose reader left (``| head -0``), as a tool killed by SIGPIPE.
# A run that makes files (optimize, compare) goes on instead: its report stops, its files and gates do not.
SIGPIPE = 141

# In the order a run that fails several gates reports them.
GATE_ORDER = (STRICT_FAILED, LESS_ACCURATE, SLOWER)
