"""The sandboxed process of `--reward code_exec`: it runs the program and nothing that judges it.

Started by rlvr/rewards/code/execute.py (`python -I -S -B -c "import sandbox_boot; sandbox_boot.main()"
SETTINGS`) in a fresh directory that holds only program.py, with a scrubbed environment, stdin
from /dev/null, stdout and stderr to a capped file, and two pipes to the judge
(rlvr/rewards/code/judge.py): requests in, replies out. Before any of the program's code runs it reads
and deletes program.py, sets the kernel limits, leaves the network (a new network namespace,
where the kernel permits one), restricts the file system with Landlock (where the kernel has it)
and installs an audit hook that refuses what a verified program never needs. Then it answers the
judge's requests, one JSON line each (rlvr/rewards/code/wire.py): run the program's top level and list the
names it defined, call one of them, read an attribute of an object it returned, or run the whole
program on a given stdin.

Nothing here decides a reward: the tests and the expected values never enter this process, so a
program that takes this process over can only choose the data it answers with.
docs/reliability.md says which guarantee comes from the kernel, which from Python, and which from
the process split.
"""
import builtins
import ctypes
import json
import os
import resource
import struct
import sys
import types

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # last: never ahead of the standard library
import wire as code_wire  # noqa: E402  (a sibling file: the rlvr package is not importable under -I -S)

sys.path.pop()

# Modules whose only use here would be to get around the hook (native calls, process creation), or
# that open files from C, out of the hook's sight.
BLOCKED_IMPORTS = {"_posixsubprocess", "_ctypes", "ctypes", "cffi", "_cffi_backend", "_sqlite3", "_dbm", "_gdbm"}
# Also refused: every "ctypes.*" event (loading and calling native code, reading raw memory).
BLOCKED_EVENTS = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill",
                  "os.killpg", "subprocess.Popen", "socket.__new__", "socket.connect", "socket.bind",
                  "socket.getaddrinfo", "sys.settrace", "sys.setprofile", "sys._current_frames", "code.__new__",
                  "resource.prlimit"}
