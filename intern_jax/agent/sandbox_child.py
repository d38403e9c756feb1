"""The sandbox's child process: ``python -I sandbox_child.py LIMIT CPU MEM FSIZE NPROC ISOLATION WORKDIR TOTAL``.

Started by ``sandbox.PythonSandbox``; it imports nothing of intern_jax (it runs from its path with
``-I``). It first isolates itself (``ISOLATION`` is ``namespaces``, ``auto`` or ``process``), answers one
JSON line saying what it got, then runs requests: one JSON line in (``{"code"}``), code ``exec``-ed in one
persistent namespace with stdout/stderr captured, one JSON line out. Nothing else writes on the reply
pipe: fd 1 is /dev/null while code runs, and a process the code forked ends where the code ends.

Namespaces (``unshare(2)`` through ``ctypes``; Python 3.11 has no ``os.unshare``): new mount, PID,
network, IPC and UTS namespaces, plus a user namespace when not started as root. The process forks
an init (PID 1 of the new namespace: it reaps, and when it ends the kernel kills everything left in
the namespace), which mounts a fresh /proc, makes the whole mount tree read-only, nosuid and nodev
(``mount_setattr(2)``, recursive), binds the session directory back read-write and /dev/null, zero,
random, urandom back usable, then forks the interpreter. Before running code the interpreter drops
every privilege: started as root it becomes a uid of its own (``UID_BASE`` + the starter's pid; a
directory that uid could not traverse on the way to the Python installation, such as a 0700
``/root``, is covered by an empty tmpfs with only the installation bound into it); otherwise it keeps
its uid and drops its capabilities. Then ``PR_SET_NO_NEW_PRIVS`` and ``RLIMIT_NPROC``.

In every mode, where a memory cgroup can be created (root, or a delegated cgroup v2), the child first moves
into one of its own limited to ``TOTAL`` bytes, so its processes together cannot take more.
"""

import ctypes
import io
import json
import os
import resource
import signal
import stat
import sys
import threading
import time
import traceback

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
SYS_MOUNT_SETATTR = 442  # the same number on x86_64 and arm64 (new system calls share one table)
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
UID_BASE = 1_000_000_000
OWNER_POLL = 0.1  # seconds between checks that the process that started the session is still there
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target: str, fstype, flags: int, data=None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _mount_setattr(path: str, set_: int, clear: int, flags: int) -> None:
    attr = _MountAttr(set_, clear, 0, 0)
    _check(libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), path.encode(), ctypes.c_uint(flags),
                        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), f"mount_setattr {path}")


def _readonly_tree() -> None:
    """Every mount read-only, nosuid and nodev."""
    _mount_setattr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, AT_RECURSIVE)


def _bind_back(path: str, clear: int) -> None:
    """A bind mount of ``path`` on itself (it inherits the read-only tree's flags), with ``clear`` taken off."""
    _mount(path, path, None, MS_BIND)
    _mount_setattr(path, 0, clear, 0)


def _relay(pid: int, owner: int | None = None) -> None:
    """Wait for ``pid`` and end the same way (its signal re-raised on ourselves); never returns. With ``owner``
    (our parent's pid), also kill ``pid`` if the owner goes away without closing the session."""
    while True:
        try:
            done, status = os.waitpid(-1, 0 if owner is None else os.WNOHANG)
        except ChildProcessError:
            os._exit(1)
        if done == 0:  # nothing ended yet (polling for the owner)
            if os.getppid() != owner:
                os.kill(pid, signal.SIGKILL)  # the namespace's init: the kernel ends everything in it
                owner = None
            else:
                time.sleep(OWNER_POLL)
            continue
        if done != pid:
            continue  # an orphan re-parented to us (we are PID 1 of the namespace)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
        elif os.WEXITSTATUS(status) > 128 and os.WEXITSTATUS(status) - 128 < signal.NSIG:
            sig = os.WEXITSTATUS(status) - 128
        else:
            os._exit(os.WEXITSTATUS(status))
        if os.getpid() == 1:  # the namespace's init cannot be killed from inside: report it as a status
            os._exit(128 + sig)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)


def _watch_owner(owner: int) -> None:
    """Kill our process group (this interpreter and what it forked) once the owner is gone without closing us."""
    while os.getppid() == owner:
        time.sleep(OWNER_POLL)
    os.killpg(0, signal.SIGKILL)


