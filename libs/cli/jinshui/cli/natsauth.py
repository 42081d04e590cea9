"""NATS users and permissions: one user per service, allowed to publish only on its own subjects.

One table (`PUBLISHES`) renders the `authorization { users = [...] }` block of a nats-server configuration:
the checked-in `deploy/nats/accounts.conf` (passwords as environment variables, no prefix), and the embedded
servers of `jinshui up` and the tests (literal passwords; an admin user for tools and test helpers).

Deployment prefix: subjects are `<prefix>.<domain>...` when JINSHUI_STREAM_PREFIX is set. `render` takes the
prefix the server serves: "" (none), a fixed one ("site1": `site1.registry.>`), or ANY_PREFIX ("*": both
`registry.>` and `*.registry.>`), which the tests use, as every test has a prefix of its own on one server.
ANY_PREFIX is looser than a fixed prefix (the registry may then publish `risk.registry.x`): it is for tests;
a deployment renders its own prefix.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from jinshui.cli.stack import SERVICES
from jinshui.contracts import streams
from jinshui.contracts.streams import Naming, StreamDef

__all__ = [
    "ADMIN_USER",
    "ANY_PREFIX",
    "PUBLISHES",
    "READS",
    "jetstream_api",
    "load_or_create_passwords",
    "password_variable",
    "render",
    "service_users",
]

ANY_PREFIX = "*"
ADMIN_USER = "admin"

# What each service's user may publish, beyond the JetStream API (subjects without the deployment prefix).
PUBLISHES: dict[str, tuple[str, ...]] = {
    # Its domain; the audit of personal-data reads; dead letters of its consumers.
    "registry": ("registry.>", "audit.>", "dlq.>"),
    "incidents": ("incidents.>", "dlq.>"),
    "risk": ("risk.>", "dlq.>"),
    # What the outside world submitted, gate sightings, the audit of what it served; dead letters of its
    # consumers (the submissions' settlements it folds).
    "gateway": ("intake.>", "sightings.>", "audit.>", "dlq.>"),
}
# The streams each service reads: its durable consumers, and the gateway's ordered consumers (the alert feed on
# RISK, the assignments it narrows the feed with on REGISTRY). Only on these may it create consumers and fetch.
READS: dict[str, tuple[StreamDef, ...]] = {
    "registry": (streams.INTAKE, streams.AUDIT),
    "incidents": (streams.REGISTRY, streams.INTAKE),
    "risk": (streams.REGISTRY, streams.INCIDENTS, streams.SIGHTINGS),
    "gateway": (streams.REGISTRY, streams.INCIDENTS, streams.RISK),
}
# The gateway keeps idempotency keys and submission outcomes in KV buckets (jinshui.gateway.submissions).
KV_BUCKETS: dict[str, tuple[str, ...]] = {"gateway": ("submissions", "idempotency")}
# Acks of what a service consumed and flow-control replies of ordered push consumers (JetStream's own subjects,
# not prefixed). The JetStream API is narrowed per service: jetstream_api().
JETSTREAM_PUBLISH = ("$JS.ACK.>", "$JS.FC.>")
JS_API = "$JS.API"
# Replies to requests (JetStream publish acks, API answers) and pull/push deliveries all arrive on inboxes.
SUBSCRIBE = ("_INBOX.>",)


def _prefixed(subject: str, prefix: str) -> list[str]:
    if not prefix:
        return [subject]
    if prefix == ANY_PREFIX:
        return [subject, f"{ANY_PREFIX}.{subject}"]
    return [f"{prefix}.{subject}"]


def _names(names: list[str], prefix: str) -> list[str]:
    # A stream or bucket name carries the prefix inside its one token (T1_RISK): with ANY_PREFIX only a token
    # wildcard can stand for it, so the names are not told apart there (the verbs still are).
    return ["*"] if prefix == ANY_PREFIX else names


def _streams(defs, prefix: str) -> list[str]:
    return _names([Naming(prefix).stream(d) for d in defs], prefix)


def _buckets(service: str, prefix: str) -> list[str]:
    return _names([f"{prefix}_{b}" if prefix else b for b in KV_BUCKETS.get(service, ())], prefix)


def jetstream_api(service: str, prefix: str = "") -> list[str]:
    """The JetStream API subjects `service` may call: create and update every stream (each service provisions
    them all at start, so that none waits on another), read the info of the streams it reads (the gateway: of
    all, for /v1/ops/status), and create, read and fetch consumers on those streams only; the gateway also its
    KV buckets. Never delete or purge a stream, delete or reset a consumer, or delete a stored message."""
    api = []
    for name in _streams(streams.ALL_STREAMS, prefix):
        api += [f"{JS_API}.STREAM.CREATE.{name}", f"{JS_API}.STREAM.UPDATE.{name}"]
    reads = _streams(READS[service], prefix)
    for name in _streams(streams.ALL_STREAMS, prefix) if service == "gateway" else reads:
        api.append(f"{JS_API}.STREAM.INFO.{name}")
    for name in reads:
        api += [
            f"{JS_API}.CONSUMER.CREATE.{name}",  # ephemeral (ordered) consumers
            f"{JS_API}.CONSUMER.CREATE.{name}.>",
            f"{JS_API}.CONSUMER.DURABLE.CREATE.{name}.>",
            f"{JS_API}.CONSUMER.INFO.{name}.>",
            f"{JS_API}.CONSUMER.MSG.NEXT.{name}.>",
        ]
    for bucket in _buckets(service, prefix):
        kv = "*" if bucket == "*" else f"KV_{bucket}"
        api += [
            f"{JS_API}.STREAM.CREATE.{kv}",
            f"{JS_API}.STREAM.INFO.{kv}",
            f"{JS_API}.STREAM.MSG.GET.{kv}",
            f"{JS_API}.DIRECT.GET.{kv}",
            f"{JS_API}.DIRECT.GET.{kv}.>",
        ]
    return list(dict.fromkeys(api))


def publish_allow(service: str, prefix: str = "") -> list[str]:
    """The subjects `service`'s user may publish to."""
    own = [s for subject in PUBLISHES[service] for s in _prefixed(subject, prefix)]
    kv = [f"$KV.{bucket}.>" for bucket in _buckets(service, prefix)]
    return own + jetstream_api(service, prefix) + list(JETSTREAM_PUBLISH) + kv


