"""The emulator's engine: :class:`engine.perf_model.EngineCore` run in real time.

Owns the one scheduler task (plan a step, sleep for its duration, finish it, hand each token to its
request's queue), the per-request token queues, cancellation, and sleep/wake. Tokens are released
only once their step's time has passed on the injected clock, so no request is answered faster
than :class:`engine.perf_model.EnginePerf` allows.

Steps run back to back in model time while the engine stays busy: if the event loop wakes a step
late, the next one starts at the previous planned end (never before the arrival of a request it
admits), so lateness does not add up over a long generation; a stall longer than
:data:`MAX_CATCH_UP_S` is not caught up.

Sleep: ``sleep(level, mode="keep")`` stops planning steps at once (the step in flight finishes),
then takes ``sleep_level{1,2}_s``; running requests pause and new ones wait until ``wake_up()``,
which takes ``wake_level{1,2}_s``. ``mode="abort"`` (vLLM's default) ends every request with
``finish_reason`` ``abort`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from engine.perf_model import EngineCore, EnginePerf, Sequence, SleepLevel, StepResult
from kernel.clock import Clock

log = logging.getLogger(__name__)

#: How far behind real time the model timeline may fall and still be caught up.
MAX_CATCH_UP_S = 0.05

PauseMode = Literal["keep", "abort"]
FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class TokenEvent:
    """One token of one request (``index`` from 0), or the end of it."""

    index: int
    finish_reason: FinishReason | None
    """Set on the request's last event: its last token, or an abort (then ``index`` is -1)."""


class EngineObserver(Protocol):
    """Receives what the engine does, in real seconds (the metrics implement it)."""

    def prefilled(self, prompt_tokens: int) -> None: ...

    def token(self, first: bool, latency_s: float) -> None: ...

    def finished(self, reason: FinishReason, e2e_s: float) -> None: ...


@dataclass
class _Stream:
    seq: Sequence
    queue: asyncio.Queue[TokenEvent]
    arrival_s: float
    finish_reason: FinishReason
    last_token_s: float | None = None
    done: bool = False


@dataclass(frozen=True)
class EngineState:
    """A snapshot for ``/metrics`` and ``/is_sleeping``."""

    num_waiting: int
    num_running: int
    kv_usage_ratio: float
    sleep_level: int


class EmulatedEngine:
    """One engine replica in real time. Build it, ``await start()``, and ``await stop()``."""

    def __init__(self, perf: EnginePerf, clock: Clock, observer: EngineObserver) -> None:
        self.perf = perf
        self._clock = clock
        self._observer = observer
        self._core = EngineCore(perf)
        self._t0 = clock.monotonic()
        self._streams: dict[str, _Stream] = {}
        self._kick = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._transition = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._awake_since_s = 0.0

    def _now(self) -> float:
        return self._clock.monotonic() - self._t0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="emulator-scheduler")

    async def stop(self) -> None:
        """Stop the scheduler and end every open request (as aborted)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.abort_all()

    def state(self) -> EngineState:
        return EngineState(
            num_waiting=self._core.num_waiting,
            num_running=self._core.num_running,
            kv_usage_ratio=self._core.kv_usage_ratio,
            sleep_level=self._core.sleep_level,
        )

    def submit(
        self, request_id: str, prompt_tokens: int, max_tokens: int, finish_reason: FinishReason
    ) -> asyncio.Queue[TokenEvent]:
        """Queue a request; its tokens arrive on the returned queue.

        Raises :class:`engine.perf_model.AdmissionError` when it can never fit.
        """
        now = self._now()
        seq = Sequence(request_id, prompt_tokens, max_tokens, arrival_s=now)
        self._core.add(seq)
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._streams[request_id] = _Stream(seq, queue, now, finish_reason)
        self._kick.set()
        return queue

    def cancel(self, request_id: str) -> None:
        """The client went away: drop the request (counted as aborted) if it is still open."""
        stream = self._streams.get(request_id)
        if stream is not None and not stream.done:
            self._abort(request_id)

    def abort_all(self) -> None:
        """End every open request now, as aborted (its client gets finish_reason ``abort``)."""
        for request_id in list(self._streams):
            self._abort(request_id)

    def _abort(self, request_id: str) -> None:
        stream = self._streams.pop(request_id)
        self._core.cancel(request_id)
        stream.done = True
        stream.queue.put_nowait(TokenEvent(-1, "abort"))
        self._observer.finished("abort", self._now() - stream.arrival_s)

    async def sleep(self, level: SleepLevel, mode: PauseMode = "keep") -> None:
        """Stop stepping, wait for the step in flight, then take the sleep time of ``level``."""
        async with self._transition:
            if self._core.sleep_level == level:
                return
            self._core.sleep_level = level
            await self._idle.wait()
            if mode == "abort":
                self.abort_all()
            await asyncio.sleep(self.perf.sleep_s(level))
            log.info("asleep at level %d", level)

    async def wake_up(self) -> None:
        """Take the wake time of the current level, then resume stepping."""
        async with self._transition:
            level = self._core.sleep_level
            if level == 0:
                return
            await asyncio.sleep(self.perf.wake_s(1 if level == 1 else 2))
            self._core.sleep_level = 0
            self._awake_since_s = self._now()
            self._kick.set()
            log.info("awake after level %d", level)

    async def _sleep_until(self, t_s: float) -> None:
        # A deadline, not a condition another task sets: the loop only guards against waking early.
        while (left := t_s - self._now()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)

    async def _run(self) -> None:
        prev_end: float | None = None
        while True:
            now = self._now()
            plan = self._core.plan_step(now)
            if plan is None:
                prev_end = None
                self._kick.clear()
                await self._kick.wait()
                continue
            # The step starts once the engine is free (awake, and past the previous step's
            # planned end if busy) and the newest request it admits has arrived, but at most
            # MAX_CATCH_UP_S before now: an idle engine starts with the arrival, not when this
            # task got to run, and a late wake-up of this task does not slow the model down.
            starts = [now - MAX_CATCH_UP_S, self._awake_since_s]
            starts += [s.arrival_s for s in plan.admitted]
            starts += [prev_end] if prev_end is not None else []
            plan = replace(plan, start_s=min(max(starts), now))
            self._idle.clear()
            try:
                await self._sleep_until(plan.end_s)
                result = self._core.finish_step(plan, end_s=self._now())
                self._deliver(result)
            finally:
                self._idle.set()
            prev_end = plan.end_s

    def _deliver(self, result: StepResult) -> None:
        now = self._now()
        first = {s.request_id for s in result.first_tokens}
        finished = {s.request_id for s in result.finished}
        for seq in result.first_tokens:
            self._observer.prefilled(seq.prompt_tokens)
        for seq in result.tokens:
            stream = self._streams.get(seq.request_id)
            if stream is None:
                continue
            is_first = seq.request_id in first
            since = stream.arrival_s if is_first else (stream.last_token_s or stream.arrival_s)
            self._observer.token(is_first, now - since)
            stream.last_token_s = now
            reason = stream.finish_reason if seq.request_id in finished else None
            stream.queue.put_nowait(TokenEvent(seq.generated_tokens - 1, reason))
            if reason is not None:
                stream.done = True
                del self._streams[seq.request_id]
                self._observer.finished(reason, now - stream.arrival_s)
