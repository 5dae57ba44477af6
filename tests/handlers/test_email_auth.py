"""SPF, DKIM, ARC and DMARC against the local DNS stub, with keys and signatures made here by
dkimpy; the one Authentication-Results header; DKIM signing with an incremental body hash."""

from __future__ import annotations

import base64
import smtplib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from support import WAIT

from smtp_core import Config
from smtpkit.handlers import (
    Accept,
    Context,
    Handler,
    HookResult,
    Message,
    Pipeline,
    Policy,
    Reject,
)
from smtpkit.handlers.policies import (
    POLICY_TYPES,
    Arc,
    BodyHasher,
    ConfigError,
    Dkim,
    DkimSign,
    Dmarc,
    Spf,
    build_policy,
    organizational_domain,
    resolver,
)
from smtpkit.transports import running_server

pytestmark = pytest.mark.timeout(60)

HOST = "mx.test"


def txt(value: str) -> str:
    """A TXT record's text form: quoted strings of at most 255 characters."""
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255)) or '""'


class Keys:
    """An RSA key pair: the PEM private key dkimpy signs with, the DNS record of the public."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.record = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def servers(stub: Any) -> list[str]:
    """The stub as `dns_servers`, its resolver's cache emptied (a port may be reused)."""
    given = [f"{stub.address[0]}:{stub.address[1]}"]
    resolver(given, 2.0).flush()
    return given


def context(
    sender: str = "alice@example.org",
    ip: str = "192.0.2.7",
    helo: str = "client.example",
    user: str | None = None,
    queue_id: str = "Q1",
) -> Context:
    ctx = Context()
    ctx.session = SimpleNamespace(  # type: ignore[assignment]
        client_ip=ip, helo_name=helo, user=user, hostname=HOST
    )
    ctx.envelope = SimpleNamespace(  # type: ignore[assignment]
        sender=sender, recipients=("bob@example.net",), queue_id=queue_id
    )
    return ctx


def mail(from_: str = "alice@example.org", body: str = "Hello.\r\n", extra: str = "") -> bytes:
    return (
        f"From: Alice <{from_}>\r\nTo: bob@example.net\r\nSubject: hi\r\n"
        f"Message-ID: <1@example.org>\r\n{extra}\r\n{body}"
    ).encode()


def signed(keys: Keys, content: bytes, domain: str = "example.org") -> bytes:
    signature = dkim.sign(content, b"sel", domain.encode(), keys.private)
    return signature + content


def edited(policy: Any, ctx: Context, message: Message) -> str:
    policy.edit(ctx, message)
    return message.read().decode()


# ----------------------------------------------------------------------------------- SPF

SPF_CASES = [
    ("v=spf1 ip4:192.0.2.0/24 -all", "pass", None),
    ("v=spf1 -all", "fail", 550),
    ("v=spf1 ~all", "softfail", None),
    ("v=spf1 ?all", "neutral", None),
    (None, "none", None),
    ("v=spf1 ip4:192.0.2.300 -all", "permerror", None),
    ("v=spf1 include:broken.example.org -all", "temperror", 451),
]


@pytest.mark.parametrize(("record", "result", "code"), SPF_CASES)
def test_spf_results_and_their_default_actions(
    dns_stub: Any, record: str | None, result: str, code: int | None
) -> None:
    if record is not None:
        dns_stub.records[("example.org", "TXT")] = [txt(record)]
    dns_stub.failing.add("broken.example.org")
    spf = Spf(dns_servers=servers(dns_stub), timeout=2.0)
    ctx = context()
    answer = spf.mail(ctx, "alice@example.org", None)  # type: ignore[arg-type]
    if code is None:
        assert answer is None
    else:
        assert isinstance(answer, Reject) and answer.code == code
        assert answer.text is not None
        assert answer.text.startswith("5.7.23" if code == 550 else "4.7.24")
    header = edited(spf, ctx, Message(mail()))
    assert f"\tspf={result} " in header and " smtp.mailfrom=alice@example.org\r\n" in header


