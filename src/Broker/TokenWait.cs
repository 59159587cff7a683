using System.Diagnostics;
using System.Text;
using P11Proxy.Pkcs11;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Broker;

/// <summary>
/// <c>--wait-for-token URI</c> and <c>--token-wait-ms N</c>: a client's C_OpenSession (or C_Login)
/// on a token that matches a URI and has left its reader waits for the same token, the same label
/// and serial number, to come back in whatever slot or reader, for at most N ms; then the call is
/// made on the slot where it is now. At the deadline the client gets the module's own error, as
/// without the option; its C_Finalize or disconnecting ends the wait at once (the same
/// CK_RV a pending C_WaitForSlotEvent gets). Which token a slot held is what this process saw there
/// last: at the client's C_Initialize and at every session it opened. The module is asked every
/// <see cref="PollMilliseconds"/> (C_GetSlotList with tokens present is how modules such as OpenSC
/// notice a card without a wait for events, which the client may be running).
/// </summary>
internal sealed unsafe class TokenWait
{
    private const int PollMilliseconds = 100;
    public const int DefaultTimeoutMilliseconds = 30_000;

    private static readonly List<string> Uris = new();
    private static int _timeoutMilliseconds = DefaultTimeoutMilliseconds;
    private static TokenWait? _current;

    /// <summary>The configured waits; null without <c>--wait-for-token</c>.</summary>
    public static TokenWait? Current => Uris.Count == 0 ? null : LazyInitializer.EnsureInitialized(ref _current, () => new TokenWait(Uris));

    /// <summary>Option parsing: one <c>--wait-for-token</c> URI, checked now.</summary>
    public static void AddUri(string uri)
    {
        try
        {
            TokenFilter.Parse([uri]);
        }
        catch (BrokerException e)
        {
            throw new BrokerException(e.Message.Replace("--token '", "--wait-for-token '"));
        }
        Uris.Add(uri);
    }

    /// <summary>Option parsing: <c>--token-wait-ms</c>.</summary>
    public static void SetTimeout(string text) =>
        _timeoutMilliseconds = int.TryParse(text, out var ms) && ms >= 0 && ms <= 86_400_000
            ? ms
            : throw new BrokerException($"--token-wait-ms takes a number of milliseconds from 0 to 86400000, not '{text}'");

    private readonly TokenFilter _matcher;
    private readonly object _gate = new();
    private readonly Dictionary<nuint, TokenIdentity> _slots = new();
    private readonly Dictionary<nuint, TokenIdentity> _sessions = new();

    private TokenWait(IEnumerable<string> uris) => _matcher = TokenFilter.Parse(uris);

    private readonly record struct TokenIdentity(string Label, string Serial)
    {
        public override string ToString() => $"token '{Label}' (serial {Serial})";
    }

    /// <summary>Remembers which waited-for token each slot with a token holds now (the client's C_Initialize).</summary>
    public void RememberSlots(CK_FUNCTION_LIST_3_0* functions)
    {
        foreach (var slot in PresentSlots(functions))
            Remember(functions, slot, 0);
    }

    /// <summary>A session was opened on <paramref name="slot"/>: the slot's token, and the session's, are remembered.</summary>
    public void Remember(CK_FUNCTION_LIST_3_0* functions, nuint slot, nuint session)
    {
        CK_TOKEN_INFO info = default;
        if (functions->C_GetTokenInfo(slot, &info) != CKR_OK) return;
        if (!_matcher.IsVisible(functions, slot, &info)) return;
        var identity = IdentityOf(&info);
        lock (_gate)
        {
            _slots[slot] = identity;
            if (session != 0) _sessions[session] = identity;
        }
    }

    /// <summary>The client closed a session.</summary>
    public void Forget(nuint session)
    {
        lock (_gate) _sessions.Remove(session);
    }

