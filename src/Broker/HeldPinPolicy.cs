using System.Runtime.InteropServices;

namespace P11Proxy.Broker;

/// <summary>A token's PIN held by the broker: the token (RFC 7512 URI) and where its PIN comes from.</summary>
internal sealed record HeldPin(string Uri, TokenFilter Token, PinSource Source);

/// <summary>Who a policy line names: a uid, or a gid (the peer's primary group or one of its supplementary groups).</summary>
internal sealed record PeerSelector(bool IsGroup, uint Id, string Text)
{
    public bool Matches(uint uid, uint gid, IReadOnlyCollection<uint> groups) =>
        IsGroup ? gid == Id || groups.Contains(Id) : uid == Id;

    public static PeerSelector Parse(string text, string option)
    {
        int colon = text.IndexOf(':');
        string kind = colon > 0 ? text[..colon] : "";
        string value = colon > 0 ? text[(colon + 1)..] : "";
        if (kind is not ("uid" or "gid") || value.Length == 0)
            throw new BrokerException($"{option}: '{text}' does not name a peer; write uid:N, uid:NAME, gid:N or gid:NAME before the '='");
        bool isGroup = kind == "gid";
        if (uint.TryParse(value, out uint id))
            return new PeerSelector(isGroup, id, text);
        uint? named = isGroup ? Posix.GroupId(value) : PolicyNative.UserId(value);
        return named is { } found
            ? new PeerSelector(isGroup, found, text)
            : throw new BrokerException($"{option}: no {(isGroup ? "group" : "user")} named '{value}' on this system");
    }
}

/// <summary>A policy line: this peer may use the held PIN of these tokens (protected-path login, or logged in on arrival).</summary>
internal sealed record PeerTokenRule(PeerSelector Peer, string Uri, TokenFilter Token);

/// <summary>
/// The broker's held-PIN options: --pin (repeatable), --protected-login and --login-on-arrival
/// (repeatable policy lines PEER=TOKEN-URI) and --askpass-timeout-ms. Parsed by every process
/// (the listener checks them at start-up, each worker again); the PINs themselves are read only
/// by a worker, at the moment a login needs them.
/// </summary>
internal sealed class HeldPinConfiguration
{
    public const int DefaultAskTimeoutMilliseconds = 60_000;

    public static readonly string[] OptionNames = ["--pin", "--protected-login", "--login-on-arrival", "--askpass-timeout-ms"];

    public List<HeldPin> Pins { get; } = new();
    public List<PeerTokenRule> ProtectedLogin { get; } = new();
    public List<PeerTokenRule> LoginOnArrival { get; } = new();
    public int AskTimeoutMilliseconds { get; private set; } = DefaultAskTimeoutMilliseconds;

    public bool IsEmpty => Pins.Count == 0;

    /// <summary>Parses the options (name, value pairs in command-line order); throws <see cref="BrokerException"/> naming what is wrong.</summary>
    public static HeldPinConfiguration Parse(IEnumerable<(string Option, string Value)> options)
    {
        var config = new HeldPinConfiguration();
        foreach (var (option, value) in options)
        {
            switch (option)
            {
                case "--pin": config.Pins.Add(ParsePin(value)); break;
                case "--protected-login": config.ProtectedLogin.Add(ParseRule(value, option)); break;
                case "--login-on-arrival": config.LoginOnArrival.Add(ParseRule(value, option)); break;
                case "--askpass-timeout-ms":
                    config.AskTimeoutMilliseconds = int.TryParse(value, out int ms) && ms >= 100 && ms <= 3_600_000
                        ? ms
                        : throw new BrokerException($"--askpass-timeout-ms takes a number from 100 to 3600000, not '{value}'");
                    break;
                default: throw new BrokerException($"unknown option '{option}'");
            }
        }
        foreach (var rule in config.ProtectedLogin.Concat(config.LoginOnArrival))
        {
            if (!config.Pins.Any(pin => Covers(pin, rule)))
                throw new BrokerException($"{(config.LoginOnArrival.Contains(rule) ? "--login-on-arrival" : "--protected-login")} {rule.Peer.Text}={rule.Uri}: " +
                                          "no --pin holds a PIN for every token this URI selects; add --pin '" +
                                          $"{rule.Uri.Split('?')[0]}?pin-source=file:/etc/p11proxy/token.pin' (or name the token as a --pin does)");
        }
        return config;
    }

    /// <summary>Whether every token the rule selects is one the --pin selects (its attributes are a subset of the rule's).</summary>
    private static bool Covers(HeldPin pin, PeerTokenRule rule) =>
        pin.Token.Uris[0].All(attribute => rule.Token.Uris[0].TryGetValue(attribute.Key, out var wanted) && wanted == attribute.Value);

