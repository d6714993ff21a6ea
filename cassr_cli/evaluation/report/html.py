"""``report.html``: one self-contained page (inline CSS and JavaScript, no network) with images linked
relatively, so ``OUT/`` can be moved or zipped as a whole and opened offline.

* a sortable summary table (click a column title), best value per column marked;
* per image: the reference (HR, or the input without one) and every variant at the same zoomed crop,
  each with its metrics underneath and a link to the full image;
* per image: a before/after slider between any two of those pictures.

The page is tested in headless Chromium (tests/evaluation/test_report_browser.py).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from cassr_cli.evaluation.metrics.specs import METRICS
from cassr_cli.evaluation.results import SUMMARY_STATS, EvalResults, format_value, summary_rows
from cassr_cli.evaluation.scoring import REFERENCE_LABEL, crop_file
from cassr_cli.io.atomic import write_atomic

HTML_NAME = "report.html"
DISPLAY = 320
"""Pixels the longer side of a crop is shown at (integer zoom, at least 1)."""

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.5em 0 .5em}h3{font-size:1em;margin:1.2em 0 .4em}
.info{color:#555}.info code{background:#eee;padding:0 .2em}
table.summary{border-collapse:collapse;background:#fff}
table.summary th,table.summary td{border:1px solid #ccc;padding:.25em .6em;text-align:right;white-space:nowrap}
table.summary th{background:#eee;cursor:pointer;user-select:none}
table.summary th:first-child,table.summary td:first-child{text-align:left}
table.summary th[aria-sort=ascending]::after{content:" ▲"}table.summary th[aria-sort=descending]::after{content:" ▼"}
td.best{font-weight:bold;background:#e3f4e3}
ul.problems li{color:#8a4b00}
section.image{background:#fff;border:1px solid #ddd;padding:.6em 1em 1em;margin:1em 0}
.panels{display:flex;flex-wrap:wrap;gap:.8em}
figure.panel{margin:0;max-width:100%}
figure.panel img,.slider img{image-rendering:pixelated;display:block}
figure.panel figcaption{font-size:12px;color:#333}
figure.panel figcaption b{display:block;font-size:13px}
figure.failed .placeholder{background:#f3dede;color:#800;padding:.5em;font-size:12px}
.compare{margin-top:.8em}.compare label{margin-right:1em}
.slider{position:relative;margin-top:.4em;overflow:hidden;max-width:100%}
.slider img{position:absolute;top:0;left:0}
.slider .line{position:absolute;top:0;bottom:0;width:2px;background:#fff;box-shadow:0 0 2px #000;pointer-events:none}
.slider input{position:absolute;left:0;bottom:4px;width:100%;margin:0}
"""

_JS = """
(function(){
  function cellValue(row, index){
    var v = row.cells[index].getAttribute('data-value');
    return v === null || v === '' ? null : (isNaN(Number(v)) ? v : Number(v));
  }
  document.querySelectorAll('table.summary').forEach(function(table){
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function(th, index){
      th.addEventListener('click', function(){
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(heads, function(h){ h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){
          var x = cellValue(a, index), y = cellValue(b, index);
          if (x === null && y === null) return 0;
          if (x === null) return 1;
          if (y === null) return -1;
          var d = x < y ? -1 : (x > y ? 1 : 0);
          return asc ? d : -d;
        });
        rows.forEach(function(r){ body.appendChild(r); });
      });
    });
  });
  document.querySelectorAll('.compare').forEach(function(box){
    var a = box.querySelector('select.cmp-a'), b = box.querySelector('select.cmp-b');
    var under = box.querySelector('img.cmp-under'), over = box.querySelector('img.cmp-over');
    var range = box.querySelector('input.cmp-range'), line = box.querySelector('.line');
    function update(){
      under.src = a.value; over.src = b.value;
      var p = Number(range.value);
      over.style.clipPath = 'inset(0 0 0 ' + p + '%)';
      line.style.left = p + '%';
    }
    a.addEventListener('change', update); b.addEventListener('change', update);
    range.addEventListener('input', update);
    update();
  });
})();
"""


def write_html(results: EvalResults) -> None:
    """Write ``OUT/report.html`` (the crops must already be in ``OUT/report/``)."""
    write_atomic(results.out / HTML_NAME, render_html(results).encode("utf-8"))


