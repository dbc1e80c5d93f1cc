"""The cold-start simulator and the engine performance model it shares with ``thaw emulator``."""
