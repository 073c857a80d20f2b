"""Render one trace's spans as an SVG waterfall (the picture in the README's trace section)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from meshdev.otlp import ReceivedSpan

COLOURS = {
    "gateway": "#6f42c1",
    "users": "#1f77b4",
    "orders": "#2ca02c",
    "notifications": "#d62728",
}
ROW, LABEL_WIDTH, BAR_WIDTH = 22, 430, 560


def ordered(spans: Sequence[ReceivedSpan]) -> list[tuple[int, ReceivedSpan]]:
    """Depth-first from the root, children by start time: the order a trace viewer shows."""
    by_parent: dict[str, list[ReceivedSpan]] = {}
    ids = {span.span_id for span in spans}
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in ids else ""
        by_parent.setdefault(parent, []).append(span)
    result: list[tuple[int, ReceivedSpan]] = []

    def visit(parent: str, depth: int) -> None:
        for span in sorted(by_parent.get(parent, []), key=lambda s: s.start_ns):
            result.append((depth, span))
            visit(span.span_id, depth + 1)

    visit("", 0)
    return result


def outline(spans: Sequence[ReceivedSpan]) -> list[str]:
    """A text form of the waterfall (`service: kind name`, indented), for diffs and docs."""
    return [f"{'  ' * depth}{s.service}: {s.kind} {s.name}" for depth, s in ordered(spans)]


def render_svg(spans: Sequence[ReceivedSpan], *, title: str) -> str:
    rows = ordered(spans)
    start = min(span.start_ns for span in spans)
    end = max(span.end_ns for span in spans)
    scale = BAR_WIDTH / max(end - start, 1)
    height = ROW * (len(rows) + 3)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL_WIDTH + BAR_WIDTH + 90}" '
        f'height="{height}" font-family="monospace" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="8" y="16" font-weight="bold">{escape(title)} — '
        f"{(end - start) / 1e6:.1f} ms, {len(rows)} spans</text>",
    ]
    for index, (depth, span) in enumerate(rows):
        y = ROW * (index + 2)
        colour = COLOURS.get(span.service, "#7f7f7f")
        x = LABEL_WIDTH + (span.start_ns - start) * scale
        width = max((span.end_ns - span.start_ns) * scale, 1.5)
        label = f"{span.service}: {span.name}"
        parts += [
            f'<text x="{8 + depth * 12}" y="{y + 12}" fill="{colour}">{escape(label[:60])}</text>',
            f'<rect x="{x:.1f}" y="{y + 2}" width="{width:.1f}" height="{ROW - 6}" '
            f'fill="{colour}" opacity="0.75">'
            f"<title>{escape(span.kind)} {escape(label)}</title></rect>",
            f'<text x="{x + width + 4:.1f}" y="{y + 12}" fill="#444">'
            f"{(span.end_ns - span.start_ns) / 1e6:.1f} ms</text>",
        ]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
