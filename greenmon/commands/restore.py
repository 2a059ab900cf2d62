"""``greenmon restore [--db PATH]``: put back hardware settings a run left changed.

Every row of the restore journal not yet restored (a run killed with SIGKILL, a crash, a
restore that failed) gets its previous value written back, newest first, and the command
says what it did.  The next daemon start does the same on its own.
"""

from __future__ import annotations

import argparse

from greenmon.commands.common import add_db_argument, existing_db
from greenmon.errors import GreenmonError
from greenmon.hardware.journal import restore_journal
from greenmon.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)


def run(args: argparse.Namespace) -> int:
    db = existing_db(args.db)
    with Store.open(db) as store:
        results = restore_journal(store)
    if not results:
        print(f"nothing to restore: every hardware setting in {db} is already restored")
        return 0
    for result in results:
        print(("ok     " if result.ok else "FAILED ") + result.message)
    failed = [r for r in results if not r.ok]
    if failed:
        raise GreenmonError(
            f"{len(failed)} of {len(results)} settings could not be restored (above). Fix the "
            "cause (privileges: root or CAP_SYS_ADMIN for NVML, write access for cpufreq) "
            "and run `greenmon restore` again.",
            title="Restore incomplete",
        )
    print(f"restored {len(results)} setting(s)")
    return 0
