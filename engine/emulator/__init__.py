"""``thaw emulator``: a vLLM-compatible engine emulator whose speed comes from the engine model.

It serves vLLM's OpenAI HTTP surface (``/v1/completions``, ``/v1/chat/completions`` with SSE,
``/v1/models``, ``/health``, ``/metrics``, ``/sleep``, ``/wake_up``, ``/is_sleeping``,
``/version``) with vLLM V1's metric names, and answers no faster than
:class:`engine.perf_model.EnginePerf` allows: one scheduler task runs
:class:`engine.perf_model.EngineCore` in real time.

Modules: :mod:`.config` (options, file + command line), :mod:`.protocol` (request validation and
response shapes, pure), :mod:`.engine` (the real-time scheduler, sleep and wake),
:mod:`.metrics` (the Prometheus registry), :mod:`.app` (the ASGI app), :mod:`.server` (uvicorn).
"""

from engine.emulator.config import EmulatorConfig, EmulatorConfigError, load_config

__all__ = ["EmulatorConfig", "EmulatorConfigError", "load_config"]
