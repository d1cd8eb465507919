"""Text fit for a terminal: what the CLI prints of stored or user-supplied text.

Stored text (a template name, a cancel reason, an agent's task message) may come
from an older version or another program that did not refuse control
characters. Printed raw, an escape sequence would restyle or rewrite the
operator's terminal and a newline would forge an output line, so every such
value is shown with its control characters escaped (`\\x1b`, `\\n`).
No Rich import here: the error line of `main()` uses it too.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, and the bidirectional overrides and isolates that reorder
# what a terminal shows (U+202A-U+202E, U+2066-U+2069).
UNSAFE_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """The text with every control character escaped, so it prints as one inert line."""
    return UNSAFE_CHARACTERS.sub(_escape, text)
