using System.Runtime.InteropServices;

namespace P11Proxy.Platform;

/// <summary>Processes (spawning, reaping, signals, limits, identities) and memory.</summary>
public static unsafe partial class Libc
{
    public const int SIGKILL = 9;
    public const int SIGTERM = 15;
    public const int WNOHANG = 1;
    public const int O_RDONLY = 0;
    public const int O_WRONLY = 1;
    public const short POSIX_SPAWN_SETSIGMASK = 0x08;
    public const nint SYS_pidfd_open = 434; // the same number on x86-64 and arm64
    public const int PR_SET_PDEATHSIG = 1;
    public const int RLIMIT_NOFILE = 7;
    public const int EFD_CLOEXEC = 0x80000;
    public const int EFD_NONBLOCK = 0x800;
    public const int M_TRIM_THRESHOLD = -1;
    public const int M_MMAP_THRESHOLD = -3;
    public const int M_ARENA_MAX = -8;

    [LibraryImport("libc")]
    public static partial int getpid();

    [LibraryImport("libc")]
    public static partial int getppid();

    [LibraryImport("libc")]
    public static partial uint getuid();

    [LibraryImport("libc", SetLastError = true)]
    public static partial int kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "_exit")]
    public static partial void ExitNow(int status);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int prctl(int option, nuint argument2, nuint argument3, nuint argument4, nuint argument5);

    /// <summary>syscall(2) with the (pid, flags) arguments of pidfd_open, the one call made through it.</summary>
    [LibraryImport("libc", SetLastError = true)]
    public static partial nint syscall(nint number, int pid, uint flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int pipe2(Span<int> fds, int flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int eventfd(uint initial, int flags);

    // ---- starting and reaping children ------------------------------------------------------------

    [LibraryImport("libc")]
    public static partial int posix_spawn(out int pid, byte* path, nint actions, nint attributes, byte** argv, byte** envp);

    [LibraryImport("libc")]
    public static partial int posix_spawnp(out int pid, nint file, nint actions, nint attributes, nint argv, nint envp);

    [LibraryImport("libc")]
    public static partial int posix_spawn_file_actions_init(nint actions);

    [LibraryImport("libc")]
    public static partial int posix_spawn_file_actions_adddup2(nint actions, int fd, int newFd);

    [LibraryImport("libc")]
    public static partial int posix_spawn_file_actions_addopen(nint actions, int fd, byte* path, int flags, uint mode);

    [LibraryImport("libc")]
    public static partial int posix_spawn_file_actions_destroy(nint actions);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_init(nint attributes);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_setflags(nint attributes, short flags);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_setsigmask(nint attributes, nint mask);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_destroy(nint attributes);

    [LibraryImport("libc")]
    public static partial int sigemptyset(nint set);

    /// <summary>struct rusage: two timevals, then 14 longs (ru_maxrss first, in KiB).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct ResourceUsage
    {
        public long UserSeconds, UserMicroseconds, SystemSeconds, SystemMicroseconds;
        public long MaxResidentKib;
        public fixed long Rest[13];
    }

    [LibraryImport("libc", SetLastError = true)]
    public static partial int wait4(int pid, out int status, int options, ResourceUsage* usage);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int waitpid(int pid, out int status, int options);

    // ---- limits and identities ----------------------------------------------------------------------

    /// <summary>struct rlimit.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct ResourceLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [LibraryImport("libc", SetLastError = true)]
    public static partial int getrlimit(int resource, ResourceLimit* limit);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int setrlimit(int resource, ResourceLimit* limit);

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    public static partial nint getgrnam(string name);

    // ---- memory -------------------------------------------------------------------------------------

    /// <summary>Reads another (here: our own) process's memory through the kernel, which answers EFAULT instead of faulting.</summary>
    [LibraryImport("libc", SetLastError = true)]
    public static partial nint process_vm_readv(int pid, IoVector* local, nuint localCount, IoVector* remote, nuint remoteCount, nuint flags);

    [LibraryImport("libc")]
    public static partial int mallopt(int parameter, int value);
}
