"""Regenerate the key reference at the end of docs/configuration.md from greenwatch.config.SCHEMA."""

from pathlib import Path

from greenwatch.config import render_docs

MARKER = "This section is generated from the code (`greenwatch config --reference`); a test keeps it in sync.\n"
doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
text = doc.read_text()
head = text[: text.index(MARKER) + len(MARKER)]
doc.write_text(head + "\n" + render_docs() + "\n")
print(f"updated {doc}")