    /// <summary>
    /// C_OpenSession. On a slot that held a waited-for token the slot is asked first whether its
    /// token is there (a module such as OpenSC notices a removal only when asked, and would open
    /// a session on a card that has gone); when it has left, waits for it and opens the session
    /// where it is now. Returns the module's CK_RV, or its first answer when the wait timed out.
    /// </summary>
    public ulong OpenSession(Backend backend, TokenFilter visible, EventQueue? client, ProcessLog log,
                             ref nuint slot, ulong flags, nuint* session)
    {
        var functions = backend.Functions;
        TokenIdentity identity;
        bool remembered;
        lock (_gate) remembered = _slots.TryGetValue(slot, out identity);
        ulong rv;
        if (remembered)
        {
            CK_SLOT_INFO info = default;
            rv = functions->C_GetSlotInfo(slot, &info);
            if (rv == CKR_OK && (info.flags & CKF_TOKEN_PRESENT) == 0) rv = CKR_TOKEN_NOT_PRESENT;
            if (rv == CKR_OK) rv = functions->C_OpenSession(slot, (nuint)flags, null, null, session);
        }
        else
            rv = functions->C_OpenSession(slot, (nuint)flags, null, null, session);
        if (remembered && rv is CKR_TOKEN_NOT_PRESENT or CKR_DEVICE_REMOVED or CKR_SLOT_ID_INVALID or CKR_TOKEN_NOT_RECOGNIZED)
        {
            ulong waited = WaitFor(functions, visible, client, log, identity, out var found);
            if (waited == CKR_FUNCTION_FAILED) return rv; // the deadline: the module's own answer
            if (waited != CKR_OK) return waited;
            slot = found;
            rv = functions->C_OpenSession(found, (nuint)flags, null, null, session);
        }
        if (rv == CKR_OK && remembered) LogInAgainAfterRemoval(backend, slot, *session);
        return rv;
    }

    /// <summary>
    /// A client logged in on arrival (--login-on-arrival) lost that login when its token left:
    /// a session on the token back in its reader that shows no login is logged in again with the
    /// held PIN, as on arrival (nothing is done for other clients).
    /// </summary>
    private static void LogInAgainAfterRemoval(Backend backend, nuint slot, nuint session)
    {
        if (HeldPins.Current is not { } held) return;
        CK_SESSION_INFO info = default;
        if (backend.Functions->C_GetSessionInfo(session, &info) != CKR_OK) return;
        if ((ulong)info.state is CKS_RO_PUBLIC_SESSION or CKS_RW_PUBLIC_SESSION)
            held.LogInOnArrival(backend, slot);
    }

    /// <summary>
    /// C_Login failed with <paramref name="rv"/> because the session's waited-for token has left
    /// (a module that keeps the session says CKR_DEVICE_REMOVED or CKR_TOKEN_NOT_PRESENT): waits for
    /// the token and logs in again once. A module that closed the session on removal, as PKCS#11
    /// says it does (OpenSC: CKR_SESSION_HANDLE_INVALID), is answered at once: the session is gone.
    /// </summary>
    public ulong LoginWhenBack(CK_FUNCTION_LIST_3_0* functions, TokenFilter visible, EventQueue? client, ProcessLog log,
                               nuint session, ulong rv, Func<ulong> login)
    {
        if (rv is not (CKR_TOKEN_NOT_PRESENT or CKR_DEVICE_REMOVED))
            return rv;
        TokenIdentity identity;
        lock (_gate)
            if (!_sessions.TryGetValue(session, out identity)) return rv;
        ulong waited = WaitFor(functions, visible, client, log, identity, out _);
        if (waited == CKR_FUNCTION_FAILED) return rv;
        return waited != CKR_OK ? waited : login();
    }

    /// <summary>CKR_OK and the slot, CKR_FUNCTION_FAILED at the deadline, or what ended the client's view.</summary>
    private ulong WaitFor(CK_FUNCTION_LIST_3_0* functions, TokenFilter visible, EventQueue? client, ProcessLog log,
                          TokenIdentity identity, out nuint found)
    {
        found = 0;
        var started = Stopwatch.StartNew();
        log.Info($"{client?.Peer}: {identity} is absent: waiting up to {_timeoutMilliseconds} ms for it to come back");
        while (true)
        {
            if (client is not null && Volatile.Read(ref client.Ended) is var ended && ended != CKR_OK)
            {
                log.Info($"{client.Peer}: the wait for {identity} ended: the client finalised or left");
                return ended;
            }
            foreach (var slot in PresentSlots(functions))
            {
                CK_TOKEN_INFO info = default;
                if (functions->C_GetTokenInfo(slot, &info) != CKR_OK || IdentityOf(&info) != identity) continue;
                if (!visible.IsVisible(functions, slot, &info)) continue;
                lock (_gate) _slots[slot] = identity;
                log.Info($"{client?.Peer}: {identity} is back in slot {slot} after {started.ElapsedMilliseconds} ms");
                found = slot;
                return CKR_OK;
            }
            if (started.ElapsedMilliseconds >= _timeoutMilliseconds)
            {
                log.Info($"{client?.Peer}: {identity} did not come back within {_timeoutMilliseconds} ms");
                return CKR_FUNCTION_FAILED;
            }
            Thread.Sleep(PollMilliseconds);
        }
    }

    private static nuint[] PresentSlots(CK_FUNCTION_LIST_3_0* functions) => TokenFilter.BackendSlots(functions, 1, out _);

    private static TokenIdentity IdentityOf(CK_TOKEN_INFO* info) =>
        new(TokenFilter.Padded(info->label, 32), TokenFilter.Padded(info->serialNumber, 16));

}