def test_spf_actions_are_configurable_and_the_null_sender_checks_helo(dns_stub: Any) -> None:
    dns_stub.records[("client.example", "TXT")] = [txt("v=spf1 ~all")]
    spf = Spf(dns_servers=servers(dns_stub), timeout=2.0, softfail="reject")
    answer = spf.mail(context(sender=""), "", None)  # type: ignore[arg-type]
    assert isinstance(answer, Reject) and answer.code == 550
    with pytest.raises(ValueError, match="not a result"):
        Spf(pass_="reject")
    with pytest.raises(ValueError, match="not an action"):
        Spf(fail="bounce")


def test_spf_skips_authenticated_clients(dns_stub: Any) -> None:
    dns_stub.records[("example.org", "TXT")] = [txt("v=spf1 -all")]
    spf = Spf(dns_servers=servers(dns_stub), timeout=2.0)
    assert spf.mail(context(user="alice"), "alice@example.org", None) is None  # type: ignore[arg-type]
    assert dns_stub.queries == []


def test_one_resolver_caches_for_every_connection(dns_stub: Any) -> None:
    dns_stub.records[("example.org", "TXT")] = [txt("v=spf1 -all")]
    spf = Spf(dns_servers=servers(dns_stub), timeout=2.0)
    for queue in ("Q1", "Q2", "Q3"):
        spf.mail(context(queue_id=queue), "alice@example.org", None)  # type: ignore[arg-type]
    assert dns_stub.queries.count("example.org") == 1


# ---------------------------------------------------------------------------------- DKIM


def dkim_header(stub: Any, content: bytes, **options: Any) -> tuple[HookResult | None, str]:
    policy = Dkim(dns_servers=servers(stub), timeout=2.0, **options)
    ctx = context()
    message = Message(content)
    answer = policy.data(ctx, message)
    return answer, edited(policy, ctx, message)


def test_dkim_pass_names_the_signer(dns_stub: Any, keys: Keys) -> None:
    dns_stub.records[("sel._domainkey.example.org", "TXT")] = [txt(keys.record)]
    answer, text = dkim_header(dns_stub, signed(keys, mail()))
    assert answer is None
    assert "dkim=pass header.d=example.org header.s=sel header.b=" in text


def test_dkim_fail_none_permerror_temperror(dns_stub: Any, keys: Keys) -> None:
    dns_stub.records[("sel._domainkey.example.org", "TXT")] = [txt(keys.record)]
    tampered = signed(keys, mail()).replace(b"Hello.", b"Hellp.")
    assert "dkim=fail" in dkim_header(dns_stub, tampered)[1]
    assert "dkim=none" in dkim_header(dns_stub, mail())[1]
    answer, text = dkim_header(dns_stub, signed(keys, mail(), "nokey.example"))
    assert answer is None and "dkim=permerror" in text and "no key" in text
    dns_stub.failing.add("sel._domainkey.broken.example")
    answer, text = dkim_header(
        dns_stub, signed(keys, mail(), "broken.example"), temperror="tempfail"
    )
    assert isinstance(answer, Reject) and answer.code == 451 and answer.text is not None
    assert answer.text.startswith("4.7.20") and "dkim=temperror" in text


def test_dkim_above_max_scan_size_says_so(dns_stub: Any, keys: Keys) -> None:
    content = signed(keys, mail(body="x" * 5000 + "\r\n"))
    answer, text = dkim_header(dns_stub, content, max_scan_size=1000)
    assert answer is None
    assert 'dkim=policy reason="not checked: message larger than max_scan_size (1000' in text
    assert dns_stub.queries == []


# ----------------------------------------------------------------------------------- ARC


