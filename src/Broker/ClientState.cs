using P11Proxy.Wire;

namespace P11Proxy.Broker;

/// <summary>
/// What one connected client owns on the shared backend: its sessions (with their slots), so a
/// client can neither see nor close another client's sessions, and its own sessions are closed
/// when it disconnects.
/// </summary>
internal sealed class ClientState
{
    private readonly Lock _gate = new();
    private readonly Dictionary<nuint, nuint> _sessionSlots = new();

    public ClientState(string peer) => Peer = peer;

    /// <summary>Who is connected, for log lines (uid and pid, or "stdio").</summary>
    public string Peer { get; }

    public bool Initialized { get; set; }

    /// <summary>
    /// What the client speaks: the negotiated protocol version, and since its C_Initialize whether
    /// message parameters travel typed (only clients that may be ours were offered it). Read by
    /// every worker of the connection before each request.
    /// </summary>
    public WireProfile Profile { get; set; } = WireProfile.V0;

    private EventQueue? _events;

    /// <summary>Its slot events from C_Initialize until C_Finalize or disconnecting.</summary>
    public EventQueue? Events => Volatile.Read(ref _events);

    public void SetEvents(EventQueue queue) => Volatile.Write(ref _events, queue);

    /// <summary>The queue, taken once (C_Finalize and disconnecting may race).</summary>
    public EventQueue? TakeEvents() => Interlocked.Exchange(ref _events, null);

    /// <summary>
    /// Per session, the hash of the last request of a protocol-0 client that asked for no output
    /// room and was performed for real because nothing remained to output (see
    /// Dispatcher.CallWithOutput): the same request next on that session is the second pass of a
    /// two-pass caller and is answered alike. Any other request of the session drops it.
    /// </summary>
    private Dictionary<nuint, byte[]>? _zeroOutputRequests;

    public void RememberZeroOutputRequest(nuint session, byte[] requestHash)
    {
        lock (_gate) (_zeroOutputRequests ??= new())[session] = requestHash;
    }

    /// <summary>Whether the request is a repeat of the remembered one; the memory is dropped either way.</summary>
    public bool TakeZeroOutputRepeat(nuint session, ReadOnlySpan<byte> request)
    {
        byte[]? remembered;
        lock (_gate)
        {
            if (_zeroOutputRequests is null || !_zeroOutputRequests.Remove(session, out remembered)) return false;
        }
        return System.Security.Cryptography.SHA256.HashData(request).AsSpan().SequenceEqual(remembered);
    }

    public bool HasZeroOutputRequest(nuint session)
    {
        lock (_gate) return _zeroOutputRequests is { Count: > 0 } && _zeroOutputRequests.ContainsKey(session);
    }

    public void AddSession(nuint session, nuint slot)
    {
        lock (_gate) _sessionSlots[session] = slot;
    }

    public bool Owns(nuint session)
    {
        lock (_gate) return _sessionSlots.ContainsKey(session);
    }

    public bool RemoveSession(nuint session)
    {
        SessionMessages? messages;
        bool removed;
        lock (_gate)
        {
            _zeroOutputRequests?.Remove(session);
            removed = _sessionSlots.Remove(session);
            _messages.Remove(session, out messages);
        }
        messages?.Dispose();
        return removed;
    }

    public nuint[] SessionsOn(nuint slot)
    {
        lock (_gate) return _sessionSlots.Where(entry => entry.Value == slot).Select(entry => entry.Key).ToArray();
    }

    public nuint[] TakeAllSessions()
    {
        nuint[] all;
        SessionMessages[] messages;
        lock (_gate)
        {
            all = _sessionSlots.Keys.ToArray();
            _sessionSlots.Clear();
            _zeroOutputRequests?.Clear();
            messages = _messages.Values.ToArray();
            _messages.Clear();
        }
        foreach (var state in messages) state.Dispose();
        return all;
    }

    private readonly Dictionary<nuint, SessionMessages> _messages = new();

    /// <summary>The message-based operations of one of this client's sessions (created on first use).</summary>
    public SessionMessages MessagesOf(nuint session)
    {
        lock (_gate)
        {
            if (!_messages.TryGetValue(session, out var state))
                _messages[session] = state = new SessionMessages();
            return state;
        }
    }
}

/// <summary>
/// What the broker knows of a session's message-based encryption and decryption: the mechanism each
/// operation was started with, which decides the structure a per-message parameter is built as,
/// and the parameter of a message begun (C_*MessageBegin), kept until the message ends because a
/// module may hold on to its pointers until then. <see cref="Gate"/> is held across the module call
/// that starts an operation and across each call that hands it a parameter, so an operation
/// restarted with another mechanism by another thread can never meet a structure of the wrong kind.
/// </summary>
internal sealed unsafe class SessionMessages : IDisposable
{
    public const ulong NoMechanism = ulong.MaxValue;

    public readonly Lock Gate = new();

    private readonly ulong[] _mechanisms = [NoMechanism, NoMechanism];
    private readonly void*[] _begun = [null, null];

    /// <summary>The mechanism of the last operation started successfully, or <see cref="NoMechanism"/>. Under <see cref="Gate"/>.</summary>
    public ulong Mechanism(bool encrypt) => _mechanisms[encrypt ? 0 : 1];

    public void SetMechanism(bool encrypt, ulong mechanism)
    {
        _mechanisms[encrypt ? 0 : 1] = mechanism;
        EndMessage(encrypt);
    }

    /// <summary>Keeps the native parameter of a message begun (freed at <see cref="EndMessage"/>). Under <see cref="Gate"/>.</summary>
    public void KeepBegun(bool encrypt, void* parameter)
    {
        EndMessage(encrypt);
        _begun[encrypt ? 0 : 1] = parameter;
    }

    /// <summary>The message begun is over: its parameter is wiped and freed. Under <see cref="Gate"/>.</summary>
    public void EndMessage(bool encrypt)
    {
        int index = encrypt ? 0 : 1;
        if (_begun[index] == null) return;
        MessageParameterNative.Free(_begun[index]);
        _begun[index] = null;
    }

    public void Dispose()
    {
        lock (Gate)
        {
            EndMessage(true);
            EndMessage(false);
        }
    }
}
