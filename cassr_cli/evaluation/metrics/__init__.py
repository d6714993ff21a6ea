"""Quality metrics for ``cassr eval``.

* :mod:`.specs` — the metric keys, labels and directions (``METRICS``) and :class:`~.specs.Unavailable`;
* :mod:`.full_reference` — PSNR-Y, SSIM-Y, PSNR-RGB (numpy + OpenCV, the basicsr/EDSR conventions);
* :mod:`.niqe` — NIQE with the shipped pristine model (no download);
* :mod:`.learned` — LPIPS, DISTS, MUSIQ, MANIQA, CLIPIQA through pyiqa, with availability checks;
* :mod:`.suite` — the metrics of one run, loaded once.

Importing this package does not import torch.
"""