def password_variable(service: str) -> str:
    """The environment variable the checked-in configuration reads the service's password from."""
    return f"JINSHUI_NATS_{service.upper()}_PASSWORD"


def _strings(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in items) + "]"


def render(passwords: Mapping[str, str] | None = None, *, prefix: str = "", admin_password: str | None = None) -> str:
    """The `authorization` block: a user per service (and an admin that may do everything, when given).

    Without `passwords`, each password is the environment variable `password_variable(service)`, which
    nats-server resolves when it reads the file.
    """
    lines = ["authorization {", "  users = ["]
    for service in PUBLISHES:
        password = json.dumps(passwords[service]) if passwords is not None else "$" + password_variable(service)
        lines += [
            f'    {{user: "{service}", password: {password}, permissions: {{',
            f"      publish: {{allow: {_strings(publish_allow(service, prefix))}}},",
            f"      subscribe: {{allow: {_strings(list(SUBSCRIBE))}}}",
            "    }}",
        ]
    if admin_password is not None:
        lines.append(f'    {{user: "{ADMIN_USER}", password: {json.dumps(admin_password)}}}')
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def checked_in() -> str:
    """What deploy/nats/accounts.conf holds."""
    header = (
        "# Rendered by jinshui.cli.natsauth.render() (tests/test_compose.py checks it): do not edit by hand.\n"
        "# One user per service; passwords come from the nats-server's environment.\n"
    )
    return header + render()


def load_or_create_passwords(path: Path) -> dict[str, str]:
    """Passwords of the service users and the admin, kept in `path` (made once, readable by its owner only)."""
    path = Path(path)
    try:
        known = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        known = {}
    wanted = [*SERVICES, ADMIN_USER]
    if not all(isinstance(known.get(u), str) and known[u] for u in wanted):
        known = {u: known.get(u) or secrets.token_urlsafe(24) for u in wanted}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)
    return {u: known[u] for u in wanted}


def service_users(passwords: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """(user, password) for each service, as Stack takes them."""
    return {service: (service, passwords[service]) for service in PUBLISHES}
