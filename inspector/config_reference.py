"""Renders the config reference (every section, key, type, default and description) as Markdown."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .config import (
    AravisSource,
    ArchiveConfig,
    BufferConfig,
    CameraConfig,
    LoggingConfig,
    MetricsConfig,
    OpenCVSource,
    PublisherConfig,
    PylonSource,
    ReplaySource,
    ScoringConfig,
    SyntheticSource,
    WorkerConfig,
)

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("[[cameras]]", CameraConfig),
    ('[cameras.source] type = "synthetic"', SyntheticSource),
    ('[cameras.source] type = "replay"', ReplaySource),
    ('[cameras.source] type = "opencv"', OpenCVSource),
    ('[cameras.source] type = "aravis"', AravisSource),
    ('[cameras.source] type = "pylon"', PylonSource),
    ("[buffer]", BufferConfig),
    ("[worker]", WorkerConfig),
    ("[scoring]", ScoringConfig),
    ("[publisher]", PublisherConfig),
    ("[archive]", ArchiveConfig),
    ("[metrics]", MetricsConfig),
    ("[logging]", LoggingConfig),
]


def _type_name(annotation: Any) -> str:
    if "SyntheticSource" in str(annotation):
        return "table (one of the source types below)"
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation).replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")
    return text.replace("Literal", "one of ").replace("|", "or")


def render() -> str:
    """The reference as Markdown tables, one per section."""
    out = []
    for title, model in SECTIONS:
        out.append(f"#### `{title}`\n\n{(model.__doc__ or '').strip()}\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            if name == "type":
                continue
            default = "required" if field.default is PydanticUndefined and field.default_factory is None else (
                "(section)" if field.default_factory is not None else f"`{field.default!r}`")
            desc = (field.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {_type_name(field.annotation)} | {default} | {desc} |")
        out.append("")
    return "\n".join(out)


START = "<!-- config-reference:start"
END = "<!-- config-reference:end -->"


def splice(document: str) -> str:
    """The document with the text between the config-reference markers replaced by `render()`."""
    head, rest = document.split(START, 1)
    marker_line, _ = rest.split("\n", 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}{marker_line}\n\n{render()}\n{END}{tail}"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        target = Path(sys.argv[2])
        target.write_text(splice(target.read_text()))
    else:
        print(render())
