using System.Buffers;
using System.Text;

namespace P11Proxy.Wire.Transport;

/// <summary>A transport failure; the message says what went wrong in words a person can act on.</summary>
public sealed class TransportException(string message) : Exception(message);

/// <summary>
/// One connection speaking p11-kit's framing over file descriptors: a socket (read and write on
/// one fd) or a pair of pipes to a spawned process. Frames go out in one write (header and body
/// are contiguous, the options field is left empty as servers ignore it) and come in through a
/// receive buffer, so a small reply usually costs one read.
/// </summary>
public sealed class RpcChannel : IDisposable
{
    private readonly int _readFd;
    private readonly int _writeFd;
    private readonly bool _isSocket;
    private readonly FrameLimits _limits;
    private byte[] _receive;
    private int _receiveStart;
    private int _receiveEnd;
    private int _disposed;

    public RpcChannel(int readFd, int writeFd, bool isSocket, FrameLimits? limits = null)
    {
        _readFd = readFd;
        _writeFd = writeFd;
        _isSocket = isSocket;
        _limits = limits ?? FrameLimits.Default;
        _receive = ArrayPool<byte>.Shared.Rent(16 * 1024);
        if (isSocket)
        {
            // Room for a whole large message (a 1 MiB digest, a big certificate list) in the socket,
            // so the sender is not put to sleep and woken several times per message. The kernel
            // caps it at net.core.wmem_max; it is a limit on queued bytes, not an allocation.
            int sendBuffer = 2 << 20;
            Libc.setsockopt(writeFd, Libc.SOL_SOCKET, Libc.SO_SNDBUF, sendBuffer, sizeof(int));
        }
    }

    /// <summary>When set, large frames are read only within this budget (a server's, for all its connections).</summary>
    public FrameBudget? Budget { get; init; }

    private long _reservation;
    private long _frameDeadline;

    /// <summary>
    /// The budget reserved for the frames received since the last call; the caller releases it
    /// (<see cref="FrameBudget.Release"/>) once it is done with them.
    /// </summary>
    public long TakeReservation()
    {
        long reservation = _reservation;
        _reservation = 0;
        return reservation;
    }

    private int _receiveTimeout = -1;
    private int _socketTimeout = -1;

    /// <summary>
    /// Milliseconds a receive may wait for the peer; -1 waits for ever. On sockets the kernel
    /// enforces it (SO_RCVTIMEO, set only when it changes), so a read costs one system call; on
    /// pipes a poll precedes each read.
    /// </summary>
    public int ReceiveTimeoutMilliseconds
    {
        get => _receiveTimeout;
        set => _receiveTimeout = value;
    }

    private void ApplySocketTimeout()
    {
        if (_socketTimeout == _receiveTimeout)
            return;
        int ms = Math.Max(_receiveTimeout, 0); // 0 in SO_RCVTIMEO means "no limit"
        var value = new Libc.TimeVal { Seconds = ms / 1000, Microseconds = ms % 1000 * 1000 };
        if (Libc.setsockopt(_readFd, Libc.SOL_SOCKET, Libc.SO_RCVTIMEO, value, 16) == 0)
            _socketTimeout = _receiveTimeout;
    }

    public int ReadFd => _readFd;

    /// <summary>Whether bytes of a further frame already sit in the receive buffer.</summary>
    public bool HasBufferedData => _receiveEnd > _receiveStart;

    /// <summary>Whether more input is waiting, buffered or still in the kernel (costs a poll system call).</summary>
    public bool InputWaiting()
    {
        if (HasBufferedData) return true;
        Span<Libc.PollFd> fds = [new Libc.PollFd { Fd = _readFd, Events = Libc.POLLIN }];
        return Libc.poll(fds, 1, 0) > 0;
    }

