"""Settings without a mount: the config file, ``-o`` options, precedence, tokens, the helper."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from cupixfs.api.client import DEFAULT_API_URL
from cupixfs.commands import cli, mount_helper
from cupixfs.commands import status as status_cmd
from cupixfs.commands.progress import Progress
from cupixfs.config import mount_options, token
from cupixfs.config import profiles as settings
from cupixfs.config.settings import UsageError, Values, layer, resolve

GiB = 1 << 30


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def _mount_args(*argv: str) -> Values:
    """What `cupixfs mount` would take from this command line, -o already applied."""
    return cli.said(cli.build_parser().parse_args(["mount", "/mnt/x", *argv]), "mount")


# -- the config file -------------------------------------------------------------------------


def test_a_profile_reads_every_key(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        """
        default_profile = "site"
        [profiles.site]
        api_url = "https://example.test/api/v1"
        token_file = "tokens/site"
        cache_dir = "~/cupix-cache"
        cache_size = "4G"
        memory_cache = 134217728
        timeout = 10
        listing_ttl = 2.5
        per_page = 50
        captures = [1, 2]
        records = [3]
        log_file = "/var/log/cupixfs.log"
        allow_other = true
        debug = false
        offline = true
        """,
    )
    name, profile = settings.load(path).select(None)
    assert name == "site"
    assert profile == dict(
        api_url="https://example.test/api/v1",
        token_file=tmp_path / "tokens/site",  # relative to the config file
        cache_dir=Path.home() / "cupix-cache",
        cache_size=4 * GiB,
        memory_cache=128 << 20,
        timeout=10.0,
        listing_ttl=2.5,
        per_page=50,
        captures=[1, 2],
        records=[3],
        log_file=Path("/var/log/cupixfs.log"),
        allow_other=True,
        debug=False,
        offline=True,
    )


def test_which_profile_is_used(tmp_path: Path) -> None:
    text = "[profiles.default]\ntimeout = 1\n[profiles.other]\ntimeout = 2\n"
    config = settings.load(_config(tmp_path, text))
    assert config.select(None) == ("default", {"timeout": 1.0})
    assert config.select("other") == ("other", {"timeout": 2.0})
    with pytest.raises(UsageError, match=r"no profile 'nope' .*profiles: default, other"):
        config.select("nope")
    config = settings.load(_config(tmp_path, 'default_profile = "other"\n' + text))
    assert config.select(None) == ("other", {"timeout": 2.0})
    assert settings.load(_config(tmp_path, "")).select(None) == ("default", {})
    with pytest.raises(UsageError, match=r"no profile 'x' in .*config.toml \(profiles: none\)"):
        settings.load(_config(tmp_path, "")).select("x")


def test_a_missing_default_file_is_no_error_but_a_missing_named_one_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert settings.load(None).select(None) == ("default", {})
    with pytest.raises(UsageError, match="no profile 'site': there is no config file /"):
        settings.load(None).select("site")
    with pytest.raises(UsageError, match="does not exist"):
        settings.load(tmp_path / "nope.toml")
    (tmp_path / "cupixfs").mkdir()
    (tmp_path / "cupixfs" / "config.toml").write_text("[profiles.default]\nper_page = 7\n")
    assert settings.load(None).select(None)[1]["per_page"] == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[profiles.a]\ntimeout = \n", r"not valid TOML: .*line 2, column 11"),
        ("[profiles.a]\ncache_sise = 1\n", r"\[profiles\.a\]: unknown key 'cache_sise'"),
        ("[profiles.a]\ncache_size = [1]\n", r"cache_size must be a size such as"),
        ('[profiles.a]\ncache_size = "lots"\n', r"cache_size must be a size"),
        ('[profiles.a]\ntimeout = "10"\n', r"timeout must be a positive number of seconds"),
        ("[profiles.a]\ncaptures = [1, -2]\n", r"captures must be a list of ids"),
        ("[profiles.a]\ncaptures = 1\n", r"captures must be a list of ids"),
        ('[profiles.a]\nallow_other = "yes"\n', r"allow_other must be true or false"),
        ("[profiles.a]\nper_page = true\n", r"per_page must be a positive integer"),
        ('[profiles.a]\napi_url = ""\n', r"api_url must be a non-empty string"),
        ('default_profile = "b"\n[profiles.a]\n', r"default_profile 'b' has no \[profiles\.b\]"),
        ("timeout = 3\n", r"unknown key 'timeout' \(the top level has only"),
        ("profiles = 3\n", r"profiles must be tables"),
        ("[profiles]\na = 3\n", r"profiles\.a must be a table"),
    ],
)
def test_a_bad_config_file_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(UsageError, match=message) as info:
        settings.load(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


# -- -o options ------------------------------------------------------------------------------


def test_each_o_option_fills_the_same_setting_as_its_long_option() -> None:
    by_o = _mount_args(
        "-o",
        "ro,allow_other,cache_size=4G,api_url=http://h/api,token_file=/etc/t,capture=1,"
        "capture=2:3,record=4,memory_cache=128M,timeout=5,listing_ttl=7,per_page=9,"
        "cache_dir=/var/cache/c,log_file=/var/log/l,debug,offline,profile=p,config=/etc/c.toml",
    )
    by_long = _mount_args(
        "--allow-other", "--cache-size", "4G", "--api-url", "http://h/api",
        "--token-file", "/etc/t", "--capture", "1", "--capture", "2", "--capture", "3",
        "--record", "4", "--memory-cache", "128M", "--timeout", "5", "--listing-ttl", "7",
        "--per-page", "9", "--cache-dir", "/var/cache/c", "--log-file", "/var/log/l",
        "--debug", "--offline", "--profile", "p", "--config", "/etc/c.toml",
    )  # fmt: skip
    assert by_o == by_long
    assert by_o["captures"] == [1, 2, 3] and by_o["config"] == Path("/etc/c.toml")


def test_generic_mount_options_are_accepted_and_ignored() -> None:
    generic = (
        "ro,defaults,_netdev,noauto,auto,user,nouser,users,nofail,exec,noexec,suid,nosuid,"
        "dev,nodev,noatime,relatime,x-systemd.automount,x-systemd.idle-timeout=60,comment=x"
    )
    assert mount_options.parse([generic]) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rw", "cupixfs is read-only"),
        ("cache_sise=4G", "unknown mount option 'cache_sise'"),
        ("cache_size=lots", "mount option cache_size: not a size"),
        ("capture=1:x", "mount option capture: not a positive integer"),
        ("timeout=0", "not a positive number of seconds"),
        ("allow_other=1", "'allow_other' takes no value"),
        ("api_url", "'api_url' needs a value"),
        ('api_url="http://h', "unbalanced quote"),
    ],
)
def test_a_bad_o_option_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        mount_options.parse([text])


def test_o_option_details() -> None:
    assert mount_options.parse(['api_url="http://h/a,b",timeout=3']) == {
        "api_url": "http://h/a,b",
        "timeout": 3.0,
    }
    assert mount_options.parse(["capture=1", "captures=2,timeout=1,timeout=2"]) == {
        "captures": [1, 2],
        "timeout": 2.0,
    }
    assert mount_options.parse(["bogus,timeout=2,bogus2=1"], sloppy=True) == {"timeout": 2.0}


def test_a_long_option_wins_over_o_and_ids_add_up() -> None:
    said = _mount_args("--timeout", "9", "-o", "timeout=3,capture=2", "--capture", "1")
    assert said["timeout"] == 9.0 and said["captures"] == [1, 2]


# -- precedence ------------------------------------------------------------------------------


def test_command_line_over_profile_over_defaults(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        '[profiles.default]\ncache_size = "8G"\ntimeout = 5\ncaptures = [1]\n'
        'api_url = "http://profile/api"\n',
    )
    said = _mount_args("--config", str(path), "--timeout", "9", "-o", "capture=2")
    _name, profile = cli.profile_of(said)
    config = resolve(Path("/mnt/x"), "t", layer(said, profile))
    assert config.timeout == 9.0  # command line
    assert config.cache_size == 8 * GiB and config.api_url == "http://profile/api"  # profile
    assert config.listing_ttl == 60.0 and config.memory_cache == 64 << 20  # defaults
    assert config.captures == [1, 2]  # pins add up
    assert config.offline is False and config.allow_other is False


def test_nothing_said_gives_the_documented_defaults() -> None:
    config = resolve(Path("/m"), "t", _mount_args())
    assert config.api_url == DEFAULT_API_URL
    assert (config.cache_size, config.memory_cache) == (0, 64 << 20)  # 0: auto-sized
    assert (config.timeout, config.listing_ttl) == (30.0, 60.0)


def test_the_region_picks_the_api_host_unless_an_api_url_is_said(tmp_path: Path) -> None:
    def url(*argv: str, profile: str = "") -> str:
        path = _config(tmp_path, f'default_profile = "p"\n[profiles.p]\n{profile}')
        said = _mount_args("--config", str(path), *argv)
        return resolve(Path("/m"), "t", layer(said, cli.profile_of(said)[1])).api_url

    assert url() == "https://api.cupix.works/api/v1"
    assert url("--region", "eu") == "https://api.cupix-eu.works/api/v1"
    assert url("--region", "CA") == "https://api.cupix-ca.works/api/v1"
    assert url("-o", "region=jp") == "https://api.cupix-jp.works/api/v1"
    assert url(profile='region = "au"\n') == "https://api.cupix-au.works/api/v1"
    assert url("--region", "sg", profile='region = "au"\n') == "https://api.cupix-sg.works/api/v1"
    assert url("--region", "eu", "--api-url", "http://h/api/v1") == "http://h/api/v1"
    assert url("--region", "eu", profile='api_url = "http://p/api/v1"\n') == "http://p/api/v1"
    with pytest.raises(UsageError, match='region must be one of "us", "eu"'):
        url(profile='region = "mars"\n')
    with pytest.raises(UsageError, match="unknown region 'mars'"):
        mount_options.parse(["region=mars"])


def test_a_missing_token_names_the_regions_token_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_keyring(monkeypatch)
    monkeypatch.delenv("CUPIX_API_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli.main(["mount", str(tmp_path), "--region", "eu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "https://app.cupix-eu.works/settings/api" in err


def test_login_names_the_regions_token_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_keyring(monkeypatch)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(token.getpass, "getpass", lambda prompt: "typed-token")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli.main(["login", "--region", "jp"]) == 0
    assert "https://app.cupix-jp.works/settings/api" in capsys.readouterr().err


# -- tokens ----------------------------------------------------------------------------------


def _fake_keyring(monkeypatch: pytest.MonkeyPatch, usable: bool = True) -> dict[Any, str]:
    """A stand-in `keyring` module (the real one is an optional extra)."""
    store: dict[Any, str] = {}

    class FailKeyring:
        pass

    module = types.ModuleType("keyring")
    backends = types.ModuleType("keyring.backends")
    fail = types.ModuleType("keyring.backends.fail")
    fail.Keyring = FailKeyring  # type: ignore[attr-defined]
    module.get_keyring = lambda: object() if usable else FailKeyring()  # type: ignore[attr-defined]
    module.get_password = lambda s, u: store.get((s, u))  # type: ignore[attr-defined]
    module.set_password = lambda s, u, p: store.__setitem__((s, u), p)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "keyring", module)
    monkeypatch.setitem(sys.modules, "keyring.backends", backends)
    monkeypatch.setitem(sys.modules, "keyring.backends.fail", fail)
    return store


def _secret(tmp_path: Path, name: str, value: str, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def test_token_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _fake_keyring(monkeypatch)
    store[("cupixfs", "site")] = "from-keyring"
    cli_file = _secret(tmp_path, "cli", "from-cli-file")
    profile_file = _secret(tmp_path, "profile", "from-profile-file")
    monkeypatch.setenv("CUPIX_API_TOKEN", "from-env")
    assert token.find_token(cli_file, profile_file, "site") == (
        "from-cli-file",
        token.TokenSource("file", cli_file),
    )
    assert token.find_token(None, profile_file, "site") == (
        "from-env",
        token.TokenSource("environment"),
    )
    monkeypatch.delenv("CUPIX_API_TOKEN")
    assert token.find_token(None, profile_file, "site") == (
        "from-profile-file",
        token.TokenSource("file", profile_file),
    )
    assert token.find_token(None, None, "site") == (
        "from-keyring",
        token.TokenSource("keyring", profile="site"),
    )
    with pytest.raises(UsageError, match="no API token: set CUPIX_API_TOKEN"):
        token.find_token(None, None, "other")
    assert token.find_token(None, None, "other", required=False)[0] == ""  # --offline


def test_a_token_source_reads_the_token_there_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a running mount re-reads after a 401: the file or the keyring, never the env."""
    store = _fake_keyring(monkeypatch)
    store[("cupixfs", "site")] = "old"
    path = _secret(tmp_path, "t", "old")
    monkeypatch.setenv("CUPIX_API_TOKEN", "from-env")
    from_file = token.TokenSource("file", path)
    from_keyring = token.TokenSource("keyring", profile="site")
    from_env = token.TokenSource("environment")
    path.write_text("new-SECRET\n")
    store[("cupixfs", "site")] = "rotated"
    monkeypatch.setenv("CUPIX_API_TOKEN", "changed-env")
    assert from_file.read() == "new-SECRET"
    assert from_keyring.read() == "rotated"
    assert from_file.rereadable and from_keyring.rereadable and not from_env.rereadable
    with pytest.raises(UsageError, match="cannot be read again"):
        from_env.read()
    path.chmod(0o644)  # a rotation that got the mode wrong is refused, as at mount
    with pytest.raises(UsageError, match="readable by others"):
        from_file.read()
    del store[("cupixfs", "site")]
    with pytest.raises(UsageError, match="holds no token"):
        from_keyring.read()
    # Where it came from may be logged; the token never is.
    described = " ".join(map(str, (from_file, from_keyring, from_env)))
    assert str(path) in described and "cupixfs/site" in described and "CUPIX_API_TOKEN" in described
    assert "SECRET" not in repr(from_file) + described


