using System.Runtime.InteropServices;
using System.Text;
using static P11Proxy.Platform.Libc;

namespace P11Proxy.Broker;

/// <summary>
/// The system calls of the broker's process model: starting workers (posix_spawn of a fresh image,
/// never fork of this multi-threaded runtime), passing a connection to them (SCM_RIGHTS over a
/// SOCK_SEQPACKET pair), tying them to the listener (PR_SET_PDEATHSIG), reaping them without
/// signal races (pidfd + wait4, which also reports their peak RSS) and resource limits.
/// Pointers stay inside this class; the libc declarations it uses are the shared ones (P11Proxy.Platform.Libc).
/// </summary>
internal static unsafe class Posix
{
    // ---- control socket: SOCK_SEQPACKET pair with descriptor passing -----------------------------------

    /// <summary>A connected pair of close-on-exec SOCK_SEQPACKET sockets.</summary>
    public static (int, int) ControlPair()
    {
        int* fds = stackalloc int[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0)
            throw new BrokerException($"cannot create a socket pair for a worker: {Describe(LastError)}");
        return (fds[0], fds[1]);
    }

    /// <summary>Sends one message, with <paramref name="passFd"/> attached when it is not -1; 0 or the errno.</summary>
    public static int SendMessage(int fd, ReadOnlySpan<byte> message, int passFd = -1)
    {
        const int controlSpace = 24; // CMSG_SPACE(sizeof(int)) on LP64
        byte* control = stackalloc byte[controlSpace];
        new Span<byte>(control, controlSpace).Clear();
        fixed (byte* data = message)
        {
            var vector = new IoVector { Base = data, Length = (nuint)message.Length };
            var header = new MessageHeader { Vectors = &vector, VectorCount = 1 };
            if (passFd >= 0)
            {
                *(nuint*)control = 20;                // cmsg_len = CMSG_LEN(sizeof(int))
                *(int*)(control + 8) = SOL_SOCKET;    // cmsg_level
                *(int*)(control + 12) = SCM_RIGHTS;   // cmsg_type
                *(int*)(control + 16) = passFd;
                header.Control = control;
                header.ControlLength = controlSpace;
            }
            while (true)
            {
                if (sendmsg(fd, &header, MSG_NOSIGNAL) >= 0) return 0;
                int errno = LastError;
                if (errno != EINTR) return errno;
            }
        }
    }

    /// <summary>
    /// Receives one message into <paramref name="buffer"/>: its length (0 at end of stream, -1 on
    /// error with the errno in <paramref name="errno"/>), and a passed descriptor (close-on-exec)
    /// in <paramref name="receivedFd"/> or -1. Descriptors beyond the first are closed.
    /// </summary>
    public static int ReceiveMessage(int fd, Span<byte> buffer, out int receivedFd, out int errno)
    {
        const int controlSpace = 64; // room for a few descriptors: extras sent by mistake are closed, not leaked
        byte* control = stackalloc byte[controlSpace];
        receivedFd = -1;
        fixed (byte* data = buffer)
        {
            var vector = new IoVector { Base = data, Length = (nuint)buffer.Length };
            var header = new MessageHeader { Vectors = &vector, VectorCount = 1, Control = control, ControlLength = controlSpace };
            nint got;
            while (true)
            {
                got = recvmsg(fd, &header, MSG_CMSG_CLOEXEC);
                if (got >= 0) break;
                errno = LastError;
                if (errno != EINTR) return -1;
            }
            errno = 0;
            // Walk the control messages (CMSG_FIRSTHDR / CMSG_NXTHDR): SCM_RIGHTS carries int fds.
            nuint offset = 0;
            while (offset + 16 <= header.ControlLength)
            {
                nuint length = *(nuint*)(control + offset);
                if (length < 16 || offset + length > header.ControlLength) break;
                int level = *(int*)(control + offset + 8), type = *(int*)(control + offset + 12);
                if (level == SOL_SOCKET && type == SCM_RIGHTS)
                {
                    int count = (int)((length - 16) / sizeof(int));
                    for (int i = 0; i < count; i++)
                    {
                        int passed = *(int*)(control + offset + 16 + (nuint)(i * sizeof(int)));
                        if (receivedFd < 0) receivedFd = passed;
                        else close(passed);
                    }
                }
                offset += (length + 7) & ~(nuint)7;
            }
            if ((header.Flags & MSG_CTRUNC) != 0 && receivedFd < 0)
            {
                errno = 90; // EMSGSIZE: descriptors were dropped
                return -1;
            }
            return (int)got;
        }
    }

