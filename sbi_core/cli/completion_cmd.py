"""``sbi-core completion bash|zsh``: print a shell-completion script (via ``shtab``).

Install it once, e.g. for bash::

    sbi-core completion bash > ~/.local/share/bash-completion/completions/sbi-core

(zsh: ``sbi-core completion zsh > ~/.zfunc/_sbi-core`` with ``fpath+=~/.zfunc`` before
``compinit`` in ``~/.zshrc``). Subcommands, options and choices complete; file arguments
complete to paths. See docs/cli.md.
"""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh")
#: Options whose values are paths (completed as files).
FILE_DESTS = {"model", "models", "out", "sims", "x", "theta", "store"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("completion", help="print a shell-completion script (bash or zsh)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    return p


def completion_script(shell: str) -> str:
    """The completion script of the whole ``sbi-core`` parser for ``shell``."""
    try:
        import shtab
    except ImportError as err:
        raise ImportError("Shell completion needs shtab: pip install shtab (a dependency of "
                          f"sbi-core; reinstall it). ({err})") from err
    from sbi_core.cli.main import build_parser

    if shell not in SHELLS:
        raise ValueError(f"Unknown shell {shell!r}; choose one of {', '.join(SHELLS)}.")
    parser = build_parser()
    _mark_files(parser, shtab.FILE)
    return shtab.complete(parser, shell=shell)


def _mark_files(parser: argparse.ArgumentParser, file_completion: object) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _mark_files(sub, file_completion)
        elif action.dest in FILE_DESTS and action.choices is None:
            action.complete = file_completion  # type: ignore[attr-defined]


def run(args: argparse.Namespace) -> int:
    print(completion_script(args.shell))
    return 0
