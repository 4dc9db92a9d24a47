"""``--config FILE.toml``: every command-line option, read from a TOML file.

Built from the argparse parser itself, not from a list of its own: a key is an
option's ``dest`` (``max-body-size`` and ``max_body_size`` both work), and its value
is checked against what the option's action takes (``store_true`` -> a boolean,
``type=int`` -> an integer, ``choices`` -> one of them, ``append`` or ``nargs`` ->
an array...). So an option added to the parser works in the file with no code here.

Precedence, highest first: the command line, the file, the environment variables
that option defaults read (``$HTTP_MAX_BODY_SIZE``...), the built-in default. The
file overrides the environment because it is the more deliberate of the two; a flag
given on the command line always wins.

A relative path in the file is relative to the file's folder, so
``eightys --config /etc/eightys/site.toml`` means the same from any directory. An
option is a path when its metavar says so (``PATH``, ``FILE``, ``DIR``, ``ENTRY.lua``,
``MOD.py,...``: a name with an extension) or its dest ends in ``_file``, ``_path``,
``_dir``, ``_cert``, ``_key`` or ``_ca`` (``--tls-key``); ``-`` (standard output) is
left alone.

Every mistake is a :class:`~eightys.config.UsageError` naming the file and the key:
one line, exit 2, like every other usage error.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

from eightys.config import UsageError

#: Options that configure reading the configuration: not allowed inside the file.
NOT_IN_FILE = frozenset({"config", "print_config"})
#: A metavar naming a file: PATH, FILE, DIR, or a name with an extension (ENTRY.lua),
#: optionally a comma-separated list of them (MOD.py,...).
_PATH_METAVAR = re.compile(r"(?:PATH|FILE|DIR|\.[A-Za-z0-9]+)(?:,\.\.\.)?$")
_PATH_DEST = re.compile(r"_(?:file|path|dir|cert|key|ca)$")
#: Option dests whose whole value is a secret (``--print-config`` shows ``<redacted>``).
_SECRET_DEST = re.compile(r"(?:^|_)(?:password|passwd|secret|token|api_key)$")
REDACTED = "<redacted>"


@dataclass
class Merged:
    """The parsed options after the config file was applied."""

    #: The option values (the namespace ``parse_args`` would return).
    values: argparse.Namespace
    #: The config file as given (None without ``--config``).
    path: str | None = None
    #: dest -> the key as written in the file, for the values that came from it.
    from_file: dict[str, str] = field(default_factory=dict)

    def name(self, dest: str, flag: str) -> str:
        """How an error message names option ``dest``: ``FILE: key`` when its value
        came from the config file, else ``flag`` (e.g. ``-c``)."""
        key = self.from_file.get(dest)
        return flag if key is None else f"{self.path}: {key}"

    def where(self, dest: str) -> str:
        """A prefix for an error message about ``dest``'s value: ``FILE: key: ``
        when it came from the config file, else nothing."""
        key = self.from_file.get(dest)
        return "" if key is None else f"{self.path}: {key}: "


def parse(parser: argparse.ArgumentParser, argv: Sequence[str],
          config_dest: str = "config") -> Merged:
    """Parse ``argv`` with ``parser``, then fill every option the command line did
    not give from the TOML file named by option ``config_dest`` (if given)."""
    values = parser.parse_args(list(argv))
    path = getattr(values, config_dest, None)
    if path is None:
        return Merged(values)
    table = _read(path)
    explicit = _given(parser, argv)
    actions = {a.dest: a for a in configurable(parser)}
    merged = Merged(values, path)
    seen: dict[str, str] = {}
    for key, raw in table.items():
        dest = key.replace("-", "_")
        if dest in NOT_IN_FILE:
            raise UsageError(f"{path}: {key}: cannot be set in a config file")
        action = actions.get(dest)
        if action is None:
            raise UsageError(f"{path}: unknown key {key!r}{_suggest(key, actions)}")
        if dest in seen:
            raise UsageError(f"{path}: {key}: given twice (also as {seen[dest]!r})")
        seen[dest] = key
        value = convert(action, raw, f"{path}: {key}: ", os.path.dirname(os.path.abspath(path)))
        if dest not in explicit:
            setattr(values, dest, value)
            merged.from_file[dest] = key
    return merged


def configurable(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The parser's actions a config file may set: all but --help/--version
    (whose default is SUPPRESS) and the config options themselves."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public listing
        if action.default is not argparse.SUPPRESS and action.dest not in NOT_IN_FILE:
            yield action


def is_path(action: argparse.Action) -> bool:
    """Whether the option names a file (see the module docstring)."""
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    return bool(_PATH_METAVAR.search(metavar) or _PATH_DEST.search(action.dest))


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"--config {path}: {exc.strerror.lower() if exc.strerror else exc}") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not valid TOML: the file is not UTF-8") from None


def _given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests the command line itself set: parsed again with every default
    suppressed, so only what was given lands in the namespace."""
    saved = [(a, a.default) for a in parser._actions]  # noqa: SLF001
    parser_defaults = dict(parser._defaults)  # noqa: SLF001
    try:
        for action in parser._actions:  # noqa: SLF001
            action.default = argparse.SUPPRESS
        parser._defaults.clear()  # noqa: SLF001
        return set(vars(parser.parse_args(list(argv))))
    finally:
        for action, default in saved:
            action.default = default
        parser._defaults.update(parser_defaults)  # noqa: SLF001


