using System.Runtime.InteropServices;

namespace P11Proxy.Platform;

/// <summary>
/// The one set of libc declarations of p11proxy: the module, the broker and the transports they
/// share call the C library only through this class (split by topic: sockets and descriptors here,
/// files in Libc.Files.cs, processes and memory in Libc.Process.cs). Plain blocking system calls on
/// the caller's thread: no thread pool, no async engine, so the module adds no threads to its host
/// process. Every assembly that calls them is bound to libc at link time (DirectPInvoke "libc" in
/// the two executables' projects).
/// </summary>
public static unsafe partial class Libc
{
    public const int AF_UNIX = 1;
    public const int AF_VSOCK = 40;
    public const int SOCK_STREAM = 1;
    public const int SOCK_CLOEXEC = 0x80000;
    public const int MSG_NOSIGNAL = 0x4000;
    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const int SHUT_RDWR = 2;
    public const short POLLIN = 0x001;
    public const short POLLOUT = 0x004;
    public const short POLLERR = 0x008;
    public const short POLLHUP = 0x010;
    public const short POLLRDHUP = 0x2000;
    public const int SOCK_SEQPACKET = 5;
    public const int SCM_RIGHTS = 1;
    public const int MSG_CTRUNC = 0x8;
    public const int MSG_CMSG_CLOEXEC = 0x40000000;
    public const int EPIPE = 32;
    public const int ECONNRESET = 104;
    public const int EFAULT = 14;
    public const int O_CLOEXEC = 0x80000;
    public const int SOL_SOCKET = 1;
    public const int SO_PEERCRED = 17;
    public const int SO_RCVTIMEO = 20;
    public const int SO_SNDBUF = 7;

    [StructLayout(LayoutKind.Sequential)]
    public struct TimeVal
    {
        public long Seconds;
        public long Microseconds;
    }

    [LibraryImport("libc", SetLastError = true)]
    public static partial int setsockopt(int fd, int level, int name, in TimeVal value, uint length);

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int setsockopt(int fd, int level, int name, in int value, uint length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int socket(int domain, int type, int protocol);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int connect(int fd, ReadOnlySpan<byte> address, int length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int bind(int fd, ReadOnlySpan<byte> address, int length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int listen(int fd, int backlog);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int accept4(int fd, nint address, nint length, int flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint send(int fd, ReadOnlySpan<byte> buffer, nint length, int flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint write(int fd, ReadOnlySpan<byte> buffer, nint length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint read(int fd, Span<byte> buffer, nint length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint write(int fd, void* buffer, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint read(int fd, void* buffer, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int shutdown(int fd, int how);

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    public static partial int poll(Span<PollFd> fds, nuint count, int timeoutMilliseconds);

    [StructLayout(LayoutKind.Sequential)]
    public struct UCred
    {
        public int Pid;
        public uint Uid;
        public uint Gid;
    }

    [LibraryImport("libc", SetLastError = true)]
    public static partial int getsockopt(int fd, int level, int name, out UCred value, ref uint length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int socketpair(int domain, int type, int protocol, int* fds);

    /// <summary>struct msghdr.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct MessageHeader
    {
        public void* Name;
        public uint NameLength;
        public IoVector* Vectors;
        public nuint VectorCount;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    /// <summary>struct iovec.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct IoVector
    {
        public void* Base;
        public nuint Length;
    }

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint sendmsg(int fd, MessageHeader* message, int flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint recvmsg(int fd, MessageHeader* message, int flags);

    /// <summary>SIOCOUTQ (= TIOCOUTQ): for a unix socket, the bytes sent that the peer has not read yet.</summary>
    public const nuint SIOCOUTQ = 0x5411;

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static partial int IoctlInt(int fd, nuint request, out int value);

    public static int LastError => Marshal.GetLastPInvokeError();

    // The per-message calls, declared without SetLastError: that option saves errno into a
    // thread-local after every call (a TLS lookup in a shared library), while these callers need
    // errno only when the call failed, read with Errno right after it, as the generated code would.
    [LibraryImport("libc", EntryPoint = "send")]
    public static partial nint SendNoErrno(int fd, ReadOnlySpan<byte> buffer, nint length, int flags);

    [LibraryImport("libc", EntryPoint = "write")]
    public static partial nint WriteNoErrno(int fd, ReadOnlySpan<byte> buffer, nint length);

    [LibraryImport("libc", EntryPoint = "read")]
    public static partial nint ReadNoErrno(int fd, Span<byte> buffer, nint length);

    /// <summary>errno of the *NoErrno call just made (valid only right after a failed one).</summary>
    public static int Errno => Marshal.GetLastSystemError();

    public static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(errno);
}
