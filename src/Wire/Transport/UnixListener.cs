namespace P11Proxy.Wire.Transport;

/// <summary>The credentials of the process at the other end of a unix socket (SO_PEERCRED).</summary>
public readonly record struct PeerCredentials(int Pid, uint Uid, uint Gid);

/// <summary>A listening unix socket; accepted connections are close-on-exec.</summary>
public sealed class UnixListener : IDisposable
{
    private int _fd;

    private UnixListener(int fd, string path)
    {
        _fd = fd;
        Path = path;
    }

    public string Path { get; }

    /// <summary>
    /// The listening socket systemd passed (socket activation: LISTEN_PID is us, LISTEN_FDS=1, fd 3),
    /// or null when the process was not started that way. systemd passes it inheritable: it is
    /// made close-on-exec here, so no worker process started later holds the listening socket.
    /// </summary>
    public static UnixListener? FromSystemd(string path)
    {
        if (Environment.GetEnvironmentVariable("LISTEN_FDS") != "1" ||
            Environment.GetEnvironmentVariable("LISTEN_PID") != Environment.ProcessId.ToString())
            return null;
        const int fd = 3;
        Libc.fcntl(fd, Libc.F_SETFD, Libc.FD_CLOEXEC);
        Libc.fcntl(fd, Libc.F_SETFL, Libc.fcntl(fd, Libc.F_GETFL, 0) | Libc.O_NONBLOCK);
        return new UnixListener(fd, path);
    }

    /// <summary>
    /// Binds and listens on <paramref name="path"/> (which must be free: see <see cref="UnixSocketPlace"/>).
    /// The socket file is created under a umask that lets nobody else in, until its owner gives
    /// it its mode (<see cref="UnixSocketPlace.Secure"/>); the listening socket does not block.
    /// The backlog is p11-kit server's: a burst of clients waits in the kernel, not refused.
    /// </summary>
    public static UnixListener Listen(string path, int backlog = 1024)
    {
        var address = RpcChannel.UnixAddress(path);
        int fd = Libc.socket(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC | Libc.SOCK_NONBLOCK, 0);
        if (fd < 0)
            throw new TransportException($"cannot create a unix socket: {Libc.Describe(Libc.LastError)}");
        uint previous = Libc.umask(0b000_111_111);
        int bound = Libc.bind(fd, address, address.Length);
        int bindErrno = Libc.LastError;
        Libc.umask(previous);
        if (bound != 0)
        {
            Libc.close(fd);
            throw new TransportException($"cannot listen on {path}: {Libc.Describe(bindErrno)}" +
                (bindErrno == 98 ? " (another server took the path just now?)" : ""));
        }
        if (Libc.listen(fd, backlog) != 0)
        {
            int errno = Libc.LastError;
            Libc.close(fd);
            throw new TransportException($"cannot listen on {path}: {Libc.Describe(errno)}");
        }
        return new UnixListener(fd, path);
    }

    /// <summary>The listening descriptor (-1 once closed), for a poll loop.</summary>
    public int Fd => Volatile.Read(ref _fd);

    /// <summary>
    /// Takes the next waiting connection without blocking: its descriptor (close-on-exec and
    /// non-blocking), or -1 with the errno (EAGAIN: none waiting; EMFILE: out of descriptors...).
    /// </summary>
    public int TryAccept(out int errno)
    {
        while (true)
        {
            int fd = Volatile.Read(ref _fd);
            if (fd < 0)
            {
                errno = 9; // EBADF: closed
                return -1;
            }
            int client = Libc.accept4(fd, 0, 0, Libc.SOCK_CLOEXEC | Libc.SOCK_NONBLOCK);
            if (client >= 0)
            {
                errno = 0;
                return client;
            }
            errno = Libc.LastError;
            if (errno == Libc.EINTR) continue;
            return -1;
        }
    }

    /// <summary>Blocks for the next connection (a blocking, close-on-exec descriptor); -1 once the listener was closed.</summary>
    public int Accept()
    {
        while (true)
        {
            int fd = Volatile.Read(ref _fd);
            if (fd < 0) return -1;
            Span<Libc.PollFd> wait = [new Libc.PollFd { Fd = fd, Events = Libc.POLLIN }];
            Libc.poll(wait, 1, -1);
            int client = Libc.accept4(fd, 0, 0, Libc.SOCK_CLOEXEC);
            if (client >= 0) return client;
            int errno = Libc.LastError;
            if (errno == Libc.EINTR || errno == Libc.EAGAIN || errno == Libc.ECONNABORTED) continue;
            return -1;
        }
    }

    public static PeerCredentials? PeerOf(int fd)
    {
        uint length = 12;
        if (Libc.getsockopt(fd, Libc.SOL_SOCKET, Libc.SO_PEERCRED, out var credentials, ref length) != 0)
            return null;
        return new PeerCredentials(credentials.Pid, credentials.Uid, credentials.Gid);
    }

    public static void Close(int fd) => Libc.close(fd);

    public void Dispose()
    {
        int fd = Interlocked.Exchange(ref _fd, -1);
        if (fd >= 0)
        {
            // shutdown wakes a thread blocked in accept; close releases the descriptor.
            Libc.shutdown(fd, Libc.SHUT_RDWR);
            Libc.close(fd);
        }
    }
}
