"""``--config FILE.toml`` and ``--print-config`` as a user meets them: values from the
file reach a real server (port, workers, limits), the command line overrides the
file and the file the environment, relative paths are taken from the file's folder,
every mistake is one line naming the file and the key with exit code 2, and the
printed configuration parses as TOML, round-trips and hides secrets. Also unit
checks of eightys.config_file against a parser of its own (options other code adds)."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, Result, Server, free_port
from eightys import config_file
from eightys.config import UsageError
from http_helpers import HttpClient

APP = 'aio:http_post("/up", function(fd, query, headers, body)\n' \
      '    fd:http_response(200, "text/plain", WORKERID .. " " .. #body)\nend)\n'


def write_site(folder: Path, toml: str) -> Path:
    """A folder with app.lua and site.toml (``toml``); returns the config path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.lua").write_text(APP)
    path = folder / "site.toml"
    path.write_text(toml)
    return path


@pytest.fixture
def serve(tmp_path: Path):
    """``serve(*args, port=PORT, env=None)``: start ``eightys ARGS`` (no -p/-c added:
    they come from the config file) and wait until it serves on ``port``."""
    servers: list[Server] = []

    def start(*args: str, port: int, env: dict[str, str] | None = None) -> Server:
        server = Server(list(args), tmp_path, port=port, env=env)
        servers.append(server)
        server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def post(server: Server, body: bytes):
    with HttpClient.connect(server) as c:
        return c.request("POST", "/up", [("Content-Type", "text/plain")], body)


