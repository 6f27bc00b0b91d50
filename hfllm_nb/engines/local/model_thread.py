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
the kernel's main thread) arrives at once. A job that has not started is then withdrawn (it never
runs); a running one gets its Stop and ends within a step. Nothing on the model thread itself ever
waits for a job (a stream collected as garbage there only stops its job). At exit the running job
is stopped, so the interpreter never tears down while torch runs.
A job that asks for another job from inside this thread (a callback calling the model) fails
at once instead of waiting for itself.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import torch

from ...core.requests import INSIDE_MESSAGE, StopSignal
from ...errors import GenerationError

T = TypeVar("T")

_POLL_S = 0.05  # how often a waiting caller wakes up: the bound on Ctrl-C latency
_AFTER_STOP_S = 30.0  # the most a caller waits for its stopped job to end (one step, normally)
_AT_EXIT_S = 10.0  # how long exit waits for the running job to take its Stop
_END = object()  # what a streaming job puts in its queue when it is done
_QUEUED, _RUNNING, _DONE = "queued", "running", "done"
_WITHDRAWN = "This call was withdrawn before it started (Ctrl-C, or its model was closed)."


class Job:
    """One function to run on the model thread, and its outcome.

    ``owner`` is the engine that asked (``close()`` withdraws its queued jobs); ``stop`` the request's
    Stop signal, set when a waiting caller is interrupted or the process exits.
    """

    def __init__(self, fn: Callable[[], Any], stop: StopSignal | None = None, owner: object = None) -> None:
        self.fn: Callable[[], Any] | None = fn
        self.stop = stop
        self.owner = owner
        self.threads = torch.get_num_threads()  # the caller's setting applies on the model thread too
        self.state = _QUEUED
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.worker: threading.Thread | None = None  # the model thread, once queued there
        self._lock = threading.Lock()

    def run(self) -> None:
        """On the model thread: run it unless it was withdrawn."""
        with self._lock:
            if self.state != _QUEUED:
                return
            self.state = _RUNNING
        try:
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
            self.result = self.fn()
        except BaseException as exc:  # handed to the caller, which re-raises it
            self.error = exc
        finally:
            self.fn = None  # drop the closure (and the tensors it holds) before anyone is told
            self.state = _DONE
            self.done.set()

    def withdraw(self) -> bool:
        """Make sure a job that has not started never does; True unless it is running now."""
        with self._lock:
            if self.state == _QUEUED:
                self.state, self.fn = _DONE, None
                self.error = GenerationError(_WITHDRAWN)
                self.done.set()
            return self.state == _DONE

    def halt(self) -> None:
        """Withdraw the job, or stop it and wait (one step) for it to end; never waits on the model thread."""
        if self.withdraw():
            return
        if self.stop is not None:
            self.stop.set()
        if threading.current_thread() is not self.worker:
            self.done.wait(_AFTER_STOP_S)

    def wait(self) -> Any:
        """The job's result, re-raising its error; Ctrl-C halts the job first."""
        try:
            while not self.done.wait(_POLL_S):
                pass
        except BaseException:
            self.halt()
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
        self._jobs: collections.deque[Job | None] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self.current: Job | None = None
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def is_current(self) -> bool:
        """True on the model thread itself: there, a new job could only wait for its own caller."""
        return threading.current_thread() is self.thread

    def enqueue(self, job: Job) -> None:
        """Queue a job made by the caller (made first, so Ctrl-C can never lose a queued one)."""
        if self.is_current():
            raise GenerationError(INSIDE_MESSAGE)
        job.worker = self.thread
        with self._ready:
            if self._closed:
                raise GenerationError("This model was closed; load it again with HuggingFaceLLM(...).")
            self._jobs.append(job)
            self._ready.notify()

    def call(self, fn: Callable[[], T], stop: StopSignal | None = None, owner: object = None) -> T:
        """Run ``fn()`` on the model thread and return its result (its error is raised here)."""
        job = Job(fn, stop, owner)
        try:
            self.enqueue(job)
        except BaseException:
            job.withdraw()
            raise
        return job.wait()

    def stream(
        self, fn: Callable[[Callable[[Any], None]], T], stop: StopSignal, owner: object = None
    ) -> Generator[Any, None, T]:
        """Run ``fn(emit)`` on the model thread; yield what it emits as it comes; return its result.

        Closing the generator (``break``, garbage collection), or Ctrl-C while it waits, halts the
        job, so the model is free again when this returns (on the model thread: once it ends).
        """
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def body() -> T:
            try:
                return fn(items.put)
            finally:
                items.put(_END)

        job = Job(body, stop, owner)
        finished = False
        try:
            self.enqueue(job)
            while True:
                with contextlib.suppress(queue.Empty):
                    item = items.get(timeout=_POLL_S)
                    if item is _END:
                        finished = True
                        break
                    yield item
        finally:
            if not finished:
                job.halt()
        return job.wait()

    def withdraw(self, owner: object) -> None:
        """Withdraw every queued job of ``owner`` (its model is closing)."""
        with self._ready:
            jobs = [job for job in self._jobs if job is not None and job.owner is owner]
        for job in jobs:
            job.withdraw()

    def halt_all(self) -> None:
        """Withdraw every queued job and stop the running one (the process is exiting)."""
        with self._ready:
            jobs = [job for job in self._jobs if job is not None]
            running = self.current
        for job in jobs:
            job.withdraw()
        if running is not None and running.stop is not None:
            running.stop.set()

    def close(self, timeout: float = _AFTER_STOP_S) -> bool:
        """End the thread after the job it runs; True if it ended within ``timeout``."""
        with self._ready:
            if not self._closed:
                self._closed = True
                self._jobs.append(None)
                self._ready.notify()
        if self.is_current():
            return False
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
                job = self._jobs.popleft()
                self.current = job
            if job is None:
                return
            try:
                job.run()
            finally:
                self.current = None


_shared: ModelThread | None = None
_users: weakref.WeakSet[object] = weakref.WeakSet()  # the engines holding the shared thread
_shared_lock = threading.Lock()


def acquire(user: object) -> ModelThread:
    """The process's model thread, started if no model holds it; pair with ``release(user)``."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ModelThread()
        _users.add(user)
        return _shared


def release(user: object) -> bool:
    """``user`` holds the thread no more (idempotent); the last one ends it. True once it has ended."""
    global _shared
    with _shared_lock:
        if user not in _users:
            return _shared is None
        _users.discard(user)
        if len(_users) > 0:
            return False
        worker, _shared = _shared, None
    return worker.close()


@atexit.register
def _stop_at_exit() -> None:
    # A daemon thread inside a torch op while the interpreter tears down aborts the process
    # ("terminate called without an active exception"): stop the job and let the thread end first.
    worker = _shared
    if worker is not None:
        worker.halt_all()
        worker.close(_AT_EXIT_S)
