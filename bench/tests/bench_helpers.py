"""What more than one of the benchmark's test modules reads from its output."""

from __future__ import annotations

import re


def target_rows(section: str) -> dict[str, tuple[str, str]]:
    """target name -> (measured, result) from the generated targets table."""
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\| (.+?) \| (.+?) \| (.+?) \| (.+?) \|$", line)
        if m and m.group(4) in ("**met**", "**not met**", "n/a"):
            rows[m.group(1)] = (m.group(2), m.group(4))
    return rows
