"""`replay --report FILE.html`: one static page, viewable offline (inline CSS, no scripts, no
external assets, links only within the page), with the counts and, per review, the diff, the
warnings and the --against verdict. Everything taken from the inputs is HTML-escaped."""

from __future__ import annotations

from html import escape

from webhook.toolkit.replay_report import (
    STATUSES,
    VERDICTS,
    CaseResult,
    InputFile,
    Provenance,
    Results,
)

FOLD_NAMESPACES = 8  # more namespaces than this: their table starts folded

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #1b1f24; }
h1 { font-size: 1.4em; }
table.counts { border-collapse: collapse; margin: 0.5em 0 1.5em; }
table.counts td, table.counts th {
  border: 1px solid #ccd; padding: 0.3em 0.8em; text-align: right;
}
table.counts th { background: #eef; }
section.case { border: 1px solid #ccd; border-radius: 6px; margin: 0.8em 0; padding: 0.6em 1em; }
section.case h2 { font-size: 1.05em; margin: 0; font-family: ui-monospace, monospace; }
.status { display: inline-block; padding: 0 0.5em; border-radius: 4px; font-size: 0.85em; }
.s-mutated { background: #d8f5dc; } .s-unchanged { background: #eee; }
.s-denied, .s-error, .v-differs, .v-error { background: #fbd9d9; }
.s-not-sent { background: #fdf1cc; } .v-identical { background: #d8f5dc; }
.v-documented { background: #dbe8fb; }
pre.diff { background: #f7f7f9; padding: 0.6em; overflow-x: auto; font-size: 12px; }
pre.diff .add { color: #116329; background: #e6ffec; display: block; }
pre.diff .del { color: #82071e; background: #ffebe9; display: block; }
pre.diff .hunk { color: #6639ba; display: block; }
ul.warnings { color: #7a4d00; }
details > summary { cursor: pointer; color: #444; }
ul.index li { margin: 0.2em 0; } ul.index a { font-family: ui-monospace, monospace; }
table.provenance td, table.provenance th { text-align: left; padding: 0.1em 0.8em 0.1em 0; }
table.provenance td { font-family: ui-monospace, monospace; font-size: 12px; }
"""


def _diff_html(diff: str) -> str:
    lines = []
    for line in diff.splitlines():
        css = (
            "hunk"
            if line.startswith("@@")
            else "add"
            if line.startswith("+") and not line.startswith("+++")
            else "del"
            if line.startswith("-") and not line.startswith("---")
            else ""
        )
        text = escape(line) or " "
        lines.append(f'<span class="{css}">{text}</span>' if css else text + "\n")
    return '<pre class="diff">' + "".join(lines) + "</pre>"


def _counts_row(results: Results, name: str, namespace: str | None, css: str) -> str:
    counts = results.counts(namespace)
    cells = "".join(f'<td data-status="{escape(s)}">{counts[s]}</td>' for s in STATUSES)
    total = sum(counts.values())
    return f'<tr class="{css}"><th>{escape(name)}</th>{cells}<td>{total}</td></tr>'


def _counts_tables(results: Results) -> str:
    """The totals, then the same per namespace (folded away when there are many)."""
    head = "<tr><th></th>" + "".join(f"<th>{escape(s)}</th>" for s in STATUSES)
    head += "<th>total</th></tr>"
    totals = _counts_row(results, "all", None, "total")
    namespaces = results.namespaces()
    rows = "".join(_counts_row(results, ns or "-", ns, "namespace") for ns in namespaces)
    opened = " open" if len(namespaces) <= FOLD_NAMESPACES else ""
    return (
        f'<table class="counts" id="counts">{head}{totals}</table>'
        f"<details{opened}><summary>per namespace ({len(namespaces)})</summary>"
        f'<table class="counts" id="namespaces">{head}{rows}</table></details>'
    )


def _verdicts_table(results: Results) -> str:
    if results.against is None:
        return ""
    counts = results.verdicts()
    cells = "".join(f'<td data-verdict="{v}">{counts[v]}</td>' for v in VERDICTS)
    head = "".join(f"<th>{v}</th>" for v in VERDICTS)
    return (
        f"<p>Against <code>{escape(results.against)}</code>:</p>"
        f'<table class="counts" id="verdicts"><tr>{head}</tr><tr>{cells}</tr></table>'
    )


def _differences_index(results: Results) -> str:
    """Links to the reviews the other webhook answered differently, first thing on the page."""
    listed = [
        (index, case)
        for index, case in enumerate(results.cases)
        if case.verdict is not None and case.verdict.kind != "identical"
    ]
    if not listed:
        return ""
    items = "".join(
        f'<li><a href="#case-{index}">{escape(case.label)}</a> '
        f'<span class="status v-{case.verdict.kind}">{escape(case.verdict.describe())}</span></li>'
        for index, case in listed
        if case.verdict is not None
    )
    return f'<h3>Answered differently ({len(listed)})</h3><ul class="index">{items}</ul>'


def _case_html(index: int, case: CaseResult) -> str:
    status_css = "s-" + case.status.replace(" ", "-")
    parts = [
        f'<section class="case" id="case-{index}" data-status="{escape(case.status)}">',
        f'<h2>{escape(case.label)} <span class="status {status_css}">{escape(case.status)}</span>',
    ]
    if case.verdict is not None:
        parts.append(
            f' <span class="status v-{case.verdict.kind}">{escape(case.verdict.describe())}</span>'
        )
    parts.append("</h2>")
    if case.reason and case.reason != case.status:
        parts.append(f"<p>{escape(case.reason)}</p>")
    if case.warnings:
        items = "".join(f"<li>{escape(w)}</li>" for w in case.warnings)
        parts.append(f'<ul class="warnings">{items}</ul>')
    if case.diff:
        parts.append(_diff_html(case.diff))
    if case.their_warnings:
        items = "".join(f"<li>{escape(w)}</li>" for w in case.their_warnings)
        parts.append(f'<p>The other webhook warned:</p><ul class="warnings">{items}</ul>')
    if case.verdict is not None and case.verdict.detail:
        parts.append("<p>The other webhook's pod (-) against ours (+):</p>")
        parts.append(_diff_html(case.verdict.detail))
    parts.append("</section>")
    return "".join(parts)


def _files(files: tuple[InputFile, ...]) -> str:
    return "<br>".join(
        escape(f.path) if not f.sha256 else f"{escape(f.path)} ({f.size} bytes, sha256 {f.sha256})"
        for f in files
    )


def _provenance_html(provenance: Provenance | None) -> str:
    if provenance is None:
        return ""
    rows = [
        ("command", escape(" ".join(provenance.command_line))),
        ("version", escape(f"pod-identity-webhook {provenance.version}")),
        ("time", escape(provenance.time)),
        ("inputs", _files(provenance.inputs) or "-"),
        ("objects", _files(provenance.objects) or "-"),
        ("flags", "<br>".join(f"{escape(k)}={escape(v)}" for k, v in provenance.flags) or "-"),
    ]
    cells = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return (
        '<details open id="provenance"><summary>Provenance</summary>'
        f'<table class="provenance">{cells}</table></details>'
    )


def render_report(results: Results, title: str = "pod-identity-webhook replay") -> str:
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p>{len(results.cases)} review(s); {results.input_errors} input(s) could not be "
        "replayed (see the command's stderr)."
        + (' How it was made: <a href="#provenance">provenance</a>.' if results.provenance else "")
        + "</p>",
        _counts_tables(results),
        _verdicts_table(results),
        _differences_index(results),
        *(_case_html(i, c) for i, c in enumerate(results.cases)),
        _provenance_html(results.provenance),  # last: the findings come first
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
