"""Entry point of the ``sbi-core`` command.

Each subcommand lives in its own module ``sbi_core/cli/<name>_cmd.py`` exposing
``add_parser(subparsers)`` and ``run(args) -> int``; add new ones to ``COMMANDS``.
No Python traceback reaches a user: every error prints one line naming the problem and
the fix (exit 2 for bad input, 1 for an internal error, 130 for Ctrl-C); ``--debug`` (or
``SBI_CORE_DEBUG=1``) re-raises to show the traceback.

``sbi-core --version`` prints the version; ``sbi-core completion bash|zsh`` prints a
shell-completion script (docs/cli.md).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from sbi_core.display import MESSAGE_LIMIT, shown, shown_text

_plain_formatwarning = warnings.formatwarning

COMMANDS = ["demo", "simulate", "train", "sample", "diagnose", "robustness", "reference",
            "benchmark", "serve", "run", "completion"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (exit 2), not usage + message."""

    def error(self, message: str):  # type: ignore[override]
        hint = _problem_hint(self, message)
        prog = self.prog
        command = _command_parser(self) if message.startswith("unrecognized arguments:") else None
        if command is not None:  # argparse reports a command's extra arguments at the top
            prog = command.prog
        self.exit(2, f"{prog}: error: {message}{hint} (see {prog} --help)\n")


def _command_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser | None:
    """The sub-command's parser named on the command line (``sample`` in ``sbi-core sample
    ...``), or None."""
    argv = getattr(parser, "argv", None)
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in COMMANDS), None)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if command is None or sub is None or command not in sub.choices:
        return None
    return sub.choices[command]


def _problem_hint(parser: argparse.ArgumentParser, message: str) -> str:
    """For ``unrecognized arguments`` that look like a problem (``file.py:make``,
    ``module:function``, a ``.py`` file) given to a command that takes the problem as the
    ``--problem`` option (``train``, ``diagnose``, ...): the command line to use instead."""
    if not message.startswith("unrecognized arguments:"):
        return ""
    sub = _command_parser(parser)
    if sub is None or "--problem" not in sub._option_string_actions:
        return ""
    command = sub.prog.split()[-1]
    extras = message.split(":", 1)[1].split()
    spec = next((e for e in extras if not e.startswith("-") and (":" in e or e.endswith(".py"))),
                None)
    if spec is None:
        return ""
    return f"; `sbi-core {command}` takes the problem as an option: --problem {spec}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sbi-core",
        description="Simulation-based inference: simulate, train amortized posteriors, sample, "
                    "check calibration.",
    )
    parser.add_argument("--version", action="version", version=version_string(),
                        help="print the version and exit")
    parser.add_argument("--debug", dest="debug_top", action="store_true",
                        help="show Python tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"sbi_core.cli.{name}_cmd")
        sp = module.add_parser(sub)
        sp.add_argument("--debug", action="store_true", help="show Python tracebacks of errors")
        sp.set_defaults(_run=module.run)
    return parser


def version_string() -> str:
    """``"sbi-core X.Y.Z"`` of the code that runs (``sbi_core.__version__``)."""
    from sbi_core import __version__

    return f"sbi-core {__version__}"


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (files, values, names): exit 2 with their message."""
    from sbi_core.posterior import ObservationError, SamplingError

    # ImportError: a missing optional extra; the messages name the pip install to run
    return (ValueError, TypeError, KeyError, IndexError, OSError, ObservationError,
            SamplingError, ZeroDivisionError, ImportError)


def _message(err: BaseException) -> str:
    text = str(err) if not isinstance(err, KeyError) else f"missing entry {err}"
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    # a message may quote strings read from files (names, recorded references, a program's
    # output): shown escaped and bounded, so they cannot drive the terminal
    return shown(" ".join(text.split()) or type(err).__name__, MESSAGE_LIMIT)


def _shown_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` with the message escaped and bounded (a warning may quote
    a name or a program's output read from a file)."""
    return _plain_formatwarning(shown_text(message, MESSAGE_LIMIT), category, filename, lineno,
                                line)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.argv = argv  # type: ignore[attr-defined]  # for the usage-error hints
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            raise  # --help
        return int(exit_.code) if isinstance(exit_.code, int) else 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    debug = args.debug or args.debug_top or os.environ.get("SBI_CORE_DEBUG") == "1"
    formatwarning, warnings.formatwarning = warnings.formatwarning, _shown_warning
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"sbi-core {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        user = isinstance(err, _user_errors())
        kind = "error" if user else f"internal error ({type(err).__name__})"
        hint = "" if user else " (rerun with --debug for the traceback and please report it)"
        print(f"sbi-core {args.command}: {kind}: {_message(err)}{hint}", file=sys.stderr)
        return 2 if user else 1
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
