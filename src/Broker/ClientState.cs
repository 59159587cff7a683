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
        lock (_gate)
        {
            _zeroOutputRequests?.Remove(session);
            return _sessionSlots.Remove(session);
        }
    }

    public nuint[] SessionsOn(nuint slot)
    {
        lock (_gate) return _sessionSlots.Where(entry => entry.Value == slot).Select(entry => entry.Key).ToArray();
    }

    public nuint[] TakeAllSessions()
    {
        lock (_gate)
        {
            var all = _sessionSlots.Keys.ToArray();
            _sessionSlots.Clear();
            _zeroOutputRequests?.Clear();
            return all;
        }
    }
}
