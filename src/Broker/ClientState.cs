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
        lock (_gate) return _sessionSlots.Remove(session);
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
            return all;
        }
    }
}