def assert_usage_error(result: Result, *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line naming the problem."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("eightys: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- values reach the server -----------------------------------------------------------


def test_file_values_are_applied(serve, tmp_path):
    port = free_port()
    # run from the repository root: entry = "app.lua" is found next to the file
    config = write_site(tmp_path / "site", f'entry = "app.lua"\nport = {port}\nworkers = 2\n'
                                           f'host = "127.0.0.1"\nmax_body_size = 1000\n')
    server = serve("--config", str(config), port=port)
    assert len(server.wait_workers(2)) == 2
    assert "with 2 worker(s)" in server.stderr_text()
    assert post(server, b"x" * 1000).status == 200
    assert post(server, b"x" * 1001).status == 413  # max_body_size from the file


def test_command_line_overrides_the_file(serve, tmp_path):
    file_port, port = free_port(), free_port()
    config = write_site(tmp_path / "site", f'entry = "app.lua"\nport = {file_port}\n'
                                           f'workers = 2\nmax-body-size = 10\n')
    server = serve("--config", str(config), "-p", str(port), "-c", "1",
                   "--max-body-size", "100", port=port)
    assert len(server.wait_workers(1)) == 1
    assert post(server, b"x" * 100).text == "0 100"
    assert post(server, b"x" * 101).status == 413


def test_a_positional_entry_overrides_the_file(run_eightys, tmp_path):
    config = write_site(tmp_path / "site", 'entry = "app.lua"\n')
    printed = tomllib.loads(run_eightys("server/echo.lua", "--config", str(config),
                                        "--print-config").stdout)
    assert printed["entry"] == str(REPO / "server" / "echo.lua")


def printed(run_eightys, *args: str, env: dict[str, str] | None = None) -> dict:
    result = run_eightys(*args, "--print-config", env=env)
    assert result.returncode == 0, result
    assert result.stderr == ""
    return tomllib.loads(result.stdout)


def test_precedence_command_line_file_environment_default(run_eightys, tmp_path):
    config = write_site(tmp_path / "site", 'entry = "app.lua"\nmax-body-size = 7\n')
    env = {"HTTP_MAX_BODY_SIZE": "5", "HTTP_MAX_HEADERS": "9"}
    values = printed(run_eightys, "--config", str(config), env=env)
    assert values["max-body-size"] == 7          # the file over the environment
    assert values["max-headers"] == 9            # the environment over the default
    assert values["max-header-size"] == 32768    # the default
    values = printed(run_eightys, "--config", str(config), "--max-body-size", "3", env=env)
    assert values["max-body-size"] == 3          # the command line over the file
    values = printed(run_eightys, str(tmp_path / "site" / "app.lua"), env=env)
    assert values["max-body-size"] == 5          # no file: the environment


def test_relative_paths_are_relative_to_the_file(run_eightys, tmp_path):
    site = tmp_path / "deploy" / "site"
    config = write_site(site, 'entry = "app.lua"\nmodules = ["mods/a.py", "../b.py"]\n'
                              'secret-file = "secret.txt"\n')
    (site / "mods").mkdir()
    (site / "mods" / "a.py").write_text("")
    (tmp_path / "deploy" / "b.py").write_text("")
    (site / "secret.txt").write_text("0123456789abcdef0123")
    values = printed(run_eightys, "--config", str(config))  # run from the repository root
    assert values["entry"] == str(site / "app.lua")
    assert values["modules"] == f"{site / 'mods' / 'a.py'},{tmp_path / 'deploy' / 'b.py'}"
    assert values["secret-file"] == str(site / "secret.txt")


def test_a_missing_relative_entry_names_the_file_and_key(run_eightys, tmp_path):
    config = write_site(tmp_path / "site", 'entry = "nope.lua"\n')
    assert_usage_error(run_eightys("--config", str(config)),
                       f"{config}: entry:", str(tmp_path / "site" / "nope.lua"))


# -- mistakes ----------------------------------------------------------------------------


@pytest.mark.parametrize("toml, fragments", [
    ("prot = 8080\n", ["unknown key 'prot'", "did you mean 'port'?"]),
    ("[server]\nport = 1\n", ["unknown key 'server'"]),
    ('port = "8080"\n', ["port: expected an integer, got a string ('8080')"]),
    ("workers = 2.5\n", ["workers: expected an integer, got a number"]),
    ("dev = 1\n", ["dev: expected true or false, got an integer"]),
    ("graceful-timeout = true\n", ["graceful-timeout: expected a number, got a boolean"]),
    ("node = 5\n", ["node: expected a string, got an integer"]),
    ('lua = "lua51"\n', ["lua: must be one of 'luajit', 'lua54', got 'lua51'"]),
    ('mysql_driver = "pg"\n', ["mysql_driver: must be one of"]),
    ("workers = 0\n", ["workers needs at least 1 worker, got 0"]),
    ("port = 70000\n", ["port: port 70000 is out of range 0-65535"]),
    ("max-body-size = -1\n", ["max-body-size must be >= 0"]),
    ('host = "unix:"\n', ["host: unix: needs a socket path"]),
    ('redis = "http://x"\n', ["redis needs a redis://HOST:PORT/DB URL"]),
    ("port = 1\nport = 2\n", ["not valid TOML", "line 3"]),
    ("max-body-size = 1\nmax_body_size = 2\n", ["max_body_size: given twice"]),
    ('config = "other.toml"\n', ["config: cannot be set in a config file"]),
    ("print-config = true\n", ["print-config: cannot be set in a config file"]),
    ("port = \n", ["not valid TOML", "line 2"]),
], ids=["unknown-key", "table", "string-for-int", "float-for-int", "int-for-bool",
        "bool-for-float", "int-for-string", "bad-choice", "bad-choice-underscore",
        "no-workers", "port-range", "negative", "bad-host", "bad-redis", "duplicate-toml",
        "both-spellings", "config-in-config", "print-config-in-config", "syntax"])
def test_mistakes_are_one_line_naming_file_and_key(run_eightys, tmp_path, toml, fragments):
    config = write_site(tmp_path / "site", 'entry = "app.lua"\n' + toml)
    assert_usage_error(run_eightys("--config", str(config)), f"{config}:", *fragments)


def test_a_missing_config_file(run_eightys, tmp_path):
    assert_usage_error(run_eightys("--config", str(tmp_path / "none.toml")),
                       f"--config {tmp_path / 'none.toml'}: no such file")


def test_a_file_that_is_not_utf8(run_eightys, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_bytes(b'node = "\xff"\n')
    assert_usage_error(run_eightys("--config", str(config)), str(config), "not valid TOML")


def test_a_redis_password_is_fine_in_the_file_but_not_on_the_command_line(run_eightys,
                                                                          tmp_path):
    url = "redis://:hunter2hunter2@127.0.0.1:6379/15"
    config = write_site(tmp_path / "site", f'entry = "app.lua"\nredis = "{url}"\n')
    result = run_eightys("--config", str(config), "--print-config")
    assert result.returncode == 0, result
    assert "hunter2" not in result.stdout
    assert tomllib.loads(result.stdout)["redis"] == "redis://:<redacted>@127.0.0.1:6379/15"
    assert_usage_error(run_eightys(str(tmp_path / "site" / "app.lua"), "--redis", url),
                       "--redis: a password on the command line")


# -- --print-config ------------------------------------------------------------------------


def test_print_config_parses_round_trips_and_lists_what_is_unset(run_eightys, tmp_path):
    config = write_site(tmp_path / "site", 'entry = "app.lua"\nworkers = 3\nport = 9001\n'
                                           'modules = []\nlua = "lua54"\nreload = true\n')
    result = run_eightys("--config", str(config), "--print-config")
    assert result.returncode == 0, result
    values = tomllib.loads(result.stdout)
    assert (values["workers"], values["port"], values["lua"], values["reload"]) == \
        (3, 9001, "lua54", True)
    assert values["keepalive-timeout"] == 15.0 and values["cli"] is False
    assert "host" not in values and re.search(r"^# not set: .*\bhost\b", result.stdout, re.M)
    # the printed file, used as a config file from elsewhere, gives the same output
    again = tmp_path / "elsewhere" / "printed.toml"
    again.parent.mkdir()
    again.write_text(result.stdout)
    second = run_eightys("--config", str(again), "--print-config")
    assert second.returncode == 0, second
    assert tomllib.loads(second.stdout) == values


def test_print_config_without_a_file(run_eightys):
    values = printed(run_eightys, "server/echo.lua", "-c", "2", "-p", "7000")
    assert (values["entry"], values["workers"], values["port"]) == \
        (str(REPO / "server" / "echo.lua"), 2, 7000)


def test_readme_config_example(run_eightys, serve, tmp_path):
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n### Config file\n"):text.index("\n## Scripts (`--cli`)\n")]
    example = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    config = write_site(tmp_path / "site", example)
    (tmp_path / "site" / "secret.txt").write_text("a-secret-of-more-than-16-chars\n")
    values = printed(run_eightys, "--config", str(config))
    assert values["entry"] == str(tmp_path / "site" / "app.lua")
    assert (values["port"], values["workers"], values["max-body-size"]) == (8080, 4, 1048576)
    assert "s3cret" not in str(values)
    # and it serves (on a free port, with one worker: the command line wins)
    port = free_port()
    server = serve("--config", str(config), "-p", str(port), "-c", "1", "-h", "127.0.0.1",
                   port=port)
    assert post(server, b"hello").text == "0 5"


# -- the generic mapping, on options other helpers may add --------------------------------


def parser_with_new_options() -> argparse.ArgumentParser:
    """A parser like eightys' with options of kinds it does not have yet."""
    p = argparse.ArgumentParser(prog="x", add_help=False)
    p.add_argument("entry", nargs="?", default="app.lua", metavar="ENTRY.lua")
    p.add_argument("--config", default=None)
    p.add_argument("--allow", action="append", metavar="CIDR", default=None)
    p.add_argument("--tls-cert", metavar="FILE")
    p.add_argument("--access-log", metavar="-|FILE")
    p.add_argument("--verbose", "-v", action="count", default=0)
    p.add_argument("--size", type=lambda s: int(s.rstrip("k")) * 1024, default=1)
    p.add_argument("--pair", nargs=2, type=int)
    p.add_argument("--no-color", dest="color", action="store_false")
    p.add_argument("--api-token", default=None)
    p.add_argument("--help", action="help")
    return p


def merge(tmp_path: Path, toml: str, *argv: str) -> config_file.Merged:
    path = tmp_path / "conf" / "x.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(toml)
    return config_file.parse(parser_with_new_options(), ["--config", str(path), *argv])


def test_new_kinds_of_options_work_in_the_file(tmp_path):
    merged = merge(tmp_path, 'allow = ["10.0.0.0/8", "::1/128"]\ntls-cert = "certs/a.pem"\n'
                             'access-log = "-"\nverbose = 2\nsize = "4k"\npair = [1, 2]\n'
                             'color = false\n')
    values = merged.values
    assert values.allow == ["10.0.0.0/8", "::1/128"]
    assert values.tls_cert == str(tmp_path / "conf" / "certs" / "a.pem")
    assert values.access_log == "-"  # stdout, not a path
    assert (values.verbose, values.size, values.pair, values.color) == (2, 4096, [1, 2], False)
    assert merged.name("verbose", "-v") == f"{tmp_path / 'conf' / 'x.toml'}: verbose"
    assert merged.name("entry", "ENTRY") == "ENTRY"  # not from the file


def test_the_command_line_wins_for_new_options_too(tmp_path):
    values = merge(tmp_path, 'allow = ["10.0.0.0/8"]\nverbose = 2\n',
                   "--allow", "127.0.0.1/32").values
    assert values.allow == ["127.0.0.1/32"] and values.verbose == 2


@pytest.mark.parametrize("toml, message", [
    ('size = "lots"\n', "size: bad value 'lots'"),
    ("pair = [1]\n", "pair: expected 2 values, got 1"),
    ('allow = [1]\n', "allow: expected a string, got an integer"),
    ("verbose = -1\n", "verbose: expected a count"),
    ("help = true\n", "unknown key 'help'"),
])
def test_new_kinds_of_options_are_checked(tmp_path, toml, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        merge(tmp_path, toml)


def test_redaction():
    assert config_file.redact("api_token", "abc") == config_file.REDACTED
    assert config_file.redact("redis", "redis://user:pw@h:1/0") == "redis://user:<redacted>@h:1/0"
    assert config_file.redact("redis", "redis://h:1/0") == "redis://h:1/0"
    assert config_file.redact("secret_file", "/etc/secret") == "/etc/secret"  # a path
