"""schemathesis hooks for ``tests/test_activator_openapi.py`` (loaded via ``SCHEMATHESIS_HOOKS``).

The activator's document is the OpenAI API's: ``max_tokens`` has no upper bound, ``n`` and a
list of prompts are allowed. The engine behind it in the test, ``thaw emulator``, has a context
window (as vLLM has) and serves one choice of one prompt per request, and answers 400 past
that. So valid requests are kept within what one emulator serves quickly: at most 16 tokens, one
choice, one prompt. Nothing else is changed, and invalid requests are left as generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_TOKENS = 16


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    body = case.body
    if not isinstance(body, dict):
        return case
    for key, most in (("max_tokens", MAX_TOKENS), ("max_completion_tokens", MAX_TOKENS), ("n", 1)):
        value = body.get(key)
        if _number(value) and value > most:
            body[key] = most
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int):
        body["prompt"] = prompt[:1]
    return case
