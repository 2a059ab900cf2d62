"""The experiment runner: walks a plan's units inside the daemon, phase by phase.

Terms:
- *experiment*: one plan being run (table ``experiments``); its units are stored up front,
  in run order, so an interrupted run resumes where it stopped (same plan hash), keeping
  finished units and rerunning the interrupted one as a new *attempt*.
- *phase*: ``load`` (export and load; its energy kept apart from inference), ``warmup``,
  ``cooldown_before`` (idle with the model loaded: the idle baseline), ``measure`` (the
  workload), ``cooldown_after`` (tail energy).  Each is a row in ``phases`` with start and
  end on the samples' monotonic clock; phase energy is a query (greenmon/views.py).

Shape: ``ExperimentRunner`` queues plans and walks a plan's units; each unit is a
``UnitRun`` with one step per phase (load, hardware levels, warm-up, cooldown before,
measure, cooldown after, teardown, record) and its own ``PhaseLog``.  Every write goes
through a Store method; the daemon is seen through ``RunnerHost`` (greenmon/protocols.py).

Engines run in one worker thread so the probes keep sampling on theirs; between units the
engine is closed, garbage is collected and the release of its memory is checked.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import duckdb
import msgspec
import psutil
from anyio.abc import TaskStatus

from greenmon.api.messages import (
    GridCell,
    PlanEntry,
    PlanSubmitted,
    Progress,
    ResultRow,
    ServingStats,
    UnitInfo,
)
from greenmon.attribution import (
    METHOD_TOKENS,
    SESSION_SERIES_SQL,
    CpuReading,
    CpuShareSampler,
    PowerSeries,
    attribute_cpu_time,
    domain_energy_j,
    power_series_from_rows,
    request_energy,
    spans_of,
)
from greenmon.clock import now_ns
from greenmon.energy import window_energy_sql
from greenmon.engines.base import Engine, Prompt, RequestRecord, handles_load
from greenmon.errors import GreenmonError, PlanError
from greenmon.interference import quiet_before_baseline
from greenmon.plan import Plan, Unit, diff_plans, parse_plan, parse_shard
from greenmon.protocols import RunnerHost
from greenmon.rounds import scheduled_units
from greenmon.store import NewExperiment, NewUnit, Store

if TYPE_CHECKING:
    from greenmon.hardware.journal import UnitSettings

PHASES = ("load", "warmup", "cooldown_before", "measure", "cooldown_after")
# Memory still held after close beyond this is reported: engines must not leak into the
# next unit's measurement.
RELEASE_TOLERANCE_BYTES = 64 * 1024 * 1024
# Samples read around a unit's requests, so their first and last intervals are whole.
SERIES_MARGIN_NS = 2_000_000_000

ReferenceFn = Callable[[Any, Sequence[Prompt], int], Mapping[str, Sequence[int]]]


def _default_reference(
    model: Any, prompts: Sequence[Prompt], max_new_tokens: int
) -> Mapping[str, Sequence[int]]:
    from greenmon.fidelity import reference_outputs

    return reference_outputs(model, prompts, max_new_tokens)


@dataclass
class RunState:
    """The runner's own, mutable record of where it is; ``progress()`` derives the wire's
    ``Progress`` message from it (remaining phase time, the grid as rows)."""

    status: str = "idle"
    experiment_id: str | None = None
    plan_name: str | None = None
    unit_index: int = 0
    units_total: int = 0
    unit: UnitInfo | None = None
    phase: str | None = None
    phase_ends_ns: int | None = None
    request_index: int = 0
    requests_total: int = 0
    started_ns: int | None = None
    units_run: int = 0
    grid: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    results: list[ResultRow] = field(default_factory=list)
    last_error: str | None = None


@dataclass
class Submission:
    """A plan accepted by the runner: queued, running, or finished in this daemon's life."""

    plan: Plan
    experiment_id: str
    units: list[Unit]
    units_total: int
    units_done: int
    resumed: bool
    grid: dict[tuple[str, str], dict[str, int]]
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: str | None = None  # done | cancelled | failed | interrupted

    def entry(self) -> PlanEntry:
        """This plan as the wire shows it in a progress's queue or finished list."""
        return PlanEntry(
            experiment_id=self.experiment_id,
            plan_name=self.plan.name,
            units_total=self.units_total,
            units_done=self.units_done,
            resumed=self.resumed,
            outcome=self.outcome,
        )

    def submitted(self, queued_behind: list[str]) -> PlanSubmitted:
        """This plan as ``POST /plans`` answers it: queued behind ``queued_behind``."""
        return PlanSubmitted(**msgspec.structs.asdict(self.entry()), queued_behind=queued_behind)


class PlanFinished(PlanError):
    title = "Plan already finished"


# How many finished submissions progress() keeps (clients following a plan read its outcome).
FINISHED_KEPT = 20


# The live results table: medians per configuration over an experiment's finished units,
# from ``{results}`` (unit_results_for, one parameter: the experiment).
_SUMMARY_SQL = """SELECT configuration, count(*) AS units,
       median(energy_global_j) AS median_energy_j,
       median(duration_s) AS median_duration_s,
       median(j_per_token) AS median_j_per_token,
       list_distinct(flatten(list(flags))) AS flags,
       count(*) FILTER (list_contains(flags, 'background_load')) AS background_load_units,
       list_sort(list_distinct(flatten(list(estimated_domains)))) AS estimated_domains
FROM {results} WHERE status = 'done'
GROUP BY configuration ORDER BY configuration"""


def summary_rows(store: Store, experiment_id: str) -> list[ResultRow]:
    """Medians per configuration over an experiment's finished units: the live results
    table, and the summary ``greenmon run`` prints (from the daemon, or from the file)."""
    columns, rows = store.query(_SUMMARY_SQL.format(results="unit_results_for(?)"), [experiment_id])
    return _summary_dicts(columns, rows)


