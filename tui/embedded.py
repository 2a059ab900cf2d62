"""The in-process daemon of ``greenmon tui``: greenmon/background.py (moved to the core, so
``greenmon measure`` and ``Monitor`` start theirs the same way, composed as ``greenmon
daemon`` composes its own)."""

from __future__ import annotations

from greenmon.background import BackgroundDaemon

__all__ = ["BackgroundDaemon"]