# Events that change the file system: (positions of the paths changed, positions of dir_fd arguments).
WRITE_EVENTS = {"os.mkdir": ((0,), (2,)), "os.rename": ((0, 1), (2, 3)), "os.remove": ((0,), (1,)),
                "os.rmdir": ((0,), (1,)), "os.symlink": ((1,), (2,)), "os.link": ((0, 1), (2, 3)),
                "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.utime": ((0,), (3,)),
                "os.truncate": ((0,), ()), "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ())}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
# Readable outside the sandbox directory, besides the interpreter's module path (see readable_paths).
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
UNAUDITED = ("pidfd_open", "pidfd_send_signal", "mknod", "chroot")
LIBRARY_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64")  # where the dynamic loader finds libraries
LOADER_CACHE = "/etc/ld.so.cache"
MUTABLE = (list, dict, set)  # arguments whose in-place changes the judge copies back
OBJECT_OPERATIONS = {"bool": bool, "len": len, "list": list, "getitem": None}
VALUE_ITEMS = 100_000  # a module-level value with more items is not copied to the tests

# Landlock (linux/landlock.h): syscall numbers (the same on every architecture but alpha) and access rights.
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_MAKE_CHAR, FS_MAKE_BLOCK, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 6, 1 << 11, 1 << 14, 1 << 15
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


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


def readable_paths() -> tuple[list[str], list[str]]:
    """(directories, files) the program may read outside its own directory: the interpreter's
    module path (the standard library and its extension modules; `-S` leaves site-packages out),
    the shared-library directories those extension modules load from, the loader's cache, devices."""
    multiarch = getattr(sys.implementation, "_multiarch", "")
    directories = [entry for entry in sys.path if os.path.isdir(entry)]
    for base in LIBRARY_DIRS:
        nested = os.path.join(base, multiarch)
        directories.append(nested if multiarch and os.path.isdir(nested) else base)
    directories = sorted({os.path.realpath(d) for d in directories if os.path.isdir(d)})
    files = [path for path in (LOADER_CACHE, *DEVICES) if os.path.exists(path)]
    return directories, files


def leave_network(libc) -> bool:
    """A new network namespace (no interfaces but a down loopback), where the kernel allows one;
    otherwise Landlock's TCP rules and the hook's socket refusal are all there is. Also: die with
    the parent."""
    libc.prctl(PR_SET_PDEATHSIG, 9)  # SIGKILL: never outlive the verifier that started us
    return libc.unshare(CLONE_NEWNET) == 0 or libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0


def restrict_filesystem(libc, sandbox: str, directories: list[str], files: list[str]) -> int:
    """Landlock: from here on the kernel refuses every file access outside `sandbox` except reads
    of `directories` and `files` (and writes to /dev/null), refuses execve everywhere, TCP bind and
    connect (ABI >= 4), signals to and abstract sockets of processes outside (ABI >= 6), and ptrace
    of them (all ABIs). Returns the Landlock ABI in force; 0 where the kernel has none."""
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(ctypes.c_long(LANDLOCK_CREATE_RULESET), None, ctypes.c_long(0), ctypes.c_long(1))
    if abi < 1:  # ENOSYS or EOPNOTSUPP: no Landlock in this kernel
        return 0
    handled = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) \
        | (FS_IOCTL_DEV if abi >= 5 else 0)
    network = 0b11 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, with no rule allowing any port
    scoped = 0b11 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET | SIGNAL
    attr = struct.pack("=QQQ", handled, network, scoped)[:8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = syscall(ctypes.c_long(LANDLOCK_CREATE_RULESET), attr, ctypes.c_long(len(attr)), ctypes.c_long(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    file_rights = handled & (FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV)
    # In its own directory: everything but execve and making device nodes (root could mknod the disk).
    rules = [(sandbox, handled & ~(FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK)),
             ("/dev/null", handled & (FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE))]
    rules += [(d, FS_READ_FILE | FS_READ_DIR) for d in directories] + [(f, FS_READ_FILE) for f in files]
    try:
        for path, rights in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not os.path.isdir(path):
                    rights &= file_rights
                rule = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr (packed)
                if syscall(ctypes.c_long(LANDLOCK_ADD_RULE), ctypes.c_long(ruleset), ctypes.c_long(1), rule,
                           ctypes.c_long(0)) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
                syscall(ctypes.c_long(LANDLOCK_RESTRICT_SELF), ctypes.c_long(ruleset), ctypes.c_long(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


def resolve(path, getcwd=os.getcwd, lstat=os.lstat, readlink=os.readlink):
    """os.path.realpath (non-strict) from C functions and the path alone: the program can patch
    os.path and posixpath, but not this function's defaults (setting them is an audited event)."""
    if not path.startswith("/"):
        path = getcwd() + "/" + path
    pending = path.split("/")[::-1]
    resolved = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "" or part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/" + "/".join(resolved + [part])
        try:
            is_link = lstat(candidate).st_mode & 0o170000 == 0o120000
        except:  # noqa: E722 (missing: a plain component, as realpath has it; a bare except names no global)
            is_link = False
        if not is_link:
            resolved.append(part)
            continue
        links += 1
        if links > 40:
            return "/\0too many links"  # matches no allowed root
        target = readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending += target.split("/")[::-1]
    return "/" + "/".join(resolved)


def install_hook(sandbox: str, directories: list[str], files: list[str]) -> None:
    """Refuses process creation, sockets, native calls, tracing, reads outside `sandbox` except
    `directories` and `files`, writes outside it except /dev/null, and changing directory out of it.

    The hook and `resolve` use only their arguments and defaults, never a global or builtin name
    looked up at call time, and every path is copied to an exact str first: so the program cannot
    change what the hook compares by patching modules, builtins or its own str subclasses."""
    def hook(event, args, sandbox=sandbox, directories=tuple(directories), files=frozenset(files),
             devices=frozenset(DEVICES), blocked_events=frozenset(BLOCKED_EVENTS),
             blocked_imports=frozenset(BLOCKED_IMPORTS), write_events=tuple(WRITE_EVENTS.items()),
             write_flags=WRITE_FLAGS,
             protected=frozenset({"__code__", "__defaults__"}), resolve=resolve, type=type, issubclass=issubclass,
             int=int, str=str, bytes=bytes, fspath=os.fspath, text_of=str.__str__, decode=bytes.decode,
             stack_limit=resource.RLIMIT_STACK, stat=os.stat, PermissionError=PermissionError,
             ImportError=ImportError):
        if event in blocked_events or event.startswith("ctypes."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import":
            if issubclass(type(args[0]), str) and text_of(args[0]) in blocked_imports:
                raise ImportError(f"sandbox: import of {text_of(args[0])} is not allowed")
            return
        if event == "resource.setrlimit":  # as root it could raise its own hard limits; the stack is free
            if args[0] != stack_limit:
                raise PermissionError("sandbox: setrlimit is not allowed (but for RLIMIT_STACK)")
            return
        if event == "object.__setattr__":
            if issubclass(type(args[1]), str) and text_of(args[1]) in protected:
                raise PermissionError(f"sandbox: setting {text_of(args[1])} is not allowed")
            return
        if event == "open":
            paths, mode, flags = (args[0],), args[1], args[2]
            if issubclass(type(args[0]), int):  # os.fdopen of a descriptor the program already holds
                return
        elif event in ("os.listdir", "os.scandir", "os.chdir"):
            paths, mode, flags = (args[0] if args[0] is not None else ".",), "r", 0
        else:
            for name, (positions, dir_fds) in write_events:
                if name == event:
                    break
            else:
                return
            for position in dir_fds:
                if args[position] is not None and args[position] != -1:
                    raise PermissionError(f"sandbox: {event} with a dir_fd is not allowed")
            paths, mode, flags = (), "w", 0
            for position in positions:
                paths += (args[position],)
        for path in paths:
            if issubclass(type(path), int):  # listing a directory it opened (through this hook) is a read
                if event == "os.listdir" or event == "os.scandir":
                    continue
                raise PermissionError(f"sandbox: {event} on a file descriptor is not allowed")
            path = fspath(path)
            text = text_of(path) if issubclass(type(path), str) else decode(path, "utf-8", "surrogateescape")
            # os.open (mode None) may carry a dir_fd the hook cannot see: it must name an absolute path.
            if mode is None and not text.startswith("/"):
                raise PermissionError(f"sandbox: os.open needs an absolute path, got {text!r}")
            writes = flags & write_flags != 0 if mode is None else "w" in mode or "a" in mode or "x" in mode \
                or "+" in mode
            if text in devices or resolve(text) in devices:
                if writes and text != "/dev/null":
                    raise PermissionError(f"sandbox: writing {text!r} is not allowed")
                continue
            real = resolve(text)
            if real == sandbox or real.startswith(sandbox + "/"):
                try:  # a device node made inside (root may mknod without an audit event) is not its file
                    kind = stat(real).st_mode & 0o170000
                except:  # noqa: E722 (missing: it is about to be created; a bare except names no global)
                    kind = 0
                if kind == 0o020000 or kind == 0o060000:
                    raise PermissionError(f"sandbox: opening the device {text!r} is not allowed")
                continue
            if writes or event == "os.chdir":
                raise PermissionError(f"sandbox: {event} of {text!r} outside the sandbox directory is not allowed")
            if real in files:
                continue
            for directory in directories:
                if real == directory or real.startswith(directory + "/"):
                    break
            else:
                raise PermissionError(f"sandbox: reading {text!r} outside the sandbox directory is not allowed")

    sys.addaudithook(hook)


def message_of(error: BaseException) -> str:
    """str(error), even when the program's __str__ misbehaves."""
    try:
        return str(error)[:2000]
    except BaseException:  # noqa: BLE001 (a __str__ that raises, SystemExit included)
        return ""


def remove_unaudited() -> None:
    """Deletes functions that raise no audit event but reach outside: signalling another process
    through a pidfd, making device nodes, chroot. They are then nowhere to be found in this process."""
    import posix
    import signal

    for module in (os, posix, signal):
        for name in UNAUDITED:
            if hasattr(module, name):
                delattr(module, name)


def describe(error: BaseException) -> str:
    """`Type: message`, even when the program's __str__ misbehaves."""
    try:
        return f"{type(error).__name__}: {error}"[:2000]
    except BaseException:  # noqa: BLE001 (a __str__ that raises, SystemExit included)
        return type(error).__name__


class Server:
    """Answers the judge's requests about one program; a request is a dict with "id" and "op"."""

    def __init__(self, source: str, reply_fd: int, devnull: int, settings: dict) -> None:
        self.source, self.code, self.load_error = source, None, None
        self.reply_fd, self.devnull, self.settings = reply_fd, devnull, settings
        self.output_fd = os.dup(1)  # the capped output file, where fd 1 returns after each stdin run
        self.objects: list = []  # handle number -> an object of the program, kept alive
        self.handles: dict[int, int] = {}  # id(object) -> handle number

    def send(self, reply: dict) -> None:
        data = code_wire.dumps(reply)
        if len(data) > self.settings["message_bytes"]:
            data = code_wire.dumps({"id": reply["id"], "failed": f"an answer of {len(data)} bytes, more than the "
                                                                 f"limit of {self.settings['message_bytes']}"})
        view = memoryview(data)
        while view:
            view = view[os.write(self.reply_fd, view):]

    def answer(self, request: dict) -> dict:
        op = request.get("op")
        if op == "load":
            return self.load()
        if op == "call":
            return self.call(request)
        if op == "getattr":
            return self.get_attribute(request)
        if op == "run":
            return self.run(request["stdin"])
        if op in OBJECT_OPERATIONS:
            return self.object_operation(op, request)
        return {"failed": f"unknown request {op!r}"}

    def handle_of(self, value) -> int | None:
        """A handle for an instance of a class the program defined; None for anything else."""
        if getattr(type(value), "__module__", None) != "__main__":
            return None
        return self.register(value)

    def register(self, value) -> int:
        number = self.handles.get(id(value))
        if number is None:
            number = self.handles[id(value)] = len(self.objects)
            self.objects.append(value)
        return number

    def value_reply(self, value) -> dict:
        try:
            return {"value": code_wire.encode(value, self.handle_of)}
        except code_wire.NotPlainData as error:
            return {"failed": f"the program answered with {error}"}
        except BaseException as error:  # noqa: BLE001 (a generator that raised while it was read)
            return {"failed": f"reading the program's answer raised {describe(error)}"}

    def compile(self) -> bool:
        """Compiles the program once, under the limits (a pathological program may be slow to compile)."""
        if self.code is None and self.load_error is None:
            try:
                self.code = compile(self.source, "program.py", "exec")
            except BaseException as error:  # noqa: BLE001 (SyntaxError, RecursionError, MemoryError)
                self.load_error = describe(error)
        return self.load_error is None

    def load(self) -> dict:
        """Runs the program's top level; lists its names: functions and classes by handle, plain values."""
        if not self.compile():
            return {"error": self.load_error}
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        try:
            exec(self.code, namespace)
        except BaseException as error:  # noqa: BLE001 (SystemExit included: the program did not load)
            report(error)
            return {"error": describe(error)}
        names = {}
        for name, value in list(namespace.items()):
            kind = type(value)
            if name.startswith("__") and name.endswith("__") or issubclass(kind, types.ModuleType):
                continue
            if callable(value):
                names[name] = ["callable", self.register(value)]
                continue
            try:
                names[name] = ["value", code_wire.encode(value, self.handle_of, iterators=False, budget=[VALUE_ITEMS])]
            except BaseException:  # noqa: BLE001 (not plain data, or too large: the tests do not see it)
                pass
        return {"names": names}

    def call(self, request: dict) -> dict:
        try:
            target = self.objects[request["handle"]]
            if request.get("attr") is not None:
                target = getattr(target, request["attr"])
            args = [code_wire.decode(arg, self.objects.__getitem__) for arg in request["args"]]
            kwargs = {key: code_wire.decode(arg, self.objects.__getitem__) for key, arg in request["kwargs"]}
            result = target(*args, **kwargs)
        except Exception as error:  # the tests may expect it (pytest.raises, try/except)
            return {"raised": [type(error).__name__, message_of(error)]}
        except BaseException as error:  # noqa: BLE001 (SystemExit, KeyboardInterrupt: a failed call)
            return {"failed": f"the program raised {describe(error)}"}
        reply = self.value_reply(result)
        # Lists, dicts and sets it was given go back as they are now: the tests may check an in-place change.
        changed = [[key, value] for key, value in [*enumerate(args), *kwargs.items()] if type(value) in MUTABLE]
        if changed and "value" in reply:
            after = self.value_reply(changed)
            if "value" not in after:
                return after
            reply["after"] = after["value"]
        return reply

    def get_attribute(self, request: dict) -> dict:
        try:
            value = getattr(self.objects[request["handle"]], request["name"])
        except Exception as error:
            return {"raised": [type(error).__name__, message_of(error)]}
        except BaseException as error:  # noqa: BLE001
            return {"failed": f"the program raised {describe(error)}"}
        return {"callable": True} if callable(value) else self.value_reply(value)

    def object_operation(self, op: str, request: dict) -> dict:
        """bool(), len(), list() or [key] of an object of the program, for a ProgramObject in the judge."""
        try:
            target = self.objects[request["handle"]]
            if op == "getitem":
                value = target[code_wire.decode(request["key"], self.objects.__getitem__)]
            else:
                value = OBJECT_OPERATIONS[op](target)
        except Exception as error:
            return {"raised": [type(error).__name__, message_of(error)]}
        except BaseException as error:  # noqa: BLE001
            return {"failed": f"the program raised {describe(error)}"}
        return self.value_reply(value)

    def run(self, stdin: str) -> dict:
        """Runs the whole program with `stdin` on fd 0 and a fresh file on fd 1; returns what it wrote."""
        if not self.compile():
            return {"stdout": "", "error": self.load_error}
        output_path = os.path.join(os.getcwd(), ".rlvr-stdout")
        output = os.open(output_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.remove(output_path)  # nameless from here: the program cannot reopen or replace it
        feed_read, feed_write = os.pipe()
        os.dup2(feed_read, 0)
        os.close(feed_read)
        os.dup2(output, 1)
        import threading  # here: only stdin runs need it

        threading.Thread(target=feed, args=(feed_write, stdin.encode()), daemon=True).start()
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        error = None
        try:
            exec(self.code, {"__name__": "__main__", "__builtins__": builtins})
        except SystemExit as stop:  # sys.exit() or sys.exit(0) ends a stdin/stdout program normally
            if stop.code not in (None, 0):
                error = f"SystemExit: {stop.code!r:.200}"
        except BaseException as failure:  # noqa: BLE001
            report(failure)
            error = describe(failure)
        try:
            sys.stdout.flush()
            sys.__stdout__.flush()
        except BaseException as failure:  # noqa: BLE001 (output over the file-size limit, a closed stream)
            error = error or describe(failure)
        os.dup2(self.devnull, 0)  # the feeder's pipe closes: a feeder blocked on an unread stdin ends
        os.dup2(self.output_fd, 1)
        size = os.fstat(output).st_size
        written = os.pread(output, min(size, self.settings["file_bytes"]), 0)
        os.close(output)
        return {"stdout": written.decode("utf-8", errors="replace"), "error": error}


def feed(fd: int, data: bytes) -> None:
    """Writes a run's stdin into its pipe (a thread: the pipe holds 64 KiB and the program reads as it goes)."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:  # the program stopped reading and the run is over
        pass
    finally:
        os.close(fd)


def flush_output() -> None:
    """What the program printed, into the captured output."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 (over the file-size limit, closed or replaced by the program)
            pass


def report(error: BaseException) -> None:
    """The program's failure, to its captured output (for whoever reads Result.output)."""
    try:
        sys.__stderr__.write(f"sandbox: {describe(error)}\n")
        sys.__stderr__.flush()
    except BaseException:  # noqa: BLE001 (the output is over its limit, or closed by the program)
        pass


def main() -> None:
    settings = json.loads(sys.argv[1])
    sandbox = os.path.realpath(os.getcwd())
    replies, requests = settings["reply_fd"], os.fdopen(settings["request_fd"], "rb")
    ready: dict = {"id": 0}
    source = ""
    try:
        with open("program.py", encoding="utf-8", errors="replace") as file:
            source = file.read()
        os.remove("program.py")  # the directory is the program's own from here
        devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        directories, files = readable_paths()
        set_limits(settings)
        libc = ctypes.CDLL(None, use_errno=True)
        network = leave_network(libc)
        if os.getppid() != settings["parent"]:  # the verifier died before PR_SET_PDEATHSIG was in force
            os._exit(1)
        landlock = restrict_filesystem(libc, sandbox, directories, files)
        for name in [m for m in sys.modules if m in ("ctypes", "_ctypes") or m.startswith("ctypes.")]:
            del sys.modules[name]  # re-importing it now goes through the hook, which refuses it
        del libc
        remove_unaudited()
        install_hook(sandbox, directories, files)
        ready["ready"] = {"landlock_abi": landlock, "network_namespace": network}
    except Exception as error:  # the sandbox could not be set up: not the program's fault (it never ran)
        ready["setup_error"] = describe(error)
    server = Server(source, replies, devnull if "ready" in ready else -1, settings)
    server.send(ready)
    if "ready" not in ready:
        return
    sys.argv = ["program.py"]
    for line in requests:  # the judge's requests, until it closes the pipe
        request = json.loads(line)
        try:
            reply = server.answer(request)
        except BaseException as error:  # noqa: BLE001 (the program broke this process's own machinery)
            reply = {"failed": f"the sandbox could not answer: {describe(error)}"}
        flush_output()  # before the answer: the process may be killed as soon as the judge has it
        server.send({"id": request["id"], **reply})


if __name__ == "__main__":
    main()
