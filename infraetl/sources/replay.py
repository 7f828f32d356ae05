"""Replay users from a file, and the batch assembly every source shares.

``ReplaySource`` reads a JSON array, JSON Lines (one user, or one saved API
response ``{"results": [...]}``, per line) or a single saved API response.
JSON Lines is streamed line by line; a whole-document file is parsed at once.

:class:`Collector` is the part every source uses: it turns raw records into
exactly ``plan.users`` good users in batches of ``plan.batch_size``, counting
everything it drops by reason (``type:record``, ``nat_not_requested`` (a filter, counted apart
downstream: see ``schema.FILTERED_REASONS``),
``duplicate:login.uuid``, ``missing:login.uuid`` and the checker's reasons).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from itertools import islice, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ..exceptions import ConfigError, SourceError
from ..schema import FIELD_PATHS, NAT_FILTERED, NATIONALITIES
from . import Batch, Checker, RunPlan, User, accept_all
from .seen import SeenUuids
from .typed import REFUSED, decode_row

logger = logging.getLogger(__name__)

#: A source gives up when this many times the requested users were examined.
EXAMINE_FACTOR = 4
EXAMINE_SLACK = 1000
#: Records parsed and checked at a time: 100 parsed users fit in the CPU's cache, 1000 do
#: not, and checking them then costs twice as much (measured on the bench's replay file).
CHUNK = 100


class Rejected:
    """A raw record that is already known to be bad, with its quarantine reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def normalise_nat(codes: Sequence[str]) -> tuple[str, ...]:
    """Upper-case, de-duplicate (order kept) and validate nationality codes."""
    out: list[str] = []
    for code in codes:
        c = str(code).strip().upper()
        if c not in NATIONALITIES:
            raise ConfigError(f"unknown nationality code {code!r}: use any of {' '.join(NATIONALITIES)}")
        if c not in out:
            out.append(c)
    return tuple(out)


def checked_plan(plan: RunPlan) -> RunPlan:
    """Validate a plan's numbers and normalise its nationality codes."""
    if plan.users < 0:
        raise ConfigError(f"a run needs a non-negative number of users, not {plan.users}")
    if plan.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, not {plan.batch_size}")
    return replace(plan, nat=normalise_nat(plan.nat))


def stop_reason(plan: RunPlan) -> str | None:
    """Why the run must stop now (cancelled, deadline passed), or None."""
    if plan.cancelled():
        return "run cancelled"
    if plan.deadline is not None and plan.clock() >= plan.deadline:
        return "deadline reached"
    return None


def raise_if_stopped(plan: RunPlan, what: str, collector: Collector) -> None:
    """Raise ``SourceError`` naming ``what`` if the run was cancelled or is past its deadline."""
    reason = stop_reason(plan)
    if reason:
        raise SourceError(f"{what}: {reason} after {collector.accepted:,} of {plan.users:,} users")


def examine_limit(users: int) -> int:
    """How many raw records a source may examine before it declares the data unusable."""
    return EXAMINE_FACTOR * users + EXAMINE_SLACK


