"""`smtpkit serve` and `check-config` with policies: [[policy]] tables, relay control by
default for a relaying handler, --relay-networks, --relay-domains and --open-relay."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from smtpkit.handlers import Pipeline, RelayHandler, SinkHandler
from smtpkit.handlers.policies import (
    POLICY_TYPES,
    CidrBlocklist,
    PasswordAuth,
    RecipientTable,
    RelayControl,
)
from smtpkit.transports._cli import CLIError, check_config, parse_serve

RELAY = ["--handler", "relay", "--relay", "127.0.0.1:2525"]


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def controls(factory: object) -> RelayControl:
    assert isinstance(factory, Pipeline)
    [control] = [p for p in factory.policies if isinstance(p, RelayControl)]
    return control


def test_relay_without_a_file_relays_for_loopback_and_authenticated_clients() -> None:
    control = controls(parse_serve(RELAY).factory)
    assert "127.0.0.1" in control.networks and "::1" in control.networks
    assert "10.0.0.1" not in control.networks
    assert control.authenticated and not control.domains


def test_relay_networks_and_domains_replace_the_default() -> None:
    argv = [*RELAY, "--relay-networks", "10.0.0.0/8", "--relay-domains", "Example.ORG"]
    control = controls(parse_serve(argv).factory)
    assert "10.1.2.3" in control.networks and "127.0.0.1" not in control.networks
    assert control.domains == frozenset({"example.org"})
    with pytest.raises(CLIError, match="--relay-networks"):
        parse_serve([*RELAY, "--relay-networks", "nonsense"])


def test_open_relay_has_no_relay_control() -> None:
    command = parse_serve([*RELAY, "--open-relay"])
    assert isinstance(command.factory, __import__("functools").partial)
    assert command.factory.func is RelayHandler
    with pytest.raises(CLIError, match="--relay-networks goes against --open-relay"):
        parse_serve([*RELAY, "--open-relay", "--relay-networks", "10.0.0.0/8"])


def test_a_keeping_handler_needs_no_relay_control() -> None:
    assert parse_serve(["--handler", "sink"]).factory is SinkHandler


def test_policies_from_the_file_in_order(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:wonderland\n")
    config = write(
        tmp_path / "gw.toml",
        """
        listen = ["127.0.0.1:0"]
        auth_allow_plaintext = true

        [[policy]]
        type = "cidr-blocklist"
        networks = ["192.0.2.0/24"]

        [[policy]]
        type = "relay-control"
        networks = ["10.0.0.0/8"]

        [[policy]]
        type = "recipient-table"
        addresses = ["bob@example.org"]

        [deliver]
        type = "relay"
        host = "127.0.0.1"
        """,
    )
    pipeline = parse_serve(["--config", config]).factory
    assert isinstance(pipeline, Pipeline)
    kinds = [type(p) for p in pipeline.policies]
    assert kinds == [CidrBlocklist, RelayControl, RecipientTable]
    assert "127.0.0.1" not in controls(pipeline).networks  # written out: exactly its networks
    # --auth-file on the command line adds (or replaces) the password check.
    pipeline = parse_serve(["--config", config, "--auth-file", str(users)]).factory
    assert isinstance(pipeline, Pipeline) and isinstance(pipeline.policies[0], PasswordAuth)
    # --handler replaces [deliver]; the policies stay.
    pipeline = parse_serve(["--config", config, "--handler", "sink"]).factory
    assert isinstance(pipeline, Pipeline) and pipeline.deliverer_class is SinkHandler


def test_a_file_that_relays_without_relay_control_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(
        tmp_path / "open.toml",
        """
        [[policy]]
        type = "cidr-blocklist"
        networks = ["192.0.2.0/24"]

        [deliver]
        type = "relay"
        host = "127.0.0.1"
        """,
    )
    assert check_config(config) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{config}:2: policy[1]: ")
    assert "without relay control" in line
    assert "a [[policy]] of type relay-control, or open_relay = true" in line
    ok = write(tmp_path / "ok.toml", "open_relay = true\n" + (tmp_path / "open.toml").read_text())
    assert check_config(ok) == 0


def test_check_config_names_file_line_and_key_of_a_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(
        tmp_path / "broken.toml",
        """
        dns_servers = ["resolver.example"]

        [[policy]]
        type = "relay-control"
        networks = ["10.0.0.0/8"]

        [[policy]]
        type = "dnsbl"
        zone = "zen.example"

        [[policy]]
        type = "password-auth"
        file = "/nonexistent/users"

        [[policy]]
        type = "greylisting"
        """,
    )
    assert check_config(config) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{config}:1: dns_servers: 'resolver.example' is not ADDRESS or ADDRESS:PORT",
        f'{config}:7: policy[2].zones: missing: the DNS zones to ask, e.g. ["zen.spamhaus.org"]',
        f"{config}:13: policy[3].file: cannot read /nonexistent/users: No such file or directory",
        f"{config}:16: policy[4].type: 'greylisting' is not a policy type: one of "
        + ", ".join(POLICY_TYPES),
    ]


@pytest.mark.parametrize("name", ["gateway", "mta", "catcher"])
def test_the_example_files_parse(name: str) -> None:
    """They name files of /etc, and a state folder of /var/lib, that the tests do not have;
    every other key is good."""
    from smtpkit.transports._configfile import read_config

    path = str(Path(__file__).resolve().parents[1] / "examples" / f"{name}.toml")
    problems = [p.format(path) for p in read_config(path).problems]
    missing = ("/etc/smtpkit/", "/var/lib/smtpkit")
    assert all(any(m in problem for m in missing) for problem in problems), problems
