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
    /// or null when the process was not started that way.
    /// </summary>
    public static UnixListener? FromSystemd(string path)
    {
        if (Environment.GetEnvironmentVariable("LISTEN_FDS") != "1" ||
            Environment.GetEnvironmentVariable("LISTEN_PID") != Environment.ProcessId.ToString())
            return null;
        return new UnixListener(3, path);
    }

    public static UnixListener Listen(string path, int backlog = 64)
    {
        var address = RpcChannel.UnixAddress(path);
        int fd = Libc.socket(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0)
            throw new TransportException($"cannot create a unix socket: {Libc.Describe(Libc.LastError)}");
        if (Libc.bind(fd, address, address.Length) != 0)
        {
            int errno = Libc.LastError;
            Libc.close(fd);
            throw new TransportException($"cannot listen on {path}: {Libc.Describe(errno)}" +
                (errno == 98 ? " (is another broker running? remove the socket file if not)" : ""));
        }
        if (Libc.listen(fd, backlog) != 0)
        {
            int errno = Libc.LastError;
            Libc.close(fd);
            throw new TransportException($"cannot listen on {path}: {Libc.Describe(errno)}");
        }
        return new UnixListener(fd, path);
    }

    /// <summary>Blocks for the next connection; returns -1 once the listener was closed.</summary>
    public int Accept()
    {
        while (true)
        {
            int fd = Volatile.Read(ref _fd);
            if (fd < 0) return -1;
            int client = Libc.accept4(fd, 0, 0, Libc.SOCK_CLOEXEC);
            if (client >= 0) return client;
            int errno = Libc.LastError;
            if (errno == Libc.EINTR || errno == Libc.EAGAIN || errno == 103 /* ECONNABORTED */) continue;
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
