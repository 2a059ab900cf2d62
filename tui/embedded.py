"""The in-process daemon of ``greenmon tui`` when no daemon holds the file.

It is the core's BackgroundDaemon (greenmon/background.py), composed as ``greenmon daemon``
composes its own; kept under this name for the TUI and bench/.
"""

from greenmon.background import BackgroundDaemon

__all__ = ["BackgroundDaemon"]