def test_arc_chain_pass_and_none(dns_stub: Any, keys: Keys) -> None:
    dns_stub.records[("sel._domainkey.forwarder.example", "TXT")] = [txt(keys.record)]
    content = b"Authentication-Results: forwarder.example; spf=pass\r\n" + mail()
    sealed = b"".join(
        dkim.arc_sign(content, b"sel", b"forwarder.example", keys.private, b"forwarder.example")
    )
    arc = Arc(dns_servers=servers(dns_stub), timeout=2.0)
    ctx = context()
    message = Message(sealed + content)
    assert arc.data(ctx, message) is None
    assert "arc=pass (i=1)" in edited(arc, ctx, message)
    ctx = context(queue_id="Q2")
    message = Message(mail())
    assert arc.data(ctx, message) is None
    assert "arc=none" in edited(arc, ctx, message)
    refusing = Arc(dns_servers=servers(dns_stub), timeout=2.0, fail="reject")
    broken = Message((sealed + content).replace(b"Hello.", b"Bye."))
    answer = refusing.data(context(queue_id="Q3"), broken)
    assert isinstance(answer, Reject) and answer.code == 550


# --------------------------------------------------------------------------------- DMARC


def dmarc_run(stub: Any, content: bytes, **options: Any) -> tuple[HookResult | None, str]:
    policy = Dmarc(dns_servers=servers(stub), timeout=2.0, **options)
    ctx = context()
    message = Message(content)
    answer = policy.data(ctx, message)
    return answer, edited(policy, ctx, message)


def test_dmarc_reject_refuses_unauthenticated_mail(dns_stub: Any) -> None:
    dns_stub.records[("_dmarc.example.org", "TXT")] = [txt("v=DMARC1; p=reject")]
    dns_stub.records[("example.org", "TXT")] = [txt("v=spf1 -all")]
    answer, text = dmarc_run(dns_stub, mail())
    assert isinstance(answer, Reject) and answer.code == 550
    assert answer.text == "5.7.1 Email rejected per DMARC policy for example.org"
    assert "dmarc=fail (p=reject dis=reject) header.from=example.org" in text
    assert "spf=fail" in text and "dkim=none" in text


def test_dmarc_pass_by_aligned_dkim_or_spf(dns_stub: Any, keys: Keys) -> None:
    dns_stub.records[("_dmarc.example.org", "TXT")] = [txt("v=DMARC1; p=reject")]
    dns_stub.records[("sel._domainkey.mail.example.org", "TXT")] = [txt(keys.record)]
    answer, text = dmarc_run(dns_stub, signed(keys, mail(), "mail.example.org"))
    assert answer is None and "dmarc=pass header.from=example.org" in text
    dns_stub.records[("example.org", "TXT")] = [txt("v=spf1 ip4:192.0.2.7 -all")]
    answer, text = dmarc_run(dns_stub, mail())
    assert answer is None and "dmarc=pass" in text and "spf=pass" in text


def test_dmarc_strict_alignment_and_subdomain_policy(dns_stub: Any, keys: Keys) -> None:
    dns_stub.records[("_dmarc.example.org", "TXT")] = [txt("v=DMARC1; p=none; sp=reject; adkim=s")]
    dns_stub.records[("sel._domainkey.example.org", "TXT")] = [txt(keys.record)]
    content = signed(keys, mail(from_="alice@news.example.org"), "example.org")
    answer, text = dmarc_run(dns_stub, content)
    assert isinstance(answer, Reject) and answer.code == 550  # sp=, strict: d= is not news.
    assert "(p=reject dis=reject) header.from=news.example.org" in text


def test_dmarc_quarantine_flags_and_none_accepts(dns_stub: Any) -> None:
    dns_stub.records[("_dmarc.example.org", "TXT")] = [txt("v=DMARC1; p=quarantine")]
    answer, text = dmarc_run(dns_stub, mail())
    assert answer is None
    assert "X-Spam-Flag: YES" in text and "dis=quarantine" in text
    answer, text = dmarc_run(dns_stub, mail(), quarantine="reject")
    assert isinstance(answer, Reject)
    dns_stub.records[("_dmarc.example.org", "TXT")] = [txt("v=DMARC1; p=none")]
    answer, text = dmarc_run(dns_stub, mail())
    assert answer is None and "X-Spam-Flag" not in text and "dis=none" in text