def unit_end_summary_rows(
    store: Store,
    experiment_id: str,
    *,
    session_id: str | None = None,
    settled_before_ns: int | None = None,
) -> list[ResultRow]:
    """A unit end's bookkeeping: materialise the finished units whose samples are all
    flushed (``Store.materialise_unit_results``), and ``summary_rows`` from the same pass
    over the samples (``Store.materialise_and_query``), so the results SQL is evaluated
    once per unit end, not twice."""
    columns, rows = store.materialise_and_query(
        experiment_id,
        _SUMMARY_SQL,
        session_id=session_id,
        settled_before_ns=settled_before_ns,
    )
    return _summary_dicts(columns, rows)


def _summary_dicts(columns: list[str], rows: list[tuple[Any, ...]]) -> list[ResultRow]:
    # NaN (a median over no values) is no figure: None, as JSON can carry it.
    figures: list[dict[str, Any]] = [
        {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in zip(columns, row, strict=True)
        }
        for row in rows
    ]
    return [ResultRow(**values) for values in figures]


class ExperimentRunner:
    """Runs one plan at a time from a queue; submissions are serialised by a lock."""

    def __init__(
        self,
        daemon: RunnerHost,
        *,
        cache_dir: str | None = None,
        reference: ReferenceFn | None = _default_reference,
        engine_kwargs: Mapping[str, Any] | None = None,
        nvml: Any = None,
    ) -> None:
        self.daemon = daemon
        # a pre-built NVML module for the hardware factors (tests pass a fake);
        # None: the plan's [hardware] nvml_module.
        self.nvml = nvml
        self.store = daemon.store
        self.cache_dir = cache_dir
        self.reference = reference
        self.engine_kwargs = dict(engine_kwargs or {})
        self.state = RunState()
        self._resumed = anyio.Event()
        self._resumed.set()
        self._cancel_scope: anyio.CancelScope | None = None
        self._engine_limiter = anyio.CapacityLimiter(1)
        # the engine of the unit running now (its live serving figures).
        self.live_engine: Engine | None = None
        # The first unit's power after its cooldown: adaptive cooldowns wait to get near it.
        self.baseline_w: float | None = None
        self.queue: list[Submission] = []
        self.current: Submission | None = None
        self.finished: list[Submission] = []
        self._submit_lock = anyio.Lock()
        self._queued = anyio.Event()

    # -- control ---------------------------------------------------------------------
    def pause(self) -> None:
        """Pause before the next unit (a unit in progress is never cut: it would be invalid)."""
        if self.state.status == "running":
            self._resumed = anyio.Event()
            self.state.status = "paused"
            self.daemon.event("info", "plan paused: the current unit finishes first")

    def resume(self) -> None:
        if self.state.status == "paused":
            self.state.status = "running"
            self._resumed.set()
            self.daemon.event("info", "plan resumed")

    def cancel(self, experiment_id: str | None = None) -> None:
        """Cancel the running plan (the current unit is abandoned) or remove a queued one."""
        for queued in self.queue:
            if queued.experiment_id == experiment_id:
                self.queue.remove(queued)
                self.store.end_experiment(queued.experiment_id, "cancelled", now_ns())
                self._finish(queued, "cancelled")
                self.daemon.event("warning", f"queued plan {experiment_id} cancelled")
                return
        current = self.current
        if current is None or experiment_id not in (None, current.experiment_id):
            raise PlanError(
                f"no queued or running experiment {experiment_id} in this daemon"
                if experiment_id
                else "no plan is running or queued in this daemon"
            )
        if self._cancel_scope is not None and self.state.status in ("running", "paused"):
            self.state.status = "cancelling"
            self._resumed.set()
            self._cancel_scope.cancel()
            self.daemon.event("warning", "plan cancelled: the current unit is abandoned")

    async def submit(
        self,
        plan_toml: str,
        plan_path: str | None,
        *,
        force: bool = False,
        resume: bool = False,
        shard: str | None = None,
    ) -> PlanSubmitted:
        """A plan's text from the API: queued, its submission as the wire shows it."""
        import dataclasses
        from pathlib import Path

        plan = parse_plan(plan_toml, Path(plan_path) if plan_path else None)
        if shard is not None:  # one part of the plan's units
            plan = dataclasses.replace(plan, shard=parse_shard(shard))
        submission = await self.submit_plan(plan, force=force, resume=resume)
        return submission.submitted(self.queued_behind(submission))

    async def submit_plan(self, plan: Plan, *, force: bool, resume: bool) -> Submission:
        """Queue a plan; simultaneous submissions are serialised, never run together."""
        async with self._submit_lock:
            for active in (self.current, *self.queue):
                if active is not None and active.plan.name == plan.name:
                    raise PlanError(
                        f"plan '{plan.name}' is already "
                        f"{'running' if active is self.current else 'queued'} as experiment "
                        f"{active.experiment_id} in this daemon; follow it with `greenmon "
                        "status` or `greenmon tui`, or cancel it first."
                    )
            submission = await anyio.to_thread.run_sync(self.prepare, plan, resume, force)
            self.queue.append(submission)
            self._queued.set()
        return submission

    def queued_behind(self, submission: Submission) -> list[str]:
        """The experiments that run before ``submission`` (the current one first)."""
        if submission not in self.queue:
            return []
        ahead = self.queue[: self.queue.index(submission)]
        return [s.experiment_id for s in ([self.current] if self.current else []) + ahead]

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.queue)

    async def serve(self) -> None:
        """The runner's loop: one plan at a time from the queue, until cancelled."""
        while True:
            while not self.queue:
                self._queued = anyio.Event()
                await self._queued.wait()
            submission = self.queue.pop(0)
            self.current = submission
            try:
                await self.run_units(submission)
            finally:
                self.current = None

    def _finish(self, submission: Submission, outcome: str) -> None:
        submission.outcome = outcome
        submission.done.set()
        self.finished = [*self.finished[-(FINISHED_KEPT - 1) :], submission]

    def progress(self) -> Progress:
        state = self.state
        remaining = None
        if state.phase_ends_ns is not None:
            remaining = max(0.0, (state.phase_ends_ns - now_ns()) / 1e9)
        eta_s = None
        if state.started_ns and state.units_run:
            per_unit_s = (now_ns() - state.started_ns) / 1e9 / state.units_run
            eta_s = per_unit_s * max(0, state.units_total - state.unit_index + 1)
        return Progress(
            status=state.status,
            experiment_id=state.experiment_id,
            plan_name=state.plan_name,
            unit_index=state.unit_index,
            units_total=state.units_total,
            unit=state.unit,
            phase=state.phase,
            phase_remaining_s=remaining,
            request_index=state.request_index,
            requests_total=state.requests_total,
            eta_s=eta_s,
            grid=[
                GridCell(model=m, configuration=c, **counts)
                for (m, c), counts in sorted(state.grid.items())
            ],
            results=list(state.results),
            last_error=state.last_error,
            queue=[queued.entry() for queued in self.queue],
            finished=[done.entry() for done in self.finished],
            serving=self._serving_progress(),
        )

    def _serving_progress(self) -> ServingStats | None:
        """Requests in flight, tokens/s and latency of a served unit (an engine
        that handles load and offers ``live()``); None for in-process engines."""
        live = getattr(self.live_engine, "live", None)
        if not callable(live):
            return None
        stats = live()
        return stats if isinstance(stats, ServingStats) else None

    # -- the store -----------------------------------------------------------------------
    def prepare(self, plan: Plan, resume: bool, force: bool) -> Submission:
        """Find the experiment to resume or create a new one (blocking: a worker thread).

        The plan's latest unfinished experiment (same name) is resumed when its hash is the
        same, and refused with the differences when the plan changed; a plan whose latest
        experiment finished is refused with how to run it again.  ``force`` always starts a
        new experiment.
        """
        latest = None if force else self._latest_experiment(plan)
        if latest is not None and latest[3] == "done" and latest[1] == plan.plan_hash:
            raise PlanFinished(
                f"plan '{plan.name}' already finished as experiment {latest[0]} "
                f"({latest[5]} units) in {self.store.path}. Its results are there "
                f"(`greenmon analyze --db {self.store.path}`); to run it again as a new "
                "experiment, pass --force."
            )
        if latest is not None and latest[3] != "done":
            return self._submission(plan, self._reopen(plan, latest), resumed=True)
        if resume:
            raise PlanError(
                f"there is no unfinished experiment of plan '{plan.name}' to resume in "
                f"{self.store.path}; run it without --resume to start one."
            )
        experiment_id = uuid.uuid4().hex[:12]
        self._create_experiment(plan, experiment_id)
        return self._submission(plan, experiment_id, resumed=False)

    def _latest_experiment(self, plan: Plan) -> tuple[Any, ...] | None:
        """The plan's latest experiment: (id, plan_hash, plan, status, units_done, units_total)."""
        # a shard resumes its own experiment (same plan, same shard).
        shard = plan.shard
        shard_index, shard_count = (shard.index, shard.count) if shard else (None, None)
        rows = self.store.execute(
            """SELECT experiment_id, plan_hash, plan, status, units_done, units_total
               FROM (SELECT e.experiment_id, e.plan_hash, e.plan, e.status, e.created_ns,
                            count(*) FILTER (u.status IN ('done', 'failed')) AS units_done,
                            count(u.unit_id) AS units_total
                     FROM experiments e LEFT JOIN units u USING (experiment_id)
                     WHERE e.name = ? AND e.shard_index IS NOT DISTINCT FROM ?
                       AND e.shard_count IS NOT DISTINCT FROM ?
                     GROUP BY ALL)
               ORDER BY created_ns DESC LIMIT 1""",
            [plan.name, shard_index, shard_count],
        )
        return rows[0] if rows else None

    def _reopen(self, plan: Plan, latest: tuple[Any, ...]) -> str:
        """Queue an unfinished experiment again; refused with the differences if the plan
        changed since it started."""
        if latest[1] != plan.plan_hash:
            changes = diff_plans(json.loads(latest[2]), plan.canonical())
            raise PlanError(
                f"experiment {latest[0]} of plan '{plan.name}' is unfinished and the plan "
                f"changed since it started: {'; '.join(changes[:8])}. Restore the plan to "
                "resume it, or pass --force to start a new experiment."
            )
        experiment_id = str(latest[0])
        self.store.set_experiment_status(experiment_id, "queued")
        self.daemon.event(
            "info", f"resuming experiment {experiment_id}: {latest[4]} of {latest[5]} done"
        )
        return experiment_id

    def _submission(self, plan: Plan, experiment_id: str, *, resumed: bool) -> Submission:
        """The experiment's units still to run, and its grid of counts so far."""
        all_units = {u.unit_id: u for u in plan.units()}
        statuses = self.store.execute(
            "SELECT unit_id, status FROM units WHERE experiment_id = ? ORDER BY unit_id",
            [experiment_id],
        )
        grid: dict[tuple[str, str], dict[str, int]] = {}
        for unit_id, status in statuses:
            unit = all_units[int(unit_id)]
            cell = grid.setdefault(
                (unit.model, unit.configuration), {"done": 0, "failed": 0, "running": 0, "total": 0}
            )
            cell["total"] += 1
            if status in ("done", "failed"):
                cell[status] += 1
        # skipped units (rounds repetitions = "auto" did not need) never run
        finished = ("done", "failed", "skipped")
        todo = [all_units[int(uid)] for uid, status in statuses if status not in finished]
        return Submission(
            plan=plan,
            experiment_id=experiment_id,
            units=todo,
            units_total=len(all_units),
            units_done=len(all_units) - len(todo),
            resumed=resumed,
            grid=grid,
        )

    def _create_experiment(self, plan: Plan, experiment_id: str) -> None:
        shard = plan.shard  # the shard and host are recorded with it
        experiment = NewExperiment(
            experiment_id=experiment_id,
            session_id=self.daemon.session_id,
            name=plan.name,
            plan_path=str(plan.path) if plan.path else None,
            plan_hash=plan.plan_hash,
            plan_toml=plan.text,
            plan_json=json.dumps(plan.canonical()),
            seed=plan.spec.seed,
            order_kind=plan.spec.order,
            created_ns=now_ns(),
            shard_index=shard.index if shard else None,
            shard_count=shard.count if shard else None,
        )
        units = [
            NewUnit(u.unit_id, u.model, u.engine, u.provider, u.repetition, u.factors)
            for u in plan.units()
        ]
        self.store.create_experiment(experiment, units)

    async def fail_unit(self, experiment_id: str, unit: Unit, reason: str) -> None:
        """A unit that could not run or did not finish its timeline: failed, with why."""
        self.state.last_error = reason
        cell = self.state.grid.get((unit.model, unit.configuration))
        if cell is not None:
            cell["failed"] += 1
        await anyio.to_thread.run_sync(
            lambda: self.store.fail_unit(experiment_id, unit.unit_id, reason, now_ns())
        )
        self.daemon.event("error", f"unit {unit.unit_id} ({unit.configuration}) failed: {reason}")

    def materialise_results(self, experiment_id: str) -> list[ResultRow]:
        """Store the results of the experiment's finished units, this one included, so the
        live summary reads one row per unit, not samples; returns that summary, read from
        the same pass (``unit_end_summary_rows``).  It runs only from ``record``, after
        ``Daemon.samples_through``: every sample up to the end of the unit just finished
        (and so of every earlier one) is already in the file, which is what "settled"
        means; a unit of this session that ended later than now has none yet."""
        return unit_end_summary_rows(
            self.store, experiment_id, session_id=self.daemon.session_id, settled_before_ns=now_ns()
        )

    def summary_rows(self, experiment_id: str) -> list[ResultRow]:
        """Medians per configuration over finished units (the live results table)."""
        return summary_rows(self.store, experiment_id)

    def recent_power_w(self, window_s: float) -> float | None:
        """Mean power of the energy sources over the last window_s, from stored samples."""
        end_ns = now_ns()
        rows = self.store.execute(
            "SELECT sum(e.energy_j) FROM ("
            + window_energy_sql(
                "(SELECT 0::BIGINT AS window_id, channel_id, "
                f"{end_ns - int(window_s * 1e9)}::BIGINT AS start_ns, {end_ns}::BIGINT AS end_ns "
                "FROM energy_sources WHERE session_id = ?)"
            )
            + ") e",
            [self.daemon.session_id],
        )
        energy_j = rows[0][0] if rows else None
        return None if energy_j is None else float(energy_j) / window_s

    # -- engines -------------------------------------------------------------------------
    def make_engine(self, plan: Plan, name: str) -> Engine:
        if name in plan.spec.custom_engines:
            module_name, _, class_name = plan.spec.custom_engines[name].partition(":")
            try:
                engine_class = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as error:
                raise PlanError(
                    f"custom engine {name!r} = {plan.spec.custom_engines[name]!r} cannot be "
                    f"loaded: {error}. Give it as 'package.module:Class' importable here."
                ) from None
            engine: Engine = engine_class(**self.engine_kwargs)
            return engine
        from greenmon.engines import SPECS, get_engine

        if name in plan.spec.engines:
            # Run by another environment's interpreter, in a worker process.
            from greenmon.engines.worker_engine import MxnetEngine, RemoteEngine

            environment = plan.spec.engines[name]
            target = environment.engine or name
            if SPECS[target].environment == "own":  # mxnet: its worker, another python
                return MxnetEngine(cache_dir=self.cache_dir, python=environment.python)
            return RemoteEngine(target, environment.python, self.cache_dir)
        return get_engine(name, cache_dir=self.cache_dir, **self.engine_kwargs)

    async def in_engine_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        # abandon_on_cancel: a hung engine call cannot be interrupted, but the unit can be
        # failed on time and the plan go on; the abandoned thread is reported.
        return await anyio.to_thread.run_sync(
            fn, *args, limiter=self._engine_limiter, abandon_on_cancel=True
        )

    async def reference_for(
        self, model: Any, prompts: list[Prompt], max_new_tokens: int
    ) -> Mapping[str, Sequence[int]] | None:
        """The fidelity reference of a workload, or None (no reference, or it failed)."""
        if self.reference is None:
            return None
        reference = self.reference
        try:
            return await anyio.to_thread.run_sync(lambda: reference(model, prompts, max_new_tokens))
        except Exception as error:
            self.daemon.event("warning", f"no fidelity reference: {error}")
            return None

    @staticmethod
    def release_accelerators() -> None:
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- running ---------------------------------------------------------------------
    async def run_units(self, submission: Submission) -> None:
        """Run a submission's units in order; the experiment's outcome is stored at the end,
        whatever ends it (done, failed checks, cancelled, or interrupted)."""
        self.state = RunState(
            status="running",
            experiment_id=submission.experiment_id,
            plan_name=submission.plan.name,
            units_total=submission.units_total,
            unit_index=submission.units_done,
            grid=submission.grid,
            started_ns=now_ns(),
        )
        self._resumed = anyio.Event()
        self._resumed.set()
        final = "done"
        try:
            # The scope exists before the first await: a cancel that arrives at any point
            # after the status says "running" reaches this plan.
            with anyio.CancelScope() as scope:
                self._cancel_scope = scope
                final = await self._run_plan(submission, scope)
            if final == "done" and scope.cancel_called:
                final = "cancelled"
        except BaseException:
            final = "interrupted"
            raise
        finally:
            self._cancel_scope = None
            with anyio.CancelScope(shield=True):
                await self._end_plan(submission, final)

    async def _run_plan(self, submission: Submission, scope: anyio.CancelScope) -> str:
        """Start the experiment, check the hardware, then each unit; "done" or "failed"."""
        plan, experiment_id = submission.plan, submission.experiment_id
        await anyio.to_thread.run_sync(self.store.set_experiment_status, experiment_id, "running")
        self.daemon.event("info", f"experiment {experiment_id} ({plan.name}) started")
        # Let the probes collect a little before the first phase.
        await anyio.sleep(0.2)
        # missing privileges or out-of-range hardware levels stop the plan here,
        # before the first unit, not in the middle of the run.
        from greenmon.hardware.checks import require_hardware

        try:
            await anyio.to_thread.run_sync(partial(require_hardware, plan, nvml=self.nvml))
        except PlanError as error:
            self.state.last_error = str(error)
            self.daemon.event("error", str(error))
            return "failed"
        inputs = UnitInputs(self, plan)
        # with repetitions = "auto" the rounds may stop early (rounds.py)
        async for unit in scheduled_units(plan, experiment_id, submission.units, self.daemon):
            await self._resumed.wait()
            if scope.cancel_called:
                break
            self.state.unit_index += 1
            try:
                model, prompts, reference = await inputs.for_unit(unit)
            except GreenmonError as error:
                await self.fail_unit(experiment_id, unit, str(error))
                continue
            await UnitRun(self, plan, experiment_id, unit, model, prompts, reference).run()
            self.state.units_run += 1
        return "done"

    async def _end_plan(self, submission: Submission, final: str) -> None:
        experiment_id = submission.experiment_id
        await anyio.to_thread.run_sync(
            lambda: self.store.end_experiment(experiment_id, final, now_ns())
        )
        if final == "done":
            self.state.results = await anyio.to_thread.run_sync(self.summary_rows, experiment_id)
        # The state says the plan ended only once the file says so too.
        self.state.status = final
        self.state.phase = None
        self.state.unit = None
        self._finish(submission, final)


