"""The engine performance model: one code path for ``thaw emulator`` and the simulator.

Owns how long an inference engine replica takes to do things — start, prefill, decode a step at a
given batch size, sleep and wake — and the continuous-batching scheduler that turns arrivals into
steps (admission bounded by ``max_num_seqs`` and KV capacity, first token at the end of the step
that prefilled the prompt, one token per running sequence per step). Pure: no I/O, no clock; every
function takes time as an argument.

The emulator runs :class:`EngineCore` in real time (it sleeps for each planned step); the simulator
runs the same core, or the closed forms on :class:`EnginePerf`, in virtual time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SleepLevel = Literal[1, 2]


class EnginePerf(BaseModel):
    """How fast one engine replica is. Units are in the field names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    load_time_s: float = Field(
        2.0,
        ge=0,
        description="Process start to the first 200 from /health (cold start, weights local).",
    )
    prefill_tokens_per_s: float = Field(
        8000.0,
        gt=0,
        description="Prompt tokens prefilled per second (one step may prefill several).",
    )
    decode_base_s: float = Field(
        0.02, gt=0, description="Duration of one decode step with one running sequence."
    )
    decode_per_seq_s: float = Field(
        0.001,
        ge=0,
        description="Added to a decode step for each running sequence beyond the first.",
    )
    kv_capacity_tokens: int = Field(
        16384, gt=0, description="Tokens the KV cache holds across all running sequences."
    )
    max_num_seqs: int = Field(8, gt=0, description="Most sequences decoded in one step; more wait.")
    max_model_len_tokens: int = Field(
        4096, gt=0, description="Longest prompt plus output one request may have."
    )
    sleep_level1_s: float = Field(
        0.1, ge=0, description="Time to sleep at level 1 (offload weights)."
    )
    sleep_level2_s: float = Field(
        0.05, ge=0, description="Time to sleep at level 2 (discard weights)."
    )
    wake_level1_s: float = Field(
        0.2, ge=0, description="Time to wake from level 1 (host RAM to GPU)."
    )
    wake_level2_s: float = Field(
        1.0, ge=0, description="Time to wake from level 2 (weights reloaded from local disk)."
    )

    @model_validator(mode="after")
    def _check_len(self) -> EnginePerf:
        if self.max_model_len_tokens > self.kv_capacity_tokens:
            raise ValueError(
                f"max_model_len_tokens = {self.max_model_len_tokens}, must be <= "
                f"kv_capacity_tokens ({self.kv_capacity_tokens}) so one request always fits"
            )
        return self

    def prefill_s(self, prompt_tokens: int) -> float:
        """Seconds to prefill ``prompt_tokens`` prompt tokens."""
        return prompt_tokens / self.prefill_tokens_per_s

    def decode_step_s(self, batch: int) -> float:
        """Seconds for one decode step over ``batch`` running sequences (``batch`` >= 1)."""
        return self.decode_base_s + self.decode_per_seq_s * max(batch - 1, 0)

    def idle_ttft_s(self, prompt_tokens: int) -> float:
        """Time to first token for a lone request on an idle, awake engine."""
        return self.prefill_s(prompt_tokens) + self.decode_step_s(1)

    def sleep_s(self, level: SleepLevel) -> float:
        return self.sleep_level1_s if level == 1 else self.sleep_level2_s

    def wake_s(self, level: SleepLevel) -> float:
        return self.wake_level1_s if level == 1 else self.wake_level2_s


@dataclass(eq=False, slots=True)
class Sequence:
    """One request inside the engine. Mutable: the core advances it step by step.

    Compared by identity (two requests of the same sizes are still two sequences).
    """

    request_id: str
    prompt_tokens: int
    max_tokens: int
    arrival_s: float
    generated_tokens: int = 0
    first_token_s: float | None = None
    finished_s: float | None = None
    cancelled: bool = False

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens

    @property
    def reserved_kv_tokens(self) -> int:
        return self.prompt_tokens + self.max_tokens


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What one engine step does: which sequences it admits (and prefills) and how long it takes."""

    start_s: float
    duration_s: float
    admitted: tuple[Sequence, ...]
    batch: tuple[Sequence, ...]

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one finished step produced: a token for each sequence of the batch."""

    end_s: float
    first_tokens: tuple[Sequence, ...]
    tokens: tuple[Sequence, ...]
    finished: tuple[Sequence, ...]