    /// <summary>
    /// Waits, at most <paramref name="milliseconds"/>, until the peer has read everything sent on
    /// this unix socket (SIOCOUTQ); returns at once on pipes and where the kernel does not say.
    /// </summary>
    public void AwaitPeerRead(int milliseconds)
    {
        if (!_isSocket) return;
        long until = Environment.TickCount64 + milliseconds;
        while (Libc.IoctlInt(_writeFd, Libc.SIOCOUTQ, out int unread) == 0 && unread > 0 && Environment.TickCount64 < until)
            Thread.Sleep(1);
    }

    /// <summary>Connects to a unix socket, close-on-exec so a forking host does not leak it into children.</summary>
    public static RpcChannel ConnectUnix(string path, FrameLimits? limits = null)
    {
        var address = UnixAddress(path);
        int fd = Libc.socket(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0)
            throw new TransportException($"cannot create a unix socket: {Libc.Describe(Libc.LastError)}");
        while (Libc.connect(fd, address, address.Length) != 0)
        {
            int errno = Libc.LastError;
            if (errno == Libc.EINTR) continue;
            Libc.close(fd);
            throw new TransportException(
                $"cannot connect to the broker at {path}: {Libc.Describe(errno)}; " +
                "is it running (p11proxy-broker serve, or p11-kit server)? Set P11_KIT_SERVER_ADDRESS to its address.");
        }
        return new RpcChannel(fd, fd, isSocket: true, limits);
    }

    /// <summary>struct sockaddr_un for a path (108 bytes of path at most, NUL-terminated).</summary>
    public static byte[] UnixAddress(string path)
    {
        var encoded = Encoding.UTF8.GetBytes(path);
        if (encoded.Length >= 108)
            throw new TransportException($"socket path is too long for a unix socket ({encoded.Length} bytes, at most 107): {path}");
        var address = new byte[2 + encoded.Length + 1];
        address[0] = Libc.AF_UNIX & 0xff;
        address[1] = 0;
        encoded.CopyTo(address, 2);
        return address;
    }

    /// <summary>
    /// Client side of the one-byte version handshake: offers <paramref name="offered"/>, returns what
    /// the server accepted (a server answers with the lower of both; p11-kit 0.24 answers 0).
    /// </summary>
    public byte NegotiateAsClient(byte offered)
    {
        Span<byte> version = [offered];
        WriteAll(version);
        Span<byte> answer = stackalloc byte[1];
        if (!ReadExactly(answer))
            throw new TransportException("the broker closed the connection during the version handshake " +
                                         "(it refused this client, or it is no p11-kit RPC server; the broker's log says which)");
        if (answer[0] > offered)
            throw new TransportException($"the broker answered protocol version {answer[0]}, higher than the {offered} offered");
        return answer[0];
    }

    /// <summary>Server side: reads the client's version and answers the lower of it and <paramref name="highest"/>.</summary>
    public bool NegotiateAsServer(byte highest, out byte version)
    {
        Span<byte> offered = stackalloc byte[1];
        version = 0;
        if (!ReadExactly(offered))
            return false;
        version = Math.Min(offered[0], highest);
        WriteAll([version]);
        return true;
    }

    /// <summary>Sends the message in <paramref name="body"/> as one frame tagged with <paramref name="code"/>.</summary>
    public void SendFrame(uint code, WireWriter body)
    {
        var frame = body.FrameWithHeader;
        new FrameHeader(code, 0, (uint)body.Length).Write(frame);
        WriteAll(frame);
    }

    /// <summary>
    /// As <see cref="SendFrame(uint, WireWriter)"/>, with bytes in the frame's options field (rare:
    /// the capability announcement in a C_Initialize reply), in one write.
    /// </summary>
    public void SendFrame(uint code, WireWriter body, ReadOnlySpan<byte> options)
    {
        if (options.IsEmpty)
        {
            SendFrame(code, body);
            return;
        }
        var frame = new byte[FrameHeader.Size + options.Length + body.Length];
        new FrameHeader(code, (uint)options.Length, (uint)body.Length).Write(frame);
        options.CopyTo(frame.AsSpan(FrameHeader.Size));
        body.Body.CopyTo(frame.AsSpan(FrameHeader.Size + options.Length));
        WriteAll(frame);
        Array.Clear(frame); // the body may hold key material
    }

