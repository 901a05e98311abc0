"""The Python blocks of the getting-started page and of the README run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _rst_blocks(text: str) -> list[str]:
    blocks = []
    for m in re.finditer(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", text, flags=re.M):
        lines = [ln[3:] for ln in m.group(1).splitlines()]
        blocks.append("\n".join(lines))
    return blocks


def _md_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


@pytest.mark.parametrize("page, reader", [("docs/getting_started.rst", _rst_blocks), ("README.md", _md_blocks)])
def test_the_pages_python_blocks_run_in_order(page, reader, tmp_path, monkeypatch):
    blocks = reader((ROOT / page).read_text())
    assert blocks, f"{page} has no python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page}[block {i}]", "exec"), namespace)  # noqa: S102
