"""``cassr eval``: measuring quality the way the super-resolution literature does.

* :mod:`.pairing` — HR/LR pairs in the common test-set layouts; :mod:`.plan` — what a run will do;
* :mod:`.imresize` — MATLAB-compatible bicubic; :mod:`.degrade` — synthetic LR (bicubic, Real-ESRGAN);
* :mod:`.variants` — ``bicubic``, ``stage1``, ``cassr`` and ``--variant`` configurations;
  :mod:`.bicubic` — the baseline as a pipeline for the runner;
* :mod:`.session` — inputs → every variant through :func:`cassr_cli.runner.run_batch` → scores → reports;
  :mod:`.scoring`, :mod:`.provenance` (recipes, stats and cached scores in ``eval.json``);
* :mod:`.metrics` — PSNR/SSIM/NIQE built in, learned metrics through pyiqa;
* :mod:`.results` and :mod:`.report` — means, best marks, ``metrics.json``/``.csv``, ``report.html``,
  ``sheet.png``.

Imports flow ``cli → evaluation → runner → engine``; importing this package does not import torch.
"""
