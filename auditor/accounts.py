"""Accounts, roles, password hashing and sign-in sessions of the app (tables ``users`` and ``sessions``, schema 3).

Roles, each with everything the one before it may do:

``annotator``  reviews (the Review page);
``lead``       also tunes and saves bands (Histograms), exports, and sets the review guidelines;
``admin``      also loads data (the Load page, server paths inside the data root) and manages accounts.

Once one account exists, every page of the app requires sign-in. Without accounts the app is a local single-user
tool: it binds 127.0.0.1 and the person who started it acts as admin (:func:`local_user`).

Passwords are hashed with scrypt (``hashlib.scrypt``, N=2**14, r=8, p=1, a 16-byte random salt per password) and
compared in constant time; the clear text is never stored or logged. A sign-in creates a session: a random 256-bit
token that only the browser keeps (in a cookie); the store keeps its SHA-256, the account name and an expiry, so a
stolen copy of the store does not sign anyone in, and the identity always comes from the store, never from the client.
OIDC sign-in (``st.login``) maps the provider's e-mail address to the account registered with that ``email``.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from auditor.store import transaction

ROLES = ("annotator", "lead", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}

#: What each role may do, by the least role that may do it.
PERMISSIONS = {"review": "annotator", "tune": "lead", "export": "lead", "guidelines": "lead", "load": "admin",
               "accounts": "admin"}

#: A session lasts this long after the last page view (sliding), at most SESSION_MAX_SECONDS after sign-in.
SESSION_IDLE_SECONDS = 12 * 3600
SESSION_MAX_SECONDS = 7 * 24 * 3600
MIN_PASSWORD = 8
#: After this many failed sign-ins for one name, further tries wait LOCKOUT_SECONDS (per process).
MAX_FAILURES = 5
LOCKOUT_SECONDS = 60

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class AccountError(ValueError):
    """A refused account operation, explained in words."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    email: str | None = None

    def can(self, action: str) -> bool:
        return allowed(self.role, action)


def allowed(role: str, action: str) -> bool:
    """Whether ``role`` may do ``action`` (a key of PERMISSIONS)."""
    return _RANK.get(role, -1) >= _RANK[PERMISSIONS[action]]


def local_user() -> User:
    """Who runs a local single-user app (no accounts): AUDITOR_USER, else the operating system's login name."""
    name = os.environ.get("AUDITOR_USER", "").strip()
    if not name:
        try:
            name = getpass.getuser()
        except Exception:  # noqa: BLE001 - no login name in some containers
            name = "local"
    return User(name=name, role="admin")


