using System.Buffers.Binary;
using System.Net.Sockets;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Fuzz;

/// <summary>What the broker did with one frame.</summary>
public enum Outcome { Replied, Closed, Timeout }

/// <summary>A frame as the fuzzer sends it: header fields may lie about what follows.</summary>
public sealed class FrameSpec
{
    /// <summary>Call code of the frame; null: the connection's next code.</summary>
    public uint? Code;
    public uint OptionsLength;
    /// <summary>Bytes of options actually sent (may differ from <see cref="OptionsLength"/>).</summary>
    public int OptionsSent;
    /// <summary>Body length announced in the header; null: the real body length.</summary>
    public uint? AnnouncedBody;
    /// <summary>Half-close after sending, so a broker waiting for announced bytes sees end of stream.</summary>
    public bool ShutdownAfterSend;

    public FrameSpec Clone() => (FrameSpec)MemberwiseClone();

    public override string ToString() =>
        $"code={(Code is { } c ? "0x" + c.ToString("x") : "auto")} options={OptionsLength}/{OptionsSent} " +
        $"announced={(AnnouncedBody is { } a ? "0x" + a.ToString("x") : "real")}{(ShutdownAfterSend ? " shutdown" : "")}";
}

/// <summary>
/// One client connection to the broker over a plain socket: the version byte, framing and a
/// receive timeout; nothing of p11proxy's own transport, so the fuzzer owns every byte it sends.
/// </summary>
public sealed class Connection : IDisposable
{
    private readonly Socket _socket;
    private uint _nextCode = 1;
    private readonly byte[] _header = new byte[FrameHeader.Size];

    public byte Version { get; private set; }
    public WireProfile Profile => WireProfile.For(Version);
    public ulong Session { get; set; }
    public int Uses { get; set; }
    public bool Dead { get; private set; }

    private Connection(Socket socket) => _socket = socket;

