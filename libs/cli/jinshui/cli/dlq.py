"""`jinshui dlq list | show SEQ | replay SEQ... | replay --all [--consumer NAME]`: the dead letters.

A dead letter is a copy, in the DLQ stream, of a message a consumer gave up on (see jinshui.kit.consumer):
the original payload and headers, plus `Jinshui-Dlq-*` headers saying which consumer, why, after how many
deliveries, and where the message came from.

Replay publishes the original payload and headers to the original subject, then deletes the dead letter.
Every consumer of that subject receives it again; those that had applied it skip it, since the inbox
records CloudEvent ids and the payload (hence the id) is unchanged. Its `Nats-Msg-Id` is the original one
with `~replay-<dead letter seq>` appended: not the original itself, which JetStream would drop as a duplicate
inside the stream's duplicate window (the failed consumer would never see it), and the same on every attempt
at one dead letter, so that a replay repeated after a crash (published, not yet deleted) is stored once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jinshui.cli import opsconn
from jinshui.contracts.streams import DLQ, DLQ_PREFIX, Naming

SHANGHAI = ZoneInfo("Asia/Shanghai")
DLQ_HEADER = "Jinshui-Dlq-"
REPLAYED_FROM = "Jinshui-Replayed-From"


@dataclass
class DeadLetter:
    seq: int
    time: datetime | None
    consumer: str
    subject: str
    reason: str
    deliveries: int | None
    source_stream: str
    source_seq: int | None
    msg_id: str | None
    headers: dict[str, str] = field(default_factory=dict)  # the original headers, without Jinshui-Dlq-*
    data: bytes = b""

    @property
    def event(self) -> dict[str, Any] | None:
        try:
            ev = json.loads(self.data)
        except ValueError:
            return None
        return ev if isinstance(ev, dict) else None

    def summary(self) -> dict[str, Any]:
        ev = self.event or {}
        return {
            "seq": self.seq,
            "time": self.time.isoformat() if self.time else None,
            "consumer": self.consumer,
            "subject": self.subject,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "source": {"stream": self.source_stream, "seq": self.source_seq},
            "msg_id": self.msg_id,
            "event_id": ev.get("id"),
            "event_type": ev.get("type"),
        }

    def detail(self) -> dict[str, Any]:
        out = self.summary()
        out["headers"] = self.headers
        try:
            out["payload"] = json.loads(self.data)
        except ValueError:
            try:
                out["payload_text"] = self.data.decode()
            except UnicodeDecodeError:
                out["payload_base64"] = base64.b64encode(self.data).decode()
        return out


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _from_raw(raw, naming: Naming) -> DeadLetter:
    headers = dict(raw.headers or {})
    dlq = {k[len(DLQ_HEADER) :].lower(): v for k, v in headers.items() if k.startswith(DLQ_HEADER)}
    original = {k: v for k, v in headers.items() if not k.startswith(DLQ_HEADER) and k != "Nats-Msg-Id"}
    subject = naming.unprefix(raw.subject)
    return DeadLetter(
        seq=raw.seq,
        time=raw.time,
        consumer=dlq.get("consumer") or subject.removeprefix(DLQ_PREFIX + "."),
        subject=dlq.get("subject", ""),
        reason=dlq.get("reason", ""),
        deliveries=_int(dlq.get("deliveries")),
        source_stream=dlq.get("stream", ""),
        source_seq=_int(dlq.get("sequence")),
        msg_id=dlq.get("msg-id"),
        headers=original,
        data=raw.data or b"",
    )


async def read(js: JetStreamContext, naming: Naming, *, consumer: str | None = None) -> list[DeadLetter]:
    """Every dead letter (of `consumer`, when given), oldest first."""
    stream = naming.stream(DLQ)
    subject = naming.subject(f"{DLQ_PREFIX}.{consumer}" if consumer else f"{DLQ_PREFIX}.>")
    out: list[DeadLetter] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return out
        out.append(_from_raw(raw, naming))
        seq = raw.seq + 1


async def get(js: JetStreamContext, naming: Naming, seq: int) -> DeadLetter | None:
    try:
        raw = await js.get_msg(naming.stream(DLQ), seq=seq)
    except NotFoundError:
        return None
    return _from_raw(raw, naming)


async def replay(js: JetStreamContext, naming: Naming, letter: DeadLetter) -> None:
    """Publish the dead letter's original message to its original subject, then delete the dead letter."""
    if not letter.subject:
        raise opsconn.OpsError(f"dead letter {letter.seq} does not say its original subject; not replayed")
    headers = dict(letter.headers)
    base = letter.msg_id or (letter.event or {}).get("id") or f"{letter.source_stream}:{letter.source_seq}"
    headers["Nats-Msg-Id"] = f"{base}~replay-{letter.seq}"
    headers[REPLAYED_FROM] = f"{naming.stream(DLQ)}:{letter.seq}"
    await js.publish(naming.subject(letter.subject), letter.data, headers=headers, timeout=10)
    await js.delete_msg(naming.stream(DLQ), letter.seq)


