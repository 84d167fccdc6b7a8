"""The `stream-infer` command line: subcommands only; the logic lives in the modules they call."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Streaming CNN-LSTM inference on Kafka.")

# --- model commands: train, export, build-engine (stream_infer.model, engines/) ---

# --- service commands: serve, produce, demo ---

# --- bench ---


def main() -> None:
    app()


if __name__ == "__main__":
    main()