    // ---- worker processes ---------------------------------------------------------------------------------

    /// <summary>
    /// A prepared command line and environment for <see cref="Spawn"/>, in native memory for the
    /// life of the process: the listener starts a worker per client, and building these anew each
    /// time (an environment of 50 variables) made 13 KiB of garbage per client.
    /// </summary>
    public sealed class PreparedCommand
    {
        internal readonly byte* Path;
        internal readonly byte** Argv;
        internal readonly byte** Envp;

        public PreparedCommand(string path, IReadOnlyList<string> arguments, IReadOnlyList<string> environment)
        {
            Path = Utf8(path);
            Argv = Block(arguments);
            Envp = Block(environment);
        }

        private static byte** Block(IReadOnlyList<string> strings)
        {
            var block = (byte**)NativeMemory.AllocZeroed((nuint)((strings.Count + 1) * sizeof(nint)));
            for (int i = 0; i < strings.Count; i++) block[i] = Utf8(strings[i]);
            return block;
        }

        private static byte* Utf8(string text)
        {
            var bytes = Encoding.UTF8.GetBytes(text + "\0");
            var p = (byte*)NativeMemory.Alloc((nuint)bytes.Length);
            bytes.CopyTo(new Span<byte>(p, bytes.Length));
            return p;
        }
    }

    /// <summary>
    /// The executable to start workers from: the file this process was started from (what
    /// /proc/self/exe names, as the kernel or a tool running us, such as valgrind, reports it), or
    /// the image itself through /proc/self/exe once that file has been replaced or removed.
    /// </summary>
    public static string SelfPath => Environment.ProcessPath is { } self && File.Exists(self) ? self : "/proc/self/exe";

    private static readonly byte* DevNull = (byte*)NativeMemory.AllocZeroed(16);

    /// <summary>
    /// Starts <paramref name="command"/> with <paramref name="controlFd"/> as its fd 3, stdin and
    /// stdout on /dev/null, stderr shared (its log lines join ours) and no signal blocked. Called
    /// from the listener's main thread only: a child's parent-death signal follows the thread that
    /// started it.
    /// </summary>
    public static int Spawn(PreparedCommand command, int controlFd)
    {
        if (DevNull[0] == 0) "/dev/null\0"u8.CopyTo(new Span<byte>(DevNull, 16));
        // glibc's posix_spawn_file_actions_t is 80 bytes and posix_spawnattr_t 336: room to spare.
        nint actions = (nint)NativeMemory.AllocZeroed(256);
        nint attributes = (nint)NativeMemory.AllocZeroed(512);
        nint mask = (nint)NativeMemory.AllocZeroed(128);
        try
        {
            posix_spawn_file_actions_init(actions);
            posix_spawn_file_actions_adddup2(actions, controlFd, 3);
            posix_spawn_file_actions_addopen(actions, 0, DevNull, O_RDONLY, 0);
            posix_spawn_file_actions_addopen(actions, 1, DevNull, O_WRONLY, 0);
            posix_spawnattr_init(attributes);
            sigemptyset(mask);
            posix_spawnattr_setsigmask(attributes, mask);
            posix_spawnattr_setflags(attributes, POSIX_SPAWN_SETSIGMASK);
            int rc = posix_spawn(out int pid, command.Path, actions, attributes, command.Argv, command.Envp);
            if (rc != 0)
                throw new BrokerException($"cannot start a worker process ({SelfPath}): {Describe(rc)}");
            return pid;
        }
        finally
        {
            posix_spawn_file_actions_destroy(actions);
            posix_spawnattr_destroy(attributes);
            NativeMemory.Free((void*)actions);
            NativeMemory.Free((void*)attributes);
            NativeMemory.Free((void*)mask);
        }
    }

