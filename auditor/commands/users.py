"""`auditor users add|list|remove`: the app's accounts and roles (see auditor.accounts)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "users",
        help="manage the app's accounts (annotator, lead, admin)",
        description=(
            "Accounts of the web app, stored in the store. Once one account exists, every page of the app asks to "
            "sign in; without accounts the app is a local single-user tool bound to 127.0.0.1. Roles: annotator "
            "(reviews), lead (also tunes and saves bands, exports, sets the review guidelines), admin (also loads "
            "data and manages accounts). Passwords are read from standard input (--password-stdin, first line), "
            "hashed with scrypt and a random salt, and never stored or printed in clear. The store must not be open "
            "in the app while you change accounts (DuckDB lets one process write a file)."
        ),
    )
    usub = p.add_subparsers(dest="users_command", metavar="ACTION")
    usub.required = True
    add = usub.add_parser(
        "add", help="create an account (or change one with --replace)",
        description="Create an account. Example: `printf '%%s\\n' \"$PW\" | auditor users add ada --role annotator "
                    "--password-stdin --db audit.duckdb`. With --email, the OIDC sign-in (st.login, [auth] in "
                    ".streamlit/secrets.toml) maps that address to the account.",
    )
    add.add_argument("name", help="account name (letters, digits, . _ @ + -)")
    add.add_argument("--role", required=True, choices=["annotator", "lead", "admin"])
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--email", help="e-mail address that OIDC sign-in maps to this account")
    add.add_argument("--replace", action="store_true", help="change an existing account (signs it out everywhere)")
    add.add_argument("--db", required=True, help="store file")
    add.set_defaults(func=run_add)
    ls = usub.add_parser("list", help="list the accounts", description="List the accounts (never the passwords).")
    ls.add_argument("--db", required=True, help="store file")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run_list)
    rm = usub.add_parser("remove", help="delete an account",
                         description="Delete an account, its sessions and its leases; its verdicts stay.")
    rm.add_argument("name")
    rm.add_argument("--db", required=True, help="store file")
    rm.set_defaults(func=run_remove)


def _read_password() -> str:
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def run_add(args: argparse.Namespace) -> int:
    from auditor import accounts
    from auditor.cli import UserError
    from auditor.store import open_store

    password = _read_password() if args.password_stdin else None
    if password is None and not args.email:
        raise UserError("give --password-stdin (and the password on standard input) or --email for OIDC sign-in")
    con = open_store(args.db)
    try:
        user = accounts.add_user(con, args.name, args.role, password=password, email=args.email,
                                 replace=args.replace)
    except accounts.AccountError as exc:
        raise UserError(str(exc)) from None
    finally:
        con.close()
    how = ", ".join(x for x in ("password" if password is not None else "", f"e-mail {user.email}" if user.email
                                else "") if x)
    print(f"{'changed' if args.replace else 'added'} account {user.name} ({user.role}; signs in with {how})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from auditor import accounts
    from auditor.store import open_store

    con = open_store(args.db, read_only=True)
    try:
        users = accounts.list_users(con)
    finally:
        con.close()
    if args.json:
        print(json.dumps(users, indent=1))
    elif not users:
        print("no accounts: the app is a local single-user tool (127.0.0.1 only)")
    else:
        print(f"{'name':<24} {'role':<10} {'password':<9} e-mail")
        for u in users:
            print(f"{u['name']:<24} {u['role']:<10} {'yes' if u['password'] else 'no':<9} {u['email'] or ''}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from auditor import accounts
    from auditor.cli import UserError
    from auditor.commands.args import existing_store

    con = existing_store(args.db)
    try:
        removed = accounts.remove_user(con, args.name)
    finally:
        con.close()
    if not removed:
        raise UserError(f"no account named {args.name!r}")
    print(f"removed account {args.name} (its verdicts stay in the store)")
    return 0
