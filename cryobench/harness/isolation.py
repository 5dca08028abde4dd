"""The harness's side of an isolated run: the optimizer steps in a process of its own.

The data, the oracle and its accounting, the scoring, the checkpoints and the clock stay in the
harness's process. :class:`OptimizerProcess` asks the zygote
(:mod:`cryobench.harness.optimizer_process`, started once per harness process, a fresh
interpreter that never saw the data) for a child, which imports the method from its reference
(a :class:`~cryobench.harness.declared.Declared`'s; a method the harness holds as an object,
cryobench's own or a test's, is sent by value), and serves the
child's oracle calls on the real :class:`~cryobench.oracle.OracleView`: minibatch ids, values,
gradients, Hessian-vector products, EM weights, Fourier transforms and the read-only figures
cross; volumes go through shared memory (:mod:`cryobench.harness.channel`). The clock is the
harness's: an optimizer's time is the round trip of its ``init`` or ``step``, oracle work
included; between them the child is stopped (SIGSTOP), so that no thread of it computes on
untimed time (while the harness scores, say). A step that has not answered when the time limit is reached is killed (whatever
it does: a loop, a sleep, a swallowed exception) — the run keeps its checkpoints and ends with
status ``budget``.

How the child ended is the method's result, never an interruption: an exception (also
``SystemExit`` and ``MemoryError``) is status ``error`` with its message; a process that ends
by itself (``os._exit``, a signal, the out-of-memory killer) or sends something that is not a
message is status ``error`` too (:class:`OptimizerFailed`). A failure of the harness's own
side (the oracle's kernel, memory in the harness) still propagates.
"""
from __future__ import annotations

import base64
import json
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import cloudpickle
import numpy as np

from cryobench.base.messages import warn_once
from cryobench.errors import HarnessFault
from cryobench.harness.channel import (Arena, ChannelClosed, ProtocolError, decode, encode,
                                       receive, send)
from cryobench.harness.declared import Declared
from cryobench.harness.limits import TimeLimitReached
from cryobench.oracle import BudgetExhausted

STATIC = ("budget", "n_train", "train_indices")        # figures that never change in a run
_ZYGOTE: dict = {}                                      # pid of the harness → its zygote
_LOCK = threading.Lock()
DECLARE_TIMEOUT = 120.0                                 # seconds to import an optimizer's source


class OptimizerFailed(Exception):
    """The optimizer's process failed: ``message`` and traceback text are the run's."""

    def __init__(self, message: str, tb: str | None = None):
        super().__init__(message)
        self.message, self.tb = message, tb


class Zygote:
    """The process that forks optimizer processes for this harness process."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CRYOBENCH_") and k != "XDG_CACHE_HOME"}
        env.update(HOME="/nonexistent", CRYOBENCH_HARNESS_PID=str(os.getpid()),
                   PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cryobench.harness.optimizer_process", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, cwd="/")
        theirs.close()
        self.sock, self.ready, self.lock = ours, False, threading.Lock()

    def _request(self, message: dict, fds=()) -> dict:
        with self.lock:                                     # one exchange at a time
            if not self.ready:
                self._answer()                              # the greeting
                self.ready = True
            socket.send_fds(self.sock, [json.dumps(message).encode()], list(fds))
            return self._answer()

    def _answer(self) -> dict:
        try:
            data = self.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            raise HarnessFault("the optimizers' process server ended "
                               f"(exit status {self.proc.poll()})")
        return json.loads(data)

    def fork(self, fds, job: dict) -> int:
        return int(self._request({"op": "fork", "job": job}, fds)["pid"])

    def wait(self, pid: int) -> int:
        return int(self._request({"op": "wait", "pid": pid})["status"])


def zygote() -> Zygote:
    """This process's zygote, started on first use (:func:`prestart` starts it early)."""
    with _LOCK:
        z = _ZYGOTE.get(os.getpid())
        if z is None or z.proc.poll() is not None:
            z = _ZYGOTE[os.getpid()] = Zygote()
        return z


def prestart() -> None:
    """Start the zygote now, so that its imports overlap the loading of a task."""
    zygote()


def module_path() -> list[str]:
    """This process's module path (``sys.path``), absolute: where a child imports from."""
    return [os.path.abspath(p or os.getcwd()) for p in sys.path]


