"""A ``sitecustomize`` for vLLM CPU engine processes (see :mod:`.sitecustomize`).

:func:`engine.process.vllm_spec` puts this directory first on the engine's
``PYTHONPATH``, so every Python process of the engine (the API server, EngineCore and the workers
vLLM spawns) imports :mod:`.sitecustomize` at start-up.
"""

from __future__ import annotations

from pathlib import Path

#: The directory to put on ``PYTHONPATH``.
SITE_DIR = Path(__file__).resolve().parent