    /// <summary>Connects and does the version handshake; throws SocketException when nobody listens.</summary>
    public static Connection Open(string path, byte offered, int timeoutMs)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(path));
            socket.ReceiveTimeout = timeoutMs;
            socket.SendTimeout = Math.Max(timeoutMs, 2000);
            var connection = new Connection(socket);
            socket.Send([offered]);
            var answer = new byte[1];
            if (!connection.ReadExactly(answer, out _))
                throw new IOException("the broker closed the connection during the version handshake");
            if (answer[0] > offered)
                throw new IOException($"the broker answered version {answer[0]} to an offer of {offered}");
            connection.Version = answer[0];
            return connection;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public int ReceiveTimeout
    {
        set => _socket.ReceiveTimeout = value;
    }

    /// <summary>Sends one frame and reads the reply (or end of stream, or nothing within the timeout).</summary>
    public Outcome Exchange(ReadOnlySpan<byte> body, FrameSpec? spec, out uint sentCode, out uint replyCode, out byte[] reply)
    {
        reply = [];
        replyCode = 0;
        spec ??= Default;
        sentCode = spec.Code ?? _nextCode++;
        if (_nextCode == 0) _nextCode = 1;
        int total = FrameHeader.Size + spec.OptionsSent + body.Length;
        var frame = new byte[total];
        new FrameHeader(sentCode, spec.OptionsLength, spec.AnnouncedBody ?? (uint)body.Length).Write(frame);
        // options are zero bytes (servers ignore them)
        body.CopyTo(frame.AsSpan(FrameHeader.Size + spec.OptionsSent));
        try
        {
            int offset = 0;
            while (offset < frame.Length)
                offset += _socket.Send(frame, offset, frame.Length - offset, SocketFlags.None);
            if (spec.ShutdownAfterSend)
                _socket.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock)
        {
            Dead = true;
            return Outcome.Timeout;
        }
        catch (SocketException)
        {
            // The broker closed while we were still sending (it refused the header, say).
            Dead = true;
            return Outcome.Closed;
        }

        if (!ReadExactly(_header, out bool timedOut))
        {
            Dead = true;
            return timedOut ? Outcome.Timeout : Outcome.Closed;
        }
        var header = FrameHeader.Read(_header);
        if (header.OptionsLength > 4096 || header.BodyLength > (64u << 20))
            throw new BadReplyException($"reply header announces options {header.OptionsLength}, body {header.BodyLength}");
        var rest = new byte[header.OptionsLength + header.BodyLength];
        if (!ReadExactly(rest, out timedOut))
            throw new BadReplyException(timedOut
                ? "the broker sent a reply header but not its body within the timeout"
                : "the broker closed the connection in the middle of a reply");
        replyCode = header.Code;
        reply = rest[(int)header.OptionsLength..];
        return Outcome.Replied;
    }

    private static readonly FrameSpec Default = new();

    private bool ReadExactly(Span<byte> destination, out bool timedOut)
    {
        timedOut = false;
        while (!destination.IsEmpty)
        {
            int got;
            try
            {
                got = _socket.Receive(destination, SocketFlags.None);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock)
            {
                timedOut = true;
                return false;
            }
            catch (SocketException)
            {
                return false; // reset by the broker
            }
            if (got == 0)
                return false;
            destination = destination[got..];
        }
        return true;
    }

    // ---- well-formed calls for setup and the witness -------------------------------------------------

    /// <summary>Encodes a request from plain values (the shapes of WireValues).</summary>
    public static byte[] Encode(WireProfile profile, RpcCallId id, params object?[] values)
    {
        using var writer = new RpcMessageWriter(profile);
        WireValues.Encode(writer, CallTable.Get(id), MessageKind.Request, values);
        if (!writer.Complete)
            throw new InvalidOperationException($"{id}: request could not be encoded");
        return writer.Writer.Body.ToArray();
    }

    /// <summary>A whole well-formed call: returns the CK_RV and the decoded reply values.</summary>
    public ulong Call(RpcCallId id, out List<object?> values, params object?[] arguments)
    {
        values = [];
        var body = Encode(Profile, id, arguments);
        var outcome = Exchange(body, null, out uint sent, out uint code, out var reply);
        if (outcome != Outcome.Replied)
            throw new IOException($"{id}: {outcome.ToString().ToLowerInvariant()} instead of a reply");
        if (code != sent)
            throw new BadReplyException($"{id}: reply code {code} for request code {sent}");
        var reader = new RpcMessageReader(Profile);
        var status = reader.Parse(reply, MessageKind.Response);
        if (status != ParseStatus.Ok || !WireValues.TryDecode(reader, MessageKind.Response, out values))
            throw new BadReplyException($"{id}: malformed reply ({status}) {Convert.ToHexStringLower(reply)}");
        if (reader.IsError)
            return reader.ErrorCode;
        if (reader.Call!.Id != id)
            throw new BadReplyException($"{id}: reply carries call {reader.Call.Name}");
        return CKR_OK;
    }

    /// <summary>C_Initialize as p11proxy.so sends it: the handshake string, a reserved flag, a NUL-terminated reserved string.</summary>
    public static byte[] InitializeBody(WireProfile profile) =>
        Encode(profile, RpcCallId.C_Initialize,
            WireByteArray.Of(CallTable.Handshake.ToArray()), (byte)0, WireByteArray.Of(new byte[] { 0 }));

    public void Initialize()
    {
        ulong rv = Call(RpcCallId.C_Initialize, out _,
            WireByteArray.Of(CallTable.Handshake.ToArray()), (byte)0, WireByteArray.Of(new byte[] { 0 }));
        if (rv != CKR_OK)
            throw new BadReplyException($"C_Initialize returned 0x{rv:x}");
    }

    public static ulong ReadU64(ReadOnlySpan<byte> bytes) => BinaryPrimitives.ReadUInt64BigEndian(bytes);

    public void Dispose()
    {
        Dead = true;
        _socket.Dispose();
    }
}

/// <summary>The broker answered something that is not a well-formed reply: a finding.</summary>
public sealed class BadReplyException(string message) : Exception(message);
