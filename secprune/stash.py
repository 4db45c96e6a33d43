"""Dense weights parked on disk while a pruned model is evaluated in place.

Evaluating a mask needs the dense weights back afterwards (the next baseline starts from them). Keeping
them in memory doubles the prunable weights (4.9 GiB on Qwen2.5-1.5B, the largest item of the pruned
evaluation's peak). A :class:`WeightStash` writes each tensor's bytes to an anonymous temporary file
(``tempfile.TemporaryFile``: owner-only, never named in a folder, gone when closed or when the process
dies) and reads them back into the same storage, so restoring allocates nothing but one tensor's staging
buffer for a GPU model. The file holds model weights only, never a client's data.
"""

from __future__ import annotations

import tempfile

import torch


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous CPU tensor (dtype-agnostic: bf16 has no numpy type)."""
    return t.reshape(-1).view(torch.uint8)


class WeightStash:
    """Name -> tensor bytes in one anonymous temporary file; :meth:`take` copies them back in place."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self._where: dict[str, tuple[int, int, torch.dtype, torch.Size]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __iter__(self):
        return iter(list(self._where))

    def __len__(self) -> int:
        return len(self._where)

    def put(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._where:
            raise ValueError(f"{name} is already stashed")
        src = tensor.detach().to("cpu").contiguous()
        data = _bytes(src).numpy()
        offset = self._file.seek(0, 2)
        self._file.write(memoryview(data))
        self._where[name] = (offset, data.nbytes, tensor.dtype, tensor.shape)

    def take(self, name: str, into: torch.Tensor) -> None:
        """Copy the stashed bytes of ``name`` back into ``into`` (same dtype and shape), then forget them."""
        offset, nbytes, dtype, shape = self._where.pop(name)
        if into.dtype != dtype or into.shape != shape:
            raise ValueError(f"{name}: stashed {dtype} {tuple(shape)}, restoring into {into.dtype} {tuple(into.shape)}")
        direct = into.device.type == "cpu" and into.is_contiguous()
        buf = into if direct else torch.empty(shape, dtype=dtype)
        self._file.seek(offset)
        if self._file.readinto(memoryview(_bytes(buf).numpy())) != nbytes:
            raise OSError(f"{name}: the weight stash was truncated")
        if not direct:
            into.copy_(buf)

    def close(self) -> None:
        self._file.close()
        self._where.clear()