class AdmissionError(ValueError):
    """A request can never run on this engine (too long for the model or the KV cache)."""


@dataclass
class EngineCore:
    """vLLM-like continuous batching over :class:`EnginePerf`, driven by the caller's clock.

    Usage: ``add`` arrivals; ``plan_step(now)`` returns the next step (``None`` when idle or
    asleep); after ``plan.duration_s`` the caller calls ``finish_step(plan)``. KV space is reserved
    for a sequence's prompt plus ``max_tokens`` at admission, so a running sequence is never
    preempted; admission is first come, first served (a long head blocks those behind it, as vLLM's
    FCFS scheduler does).
    """

    perf: EnginePerf
    waiting: deque[Sequence] = field(default_factory=deque)
    running: list[Sequence] = field(default_factory=list)
    sleep_level: int = 0
    _reserved_tokens: int = 0
    _kv_tokens: int = 0
    """Sum of ``kv_tokens`` over ``running``, kept as sequences are admitted, advance and leave."""
    _step_s: list[float] = field(default_factory=list, compare=False, repr=False)
    """Decode step durations by batch size, filled as sizes are seen (:meth:`step_s`)."""

    def check(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise :class:`AdmissionError` when a request of this size can never run."""
        total = prompt_tokens + max_tokens
        if total > self.perf.max_model_len_tokens:
            raise AdmissionError(
                f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) = {total}, "
                f"must be <= "
                f"the model's maximum context length ({self.perf.max_model_len_tokens})"
            )

    def add(self, seq: Sequence) -> None:
        self.check(seq.prompt_tokens, seq.max_tokens)
        self.waiting.append(seq)

    def cancel(self, request_id: str) -> bool:
        """Drop a sequence (client went away). Returns whether it was found."""
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return True
        for seq in self.running:
            if seq.request_id == request_id:
                self.running.remove(seq)
                seq.cancelled = True
                self._reserved_tokens -= seq.reserved_kv_tokens
                self._kv_tokens -= seq.kv_tokens
                return True
        return False

    @property
    def asleep(self) -> bool:
        return self.sleep_level > 0

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def kv_tokens(self) -> int:
        """Tokens the running sequences hold in the KV cache (prompts and generated tokens)."""
        return self._kv_tokens

    @property
    def kv_usage_ratio(self) -> float:
        """Share of the KV cache that running sequences hold (what vLLM reports, 0..1)."""
        return min(self._kv_tokens / self.perf.kv_capacity_tokens, 1.0)

    def advance(self, steps: int) -> None:
        """Run ``steps`` plain decode steps at once: one token per running sequence per step.

        For a caller that fast-forwards identical steps (the simulator): no sequence may get its
        first token or finish within them, and nothing is admitted.
        """
        for s in self.running:
            s.generated_tokens += steps
        self._kv_tokens += steps * len(self.running)

    def plan_step(self, now_s: float) -> StepPlan | None:
        """Admit what fits and plan the next step; ``None`` when there is nothing to run."""
        if self.asleep:
            return None
        admitted = self._admit()
        if not self.running:
            return None
        prefill_tokens = sum(s.prompt_tokens for s in admitted)
        duration = self.perf.prefill_s(prefill_tokens) + self.perf.decode_step_s(len(self.running))
        return StepPlan(
            start_s=now_s, duration_s=duration, admitted=tuple(admitted), batch=tuple(self.running)
        )

    def _admit(self) -> list[Sequence]:
        """Move the waiting sequences that fit, first come first served, to ``running``."""
        admitted: list[Sequence] = []
        while self.waiting and len(self.running) < self.perf.max_num_seqs:
            head = self.waiting[0]
            if self._reserved_tokens + head.reserved_kv_tokens > self.perf.kv_capacity_tokens:
                break
            self.waiting.popleft()
            self.running.append(head)
            self._reserved_tokens += head.reserved_kv_tokens
            self._kv_tokens += head.kv_tokens
            admitted.append(head)
        return admitted

    # -- stepping without plans: for a caller that admits only at step boundaries and never
    # cancels (the simulator), so that a step's batch is ``running`` from its start to its end.

    def next_step_s(self) -> float | None:
        """Admit what fits (as :meth:`plan_step`) and return the duration of the next step, whose
        batch is ``running``; ``None`` when there is nothing to run. End it with
        :meth:`finish_steps` (1 step)."""
        if self.asleep:
            return None
        admitted = self._admit() if self.waiting else ()
        running = len(self.running)
        if not running:
            return None
        prefill_tokens = sum(s.prompt_tokens for s in admitted)
        return self.perf.prefill_s(prefill_tokens) + self.step_s(running)

    def step_s(self, batch: int) -> float:
        """:meth:`EnginePerf.decode_step_s`, computed once per batch size (the same floats)."""
        table = self._step_s
        if batch < len(table):
            return table[batch]
        while len(table) <= batch:
            table.append(self.perf.decode_step_s(len(table)))
        return table[batch]

    def decode_steps_ahead(self) -> int:
        """How many identical plain decode steps the running batch has ahead: with nothing
        waiting and every running sequence past its first token, the steps until the first of
        them finishes (that step included); else 0."""
        if self.waiting or not self.running:
            return 0
        ahead = -1
        for s in self.running:
            if s.first_token_s is None:
                return 0
            left = s.max_tokens - s.generated_tokens
            if ahead < 0 or left < ahead:
                ahead = left
        return ahead

    def finish_steps(self, steps: int, end_s: float) -> tuple[list[Sequence], list[Sequence]]:
        """End ``steps`` steps of the running batch, the last one at ``end_s``: each running
        sequence gets ``steps`` tokens, its first token at ``end_s`` when it had none, and those
        that reach ``max_tokens`` finish at ``end_s`` and leave. Returns (the sequences that got
        their first token, those that finished).

        The same as :meth:`advance` by ``steps - 1`` then :meth:`finish_step` of a plan whose
        batch is ``running``: no sequence may get its first token or finish before the last step.
        """
        running = self.running
        first: list[Sequence] = []
        finished: list[Sequence] = []
        for seq in running:
            seq.generated_tokens += steps
            if seq.first_token_s is None:
                seq.first_token_s = end_s
                first.append(seq)
            if seq.generated_tokens >= seq.max_tokens:
                seq.finished_s = end_s
                finished.append(seq)
        self._kv_tokens += steps * len(running)
        if finished:
            running[:] = [s for s in running if s.finished_s is None]
            for seq in finished:
                self._reserved_tokens -= seq.reserved_kv_tokens
                self._kv_tokens -= seq.kv_tokens
        return first, finished

    def finish_step(self, plan: StepPlan, end_s: float | None = None) -> StepResult:
        """Give every sequence of the step's batch still running one token; retire finished ones.

        ``end_s`` is when the step really ended (a real-time caller may end late); defaults to the
        planned end.
        """
        end = plan.end_s if end_s is None else end_s
        first: list[Sequence] = []
        tokens: list[Sequence] = []
        finished: list[Sequence] = []
        for seq in plan.batch:
            if seq.cancelled:  # cancelled during the step
                continue
            seq.generated_tokens += 1
            tokens.append(seq)
            if seq.first_token_s is None:
                seq.first_token_s = end
                first.append(seq)
            if seq.generated_tokens >= seq.max_tokens:
                seq.finished_s = end
                finished.append(seq)
        self._kv_tokens += len(tokens)
        if finished:
            self.running[:] = [s for s in self.running if s.finished_s is None]
            for seq in finished:
                self._reserved_tokens -= seq.reserved_kv_tokens
                self._kv_tokens -= seq.kv_tokens
        return StepResult(
            end_s=end, first_tokens=tuple(first), tokens=tuple(tokens), finished=tuple(finished)
        )


def estimate_tokens(text: str) -> int:
    """Token count of ``text`` as the emulator counts it: about four characters a token, >= 1."""
    return max(1, math.ceil(len(text) / 4))
