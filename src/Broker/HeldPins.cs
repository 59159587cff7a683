using P11Proxy.Pkcs11;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Broker;

/// <summary>
/// The held PINs as one client's process (a worker, or stdio mode) uses them. Which tokens the
/// peer may use the held PIN for is decided by the policy lines that name it (its uid, primary
/// gid or a supplementary gid); for any other token or peer the broker is as transparent as
/// without --pin: no protected-path flag, and a C_Login with a NULL PIN goes to the module as sent.
///
/// For a token the peer may use: C_GetTokenInfo shows CKF_PROTECTED_AUTHENTICATION_PATH; C_Login
/// (CKU_USER or CKU_CONTEXT_SPECIFIC) with a NULL PIN logs in with the held PIN, read from its
/// source for this login only and wiped after it; a PIN the client sends goes to the token as
/// ever. A login-on-arrival token is logged in before the client's first request, on a session of
/// the worker's own that the client never sees (not in its handles, not closed by its
/// C_CloseAllSessions, not counted in C_GetTokenInfo's session count): a PKCS#11 login lasts only
/// while the process has a session open on the token.
///
/// A process that will read PINs makes itself non-dumpable first (PR_SET_DUMPABLE 0): no core
/// file, and other processes of the broker's user cannot read its memory (/proc/PID/mem, ptrace)
/// while a PIN passes through it; only root (CAP_SYS_PTRACE) can.
/// </summary>
internal sealed unsafe class HeldPins
{
    /// <summary>The held-PIN options of this process (set by BrokerMain before serving).</summary>
    public static HeldPinConfiguration Configuration { get; set; } = new();

    /// <summary>The peer this process serves, once known (null: no --pin given, nothing to do).</summary>
    public static HeldPins? Current { get; private set; }

    private readonly HeldPinConfiguration _config;
    private readonly uint _uid, _gid;
    private readonly uint[] _groups;
    private readonly ProcessLog _log;
    private readonly string _peerName;
    private readonly Lock _gate = new();
    private readonly Dictionary<nuint, nuint> _hiddenSessions = new(); // session -> slot
    private readonly HashSet<int> _asking = new(); // eventfds of ask-pass programs running

    private HeldPins(HeldPinConfiguration config, uint uid, uint gid, uint[] groups, string peerName, ProcessLog log)
    {
        _config = config;
        _uid = uid;
        _gid = gid;
        _groups = groups;
        _peerName = peerName;
        _log = log;
    }

    private IEnumerable<PeerTokenRule> MyRules(IEnumerable<PeerTokenRule> rules) => rules.Where(r => r.Peer.Matches(_uid, _gid, _groups));

    /// <summary>
    /// A worker's client arrived (its connection is <paramref name="clientFd"/>): settles what the
    /// peer may use and logs it in to its login-on-arrival tokens, before its first request is read.
    /// </summary>
    public static void Arrive(ClientPeer peer, int clientFd, Backend backend, ProcessLog log)
    {
        if (Configuration.IsEmpty) return;
        PolicyNative.NotDumpable();
        var held = new HeldPins(Configuration, peer.Uid, peer.Gid, PolicyNative.PeerGroups(clientFd), peer.Name, log);
        Current = held;
        if (!held.MyRules(held._config.LoginOnArrival).Any()) return;
        // The client may leave while an ask-pass program runs for it: that ends the ask, as it
        // does once the client is being served.
        int stop = Posix.WakeFd();
        var watch = new Thread(() =>
        {
            Span<Libc.PollFd> fds = stackalloc Libc.PollFd[2];
            fds[0] = new() { Fd = clientFd, Events = Libc.POLLRDHUP };
            fds[1] = new() { Fd = stop, Events = Libc.POLLIN };
            while (Libc.poll(fds, 2, -1) < 0 && Libc.LastError == Libc.EINTR) { }
            if (fds[1].Revents == 0) held.CancelAsks();
        }) { IsBackground = true, Name = "arrival watch" };
        watch.Start();
        try
        {
            held.LogInAllOnArrival(backend);
        }
        finally
        {
            Posix.Wake(stop);
            watch.Join();
            Libc.close(stop);
        }
    }

    /// <summary>stdio mode: the peer is whoever started this process, as this process's own credentials say.</summary>
    public static void ArriveStdio(Backend backend, ProcessLog log)
    {
        if (Configuration.IsEmpty) return;
        PolicyNative.NotDumpable();
        uint uid = Libc.getuid(), gid = PolicyNative.getgid();
        var held = new HeldPins(Configuration, uid, gid, PolicyNative.OwnGroups(), $"stdio client (uid {uid})", log);
        Current = held;
        held.LogInAllOnArrival(backend);
    }

