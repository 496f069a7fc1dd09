"""Every flag of every ``segtune`` subcommand is driven by some test, or named in ``NOT_DRIVEN`` with a reason.

A flag counts as driven when a test source (tests/**/*.py) spells it as a string literal (``"--sync-bn"``,
``"--opset=16"``) in a file that also names its subcommand (``"evaluate"``; ``"data"`` and ``"check"`` for
``segtune data check``). A config flag (one per config field, made by ``add_section_flags`` and read back by
``section_flags``) stands for its setting: it counts as driven where a test gives that setting as a
``section.key=value`` override (``"train.sync_bn=true"``) or a ``configure()`` key (``"train.sync_bn": True``),
or drives the same flag on another command (data check / show / convert / train share the data section).
tests/cli/test_flags_driven.py drives the flag -> setting path itself for the flags nothing else spelled.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from segtune.cli.main import build_parser

TESTS = Path(__file__).resolve().parents[1]

#: ``(command, flag) -> why no test drives it``; command "" is the top level, nested ones are "data check".
#: Empty since tests/cli/test_flags_driven.py drove the last ones (issue #37); a new flag either gets a test
#: or an entry here, e.g. ``("train", "--sync-bn"): "needs two CUDA processes"``.
NOT_DRIVEN: dict[tuple[str, str], str] = {}


def all_flags(parser: argparse.ArgumentParser | None = None, command: tuple[str, ...] = ()
              ) -> dict[tuple[str, str], str]:
    """``(command, long option string) -> dest`` of every option of every (nested) subcommand."""
    parser = parser or build_parser()
    flags: dict[tuple[str, str], str] = {}
    for action in parser._actions:  # argparse has no public walk of its actions
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                flags.update(all_flags(sub, command + (name,)))
        elif not isinstance(action, argparse._HelpAction):
            for option in action.option_strings:
                if option.startswith("--"):
                    flags[(" ".join(command), option)] = action.dest
    return flags


def _sources() -> dict[Path, str]:
    me = Path(__file__).resolve()
    return {p: p.read_text(encoding="utf-8") for p in sorted(TESTS.rglob("*.py"))
            if p.resolve() != me and "fixtures" not in p.relative_to(TESTS).parts}  # fixtures: data, not tests


def _spelled(flag: str, text: str) -> bool:
    return re.search(r"""["']""" + re.escape(flag) + r"""(["'=])""", text) is not None


def _names(command: str, text: str) -> bool:
    return all(re.search(rf"""["']{re.escape(word)}["']""", text) for word in command.split())


def driven_flags(*, literal_only: bool = False) -> set[tuple[str, str]]:
    """The ``(command, flag)`` pairs some test drives; ``literal_only``: only those spelled with their command."""
    flags, sources = all_flags(), _sources()
    driven = {(command, flag) for (command, flag) in flags
              if any(_spelled(flag, text) and _names(command, text) for text in sources.values())}
    if literal_only:
        return driven
    everything = "\n".join(sources.values())
    # A config flag stands for its setting: the flag -> setting path is one generated pair
    # (add_section_flags / section_flags) for every field, so a test that gives the setting as a
    # ``section.key=value`` override or as a configure() key drives it too; and a flag driven on one command
    # counts for every command that has it (data check / show / convert / train share the data section).
    given = {dest for (command, flag), dest in flags.items() if "." in dest and (command, flag) in driven}
    given |= {dest for dest in flags.values()
              if "." in dest and re.search(rf"""["']{re.escape(dest)}["'=]""", everything)}
    driven |= {key for key, dest in flags.items() if dest in given}
    return driven


def test_every_flag_is_driven_by_a_test_or_has_a_reason() -> None:
    flags, driven = all_flags(), driven_flags()
    missing = sorted(key for key in flags if key not in driven and key not in NOT_DRIVEN)
    assert not missing, "flags no test drives (drive them, or add them to NOT_DRIVEN with a reason):\n" + "\n".join(
        f"  segtune {command + ' ' if command else ''}{flag}" for command, flag in missing)


def test_the_allowlist_names_only_undriven_flags_that_exist() -> None:
    flags, driven = all_flags(), driven_flags()
    unknown = sorted(key for key in NOT_DRIVEN if key not in flags)
    assert not unknown, f"NOT_DRIVEN names flags segtune does not have: {unknown}"
    stale = sorted(key for key in NOT_DRIVEN if key in driven)
    assert not stale, f"NOT_DRIVEN names flags a test now drives (remove them): {stale}"
    assert all(reason.strip() for reason in NOT_DRIVEN.values())


def test_the_enumeration_sees_nested_subcommands_and_generated_flags() -> None:
    flags = all_flags()
    assert ("", "--version") in flags and ("export", "--opset") in flags and ("evaluate", "--workers") in flags
    assert flags[("train", "--sync-bn")] == "train.sync_bn"
    assert flags[("train", "--eval-batch-size")] == "eval.batch_size"
    assert flags[("data check", "--mask-suffix")] == "data.mask_suffix"
    assert ("data download", "--url") in flags


def test_report_the_counts(capsys) -> None:
    flags, driven, literal = all_flags(), driven_flags(), driven_flags(literal_only=True)
    with capsys.disabled():
        print(f"\nsegtune flags: {len(flags)} (command, flag) pairs, {len({f for _, f in flags})} distinct strings; "
              f"driven {len(driven & set(flags))} ({len(literal & set(flags))} spelled as flags with their command, "
              f"the rest as settings); allowlisted {len(NOT_DRIVEN)}")
    assert literal <= driven


#: The positional arguments each command with config flags needs before its flags parse.
_POSITIONALS = {"train": [], "data check": ["d"], "data show": ["d", "--out", "g.png"], "data convert": ["d", "c.json"]}


def _sample(default, tp):
    """A command-line text for a field of annotation ``tp`` and the value its setting should then hold."""
    if default is None:
        args = [a for a in getattr(tp, "__args__", ()) if a is not type(None)]
        base = getattr(args[0], "__origin__", args[0]) if args else str
        return {int: ("3", 3), float: ("0.5", 0.5), str: ("x", "x"), list: ("[1, 2]", [1, 2])}.get(base, ("x", "x"))
    if isinstance(default, bool):
        return ("false" if default else "true"), not default
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return str(default + 1), default + 1
    if isinstance(default, list):
        return str(default), default
    return str(default), default


def test_every_config_flag_sets_its_own_setting() -> None:
    """The flag -> setting path the rules above lean on, for every config flag of every command."""
    import dataclasses

    from segtune.cli.options import section_flags
    from segtune.config import SECTIONS, field_types

    parser, checked = build_parser(), 0
    for (command, flag), dest in all_flags().items():
        if "." not in dest:
            continue
        section, name = dest.split(".", 1)
        field = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        choices = field.metadata.get("choices")
        text, want = (choices[-1], choices[-1]) if choices else _sample(default, field_types(SECTIONS[section])[name])
        if field.metadata.get("switch"):  # a flag without a value: given = true
            text, want = None, True
        given = flag if text is None else f"{flag}={text}"
        args = parser.parse_args([*command.split(), *_POSITIONALS[command], given])
        got = section_flags(args, section)
        assert got == {dest: want}, (command, flag, text, got)
        checked += 1
    assert checked > 100