    private int _lastOptionsStart;
    private int _lastOptionsLength;

    /// <summary>
    /// The options field of the frame received last, valid (like its body) until the next receive
    /// or <see cref="SwapReceiveBuffer"/>. p11-kit's servers ignore the field and answer it empty;
    /// p11-kit's client fills it with its module's name. p11proxy uses it at C_Initialize only
    /// (<see cref="Capabilities"/>).
    /// </summary>
    public ReadOnlySpan<byte> LastOptions => _receive.AsSpan(_lastOptionsStart, _lastOptionsLength);

    private void WriteAll(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            nint written = _isSocket
                ? Libc.SendNoErrno(_writeFd, data, data.Length, Libc.MSG_NOSIGNAL)
                : Libc.WriteNoErrno(_writeFd, data, data.Length);
            if (written < 0)
            {
                int errno = Libc.Errno;
                if (errno == Libc.EINTR || errno == Libc.EAGAIN) continue;
                throw new TransportException($"cannot send to the peer: {Libc.Describe(errno)}");
            }
            data = data[(int)written..];
        }
    }

    /// <summary>
    /// Receives one frame. The body stays valid until the next receive. Returns false when the peer
    /// closed the connection cleanly between frames.
    /// </summary>
    public bool TryReceiveFrame(out uint code, out ReadOnlyMemory<byte> body)
    {
        code = 0;
        body = default;
        _lastOptionsLength = 0;
        if (!Fill(FrameHeader.Size, allowCleanEof: true))
            return false;
        var header = FrameHeader.Read(_receive.AsSpan(_receiveStart, FrameHeader.Size));
        string? problem = _limits.Check(header);
        if (problem is not null)
            throw new TransportException($"refused a frame from the peer: {problem}");
        int total = FrameHeader.Size + (int)header.OptionsLength + (int)header.BodyLength;
        if (_receiveEnd - _receiveStart < total || (Budget is { } small && total >= small.Threshold))
            ReceiveRest(total);
        int bodyStart = _receiveStart + FrameHeader.Size + (int)header.OptionsLength;
        body = new ReadOnlyMemory<byte>(_receive, bodyStart, (int)header.BodyLength);
        _lastOptionsStart = _receiveStart + FrameHeader.Size;
        _lastOptionsLength = (int)header.OptionsLength;
        code = header.Code;
        _receiveStart += total;
        return true;
    }

    /// <summary>Reads the rest of a frame whose header has arrived, reserving a large one from the budget first.</summary>
    private void ReceiveRest(int total)
    {
        bool reserved = false;
        if (Budget is { } budget && total >= budget.Threshold)
        {
            if (!budget.TryReserve(total))
                throw new TransportException(
                    $"refused a frame of {total} bytes: the memory for large requests ({budget.Limit >> 20} MiB, " +
                    $"--request-memory-mib) {(total > budget.Limit ? "is smaller" : $"stayed in use for {budget.WaitMilliseconds} ms")}");
            reserved = true;
        }
        int savedTimeout = _receiveTimeout;
        try
        {
            // A reserved frame must arrive whole within the budget's wait: a peer that announces
            // a large frame and stalls does not keep the budget from other clients for long.
            _frameDeadline = reserved ? Environment.TickCount64 + Budget!.WaitMilliseconds : 0;
            if (!Fill(total, allowCleanEof: false))
                throw new TransportException("the peer closed the connection in the middle of a frame");
        }
        catch
        {
            if (reserved) Budget!.Release(total);
            throw;
        }
        finally
        {
            _frameDeadline = 0;
            _receiveTimeout = savedTimeout;
        }
        if (reserved) _reservation += total;
    }

    /// <summary>
    /// Gives the caller the buffer holding the frame just received (its body stays valid there
    /// for as long as the caller keeps the buffer) and continues with a small pooled buffer (a
    /// large frame is read up to its end, so normally nothing lies past it to carry over). For a
    /// worker that hands a large request on: cheaper than copying it out.
    /// </summary>
    public byte[] SwapReceiveBuffer()
    {
        int unread = _receiveEnd - _receiveStart;
        _lastOptionsLength = 0;
        var next = ArrayPool<byte>.Shared.Rent(Math.Max(unread, 16 * 1024));
        _receive.AsSpan(_receiveStart, unread).CopyTo(next);
        var taken = _receive;
        taken.AsSpan(_receiveStart, unread).Clear();
        _receive = next;
        _receiveStart = 0;
        _receiveEnd = unread;
        return taken;
    }

    /// <summary>Wipes a received frame where it lies (it may hold a PIN or key material) once it has been used.</summary>
    public static void Wipe(ReadOnlyMemory<byte> frame) => System.Runtime.InteropServices.MemoryMarshal.AsMemory(frame).Span.Clear();

    /// <summary>Frames from this size on are read exactly, without the start of the next one (see <see cref="Fill"/>).</summary>
    private const int LargeFrame = 64 * 1024;

    /// <summary>Buffers up to this size come from and go back to the shared pool; larger ones are the GC's.</summary>
    private const int PooledLimit = 1 << 20;

    /// <summary>Receive buffers above this are let go as soon as their frame has been used.</summary>
    public const int RetainedLimit = 4 << 20;

    /// <summary>A large receive buffer is let go after this many frames in a row that needed far less.</summary>
    private const int LargeBufferPatience = 8;

    private int _smallFrames;

    /// <summary>
    /// Makes at least <paramref name="count"/> unread bytes available. The buffer grows with the
    /// bytes that actually arrive (at most doubling per step), not with the size a header announced,
    /// so a peer that announces a large frame and sends little costs little.
    /// </summary>
    private bool Fill(int count, bool allowCleanEof)
    {
        if (_receiveStart == _receiveEnd)
        {
            // Nothing unread: start at the front, so a large frame lands in one piece instead of
            // straddling the end of the buffer and being moved.
            if (_receive.Length > RetainedLimit)
            {
                // Not kept at all: a frame this large was reserved from the budget, which is free again.
                Release(_receive, _receiveEnd);
                _receive = ArrayPool<byte>.Shared.Rent(16 * 1024);
                _smallFrames = 0;
            }
            else if (_receive.Length > PooledLimit)
            {
                // A large buffer is kept while large frames keep coming, and let go once they stop.
                _smallFrames = _receiveEnd <= _receive.Length / 4 ? _smallFrames + 1 : 0;
                if (_smallFrames >= LargeBufferPatience)
                {
                    Release(_receive, _receiveEnd);
                    _receive = ArrayPool<byte>.Shared.Rent(16 * 1024);
                    _smallFrames = 0;
                }
            }
            _receiveStart = 0;
            _receiveEnd = 0;
        }
        while (_receiveEnd - _receiveStart < count)
        {
            if (_frameDeadline != 0)
            {
                long remaining = _frameDeadline - Environment.TickCount64;
                if (remaining <= 0)
                    throw new TransportException($"the peer took more than {Budget?.WaitMilliseconds} ms to send a large frame");
                _receiveTimeout = (int)Math.Min(remaining, _receiveTimeout < 0 ? int.MaxValue : _receiveTimeout);
            }
            if (_receiveEnd == _receive.Length)
                MakeRoom(count);
            // A large frame is read up to its end and no further: the next frame then starts in an
            // empty buffer, so a large one handed to a worker (SwapReceiveBuffer) leaves no bytes
            // behind to copy out and wipe, and none is moved to the front. Small frames read as much
            // as has arrived, so one read usually brings a whole message or several.
            var room = _receive.AsSpan(_receiveEnd);
            if (count >= LargeFrame)
                room = room[..Math.Min(room.Length, _receiveStart + count - _receiveEnd)];
            int got = ReadSome(room);
            if (got == 0)
            {
                if (allowCleanEof && _receiveEnd == _receiveStart)
                    return false;
                throw new TransportException("the peer closed the connection");
            }
            _receiveEnd += got;
        }
        return true;
    }

    /// <summary>Moves unread bytes to the front, or into a larger buffer when the front is already used.</summary>
    private void MakeRoom(int count)
    {
        int unread = _receiveEnd - _receiveStart;
        if (_receiveStart > 0)
        {
            Buffer.BlockCopy(_receive, _receiveStart, _receive, 0, unread);
            Array.Clear(_receive, unread, _receiveEnd - unread);
        }
        else
        {
            // A frame whose size the budget reserved gets its buffer at once; otherwise the buffer
            // grows with what arrives, never with what a header merely claims.
            int size = _frameDeadline != 0 ? count : (int)Math.Min((long)count, Math.Max((long)_receive.Length * 2, 16 * 1024));
            var bigger = size <= PooledLimit ? ArrayPool<byte>.Shared.Rent(size)
                : LargeBuffers?.Take(size) ?? GC.AllocateUninitializedArray<byte>(size);
            Buffer.BlockCopy(_receive, _receiveStart, bigger, 0, unread);
            Release(_receive, _receiveEnd);
            _receive = bigger;
        }
        _receiveStart = 0;
        _receiveEnd = unread;
    }

    /// <summary>Wipes the used part (it may have held PINs) and returns pool-sized buffers to the pool.</summary>
    private void Release(byte[] buffer, int used)
    {
        Array.Clear(buffer, 0, Math.Min(used, buffer.Length));
        if (buffer.Length <= PooledLimit)
            ArrayPool<byte>.Shared.Return(buffer);
        else
            LargeBuffers?.Keep(buffer);
    }

    /// <summary>
    /// Where buffers for frames above the shared array pool's sizes come from and go back to (the
    /// broker shares one among its connections); without one they are allocated and left to the GC.
    /// </summary>
    public SpareBufferPool? LargeBuffers { get; init; }

    private bool ReadExactly(Span<byte> destination)
    {
        // Handshake bytes come before any frame, so they are read straight, not buffered.
        while (!destination.IsEmpty)
        {
            int got = ReadSome(destination);
            if (got == 0)
                return false;
            destination = destination[got..];
        }
        return true;
    }

    /// <summary>One read of at most <paramref name="destination"/>'s length; 0 at end of stream.</summary>
    private int ReadSome(Span<byte> destination)
    {
        while (true)
        {
            WaitReadable();
            nint got = Libc.ReadNoErrno(_readFd, destination, destination.Length);
            if (got >= 0)
                return (int)got;
            int errno = Libc.Errno;
            if (errno == Libc.EAGAIN && _isSocket && _socketTimeout > 0)
                throw new TransportException($"the peer sent nothing for {_socketTimeout} ms");
            if (errno != Libc.EINTR && errno != Libc.EAGAIN)
                throw new TransportException($"cannot receive from the peer: {Libc.Describe(errno)}");
        }
    }

    private void WaitReadable()
    {
        if (_isSocket)
        {
            ApplySocketTimeout();
            if (_socketTimeout == _receiveTimeout)
                return;
        }
        if (ReceiveTimeoutMilliseconds < 0)
            return;
        Span<Libc.PollFd> fds = [new Libc.PollFd { Fd = _readFd, Events = Libc.POLLIN }];
        while (true)
        {
            int ready = Libc.poll(fds, 1, ReceiveTimeoutMilliseconds);
            if (ready > 0) return;
            if (ready == 0)
                throw new TransportException($"the peer sent nothing for {ReceiveTimeoutMilliseconds} ms");
            if (Libc.LastError != Libc.EINTR)
                throw new TransportException($"cannot wait for the peer: {Libc.Describe(Libc.LastError)}");
        }
    }

    /// <summary>Wakes a thread blocked in a receive on this channel (it then fails) without closing the fd.</summary>
    public void Shutdown()
    {
        if (_isSocket)
            Libc.shutdown(_readFd, Libc.SHUT_RDWR);
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        Libc.close(_readFd);
        if (_writeFd != _readFd)
            Libc.close(_writeFd);
        var buffer = _receive;
        _receive = [];
        Release(buffer, _receiveEnd);
    }
}