    private void LogInAllOnArrival(Backend backend)
    {
        if (!MyRules(_config.LoginOnArrival).Any()) return;
        foreach (var slot in TokenFilter.BackendSlots(backend.Functions, 1, out _))
            LogInOnArrival(backend, slot);
    }

    /// <summary>
    /// If the policy logs this peer in on arrival to the token in <paramref name="slot"/>: opens a
    /// hidden session there and logs in with the held PIN (also after the token was removed and is
    /// back). CKR_OK when logged in, or nothing to do; otherwise the module's or the source's CK_RV
    /// (logged).
    /// </summary>
    public ulong LogInOnArrival(Backend backend, nuint slot)
    {
        var functions = backend.Functions;
        CK_TOKEN_INFO tokenInfo = default;
        CK_TOKEN_INFO* info = &tokenInfo;
        if (functions->C_GetTokenInfo(slot, info) != (nuint)CKR_OK) return CKR_OK; // no token there
        if (!MyRules(_config.LoginOnArrival).Any(rule => rule.Token.IsVisible(functions, slot, info))) return CKR_OK;
        var pin = PinFor(functions, slot, info);
        if (pin is null) return CKR_OK;
        lock (_gate)
        {
            // One hidden session per slot: a session still open from before is closed first (it
            // belonged to the token as it was before a removal).
            foreach (var old in _hiddenSessions.Where(entry => entry.Value == slot).Select(entry => entry.Key).ToArray())
            {
                functions->C_CloseSession(old);
                _hiddenSessions.Remove(old);
            }
        }
        nuint session = 0;
        ulong rv = functions->C_OpenSession(slot, (nuint)CKF_SERIAL_SESSION, null, null, &session);
        if (rv != CKR_OK)
        {
            _log.Warn($"{_peerName}: cannot log in to token '{Label(info)}' (slot {slot}) on arrival: C_OpenSession {Name(rv)}");
            return rv;
        }
        lock (_gate) _hiddenSessions[session] = slot;
        rv = LoginWith(backend, pin, session, CKU_USER);
        if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN)
        {
            _log.Info($"{_peerName}: logged in to token '{Label(info)}' (slot {slot}) on arrival, PIN from {pin.Source.Description} (--login-on-arrival)");
            return CKR_OK;
        }
        _log.Warn($"{_peerName}: login on arrival to token '{Label(info)}' (slot {slot}) failed: {Name(rv)}");
        lock (_gate) _hiddenSessions.Remove(session);
        functions->C_CloseSession(session);
        return rv;
    }

    /// <summary>
    /// Logs <paramref name="session"/> (on <paramref name="slot"/>) in with the held PIN, if the
    /// policy lets this peer use it for that token: the module's C_Login answer (or the source's
    /// CK_RV) when it does, <see cref="NotHeld"/> when it does not.
    /// </summary>
    public ulong LoginHeld(Backend backend, nuint slot, nuint session, ulong userType = CKU_USER)
    {
        var functions = backend.Functions;
        CK_TOKEN_INFO info = default;
        if (functions->C_GetTokenInfo(slot, &info) != (nuint)CKR_OK) return NotHeld;
        var pin = MayUse(functions, slot, &info) ? PinFor(functions, slot, &info) : null;
        if (pin is null) return NotHeld;
        // Logged in on arrival and still so: the protected path's answer is that the login is
        // done (CKR_USER_ALREADY_LOGGED_IN would stop pkcs11-tool --login, which asks for the login
        // it sees is needed), with no PIN read and no ask-pass program run.
        if (userType == CKU_USER && IsLoggedInOnArrival(functions, slot)) return CKR_OK;
        return LoginWith(backend, pin, session, userType);
    }

    /// <summary>Whether a hidden session on the slot is in a user state (the client may have logged the token out since).</summary>
    private bool IsLoggedInOnArrival(CK_FUNCTION_LIST_3_0* functions, nuint slot)
    {
        nuint[] hidden;
        lock (_gate) hidden = _hiddenSessions.Where(entry => entry.Value == slot).Select(entry => entry.Key).ToArray();
        foreach (var session in hidden)
        {
            CK_SESSION_INFO info = default;
            if (functions->C_GetSessionInfo(session, &info) == (nuint)CKR_OK &&
                (info.state == (nuint)CKS_RO_USER_FUNCTIONS || info.state == (nuint)CKS_RW_USER_FUNCTIONS))
                return true;
        }
        return false;
    }

    /// <summary>Not a CK_RV: the held PIN is not this peer's to use for that token.</summary>
    public const ulong NotHeld = 0xffff_ffff_ffff_ffe0;

    /// <summary>
    /// The dispatcher's C_Login: a NULL PIN (length 0) from a peer the policy names for the
    /// session's token logs in with the held PIN; anything else goes to the module as sent.
    /// </summary>
    public static ulong Login(Backend backend, nuint session, ulong userType, byte* pin, nuint pinLength)
    {
        if (pin == null && pinLength == 0 && Current is { } held && (userType == CKU_USER || userType == CKU_CONTEXT_SPECIFIC) && !held.IsHidden(session))
        {
            CK_SESSION_INFO sessionInfo = default;
            if (backend.Functions->C_GetSessionInfo(session, &sessionInfo) == (nuint)CKR_OK)
            {
                ulong rv = held.LoginHeld(backend, sessionInfo.slotID, session, userType);
                if (rv != NotHeld) return rv;
            }
        }
        return backend.Functions->C_Login(session, (nuint)userType, pin, pinLength);
    }

    /// <summary>C_GetTokenInfo as this peer sees it: the protected path for its held-PIN tokens, and the hidden sessions not counted.</summary>
    public void AdjustTokenInfo(CK_FUNCTION_LIST_3_0* functions, nuint slot, CK_TOKEN_INFO* info)
    {
        if (MayUse(functions, slot, info) && PinFor(functions, slot, info) is not null)
            info->flags |= (nuint)CKF_PROTECTED_AUTHENTICATION_PATH;
        nuint hidden;
        lock (_gate) hidden = (nuint)_hiddenSessions.Count(entry => entry.Value == slot);
        if (hidden != 0 && info->ulSessionCount != unchecked((nuint)CK_UNAVAILABLE_INFORMATION) && info->ulSessionCount >= hidden)
            info->ulSessionCount -= hidden;
    }

    /// <summary>Ends every ask-pass program running for this client (its C_Finalize, or it left): their logins fail with CKR_FUNCTION_CANCELED.</summary>
    public void CancelAsks()
    {
        lock (_gate)
            foreach (int fd in _asking) Posix.Wake(fd);
    }

    public bool IsHidden(nuint session)
    {
        lock (_gate) return _hiddenSessions.ContainsKey(session);
    }

    /// <summary>Closes the hidden sessions (before the module is finalised).</summary>
    public void CloseHiddenSessions(Backend backend)
    {
        nuint[] sessions;
        lock (_gate)
        {
            sessions = _hiddenSessions.Keys.ToArray();
            _hiddenSessions.Clear();
        }
        foreach (var session in sessions) backend.Functions->C_CloseSession(session);
    }

    private bool MayUse(CK_FUNCTION_LIST_3_0* functions, nuint slot, CK_TOKEN_INFO* info) =>
        MyRules(_config.ProtectedLogin).Concat(MyRules(_config.LoginOnArrival)).Any(rule => rule.Token.IsVisible(functions, slot, info));

    private HeldPin? PinFor(CK_FUNCTION_LIST_3_0* functions, nuint slot, CK_TOKEN_INFO* info) =>
        _config.Pins.FirstOrDefault(pin => pin.Token.IsVisible(functions, slot, info));

    private ulong LoginWith(Backend backend, HeldPin held, nuint session, ulong userType)
    {
        int cancelFd = Posix.WakeFd();
        lock (_gate) _asking.Add(cancelFd);
        try
        {
            using var pin = held.Source.Read(_config.AskTimeoutMilliseconds, cancelFd);
            ulong rv = backend.Functions->C_Login(session, (nuint)userType, pin.Bytes, (nuint)pin.Length);
            _log.Trace($"{_peerName}: C_Login ({(userType == CKU_USER ? "user" : "context-specific")}) with the held PIN of {held.Uri} from {held.Source.Description} -> {Name(rv)}");
            return rv;
        }
        catch (PinUnavailableException e)
        {
            _log.Warn($"{_peerName}: no PIN for {held.Uri}: {e.Message}; the login fails with {Name(e.ReturnValue)}");
            return e.ReturnValue;
        }
        finally
        {
            lock (_gate) _asking.Remove(cancelFd);
            Libc.close(cancelFd);
        }
    }

    private static string Name(ulong rv) => Pkcs11Names.ReturnValue(rv) ?? $"0x{rv:x}";

    private static string Label(CK_TOKEN_INFO* info) =>
        System.Text.Encoding.UTF8.GetString(new ReadOnlySpan<byte>(info->label, 32)).TrimEnd(' ', '\0');
}