def render_html(results: EvalResults) -> str:
    info = results.info
    reference_label = "HR" if info.get("mode") != "no-reference" else f"input (×{info.get('scale')})"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>cassr eval — {_e(results.out.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>cassr eval</h1>",
        _info(results),
        "<h2>Summary</h2>",
        _summary_table(results),
        _problems(results),
        f"<h2>Images <small>({len(results.images)})</small></h2>",
    ]
    for index, image in enumerate(results.images):
        parts.append(_image_section(results, index, image, reference_label))
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def _info(results: EvalResults) -> str:
    info = results.info
    sources = info.get("sources", {})
    items = [
        f"{len(results.images)} image(s)",
        f"×{info.get('scale')}",
        f"mode <code>{_e(str(info.get('mode')))}</code>",
    ]
    if info.get("degrade"):
        seed = f", seed {info.get('seed')}" if info.get("degrade") == "realesrgan" else ""
        items.append(f"LR: <code>--degrade {_e(str(info['degrade']))}</code>{seed}")
    for key in ("hr", "lr"):
        if sources.get(key):
            items.append(f"{key.upper()}: <code>{_e(str(sources[key]))}</code>")
    items += [f"device {_e(str(info.get('device')))}", f"cassr {_e(str(info.get('cassr_version')))}", _e(str(info.get("created")))]
    return f'<p class="info">{" · ".join(items)}</p>'


def _summary_table(results: EvalResults) -> str:
    keys = list(results.available)
    head = ['<th data-key="variant">variant</th>']
    head += [f'<th data-key="{k}">{_e(METRICS[k].label)} {METRICS[k].arrow()}</th>' for k in keys]
    head += [f'<th data-key="{k}">{_e(title)} ↓</th>' for k, title in SUMMARY_STATS]
    body = []
    args = {v.name: v.args() for v in results.variants}
    for row in summary_rows(results):
        title = f' title="{_e(args[row.variant])}"' if args.get(row.variant) else ""
        cells = [f'<td data-value="{_e(row.variant)}"{title}>{_e(row.variant)}</td>']
        for key in keys + [k for k, _ in SUMMARY_STATS]:
            value = row.values.get(key)
            shown = format_value(key, value)
            data = "" if value is None else repr(float(value))
            best = ' class="best"' if key in row.best else ""
            cells.append(f'<td data-value="{data}"{best}>{_e(shown)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<table class="summary" id="summary"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table><p class=\"info\">Means over the images; best per column in bold. Click a column to sort.</p>"
    )


def _problems(results: EvalResults) -> str:
    lines = []
    for key, problem in results.unavailable.items():
        lines.append(f"<li><b>{_e(METRICS[key].label)} unavailable</b>: {_e(problem.reason)} — {_e(problem.hint)}</li>")
    for variant, image, error in results.failures():
        where = f"{variant} / {image}" if variant else image
        lines.append(f"<li><b>failed</b> {_e(where)}: {_e(error)}</li>")
    lines += [f"<li>{_e(note)}</li>" for note in results.notes]
    return f'<ul class="problems">{"".join(lines)}</ul>' if lines else ""


def _image_section(results: EvalResults, index: int, image: str, reference_label: str) -> str:
    crop = results.crops.get(image)
    if crop is None:  # the image could not be read at all
        error = results.input_failures.get(image, "not evaluated")
        return f'<section class="image" id="image-{index}"><h3>{_e(image)}</h3><p class="problems">{_e(error)}</p></section>'
    zoom = max(1, round(DISPLAY / max(crop.w, crop.h)))
    width, height = crop.w * zoom, crop.h * zoom
    pictures: list[tuple[str, str]] = []  # (label, crop src) for the slider
    panels = []
    ref_src = _relative(crop_file(results.out, image, REFERENCE_LABEL), results.out)
    ref_metrics = results.reference.get(image, {})
    panels.append(_panel(reference_label, ref_src, _reference_link(results, image), ref_metrics, width, height))
    pictures.append((reference_label, ref_src))
    for variant in results.variants:
        outcome = results.outcome(variant.name, image)
        if outcome is None:
            continue
        if outcome.status == "failed":
            panels.append(
                f'<figure class="panel failed" data-label="{_e(variant.name)}" style="width:{width}px">'
                f'<div class="placeholder" style="width:{width}px">failed: {_e(outcome.error or "")}</div>'
                f"<figcaption><b>{_e(variant.name)}</b></figcaption></figure>"
            )
            continue
        src = _relative(crop_file(results.out, image, variant.name), results.out)
        link = _relative(Path(outcome.output), results.out) if outcome.output else None
        panels.append(_panel(variant.name, src, link, outcome.metrics, width, height))
        pictures.append((variant.name, src))
    title = f"{_e(image)} <small>crop x={crop.x} y={crop.y} {crop.w}×{crop.h}, shown ×{zoom}</small>"
    return (
        f'<section class="image" id="image-{index}" data-image="{_e(image)}"><h3>{title}</h3>'
        f'<div class="panels">{"".join(panels)}</div>{_slider(pictures, width, height)}</section>'
    )


def _panel(label: str, src: str, link: str | None, metrics: dict[str, float], width: int, height: int) -> str:
    img = f'<img src="{_e(src)}" width="{width}" height="{height}" alt="{_e(label)}">'
    if link:
        img = f'<a href="{_e(link)}">{img}</a>'
    values = " · ".join(f"{METRICS[k].label} {format_value(k, v)}" for k, v in metrics.items() if k in METRICS)
    return (
        f'<figure class="panel" data-label="{_e(label)}" style="width:{width}px">{img}'
        f"<figcaption><b>{_e(label)}</b>{_e(values)}</figcaption></figure>"
    )


def _slider(pictures: list[tuple[str, str]], width: int, height: int) -> str:
    if len(pictures) < 2:
        return ""

    def options(selected: int) -> str:
        return "".join(
            f'<option value="{_e(src)}"{" selected" if i == selected else ""}>{_e(label)}</option>'
            for i, (label, src) in enumerate(pictures)
        )

    first, last = pictures[0][1], pictures[-1][1]
    return (
        '<div class="compare">'
        f'<label>left <select class="cmp-a">{options(0)}</select></label>'
        f'<label>right <select class="cmp-b">{options(len(pictures) - 1)}</select></label>'
        f'<div class="slider" style="width:{width}px;height:{height}px">'
        f'<img class="cmp-under" src="{_e(first)}" width="{width}" height="{height}" alt="left">'
        f'<img class="cmp-over" src="{_e(last)}" width="{width}" height="{height}" alt="right">'
        '<div class="line"></div>'
        '<input class="cmp-range" type="range" min="0" max="100" value="50" aria-label="slider position">'
        "</div></div>"
    )


def _reference_link(results: EvalResults, image: str) -> str | None:
    files = results.info.get("files", {}).get(image, {})
    target = files.get("hr") or files.get("lr")
    return _relative(Path(target), results.out) if target else None


def _relative(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive (Windows): an absolute file URL
        return path.resolve().as_uri()


def _e(text: str) -> str:
    return html.escape(text, quote=True)


__all__ = ["HTML_NAME", "render_html", "write_html"]
