"""The miniature: a small but really trained CasSR (base latent diffusion model + adapter) in the SD
2.1-base diffusers layout, trained from scratch on natural photos on a CPU.

    python -m cassr_cli.testing.miniature train OUT_DIR      # the whole recipe (resumable)
    python -m cassr_cli.testing.miniature ship OUT_DIR DEST  # copy the shippable files, write README.md

The recipe (:mod:`.recipe`) trains, in order, an ``AutoencoderKL`` (×4, 4 latent channels), a
``UNet2DConditionModel`` latent diffusion model conditioned on the empty-prompt encoding of a small
``CLIPTextModel``, and the multi-attention adapter through ``cassr train``. The data are the HR photos of
the BSD100 ×4 test set with a fixed 80/20 split (:mod:`.data`); every hyper-parameter is in
:mod:`.spec`. ``weights/miniature/README.md`` documents the shipped result.
"""