def declarations(sources: list, hidden, timeout: float | None = None) -> list[dict]:
    """The answer of :func:`cryobench.harness.declared.declare` for each source (a reference
    with ``attr`` None for every method of a module), each imported in a sandboxed child of the
    zygote (``hidden`` unreadable, nothing writable), all at once: ``{"declared": […]}`` or
    ``{"error": "one line"}``. A child that ends without answering, or answers nothing within
    ``timeout`` seconds (default :data:`DECLARE_TIMEOUT`; then it is killed), is an error
    naming the source."""
    timeout = DECLARE_TIMEOUT if timeout is None else timeout
    z = zygote()
    job = {"kind": "declare", "hidden": hideable(hidden), "path": module_path()}
    started = []
    for source in sources:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            started.append((ours, z.fork([theirs.fileno()], {**job, "source": source})))
        finally:
            theirs.close()
    deadline, answers = time.monotonic() + timeout, []
    for (sock, pid), source in zip(started, sources):
        chunks, late = [], False
        with sock:
            while True:
                sock.settimeout(max(0.0, deadline - time.monotonic()))
                try:
                    chunk = sock.recv(1 << 16)
                except (socket.timeout, OSError):
                    late = True
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        if late:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = z.wait(pid)
        where = source.get("given") or source["where"]
        try:
            answer = json.loads(b"".join(chunks))
        except ValueError:
            answer = {"error": f"{where}: importing it took more than {timeout:g} s" if late
                      else f"{where}: its import ended the process (exit status {status})"}
        if not str(answer.pop("sandbox", "landlock")).startswith("landlock"):
            warn_once("optimizers are imported without a sandbox (no Landlock): their import "
                      "can read the dataset cache")
        answers.append(answer)
    return answers


def hideable(folders) -> list[str]:
    """The folders to hide from the optimizer's process, less any that holds Python or
    cryobench itself (the process could not run without them; said in a warning)."""
    needed = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix, Path(__file__).parent)]
    out = []
    for folder in folders:
        f = Path(folder).resolve()
        if any(f == n or f in n.parents for n in needed):
            warnings.warn(f"{f} holds Python or cryobench: the optimizer's process can read it",
                          RuntimeWarning, stacklevel=3)
        else:
            out.append(str(f))
    return out


