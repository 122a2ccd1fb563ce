"""Accounts, roles, password hashing and sessions (auditor.accounts), and `auditor users`."""

from __future__ import annotations

import subprocess
import threading
import time
import sys

import duckdb
import pytest

from auditor import accounts
from auditor.accounts import AccountError


def test_password_hash_is_salted_scrypt_and_verifies(store):
    a, b = accounts.hash_password("correct horse"), accounts.hash_password("correct horse")
    assert a != b and a.startswith("scrypt$16384$8$1$")  # a fresh salt each time
    assert "correct horse" not in a
    assert accounts.verify_password("correct horse", a) and accounts.verify_password("correct horse", b)
    assert not accounts.verify_password("correct hors", a)
    assert not accounts.verify_password("x", "plain-text-password") and not accounts.verify_password("x", None)


def test_roles_allow_what_the_issue_says():
    expect = {
        "annotator": {"review"},
        "lead": {"review", "tune", "export", "guidelines"},
        "admin": {"review", "tune", "export", "guidelines", "load", "accounts"},
    }
    for role, allowed in expect.items():
        assert {a for a in accounts.PERMISSIONS if accounts.allowed(role, a)} == allowed
    assert not accounts.allowed("guest", "review")


def test_add_authenticate_and_store_no_clear_text(store):
    assert not accounts.has_accounts(store)
    accounts.add_user(store, "ada", "annotator", password="s3cret-pass")
    assert accounts.has_accounts(store)
    assert accounts.authenticate(store, "ada", "s3cret-pass") == accounts.User("ada", "annotator", None)
    assert accounts.authenticate(store, "ADA", "s3cret-pass").name == "ada"  # names are not case-sensitive
    assert accounts.authenticate(store, "ada", "wrong-pass") is None
    assert accounts.authenticate(store, "nobody", "s3cret-pass") is None
    dump = str(store.execute("SELECT * FROM users").fetchall())
    assert "s3cret-pass" not in dump
    with pytest.raises(AccountError, match="already exists"):
        accounts.add_user(store, "Ada", "lead", password="another-pass")
    with pytest.raises(AccountError, match="at least 8"):
        accounts.add_user(store, "bob", "annotator", password="short")
    with pytest.raises(AccountError, match="role must be"):
        accounts.add_user(store, "bob", "owner", password="long-enough")
    with pytest.raises(AccountError, match="account names"):
        accounts.add_user(store, "<b>x</b>", "annotator", password="long-enough")