    /// <summary>A descriptor that becomes readable when the process exits (Linux 5.3+), or -1.</summary>
    public static int PidFd(int pid) => (int)syscall(SYS_pidfd_open, pid, 0);

    /// <summary>How a reaped child ended.</summary>
    public readonly record struct ExitReport(int Status, long PeakRssKib)
    {
        public bool Signalled => (Status & 0x7f) != 0 && (Status & 0x7f) != 0x7f;
        public int Signal => Status & 0x7f;
        public bool CoreDumped => (Status & 0x80) != 0;
        public int ExitCode => (Status >> 8) & 0xff;

        public string Describe() => Signalled
            ? $"killed by signal {Signal} ({SignalName(Signal)}{(CoreDumped ? ", core dumped" : "")})"
            : $"exited with status {ExitCode}";
    }

    /// <summary>Reaps <paramref name="pid"/> if it has exited (without waiting when <paramref name="block"/> is false).</summary>
    public static ExitReport? Reap(int pid, bool block = false)
    {
        ResourceUsage usage = default;
        while (true)
        {
            int result = wait4(pid, out int status, block ? 0 : WNOHANG, &usage);
            if (result == pid) return new ExitReport(status, usage.MaxResidentKib);
            if (result == 0) return null;
            int errno = LastError;
            if (errno == EINTR) continue;
            return new ExitReport(0, 0); // ECHILD: already gone
        }
    }

    public static string SignalName(int signal) => signal switch
    {
        1 => "SIGHUP", 2 => "SIGINT", 3 => "SIGQUIT", 4 => "SIGILL", 5 => "SIGTRAP", 6 => "SIGABRT", 7 => "SIGBUS",
        8 => "SIGFPE", 9 => "SIGKILL", 10 => "SIGUSR1", 11 => "SIGSEGV", 12 => "SIGUSR2", 13 => "SIGPIPE",
        14 => "SIGALRM", 15 => "SIGTERM", 24 => "SIGXCPU", 25 => "SIGXFSZ", 31 => "SIGSYS",
        _ => $"signal {signal}",
    };

    /// <summary>Asks the kernel to send <paramref name="signal"/> to this process when the thread that started it ends.</summary>
    public static bool DieWithParent(int signal) => prctl(PR_SET_PDEATHSIG, (nuint)signal, 0, 0, 0) == 0;

    // ---- limits -----------------------------------------------------------------------------------------------

    /// <summary>Raises the soft open-file limit to the hard one; returns (before, after).</summary>
    public static (ulong, ulong) RaiseOpenFileLimit()
    {
        ResourceLimit limit;
        if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return (0, 0);
        ulong before = limit.Current;
        if (limit.Current < limit.Maximum)
        {
            limit.Current = limit.Maximum;
            if (setrlimit(RLIMIT_NOFILE, &limit) != 0) return (before, before);
        }
        return (before, limit.Current);
    }

    // ---- small helpers ------------------------------------------------------------------------------------------

    /// <summary>A close-on-exec, non-blocking eventfd: a wake-up a signal handler or another thread can give a poll loop.</summary>
    public static int WakeFd()
    {
        int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0) throw new BrokerException($"cannot create an eventfd: {Describe(LastError)}");
        return fd;
    }

    public static void Wake(int eventFd)
    {
        ulong one = 1;
        write(eventFd, &one, (nuint)sizeof(ulong));
    }

    public static void Drain(int eventFd)
    {
        ulong value;
        read(eventFd, &value, (nuint)sizeof(ulong));
    }

    /// <summary>Reads a small text file of /proc in one read (statm and the like); null when it is gone.</summary>
    public static string? ReadProcFile(string path)
    {
        try { return File.ReadAllText(path); }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>The gid of a group name, or null.</summary>
    public static uint? GroupId(string name)
    {
        nint group = getgrnam(name);
        if (group == 0) return null;
        // struct group: char *gr_name, char *gr_passwd, gid_t gr_gid
        return *(uint*)(group + 2 * sizeof(nint));
    }
}
