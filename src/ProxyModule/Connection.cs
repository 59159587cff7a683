using P11Proxy.Wire;
using P11Proxy.Wire.Transport;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

/// <summary>
/// The module's link to the broker. Connection model: one connection per C_Initialize, shared by
/// all host threads; a request and its reply are exchanged under one lock, as p11-kit's client
/// does, and every frame is tagged with a fresh call code that the reply must carry, so replies
/// can never be handed to the wrong thread. Sessions live on the broker side of this single
/// connection, which is why several connections could not simply be pooled.
/// </summary>
internal sealed class Connection : IDisposable
{
    private readonly object _gate = new();
    private readonly RpcChannel _channel;
    private readonly SpawnedProcess? _child;
    private uint _nextCode = 0x10;
    private bool _broken;

    private readonly int _timeoutMilliseconds;

    private Connection(RpcChannel channel, SpawnedProcess? child, WireProfile profile, string address, int timeoutMilliseconds)
    {
        _timeoutMilliseconds = timeoutMilliseconds;
        _channel = channel;
        _child = child;
        Profile = profile;
        Address = address;
    }

    public WireProfile Profile { get; }
    public string Address { get; }

    /// <summary>
    /// Session handles given to the caller carry the connection's generation in their top byte once
    /// the module had to reconnect, so a handle from before the broker was lost can never name a
    /// session of the new connection, even when the new broker reuses the number. Generation 0
    /// (no reconnection yet) passes handles through unchanged.
    /// </summary>
    public ulong Generation { get; private set; }

    /// <summary>Set once, before the connection is published to other threads.</summary>
    public void AssignGeneration(ulong generation) => Generation = generation;

    private const int GenerationShift = 56;

    public bool TryToBroker(nuint callerHandle, out nuint brokerHandle)
    {
        brokerHandle = callerHandle;
        if (Generation == 0) return true;
        if (((ulong)callerHandle >> GenerationShift) != Generation) return false;
        brokerHandle = (nuint)((ulong)callerHandle & ((1UL << GenerationShift) - 1));
        return true;
    }

    public bool TryToCaller(nuint brokerHandle, out nuint callerHandle)
    {
        callerHandle = brokerHandle;
        if (Generation == 0) return true;
        if (((ulong)brokerHandle >> GenerationShift) != 0) return false;
        callerHandle = (nuint)((ulong)brokerHandle | (Generation << GenerationShift));
        return true;
    }

    public bool Broken => Volatile.Read(ref _broken);

    /// <summary>Connects and negotiates the highest protocol version both sides speak.</summary>
    public static Connection Open(ServerAddress address, int timeoutMilliseconds)
    {
        var (channel, child) = OpenChannel(address);
        channel.ReceiveTimeoutMilliseconds = timeoutMilliseconds;
        byte version;
        try
        {
            version = channel.NegotiateAsClient(WireProfile.MaxVersion);
        }
        catch (TransportException)
        {
            // Servers too old to negotiate close the connection on a non-zero version byte:
            // reconnect and offer version 0, as p11-kit's client does.
            Close(channel, child);
            (channel, child) = OpenChannel(address);
            channel.ReceiveTimeoutMilliseconds = timeoutMilliseconds;
            try
            {
                version = channel.NegotiateAsClient(0);
            }
            catch (TransportException)
            {
                Close(channel, child);
                throw;
            }
        }
        Log.Trace($"connected to {address} with protocol version {version}");
        return new Connection(channel, child, WireProfile.For(version), address.ToString(), timeoutMilliseconds);
    }

    private static (RpcChannel, SpawnedProcess?) OpenChannel(ServerAddress address)
    {
        switch (address.Kind)
        {
            case AddressKind.UnixSocket:
                return (RpcChannel.ConnectUnix(address.Path), null);
            case AddressKind.Command:
                var child = SpawnedProcess.Start(address.Command);
                return (child.Channel, child);
            default:
                return (VSock.Connect(address.Cid, address.Port), null);
        }
    }

    private static void Close(RpcChannel channel, SpawnedProcess? child)
    {
        if (child is not null) child.Dispose();
        else channel.Dispose();
    }