def test_a_token_file_must_be_private_and_not_empty(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"readable by others \(mode 640\); run: chmod 600"):
        token.read_token_file(_secret(tmp_path, "t", "x", mode=0o640))
    with pytest.raises(UsageError, match="is empty"):
        token.read_token_file(_secret(tmp_path, "e", ""))
    with pytest.raises(UsageError, match="cannot read token file"):
        token.read_token_file(tmp_path / "missing")


def test_login_stores_the_token_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _fake_keyring(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("secret-token\n"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli.main(["login", "--profile", "site"]) == 2  # no such profile in no config file
    path = _config(tmp_path, 'default_profile = "site"\n[profiles.site]\n')
    assert cli.main(["login", "--config", str(path)]) == 0
    assert store == {("cupixfs", "site"): "secret-token"}
    assert "secret-token" not in capsys.readouterr().err


def test_login_without_a_usable_keyring(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_keyring(monkeypatch, usable=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("secret-token\n"))
    assert cli.main(["login"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no usable OS keyring" in err and "--token-file" in err
    assert sys.stdin.read() == "secret-token\n"  # refused before asking for the token
    monkeypatch.setitem(sys.modules, "keyring", None)  # None in sys.modules: ImportError
    assert cli.main(["login"]) == 2
    assert "keyring package is not installed" in capsys.readouterr().err


# -- the mount(8) helper ---------------------------------------------------------------------


def _helper_argv(*argv: str) -> list[str]:
    return mount_helper.cupixfs_argv(mount_helper.build_parser().parse_args(list(argv)))


def test_the_helper_translates_mount8s_convention() -> None:
    assert _helper_argv("cupixfs", "/mnt/c", "-o", "rw,token_file=/etc/t,_netdev") == [
        "mount",
        "/mnt/c",
        "-o",
        "token_file=/etc/t,_netdev",
    ]
    # mount(8) makes a source naming an existing path absolute; its last part still counts
    assert _helper_argv("/home/u/cupixfs", "/mnt/c", "-o", "rw") == ["mount", "/mnt/c"]
    assert _helper_argv("site-a", "/mnt/c", "-o", "rw,profile=b", "-s", "-n", "-v") == [
        "mount",
        "/mnt/c",
        "-o",
        "profile=site-a,profile=b",  # an explicit profile= comes later, so it wins
        "--sloppy",
    ]
    assert _helper_argv("none", "/m", "-o", 'api_url="http://h/a,b"') == [
        "mount",
        "/m",
        "-o",
        'api_url="http://h/a,b"',
    ]


def test_the_helper_fake_mount_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "main", lambda argv: pytest.fail("must not mount"))
    assert mount_helper.main(["cupixfs", "/mnt/c", "-f", "-o", "rw"]) == 0
    assert mount_helper.main(["cupixfs", "/mnt/c", "-N", "1234"]) == 1


# -- progress --------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_in_a_pipe_is_plain_lines_with_rate_and_eta() -> None:
    out, clock = io.StringIO(), _Clock()
    progress = Progress(10 << 20, 2, stream=out, tty=False, interval=5, clock=clock)
    clock.now += 1
    progress.add(1 << 20)  # not due yet
    assert out.getvalue() == ""
    clock.now += 4
    progress.add(4 << 20)
    assert out.getvalue() == (
        "prefetch: 5.0 MiB / 10.0 MiB (50.0%), 0/2 files, 1.0 MiB/s, ETA 5s\n"
    )
    clock.now += 5
    progress.add(5 << 20)
    progress.file_done()
    progress.file_done()
    progress.finish()
    last = out.getvalue().splitlines()[-1]
    assert last == "prefetch: 10.0 MiB / 10.0 MiB (100.0%), 2/2 files, 1.0 MiB/s, ETA 0s"
    assert "\r" not in out.getvalue()


def test_progress_on_a_terminal_redraws_one_line() -> None:
    out, clock = io.StringIO(), _Clock()
    progress = Progress(0, 0, stream=out, tty=True, clock=clock)
    clock.now += 1
    progress.finish()
    assert out.getvalue().startswith("\rprefetch: 0 B / 0 B (100.0%)")
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


# -- status ----------------------------------------------------------------------------------


def test_mount_type_reads_mountinfo_with_escaped_names(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "90 22 0:50 / /mnt/my\\040cupix rw,nosuid shared:2 - fuse.cupixfs cupixfs ro\n"
    )
    assert status_cmd.mount_type(Path("/mnt/my cupix"), str(mountinfo)) == "fuse.cupixfs"
    assert status_cmd.mount_type(Path("/"), str(mountinfo)) == "ext4"
    assert status_cmd.mount_type(Path("/mnt"), str(mountinfo)) is None


def test_the_status_table_reads_like_a_report() -> None:
    rows = dict(
        status_cmd.table(
            {
                "mountpoint": "/mnt/c",
                "uptime_s": 3725.0,
                "bytes": 3 << 20,
                "memory_hits": 6,
                "disk_hits": 2,
                "fetched": 2,
                "started": 1.0,
                "something_new": 5,
            }
        )
    )
    assert rows["uptime"] == "1h 02m" and rows["bytes fetched"] == "3.0 MiB"
    assert rows["hit ratio"] == "80.0%" and rows["something_new"] == "5"
    assert "started" not in rows
