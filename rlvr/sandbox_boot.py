"""The first code a sandboxed program's interpreter runs (`python -I -B sandbox_boot.py SETTINGS`).

Started by rlvr/code_exec.py with a scrubbed environment, stdin closed and output to a capped
file, in its own session and a fresh directory. Before any of the program's code it sets the
kernel limits, leaves the network (a new network namespace, where the kernel permits one),
installs an audit hook that refuses what a verified program never needs, and reads the secret
exit code that alone says "the tests passed". Then it runs the program followed by the tests.

The audit hook is Python-level: it stops ordinary code and casual reward hacking, not a
determined attacker with native code. docs/reliability.md says which guarantee is which.
"""
import json
import os
import resource
import sys

# Modules whose only use here would be to get around the hook (native calls, process creation).
BLOCKED_IMPORTS = {"_posixsubprocess", "_ctypes", "ctypes", "cffi", "_cffi_backend"}
BLOCKED_EVENTS = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill",
                  "os.killpg", "subprocess.Popen", "socket.__new__", "socket.connect", "socket.bind",
                  "socket.getaddrinfo", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function"}
# Events that change the file system: (positions of the paths changed, positions of dir_fd arguments).
WRITE_EVENTS = {"os.mkdir": ((0,), (2,)), "os.rename": ((0, 1), (2, 3)), "os.remove": ((0,), (1,)),
                "os.rmdir": ((0,), (1,)), "os.symlink": ((1,), (2,)), "os.link": ((1,), (2, 3)),
                "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.utime": ((0,), (3,)),
                "os.truncate": ((0,), ())}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000


def set_limits(settings: dict) -> None:
    """Kernel limits: CPU seconds, address space, file size, open files, no core dumps, processes."""
    for which, value in ((resource.RLIMIT_CPU, settings["cpu_seconds"]),
                         (resource.RLIMIT_AS, settings["memory_mib"] << 20),
                         (resource.RLIMIT_FSIZE, settings["file_bytes"]),
                         (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NPROC, own_processes() + settings["processes"])):
        resource.setrlimit(which, (value, value))


def own_processes() -> int:
    """Processes of this user now: the kernel counts them all against RLIMIT_NPROC."""
    uid = os.getuid()
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:  # it ended while we counted
                pass
    return count


def leave_network() -> bool:
    """A new network namespace (no interfaces but a down loopback), where the kernel allows one;
    otherwise the hook's socket refusal is all there is. Also: die with the parent."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: never outlive the verifier that started us
    return libc.unshare(CLONE_NEWNET) == 0 or libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0


def install_hook(sandbox: str) -> None:
    """Refuses process creation, sockets, native calls, reading /proc, and writes outside `sandbox`."""
    def inside(path) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):  # a file descriptor could point anywhere
            return False
        real = os.path.realpath(os.fsdecode(path))
        return real == sandbox or real.startswith(sandbox + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event in BLOCKED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in BLOCKED_IMPORTS:
            raise ImportError(f"sandbox: import of {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):  # os.fdopen of a descriptor the program already holds
                return
            if os.path.realpath(os.fsdecode(path)).startswith("/proc"):
                raise PermissionError("sandbox: /proc is not readable")  # other processes' environments
            writes = bool(flags & WRITE_FLAGS) if mode is None else any(c in str(mode) for c in "wax+")
            # os.open (mode None) may carry a dir_fd the hook cannot see: it must name an absolute path.
            if writes and (not inside(path) or mode is None and not os.path.isabs(os.fsdecode(path))):
                raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory is not allowed")
        if event in WRITE_EVENTS:
            paths, dir_fds = WRITE_EVENTS[event]
            if not all(inside(args[i]) for i in paths) or any(args[i] not in (-1, None) for i in dir_fds):
                raise PermissionError(f"sandbox: {event} outside the sandbox directory is not allowed")

    sys.addaudithook(hook)


def refuse_exit(*args) -> None:
    raise PermissionError("sandbox: os._exit is not allowed (the tests must run to their end)")


def main() -> None:
    settings = json.loads(sys.argv[1])
    sandbox = os.path.realpath(os.getcwd())
    passed_code = int(os.read(settings["code_fd"], 16))  # the only proof that the tests ran to their end
    os.close(settings["code_fd"])
    set_limits(settings)
    leave_network()
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.")]:
        del sys.modules[name]  # re-importing it now goes through the hook, which refuses it
    sources = []
    for name in ("program.py", "tests.py"):
        with open(name, encoding="utf-8") as fh:
            sources.append(compile(fh.read(), name, "exec"))
        os.remove(name)  # the program cannot read the tests it is checked against
    run, exit_now, stdout, stderr = exec, os._exit, sys.stdout, sys.stderr  # held before the program can replace them
    os._exit = refuse_exit
    import posix

    posix._exit = refuse_exit
    install_hook(sandbox)
    sys.argv = ["program.py"]
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        for code in sources:
            run(code, namespace)
    except BaseException as err:  # SystemExit included: the tests did not run to their end
        try:
            stdout.flush()
            print(f"sandbox: {type(err).__name__}: {err}"[:2000], file=stderr, flush=True)
        finally:
            exit_now(1)
    try:
        stdout.flush()
    finally:
        exit_now(passed_code)


if __name__ == "__main__":
    main()
