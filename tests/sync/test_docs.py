"""The Python examples in docs/mqtt.md run and reproduce the contract's test vector."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"


def test_python_examples_in_the_mqtt_doc_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})  # each block asserts its own results