    /// <summary>
    /// Sends the request in <paramref name="context"/> and leaves the parsed reply in its reader.
    /// Returns CKR_OK, the CK_RV of an error reply, or CKR_DEVICE_ERROR / CKR_DEVICE_REMOVED when the
    /// broker misbehaves or is gone.
    /// </summary>
    public ulong Exchange(CallContext context)
    {
        var request = context.Request;
        var call = request.Call!;
        if (!request.Complete)
        {
            Log.Error($"{call.Name}: request could not be encoded");
            return CKR_HOST_MEMORY;
        }
        lock (_gate)
        {
            if (_broken)
                return CKR_DEVICE_REMOVED;
            uint code = _nextCode++;
            if (_nextCode == 0) _nextCode = 0x10;
            try
            {
                _channel.ReceiveTimeoutMilliseconds = call.Id == RpcCallId.C_WaitForSlotEvent ? -1 : _timeoutMilliseconds;
                _channel.SendFrame(code, request.Writer);
                if (!_channel.TryReceiveFrame(out uint replyCode, out var body))
                    return Fail(call, "the broker closed the connection");
                if (replyCode != code)
                    return Fail(call, $"reply tagged {replyCode} for request {code}");
                context.KeepReply(body.Span);
            }
            catch (TransportException e)
            {
                return Fail(call, e.Message);
            }
        }

        var reply = context.Response;
        var status = reply.Parse(context.ReplyBody, MessageKind.Response);
        if (status != ParseStatus.Ok)
        {
            Log.Error($"{call.Name}: malformed reply from the broker ({status})");
            return CKR_DEVICE_ERROR;
        }
        if (reply.IsError)
        {
            // A server never reports success through an error reply; 0 there is a protocol fault.
            if (reply.ErrorCode == CKR_OK)
            {
                Log.Error($"{call.Name}: error reply without an error code");
                return CKR_DEVICE_ERROR;
            }
            return reply.ErrorCode;
        }
        if (reply.Call!.Id != call.Id)
        {
            Log.Error($"{call.Name}: the broker answered {reply.Call.Name}");
            return CKR_DEVICE_ERROR;
        }
        return CKR_OK;
    }

    private ulong Fail(RpcCall call, string why)
    {
        _broken = true;
        Log.Error($"{call.Name}: lost the broker at {Address}: {why}");
        return CKR_DEVICE_ERROR;
    }

    /// <summary>
    /// Sends C_Finalize if the connection is free within <paramref name="waitMilliseconds"/>, then
    /// closes it. A call stalled on a silent broker is woken (it fails) instead of blocking
    /// C_Finalize for ever.
    /// </summary>
    public ulong FinalizeAndClose(CallContext context, int waitMilliseconds)
    {
        ulong rv = CKR_OK;
        bool free = Monitor.TryEnter(_gate, waitMilliseconds);
        try
        {
            if (free && !_broken)
                rv = Exchange(context);
        }
        finally
        {
            if (free) Monitor.Exit(_gate);
        }
        Dispose();
        return rv;
    }

    /// <summary>Wakes any thread blocked on the broker, waits for it to leave, then releases the connection.</summary>
    public void Dispose()
    {
        Volatile.Write(ref _broken, true);
        if (_child is not null) _child.Shutdown();
        else _channel.Shutdown();
        lock (_gate)
            Close(_channel, _child);
    }
}

/// <summary>Per-thread message buffers, reused across calls so the hot path does not allocate.</summary>
internal sealed class CallContext
{
    [ThreadStatic] private static CallContext? _current;

    private byte[] _reply = new byte[4096];
    private int _replyLength;

    public RpcMessageWriter Request { get; } = new(WireProfile.V0);
    public RpcMessageReader Response { get; } = new(WireProfile.V0);

    public ReadOnlyMemory<byte> ReplyBody => new(_reply, 0, _replyLength);

    public static CallContext For(Connection connection, RpcCallId id)
    {
        var context = _current ??= new CallContext();
        context.Request.Profile = connection.Profile;
        context.Response.Profile = connection.Profile;
        context.Request.Begin(CallTable.Get(id), MessageKind.Request);
        return context;
    }

    public void KeepReply(ReadOnlySpan<byte> body)
    {
        if (_reply.Length < body.Length)
            _reply = new byte[Math.Max(body.Length, _reply.Length * 2)];
        body.CopyTo(_reply);
        _replyLength = body.Length;
    }

    /// <summary>Wipes buffers that may have held a PIN or secret.</summary>
    public void Scrub()
    {
        Array.Clear(_reply, 0, _replyLength);
        _replyLength = 0;
        Request.Writer.Reset();
    }
}
