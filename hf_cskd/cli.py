"""The `hf-cskd` console script: `hf-cskd calibrate MODEL ...` (`hf-cskd calibrate --help` lists the flags)."""

import sys

COMMANDS = {"calibrate": "temperature-scale any image classifier (a local folder or a Hub id) and save it calibrated"}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        listed = "\n".join(f"  {name:<12}{text}" for name, text in COMMANDS.items())
        print(f"usage: hf-cskd COMMAND [flags]\n\ncommands:\n{listed}", file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    from .calibration.command import main as calibrate

    calibrate(argv[1:])


if __name__ == "__main__":
    main()
