"""What every daemon runs besides its probes and writer: one list, used by every starter.

``greenmon daemon`` and the in-process daemons of ``greenmon measure`` and ``Monitor``
(greenmon/background.py) compose their daemon here, so a window or a metric works the same
whoever started the daemon.  (Issue 12 brings ``greenmon.daemon.build_daemon`` with this
signature and the runner; on merge this module's services join that list.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenmon.api import ApiOptions
    from greenmon.config import Config
    from greenmon.daemon import Daemon
    from greenmon.probes.base import Probe
    from greenmon.store import Store


def daemon_services(config: Config, api: ApiOptions | None = None) -> list[Any]:
    """The services of a daemon, in start order: windows before the API that serves them."""
    from greenmon.api import api_service
    from greenmon.metrics import metrics_service
    from greenmon.windows import windows_service

    return [windows_service(), api_service(api), metrics_service(config.daemon)]


def build_daemon(
    store: Store,
    config: Config,
    *,
    api: ApiOptions | None = None,
    probes: Mapping[str, Probe] | None = None,
    handle_signals: bool = True,
) -> Daemon:
    from greenmon.daemon import Daemon

    return Daemon(
        store,
        config,
        probes=probes,
        services=daemon_services(config, api),
        handle_signals=handle_signals,
    )
