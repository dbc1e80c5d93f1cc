"""The engine side: the engine performance model (shared by ``thaw emulator`` and the simulator),
the emulator, engine processes and their supervisor, vLLM's site hooks and the engine metric
parser."""