def _suggest(key: str, actions: dict[str, argparse.Action]) -> str:
    names = [dest.replace("_", "-") for dest in actions]
    close = difflib.get_close_matches(key.replace("_", "-"), names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- values ------------------------------------------------------------------------------

_TOML_KIND = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
              list: "an array", dict: "a table"}


def _kind(value: Any) -> str:
    return _TOML_KIND.get(type(value), "a date or time")


def _takes_list(action: argparse.Action) -> bool:
    return (isinstance(action, (argparse._AppendAction, argparse._ExtendAction))  # noqa: SLF001
            or action.nargs in ("*", "+") or isinstance(action.nargs, int)
            and action.nargs > 0)


def convert(action: argparse.Action, raw: Any, where: str, base: str) -> Any:
    """The Python value a TOML value ``raw`` gives option ``action``, as the command
    line would have given it; ``where`` prefixes error messages, ``base`` is the
    folder relative paths are taken from."""
    if action.nargs == 0:  # flags: store_true/false, store_const, count, BooleanOptional
        if isinstance(action, argparse._CountAction):  # noqa: SLF001
            if type(raw) is not int or raw < 0:
                raise UsageError(f"{where}expected a count (an integer >= 0), got {_kind(raw)}")
            return raw
        if type(raw) is not bool:
            raise UsageError(f"{where}expected true or false, got {_kind(raw)} ({raw!r})")
        if isinstance(action, argparse._StoreConstAction) \
                and action.const not in (True, False):  # noqa: SLF001
            return action.const if raw else action.default
        return raw
    if _takes_list(action):
        items = raw if isinstance(raw, list) else [raw]
        values = [_scalar(action, item, where, base) for item in items]
        if action.nargs == "+" and not values:
            raise UsageError(f"{where}expected at least one value")
        if isinstance(action.nargs, int) and len(values) != action.nargs:
            raise UsageError(f"{where}expected {action.nargs} values, got {len(values)}")
        return values
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    if isinstance(raw, list) and metavar.endswith(",...") and action.type in (None, str):
        # a comma-separated option (-m a.py,b.py) takes a TOML array too
        return ",".join(_scalar(action, item, where, base) for item in raw)
    if raw is True and action.nargs == "?" and action.const is not None:
        return action.const
    return _scalar(action, raw, where, base)


def _scalar(action: argparse.Action, raw: Any, where: str, base: str) -> Any:
    kind = action.type
    if isinstance(raw, (list, dict)) or type(raw) not in (bool, int, float, str):
        raise UsageError(f"{where}expected a single value, got {_kind(raw)}")
    if kind is None or kind is str:
        if type(raw) is not str:
            raise UsageError(f"{where}expected a string, got {_kind(raw)} ({raw!r})")
        value: Any = _path(action, raw, base)
    elif kind is int:
        if type(raw) is not int:
            raise UsageError(f"{where}expected an integer, got {_kind(raw)} ({raw!r})")
        value = raw
    elif kind is float:
        if type(raw) not in (int, float):
            raise UsageError(f"{where}expected a number, got {_kind(raw)} ({raw!r})")
        value = float(raw)
    else:  # a converter of the option's own: give it the text the command line would
        if type(raw) is bool:
            raise UsageError(f"{where}expected a value, got a boolean ({raw!r})")
        try:
            value = kind(raw if type(raw) is str else str(raw))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise UsageError(f"{where}bad value {raw!r} ({exc})") from None
    if action.choices is not None and value not in action.choices:
        options = ", ".join(repr(c) for c in action.choices)
        raise UsageError(f"{where}must be one of {options}, got {raw!r}")
    return value


def _path(action: argparse.Action, value: str, base: str) -> str:
    if not is_path(action):
        return value
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    if metavar.endswith(",..."):
        return ",".join(_resolve(part.strip(), base) for part in value.split(",") if part.strip())
    return _resolve(value, base)


def _resolve(value: str, base: str) -> str:
    if value in ("", "-"):
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


# -- printing ----------------------------------------------------------------------------


def dump(parser: argparse.ArgumentParser, merged: Merged) -> str:
    """The merged options as a TOML config file (``--print-config``): every option
    the file may set, paths absolute, secrets redacted; unset ones as comments."""
    import tomli_w

    table: dict[str, Any] = {}
    unset: list[str] = []
    for action in configurable(parser):
        key = action.dest.replace("_", "-")
        value = getattr(merged.values, action.dest, None)
        if value is None:
            unset.append(key)
            continue
        if is_path(action):
            value = _absolute(action, value)
        table[key] = redact(action.dest, value)
    source = f" > {merged.path}" if merged.path else ""
    head = (f"# eightys configuration: command line{source} > environment > defaults\n")
    text = head + tomli_w.dumps(table)
    if unset:
        text += "# not set: " + ", ".join(unset) + "\n"
    return text


def _absolute(action: argparse.Action, value: Any) -> Any:
    if isinstance(value, list):
        return [_absolute(action, v) for v in value]
    if not isinstance(value, str):
        return value
    return _path(action, value, os.getcwd())


def redact(dest: str, value: Any) -> Any:
    """``value`` fit to print: a secret option's value replaced, the password of a
    URL (``redis://:pw@host``) masked."""
    if isinstance(value, list):
        return [redact(dest, v) for v in value]
    if not isinstance(value, str):
        return value
    if _SECRET_DEST.search(dest):
        return REDACTED
    if "@" in value and "://" in value:
        try:
            parts = urlsplit(value)
            password = parts.password
        except ValueError:
            return REDACTED
        if password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            return parts._replace(netloc=f"{parts.username or ''}:{REDACTED}@{host}").geturl()
    return value