def test_repeated_wrong_passwords_lock_the_name_out(store, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(accounts, "throttle", accounts.SignInThrottle(clock=lambda: now[0]))
    accounts.add_user(store, "eve", "annotator", password="right-password")
    for _ in range(accounts.MAX_FAILURES):
        assert accounts.authenticate(store, "eve", "guess") is None
    with pytest.raises(AccountError, match="too many failed sign-ins"):
        accounts.authenticate(store, "EVE ", "right-password")  # the same name however typed
    now[0] += accounts.LOCKOUT_SECONDS - 1
    with pytest.raises(AccountError, match="try again in 2 s"):
        accounts.authenticate(store, "eve", "right-password")
    now[0] += 2
    assert accounts.authenticate(store, "eve", "guess") is None  # the lockout has run out: a new series starts
    assert accounts.authenticate(store, "eve", "right-password").name == "eve"
    for _ in range(accounts.MAX_FAILURES - 1):  # a right password forgave the series before it
        assert accounts.authenticate(store, "eve", "guess") is None
    assert accounts.authenticate(store, "eve", "right-password").name == "eve"


def test_concurrent_wrong_passwords_lock_the_name_out(store, monkeypatch):
    """Each try is counted before the ~100 ms password check: 24 tries at once from 12 threads (the app's sessions)
    lock the name out, and no more than MAX_FAILURES of them reach the password check."""
    monkeypatch.setattr(accounts, "throttle", accounts.SignInThrottle())
    accounts.add_user(store, "eve", "annotator", password="right-password")
    checks, real = [], accounts.verify_password

    def slow_verify(password, stored):
        checks.append(password)
        time.sleep(0.1)
        return real(password, stored)

    monkeypatch.setattr(accounts, "verify_password", slow_verify)
    start = threading.Barrier(12)
    refused = []

    def attacker() -> None:
        cur = store.cursor()
        start.wait()
        for _ in range(2):
            try:
                assert accounts.authenticate(cur, "eve", "guess") is None
            except AccountError:
                refused.append(1)

    threads = [threading.Thread(target=attacker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checks) == accounts.MAX_FAILURES and len(refused) == 24 - accounts.MAX_FAILURES
    with pytest.raises(AccountError, match="too many failed sign-ins"):
        accounts.authenticate(store, "eve", "right-password")


def test_failed_sign_ins_cost_bounded_memory(store, monkeypatch):
    throttle = accounts.SignInThrottle(capacity=50)
    monkeypatch.setattr(accounts, "throttle", throttle)
    monkeypatch.setattr(accounts, "verify_password", lambda password, stored: False)
    for i in range(200):
        assert accounts.authenticate(store, f"{i}" + "x" * 100_000, "guess") is None
    assert len(throttle) == 50
    assert all(len(k) == 64 for k in throttle._tries)  # hashes, not the 100 kB names


def test_sessions_store_only_a_hash_expire_and_end_with_the_account(store):
    accounts.add_user(store, "ada", "lead", password="s3cret-pass")
    token = accounts.new_session(store, "ada", now=1000.0)
    assert token not in str(store.execute("SELECT * FROM sessions").fetchall())
    assert accounts.session_user(store, token, now=1001.0) == accounts.User("ada", "lead", None)
    assert accounts.session_user(store, token + "x", now=1001.0) is None
    assert accounts.session_user(store, None) is None
    # sliding expiry: used within the idle time it lives on; unused for longer it is gone
    later = 1000.0 + accounts.SESSION_IDLE_SECONDS - 10
    assert accounts.session_user(store, token, now=later) is not None
    assert accounts.session_user(store, token, now=later + accounts.SESSION_IDLE_SECONDS + 1) is None
    token = accounts.new_session(store, "ada", now=5000.0)
    accounts.add_user(store, "ada", "annotator", password="new-password", replace=True)  # role change signs out
    assert accounts.session_user(store, token, now=5001.0) is None
    token = accounts.new_session(store, "ada", now=6000.0)
    assert accounts.remove_user(store, "ada") and accounts.session_user(store, token, now=6001.0) is None
    assert not accounts.remove_user(store, "ada")


def test_oidc_email_maps_to_the_account(store):
    accounts.add_user(store, "lee", "lead", email="Lee@Example.com")
    assert accounts.user_by_email(store, "lee@example.COM") == accounts.User("lee", "lead", "lee@example.com")
    assert accounts.user_by_email(store, "other@example.com") is None
    assert accounts.authenticate(store, "lee", "") is None  # no password: OIDC only
    with pytest.raises(AccountError, match="already belongs"):
        accounts.add_user(store, "lea", "annotator", email="lee@example.com")


def test_local_user_without_accounts_is_an_admin(monkeypatch):
    monkeypatch.setenv("AUDITOR_USER", "grace")
    assert accounts.local_user() == accounts.User("grace", "admin")


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditor", *args], input=stdin, capture_output=True, text=True)


def test_users_command_adds_lists_and_removes(tmp_path):
    from auditor.store import open_store

    db = tmp_path / "u.duckdb"
    open_store(db).close()
    out = _cli("users", "add", "ada", "--role", "lead", "--password-stdin", "--db", str(db), stdin="pa55word-long\n")
    assert out.returncode == 0, out.stderr
    assert "pa55word-long" not in out.stdout + out.stderr
    out = _cli("users", "add", "ada", "--role", "lead", "--password-stdin", "--db", str(db), stdin="another-one\n")
    assert out.returncode == 2 and "already exists" in out.stderr
    out = _cli("users", "add", "bob", "--role", "annotator", "--db", str(db))
    assert out.returncode == 2 and "--password-stdin" in out.stderr
    listed = _cli("users", "list", "--db", str(db))
    assert "ada" in listed.stdout and "lead" in listed.stdout and "pa55word" not in listed.stdout
    con = duckdb.connect(str(db), read_only=True)
    stored = con.execute("SELECT password_hash FROM users WHERE name = 'ada'").fetchone()[0]
    con.close()
    assert accounts.verify_password("pa55word-long", stored)
    assert _cli("users", "remove", "ada", "--db", str(db)).returncode == 0
    assert _cli("users", "remove", "ada", "--db", str(db)).returncode == 2
    assert "no accounts" in _cli("users", "list", "--db", str(db)).stdout
