"""``sheet.png``: the report's crops as one labelled contact sheet (rows = images, columns = the reference
and each variant), for looking without a browser. Pillow only."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from cassr_cli.evaluation.metrics.specs import METRICS
from cassr_cli.evaluation.results import EvalResults, format_value
from cassr_cli.evaluation.scoring import REFERENCE_LABEL, crop_file
from cassr_cli.io.atomic import write_atomic

SHEET_NAME = "sheet.png"
CELL = 160
"""Pixels of the longer side of each crop on the sheet (integer zoom up; resampled down if larger)."""
MAX_ROWS = 40
"""Images on the sheet at most (the first ones; report.html shows all)."""
PAD = 6
TEXT = 14
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
FAILED = (200, 60, 60)


def write_sheet(results: EvalResults) -> None:
    """Write ``OUT/sheet.png`` (nothing when no image has a crop)."""
    sheet = render_sheet(results)
    if sheet is None:
        return
    import io

    buffer = io.BytesIO()
    sheet.save(buffer, "PNG", compress_level=6)
    write_atomic(results.out / SHEET_NAME, buffer.getvalue())


def render_sheet(results: EvalResults) -> Image.Image | None:
    images = [i for i in results.images if i in results.crops][:MAX_ROWS]
    if not images:
        return None
    labels = ["HR" if results.info.get("mode") != "no-reference" else "input"] + [v.name for v in results.variants]
    font = _font(12)
    bold = _font(13)
    col_w = CELL + PAD
    row_h = TEXT + CELL + 2 * TEXT + PAD
    width = PAD + col_w * len(labels)
    height = PAD + TEXT + PAD + row_h * len(images) + (TEXT + PAD if len(images) < len(results.crops) else 0)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(labels):
        draw.text((PAD + c * col_w, PAD), _fit(draw, label, bold, CELL), fill=INK, font=bold)
    top = PAD + TEXT + PAD
    for r, image in enumerate(images):
        y = top + r * row_h
        draw.text((PAD, y), _fit(draw, image, font, width - 2 * PAD), fill=INK, font=font)
        for c, label in enumerate(labels):
            x = PAD + c * col_w
            if c == 0:
                path, metrics, error = crop_file(results.out, image, REFERENCE_LABEL), results.reference.get(image, {}), None
            else:
                outcome = results.outcome(label, image)
                if outcome is None:
                    continue
                path, metrics, error = crop_file(results.out, image, label), outcome.metrics, outcome.error
                if outcome.status == "failed":
                    draw.text((x, y + TEXT + CELL // 2), "failed", fill=FAILED, font=font)
                    continue
            if not path.is_file():
                continue
            with Image.open(path) as crop:
                tile = _enlarge(crop.convert("RGB"))
            sheet.paste(tile, (x, y + TEXT))
            shown = [k for k in results.available if k in metrics][:2]
            caption = " ".join(f"{METRICS[k].label} {format_value(k, metrics[k])}" for k in shown)
            draw.text((x, y + TEXT + tile.height + 2), _fit(draw, caption, font, CELL), fill=INK, font=font)
            if error:
                draw.text((x, y + TEXT + tile.height + 2 + TEXT), _fit(draw, error, font, CELL), fill=FAILED, font=font)
    if len(images) < len(results.crops):
        note = f"first {len(images)} of {len(results.crops)} images; report.html shows all"
        draw.text((PAD, height - TEXT - PAD), note, fill=INK, font=font)
    return sheet


def _enlarge(crop: Image.Image) -> Image.Image:
    """The crop scaled so its longer side is :data:`CELL` (pixel repetition up, Lanczos down)."""
    side = max(crop.width, crop.height)
    factor = CELL / side
    size = (max(1, round(crop.width * factor)), max(1, round(crop.height * factor)))
    method = Image.Resampling.NEAREST if factor >= 1 else Image.Resampling.LANCZOS
    return crop.resize(size, method)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text`` shortened with "…" to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
