"""Reading the authors' graph pickles without ever running code from them.

* Round trips: tiny graphs and incompatibility tensors written with ``pickle.dump`` (int64 ids,
  float32/float64 weights, non-contiguous tensors) read back equal, and ask for exactly the
  allow-listed globals.
* Payloads: a code-running global in the outer pickle, and one hidden in the storage bytes that
  ``torch.storage._load_from_bytes`` would hand to an unrestricted ``torch.load``. Both are refused
  and their sentinel file never appears; plain ``pickle.load`` of the same file does create it (so
  these tests would fail without the guard).
* Content checks: wrong container, dtypes, shapes, mismatched E, node ids outside the codebook,
  non-finite values, missing/truncated/garbage files: each a :class:`PipelineError` naming the file.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import pickle
import shlex
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.files import file_digest
from pipeline.model.pickles import (
    TensorUnpickler,
    read_graph_pickle,
    read_incompatibility_pickle,
    read_tensor_pickle,
)

V, C, L = 8, 3, 4  # codes, classes, positions: tiny stand-ins for 1024, 1000, 256


def dump(path: Path, obj: object) -> Path:
    """Write ``obj`` the way the authors did: a plain ``pickle.dump``."""
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def small_graph(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    edges = torch.tensor([[0, 1, 2, 7, 7], [1, 0, 5, 3, 7]], dtype=torch.int64)
    return edges, torch.tensor([0.5, 0.5, 2.0, 1e-3, 3.0], dtype=dtype)


# --------------------------------------------------------------------------------------------
# Payloads: objects whose unpickling runs a command
# --------------------------------------------------------------------------------------------


class System:
    """Unpickles as ``os.system(command)`` (pickled as the global ``posix.system``)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class Eval:
    """Unpickles as ``eval(source)``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.eval, (self.source,))


class StorageBytes:
    """Unpickles as ``torch.storage._load_from_bytes(data)``, exactly as a real storage does."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (torch.storage._load_from_bytes, (self.data,))


class Rebuild:
    """Unpickles as ``torch._utils._rebuild_tensor_v2(storage, 0, (n,), (1,), False, hooks)``."""

    def __init__(self, storage: object, n: int, hooks: OrderedDict | None = None) -> None:
        self.storage, self.n, self.hooks = storage, n, hooks if hooks is not None else OrderedDict()

    def __reduce__(self) -> tuple[Any, ...]:
        return (torch._utils._rebuild_tensor_v2, (self.storage, 0, (self.n,), (1,), False, self.hooks))


def touch(sentinel: Path) -> str:
    return f"touch {shlex.quote(str(sentinel))}"


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_graph_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    edges, weight = small_graph(dtype)
    path = dump(tmp_path / "graph.pkl", [edges, weight])
    got_edges, got_weight = read_graph_pickle(path, num_codes=V)
    assert got_edges.dtype == torch.int64 and torch.equal(got_edges, edges)
    assert got_weight.dtype == dtype and torch.equal(got_weight, weight)


def test_non_contiguous_round_trip(tmp_path: Path) -> None:
    edges, weight = small_graph(torch.float64)
    edges_t = edges.t().contiguous().t()  # (2, E) view over an (E, 2) storage
    weight_s = torch.stack([weight, -weight], 1)[:, 0]  # stride 2
    assert not edges_t.is_contiguous() and not weight_s.is_contiguous()
    got_edges, got_weight = read_graph_pickle(dump(tmp_path / "g.pkl", (edges_t, weight_s)), num_codes=V)
    assert torch.equal(got_edges, edges) and torch.equal(got_weight, weight)

    incompat = torch.rand(V, L, C).permute(2, 1, 0)  # (C, L, V), not contiguous
    got = read_incompatibility_pickle(dump(tmp_path / "i.pkl", incompat), C, L, V)
    assert torch.equal(got, incompat)


