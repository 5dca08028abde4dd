"""The optimizer's side of an isolated run: a process that holds the optimizer and nothing else.

``python -m cryobench.harness.optimizer_process FD`` is a *zygote*: a fresh interpreter (never a
fork of a process that loaded data) that imports the protocol's modules once and then, for each
run, forks a child on the harness's request (the control socket FD) and reports how the child
ended. The zygote dies with the process that started it, and a child with its zygote
(``PR_SET_PDEATHSIG``), so nothing outlives a killed harness.

A child, before any optimizer code runs: leaves the zygote's control socket, moves to ``/``,
sets its BLAS and numba threads, and sandboxes itself with Landlock (:mod:`cryobench.base.landlock`:
the data folders unreadable, nothing writable, no signals to the harness, no access to its
memory); where Landlock is missing it says so in its greeting and the harness warns. It then
imports the method from its reference (:func:`cryobench.harness.declared.load_reference`: a
file, ``module:attr``, an entry point, another library's class; an import that fails is the
run's error) — or, for a method the harness holds as an object (cryobench's own, a test's),
receives it by value (``cloudpickle``) — configures and initialises it, and runs its steps on a
:class:`ProxyView`, which forwards each call over the channel
(:mod:`cryobench.harness.channel`); after each step it sends the iterate back.

A *declaring* child (:func:`declarer`) sandboxes itself the same way (nothing writable at all),
imports one optimizer source and sends back its methods' declarations as JSON
(:func:`cryobench.harness.declared.declare`): the harness's process never imports an
optimizer's module.
"""
from __future__ import annotations

import base64
import ctypes
import json
import os
import pickle
import signal
import socket
import sys
import traceback
from types import MappingProxyType

import cloudpickle
import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from cryobench.base.landlock import LandlockUnavailable, restrict
from cryobench.base.threads import set_threads
from cryobench.harness.channel import Arena, decode, encode, receive, send
from cryobench.harness.declared import declare, load_reference
from cryobench.oracle import BudgetExhausted, OracleView

#: exceptions the harness's oracle raises that reach the optimizer as themselves
FORWARDED = {e.__name__: e for e in (BudgetExhausted, ValueError, TypeError, KeyError,
                                     IndexError, NotImplementedError, AttributeError,
                                     ZeroDivisionError, OverflowError, ArithmeticError)}
EXIT_PROTOCOL = 5           # the child's exit status when its channel breaks
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 1 << 14, 1 << 18


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent ends; exit at once if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)       # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(EXIT_PROTOCOL)


class _Channel:
    def __init__(self, sock, inbox: Arena, outbox: Arena):
        self.sock, self.inbox, self.outbox = sock, inbox, outbox

    def send(self, message) -> None:
        send(self.sock, encode(message, self.outbox))

    def receive(self):
        return decode(receive(self.sock), self.inbox, copy=True)


def proxy_view(channel: _Channel, methods: list, static: dict, figures: dict) -> OracleView:
    """An :class:`~cryobench.oracle.OracleView` whose methods are calls to the harness and whose
    figures are the values the harness last sent (``counts`` as a read-only mapping,
    ``train_indices`` read-only)."""
    current = dict(figures)

    def update(new: dict) -> None:
        current.clear()
        current.update(new)

    def call(name):
        def forward(self, *args, **kwargs):
            channel.send({"call": name, "args": list(args), "kwargs": kwargs})
            reply = channel.receive()
            update(reply["figures"])
            if "raise" in reply:
                kind, message = reply["raise"]
                raise FORWARDED.get(kind, RuntimeError)(message)
            return reply["return"]
        forward.__name__ = name
        return forward

    def figure(name):
        value = static.get(name)
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
        if name in static:
            return property(lambda self: value)
        if name == "counts":
            return property(lambda self: MappingProxyType(dict(current[name])))
        return property(lambda self: current[name])

    members = {n: call(n) for n in methods}
    members.update({n: figure(n) for n in [*static, *figures]})
    members["__slots__"] = ()
    members["__repr__"] = lambda self: (f"<oracle view: {current.get('evaluations', 0):,} of "
                                        f"{static.get('budget', 0):,} evaluations used>")
    view = type("OracleView", (OracleView,), members)()
    return view, update


def _threads(controller: ThreadpoolController) -> list:
    blas = [lib.num_threads for lib in controller.lib_controllers if lib.user_api == "blas"]
    return [max(blas) if blas else None, numba.get_num_threads()]


def _failure(exc: BaseException) -> dict:
    if isinstance(exc, SystemExit):
        message = f"SystemExit: the optimizer called sys.exit({exc.code!r})"
    else:
        message = f"{type(exc).__name__}: {exc}"
    return {"failed": [type(exc).__name__, message[:20000], traceback.format_exc()[-100000:]]}


