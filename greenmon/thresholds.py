"""The thresholds behind greenmon's validity flags and warnings, in one leaf module.

Each is read where a plan is checked (``greenmon plan check``), where a window is judged
(the SQL views) and where the analysis decides what it can test, so it lives here, below
all of them, rather than in the module that used it first.  This module imports nothing.
"""

from __future__ import annotations

# The background load (CPU of processes outside greenmon's own process tree, in percent of
# one core: 100 = one core busy elsewhere) above which a unit is flagged
# ``background_load``.  Why 25: an idle Linux host's own daemons use about 1-5% of a core,
# well under it; a busy core adds roughly 5-15 W to a CPU package, so a quarter of a core
# stays within a few watts, the order of the spread between repetitions of a CPU unit,
# while one CPU-bound job (100) is far above it on a machine of any size.
DEFAULT_BACKGROUND_CPU_PERCENT_MAX = 25.0

# A window shorter than this many periods of its slowest energy source, the period being
# how finely that source resolves the window (greenmon/sources.py window_resolution_sql),
# is flagged ``short_window`` (a measure, a user's window) or ``short_steady_state``: with
# fewer, what is unknown at its two edges is a large part of its energy.
MIN_WINDOW_PERIODS = 5

# A window whose energy channels cover less than this share of it is flagged
# ``low_coverage``.
MIN_COVERAGE = 0.9

# How far the components' sum may exceed the wall meter (as a share of the wall figure)
# before a window is flagged ``wall_below_components``.
WALL_TOLERANCE = 0.10

# Shapiro-Wilk is undefined below three values; a test without a normality check would
# silently pick a route, so a configuration needs at least this many repetitions.
MIN_REPETITIONS = 3
