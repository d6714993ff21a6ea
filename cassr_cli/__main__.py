"""``python -m cassr_cli`` runs the ``cassr`` command (also under ``accelerate launch -m cassr_cli``)."""

from cassr_cli.cli.app import main

if __name__ == "__main__":
    main()