def serve(channel: _Channel, controller: ThreadpoolController, imported=None) -> None:
    """Answer the harness's ``init`` and ``step`` requests until it closes the channel;
    ``imported``: the method imported from its reference, or the exception that raised."""
    opt = state = view = update = None
    while True:
        request = channel.receive()
        op = request["op"]
        try:
            if op == "init":
                if isinstance(imported, BaseException):
                    raise imported
                method = imported or cloudpickle.loads(base64.b64decode(request["method"]))
                rng = pickle.loads(base64.b64decode(request["rng"]))
                view, update = proxy_view(channel, request["methods"], request["static"],
                                          request["figures"])
                opt = method.configure(**request["params"])
                state = opt.init(request["x0"], budget=request["budget"], rng=rng)
                reply = {"done": None}
            elif op == "step":
                update(request["figures"])
                state = opt.step(state, view)
                x = opt.iterate(state)
                reply = {"done": x if isinstance(x, np.ndarray) else {"type": type(x).__name__}}
            else:
                return
        except BudgetExhausted as exc:
            reply = {"budget": str(exc)}
        except BaseException as exc:                       # noqa: BLE001 — the method's failure
            reply = _failure(exc)
        reply["threads"] = _threads(controller)
        try:
            channel.send(reply)
        except TypeError as exc:                           # an iterate that cannot cross
            channel.send({"failed": ["TypeError", f"TypeError: {exc}", ""],
                          "threads": reply["threads"]})


def private_tmp() -> bool:
    """Mount a tmpfs of its own on ``/tmp`` in a new mount namespace (a user namespace too when
    not root): the optimizer's temporary files vanish with its process, killed or not. Not
    where Python, a folder of its path or cryobench lies under ``/tmp`` (a virtual environment
    made there): the tmpfs would hide them from the imports still to come."""
    tmp = os.path.realpath("/tmp")
    needed = [sys.prefix, sys.base_prefix, os.path.dirname(__file__), *sys.path]
    if any(os.path.realpath(p or ".").startswith(tmp + os.sep) for p in needed):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | (0 if uid == 0 else CLONE_NEWUSER)
    if libc.unshare(flags) != 0:
        return False
    if uid != 0:
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                               ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as fh:
                    fh.write(text)
        except OSError:
            return False
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    return libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV,
                      b"size=1g,mode=1777") == 0


def child(zygote: int, fds: list, job: dict) -> None:
    """A forked child: sandbox itself, greet the harness, serve the run."""
    _die_with_parent(zygote)
    sock = socket.socket(fileno=fds[0])
    inbox, outbox = Arena(fds[1], job["arena"], False), Arena(fds[2], job["arena"], True)
    os.chdir("/")
    ref, text = job.get("reference"), None
    if ref and ref["kind"] == "file":                   # read before a private /tmp hides it
        try:
            with open(ref["where"], "rb") as fh:
                text = fh.read()
        except OSError:
            text = None
    if job.get("path"):
        sys.path[:] = job["path"]                       # the harness's module path
    tmp = private_tmp()
    os.environ["TMPDIR"] = "/tmp"
    set_threads(job["threads"])
    controller = ThreadpoolController()
    try:
        sandbox = restrict(job["hidden"], ("/dev/null", "/tmp") if tmp else ("/dev/null",))
        sandbox += ", a private /tmp" if tmp else ", no writable /tmp"
    except LandlockUnavailable as exc:
        sandbox = f"none ({exc})"
    channel = _Channel(sock, inbox, outbox)
    threads, imported = _threads(controller), None
    if ref:
        try:
            imported = load_reference(ref, job.get("name"), text)
            if imported.name != job.get("name"):
                raise ImportError(f"{job['reference'].get('where')} declares {imported.name!r} "
                                  f"here, {job.get('name')!r} in the harness's registry")
        except (Exception, SystemExit) as exc:          # the run's error, reported at init
            imported = exc
    channel.send({"hello": sandbox, "threads": threads})
    serve(channel, controller, imported)


def declarer(zygote: int, fds: list, job: dict) -> None:
    """A forked child that declares: sandbox itself (the data folders hidden, nothing writable),
    import ``job["source"]`` with the harness's module path and send the declarations as JSON
    (:func:`cryobench.harness.declared.declare`)."""
    _die_with_parent(zygote)
    sock = socket.socket(fileno=fds[0])
    os.chdir("/")
    sys.dont_write_bytecode = True
    sys.path[:] = job["path"]
    try:
        sandbox = restrict(job["hidden"], ("/dev/null",))
    except LandlockUnavailable as exc:
        sandbox = f"none ({exc})"
    answer = {**declare(job["source"]), "sandbox": sandbox}
    sock.sendall(json.dumps(answer).encode())
    sock.close()


def zygote(control_fd: int) -> None:
    """Fork a child for each ``fork`` request of the harness; report a child's exit status on
    ``wait``; end when the harness closes the control socket."""
    ctl = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(os.environ.get("CRYOBENCH_HARNESS_PID", os.getppid())))
    ctl.send(b'{"ready": true}')
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 3)
        except OSError:
            return
        if not data:
            return
        request = json.loads(data)
        if request["op"] == "fork":
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    ctl.close()
                    run = declarer if request["job"].get("kind") == "declare" else child
                    run(os.getppid(), fds, request["job"])
                except BaseException:                       # noqa: BLE001 — the channel broke
                    code = EXIT_PROTOCOL
                finally:
                    os._exit(code)
            for fd in fds:
                os.close(fd)
            ctl.send(json.dumps({"pid": pid}).encode())
        elif request["op"] == "wait":
            _, status = os.waitpid(int(request["pid"]), 0)
            ctl.send(json.dumps({"status": os.waitstatus_to_exitcode(status)}).encode())


if __name__ == "__main__":
    zygote(int(sys.argv[1]))
