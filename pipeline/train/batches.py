"""One epoch's training batches, optionally prepared ahead on a background thread while the device computes.

:class:`EpochBatches` turns the epoch's order of training-set positions into ``n_batches`` batches ``(x, y)`` on the
device: pixels as float32 in [0, 1], the optional CIFAR augmentation (random crop + flip from the trainer's
generator), then the copy to the device.

- ``prefetch_batches = 0``: each batch is made when the loop asks for it (synchronous).
- ``prefetch_batches = n > 0``: one background thread makes the batches *in order* into a queue of at most ``n``
  ready batches.  Only that thread draws from the generator during the epoch, in the same order as the synchronous
  path, so the batches and the generator's state after the epoch are identical whichever is used (and a resumed run
  still matches an uninterrupted one).  An exception in the thread is raised in the consumer; leaving the ``with``
  block (normally or by an exception, e.g. a non-finite loss) stops and joins the thread.  If the consumer stops
  early the generator may have advanced further than the batches consumed; the trainer then fails anyway, and a
  rerun resumes from the last checkpoint's generator state.
- On the CPU with more than one intra-op thread the batches are made synchronously whatever ``prefetch_batches``
  says: the producer's torch ops open their own OpenMP team beside the training step's, and the two teams spin
  against each other (MixTrain+'s step on MNIST_Small, 2 threads on 2 cores: 44 ms with the thread, 24 ms
  without; with one thread it is 29 ms with, 30 ms without). Same batches either way.
- ``pin_memory`` (CUDA only; ignored on CPU): the producer copies each batch into page-locked host memory and the
  consumer issues ``.to(device, non_blocking=True)``, so the host-to-device copy does not block the host, which goes
  on launching the step's kernels (the copy is ordered before them on the current stream).
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["EpochBatches", "augment_crop_flip"]

_POLL_S = 0.05  # how often a blocked producer/consumer re-checks whether the other side went away


def augment_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding (pixel space) and random horizontal flip, per sample (Wong et al.'s CIFAR)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offs = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen)
    out = torch.stack([padded[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(offs.tolist())])
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class _Failure:
    """A producer exception, carried through the queue to the consumer."""

    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


class EpochBatches:
    """``with EpochBatches(...) as batches: for x, y in batches: ...`` — see the module docstring.

    ``split``: a dataset split (``float_images(idx)``, ``y``); ``order``: the epoch's positions in it, batch ``b``
    being ``order[b * batch_size:(b + 1) * batch_size]``; ``augment``: apply :func:`augment_crop_flip` with
    ``generator``.  Iterate once per instance.
    """

    def __init__(self, split, order: np.ndarray, batch_size: int, n_batches: int, augment: bool,
                 generator: torch.Generator, device: torch.device, pin_memory: bool = True, prefetch_batches: int = 0):
        if isinstance(prefetch_batches, bool) or not isinstance(prefetch_batches, int) or prefetch_batches < 0:
            raise ValueError(f"prefetch_batches: expected an integer >= 0, got {prefetch_batches!r}")
        if n_batches * batch_size > len(order):
            raise ValueError(f"{n_batches} batches of {batch_size} need {n_batches * batch_size} positions, "
                             f"the epoch order has {len(order)}")
        self.split, self.order, self.batch_size, self.n_batches = split, np.asarray(order), batch_size, n_batches
        self.augment, self.generator = augment, generator
        self.device = torch.device(device)
        self.pin = bool(pin_memory) and self.device.type == "cuda"
        cpu_threads = self.device.type == "cpu" and torch.get_num_threads() > 1
        self.prefetch = 0 if cpu_threads else prefetch_batches
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._started = False

    # -- producing (synchronous path, or the background thread) --------------------------------------------------
    def _make(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        x, y = self.split.float_images(idx), self.split.y[idx]
        if self.augment:
            x = augment_crop_flip(x, self.generator)
        if self.pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cpu":
            return x, y
        return x.to(self.device, non_blocking=self.pin), y.to(self.device, non_blocking=self.pin)

    def _put(self, item: object) -> bool:
        """Put into the queue unless the consumer has gone; False if it has."""
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for b in range(self.n_batches):
                if self._stop.is_set() or not self._put(self._make(b)):
                    return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 -- everything is handed to the consumer, which re-raises it
            self._put(_Failure(e))

    # -- consuming ------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._started:
            raise RuntimeError("EpochBatches is iterated once per epoch")
        self._started = True
        if self.prefetch == 0:
            for b in range(self.n_batches):
                yield self._to_device(*self._make(b))
            return
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._produce, name="epoch-batches", daemon=True)
        self._thread.start()
        try:
            for _ in range(self.n_batches + 1):
                item = self._get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield self._to_device(*item)  # type: ignore[misc]
        finally:
            self.close()

    def _get(self) -> object:
        assert self._queue is not None and self._thread is not None
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the batch producer thread ended without finishing the epoch") from None

    def close(self) -> None:
        """Stop the producer (if any), drop batches it had ready and wait for it to end.  Idempotent."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                self._drain()
                self._thread.join(timeout=_POLL_S)
            self._thread = None
        self._drain()

    def _drain(self) -> None:
        if self._queue is None:
            return
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def __enter__(self) -> "EpochBatches":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
