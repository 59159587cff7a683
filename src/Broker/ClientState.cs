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
