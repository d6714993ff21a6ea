"""The command line: Typer app, commands, and all human-facing output (the only user of Rich)."""
