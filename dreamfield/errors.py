"""The error a user's own input causes: the command prints its one-line message and exits with status 2."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad command-line input or a run folder that cannot be used (one line)."""


def check_prompt(prompt: str | None, what: str = "prompt") -> str:
    """A non-empty prompt, stripped; UsageError otherwise."""
    if prompt is None or not prompt.strip():
        raise UsageError(f"empty {what}: give a text such as \"a red cube\"")
    return prompt.strip()
