"""The miniature's quality table (docs/quality.md): every number comes from ``cassr eval`` on the shipped files.

    python -m benchmarks.quality_table run OUT [--sets set5,bsd100val] [--lr bicubic,realesrgan] \\
        [--groups core,ablation,flops,grid] [--crop 48] [--tag TEXT]
    python -m benchmarks.quality_table render OUT            # the Markdown tables, from OUT's metrics.json files
    python -m benchmarks.quality_table picture OUT docs/quality-miniature.png

``run`` writes paired inputs (HR and its ×4 LR file, cut to the same central window: ``--crop`` LR pixels,
``4·crop`` HR pixels, or whole images with ``--crop 0``) under ``OUT/inputs``, then runs one ``cassr eval``
per (LR kind, test set) with every variant of the chosen groups, into ``OUT/eval/<kind>/<set>``. The LR
kinds are the paired bicubic LR files (``--lr``) and Real-ESRGAN's degradations made from the HR window
(``--degrade realesrgan --seed 0``). Every command, its wall time and the load average are appended to
``OUT/commands.jsonl``. A re-run reuses finished outputs (``cassr eval``'s own recipe check), so groups and
sets can be added one at a time. ``--tag`` is accepted and ignored (a marker for process lists).

``render`` reads ``OUT/eval/*/*/metrics.json`` only: Y-PSNR, SSIM and NIQE means and seconds per image.
Keep OUT out of the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

SCALE = 4
SHARED = Path("../shared")
ACTIVATION = SHARED / "weights" / "realesrgan" / "realesr-animevideov3.pth"
BASE = Path("weights/miniature/base")
ADAPTER = Path("weights/miniature/adapter.safetensors")

SETS = {  # name → (folder of X_HR.png / X_LR.png pairs, which image numbers)
    "set5": (SHARED / "testdata" / "set5_x4", None),
    "set14": (SHARED / "testdata" / "set14_x4", None),
    "bsd100val": (SHARED / "testdata" / "bsd100_x4", lambda n: n % 5 == 0),  # the miniature's validation split
}
LR_KINDS = {
    "bicubic": "paired bicubic LR files",
    "realesrgan": "`--degrade realesrgan --seed 0`",
}

SHARED_OPTIONS = [
    "--activation", str(ACTIVATION), "--base-model", str(BASE),
    "--device", "cpu", "--dtype", "fp32", "--seed", "0",
    "--tile-size", "64", "--tile-overlap", "16", "--vae-tile-size", "256",
    "--steps", "10", "--strength", "0.5",
]  # fmt: skip
"""Shared by every variant. 64-px diffusion tiles are 16² latents, the size the miniature's UNet and adapter
were trained on (its VAE is ×4); the overlap is a quarter of the tile, as the defaults' 128 of 512. Steps
and strength are pinned to the values the table was first made with (the defaults then: 10 and 0.5), so
the rows stay reproducible when defaults change; variants override them."""

ZS = "--guidance-mode per-step"
AD = f"--adapter {ADAPTER}"
GROUPS: dict[str, list[tuple[str, str, str]]] = {  # group → [(variant, options, row label)]
    "core": [
        ("bicubic", "", "bicubic (MATLAB `imresize`)"),
        ("stage1", "", "stage 1 alone (realesr-animevideov3)"),
        ("zs-per-step", ZS, "stage 2 zero-shot, per-step guidance, 10 steps (the default before this table)"),
        ("zs-cached", "--guidance-mode cached", "stage 2 zero-shot, cached guidance"),
        ("adapter", AD, "stage 2 + trained adapter (cached, its auto mode)"),
    ],
    "ablation": [
        ("zs-no-act", f"{ZS} --activation bicubic", "zero-shot, without activation (x_ref = bicubic)"),
        ("zs-lr-only", f"{ZS} --ref-weight 0", "zero-shot, LR stream only"),
        ("zs-ref-only", f"{ZS} --lr-weight 0", "zero-shot, reference stream only"),
        ("ad-no-act", f"{AD} --activation bicubic", "adapter, without activation (x_ref = bicubic)"),
        ("ad-lr-only", f"{AD} --ref-weight 0", "adapter, LR stream only"),
        ("ad-ref-only", f"{AD} --lr-weight 0", "adapter, reference stream only"),
    ],
    "flops": [
        ("cached-shift", "--guidance-mode cached --tile-shift", "zero-shot, `--guidance-mode cached --tile-shift` (324 TFLOP)"),
        ("refresh5-shift", f"{ZS} --guidance-refresh 5 --tile-shift", "zero-shot, `--guidance-refresh 5 --tile-shift` (350 TFLOP; the old default 795)"),
        ("cached-s5", "--guidance-mode cached --steps 5", "zero-shot, cached guidance, 5 steps (**the default** since this table; 302 TFLOP at 512x4)"),
    ],
    "diagnostic": [
        ("vae-roundtrip", f"{ZS} --steps 1 --strength 0.01", "diagnostic: 1 step at t = 9 (≈ the VAE round trip of x_ref, colour-fixed)"),
        ("zs-seed1", f"{ZS} --seed 1", "diagnostic: zero-shot per-step, seed 1 (seed-to-seed spread)"),
        ("adapter-seed1", f"{AD} --seed 1", "diagnostic: adapter, seed 1"),
        ("zs-no-colorfix", f"{ZS} --color-fix none", "zero-shot per-step, `--color-fix none`"),
        ("zs-adain", f"{ZS} --color-fix adain", "zero-shot per-step, `--color-fix adain`"),
    ],
    "grid": [
        (f"zs-s{steps}-t{int(strength * 10)}", f"{ZS} --steps {steps} --strength {strength}", f"zero-shot, {steps} steps, strength {strength}")
        for steps in (5, 10, 20)
        for strength in (0.3, 0.5, 0.7)
        if (steps, strength) != (10, 0.5)  # = zs-per-step
    ],
}
BUILTIN = {"bicubic", "stage1"}
BEGIN, END = "<!-- quality-table: begin (python -m benchmarks.quality_table render OUT --write docs/quality.md) -->", "<!-- quality-table: end -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality_table", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("out", type=Path)
    run.add_argument("--sets", default="set5,bsd100val")
    run.add_argument("--lr", default="bicubic")
    run.add_argument("--groups", default="core")
    run.add_argument("--only", default="", help="comma-separated variant names within the groups")
    run.add_argument("--crop", type=int, default=48, help="LR window edge (0 = whole images)")
    run.add_argument("--tag", default="", help="ignored")
    render = sub.add_parser("render")
    render.add_argument("out", type=Path)
    render.add_argument("--write", type=Path, help="replace the text between the table markers of this file")
    picture = sub.add_parser("picture")
    picture.add_argument("out", type=Path)
    picture.add_argument("png", type=Path)
    picture.add_argument("--kind", default="bicubic")
    picture.add_argument("--variants", default="bicubic,stage1,zs-per-step,zs-cached,adapter,zs-no-act,zs-lr-only,zs-ref-only")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_tables(args)
    if args.command == "render":
        text = render_tables(args.out)
        if args.write is None:
            print(text)
        else:
            doc = args.write.read_text(encoding="utf-8")
            head, rest = doc.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            args.write.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")
        return 0
    make_picture(args.out, args.png, args.kind, args.variants.split(","))
    return 0


# --- inputs -----------------------------------------------------------------------------------------------


def prepare_inputs(out: Path, name: str, crop: int) -> Path:
    """``OUT/inputs/<set>/{hr,lr}/<image>.png``: the central ``crop``² LR window of each pair and the HR window
    over the same pixels (whole images with ``crop = 0``). Returns ``OUT/inputs/<set>``."""
    from PIL import Image

    folder, keep = SETS[name]
    root = out / "inputs" / name
    if (root / "done").is_file():
        return root
    (root / "hr").mkdir(parents=True, exist_ok=True)
    (root / "lr").mkdir(parents=True, exist_ok=True)
    for hr_path in sorted(folder.glob("img_*_SRF_4_HR.png")):
        number = int(hr_path.name.split("_")[1])
        if keep is not None and not keep(number):
            continue
        lr = Image.open(hr_path.with_name(hr_path.name.replace("_HR", "_LR"))).convert("RGB")
        hr = Image.open(hr_path).convert("RGB")
        if crop:
            w, h = lr.size
            x, y = (w - crop) // 2, (h - crop) // 2
            lr = lr.crop((x, y, x + crop, y + crop))
            hr = hr.crop((x * SCALE, y * SCALE, (x + crop) * SCALE, (y + crop) * SCALE))
        else:
            w, h = lr.size
            hr = hr.crop((0, 0, w * SCALE, h * SCALE))
        stem = f"img_{number:03d}"
        hr.save(root / "hr" / f"{stem}.png")
        lr.save(root / "lr" / f"{stem}.png")
    (root / "done").write_text(json.dumps({"crop": crop}) + "\n")
    return root


# --- running ------------------------------------------------------------------------------------------------


def variants_of(groups: list[str], only: set[str]) -> list[tuple[str, str, str]]:
    chosen = [v for g in groups for v in GROUPS[g]]
    return [v for v in chosen if not only or v[0] in only]


def eval_command(inputs: Path, dest: Path, kind: str, variants: list[tuple[str, str, str]]) -> list[str]:
    cmd = [sys.executable, "-m", "cassr_cli", "eval", str(inputs / "hr"), str(dest)]
    cmd += ["--lr", str(inputs / "lr")] if kind == "bicubic" else ["--degrade", "realesrgan"]
    cmd += SHARED_OPTIONS  # includes --seed 0, which also seeds the degradations
    cmd += ["--metrics", "psnr_y,ssim_y,niqe", "--no-progress", "--quiet"]
    for name, options, _ in variants:
        if name not in BUILTIN:
            cmd += ["--variant", f"{name}={options}"]
    cmd += ["--only", ",".join(name for name, _, _ in variants)]
    return cmd


def run_tables(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    variants = variants_of(args.groups.split(","), {s for s in args.only.split(",") if s})
    worst = 0
    for kind in args.lr.split(","):
        for name in args.sets.split(","):
            inputs = prepare_inputs(out, name, args.crop)
            dest = out / "eval" / kind / name
            cmd = eval_command(inputs, dest, kind, variants)
            keep_report(out, dest)  # a run reports only its own variants: keep the previous report
            start, load = time.perf_counter(), os.getloadavg()[0]
            code = subprocess.call(cmd)
            keep_report(out, dest)
            record = {
                "kind": kind, "set": name, "crop": args.crop, "command": shlex.join(["cassr", *cmd[3:]]), "exit": code,
                "wall_s": round(time.perf_counter() - start, 1), "load_start": load, "load_end": os.getloadavg()[0],
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }  # fmt: skip
            with (out / "commands.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), file=sys.stderr)
            worst = max(worst, code)
    return worst


def keep_report(out: Path, dest: Path) -> None:
    """Copy ``dest/metrics.json`` to ``OUT/reports/<kind>/<set>/<mtime>.json`` (once per version)."""
    report = dest / "metrics.json"
    if report.is_file():
        kept = out / "reports" / dest.parent.name / dest.name / f"{report.stat().st_mtime_ns}.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        if not kept.exists():
            shutil.copy2(report, kept)


# --- rendering ----------------------------------------------------------------------------------------------


def _labels() -> dict[str, str]:
    return {name: label for group in GROUPS.values() for name, _, label in group}


def _summaries(out: Path) -> dict[str, dict[str, dict[str, dict[str, float | None]]]]:
    """``{kind: {set: {variant: {psnr_y, ssim_y, niqe, seconds, images}}}}`` from the metrics.json files
    (the kept reports oldest first, then the live ones: a later report of a variant wins)."""
    table: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
    reports = sorted(out.glob("reports/*/*/*.json"), key=lambda p: int(p.stem)) + sorted(out.glob("eval/*/*/metrics.json"))
    for path in reports:
        kind, name = path.parent.parent.name, path.parent.name
        report = json.loads(path.read_text(encoding="utf-8"))
        for variant, data in report["variants"].items():
            runs = [r for r in data.get("runs", {}).values() if r.get("seconds") is not None]
            seconds = sum(r["seconds"] for r in runs) / len(runs) if runs else None
            row = {k: data.get("mean", {}).get(k) for k in ("psnr_y", "ssim_y", "niqe")}
            row.update(seconds=seconds, images=len(data.get("images", {})))
            table.setdefault(kind, {}).setdefault(name, {})[variant] = row
    return table


def render_tables(out: Path) -> str:
    labels = _labels()
    order = [name for group in GROUPS.values() for name, _, _ in group]
    table = _summaries(out)
    lines: list[str] = []
    for kind, sets in table.items():
        names = [s for s in SETS if s in sets]
        lines.append(f"#### LR: {LR_KINDS.get(kind, kind)}\n")
        head = "| variant | " + " | ".join(f"{s} Y-PSNR ↑ | SSIM ↑ | NIQE ↓ | s/img" for s in names) + " |"
        lines += [head, "|---|" + "---:|" * (4 * len(names))]
        present = [v for v in order if any(v in sets[s] for s in names)]
        for variant in present:
            cells = []
            for s in names:
                row = sets[s].get(variant)
                if row is None:
                    cells += ["", "", "", ""]
                    continue
                cells += [_fmt(row["psnr_y"], 2), _fmt(row["ssim_y"], 4), _fmt(row["niqe"], 2), _fmt(row["seconds"], 1)]
            lines.append(f"| {labels.get(variant, variant)} | " + " | ".join(cells) + " |")
        counts = ", ".join(f"{s}: {max(r['images'] for r in sets[s].values())} images" for s in names)
        lines.append(f"\n({counts}.)\n")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


# --- the picture --------------------------------------------------------------------------------------------


def make_picture(out: Path, png: Path, kind: str, variants: list[str]) -> None:
    """The same central 128² crop of three images (two of Set5, one of BSD100 val) side by side: HR, then
    each variant's output (Pillow only)."""
    from PIL import Image, ImageDraw

    labels = {"hr": "HR", "bicubic": "bicubic", "stage1": "stage 1", "zs-per-step": "zero-shot", "adapter": "adapter",
              "zs-cached": "zero-shot cached", "zs-no-act": "no activation", "zs-lr-only": "LR stream only",
              "zs-ref-only": "ref stream only"}  # fmt: skip
    rows = []
    for name, count in (("set5", 2), ("bsd100val", 1)):
        root = out / "eval" / kind / name
        if not root.is_dir():
            continue
        images = sorted(p.stem for p in (out / "inputs" / name / "hr").glob("*.png"))[:count]
        for image in images:
            hr_path = out / "inputs" / name / "hr" / f"{image}.png"
            paths = [("hr", hr_path)] + [(v, root / v / f"{image}.png") for v in variants]
            rows.append([(label, Image.open(p).convert("RGB")) for label, p in paths if p.is_file()])
    size, pad, text = 128, 4, 14
    columns = max(len(r) for r in rows)
    sheet = Image.new("RGB", (columns * (size + pad) + pad, len(rows) * (size + text + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, (label, image) in enumerate(row):
            w, h = image.size
            box = ((w - size) // 2, (h - size) // 2, (w + size) // 2, (h + size) // 2)
            x, y = pad + c * (size + pad), pad + r * (size + text + pad)
            sheet.paste(image.crop(box), (x, y + text))
            draw.text((x + 2, y), labels.get(label, label), fill="black")
    png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(png, optimize=True)


if __name__ == "__main__":
    raise SystemExit(main())