class UnitInputs:
    """What a plan's units share, loaded once each: models, workloads, fidelity references."""

    def __init__(self, runner: ExperimentRunner, plan: Plan) -> None:
        self.runner = runner
        self.plan = plan
        self.models: dict[str, Any] = {}
        # keyed by (model, input_tokens): an input_tokens level gets its own
        # windows of exactly that many tokens (greenmon/workload.py).
        self.workloads: dict[tuple[str, int | None], list[Prompt]] = {}
        self.references: dict[tuple[str, int | None, int], Mapping[str, Sequence[int]] | None] = {}

    async def for_unit(
        self, unit: Unit
    ) -> tuple[Any, list[Prompt], Mapping[str, Sequence[int]] | None]:
        """The unit's model, prompts and reference (a GreenmonError fails the unit)."""
        from greenmon.models import resolve_model
        from greenmon.workload import load_workload

        plan, cache_dir = self.plan, self.runner.cache_dir
        if unit.model not in self.models:
            self.models[unit.model] = await anyio.to_thread.run_sync(
                partial(resolve_model, unit.model, cache_dir=cache_dir)
            )
        model = self.models[unit.model]
        input_tokens = unit.factors.get("input_tokens")
        prompts_key = (unit.model, input_tokens)
        if prompts_key not in self.workloads:
            self.workloads[prompts_key] = await anyio.to_thread.run_sync(
                partial(
                    load_workload,
                    plan.spec.workload,
                    model=model,
                    seed=plan.spec.seed,
                    limit=plan.spec.prompts,
                    cache_dir=cache_dir,
                    input_tokens=input_tokens,
                )
            )
        prompts = self.workloads[prompts_key]
        max_new = int(unit.level("max_new_tokens", plan.spec.max_new_tokens))
        key = (unit.model, input_tokens, max_new)
        if key not in self.references:
            self.references[key] = await self.runner.reference_for(model, prompts, max_new)
        return model, prompts, self.references[key]