@pytest.mark.parametrize("rows", [C, C + 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_incompatibility_round_trip(tmp_path: Path, rows: int, dtype: torch.dtype) -> None:
    incompat = torch.rand(rows, L, V, dtype=dtype)
    got = read_incompatibility_pickle(dump(tmp_path / "incompat.pkl", incompat), C, L, V)
    assert got.dtype == torch.float32 and torch.equal(got, incompat.float())


def test_tensors_need_exactly_the_allow_list(tmp_path: Path) -> None:
    """What this torch pickles for our dtypes is exactly what the unpickler allows, no more."""
    asked: set[str] = set()

    class Recording(TensorUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            asked.add(f"{module}.{name}")
            return super().find_class(module, name)

    edges, weight = small_graph(torch.float32)
    path = dump(tmp_path / "all.pkl", [edges, weight, weight.double(), edges.t(), torch.rand(2, 3, 4)])
    with open(path, "rb") as f:
        Recording(f, path).load()
    assert asked == set(TensorUnpickler.ALLOWED)


def test_requires_grad_is_dropped(tmp_path: Path) -> None:
    tensor = torch.rand(C, L, V, requires_grad=True)
    got = read_tensor_pickle(dump(tmp_path / "grad.pkl", tensor))
    assert isinstance(got, torch.Tensor) and not got.requires_grad and torch.equal(got, tensor.detach())


# --------------------------------------------------------------------------------------------
# Payloads
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["system", "eval", "nested"])
def test_outer_payload_is_refused(tmp_path: Path, kind: str) -> None:
    sentinel = tmp_path / "SENTINEL"
    payload: object
    if kind == "eval":
        payload, name = Eval(f"open({str(sentinel)!r}, 'w').close()"), "builtins.eval"
    else:
        payload, name = System(touch(sentinel)), f"{os.system.__module__}.system"
    if kind == "nested":  # behind a valid tensor, where a shallow check would not look
        payload = [*small_graph(torch.float32), {"x": payload}]
    path = dump(tmp_path / "evil.pkl", payload)

    with pytest.raises(PipelineError, match="refused") as err:
        read_graph_pickle(path, num_codes=V)
    assert name in str(err.value) and str(path) in str(err.value)
    assert not sentinel.exists()

    # Control: the payload is live, so the check above is meaningful.
    with open(path, "rb") as f:
        pickle.load(f)
    assert sentinel.exists()


def test_inner_storage_payload_is_refused(tmp_path: Path) -> None:
    """The storage bytes are a pickle that runs ``touch`` when given to an unrestricted loader."""
    sentinel = tmp_path / "SENTINEL"
    inner = pickle.dumps(System(touch(sentinel)), protocol=2)
    path = dump(tmp_path / "evil.pkl", [Rebuild(StorageBytes(inner), 2), torch.ones(2)])

    with pytest.raises(PipelineError, match="storage bytes inside") as err:
        read_graph_pickle(path, num_codes=V)
    assert str(path) in str(err.value)
    assert not sentinel.exists()

    # Control: plain pickle.load reaches torch.load(weights_only=False) on the inner bytes, which
    # runs the command (and then fails on the missing torch.save magic number).
    with pytest.raises(Exception), open(path, "rb") as f:  # noqa: B017 - whatever torch raises after
        pickle.load(f)
    assert sentinel.exists()


def _typed_storage(tensor: torch.Tensor) -> torch.storage.TypedStorage:
    """``tensor.storage()`` without its deprecation warning."""
    return torch.storage.TypedStorage(
        wrap_storage=tensor.untyped_storage(), dtype=tensor.dtype, _internal=True
    )


def _legacy_save(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


MISUSES: dict[str, tuple[Callable[[], object], OrderedDict | None, str]] = {
    "garbage-bytes": (lambda: StorageBytes(b"not a torch.save stream"), None, "storage bytes inside"),
    "dict-bytes": (lambda: StorageBytes(pickle.dumps({"a": 1}, protocol=2)), None, "storage bytes inside"),
    "tensor-bytes": (lambda: StorageBytes(_legacy_save(torch.ones(2))), None, "hold a Tensor, not a storage"),
    "not-a-storage": (lambda: "a string", None, "non-storage or with backward hooks"),
    "hooks": (lambda: _typed_storage(torch.ones(2)), OrderedDict([(0, OrderedDict)]), "backward hooks"),
}


@pytest.mark.parametrize("case", list(MISUSES))
def test_misused_allowed_globals_are_refused(tmp_path: Path, case: str) -> None:
    """The allowed globals themselves, fed something other than a real storage, are refused too."""
    make_storage, hooks, match = MISUSES[case]
    path = dump(tmp_path / "odd.pkl", Rebuild(make_storage(), 2, hooks))
    with pytest.raises(PipelineError, match=match) as err:
        read_tensor_pickle(path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------------------------
# Content checks
# --------------------------------------------------------------------------------------------


def _graph_cases() -> list[tuple[str, object, str]]:
    edges, weight = small_graph(torch.float32)
    nan, inf = weight.clone(), weight.clone()
    nan[1], inf[3] = float("nan"), float("inf")
    return [
        ("one-tensor", edges, r"two tensors\), found a Tensor"),
        ("three", [edges, weight, weight], "found a list of 3"),
        ("float-ids", [edges.double(), weight], "integer tensor, found torch.float64"),
        ("ids-3-rows", [torch.cat([edges, edges[:1]]), weight], r"\(2, E\), found \(3, 5\)"),
        ("ids-1d", [edges[0], weight], r"\(2, E\), found \(5,\)"),
        ("int-weights", [edges, weight.long()], "floating tensor, found torch.int64"),
        ("mismatched-E", [edges, weight[:4]], r"\(E,\) = \(5,\), found \(4,\)"),
        ("2d-weights", [edges, weight[None]], r"found \(1, 5\)"),
        ("id-too-big", [edges.clone().fill_(V), weight], rf"\[0, {V}\), found \[{V}, {V}\]"),
        ("id-negative", [edges - 1, weight], rf"\[0, {V}\), found \[-1, 6\]"),
        ("nan", [edges, nan], "1 of 5 edge weights are NaN or infinite"),
        ("inf", [edges, inf], "1 of 5 edge weights are NaN or infinite"),
    ]


@pytest.mark.parametrize(
    ("obj", "match"), [c[1:] for c in _graph_cases()], ids=[c[0] for c in _graph_cases()]
)
def test_bad_graph_is_refused(tmp_path: Path, obj: object, match: str) -> None:
    path = dump(tmp_path / "graph.pkl", obj)
    with pytest.raises(PipelineError, match=match) as err:
        read_graph_pickle(path, num_codes=V)
    assert str(path) in str(err.value)


def _incompat_cases() -> list[tuple[str, object, str]]:
    nan = torch.rand(C, L, V)
    nan[0, 1, 2] = float("nan")
    return [
        ("extra-rows", torch.rand(C + 2, L, V), rf"shape \({C + 2}, {L}, {V}\), expected \({C}, {L}, {V}\)"),
        ("wrong-positions", torch.rand(C, L + 1, V), rf"shape \({C}, {L + 1}, {V}\)"),
        ("2d", torch.rand(C, L * V), rf"shape \({C}, {L * V}\)"),
        ("ints", torch.ones(C, L, V, dtype=torch.int64), "floating tensor, found a torch.int64 tensor"),
        ("list", [torch.rand(C, L, V)], "found a list"),
        ("nan", nan, "1 of 96 incompatibility values are NaN or infinite"),
        ("beyond-float32", torch.full((C, L, V), 1e300, dtype=torch.float64), "96 of 96"),
    ]


@pytest.mark.parametrize(
    ("obj", "match"), [c[1:] for c in _incompat_cases()], ids=[c[0] for c in _incompat_cases()]
)
def test_bad_incompatibility_is_refused(tmp_path: Path, obj: object, match: str) -> None:
    path = dump(tmp_path / "incompat.pkl", obj)
    with pytest.raises(PipelineError, match=match) as err:
        read_incompatibility_pickle(path, C, L, V)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "truncated", "garbage"])
def test_unreadable_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "graph.pkl"
    data = pickle.dumps(list(small_graph(torch.float32)))
    if kind == "directory":
        path.mkdir()
    elif kind != "missing":
        path.write_bytes(
            {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x00junk" * 10}[kind]
        )
    with pytest.raises(PipelineError) as err:
        read_graph_pickle(path, num_codes=V)
    assert str(path) in str(err.value)


def test_file_digest_is_the_sha256(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 2 + 12345)  # spans several read blocks
    path = tmp_path / "blob.pkl"
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(b"")
    assert file_digest(path) == hashlib.sha256(b"").hexdigest()