def test_dmarc_none_temperror_permerror(dns_stub: Any) -> None:
    answer, text = dmarc_run(dns_stub, mail())
    assert answer is None and "dmarc=none header.from=example.org" in text
    dns_stub.failing.add("_dmarc.example.org")
    answer, text = dmarc_run(dns_stub, mail())
    assert isinstance(answer, Reject) and answer.code == 451 and "dmarc=temperror" in text
    two = mail(extra="From: mallory@evil.example\r\n")
    answer, text = dmarc_run(dns_stub, two)
    assert answer is None and "dmarc=permerror" in text
    answer, _ = dmarc_run(dns_stub, two, permerror="reject")
    assert isinstance(answer, Reject) and answer.code == 550


def test_organizational_domain_uses_the_public_suffix_list() -> None:
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.example.org") == "example.org"
    assert organizational_domain("co.uk") == "co.uk"


# ------------------------------------------------------------------ Authentication-Results


def test_one_header_for_every_result_and_forgeries_removed(dns_stub: Any) -> None:
    dns_stub.records[("example.org", "TXT")] = [txt("v=spf1 ip4:192.0.2.7 -all")]
    dns_stub.records[("_dmarc.example.org", "TXT")] = [txt("v=DMARC1; p=reject")]
    options: dict[str, Any] = {"dns_servers": servers(dns_stub), "timeout": 2.0}
    policies = [Spf(**options), Dkim(**options), Dmarc(**options)]
    ctx = context()
    forged = (
        "Authentication-Results: MX.test; dkim=pass header.d=bank.example\r\n"
        "Authentication-Results: other.example; spf=pass\r\n"
    )
    message = Message(mail(extra=forged))
    assert policies[0].mail(ctx, "alice@example.org", None) is None  # type: ignore[arg-type]
    for policy in policies[1:]:
        assert policy.data(ctx, message) is None
    for policy in policies:
        policy.edit(ctx, message)
    text = message.read().decode()
    assert text.count("Authentication-Results:") == 2
    assert "bank.example" not in text and "other.example; spf=pass" in text
    assert text.startswith(
        "Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=alice@example.org;\r\n"
        "\tdkim=none;\r\n\tdmarc=pass header.from=example.org\r\n"
    )


def test_a_client_value_cannot_break_the_header(dns_stub: Any) -> None:
    spf = Spf(dns_servers=servers(dns_stub), timeout=2.0)
    sender = '"a\\"; dkim=pass x"@example.org'
    ctx = context(sender=sender)
    spf.mail(ctx, sender, None)  # type: ignore[arg-type]
    text = edited(spf, ctx, Message(mail()))
    assert 'smtp.mailfrom="\\"a\\\\\\"; dkim=pass x\\"@example.org"' in text


# ---------------------------------------------------------------------------- DKIM signing

BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b"Hello.\r\n",
    b"Hello.\r\n\r\n\r\n",
    b"  lead\t and  trail \t\r\n\r\n mid \r\n",
    b"a\r\n \t \r\nb\r\n \r\n\t\r\n",
    b"no final line end",
    b"x" * 200_000 + b"  \t \r\n" + b"y" * 70_000,
]


def dkimpy_body_hash(body: bytes, relaxed: bool) -> bytes:
    content = b"From: a@example.org\r\n\r\n" + body
    canon = (b"relaxed", b"relaxed" if relaxed else b"simple")
    private = Keys().private if not hasattr(dkimpy_body_hash, "key") else dkimpy_body_hash.key  # type: ignore[attr-defined]
    dkimpy_body_hash.key = private  # type: ignore[attr-defined]
    signature = dkim.sign(content, b"s", b"example.org", private, canonicalize=canon)
    tags = dkim.util.parse_tag_value(signature.split(b":", 1)[1])
    return base64.b64decode(b"".join(tags[b"bh"].split()))