@dataclass
class PhaseMark:
    phase: str
    start_ns: int
    end_ns: int | None = None  # None: still open (or cut short by a failure)


@dataclass
class PhaseLog:
    """A unit's phase markers, kept in memory and stored once the unit ends.

    A database write between phases would be greenmon's own work inside the unit's timeline
    (10-40 ms each, measured).  An interrupted unit is rerun whole, so the markers lost with
    it are never needed.
    """

    marks: list[PhaseMark] = field(default_factory=list)
    # The instant of an edge: the daemon's edge read (counters read at the phase's start
    # and end, so its energy is their exact difference); plain now_ns without a daemon.
    clock: Callable[[], int] = now_ns

    def start(self, phase: str) -> PhaseMark:
        mark = PhaseMark(phase, self.clock())
        self.marks.append(mark)
        return mark

    def last_edge_ns(self) -> int | None:
        """The last phase's end edge, or None while a phase is open (a failure cut it
        short) or none was started."""
        if not self.marks or any(m.end_ns is None for m in self.marks):
            return None
        return max(m.end_ns for m in self.marks if m.end_ns is not None)

    def take(self, end_ns: int) -> list[tuple[str, int, int]]:
        """The markers as (phase, start_ns, end_ns), a phase still open ending at
        ``end_ns``; the log is empty afterwards, so no marker is stored twice."""
        rows = [(m.phase, m.start_ns, m.end_ns or end_ns) for m in self.marks]
        self.marks = []
        return rows