class Collector:
    """Turn raw records into exact batches: check, keep requested nats, dedupe, stop at N."""

    def __init__(self, plan: RunPlan, check: Checker = accept_all) -> None:
        self.want = plan.users
        self.batch_size = plan.batch_size
        self.nat = frozenset(plan.nat)
        self.check = check
        self.accepted = 0          # good users taken so far (delivered or buffered)
        self.examined = 0          # raw records looked at, up to the last one needed
        self.requests = 0          # HTTP requests not yet attributed to a batch
        self.dropped: Counter[str] = Counter()   # every rejection of the run
        self._pending: Counter[str] = Counter()  # rejections not yet attributed to a batch
        self._buffer: list[User] = []
        self._seen = SeenUuids()
        # A checker with ``rows`` (validate.check_rows) returns good records as rows in
        # column order, with their positions; any other returns the very dicts it was given.
        self._rows = bool(getattr(check, "rows", False))
        # A row checker also takes rows a typed decoder already made (sources.typed).
        self._record_types: Any = (dict, tuple) if self._rows else dict
        if self._rows:
            self._uuid_of: Any = itemgetter(FIELD_PATHS.index("login.uuid"))
            self._nat_of: Any = itemgetter(FIELD_PATHS.index("nat"))
        else:
            login, uuid = itemgetter("login"), itemgetter("uuid")
            self._uuid_of = lambda user: uuid(login(user))
            self._nat_of = itemgetter("nat")

    @property
    def done(self) -> bool:
        """True once ``plan.users`` good users were taken."""
        return self.accepted >= self.want

    @property
    def missing(self) -> int:
        """Good users still needed."""
        return max(0, self.want - self.accepted)

    def add(self, records: Sequence[Any]) -> list[Batch]:
        """Take one page/chunk of raw records (in order); return the batches it completes."""
        if self.done or not records:
            return []
        candidates: list[User]
        raw_pos: Sequence[int]              # candidate index -> position in records
        early: list[tuple[int, str]] = []   # (position, reason) of non-dict records
        kinds = self._record_types
        if all(map(isinstance, records, repeat(kinds))):
            candidates, raw_pos = list(records), range(len(records))
        else:
            candidates, raw_pos = [], []
            for i, rec in enumerate(records):
                if isinstance(rec, kinds):
                    candidates.append(rec)
                    raw_pos.append(i)
                else:
                    early.append((i, rec.reason if isinstance(rec, Rejected) else "type:record"))
        result = self.check(candidates) if candidates else ([], Counter())
        good, checked = result[0], result[1]
        counts: Counter[str] = Counter(checked)
        fast = self._take_all(good)
        if fast is not None:
            taken, last = fast
        else:
            taken, last = [], None
            for i, user in enumerate(good):
                reason = self._reject(user)
                if reason:
                    counts[reason] += 1
                    continue
                taken.append(user)
                if self.accepted + len(taken) >= self.want:
                    last = i
                    break
        cut = len(records)
        if last is not None:
            where = result[2] if self._rows else None  # type: ignore[misc]
            cut = self._trim(last, good, where, candidates, raw_pos, counts) or cut
        for pos, reason in early:
            if pos < cut:
                counts[reason] += 1
        self.examined += cut
        counts = +counts  # drops zero counts left by the trim
        self.dropped.update(counts)
        self._pending.update(counts)
        self._buffer.extend(taken)
        self.accepted += len(taken)
        return self._emit()

    def _take_all(self, good: list[User]) -> tuple[list[User], int | None] | None:
        """(taken, index in ``good`` of the last user needed if this chunk completes the run)
        when :meth:`_reject` would pass every user needed; else None.

        Whole-list passes for the common case (requested nationalities, new
        unique uuids); anything else takes the per-user path for its reasons.
        """
        k = self.want - self.accepted
        head = good[:k]
        try:
            uuids = list(map(self._uuid_of, head))
            if self.nat and not all(map(self.nat.__contains__, map(self._nat_of, head))):
                return None
        except (KeyError, TypeError, IndexError):
            return None
        if ("" in uuids or not all(map(isinstance, uuids, repeat(str)))
                or len(set(uuids)) != len(uuids) or not self._seen.add_all(uuids)):
            return None
        return head, len(head) - 1 if len(head) == k else None

    def _reject(self, user: User) -> str | None:
        if self._rows:
            nat, uuid = self._nat_of(user), self._uuid_of(user)
        else:
            nat = user.get("nat")
            login = user.get("login")
            uuid = login.get("uuid") if isinstance(login, dict) else None
        if self.nat and (not isinstance(nat, str) or nat not in self.nat):
            return NAT_FILTERED
        if not isinstance(uuid, str) or not uuid:
            return "missing:login.uuid"
        if not self._seen.add(uuid):
            return "duplicate:login.uuid"
        return None

    def _trim(self, last: int, good: list[User], where: list[int] | None, candidates: list[User],
              raw_pos: Sequence[int], counts: Counter[str]) -> int | None:
        """Forget the checker's verdicts past the last user needed; return the cut position.

        ``last`` indexes ``good``; ``where`` gives each good record's index in ``candidates``
        (a row checker's), else the checker returned the very dicts it was given.
        """
        # Records after the N-th good user were never needed: counting them as
        # quarantined would overstate what the run dropped.
        if where is not None:
            i = where[last]
        else:
            user = good[last]
            i = next((j for j, cand in enumerate(candidates) if cand is user), -1)
            if i < 0:
                # The checker returned copies, so the position is unknown: keep every count.
                logger.debug("checker does not return the records it was given; quarantine not trimmed")
                return None
        tail = candidates[i + 1:]
        if tail:
            counts.subtract(self.check(tail)[1])
        return raw_pos[i] + 1

    def _emit(self) -> list[Batch]:
        out: list[Batch] = []
        while len(self._buffer) >= self.batch_size or (self.done and self._buffer):
            users, self._buffer = self._buffer[:self.batch_size], self._buffer[self.batch_size:]
            out.append(Batch(users, self._pending, self.requests))
            self._pending = Counter()
            self.requests = 0
        return out