def hashed(body: bytes, relaxed: bool, cuts: list[int]) -> bytes:
    hasher = BodyHasher(relaxed=relaxed)
    start = 0
    for cut in [*sorted(c % (len(body) + 1) for c in cuts), len(body)]:
        hasher.update(body[start:cut])
        start = max(start, cut)
    return hasher.digest()


@pytest.mark.parametrize("relaxed", [True, False])
@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_body_hash_equals_dkimpys_however_split(body: bytes, relaxed: bool) -> None:
    expected = dkimpy_body_hash(body, relaxed)
    assert hashed(body, relaxed, []) == expected
    assert hashed(body, relaxed, list(range(0, min(len(body), 300)))) == expected
    assert hashed(body, relaxed, [len(body) // 2, len(body) // 2 + 1]) == expected


@settings(deadline=None, max_examples=200)
@given(
    body=st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r\n", b"\r", b"bc"]), max_size=40),
    cuts=st.lists(st.integers(0, 200), max_size=6),
    relaxed=st.booleans(),
)
def test_body_hash_split_invariance(body: list[bytes], cuts: list[int], relaxed: bool) -> None:
    content = b"".join(body)
    assert hashed(content, relaxed, cuts) == dkimpy_body_hash(content, relaxed)


def sign_context(user: str | None = "alice") -> Context:
    return context(ip="198.51.100.1", user=user)


def test_dkim_sign_signs_what_dkimpy_verifies(tmp_path: Path, keys: Keys, dns_stub: Any) -> None:
    key_file = tmp_path / "sel.private"
    key_file.write_bytes(keys.private)
    signer = DkimSign("example.org", "sel", key_file, networks=["10.0.0.0/8"])
    body = "line  with   spaces \r\n" * 50_000 + "\r\n\r\n"
    message = Message.spooled(chunks=[mail(body=body)], size=len(mail(body=body)))
    message.add_header("X-Added", "by an earlier edit")
    signer.edit(sign_context(), message)
    content = message.read()
    assert content.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    dns_stub.records[("sel._domainkey.example.org", "TXT")] = [txt(keys.record)]
    assert "dkim=pass header.d=example.org" in dkim_header(dns_stub, content)[1]
    expected = dkim.sign(
        b"X-Added: by an earlier edit\r\n" + mail(body=body),
        b"sel",
        b"example.org",
        keys.private,
        canonicalize=(b"relaxed", b"relaxed"),
    )
    ours = dkim.util.parse_tag_value(content.split(b"\r\n\r\n")[0].split(b":", 1)[1])
    theirs = dkim.util.parse_tag_value(expected.split(b":", 1)[1])
    assert ours[b"bh"] == theirs[b"bh"]


def test_dkim_sign_only_for_trusted_clients_and_our_domain(tmp_path: Path, keys: Keys) -> None:
    key_file = tmp_path / "sel.private"
    key_file.write_bytes(keys.private)
    signer = DkimSign("example.org", "sel", key_file, networks=["10.0.0.0/8"])
    for ctx, content in [
        (sign_context(user=None), mail()),  # not authenticated, not in networks
        (sign_context(), mail(from_="a@other.example")),  # not our domain
    ]:
        message = Message(content)
        signer.edit(ctx, message)
        assert message.edits == ()
    message = Message(mail(from_="a@news.example.org"))
    signer.edit(context(ip="10.1.2.3"), message)
    assert message.read().startswith(b"DKIM-Signature:")
    with pytest.raises(ValueError, match="not an RSA private key"):
        (tmp_path / "bad").write_text("nonsense")
        DkimSign("example.org", "sel", tmp_path / "bad")


def test_signing_is_the_last_edit(tmp_path: Path, keys: Keys) -> None:
    key_file = tmp_path / "sel.private"
    key_file.write_bytes(keys.private)

    class Tagger(Policy):
        def edit(self, ctx: Context, message: Message) -> None:
            message.add_header("X-Tag", "yes")

    pipeline = Pipeline(DkimSign("example.org", "sel", key_file), Tagger(), deliver=Sink)
    handler = pipeline()
    ctx = sign_context()
    handler.bind(ctx.session, ctx.envelope)
    message = Message(mail())
    handler.data(message)
    assert message.read().startswith(b"DKIM-Signature:")
    assert b"X-Tag: yes" in message.read()


# ------------------------------------------------------------------------ configuration file


def test_each_type_builds_from_its_table(tmp_path: Path, keys: Keys) -> None:
    key_file = tmp_path / "sel.private"
    key_file.write_bytes(keys.private)
    shared = {"dns_servers": ["127.0.0.1:5353"]}
    spf = build_policy({"type": "spf", "softfail": "flag", "timeout": 2}, shared)
    assert isinstance(spf, Spf) and spf.resolver.servers == (("127.0.0.1", 5353),)
    assert isinstance(build_policy({"type": "dkim", "max_scan_size": 1000}, shared), Dkim)
    assert isinstance(build_policy({"type": "arc", "fail": "reject"}, shared), Arc)
    assert isinstance(build_policy({"type": "dmarc", "quarantine": "reject"}, shared), Dmarc)
    signer = build_policy(
        {
            "type": "dkim-sign",
            "domain": "example.org",
            "selector": "sel",
            "key_file": str(key_file),
            "networks": ["10.0.0.0/8"],
        }
    )
    assert isinstance(signer, DkimSign)
    assert {"spf", "dkim", "arc", "dmarc", "dkim-sign", "rspamd"} <= POLICY_TYPES.keys()


@pytest.mark.parametrize(
    ("table", "key", "why"),
    [
        ({"type": "spf", "fail": "bounce"}, "fail", "not an action"),
        ({"type": "spf", "pass": "reject"}, "pass", "not a key of type"),
        ({"type": "dmarc", "reject": 1}, "reject", "expected a string"),
        ({"type": "dkim-sign", "selector": "s", "key_file": "k"}, "domain", "missing"),
        (
            {"type": "dkim-sign", "domain": "d", "selector": "s", "key_file": "/nope"},
            "key_file",
            "cannot read",
        ),
        ({"type": "rspamd"}, "url", "missing"),
        ({"type": "rspamd", "url": "ftp://x"}, "url", "not an http"),
        ({"type": "rspamd", "url": "http://x", "unavailable": "maybe"}, "unavailable", "tempfail"),
    ],
)
def test_table_problems_name_the_key(table: dict[str, Any], key: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_policy(table)
    assert raised.value.key == key and why in raised.value.why


# ---------------------------------------------------------------------- through the server


class Sink(Handler):
    """Keeps what it was given."""

    received: list[bytes] = []

    def data(self, message: Message) -> HookResult:
        self.received.append(message.read())
        return Accept()


def test_through_the_server_header_added_and_dmarc_reject(dns_stub: Any) -> None:
    dns_stub.records[("example.org", "TXT")] = [txt("v=spf1 ip4:127.0.0.1 -all")]
    dns_stub.records[("_dmarc.example.org", "TXT")] = [txt("v=DMARC1; p=reject")]
    dns_stub.records[("_dmarc.evil.example", "TXT")] = [txt("v=DMARC1; p=reject")]
    options: dict[str, Any] = {"dns_servers": servers(dns_stub), "timeout": 2.0}
    Sink.received = []
    gateway = Pipeline(Spf(**options), Dkim(**options), Dmarc(**options), deliver=Sink)
    with (
        running_server(gateway, config=Config(hostname=HOST)) as server,
        smtplib.SMTP(server.host, server.port, timeout=WAIT) as smtp,
    ):
        smtp.ehlo("client.example")
        smtp.sendmail("alice@example.org", ["bob@example.net"], mail())
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("alice@example.org", ["bob@example.net"], mail(from_="ceo@evil.example"))
    assert refused.value.smtp_code == 550
    assert b"DMARC policy for evil.example" in refused.value.smtp_error
    (delivered,) = Sink.received
    assert delivered.startswith(b"Authentication-Results: mx.test;\r\n\tspf=pass")
    assert b"dmarc=pass header.from=example.org" in delivered
