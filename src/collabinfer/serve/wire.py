"""The wire format between tiers (protocol 1): framing, header, validation, responses.

Why a module of its own: what crosses the wire is a public contract (see
``docs/serving.md``), shared by the tier server, the device client and the
tests that pin it with a golden hash. A request body is::

    b"CIW1" | uint32 big-endian header length | header JSON | payload bytes

:func:`decode_request` only checks *structure* (framing, caps, keys, types);
:meth:`HostedModel.validate` then checks the header against the model a server
hosts. Both run before any payload byte is decoded, and every refusal is a
:class:`WireError` that carries its HTTP status. Nothing is ever pickled.

Example::

    >>> from collabinfer.codec import TensorHeader
    >>> h = RequestHeader("tiny-cnn", "0" * 16, "r1", 1, 0,
    ...                   TensorHeader("u8", "float32", (1, 1, 28, 28)),
    ...                   WirePlan((0, 0, 4), ("u8", None)))
    >>> decode_request(encode_request(h, bytes(784)), 2**20) == (h, bytes(784))
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from collabinfer.codec import Encoded, TensorHeader, get_codec, list_codecs
from collabinfer.codec.tensor import _numel, _reject_constant, _short, _unique_keys
from collabinfer.errors import CodecError, PlanError, TierError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.checkpoint import weights_hash
from collabinfer.plan.cost import Plan, check_boundaries, transfers
from collabinfer.runtime.engine import Handoff, RemoteAnswer
from collabinfer.runtime.state import PathEntry, State, Step, StepKind

PROTOCOL = 1
MAGIC = b"CIW1"
MAX_HEADER_BYTES = 65_536
DEFAULT_MAX_BODY_BYTES = 8 * 2**20
DEFAULT_MAX_ROWS = 64
"""Batch rows one request may carry: with the cut's size this bounds decode and compute."""
DEFAULT_MAX_DECODED_BYTES = 64 * 2**20
"""float32 bytes the payload may decode to (checked from the header, before decoding)."""
MAX_DEADLINE_MS = 86_400_000.0
"""A day: a larger ``deadline_ms`` is a typo or an attack, never a budget."""
MAX_ANSWER_ROW_BYTES = 64 * 2**10
"""JSON bytes an answer may spend per batch row (plus a fixed allowance), read capped."""
_PREFIX = struct.Struct(">4sI")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    404: "unknown_model",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    422: "unprocessable",
    429: "throttled",
    499: "abandoned",
    503: "overloaded",
    502: "bad_gateway",
    504: "gateway_timeout",
}
_TENSOR_KEYS = frozenset(f.name for f in fields(TensorHeader))


class WireError(TierError):
    """A request refused (or failed) with an HTTP status; ``field`` names what was wrong."""

    def __init__(
        self,
        message: str,
        status: int,
        field: str | None = None,
        *,
        retry_after_s: float | None = None,
        **context: object,
    ):
        super().__init__(message, **context)
        self.status = status
        self.field = field
        self.retry_after_s = retry_after_s  # a 429 or 503 says when to come back

    @property
    def reason(self) -> str:
        """A short label for the ``errors_total`` metric."""
        return _REASONS.get(self.status, "internal")

    def to_json(self) -> dict[str, str | None]:
        return {"error": self.message, "field": self.field}


def _bad(message: str, field: str | None = None) -> WireError:
    return WireError(message, 400, field)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class WirePlan:
    """The device's plan as it travels: tier ``t`` runs blocks ``[b[t], b[t+1])``."""

    boundaries: tuple[int, ...]
    codecs: tuple[str | None, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.boundaries, tuple | list) or not all(
            _is_int(b) for b in self.boundaries
        ):
            raise _bad(f"plan boundaries must be a list of ints, got {self.boundaries!r}", "plan")
        if not isinstance(self.codecs, tuple | list) or not all(
            c is None or isinstance(c, str) for c in self.codecs
        ):
            raise _bad(f"plan codecs must be a list of str or null, got {self.codecs!r}", "plan")
        object.__setattr__(self, "boundaries", tuple(self.boundaries))
        object.__setattr__(self, "codecs", tuple(self.codecs))

    @property
    def num_tiers(self) -> int:
        return len(self.codecs)