    /// <summary>pkcs11:token=LABEL[;serial=...]?pin-source=SOURCE</summary>
    public static HeldPin ParsePin(string uri)
    {
        const string option = "--pin";
        if (!uri.StartsWith("pkcs11:", StringComparison.Ordinal))
            throw new BrokerException($"{option} '{uri}' is not a PKCS#11 URI; write --pin 'pkcs11:token=LABEL?pin-source=file:/etc/p11proxy/token.pin'");
        int question = uri.IndexOf('?');
        string path = question < 0 ? uri : uri[..question];
        string query = question < 0 ? "" : uri[(question + 1)..];
        var token = TokenFilter.Parse([path], option);
        if (token.Uris[0].Count == 0)
            throw new BrokerException($"{option} '{path}' selects every token; name the token (token=LABEL, serial=...) whose PIN this is");
        PinSource? source = null;
        foreach (var part in query.Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            int equals = part.IndexOf('=');
            string name = equals < 0 ? part : part[..equals];
            string value = equals < 0 ? "" : part[(equals + 1)..];
            switch (name)
            {
                case "pin-source":
                    if (source is not null) throw new BrokerException($"{option} '{path}': pin-source is given twice");
                    source = PinSource.Parse(value, option);
                    break;
                case "pin-value":
                    // Not even echoed back: the value is the PIN.
                    throw new BrokerException($"{option} '{path}': pin-value puts the PIN on the command line, where any user sees it (ps, /proc); use pin-source=file:/PATH (mode 0600), credential:NAME or |PROGRAM");
                default:
                    throw new BrokerException($"{option} '{path}': query attribute '{name}' is not understood; the only one is pin-source");
            }
        }
        return new HeldPin(path, token, source ?? throw new BrokerException($"{option} '{path}' has no ?pin-source=...: say where the PIN comes from (file:/PATH, credential:NAME or |PROGRAM)"));
    }

    /// <summary>PEER=TOKEN-URI</summary>
    private static PeerTokenRule ParseRule(string value, string option)
    {
        int equals = value.IndexOf('=');
        if (equals <= 0)
            throw new BrokerException($"{option} takes PEER=TOKEN-URI (e.g. uid:www-data=pkcs11:token=web), not '{value}'");
        var peer = PeerSelector.Parse(value[..equals], option);
        string uri = value[(equals + 1)..];
        if (uri.Contains('?'))
            throw new BrokerException($"{option} {value}: the token URI takes no query (the PIN's source belongs to --pin)");
        var token = TokenFilter.Parse([uri], option);
        return new PeerTokenRule(peer, uri, token);
    }

    /// <summary>The start-up checks of every source (file modes and owners, the credential, the program); throws <see cref="BrokerException"/>.</summary>
    public void Check()
    {
        foreach (var pin in Pins)
        {
            try
            {
                pin.Source.Check();
            }
            catch (BrokerException e)
            {
                throw new BrokerException($"--pin {pin.Uri}: {e.Message}");
            }
        }
    }

    /// <summary>How the log names the configuration at start-up (sources, never PINs).</summary>
    public string Describe() =>
        string.Join("; ", Pins.Select(pin => $"PIN of {pin.Uri} from {pin.Source.Description}")) +
        (ProtectedLogin.Count + LoginOnArrival.Count == 0
            ? "; no peer may use them (add --protected-login or --login-on-arrival)"
            : string.Concat(ProtectedLogin.Select(r => $"; {r.Peer.Text} may log in to {r.Uri} with it (protected path)")) +
              string.Concat(LoginOnArrival.Select(r => $"; {r.Peer.Text} is logged in to {r.Uri} on arrival")));
}

internal static unsafe partial class PolicyNative
{
    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint getpwnam(string name);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getsockopt(int fd, int level, int name, void* value, uint* length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getgroups(int size, uint* list);

    [LibraryImport("libc")]
    public static partial uint getgid();

    /// <summary>The uid of a user name, or null.</summary>
    public static uint? UserId(string name)
    {
        nint user = getpwnam(name);
        if (user == 0) return null;
        // struct passwd: char *pw_name, char *pw_passwd, uid_t pw_uid
        return *(uint*)(user + 2 * sizeof(nint));
    }

    /// <summary>
    /// The supplementary groups of a unix socket's peer as they were when it connected
    /// (SO_PEERGROUPS, Linux 4.13+); empty when the kernel cannot say.
    /// </summary>
    public static uint[] PeerGroups(int fd)
    {
        const int SOL_SOCKET = 1, SO_PEERGROUPS = 59;
        uint length = 256 * sizeof(uint);
        for (int attempt = 0; attempt < 3; attempt++)
        {
            var groups = new uint[length / sizeof(uint)];
            fixed (uint* list = groups)
            {
                uint size = length;
                if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, list, &size) == 0)
                    return groups[..(int)(size / sizeof(uint))];
                if (Posix.LastError != 34 /* ERANGE */) return [];
                length = Math.Max(size, length * 2);
            }
        }
        return [];
    }

    /// <summary>This process's supplementary groups (the peer of stdio mode is whoever started us).</summary>
    public static uint[] OwnGroups()
    {
        int count = getgroups(0, null);
        if (count <= 0) return [];
        var groups = new uint[count];
        fixed (uint* list = groups)
            count = getgroups(count, list);
        return count < 0 ? [] : groups[..count];
    }
}
