"""A local fsspec filesystem that counts the bytes read through it, across processes.

Ray Data's read tasks run in other processes: each open file adds what it read to a per-process
file under ``counter_dir`` when it closes, and ``bytes_read`` sums them. For benchmarks only.
"""

from __future__ import annotations

import os

from fsspec.implementations.local import LocalFileSystem

__all__ = ["CountingLocalFileSystem", "bytes_read"]


class _CountingFile:
    def __init__(self, f, counter_dir: str):
        self._f, self._dir, self._n = f, counter_dir, 0

    def read(self, *args):
        data = self._f.read(*args)
        self._n += len(data)
        return data

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        self._n += n or 0
        return n

    def close(self):
        if not self._f.closed:
            with open(os.path.join(self._dir, f"{os.getpid()}.count"), "a") as out:
                out.write(f"{self._n}\n")
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


class CountingLocalFileSystem(LocalFileSystem):
    cachable = False

    def __init__(self, counter_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.counter_dir = counter_dir

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode=mode, **kwargs)
        return _CountingFile(f, self.counter_dir) if "r" in mode else f


def bytes_read(counter_dir: str) -> int:
    total = 0
    for name in os.listdir(counter_dir):
        with open(os.path.join(counter_dir, name)) as f:
            total += sum(int(line) for line in f if line.strip())
    return total
