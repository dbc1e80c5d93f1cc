"""The activator: Thaw's OpenAI-compatible front door that routes by model and buffers at zero."""
