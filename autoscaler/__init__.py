"""The LLM-aware autoscaler: a pure decider, the policy file, and thin adapters (engine processes,
metric scrapers, actuators)."""