def _python_dirs() -> list[str]:
    dirs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path) if p}
    dirs = sorted(d for d in dirs if os.path.isdir(d))
    return [d for d in dirs if not any(d != o and d.startswith(o + os.sep) for o in dirs)]


def _closed_ancestor(path: str) -> str | None:
    """The top directory above ``path`` that others may not traverse (no o+x), or None."""
    parts = path.strip(os.sep).split(os.sep)
    for i in range(1, len(parts)):
        ancestor = os.sep + os.path.join(*parts[:i])
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return ancestor
    return None


def _cover_closed_dirs() -> None:
    """Started as root, we will become an unprivileged uid: cover each directory it could not traverse on the
    way to the Python installation (e.g. a 0700 /root) with a tmpfs holding only the installation."""
    covers: dict[str, list[tuple[str, int]]] = {}
    for d in _python_dirs():
        closed = _closed_ancestor(d)
        if closed:
            covers.setdefault(closed, []).append((d, os.open(d, os.O_PATH | os.O_DIRECTORY)))
    for closed, inner in covers.items():
        _mount("tmpfs", closed, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=64k")
        for d, fd in inner:
            os.makedirs(d, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", d, None, MS_BIND | MS_REC)
            os.close(fd)


def _drop_privileges(as_root: bool, uid: int, workdir: str) -> None:
    if as_root:
        os.chown(workdir, uid, uid)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # leaving uid 0 clears every capability
    else:
        for cap in range(64):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        data = (ctypes.c_uint32 * 6)()
        _check(libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


class NamespacesUnavailable(OSError):
    """``unshare(2)`` refused: nothing has changed yet, so the process may go on without namespaces."""


def enter_namespaces(workdir: str, nproc: int, owner: int) -> str:
    """Isolate as described in the module docstring; returns a one-line description. Raises
    ``NamespacesUnavailable`` when the kernel refuses to create the namespaces, any other OSError when a later
    step fails (then the process is half-isolated and must not run code)."""
    as_root = os.geteuid() == 0
    uid, gid, starter = os.getuid(), os.getgid(), os.getpid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if libc.unshare(flags if as_root else flags | CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        raise NamespacesUnavailable(err, f"unshare: {os.strerror(err)}")
    if not as_root:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    init = os.fork()
    if init:
        _relay(init, owner)
    # PID 1 of the new namespaces
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if as_root:
        _cover_closed_dirs()
    _readonly_tree()
    _bind_back(workdir, MOUNT_ATTR_RDONLY)
    for device in DEVICES:
        if os.path.exists(device):
            _bind_back(device, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV)
    os.chdir(workdir)  # the old working directory is the read-only mount under the new bind
    worker = os.fork()
    if worker:
        _relay(worker)
    sandbox_uid = UID_BASE + starter if as_root else uid
    _drop_privileges(as_root, sandbox_uid, workdir)
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    for outside in ("/", os.path.dirname(workdir), "/proc"):
        if not os.statvfs(outside).f_flag & os.ST_RDONLY:
            raise OSError(f"{outside} is still writable; refusing to run unconfined")
    who = f"uid {sandbox_uid}, no capabilities" if as_root else f"uid {uid} in a user namespace, no capabilities"
    return (f"namespaces: mount (read-only but the session directory), pid, network (no interfaces up), ipc, uts; "
            f"{who}; at most {nproc} processes")


def join_memory_cgroup(limit: int) -> str | None:
    """Move this process into a new memory cgroup of ``limit`` bytes (its children follow), below the one it is
    in: cgroup v1's memory hierarchy, else cgroup v2 where the memory controller is delegated. Best effort: the
    cgroup's path, or None where cgroups cannot be written (not root, no delegation)."""
    try:
        lines = [line.rstrip("\n").split(":", 2) for line in open("/proc/self/cgroup")]
    except OSError:
        return None
    name = f"intern_jax_sandbox_{os.getpid()}"
    candidates = [(f"/sys/fs/cgroup/memory{path}", "memory.limit_in_bytes") for _, ctrl, path in lines
                  if "memory" in ctrl.split(",")]
    candidates += [(f"/sys/fs/cgroup{path}", "memory.max") for hid, ctrl, path in lines if hid == "0" and ctrl == ""
                   if os.path.exists(f"/sys/fs/cgroup{path}/cgroup.controllers")]
    for parent, limit_file in candidates:
        group = os.path.join(os.path.normpath(parent), name)
        try:
            os.mkdir(group)
        except OSError:
            continue
        try:
            with open(os.path.join(group, limit_file), "w") as f:
                f.write(str(limit))
            swap = os.path.join(group, "memory.memsw.limit_in_bytes" if limit_file.endswith("bytes") else
                                "memory.swap.max")
            if os.path.exists(swap):
                with open(swap, "w") as f:
                    f.write(str(limit) if limit_file.endswith("bytes") else "0")
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            return group
        except OSError:
            try:
                os.rmdir(group)
            except OSError:
                pass
    return None


class Capped(io.TextIOBase):
    """A text stream that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int):
        self.limit, self.parts, self.size, self.dropped = limit, [], 0, 0

    def writable(self):
        return True

    def write(self, s):
        keep = max(0, min(len(s), self.limit - self.size))
        if keep:
            self.parts.append(s[:keep])
            self.size += keep
        self.dropped += len(s) - keep
        return len(s)

    def text(self):
        t = "".join(self.parts)
        return t + (f"\n... ({self.dropped} more characters cut)" if self.dropped else "")


def serve(limit: int, cpu: int, mem: int, reply, requests) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    namespace = {"__name__": "__main__"}
    me = os.getpid()
    for line in requests:
        code = json.loads(line)["code"]
        out, err = Capped(limit), Capped(limit)
        sys.stdout, sys.stderr = out, err
        used = resource.getrusage(resource.RUSAGE_SELF)
        resource.setrlimit(resource.RLIMIT_CPU,
                           (int(used.ru_utime + used.ru_stime) + cpu + 1, resource.RLIM_INFINITY))
        error = None
        try:
            exec(compile(code, "<code>", "exec"), namespace)
        except BaseException as e:
            error = "".join(traceback.format_exception_only(type(e), e)).strip()
            tb = traceback.extract_tb(e.__traceback__)
            src = code.splitlines()
            lines = [f"  line {f.lineno}: {src[f.lineno - 1].strip()}" for f in tb
                     if f.filename == "<code>" and 0 < (f.lineno or 0) <= len(src)]
            if lines:
                error = "Traceback (in your code):\n" + "\n".join(lines) + "\n" + error
        finally:
            if os.getpid() != me:  # a process the code forked: it must not answer or read requests
                os._exit(0)
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        reply.write(json.dumps({"stdout": out.text(), "stderr": err.text(), "error": error}) + "\n")
        reply.flush()


def main(argv: list[str]) -> None:
    limit, cpu, mem, fsize, nproc = (int(a) for a in argv[:5])
    isolation, workdir, total = argv[5], argv[6], int(argv[7])
    owner = os.getppid()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write raises OSError instead of killing us
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # code writing to fd 1 cannot corrupt the replies
    requests = sys.stdin
    sys.stdin = io.StringIO()
    group = join_memory_cgroup(total)
    hello = {"isolation": "process", "detail": "a plain child process with rlimits"}
    if isolation in ("namespaces", "auto"):
        try:
            hello = {"isolation": "namespaces", "detail": enter_namespaces(workdir, nproc, owner)}
        except OSError as e:
            if isolation == "namespaces" or not isinstance(e, NamespacesUnavailable):
                reply.write(json.dumps({"error": f"could not isolate the interpreter in namespaces ({e})",
                                        "cgroup": group}) + "\n")
                reply.flush()
                os._exit(3)
            hello["detail"] += f" (namespaces are not available here: {e})"
    if group:
        hello["cgroup"] = group
        hello["detail"] += f"; all its processes together hold at most {total >> 20} MB (memory cgroup)"
    if hello["isolation"] == "process":  # no init to watch over us: a thread ends the group if the owner goes
        threading.Thread(target=_watch_owner, args=(owner,), daemon=True).start()
    reply.write(json.dumps(hello) + "\n")
    reply.flush()
    serve(limit, cpu, mem, reply, requests)


if __name__ == "__main__":
    main(sys.argv[1:])
