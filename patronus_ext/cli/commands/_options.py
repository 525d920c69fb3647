"""Options every sub-command spells the same way (one definition, one help text)."""

from __future__ import annotations

import argparse
import sys

from ...core.profiles import PROFILE_NAMES


class DeprecatedSpelling(argparse.Action):
    """An old spelling of an option, accepted for one release: it sets the new option's value and says so."""

    def __init__(self, option_strings, dest, new_spelling: str, **kwargs):
        self.new_spelling = new_spelling
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated and will be removed in the next release; use "
              f"{self.new_spelling}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed_option(p: argparse.ArgumentParser, new: str, old: str, **kwargs) -> None:
    """``new`` (with ``kwargs``), and ``old`` accepted for one release with a deprecation line on stderr."""
    action = p.add_argument(new, **kwargs)
    p.add_argument(old, dest=action.dest, action=DeprecatedSpelling, new_spelling=new, type=kwargs.get("type"))


def add_scan_report_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--scan-report``: the scan report a verb reads (``--report`` is only ever what a verb writes)."""
    add_renamed_option(p, "--scan-report", "--report", default=None, help=help)


def add_report_options(p: argparse.ArgumentParser, what: str = "the JSON report") -> None:
    p.add_argument("--report", default=None, help=f"write {what} here")
    p.add_argument("--force", action="store_true", help="replace existing output files")


def add_profile_option(p: argparse.ArgumentParser, default: str = "fast", what: str = "the method's") -> None:
    """``--profile paper|fast`` (the one list of profile names) and its alias ``--fast``."""
    p.add_argument("--profile", choices=PROFILE_NAMES, default=default,
                   help=f"paper: {what} published settings; fast: the CPU profile (default: {default}); an option "
                   "given explicitly replaces the profile's value (--epochs also drops the profile's step count)")
    p.add_argument("--fast", dest="profile", action="store_const", const="fast", help="alias of --profile fast")


def add_run_options(p: argparse.ArgumentParser, *, seed_default: int | None = 0, pickle: bool = True) -> None:
    """``--seed``, ``--device``, ``--allow-pickle`` and ``--quiet`` (alias ``--no-progress``)."""
    p.add_argument("--seed", type=int, default=seed_default,
                   help="random seed" + (f" (default {seed_default})" if seed_default is not None else ""))
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    if pickle:
        p.add_argument("--allow-pickle", action="store_true", help="allow pickle-only checkpoints, loaded with "
                       "torch.load(weights_only=True); safetensors only otherwise")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars")


def check_outputs(args: argparse.Namespace, *paths: str | None, folders: tuple[str | None, ...] = ()) -> None:
    """Every output of the verb (``--report`` and ``paths``; ``folders``: output folders) checked before any
    work: an existing file (without ``--force``), a missing, non-folder or unwritable folder, or one path named
    twice stops the verb at once (:func:`patronus_ext.core.files.check_output_paths`)."""
    from ...core.files import check_output_paths

    check_output_paths((getattr(args, "report", None), *paths), getattr(args, "force", False), folders=folders)


def write_report(args: argparse.Namespace, payload: dict) -> None:
    """Write ``payload`` to ``--report`` (atomically) and say where, on stderr (stdout may carry JSON)."""
    import sys

    from ...core.files import write_json

    if args.report:
        write_json(args.report, payload, overwrite=args.force)
        print(f"report: {args.report}", file=sys.stderr)