# ------------------------------------------------------------------------------------------- output


def _local(t: datetime | None) -> str:
    return t.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def table(letters: list[DeadLetter]) -> str:
    """The dead letters as a table (times in Asia/Shanghai)."""
    rows = [("SEQ", "TIME (+08:00)", "CONSUMER", "SUBJECT", "DELIV", "REASON")]
    for d in letters:
        reason = d.reason.replace("\n", " ")
        rows.append(
            (
                str(d.seq),
                _local(d.time),
                d.consumer,
                d.subject,
                str(d.deliveries or "-"),
                reason if len(reason) <= 70 else reason[:69] + "…",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5] for r in rows)


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2), flush=True)


# ------------------------------------------------------------------------------------------ commands


async def _run(args: argparse.Namespace) -> int:
    ep = opsconn.endpoints(args)
    if not ep.nats_url:
        raise opsconn.OpsError(f"no NATS to talk to: nothing runs from {ep.home} and NATS_URL is unset; try --nats-url")
    nc = await opsconn.connect_nats(ep.nats_url, home=ep.home)
    try:
        js = nc.jetstream(timeout=10)
        naming = opsconn.naming(args)
        if args.dlq_command == "list":
            letters = await read(js, naming, consumer=args.consumer)
            if args.json:
                _print_json([d.summary() for d in letters])
            elif letters:
                print(table(letters))
            else:
                print("no dead letters" + (f" of {args.consumer}" if args.consumer else ""))
            return 0
        if args.dlq_command == "show":
            letter = await get(js, naming, args.seq)
            if letter is None:
                print(f"no dead letter {args.seq}", file=sys.stderr)
                return 1
            detail = letter.detail()
            if args.json:
                _print_json(detail)
            else:
                for key in ("seq", "time", "consumer", "subject", "reason", "deliveries", "msg_id", "event_id"):
                    print(f"{key + ':':<12}{detail[key]}")
                print(f"{'source:':<12}{letter.source_stream} #{letter.source_seq}")
                print("headers:")
                for k, v in letter.headers.items():
                    print(f"  {k}: {v}")
                print("payload:")
                body = {k: v for k, v in detail.items() if k.startswith("payload")}
                print(json.dumps(next(iter(body.values())), ensure_ascii=False, indent=2))
            return 0
        # replay
        if args.all == bool(args.seq):
            print("replay: give dead letter numbers, or --all (with --consumer to narrow it)", file=sys.stderr)
            return 2
        if args.all:
            letters = await read(js, naming, consumer=args.consumer)
        else:
            letters = []
            for seq in args.seq:
                letter = await get(js, naming, seq)
                if letter is None:
                    print(f"no dead letter {seq}", file=sys.stderr)
                    return 1
                if args.consumer and letter.consumer != args.consumer:
                    print(f"dead letter {seq} is {letter.consumer}'s, not {args.consumer}'s", file=sys.stderr)
                    return 1
                letters.append(letter)
        for letter in letters:
            await replay(js, naming, letter)
            print(f"replayed {letter.seq} -> {letter.subject} ({letter.consumer}: {letter.reason[:60]})")
        print(f"{len(letters)} dead letter(s) replayed")
        return 0
    finally:
        await nc.close()


def cmd_dlq(args: argparse.Namespace) -> int:
    """List, show or replay dead letters."""
    try:
        return asyncio.run(_run(args))
    except opsconn.OpsError as e:
        print(f"jinshui dlq: {e}", file=sys.stderr)
        return 1


def add_parser(sub, default_home: str) -> None:
    p = sub.add_parser(
        "dlq",
        help="dead letters: list, show, replay after a fix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = p.add_subparsers(dest="dlq_command", required=True)
    ls = dsub.add_parser("list", help="what failed, where, why, how often")
    ls.add_argument("--consumer", help="only this durable consumer's dead letters")
    ls.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    show = dsub.add_parser("show", help="one dead letter with its original headers and payload")
    show.add_argument("seq", type=int, help="its sequence in the DLQ stream (the SEQ column of list)")
    show.add_argument("--json", action="store_true")
    rp = dsub.add_parser(
        "replay",
        help="publish to the original subject again, then delete the dead letter",
        description="Replay after the fix is deployed: consumers that had applied the message skip it.",
    )
    rp.add_argument("seq", type=int, nargs="*", help="dead letters to replay (their SEQ)")
    rp.add_argument("--all", action="store_true", help="every dead letter (of --consumer, when given)")
    rp.add_argument("--consumer", help="only this durable consumer's dead letters")
    for q in (ls, show, rp):
        opsconn.add_arguments(q, default_home)
    p.set_defaults(func=cmd_dlq)
