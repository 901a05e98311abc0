"""The Python blocks of the README, the getting-started page and the user guide run as written, in order."""

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _rst_blocks(text: str) -> list[str]:
    blocks = []
    for m in re.finditer(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", text, flags=re.M):
        blocks.append(textwrap.dedent(m.group(1)))
    return blocks


def _md_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


PAGES = [("docs/getting_started.rst", _rst_blocks), ("README.md", _md_blocks)] + [
    (f"docs/user_guide/{p.name}", _rst_blocks) for p in sorted((ROOT / "docs" / "user_guide").glob("*.rst"))
    if ".. code-block:: python" in p.read_text()]


@pytest.mark.parametrize("page, reader", PAGES)
def test_the_pages_python_blocks_run_in_order(page, reader, tmp_path, monkeypatch):
    blocks = reader((ROOT / page).read_text())
    assert blocks, f"{page} has no python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page}[block {i}]", "exec"), namespace)  # noqa: S102