class UnitRun:
    """One attempt at one unit: a step per phase, and the unit's own phase log.

    The timeline, under the plan's ``unit_timeout_s``: load, hardware levels, warm-up,
    cooldown before, measure, cooldown after.  Then, whatever happened, teardown (shielded:
    hardware levels restored, engine closed, memory checked), and the record: requests,
    quality, phase markers and fidelity are stored once the timeline is over, so no database
    write falls between its phases; an interrupted unit is rerun whole.
    """

    def __init__(
        self,
        runner: ExperimentRunner,
        plan: Plan,
        experiment_id: str,
        unit: Unit,
        model: Any,
        prompts: list[Prompt],
        reference: Mapping[str, Sequence[int]] | None,
    ) -> None:
        self.runner = runner
        self.store = runner.store
        self.state = runner.state
        self.plan = plan
        self.experiment_id = experiment_id
        self.unit = unit
        self.model = model
        self.prompts = prompts
        self.reference = reference
        self.phases = PhaseLog(clock=runner.daemon.edge_ns)
        self.attempt = 0
        self.cell: dict[str, int] = {}
        self.max_new = int(unit.level("max_new_tokens", plan.spec.max_new_tokens))
        # options include an http unit's server and load level (greenmon/plan/schema.py).
        self.batch_size = plan.batch_size_for(unit)
        self.options = plan.engine_options_for(unit)
        self.rss_before = 0
        self.engine: Engine | None = None
        self.unit_settings: UnitSettings | None = None
        self.abandoned = False
        self.warm_records: list[RequestRecord] = []
        self.measured: list[RequestRecord] = []
        self.load_info: dict[str, Any] = {}
        self.server_readings: list[CpuReading] = []
        self.measure_span: tuple[int, int] | None = None
        self.failure: str | None = None

    def event(self, level: str, message: str) -> None:
        self.runner.daemon.event(level, message)

    async def run(self) -> None:
        await self.begin()
        try:
            with anyio.fail_after(self.plan.spec.unit_timeout_s):
                await self.load()
                await self.hardware_levels()
                await self.warmup()
                await self.cooldown_before()
                await self.measure()
                await self.cooldown_after()
            self.check_work()
        except TimeoutError:
            self.abandoned = True
            self.failure = f"timed out after {self.plan.spec.unit_timeout_s:g} s (unit_timeout_s)"
        except anyio.get_cancelled_exc_class():
            self.abandoned = True
            with anyio.CancelScope(shield=True):
                await self.record_cancelled()
            raise
        except MemoryError:
            self.failure = "out of memory while loading or generating; try a smaller batch_size"
        except Exception as error:
            self.failure = f"{type(error).__name__}: {error}"
        finally:
            # shielded: cancellation (SIGINT/SIGTERM stops the daemon, which
            # cancels the runner) must not leave the machine changed.
            with anyio.CancelScope(shield=True):
                await self.teardown()
        await self.record()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark a phase of the timeline; a phase cut short by an error stays open here and
        ends when the markers are stored."""
        mark = self.phases.start(name)
        self.state.phase = name
        yield
        mark.end_ns = self.phases.clock()

    @property
    def loaded(self) -> Engine:
        if self.engine is None:  # a step out of order: the timeline is fixed in run()
            raise RuntimeError(f"unit {self.unit.unit_id}: no engine loaded")
        return self.engine

    # -- the steps, in order ---------------------------------------------------------------
    async def begin(self) -> None:
        """The unit shows as running (progress grid, unit row: a new attempt)."""
        unit = self.unit
        self.cell = self.state.grid.setdefault(
            (unit.model, unit.configuration), {"done": 0, "failed": 0, "running": 0, "total": 1}
        )
        self.cell["running"] = 1
        self.state.unit = UnitInfo(
            unit_id=unit.unit_id,
            model=unit.model,
            engine=unit.engine,
            provider=unit.provider,
            configuration=unit.configuration,
            repetition=unit.repetition,
            factors=unit.factors,
        )
        self.attempt = await anyio.to_thread.run_sync(
            lambda: self.store.start_unit(
                self.experiment_id,
                unit.unit_id,
                started_ns=now_ns(),
                session_id=self.runner.daemon.session_id,
                params=getattr(self.model, "param_count", None),
                size_category=getattr(self.model, "size_category", None),
            )
        )
        self.rss_before = psutil.Process().memory_info().rss

    async def load(self) -> None:
        """Export and load (the load phase: its energy is kept apart from inference)."""
        self.engine = engine = self.runner.make_engine(self.plan, self.unit.engine)
        # an engine that handles load gets each phase's prompts in one call and
        # runs the unit's closed or open loop itself.
        if handles_load(engine):
            self.batch_size = max(len(self.prompts), 1)
        self.runner.live_engine = engine
        with self.phase("load"):
            info = await self.runner.in_engine_thread(
                engine.load, self.model, self.unit.provider, self.options
            )
        self.load_info = {
            "export_s": info.export_s,
            "load_s": info.load_s,
            "export_cache_hit": info.export_cache_hit,
            **dict(info.details),
        }

    async def hardware_levels(self) -> None:
        """The unit's hardware levels (DVFS), journaled so they are always restored.

        In force after the load (whose energy is kept apart, and which a low clock would
        only slow down) and before warm-up, so warm-up, the idle baseline of cooldown_before,
        the measure and the tail all run at the unit's setting.  Restored in teardown.
        """
        from greenmon.hardware.journal import UnitSettings
        from greenmon.hardware.spec import HARDWARE_FACTORS

        levels = {k: v for k, v in self.unit.factors.items() if k in HARDWARE_FACTORS}
        if not levels:
            return
        self.unit_settings = UnitSettings(
            self.store,
            self.plan.spec.hardware,
            self.runner.daemon.session_id,
            self.experiment_id,
            self.unit.unit_id,
            nvml=self.runner.nvml,
        )
        in_force = await anyio.to_thread.run_sync(self.unit_settings.apply, levels)
        await anyio.to_thread.run_sync(
            self.store.set_unit_settings, self.experiment_id, self.unit.unit_id, in_force
        )

    async def warmup(self) -> None:
        warm = self.prompts[: self.plan.spec.warmup_requests]
        if not warm:
            return
        engine = self.loaded
        with self.phase("warmup"):
            for start in range(0, len(warm), self.batch_size):
                self.warm_records += await self.runner.in_engine_thread(
                    engine.generate, warm[start : start + self.batch_size], self.max_new
                )

    async def cooldown_before(self) -> None:
        """Idle with the model loaded: the unit's idle baseline (after waiting, when the
        plan asks, for other processes' load to end: greenmon/interference.py)."""
        self.load_info["quiet_wait_s"] = await quiet_before_baseline(
            self.plan.spec.cooldown, self.runner.daemon, self.state, self.unit.unit_id
        )
        with self.phase("cooldown_before"):
            cooldown = self.plan.spec.cooldown
            await self._sleep(cooldown.before_s)
            if cooldown.adaptive:
                await self._settle()

    async def _settle(self) -> None:
        """Adaptive cooldown: after before_s, wait until power settles near the first
        unit's baseline (at most max_s in all)."""
        cooldown = self.plan.spec.cooldown
        deadline_ns = now_ns() + int(max(0.0, cooldown.max_s - cooldown.before_s) * 1e9)
        target_w = self.runner.baseline_w
        while now_ns() < deadline_ns:
            current_w = await anyio.to_thread.run_sync(self.runner.recent_power_w, 2.0)
            if target_w is None or current_w is None:
                break
            if abs(current_w - target_w) <= cooldown.tolerance * target_w:
                break
            await anyio.sleep(0.5)

    async def measure(self) -> None:
        """The workload, in batches; progress counts its requests."""
        engine = self.loaded
        # A served unit's server process tree is attributed its share of the measure's
        # energy: its CPU time is read from before the phase to after it.
        server_pid = self.load_info.get("server_pid")
        sampler = CpuShareSampler([int(server_pid)]).start() if server_pid else None
        try:
            with self.phase("measure"):
                self.state.requests_total = len(self.prompts)
                self.state.request_index = 0
                for start in range(0, len(self.prompts), self.batch_size):
                    records = await self.runner.in_engine_thread(
                        engine.generate,
                        self.prompts[start : start + self.batch_size],
                        self.max_new,
                    )
                    self.measured.extend(records)
                    self.state.request_index = len(self.measured)
        finally:
            if sampler is not None:
                self.server_readings = sampler.stop()
                mark = next(m for m in reversed(self.phases.marks) if m.phase == "measure")
                self.measure_span = (mark.start_ns, mark.end_ns or now_ns())

    async def cooldown_after(self) -> None:
        """Idle after the workload: the tail energy."""
        with self.phase("cooldown_after"):
            await self._sleep(self.plan.spec.cooldown.after_s)

    async def _sleep(self, seconds: float) -> None:
        self.state.phase_ends_ns = now_ns() + int(seconds * 1e9)
        await anyio.sleep(seconds)
        self.state.phase_ends_ns = None

    def check_work(self) -> None:
        """Engines must do the same work: every request generates max_new_tokens (a
        classification request: one label)."""
        from greenmon.workload import CLASSIFICATION_TASKS

        classifying = bool(self.prompts) and self.prompts[0].task in CLASSIFICATION_TASKS
        expected = 1 if classifying else self.max_new
        bad = [r for r in self.measured if r.tokens_out != expected]
        # a server's counts are flagged (token_count_mismatch), not failed.
        if bad and not handles_load(self.loaded):
            self.failure = (
                f"{len(bad)} requests generated other than {expected} tokens "
                f"(e.g. {bad[0].prompt_id}: {bad[0].tokens_out}): engines must do "
                "the same work"
            )

    async def teardown(self) -> None:
        """Restore the hardware levels first, then close the engine and check that its
        memory was released (run shielded, whatever ended the timeline)."""
        if self.unit_settings is not None:
            for problem in await anyio.to_thread.run_sync(self.unit_settings.restore):
                self.event("error", f"unit {self.unit.unit_id}: {problem}")
        await self._close_engine()
        gc.collect()
        rss_after = psutil.Process().memory_info().rss
        self.load_info["rss_before_bytes"] = self.rss_before
        self.load_info["rss_after_close_bytes"] = rss_after
        if rss_after - self.rss_before > max(RELEASE_TOLERANCE_BYTES, 0.1 * self.rss_before):
            self.event(
                "warning",
                f"unit {self.unit.unit_id}: {(rss_after - self.rss_before) / 2**20:.0f} MiB "
                "still held after the engine closed; the next unit's baseline may be raised",
            )
        self.runner.release_accelerators()

    async def _close_engine(self) -> None:
        engine = self.engine
        if engine is not None and not self.abandoned:
            try:
                await self.runner.in_engine_thread(engine.close)
            except Exception as error:
                self.event("warning", f"engine close failed: {error}")
        elif engine is not None:
            self.event(
                "warning",
                f"unit {self.unit.unit_id}: engine thread abandoned "
                "while busy; its memory may stay held",
            )
        self.engine = None
        self.runner.live_engine = None

    async def record(self) -> None:
        """Store the unit's outcome: failed with its phases and load info, or done with its
        requests, quality, phases and fidelity; then the live summary."""
        self.cell["running"] = 0
        self.state.unit = None
        self.state.phase = None
        # The unit's samples are stored before its outcome is: a SIGKILL from here on
        # cannot leave a done unit without the samples its energy comes from.  Those end
        # at its last phase's end edge, where every probe that can be was read: through
        # that instant, not "now", which would wait up to a period of the slowest probe
        # (1 s for the host's) for a sample no figure of the unit uses.
        await self.runner.daemon.samples_through(self.phases.last_edge_ns() or now_ns())
        db = anyio.to_thread.run_sync
        if self.failure is not None:
            await db(self.write_phases)
            await db(
                self.store.set_unit_load_info, self.experiment_id, self.unit.unit_id, self.load_info
            )
            await self.runner.fail_unit(self.experiment_id, self.unit, self.failure)
            return
        await db(self.store_done)
        self.cell["done"] += 1
        runner = self.runner
        if runner.baseline_w is None and self.plan.spec.cooldown.adaptive:
            runner.baseline_w = await db(
                runner.recent_power_w, max(0.5, self.plan.spec.cooldown.before_s)
            )
        self.state.results = await db(runner.materialise_results, self.experiment_id)

    async def record_cancelled(self) -> None:
        """A cancelled unit (its plan cancelled, or the daemon stopping): marked with its
        phases so far; it runs again when the experiment resumes."""
        await anyio.to_thread.run_sync(
            lambda: self.store.cancel_unit(self.experiment_id, self.unit.unit_id, now_ns())
        )
        await anyio.to_thread.run_sync(self.write_phases)
        self.cell["running"] = 0

    # -- the record's writes (blocking: a worker thread) ---------------------------------
    def write_phases(self) -> None:
        """Store the unit's phase markers; a phase still open ends now."""
        self.store.insert_phases(
            self.experiment_id,
            self.unit.unit_id,
            self.attempt,
            self.runner.daemon.session_id,
            self.phases.take(now_ns()),
        )

    def store_done(self) -> None:
        experiment_id, unit_id, attempt = self.experiment_id, self.unit.unit_id, self.attempt
        self.store.insert_requests(experiment_id, unit_id, attempt, "warmup", self.warm_records)
        self.store.insert_requests(experiment_id, unit_id, attempt, "measure", self.measured)
        self.store_quality()
        self.write_phases()
        self.store_request_energy()
        fidelity_share, first_divergence = self.store_fidelity()
        self.store.finish_unit(
            experiment_id,
            unit_id,
            ended_ns=now_ns(),
            load_info=self.load_info,
            fidelity_share=fidelity_share,
            first_divergence=first_divergence,
        )

    def store_quality(self) -> None:
        """Score the unit's measured answers (greenmon/quality.py) and store them.

        Runs after the unit's timeline, outside every measured window.  A scoring failure
        is an event, never a failed unit: the energy already measured is kept.
        """
        from greenmon.quality import store_quality

        try:
            store_quality(
                self.store,
                self.experiment_id,
                self.unit.unit_id,
                self.attempt,
                self.measured,
                self.prompts,
            )
        except (GreenmonError, ImportError) as error:
            self.event("warning", f"unit {self.unit.unit_id}: quality not scored: {error}")

    def store_request_energy(self) -> None:
        """Each measured request's attributed energy (greenmon/attribution.py): the
        unit's measured energy in each interval split by the tokens each request in
        flight processed.  A failure is an event; the unit's measured figures stand."""
        if not self.measured:
            return
        try:
            spans = spans_of(self.measured)
            rows = self.store.execute(
                SESSION_SERIES_SQL,
                [
                    self.runner.daemon.session_id,
                    min(s.start_ns for s in spans) - SERIES_MARGIN_NS,
                    max(s.end_ns for s in spans) + SERIES_MARGIN_NS,
                ],
            )
            series = power_series_from_rows(rows)
            energy = request_energy(spans, series)
            if len(self.server_readings) > 1:
                self.store_server_attribution(series)
            self.store.set_request_energy(
                self.experiment_id,
                self.unit.unit_id,
                self.attempt,
                [
                    (r.prompt_id, energy.get(r.prompt_id, {}), METHOD_TOKENS, r.server_energy_j)
                    for r in self.measured
                ],
            )
        except (GreenmonError, duckdb.Error) as error:
            self.event("warning", f"unit {self.unit.unit_id}: request energy not stored: {error}")

    def store_server_attribution(self, series: Mapping[str, Sequence[PowerSeries]]) -> None:
        """The server tree's attributed energy over the measure phase (busy CPU share)."""
        energy_of = {
            domain: partial(domain_energy_j, channels)
            for domain, channels in series.items()
            if domain in ("cpu", "dram")
        }
        result = attribute_cpu_time(self.server_readings, energy_of, self.measure_span)
        self.store.set_unit_attribution(
            self.experiment_id,
            self.unit.unit_id,
            result.attributed_j,
            {**result.as_dict(), "pid": self.load_info.get("server_pid")},
        )

    def store_fidelity(self) -> tuple[float | None, int | None]:
        """Each measured request against the reference; the unit's share and divergence."""
        if self.reference is None:
            return None, None
        from greenmon.fidelity import compare_unit

        known = [r for r in self.measured if r.prompt_id in self.reference]
        if not known:
            return None, None
        result = compare_unit(known, self.reference)
        self.store.set_request_fidelity(
            self.experiment_id,
            self.unit.unit_id,
            self.attempt,
            [(r.prompt_id, r.identical_share, r.first_divergence) for r in result.requests],
        )
        return result.identical_share, result.first_divergence


def runner_service(**runner_kwargs: Any) -> Callable[..., Any]:
    """A daemon service: attach a runner as ``daemon.runner``; it idles until a plan arrives.

    ``runner_kwargs`` go to ExperimentRunner (cache_dir, the fidelity reference, engine
    keyword arguments, a pre-built NVML module).
    """

    async def service(
        daemon: RunnerHost, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        runner = ExperimentRunner(daemon, **runner_kwargs)
        daemon.runner = runner
        task_status.started()
        await runner.serve()

    return service