class OptimizerProcess:
    """One run's optimizer in a child process; ``init`` and ``step`` return after the child
    has answered, ``elapsed`` is the optimizer's time so far (round trips, oracle work included)."""

    def __init__(self, method, params: dict, view, x0: np.ndarray, threads: int, hidden,
                 limit: float):
        self.view, self.limit, self.threads = view, float(limit), threads
        self.elapsed, self.pid, self.ended = 0.0, None, None
        self.oracle_s = 0.0                     # of elapsed: in the oracle's evaluations
        self.methods = [n for n in dir(type(view)) if not n.startswith("_")
                        and callable(getattr(type(view), n))]
        figures = [n for n in dir(type(view)) if isinstance(getattr(type(view), n, None), property)]
        self.dynamic = [n for n in figures if n not in STATIC]
        self.static = {n: getattr(view, n) for n in figures if n in STATIC}
        size = 48 * x0.size + 16 * int(view.n_train) + (4 << 20)
        self.outbox, self.inbox = Arena.create(size), Arena.create(size)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        z = zygote()
        job = {"arena": size, "threads": int(threads), "hidden": hideable(hidden)}
        if isinstance(method, Declared):                # imported there, never here
            job.update(reference=method.reference, name=method.name, path=module_path())
        try:
            self.pid = z.fork([theirs.fileno(), self.outbox.fd, self.inbox.fd], job)
        finally:
            theirs.close()
        self.zygote = z
        self.payload = (None if isinstance(method, Declared) else
                        base64.b64encode(cloudpickle.dumps(method)).decode())
        self.params = params
        hello = self._receive(time.perf_counter() + 120.0, "starting")
        self.sandbox = hello.get("hello")
        self.baseline = hello.get("threads")
        if not str(self.sandbox).startswith("landlock"):
            warnings.warn(f"the optimizer's process is not sandboxed: {self.sandbox}; it can read "
                          "the dataset cache", RuntimeWarning, stacklevel=2)

    def _send(self, message) -> None:
        try:
            send(self.sock, encode(message, self.outbox))
        except OSError:
            pass                    # the child is gone: its ending is read by _receive

    def _receive(self, deadline: float | None, doing: str):
        try:
            data = receive(self.sock, deadline)
            return decode(data, self.inbox, copy=False)
        except TimeoutError:
            self.close()
            raise TimeLimitReached from None
        except ChannelClosed:
            status = self.close()
            how = (f"was killed by signal {signal.Signals(-status).name}" if status < 0 and
                   -status in signal.Signals._value2member_map_ else f"ended with exit status {status}")
            raise OptimizerFailed(f"the optimizer's process {how} while {doing}") from None
        except ProtocolError as exc:
            self.close()
            raise OptimizerFailed(f"the optimizer's process sent {exc} while {doing}") from None

    def _figures(self) -> dict:
        return {n: getattr(self.view, n) for n in self.dynamic}

    def _serve(self, request: dict, doing: str):
        """Send a request, answer the child's oracle calls until it is done; the clock runs."""
        start = time.perf_counter()
        deadline = start + max(0.0, self.limit - self.elapsed) if math.isfinite(self.limit) else None
        try:
            self._signal(signal.SIGCONT)
            self._send(request)
            while True:
                reply = self._receive(deadline, doing)
                if not isinstance(reply, dict):
                    raise OptimizerFailed(f"the optimizer's process sent a malformed reply while {doing}")
                if "call" not in reply:
                    break
                self._answer_call(reply)
        finally:
            self.elapsed += time.perf_counter() - start
            self._signal(signal.SIGSTOP)
        if reply.get("threads") != self.baseline:
            raise OptimizerFailed(f"the optimizer changed its thread counts (BLAS, numba) from "
                                  f"{self.baseline} to {reply.get('threads')}: a run's thread "
                                  "count is part of its identity; choose it with --threads")
        if "failed" in reply:
            _, message, tb = reply["failed"]
            raise OptimizerFailed(str(message), str(tb))
        if "budget" in reply:
            raise BudgetExhausted(str(reply["budget"]))
        if "done" not in reply:
            raise OptimizerFailed(f"the optimizer's process sent a malformed reply while {doing}")
        return reply["done"]

    def _signal(self, signum: int) -> None:
        """Freeze (SIGSTOP) or thaw (SIGCONT) the child: it computes only inside its own time."""
        if self.ended is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def _answer_call(self, reply: dict) -> None:
        name, args, kwargs = reply.get("call"), reply.get("args", []), reply.get("kwargs", {})
        if name not in self.methods or not isinstance(args, list) or not isinstance(kwargs, dict):
            out = {"raise": ["AttributeError", f"the oracle has no method {name!r}"]}
        else:
            start = time.perf_counter()
            try:
                out = {"return": getattr(self.view, name)(*args, **kwargs)}
            except (MemoryError, HarnessFault):
                raise                                   # the harness's failure: interrupted
            except Exception as exc:                    # the call's: raised in the optimizer
                out = {"raise": [type(exc).__name__, str(exc)]}
            finally:
                self.oracle_s += time.perf_counter() - start
        out["figures"] = self._figures()
        self._send(out)

    def init(self, x0: np.ndarray, budget: int, rng: np.random.Generator) -> None:
        """``init(x0, budget=…, rng=…)`` of the configured method, in the child."""
        self._serve({"op": "init", "method": self.payload, "params": self.params, "x0": x0,
                     "budget": int(budget), "rng": base64.b64encode(pickle.dumps(rng)).decode(),
                     "methods": self.methods, "static": self.static, "figures": self._figures()},
                    "initialising")

    def step(self):
        """One step in the child; the new iterate (a copy) or a description of what it is."""
        x = self._serve({"op": "step", "figures": self._figures()},
                        f"stepping at {self.view.evaluations:,} evaluations")
        return np.array(x) if isinstance(x, np.ndarray) else not_an_array(x)

    def close(self) -> int:
        """End the child (SIGKILL) and return its exit status (negative: killed by that signal)."""
        if self.ended is None:
            try:
                self.sock.close()
            finally:
                if self.pid is not None:
                    try:
                        os.kill(self.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.ended = self.zygote.wait(self.pid)
                else:
                    self.ended = 0
                for arena in (self.inbox, self.outbox):
                    arena.close()
        return self.ended

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def not_an_array(described):
    """A stand-in for a child's iterate that was not an array, whose type has that name (for
    the run's error message)."""
    name = described.get("type") if isinstance(described, dict) else None
    return type(str(name) if name else type(described).__name__, (), {})()
