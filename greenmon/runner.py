"""The experiment runner: walks a plan's units inside the daemon, phase by phase.

Terms:
- *experiment*: one plan being run (table ``experiments``); its units are stored up front,
  in run order, so an interrupted run resumes where it stopped (same plan hash), keeping
  finished units and rerunning the interrupted one as a new *attempt*.
- *phase*: ``load`` (export and load; its energy kept apart from inference), ``warmup``,
  ``cooldown_before`` (idle with the model loaded: the idle baseline), ``measure`` (the
  workload), ``cooldown_after`` (tail energy).  Each is a row in ``phases`` with start and
  end on the samples' monotonic clock; phase energy is a query (greenmon/views.py).

Engines run in one worker thread so the probes keep sampling on theirs; between units the
engine is closed, garbage is collected and the release of its memory is checked.
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import psutil
import pyarrow as pa
from anyio.abc import TaskStatus

from greenmon.clock import now_ns
from greenmon.energy import window_energy_sql
from greenmon.engines.base import Engine, Prompt, RequestRecord, handles_load
from greenmon.errors import GreenmonError, PlanError
from greenmon.interference import quiet_before_baseline
from greenmon.plan import Plan, Unit, diff_plans, parse_plan, parse_shard
from greenmon.rounds import scheduled_units

PHASES = ("load", "warmup", "cooldown_before", "measure", "cooldown_after")
# Memory still held after close beyond this is reported: engines must not leak into the
# next unit's measurement.
RELEASE_TOLERANCE_BYTES = 64 * 1024 * 1024

ReferenceFn = Callable[[Any, Sequence[Prompt], int], Mapping[str, Sequence[int]]]


def _default_reference(
    model: Any, prompts: Sequence[Prompt], max_new_tokens: int
) -> Mapping[str, Sequence[int]]:
    from greenmon.fidelity import reference_outputs

    return reference_outputs(model, prompts, max_new_tokens)


@dataclass
class Progress:
    status: str = "idle"
    experiment_id: str | None = None
    plan_name: str | None = None
    unit_index: int = 0
    units_total: int = 0
    unit: dict[str, Any] | None = None
    phase: str | None = None
    phase_ends_ns: int | None = None
    request_index: int = 0
    requests_total: int = 0
    started_ns: int | None = None
    units_run: int = 0
    grid: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "plan_name": self.plan.name,
            "units_total": self.units_total,
            "units_done": self.units_done,
            "resumed": self.resumed,
            "outcome": self.outcome,
        }


class PlanFinished(PlanError):
    title = "Plan already finished"


# How many finished submissions progress() keeps (clients following a plan read its outcome).
FINISHED_KEPT = 20


class ExperimentRunner:
    """Runs one plan at a time from a queue; submissions are serialised by a lock."""

    def __init__(
        self,
        daemon: Any,
        *,
        cache_dir: str | None = None,
        reference: ReferenceFn | None = _default_reference,
        engine_kwargs: Mapping[str, Any] | None = None,
        nvml: Any = None,
    ) -> None:
        self.daemon = daemon
        # issue 8: a pre-built NVML module for the hardware factors (tests pass a fake);
        # None: the plan's [hardware] nvml_module.
        self.nvml = nvml
        self.store = daemon.store
        self.cache_dir = cache_dir
        self.reference = reference
        self.engine_kwargs = dict(engine_kwargs or {})
        self.state = Progress()
        self._resumed = anyio.Event()
        self._resumed.set()
        self._cancel_scope: anyio.CancelScope | None = None
        self._engine_limiter = anyio.CapacityLimiter(1)
        self._phases: list[list[Any]] = []
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
                self.store.execute(
                    "UPDATE experiments SET status = 'cancelled', finished_ns = ? "
                    "WHERE experiment_id = ?",
                    [now_ns(), queued.experiment_id],
                )
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
    ) -> dict[str, Any]:
        """A plan's text from the API: queued, its submission as a dict."""
        import dataclasses
        from pathlib import Path

        plan = parse_plan(plan_toml, Path(plan_path) if plan_path else None)
        if shard is not None:  # issue 18: one part of the plan's units
            plan = dataclasses.replace(plan, shard=parse_shard(shard))
        submission = await self.submit_plan(plan, force=force, resume=resume)
        return submission.as_dict() | {"queued_behind": self.queued_behind(submission)}

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

    def progress(self) -> dict[str, Any]:
        state = self.state
        remaining = None
        if state.phase_ends_ns is not None:
            remaining = max(0.0, (state.phase_ends_ns - now_ns()) / 1e9)
        eta_s = None
        if state.started_ns and state.units_run:
            per_unit_s = (now_ns() - state.started_ns) / 1e9 / state.units_run
            eta_s = per_unit_s * max(0, state.units_total - state.unit_index + 1)
        return {
            "status": state.status,
            "experiment_id": state.experiment_id,
            "plan_name": state.plan_name,
            "unit_index": state.unit_index,
            "units_total": state.units_total,
            "unit": state.unit,
            "phase": state.phase,
            "phase_remaining_s": remaining,
            "request_index": state.request_index,
            "requests_total": state.requests_total,
            "eta_s": eta_s,
            "grid": [
                {"model": m, "configuration": c, **counts}
                for (m, c), counts in sorted(state.grid.items())
            ],
            "results": list(state.results),
            "last_error": state.last_error,
            "queue": [queued.as_dict() for queued in self.queue],
            "finished": [done.as_dict() for done in self.finished],
            "serving": self._serving_progress(),
        }

    def _serving_progress(self) -> dict[str, Any] | None:
        """issue 16: requests in flight, tokens/s and latency of a served unit (an engine
        that handles load and offers ``live()``); None for in-process engines."""
        live = getattr(self._live_engine, "live", None)
        return dict(live()) if callable(live) else None

    _live_engine: Engine | None = None

    # -- the store -----------------------------------------------------------------------
    def prepare(self, plan: Plan, resume: bool, force: bool) -> Submission:
        """Find the experiment to resume or create a new one (blocking: a worker thread).

        The plan's latest unfinished experiment (same name) is resumed when its hash is the
        same, and refused with the differences when the plan changed; a plan whose latest
        experiment finished is refused with how to run it again.  ``force`` always starts a
        new experiment.
        """
        # issue 18: a shard resumes its own experiment (same plan, same shard).
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
        latest = rows[0] if rows and not force else None
        resumed = False
        if latest is not None and latest[3] == "done" and latest[1] == plan.plan_hash:
            raise PlanFinished(
                f"plan '{plan.name}' already finished as experiment {latest[0]} "
                f"({latest[5]} units) in {self.store.path}. Its results are there "
                f"(`greenmon analyze --db {self.store.path}`); to run it again as a new "
                "experiment, pass --force."
            )
        if latest is not None and latest[3] != "done":
            if latest[1] != plan.plan_hash:
                changes = diff_plans(json.loads(latest[2]), plan.canonical())
                raise PlanError(
                    f"experiment {latest[0]} of plan '{plan.name}' is unfinished and the plan "
                    f"changed since it started: {'; '.join(changes[:8])}. Restore the plan to "
                    "resume it, or pass --force to start a new experiment."
                )
            experiment_id = str(latest[0])
            resumed = True
            self.store.execute(
                "UPDATE experiments SET status = 'queued' WHERE experiment_id = ?",
                [experiment_id],
            )
            self.daemon.event(
                "info", f"resuming experiment {experiment_id}: {latest[4]} of {latest[5]} done"
            )
        elif resume:
            raise PlanError(
                f"there is no unfinished experiment of plan '{plan.name}' to resume in "
                f"{self.store.path}; run it without --resume to start one."
            )
        else:
            experiment_id = uuid.uuid4().hex[:12]
            self._create_experiment(plan, experiment_id)
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
        # issue 14: skipped units (rounds repetitions = "auto" did not need) never run
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
        units = plan.units()
        with self.store.lock:
            con = self.store.con
            con.execute("BEGIN TRANSACTION")
            try:
                shard = plan.shard  # issue 18: the shard and host are recorded with it
                con.execute(
                    """INSERT INTO experiments (experiment_id, session_id, name, plan_path,
                           plan_hash, plan_toml, plan, seed, order_kind, status, created_ns,
                           shard_index, shard_count, host)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?,
                               (SELECT host FROM sessions WHERE session_id = ?))""",
                    [
                        experiment_id,
                        self.daemon.session_id,
                        plan.name,
                        str(plan.path) if plan.path else None,
                        plan.plan_hash,
                        plan.text,
                        json.dumps(plan.canonical()),
                        plan.spec.seed,
                        plan.spec.order,
                        now_ns(),
                        shard.index if shard else None,
                        shard.count if shard else None,
                        self.daemon.session_id,
                    ],
                )
                con.executemany(
                    """INSERT INTO units (experiment_id, unit_id, model, engine, provider,
                           repetition, factors, status)
                       VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')""",
                    [
                        [
                            experiment_id,
                            u.unit_id,
                            u.model,
                            u.engine,
                            u.provider,
                            u.repetition,
                            json.dumps(u.factors),
                        ]
                        for u in units
                    ],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _phase_start(self, experiment_id: str, unit: Unit, attempt: int, phase: str) -> int:
        # Markers are kept in memory and written once the unit ends (_write_phases): a
        # database write between phases would be greenmon's own work inside the unit's
        # timeline (10-40 ms each, measured).  An interrupted unit is rerun whole, so the
        # markers lost with it are never needed.
        self._phases.append([phase, now_ns(), None])
        self.state.phase = phase
        return len(self._phases) - 1

    def _phase_end(self, index: int) -> None:
        self._phases[index][2] = now_ns()

    def _store_requests(
        self,
        experiment_id: str,
        unit: Unit,
        attempt: int,
        phase: str,
        records: Sequence[RequestRecord],
    ) -> None:
        if not records:
            return
        # One Arrow batch, one statement: executemany costs milliseconds per row in DuckDB.
        table = pa.table(
            {
                "experiment_id": [experiment_id] * len(records),
                "unit_id": pa.array([unit.unit_id] * len(records), pa.int32()),
                "attempt": pa.array([attempt] * len(records), pa.int32()),
                "phase": [phase] * len(records),
                "prompt_id": [r.prompt_id for r in records],
                "tokens_in": pa.array([r.tokens_in for r in records], pa.int32()),
                "tokens_out": pa.array([r.tokens_out for r in records], pa.int32()),
                "start_ns": pa.array([r.start_ns for r in records], pa.int64()),
                "end_ns": pa.array([r.end_ns for r in records], pa.int64()),
                "ttft_ns": pa.array([r.ttft_ns for r in records], pa.int64()),
                "output_hash": [r.output_hash for r in records],
                "text": [r.text for r in records],
                # issue 16
                "tokens_requested": pa.array([r.tokens_requested for r in records], pa.int32()),
                "usage_tokens_out": pa.array([r.usage_tokens_out for r in records], pa.int32()),
            }
        )
        with self.store.lock:
            self.store.con.register("greenmon_requests", table)
            try:
                self.store.con.execute(
                    """INSERT INTO requests (experiment_id, unit_id, attempt, phase, prompt_id,
                           tokens_in, tokens_out, start_ns, end_ns, ttft_ns, output_hash, text,
                           tokens_requested, usage_tokens_out)
                       SELECT * FROM greenmon_requests"""
                )
            finally:
                self.store.con.unregister("greenmon_requests")

    def _store_quality(
        self,
        experiment_id: str,
        unit: Unit,
        attempt: int,
        records: Sequence[RequestRecord],
        prompts: Sequence[Prompt],
    ) -> None:
        """issue 19: score the unit's measured answers (greenmon/quality.py) and store them.

        Runs after the unit's timeline, outside every measured window.  A scoring failure
        is an event, never a failed unit: the energy already measured is kept.
        """
        from greenmon.quality import store_quality

        try:
            store_quality(self.store, experiment_id, unit.unit_id, attempt, records, prompts)
        except (GreenmonError, ImportError) as error:
            self.daemon.event("warning", f"unit {unit.unit_id}: quality not scored: {error}")

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
        from greenmon.engines import get_engine

        return get_engine(name, cache_dir=self.cache_dir, **self.engine_kwargs)

    async def _in_engine_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        # abandon_on_cancel: a hung engine call cannot be interrupted, but the unit can be
        # failed on time and the plan go on; the abandoned thread is reported.
        return await anyio.to_thread.run_sync(
            fn, *args, limiter=self._engine_limiter, abandon_on_cancel=True
        )

    async def _sleep_phase(self, seconds: float) -> None:
        self.state.phase_ends_ns = now_ns() + int(seconds * 1e9)
        await anyio.sleep(seconds)
        self.state.phase_ends_ns = None

    async def _cooldown_before(self, plan: Plan) -> None:
        cooldown = plan.spec.cooldown
        if not cooldown.adaptive:
            await self._sleep_phase(cooldown.before_s)
            return
        # Adaptive: at least before_s, then until power settles near the first baseline.
        await self._sleep_phase(cooldown.before_s)
        deadline_ns = now_ns() + int(max(0.0, cooldown.max_s - cooldown.before_s) * 1e9)
        target_w = self._baseline_w
        while now_ns() < deadline_ns:
            current_w = await anyio.to_thread.run_sync(self._recent_power_w, 2.0)
            if target_w is None or current_w is None:
                break
            if abs(current_w - target_w) <= cooldown.tolerance * target_w:
                break
            await anyio.sleep(0.5)

    _baseline_w: float | None = None

    def _recent_power_w(self, window_s: float) -> float | None:
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

    # -- running ---------------------------------------------------------------------
    async def run_units(self, submission: Submission) -> None:
        from greenmon.models import resolve_model
        from greenmon.workload import load_workload

        plan, experiment_id, units = submission.plan, submission.experiment_id, submission.units
        self.state = Progress(
            status="running",
            experiment_id=experiment_id,
            plan_name=plan.name,
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
                await anyio.to_thread.run_sync(
                    lambda: self.store.execute(
                        "UPDATE experiments SET status = 'running' WHERE experiment_id = ?",
                        [experiment_id],
                    )
                )
                self.daemon.event("info", f"experiment {experiment_id} ({plan.name}) started")
                # Let the probes collect a little before the first phase.
                await anyio.sleep(0.2)
                # issue 8: missing privileges or out-of-range hardware levels stop the plan
                # here, before the first unit, not in the middle of the run.
                from greenmon.hardware.checks import require_hardware

                try:
                    await anyio.to_thread.run_sync(partial(require_hardware, plan, nvml=self.nvml))
                except PlanError as error:
                    self.state.last_error = str(error)
                    self.daemon.event("error", str(error))
                    final = "failed"
                    return
                models: dict[str, Any] = {}
                # issue 8: keyed by (model, input_tokens): an input_tokens level gets its
                # own windows of exactly that many tokens (greenmon/workload.py).
                workloads: dict[tuple[str, int | None], list[Prompt]] = {}
                references: dict[
                    tuple[str, int | None, int], Mapping[str, Sequence[int]] | None
                ] = {}
                # issue 14: with repetitions = "auto" the rounds may stop early (rounds.py)
                async for unit in scheduled_units(plan, experiment_id, units, self.daemon):
                    await self._resumed.wait()
                    if scope.cancel_called:
                        break
                    self.state.unit_index += 1
                    try:
                        if unit.model not in models:
                            models[unit.model] = await anyio.to_thread.run_sync(
                                partial(resolve_model, unit.model, cache_dir=self.cache_dir)
                            )
                        input_tokens = unit.factors.get("input_tokens")
                        prompts_key = (unit.model, input_tokens)
                        if prompts_key not in workloads:
                            workloads[prompts_key] = await anyio.to_thread.run_sync(
                                partial(
                                    load_workload,
                                    plan.spec.workload,
                                    model=models[unit.model],
                                    seed=plan.spec.seed,
                                    limit=plan.spec.prompts,
                                    cache_dir=self.cache_dir,
                                    input_tokens=input_tokens,
                                )
                            )
                        max_new = int(unit.level("max_new_tokens", plan.spec.max_new_tokens))
                        key = (unit.model, input_tokens, max_new)
                        if key not in references:
                            references[key] = await self._reference(
                                models[unit.model], workloads[prompts_key], max_new
                            )
                    except GreenmonError as error:
                        await self._fail_unit(experiment_id, unit, str(error))
                        continue
                    await self.run_unit(
                        plan,
                        experiment_id,
                        unit,
                        models[unit.model],
                        workloads[prompts_key],
                        references[key],
                    )
                    self.state.units_run += 1
            if scope.cancel_called:
                final = "cancelled"
        except BaseException:
            final = "interrupted"
            raise
        finally:
            self._cancel_scope = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    lambda: self.store.execute(
                        "UPDATE experiments SET status = ?, finished_ns = ? "
                        "WHERE experiment_id = ?",
                        [final, now_ns(), experiment_id],
                    )
                )
                if final == "done":
                    self.state.results = await anyio.to_thread.run_sync(
                        self.summary_rows, experiment_id
                    )
                # The state says the plan ended only once the file says so too.
                self.state.status = final
                self.state.phase = None
                self.state.unit = None
                self._finish(submission, final)

    async def _reference(
        self, model: Any, prompts: list[Prompt], max_new_tokens: int
    ) -> Mapping[str, Sequence[int]] | None:
        if self.reference is None:
            return None
        reference = self.reference
        try:
            return await anyio.to_thread.run_sync(lambda: reference(model, prompts, max_new_tokens))
        except Exception as error:
            self.daemon.event("warning", f"no fidelity reference: {error}")
            return None

    async def _fail_unit(self, experiment_id: str, unit: Unit, reason: str) -> None:
        self.state.last_error = reason
        cell = self.state.grid.get((unit.model, unit.configuration))
        if cell is not None:
            cell["failed"] += 1
        await anyio.to_thread.run_sync(
            lambda: self.store.execute(
                "UPDATE units SET status = 'failed', reason = ?, ended_ns = ? "
                "WHERE experiment_id = ? AND unit_id = ?",
                [reason, now_ns(), experiment_id, unit.unit_id],
            )
        )
        self.daemon.event("error", f"unit {unit.unit_id} ({unit.configuration}) failed: {reason}")

    async def run_unit(
        self,
        plan: Plan,
        experiment_id: str,
        unit: Unit,
        model: Any,
        prompts: list[Prompt],
        reference: Mapping[str, Sequence[int]] | None,
    ) -> None:
        db = anyio.to_thread.run_sync
        cell = self.state.grid.setdefault(
            (unit.model, unit.configuration), {"done": 0, "failed": 0, "running": 0, "total": 1}
        )
        cell["running"] = 1
        self.state.unit = {
            "unit_id": unit.unit_id,
            "model": unit.model,
            "engine": unit.engine,
            "provider": unit.provider,
            "configuration": unit.configuration,
            "repetition": unit.repetition,
            "factors": unit.factors,
        }
        rows = await db(
            lambda: self.store.execute(
                """UPDATE units SET status = 'running', attempt = attempt + 1, started_ns = ?,
                   session_id = ?, reason = NULL, params = ?, size_category = ?
               WHERE experiment_id = ? AND unit_id = ? RETURNING attempt""",
                [
                    now_ns(),
                    self.daemon.session_id,
                    getattr(model, "param_count", None),
                    getattr(model, "size_category", None),
                    experiment_id,
                    unit.unit_id,
                ],
            )
        )
        attempt = int(rows[0][0])
        self._phases = []
        warm_records: list[RequestRecord] = []
        max_new = int(unit.level("max_new_tokens", plan.spec.max_new_tokens))
        # issue 16: options include an http unit's server and load level (plan.py).
        batch_size = plan.batch_size_for(unit)
        options = plan.engine_options_for(unit)
        rss_before = psutil.Process().memory_info().rss
        # issue 8: the unit's hardware levels (DVFS), journaled so they are always restored.
        from greenmon.hardware.journal import UnitSettings
        from greenmon.hardware.spec import HARDWARE_FACTORS

        hardware_levels = {k: v for k, v in unit.factors.items() if k in HARDWARE_FACTORS}
        unit_settings: UnitSettings | None = None
        engine: Engine | None = None
        abandoned = False
        measured: list[RequestRecord] = []
        load_info: dict[str, Any] = {}
        failure: str | None = None
        try:
            with anyio.fail_after(plan.spec.unit_timeout_s):
                engine = self.make_engine(plan, unit.engine)
                # issue 16: an engine that handles load gets each phase's prompts in one
                # call and runs the unit's closed or open loop itself.
                if handles_load(engine):
                    batch_size = max(len(prompts), 1)
                self._live_engine = engine
                phase_id = self._phase_start(experiment_id, unit, attempt, "load")
                info = await self._in_engine_thread(engine.load, model, unit.provider, options)
                self._phase_end(phase_id)
                load_info = {
                    "export_s": info.export_s,
                    "load_s": info.load_s,
                    "export_cache_hit": info.export_cache_hit,
                    **dict(info.details),
                }

                # issue 8: hardware levels go in force after the load (whose energy is kept
                # apart, and which a low clock would only slow down) and before warm-up, so
                # warm-up, the idle baseline of cooldown_before, the measure and the tail
                # all run at the unit's setting.  Restored in the finally below.
                if hardware_levels:
                    unit_settings = UnitSettings(
                        self.store,
                        plan.spec.hardware,
                        self.daemon.session_id,
                        experiment_id,
                        unit.unit_id,
                        nvml=self.nvml,
                    )
                    in_force = await db(unit_settings.apply, hardware_levels)
                    await db(
                        lambda: self.store.execute(
                            "UPDATE units SET settings = ? WHERE experiment_id = ? AND unit_id = ?",
                            [json.dumps(in_force), experiment_id, unit.unit_id],
                        )
                    )

                warm = prompts[: plan.spec.warmup_requests]
                if warm:
                    phase_id = self._phase_start(experiment_id, unit, attempt, "warmup")
                    for start in range(0, len(warm), batch_size):
                        warm_records += await self._in_engine_thread(
                            engine.generate, warm[start : start + batch_size], max_new
                        )
                    self._phase_end(phase_id)

                # issue 14: wait for other processes' load to end before the baseline
                load_info["quiet_wait_s"] = await quiet_before_baseline(
                    plan.spec.cooldown, self.daemon, self.state, unit.unit_id
                )
                phase_id = self._phase_start(experiment_id, unit, attempt, "cooldown_before")
                await self._cooldown_before(plan)
                self._phase_end(phase_id)

                phase_id = self._phase_start(experiment_id, unit, attempt, "measure")
                self.state.requests_total = len(prompts)
                self.state.request_index = 0
                for start in range(0, len(prompts), batch_size):
                    records = await self._in_engine_thread(
                        engine.generate, prompts[start : start + batch_size], max_new
                    )
                    measured.extend(records)
                    self.state.request_index = len(measured)
                self._phase_end(phase_id)

                phase_id = self._phase_start(experiment_id, unit, attempt, "cooldown_after")
                await self._sleep_phase(plan.spec.cooldown.after_s)
                self._phase_end(phase_id)
            bad = [r for r in measured if r.tokens_out != max_new * 1]
            # issue 16: a server's counts are flagged (token_count_mismatch), not failed.
            if bad and not handles_load(engine):
                failure = (
                    f"{len(bad)} requests generated other than {max_new} tokens "
                    f"(e.g. {bad[0].prompt_id}: {bad[0].tokens_out}): engines must do "
                    "the same work"
                )
        except TimeoutError:
            abandoned = True
            failure = f"timed out after {plan.spec.unit_timeout_s:g} s (unit_timeout_s)"
        except anyio.get_cancelled_exc_class():
            abandoned = True
            with anyio.CancelScope(shield=True):
                await db(
                    lambda: self.store.execute(
                        "UPDATE units SET status = 'cancelled', reason = 'cancelled', ended_ns = ? "
                        "WHERE experiment_id = ? AND unit_id = ?",
                        [now_ns(), experiment_id, unit.unit_id],
                    )
                )
                await db(self._write_phases, experiment_id, unit.unit_id, attempt)
                cell["running"] = 0
            raise
        except MemoryError:
            failure = "out of memory while loading or generating; try a smaller batch_size"
        except Exception as error:
            failure = f"{type(error).__name__}: {error}"
        finally:
            with anyio.CancelScope(shield=True):
                # issue 8: restore first, shielded: cancellation (SIGINT/SIGTERM stops the
                # daemon, which cancels the runner) must not leave the machine changed.
                if unit_settings is not None:
                    for problem in await db(unit_settings.restore):
                        self.daemon.event("error", f"unit {unit.unit_id}: {problem}")
                if engine is not None and not abandoned:
                    try:
                        await self._in_engine_thread(engine.close)
                    except Exception as error:
                        self.daemon.event("warning", f"engine close failed: {error}")
                elif engine is not None:
                    self.daemon.event(
                        "warning",
                        f"unit {unit.unit_id}: engine thread abandoned "
                        "while busy; its memory may stay held",
                    )
                engine = None
                self._live_engine = None
                gc.collect()
                rss_after = psutil.Process().memory_info().rss
                load_info["rss_before_bytes"] = rss_before
                load_info["rss_after_close_bytes"] = rss_after
                if rss_after - rss_before > max(RELEASE_TOLERANCE_BYTES, 0.1 * rss_before):
                    self.daemon.event(
                        "warning",
                        f"unit {unit.unit_id}: {(rss_after - rss_before) / 2**20:.0f} MiB still "
                        "held after the engine closed; the next unit's baseline may be raised",
                    )
                self._release_accelerators()
        cell["running"] = 0
        self.state.unit = None
        self.state.phase = None
        if failure is not None:
            await db(self._write_phases, experiment_id, unit.unit_id, attempt)
            await db(
                lambda: self.store.execute(
                    "UPDATE units SET load_info = ? WHERE experiment_id = ? AND unit_id = ?",
                    [json.dumps(load_info, default=str), experiment_id, unit.unit_id],
                )
            )
            await self._fail_unit(experiment_id, unit, failure)
            return
        # Requests and phase markers are stored once the unit's timeline is over, so no
        # database write falls between its phases; an interrupted unit is rerun whole.
        await db(self._store_requests, experiment_id, unit, attempt, "warmup", warm_records)
        await db(self._store_requests, experiment_id, unit, attempt, "measure", measured)
        await db(self._store_quality, experiment_id, unit, attempt, measured, prompts)
        await db(self._write_phases, experiment_id, unit.unit_id, attempt)
        fidelity_share: float | None = None
        first_divergence: int | None = None
        if reference is not None:
            fidelity_share, first_divergence = await db(
                self._store_fidelity, experiment_id, unit, attempt, measured, reference
            )
        await db(
            lambda: self.store.execute(
                """UPDATE units SET status = 'done', ended_ns = ?, load_info = ?,
                   fidelity_share = ?, fidelity_first_divergence = ?
               WHERE experiment_id = ? AND unit_id = ?""",
                [
                    now_ns(),
                    json.dumps(load_info, default=str),
                    fidelity_share,
                    first_divergence,
                    experiment_id,
                    unit.unit_id,
                ],
            )
        )
        cell["done"] += 1
        if self._baseline_w is None and plan.spec.cooldown.adaptive:
            self._baseline_w = await db(self._recent_power_w, max(0.5, plan.spec.cooldown.before_s))
        await db(self._materialise_results, experiment_id)
        self.state.results = await db(self.summary_rows, experiment_id)

    def _write_phases(self, experiment_id: str, unit_id: int, attempt: int) -> None:
        """Store the unit's phase markers; a phase still open ends now."""
        end_ns = now_ns()
        rows = [
            [experiment_id, unit_id, attempt, phase, self.daemon.session_id, start, end or end_ns]
            for phase, start, end in self._phases
        ]
        self._phases = []
        if rows:
            with self.store.lock:
                self.store.con.executemany(
                    """INSERT INTO phases (experiment_id, unit_id, attempt, phase, session_id,
                           start_ns, end_ns) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                    rows,
                )

    def _store_fidelity(
        self,
        experiment_id: str,
        unit: Unit,
        attempt: int,
        records: Sequence[RequestRecord],
        reference: Mapping[str, Sequence[int]],
    ) -> tuple[float | None, int | None]:
        from greenmon.fidelity import compare_unit

        known = [r for r in records if r.prompt_id in reference]
        if not known:
            return None, None
        result = compare_unit(known, reference)
        with self.store.lock:
            self.store.con.executemany(
                """UPDATE requests SET identical_share = ?, first_divergence = ?
                   WHERE experiment_id = ? AND unit_id = ? AND attempt = ? AND phase = 'measure'
                     AND prompt_id = ?""",
                [
                    [
                        r.identical_share,
                        r.first_divergence,
                        experiment_id,
                        unit.unit_id,
                        attempt,
                        r.prompt_id,
                    ]
                    for r in result.requests
                ],
            )
        return result.identical_share, result.first_divergence

    @staticmethod
    def _release_accelerators() -> None:
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _materialise_results(self, experiment_id: str) -> None:
        """Store the results of finished units whose samples are all flushed (README: the
        loss bound, doubled), so the live summary reads one row per unit, not samples."""
        from greenmon.sampling import HANDOFF_INTERVAL_S

        settle_s = 2 * (self.daemon.config.daemon.flush_interval_s + HANDOFF_INTERVAL_S)
        self.store.materialise_unit_results(
            experiment_id,
            session_id=self.daemon.session_id,
            settled_before_ns=now_ns() - int(settle_s * 1e9),
        )

    def summary_rows(self, experiment_id: str) -> list[dict[str, Any]]:
        """Medians per configuration over finished units (the live results table)."""
        columns, rows = self.store.query(
            """SELECT configuration, count(*) AS units,
                      median(energy_global_j) AS median_energy_j,
                      median(duration_s) AS median_duration_s,
                      median(j_per_token) AS median_j_per_token,
                      list_distinct(flatten(list(flags))) AS flags,
                      count(*) FILTER (list_contains(flags, 'background_load'))
                          AS background_load_units,
                      list_sort(list_distinct(flatten(list(estimated_domains))))
                          AS estimated_domains
               FROM unit_results_for(?) WHERE status = 'done'
               GROUP BY configuration ORDER BY configuration""",
            [experiment_id],
        )
        return [
            {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in zip(columns, row, strict=True)
            }
            for row in rows
        ]


def runner_service(**runner_kwargs: Any) -> Callable[..., Any]:
    """A daemon service: attach a runner as ``daemon.runner``; it idles until a plan arrives.

    ``runner_kwargs`` go to ExperimentRunner (cache_dir, the fidelity reference, engine
    keyword arguments, a pre-built NVML module).
    """

    async def service(
        daemon: Any, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        runner = ExperimentRunner(daemon, **runner_kwargs)
        daemon.runner = runner
        task_status.started()
        await runner.serve()

    return service