def _path_entry(item: object) -> PathEntry:
    if (
        not isinstance(item, tuple | list)
        or len(item) != 3
        or not (_is_int(item[0]) and _is_int(item[1]) and isinstance(item[2], bool))
    ):
        raise _bad(f"path entries must be [block, tier, ran], got {item!r}", "path")
    return PathEntry(item[0], item[1], item[2])


@dataclass(frozen=True)
class RequestHeader:
    """The JSON header of a request: exactly the documented keys, type-checked on creation."""

    model: str
    weights: str
    request_id: str
    tier: int
    next_block: int
    tensor: TensorHeader
    plan: WirePlan
    path: tuple[PathEntry, ...] = ()
    deadline_ms: float | None = None
    protocol: int = PROTOCOL

    def __post_init__(self) -> None:
        if not _is_int(self.protocol) or self.protocol != PROTOCOL:
            raise _bad(f"protocol {self.protocol!r} is not supported (want {PROTOCOL})", "protocol")
        for name in ("model", "weights"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise _bad(f"{name} must be a non-empty string", name)
        if not isinstance(self.request_id, str) or not _REQUEST_ID.fullmatch(self.request_id):
            raise _bad("request_id must be 1-64 chars of [A-Za-z0-9_-]", "request_id")
        for name in ("tier", "next_block"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise _bad(f"{name} must be an int >= 0, got {value!r}", name)
        if not isinstance(self.tensor, TensorHeader):
            raise _bad("tensor must be a TensorHeader", "tensor")
        if not isinstance(self.plan, WirePlan):
            raise _bad("plan must be a WirePlan", "plan")
        if not isinstance(self.path, tuple | list):
            raise _bad(f"path must be a list, got {self.path!r}", "path")
        object.__setattr__(self, "path", tuple(_path_entry(p) for p in self.path))
        d = self.deadline_ms
        if d is not None:
            if not ((_is_int(d) or isinstance(d, float)) and 0 <= d <= MAX_DEADLINE_MS):
                msg = f"deadline_ms must be null or a number in [0, {MAX_DEADLINE_MS:.0f}]"
                raise _bad(f"{msg}, got {_short(d)}", "deadline_ms")
            object.__setattr__(self, "deadline_ms", float(d))  # bounded: the cast is exact enough

    def to_json_bytes(self, *, deadline: bool = True) -> bytes:
        """Compact JSON, sorted keys: the same header always gives the same bytes
        (``deadline=False``: without ``deadline_ms``, what a retry repeats)."""
        obj: dict[str, object] = {
            "protocol": self.protocol,
            "model": self.model,
            "weights": self.weights,
            "request_id": self.request_id,
            "tier": self.tier,
            "next_block": self.next_block,
            "tensor": json.loads(self.tensor.to_json_bytes()),  # TensorHeader's own format
            "plan": {"boundaries": list(self.plan.boundaries), "codecs": list(self.plan.codecs)},
            "path": [list(p) for p in self.path],
            "deadline_ms": self.deadline_ms,
        }
        if not deadline:
            del obj["deadline_ms"]
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json_obj(cls, obj: object) -> RequestHeader:
        """Build from parsed JSON; wrong keys or types are a 400 :class:`WireError`."""
        if not isinstance(obj, dict):
            raise _bad(f"header must be a JSON object, got {type(obj).__name__}")
        want = {f.name for f in fields(cls)}
        if set(obj) != want:
            missing, extra = sorted(want - set(obj)), sorted(set(obj) - want)
            field = (missing or extra)[0]
            raise _bad(f"header keys wrong: missing {missing}, unexpected {extra}", field)
        tensor, plan = obj["tensor"], obj["plan"]
        if not isinstance(tensor, dict) or set(tensor) != _TENSOR_KEYS:
            raise _bad(f"tensor must be an object with keys {sorted(_TENSOR_KEYS)}", "tensor")
        if not isinstance(plan, dict) or set(plan) != {"boundaries", "codecs"}:
            raise _bad("plan must be an object with keys ['boundaries', 'codecs']", "plan")
        try:
            th = TensorHeader(**tensor)
        except CodecError as e:
            raise _bad(f"tensor: {e.message}", "tensor") from None
        return cls(**{**obj, "tensor": th, "plan": WirePlan(plan["boundaries"], plan["codecs"])})


def request_header(
    state: State, handoff: Handoff, model: str, weights: str, deadline_ms: float | None = None
) -> RequestHeader:
    """The header that carries ``state`` to the next tier (the State -> wire half).

    What travels is what the next tier needs to continue: the cut and the codec's
    tensor header (the payload follows the header), the device's plan, the path
    so far and the request id. The trace stays with the sender.
    """
    if state.plan is None:
        raise PlanError("a State leaves its tier only with a plan", request_id=state.request_id)
    return RequestHeader(
        model=model,
        weights=weights,
        request_id=state.request_id,
        tier=handoff.sender + 1,
        next_block=handoff.cut,
        tensor=handoff.encoded.header,
        plan=WirePlan(state.plan.boundaries, state.plan.codecs),
        path=tuple(state.path),
        deadline_ms=deadline_ms,
    )


def state_from_request(header: RequestHeader, payload: bytes) -> State:
    """The State a request carries (the wire -> State half), its tensor still encoded.

    Validate the header first (:meth:`HostedModel.validate`): this only maps fields.
    """
    return State(
        z=None,
        next_block=header.next_block,
        tier=header.tier,
        request_id=header.request_id,
        path=list(header.path),
        plan=Plan(header.plan.boundaries, header.plan.codecs),
        raw_input_left_device=header.next_block == 0,
        encoded=Encoded(header.tensor, payload),
    )


def encode_request(header: RequestHeader, payload: bytes) -> bytes:
    """Frame one request: magic, header length, header JSON, payload."""
    head = header.to_json_bytes()
    if len(head) > MAX_HEADER_BYTES:
        raise WireError(f"header is {len(head)} bytes, at most {MAX_HEADER_BYTES}", 413, "header")
    return _PREFIX.pack(MAGIC, len(head)) + head + bytes(payload)


def decode_request(body: bytes, max_body_bytes: int) -> tuple[RequestHeader, bytes]:
    """Split and parse a request body; checks structure only (400 and 413)."""
    if len(body) > max_body_bytes:
        raise WireError(f"body is {len(body)} bytes, at most {max_body_bytes}", 413, "body")
    if body[:4] != MAGIC[: len(body[:4])]:
        raise _bad(f"bad magic {bytes(body[:4])!r}, expected {MAGIC!r}", "magic")
    if len(body) < _PREFIX.size:
        raise _bad(f"body truncated: {len(body)} bytes, the prefix alone is 8", "body")
    _, hlen = _PREFIX.unpack_from(body)
    if hlen > MAX_HEADER_BYTES:
        raise WireError(f"header length {hlen} exceeds {MAX_HEADER_BYTES}", 413, "header")
    if len(body) < _PREFIX.size + hlen:
        raise _bad(f"body truncated: header says {hlen} bytes, {len(body) - 8} follow", "body")
    raw = body[_PREFIX.size : _PREFIX.size + hlen]
    try:
        obj = json.loads(
            bytes(raw).decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError, CodecError) as e:
        raise _bad(f"header is not valid JSON: {_short(str(e), 200)}", "header") from None
    if b"\\u" in raw:  # only a \u escape can smuggle a surrogate past strict UTF-8
        _check_text(obj)
    return RequestHeader.from_json_obj(obj), bytes(body[_PREFIX.size + hlen :])


def _check_text(obj: object, depth: int = 0) -> None:
    """Every string in a parsed header (keys too) must be encodable UTF-8: JSON lets
    ``"\\ud800"`` through, and a lone surrogate echoed in an error reply cannot be sent."""
    if depth > 32:  # the header schema nests 3 deep; anything deeper is refused below
        raise _bad("header nests too deep", "header")
    items: list[object]
    if isinstance(obj, str):
        items = []
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad("header has a string that is not valid unicode", "header") from None
    elif isinstance(obj, dict):
        items = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list):
        items = obj
    else:
        return
    for item in items:
        _check_text(item, depth + 1)


def request_digest(header: RequestHeader, payload: bytes) -> str:
    """What a retry must repeat: the header (less the deadline, which a retry
    shortens) and the payload, hashed. The idempotency cache keys on it."""
    h = hashlib.sha256(header.to_json_bytes(deadline=False))
    h.update(payload)
    return h.hexdigest()


@dataclass(frozen=True)
class HostedModel:
    """What a server hosts, and the semantic checks a request must pass (404, 409, 422).

    ``tier`` is the index this server plays in a plan, or None to take the header's word.
    ``max_rows`` and ``max_decoded_bytes`` bound the work one request may ask for;
    both are checked from the header, before a payload byte is decoded.
    """

    name: str
    weights: str
    start: int
    stop: int
    num_blocks: int
    cut_shapes: tuple[tuple[int, ...], ...]  # shape at every cut 0..n, without batch dim
    codecs: tuple[str, ...]
    dtype: str = "float32"
    tier: int | None = None
    max_rows: int = DEFAULT_MAX_ROWS
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES

    @classmethod
    def from_model(
        cls,
        name: str,
        model: BlockNet,
        start: int,
        stop: int,
        tier: int | None = None,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> HostedModel:
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        return cls(
            name=name,
            weights=weights_hash(model),
            start=start,
            stop=stop,
            num_blocks=model.num_blocks,
            cut_shapes=tuple(c.shape for c in model.cut_points()),
            codecs=tuple(list_codecs()),
            dtype=str(dtype).removeprefix("torch."),
            tier=tier,
            max_rows=max_rows,
            max_decoded_bytes=max_decoded_bytes,
        )

    @property
    def num_classes(self) -> int:
        """Logits per row of an answer: the size of the last cut."""
        return math.prod(self.cut_shapes[-1])

    def end_of(self, header: RequestHeader) -> int:
        """The cut at which the header's plan says this tier stops running blocks."""
        return header.plan.boundaries[header.tier + 1]

    def validate(self, header: RequestHeader, payload: bytes) -> None:
        """Refuse what this server cannot serve, before any payload byte is decoded."""
        if header.model != self.name:
            raise WireError(f"unknown model {header.model!r}; hosted: {self.name}", 404, "model")
        if header.weights != self.weights:
            msg = f"weights {header.weights} differ from the hosted {self.weights}"
            raise WireError(msg, 409, "weights")
        if self.tier is not None and header.tier != self.tier:
            raise WireError(f"message is for tier {header.tier}, this is {self.tier}", 422, "tier")
        self._check_plan(header)
        k, t = header.next_block, header.tensor
        end = self.end_of(header)
        if k < end and not (self.start <= k and end <= self.stop):
            msg = f"plan runs blocks {k}:{end} here, this tier hosts {self.start}:{self.stop}"
            raise WireError(msg, 422, "next_block")
        if t.codec not in self.codecs:
            raise WireError(f"unknown codec {t.codec!r}; known: {self.codecs}", 422, "tensor.codec")
        if t.dtype != self.dtype:
            raise WireError(f"dtype {t.dtype} is not the model's {self.dtype}", 422, "tensor.dtype")
        want = self.cut_shapes[k]
        if len(t.shape) != len(want) + 1 or t.shape[1:] != want:
            msg = f"shape {list(t.shape)} is not (batch, *{list(want)}) at cut {k}"
            raise WireError(msg, 422, "tensor.shape")
        rows = t.shape[0]
        if rows > self.max_rows:
            msg = f"batch of {rows} rows, this server takes at most {self.max_rows} per request"
            raise WireError(msg, 413, "tensor.shape")
        decoded = 4 * _numel(t.shape)  # float32 after decoding, whatever the wire carried
        if decoded > self.max_decoded_bytes:
            msg = f"payload decodes to {decoded} bytes, at most {self.max_decoded_bytes}"
            raise WireError(msg, 413, "tensor.shape")
        codec = get_codec(t.codec)
        try:  # exact, or an upper bound for variable-size codecs; refuses a shape it cannot carry
            need = codec.payload_size(t.shape)
        except CodecError as e:
            msg = f"codec {t.codec} cannot carry cut {k}: {e.message}"
            raise WireError(msg, 422, "tensor.codec") from None
        if len(payload) != need if codec.fixed_size else len(payload) > need:
            relation = "needs" if codec.fixed_size else "allows at most"
            msg = f"payload is {len(payload)} bytes, codec {t.codec} {relation} {need}"
            raise WireError(msg, 422, "payload")

    def _check_plan(self, header: RequestHeader) -> None:
        plan, k = header.plan, header.next_block
        try:
            check_boundaries(plan.boundaries, self.num_blocks, plan.num_tiers)
        except PlanError as e:
            raise WireError(f"plan inconsistent with the model: {e}", 422, "plan") from None
        if header.tier >= plan.num_tiers:
            msg = f"tier {header.tier} is not in a {plan.num_tiers}-tier plan"
            raise WireError(msg, 422, "tier")
        for sender, _, cut in transfers(plan.boundaries):
            name = plan.codecs[sender]
            if name not in self.codecs:
                msg = f"plan: tier {sender} sends cut {cut} with unknown codec"
                raise WireError(f"{msg} {name!r}", 422, "plan")
            try:  # checked now, not when the blocks before the cut have already run
                get_codec(name).payload_size((1, *self.cut_shapes[cut]))
            except CodecError as e:
                msg = f"plan: codec {name} cannot carry cut {cut}: {e.message}"
                raise WireError(msg, 422, "plan") from None
        if k >= self.num_blocks or k != plan.boundaries[header.tier]:
            msg = f"next_block {k}: the plan has tier {header.tier} start at cut"
            raise WireError(f"{msg} {plan.boundaries[header.tier]}", 422, "next_block")

    def metadata(self) -> dict[str, Any]:
        """What ``GET /v2/models/{name}`` reports about the hosted model."""
        return {
            "name": self.name,
            "platform": "collabinfer",
            "versions": [self.weights],
            "weights": self.weights,
            "blocks": {"start": self.start, "stop": self.stop},
            "num_blocks": self.num_blocks,
            "cut_shapes": [list(s) for s in self.cut_shapes],
            "codecs": list(self.codecs),
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class ResponseBody:
    """A finished request's answer, as the first server that answered sends it."""

    request_id: str
    tier: int  # the tier that finished the request
    output: tuple[tuple[float, ...], ...]  # logits, one row per batch item
    prediction: tuple[int, ...]
    path: tuple[PathEntry, ...]
    steps: tuple[Step, ...]
    server_ms: float  # wall time inside the first server that answered
    fell_back: bool
    cached: bool = False  # a tier's semantic cache answered (absent from older tiers: False)

    @classmethod
    def from_output(
        cls,
        request_id: str,
        tier: int,
        output: torch.Tensor,
        path: Sequence[PathEntry],
        steps: Sequence[Step],
        server_ms: float,
        fell_back: bool,
        cached: bool = False,
    ) -> ResponseBody:
        rows = output.detach().reshape(output.shape[0], -1).float()
        return cls(
            request_id,
            tier,
            tuple(tuple(r) for r in rows.tolist()),
            tuple(rows.argmax(1).tolist()) if rows.shape[1] else (),
            tuple(path),
            tuple(steps),
            server_ms,
            fell_back,
            cached,
        )

    @classmethod
    def from_state(cls, state: State, server_ms: float) -> ResponseBody:
        """The answer for a finished State: its output, path and this server's steps."""
        return cls.from_output(
            state.request_id,
            state.tier,
            state.output,
            state.path,
            state.trace.steps,
            server_ms,
            state.fell_back,
            state.cache_hit,
        )

    def output_tensor(self) -> torch.Tensor:
        """The logits as float32 (exactly the server's float32 values)."""
        return torch.tensor(self.output, dtype=torch.float32)

    def to_answer(self) -> RemoteAnswer:
        """What the engine merges into the sender's State."""
        return RemoteAnswer(
            self.output_tensor(), self.tier, self.path, self.steps, self.fell_back, self.cached
        )


def encode_response(body: ResponseBody) -> bytes:
    """JSON bytes of a response; a non-finite output is a 422 (the input was out of range)."""
    obj: dict[str, object] = {f.name: getattr(body, f.name) for f in fields(body)}
    obj["steps"] = [{**s._asdict(), "kind": str(s.kind)} for s in body.steps]
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        raise WireError("output is not finite: the input is out of range", 422, "payload") from None


def decode_response(data: bytes) -> ResponseBody:
    """Parse a tier's answer; anything malformed is a 502 :class:`WireError` (bad gateway).

    Structure only, plus finiteness (``1e400`` parses as infinity); whether the
    answer fits the request is :func:`check_answer`'s job.
    """
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
        steps = tuple(
            Step(
                StepKind(s["kind"]),
                _int(s["tier"]),
                _finite(s["ms"]),
                s["block"],
                _int(s["nbytes"]),
                _finite(s["wall_ms"]),
            )
            for s in obj["steps"]
        )
        if not all(s.block is None or _is_int(s.block) for s in steps):
            raise ValueError("step blocks must be ints or null")
        if not isinstance(obj["fell_back"], bool) or not isinstance(obj["request_id"], str):
            raise ValueError("fell_back must be a bool and request_id a string")
        cached = obj.get("cached", False)
        if not isinstance(cached, bool):
            raise ValueError("cached must be a bool")
        return ResponseBody(
            request_id=obj["request_id"],
            tier=_int(obj["tier"]),
            output=tuple(tuple(_finite(v) for v in row) for row in obj["output"]),
            prediction=tuple(_int(p) for p in obj["prediction"]),
            path=tuple(_path_entry(p) for p in obj["path"]),
            steps=steps,
            server_ms=_finite(obj["server_ms"]),
            fell_back=obj["fell_back"],
            cached=cached,
        )
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, CodecError) as e:
        raise WireError(
            f"malformed response from a tier: {_short(str(e), 200)}", 502, "response"
        ) from None
    except WireError as e:
        raise WireError(f"malformed response from a tier: {e.message}", 502, "response") from None


def _int(v: object) -> int:
    if not _is_int(v):
        raise ValueError(f"expected an int, got {_short(v)}")
    assert isinstance(v, int)
    return v


def _finite(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"expected a number, got {_short(v)}")
    try:
        f = float(v)
    except OverflowError:
        raise ValueError(f"number out of range: {_short(v)}") from None
    if not math.isfinite(f):
        raise ValueError(f"number not finite: {_short(v)}")
    return f


def check_answer(answer: ResponseBody, request_id: str, rows: int, classes: int) -> None:
    """An answer must fit the request it answers, as strictly as a request fits a model:
    the same id, one row of ``classes`` logits per input row, a prediction per row.
    A misfit is a 502 :class:`WireError`: the sender falls back, it never relays it."""
    problem = None
    if answer.request_id != request_id:
        problem = f"it answers request {_short(answer.request_id)}, not {request_id!r}"
    elif len(answer.output) != rows or any(len(r) != classes for r in answer.output):
        got = f"{len(answer.output)} rows"
        problem = f"{got} of logits where the request had {rows} rows of {classes} classes"
    elif len(answer.prediction) != rows or not all(0 <= p < classes for p in answer.prediction):
        problem = f"predictions {_short(answer.prediction)} do not fit {rows} rows of {classes}"
    if problem is not None:
        raise WireError(f"bad answer from the next tier: {problem}", 502, "response")


def answer_cap(rows: int) -> int:
    """Bytes an answer for ``rows`` rows may take (read capped: a flood is refused)."""
    return 65_536 + rows * MAX_ANSWER_ROW_BYTES
