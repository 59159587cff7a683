namespace P11Proxy.Wire.Transport;

/// <summary>
/// Whom the module accepts at the other end of a unix socket before it sends anything (a PIN
/// included): a broker running as the module's own user or as root, or as the one uid the
/// configuration names (<c>broker-uid = N</c>). Anyone can create a socket at a path another
/// user's programs will try (a name in /tmp, or a runtime directory made before the real broker
/// started); the kernel tells the connecting side who listens (SO_PEERCRED), so the impostor is
/// refused at connect.
/// </summary>
public static class BrokerPeer
{
    /// <summary>Null when the peer is acceptable; otherwise why not, and what to do about it.</summary>
    public static string? Refusal(PeerCredentials? peer, uint ownUid, uint? configuredUid, string path, string configHint)
    {
        if (peer is not { } p)
            return $"cannot tell who runs the broker at {path} (SO_PEERCRED failed); refusing it";
        if (p.Uid == ownUid || p.Uid == 0 || p.Uid == configuredUid)
            return null;
        return $"the broker at {path} runs as uid {p.Uid} (pid {p.Pid}), not as you (uid {ownUid}), root" +
               (configuredUid is { } c ? $" or the configured broker-uid {c}" : "") +
               $": refusing to talk to it, it may be another user's program squatting on the socket path. " +
               $"If uid {p.Uid} runs your broker, set 'broker-uid = {p.Uid}' in {configHint}";
    }

    /// <summary>Checks the peer of a connected unix socket; throws <see cref="TransportException"/> when refused.</summary>
    public static void Check(int fd, uint ownUid, uint? configuredUid, string path, string configHint)
    {
        string? refusal = Refusal(UnixListener.PeerOf(fd), ownUid, configuredUid, path, configHint);
        if (refusal is not null)
            throw new TransportException(refusal);
    }
}