class ReplaySource:
    """Users replayed from a JSON array, JSON Lines or saved API response file."""

    name = "file"

    def __init__(self, path: str | Path, *, chunk_size: int = CHUNK, **options: Any) -> None:
        if options:
            raise ConfigError(f"unknown option(s) for the file source: {', '.join(sorted(options))}")
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"file {self.path} does not exist or is not a regular file")
        self.chunk_size = max(1, int(chunk_size))

    def batches(self, plan: RunPlan, check: Checker = accept_all) -> Iterator[Batch]:
        """Yield batches of the file's users in file order (the seed plays no part)."""
        plan = checked_plan(plan)
        if plan.users == 0:
            return
        collector = Collector(plan, check)
        for chunk in self._chunks(typed=bool(getattr(check, "rows", False))):
            raise_if_stopped(plan, f"file {self.path}", collector)
            for batch in collector.add(chunk):
                raise_if_stopped(plan, f"file {self.path}", collector)
                yield batch
            if collector.done:
                return
        raise SourceError(
            f"file {self.path} holds only {collector.accepted:,} valid users, {plan.users:,} were requested"
        )

    def _chunks(self, *, typed: bool = False) -> Iterator[list[Any]]:
        try:
            f = self.path.open("rb")
        except OSError as e:
            raise SourceError(f"file {self.path} cannot be read: {e.strerror}") from None
        with f:
            if _is_json_lines(f):
                yield from _chunked(_json_lines(f, typed=typed), self.chunk_size)
            else:
                records = _whole_document(f, self.path)
                for i in range(0, len(records), self.chunk_size):
                    yield records[i:i + self.chunk_size]


def _is_json_lines(f: BinaryIO) -> bool:
    """Sniff the format: a line that is a whole JSON object by itself means JSON Lines."""
    head = f.read(1 << 16)
    f.seek(0)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text or text[:1] == b"[":
        return not text  # empty file: JSON Lines with no lines
    lines = [ln for ln in f.readlines(1 << 16)[:5] if ln.strip()]
    f.seek(0)
    for line in lines:
        try:
            if isinstance(parse_json(line), dict):
                return True
        except ValueError:
            continue
    # The first lines of a pretty-printed document are never whole objects.
    return text[:1] != b"{"


def parse_json(text: bytes) -> Any:
    """Parse JSON with orjson (~3x faster), else with the standard parser; ValueError if neither.

    orjson refuses what the standard parser takes (lone surrogates, NaN, UTF-16); those values
    reach the record checks and the consumer's validation as before. orjson reads an integer
    beyond 64 bits as a float, so its record is quarantined as ``type:<field>``.
    """
    try:
        return orjson.loads(text)
    except ValueError:
        pass
    try:
        return json.loads(text)
    except RecursionError:  # nested deeper than the standard parser goes: broken JSON all the same
        raise ValueError("JSON nested too deeply") from None


def _valid_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _json_lines(f: BinaryIO, *, typed: bool = False) -> Iterator[Any]:
    """Each line's record(s); with ``typed``, a well-formed user comes as its row already."""
    for line in f:
        # The typed decoder does not look at the fields it skips: a line that is not UTF-8 all
        # through goes the general way, which refuses it as a whole (as for any broken line).
        if typed and (line.isascii() or _valid_utf8(line)):
            try:
                yield decode_row(line)
                continue
            except REFUSED:
                pass  # not a well-formed user: parsed and judged the general way
        try:
            value = parse_json(line)
        except ValueError:
            if line.strip():
                yield Rejected("parse:line")
            continue
        if not isinstance(value, dict):
            yield value
        elif "results" in value and isinstance(value["results"], list):
            yield from value["results"]
        elif "error" in value and "login" not in value:
            yield Rejected("api_error:line")
        else:
            yield value


def _whole_document(f: BinaryIO, path: Path) -> list[Any]:
    try:
        data = json.load(f)
    except (ValueError, RecursionError) as e:
        raise SourceError(f"file {path} is not valid JSON: {e}") from None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        results = data.get("results")
        if isinstance(results, list):
            return results
        if "error" in data:
            raise SourceError(f"file {path} is a saved API error: {str(data['error'])[:100]}")
        if "login" in data:
            return [data]
    raise SourceError(f"file {path} is not a JSON array, JSON Lines or a saved API response")


def _chunked(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(islice(items, size)):
        yield chunk
