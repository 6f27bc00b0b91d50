"""The one thread that runs every torch operation of an in-process model.

Why one thread: with OpenMP, every OS thread that runs a parallel torch op gets a team of its
own. Once a second thread (a stream's, a panel's) has run one, the process holds more OpenMP
threads than cores, libgomp stops spinning between ops, and every op gets slower (stream and
panel decoded 1.26× slower than generate). So in-process engines share one long-lived thread
(``acquire``/``release``): models load there, and every generate, stream, forward pass and view
runs there as a job; other threads only enqueue jobs and read their results. One thread for
all models, not one per model, because a notebook that compares four models side by side
would otherwise hold four teams; jobs of different models take turns, which costs nothing on
a CPU whose cores one model already fills. The thread ends when the last model closes.

Waiting is never unbounded on the caller's side: it polls, so Ctrl-C (a KeyboardInterrupt on
the kernel's main thread) arrives, sets the job's Stop and returns once the job has ended.
A job that asks for another job from inside this thread (a callback calling the model) fails
at once instead of waiting for itself.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import torch

from ...core.requests import INSIDE_MESSAGE, StopSignal
from ...errors import GenerationError

T = TypeVar("T")

_POLL_S = 0.05  # how often a waiting caller wakes up: the bound on Ctrl-C latency
_AFTER_INTERRUPT_S = 30.0  # how long Ctrl-C waits for the stopped job to end (one step, normally)
_END = object()  # what a streaming job puts in its queue when it is done

class Job:
    """One function to run on the model thread, and its outcome."""

    def __init__(self, fn: Callable[[], Any], threads: int) -> None:
        self.fn = fn
        self.threads = threads  # torch.get_num_threads() of the caller: its setting applies here
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
            self.result = self.fn()
        except BaseException as exc:  # handed to the caller, which re-raises it
            self.error = exc
        finally:
            self.fn = None  # drop the closure (and the tensors it holds) before anyone is told
            self.done.set()

    def wait(self, stop: StopSignal | None = None) -> Any:
        """The job's result, re-raising its error; Ctrl-C sets ``stop`` and waits for the job to end."""
        try:
            while not self.done.wait(_POLL_S):
                pass
        except BaseException:
            if stop is not None:
                stop.set()
            self.done.wait(_AFTER_INTERRUPT_S)
            raise
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.result


class ModelThread:
    """A daemon thread that runs jobs one at a time, in the order they were submitted.

    >>> worker = ModelThread("hfllm_nb-engine")     # doctest: +SKIP
    >>> worker.call(lambda: torch.ones(2).sum())
    >>> worker.close()
    """

    def __init__(self, name: str = "hfllm_nb-engine") -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def is_current(self) -> bool:
        """True on the model thread itself: there, a new job could only wait for its own caller."""
        return threading.current_thread() is self.thread

    def submit(self, fn: Callable[[], Any]) -> Job:
        if self.is_current():
            raise GenerationError(INSIDE_MESSAGE)
        job = Job(fn, torch.get_num_threads())
        with self._lock:
            if self._closed:
                raise GenerationError("This model was closed; load it again with HuggingFaceLLM(...).")
            self._jobs.put(job)
        return job

    def call(self, fn: Callable[[], T], stop: StopSignal | None = None) -> T:
        """Run ``fn()`` on the model thread and return its result (its error is raised here)."""
        return self.submit(fn).wait(stop)

    def stream(self, fn: Callable[[Callable[[Any], None]], T], stop: StopSignal) -> Generator[Any, None, T]:
        """Run ``fn(emit)`` on the model thread; yield what it emits as it comes; return its result.

        Closing the generator (``break``), or Ctrl-C while it waits, sets ``stop`` and waits
        for the job to end, so the model is free again when this returns.
        """
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def body() -> T:
            try:
                return fn(items.put)
            finally:
                items.put(_END)

        job = self.submit(body)
        finished = False
        try:
            while True:
                with contextlib.suppress(queue.Empty):
                    item = items.get(timeout=_POLL_S)
                    if item is _END:
                        finished = True
                        break
                    yield item
        finally:
            if not finished:
                stop.set()
                job.done.wait(_AFTER_INTERRUPT_S)
        return job.wait(stop)

    def close(self, timeout: float = 30.0) -> bool:
        """Let queued jobs finish, then end the thread; True if it ended within ``timeout``."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._jobs.put(None)
        if self.is_current():
            return False
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job.run()


_shared: ModelThread | None = None
_users = 0
_shared_lock = threading.Lock()


def acquire() -> ModelThread:
    """The process's model thread, started if no model holds it; pair with ``release``."""
    global _shared, _users
    with _shared_lock:
        if _shared is None:
            _shared = ModelThread()
        _users += 1
        return _shared


def release(worker: ModelThread) -> bool:
    """One model less; the last one ends the thread. True once the thread has ended."""
    global _shared, _users
    with _shared_lock:
        if worker is not _shared:
            return not worker.thread.is_alive()
        _users -= 1
        if _users > 0:
            return False
        _shared = None
    return worker.close()