# --------------------------------------------------------------------------------------------------------------
# passwords


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored`` (constant-time comparison; False for anything malformed)."""
    try:
        kind, n, r, p, salt, digest = (stored or "").split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


#: Checked against when a name has no password, so an unknown name costs as much time as a wrong password.
_DUMMY_HASH = hash_password(secrets.token_hex(16))


# --------------------------------------------------------------------------------------------------------------
# accounts


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise AccountError(
            f"account names are 1-64 letters, digits and . _ @ + - (starting with a letter or digit); got {name!r}"
        )
    return name


def has_accounts(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT 1 FROM users LIMIT 1").fetchall())


def add_user(
    con: duckdb.DuckDBPyConnection, name: str, role: str, *, password: str | None = None, email: str | None = None,
    replace: bool = False,
) -> User:
    """Create an account (or, with ``replace``, change an existing one's role, password and e-mail)."""
    name = check_name(name)
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    if password is None and not email:
        raise AccountError("an account needs a password (--password-stdin) or an e-mail address for OIDC (--email)")
    if password is not None and len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")
    if email is not None:
        email = email.strip().lower()
        if not _EMAIL.match(email):
            raise AccountError(f"not an e-mail address: {email!r}")
        other = con.execute("SELECT name FROM users WHERE email = ? AND name <> ?", [email, name]).fetchall()
        if other:
            raise AccountError(f"the e-mail address {email} already belongs to account {other[0][0]!r}")
    hashed = hash_password(password) if password is not None else None
    exists = con.execute("SELECT name FROM users WHERE lower(name) = lower(?)", [name]).fetchall()
    if exists and exists[0][0] != name:
        raise AccountError(f"account {exists[0][0]!r} already exists (names are not case-sensitive)")
    if exists and not replace:
        raise AccountError(f"account {name!r} already exists (use --replace to change it)")
    with transaction(con):  # a changed password never outlives the sessions it should have ended
        if exists:
            con.execute(
                "UPDATE users SET role = ?, password_hash = coalesce(?, password_hash), email = coalesce(?, email) "
                "WHERE name = ?", [role, hashed, email, name])
            end_sessions(con, name)  # a changed password or role signs the account out everywhere
        else:
            con.execute("INSERT INTO users (name, role, password_hash, email) VALUES (?, ?, ?, ?)",
                        [name, role, hashed, email])
    return User(name, role, email)


def remove_user(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Delete an account, its sessions and its leases; its verdicts stay (the audit trail). False when unknown."""
    if not con.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchall():
        return False
    with transaction(con):
        con.execute("DELETE FROM sessions WHERE name = ?", [name])
        con.execute("DELETE FROM leases WHERE annotator = ?", [name])
        con.execute("DELETE FROM users WHERE name = ?", [name])
    return True


def list_users(con: duckdb.DuckDBPyConnection) -> list[dict]:
    rows = con.execute(
        "SELECT name, role, email, password_hash IS NOT NULL, created_at FROM users ORDER BY name").fetchall()
    return [{"name": n, "role": r, "email": e, "password": p, "created_at": str(c)} for n, r, e, p, c in rows]


def get_user(con: duckdb.DuckDBPyConnection, name: str) -> User | None:
    row = con.execute("SELECT name, role, email FROM users WHERE name = ?", [name]).fetchall()
    return User(*row[0]) if row else None


def user_by_email(con: duckdb.DuckDBPyConnection, email: str | None) -> User | None:
    if not email:
        return None
    row = con.execute("SELECT name, role, email FROM users WHERE email = ?", [email.strip().lower()]).fetchall()
    return User(*row[0]) if row else None


def _sign_in_name(name: str | None) -> str:
    """A name as typed at sign-in, as accounts are looked up (and throttled): case and outer spaces do not count."""
    return (name or "").strip().lower()


class SignInThrottle:
    """Failed sign-ins per name, counted *before* the password is checked.

    The check takes ~100 ms (scrypt); a counter read before it and written after lets concurrent tries all read the
    same count (24 wrong passwords from 12 sessions once locked nothing out). Each try is therefore counted under
    the lock as it starts and forgiven only when the password proves right. Names are kept as hashes, at most
    ``capacity`` of them (the oldest forgotten first), so a flood of long or random names costs bounded memory.
    """

    def __init__(self, capacity: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.capacity = capacity
        self.clock = clock
        self._tries: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(name: str) -> str:
        return hashlib.sha256(_sign_in_name(name).encode("utf-8", "surrogatepass")).hexdigest()

    def begin(self, name: str) -> None:
        """Count a try for ``name``; raise AccountError while it is locked out."""
        key, now = self._key(name), self.clock()
        with self._lock:
            count, until = self._tries.get(key, (0, 0.0))
            if count >= MAX_FAILURES:
                if now < until:
                    raise AccountError(f"too many failed sign-ins: try again in {int(until - now) + 1} s")
                count = 0  # the lockout has run out: a fresh series of tries
            count += 1
            self._tries[key] = (count, now + LOCKOUT_SECONDS if count >= MAX_FAILURES else 0.0)
            self._tries.move_to_end(key)
            while len(self._tries) > self.capacity:
                self._tries.popitem(last=False)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._tries.pop(self._key(name), None)

    def __len__(self) -> int:
        return len(self._tries)


#: The process's sign-in throttle (the app is one process; a restart forgets it).
throttle = SignInThrottle()


def authenticate(con: duckdb.DuckDBPyConnection, name: str, password: str) -> User | None:
    """The account when ``password`` is right; None otherwise (unknown names take as long as wrong passwords).

    Raises AccountError while a name is locked out after MAX_FAILURES wrong passwords in a row.
    """
    throttle.begin(name)
    key = _sign_in_name(name)
    row = con.execute("SELECT name, role, email, password_hash FROM users WHERE lower(name) = ?", [key]).fetchall()
    ok = verify_password(password or "", row[0][3] if row and row[0][3] else _DUMMY_HASH) and bool(row)
    if ok:
        throttle.succeeded(name)
    return User(*row[0][:3]) if ok else None


# --------------------------------------------------------------------------------------------------------------
# sessions


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session(con: duckdb.DuckDBPyConnection, name: str, now: float | None = None) -> str:
    """Start a session for account ``name``; returns the token (kept by the browser only)."""
    now = time.time() if now is None else now
    token = secrets.token_urlsafe(32)
    con.execute("DELETE FROM sessions WHERE expires_at <= ? OR created_at_s <= ?", [now, now - SESSION_MAX_SECONDS])
    con.execute("INSERT INTO sessions (token_hash, name, created_at_s, expires_at) VALUES (?, ?, ?, ?)",
                [_token_hash(token), name, now, now + SESSION_IDLE_SECONDS])
    return token


def session_user(con: duckdb.DuckDBPyConnection, token: str | None, now: float | None = None) -> User | None:
    """The account a session token belongs to, if the session is live; extends it (sliding expiry)."""
    if not isinstance(token, str) or not token or len(token) > 200:
        return None
    now = time.time() if now is None else now
    row = con.execute(
        """SELECT u.name, u.role, u.email, s.expires_at FROM sessions s JOIN users u ON u.name = s.name
           WHERE s.token_hash = ? AND s.expires_at > ? AND s.created_at_s > ?""",
        [_token_hash(token), now, now - SESSION_MAX_SECONDS],
    ).fetchall()
    if not row:
        return None
    if row[0][3] - now < SESSION_IDLE_SECONDS - 60:  # at most one write a minute per session
        con.execute("UPDATE sessions SET expires_at = ? WHERE token_hash = ?",
                    [now + SESSION_IDLE_SECONDS, _token_hash(token)])
    return User(*row[0][:3])


def end_session(con: duckdb.DuckDBPyConnection, token: str | None) -> None:
    if token:
        con.execute("DELETE FROM sessions WHERE token_hash = ?", [_token_hash(token)])


def end_sessions(con: duckdb.DuckDBPyConnection, name: str) -> None:
    con.execute("DELETE FROM sessions WHERE name = ?", [name])
