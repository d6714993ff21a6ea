"""``python -m cassr_cli.testing.miniature train OUT_DIR`` / ``ship OUT_DIR DEST`` (see the package docstring).

Paths default to the shared test data next to the repository (``../shared``), relative to the working
directory, i.e. run from the repository root.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SHARED = Path("../shared")
DEFAULT_DATA = SHARED / "testdata" / "bsd100_x4"
DEFAULT_ACTIVATION = SHARED / "weights" / "realesrgan" / "realesr-animevideov3.pth"
DEFAULT_BPE = SHARED / "weights" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cassr_cli.testing.miniature", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run (or resume) the whole recipe into OUT_DIR")
    train.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    train.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the BSD100 x4 folder (img_NNN_SRF_4_HR.png)")
    train.add_argument("--activation", type=Path, default=DEFAULT_ACTIVATION, help="stage-1 model for the adapter's x_ref")
    train.add_argument("--bpe", type=Path, default=DEFAULT_BPE, help="CLIP's bpe_simple_vocab_16e6.txt.gz")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--smoke", action="store_true", help="a few steps per part (checks the pipeline, not a model)")
    ship = commands.add_parser("ship", help="copy OUT_DIR's shippable files to DEST and write DEST/README.md")
    ship.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    ship.add_argument("dest", type=Path, metavar="DEST")
    args = parser.parse_args(argv)

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    if args.command == "train":
        from dataclasses import replace

        from cassr_cli.testing.miniature.recipe import Inputs, run_recipe
        from cassr_cli.testing.miniature.spec import FULL, SMOKE

        for path in (args.data, args.activation, args.bpe):
            if not path.exists():
                sys.stderr.write(f"error: {path} not found\n")
                return 2
        spec = replace(SMOKE if args.smoke else FULL, seed=args.seed)
        run_recipe(args.out_dir, Inputs(args.data, args.activation, args.bpe), spec)
        return 0
    from cassr_cli.testing.miniature.ship import ship_miniature

    ship_miniature(args.out_dir, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
