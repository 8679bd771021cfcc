"""`python -m property_pipeline` is the same as the `property-pipeline` command (whose entry point is `run`)."""

import sys


def run() -> None:
    """Start the command; a Ctrl-C while its modules are still being imported is one line, like any other."""
    try:
        from property_pipeline.cli import main
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): the command stopped", file=sys.stderr)
        sys.exit(130)
    main(prog_name="property-pipeline")


if __name__ == "__main__":
    run()
