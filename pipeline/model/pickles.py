"""Reading the KA-MIG authors' graph files: plain ``pickle.dump`` pickles of torch tensors.

A pickle can name any global and call it, so ``pickle.load`` on a downloaded file runs whatever
the file asks for. :class:`TensorUnpickler` resolves only the three globals that
``pickle.dumps(tensor)`` emits for ordinary CPU tensors (int64, float32, float64, contiguous or
not; checked with ``pickletools.dis``):

* ``torch._utils._rebuild_tensor_v2`` builds the tensor view over a storage;
* ``torch.storage._load_from_bytes`` turns the storage's bytes (a legacy ``torch.save``) back into
  a storage. The real one calls ``torch.load(..., weights_only=False)``, i.e. a second,
  unrestricted unpickler, so it is replaced by :func:`_storage_from_bytes`, which uses torch's
  weights-only loader;
* ``collections.OrderedDict`` is the (empty) backward-hook table passed to the rebuild.

Everything else is refused before anything is called, with a :class:`PipelineError` naming the
global and the file. The ``read_*_pickle`` functions then check the content against what the
adapter expects, so a wrong or corrupted file stops here and not deep inside training.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from pipeline.errors import PipelineError


def _storage_from_bytes(path: Path) -> Callable[[bytes], torch.storage.TypedStorage]:
    """Stand-in for ``torch.storage._load_from_bytes`` that cannot run code from the bytes."""

    def load(b: bytes) -> torch.storage.TypedStorage:
        if not isinstance(b, bytes):
            raise PipelineError(f"refused: the storage bytes inside {path} are a {type(b).__name__}")
        try:
            storage = torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")
        except Exception as e:  # any failure of the inner stream, including a forbidden global
            raise PipelineError(
                f"refused: the storage bytes inside {path} are not a plain tensor storage "
                f"(torch's weights-only loader said: {e})"
            ) from e
        if not isinstance(storage, torch.storage.TypedStorage):
            raise PipelineError(
                f"refused: the storage bytes inside {path} hold a {type(storage).__name__}, not a storage"
            )
        return storage

    return load


def _rebuild_tensor(path: Path) -> Callable[..., torch.Tensor]:
    """``_rebuild_tensor_v2`` that accepts only a real storage and no backward hooks.

    Hooks are callables that would run on a later ``backward()``; a data file never needs them.
    """

    def rebuild(
        storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, *metadata: Any
    ) -> torch.Tensor:
        if not isinstance(storage, torch.storage.TypedStorage) or hooks:
            raise PipelineError(
                f"refused: {path} rebuilds a tensor from a non-storage or with backward hooks"
            )
        # requires_grad is dropped: the graphs are constants.
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict(), *metadata)

    return rebuild


class TensorUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a pickled CPU tensor needs (see module docstring).

    ``find_class`` is the single door through which a pickle reaches code (GLOBAL, STACK_GLOBAL and
    extension codes all go through it), so refusing there means nothing in the file ever runs.
    Persistent ids are refused by the base class, which defines no ``persistent_load``.
    """

    ALLOWED = (
        "torch._utils._rebuild_tensor_v2",
        "torch.storage._load_from_bytes",
        "collections.OrderedDict",
    )

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file)
        self.path = path
        self._globals: dict[str, Any] = {
            "torch._utils._rebuild_tensor_v2": _rebuild_tensor(path),
            "torch.storage._load_from_bytes": _storage_from_bytes(path),
            "collections.OrderedDict": OrderedDict,
        }

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified not in self._globals:
            raise PipelineError(
                f"refused: {self.path} asks for the global {qualified}, which a pickled tensor never "
                f"needs (allowed: {', '.join(self.ALLOWED)}); nothing in the file was run. "
                "Use the authors' original graph files."
            )
        return self._globals[qualified]


def read_tensor_pickle(path: str | Path) -> object:
    """The object in a tensor pickle, loaded by :class:`TensorUnpickler` (no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"graph file {path} is missing (or not a regular file)")
    try:
        with open(path, "rb") as f:
            return TensorUnpickler(f, path).load()
    except PipelineError:
        raise
    except Exception as e:  # truncated, garbage, or a pickle that misuses the allowed globals
        raise PipelineError(f"cannot read {path} as a pickle of tensors: {type(e).__name__}: {e}") from e


def read_graph_pickle(path: str | Path, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[edge_index, edge_weight]`` of a co-occurrence or similarity graph, checked.

    Returns ``edge_index`` as int64 (2, E) with every node id in ``[0, num_codes)`` and the finite
    weights (E,) in their stored floating dtype (float32 co-occurrence, float64 similarity).
    """
    obj = read_tensor_pickle(path)
    if not (
        isinstance(obj, list | tuple) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)
    ):
        found = f"a {type(obj).__name__}" + (f" of {len(obj)}" if isinstance(obj, list | tuple) else "")
        raise PipelineError(f"{path}: expected [edge_index, edge_weight] (two tensors), found {found}")
    edges, weight = obj
    if edges.is_floating_point() or edges.is_complex() or edges.dtype == torch.bool:
        raise PipelineError(f"{path}: edge_index must be an integer tensor, found {edges.dtype}")
    if edges.dim() != 2 or edges.shape[0] != 2:
        raise PipelineError(f"{path}: edge_index must have shape (2, E), found {tuple(edges.shape)}")
    if not weight.is_floating_point():
        raise PipelineError(f"{path}: edge_weight must be a floating tensor, found {weight.dtype}")
    if weight.dim() != 1 or weight.shape[0] != edges.shape[1]:
        raise PipelineError(
            f"{path}: edge_weight must have shape (E,) = ({edges.shape[1]},), found {tuple(weight.shape)}"
        )
    edges = edges.to(torch.int64).contiguous()
    if edges.numel() and (int(edges.min()) < 0 or int(edges.max()) >= num_codes):
        raise PipelineError(
            f"{path}: node ids must lie in [0, {num_codes}), found [{int(edges.min())}, {int(edges.max())}]"
            " (graph built for another codebook?)"
        )
    bad = int((~torch.isfinite(weight)).sum())
    if bad:
        raise PipelineError(f"{path}: {bad} of {weight.numel()} edge weights are NaN or infinite")
    return edges, weight.contiguous()


def read_incompatibility_pickle(
    path: str | Path, num_classes: int, seq_len: int, num_codes: int
) -> torch.Tensor:
    """The dense incompatibility tensor (classes, positions, codes), checked, as float32.

    The authors ship it with or without a row for the null class, so both class counts pass.
    """
    obj = read_tensor_pickle(path)
    if not isinstance(obj, torch.Tensor) or not obj.is_floating_point():
        found = f"a {obj.dtype} tensor" if isinstance(obj, torch.Tensor) else f"a {type(obj).__name__}"
        raise PipelineError(f"{path}: expected one floating tensor, found {found}")
    expected = [(num_classes, seq_len, num_codes), (num_classes + 1, seq_len, num_codes)]
    if tuple(obj.shape) not in expected:
        raise PipelineError(
            f"{path}: incompatibility tensor has shape {tuple(obj.shape)}, expected {expected[0]} "
            f"or {expected[1]} (classes, positions, codes)"
        )
    # Converted first: a float64 value beyond float32's range would become inf and is refused too.
    tensor = obj.to(torch.float32).contiguous()
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise PipelineError(f"{path}: {bad} of {tensor.numel()} incompatibility values are NaN or infinite")
    return tensor
