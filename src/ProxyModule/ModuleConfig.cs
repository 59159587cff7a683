using P11Proxy.Wire.Transport;

namespace P11Proxy.Module;

/// <summary>
/// Where the broker is. Sources, first found wins:
///   1. P11_KIT_SERVER_ADDRESS (p11-kit's own variable, so existing set-ups keep working);
///   2. server-address in $XDG_CONFIG_HOME/p11proxy/p11proxy.conf (default ~/.config/...);
///   3. server-address in /etc/p11proxy/p11proxy.conf;
///   4. unix:path=$XDG_RUNTIME_DIR/p11-kit/pkcs11, p11-kit's default socket.
/// The file format is "key = value" lines; '#' starts a comment. Keys: server-address, timeout-ms
/// (P11PROXY_TIMEOUT_MS in the environment wins; 0 means no limit).
///
/// Read once per load, as p11-kit's client reads its address once per C_GetFunctionList: the
/// first C_Initialize after the host loaded the module (C_GetFunctionList, C_GetInterface[List])
/// settles it, and every later C_Initialize of the process, in forked children too, reuses it
/// whatever the environment then holds. nginx, for one, empties the environment of its workers,
/// which initialise the module again after the fork.
/// </summary>
internal sealed record ModuleConfig(string Address, string Source, int TimeoutMilliseconds, byte OfferedVersion)
{
    private static ModuleConfig? _settled;

    /// <summary>The host loaded the module (again): the next C_Initialize reads the settings afresh.</summary>
    public static void Unsettle() => Volatile.Write(ref _settled, null);

    /// <summary>The settings of this load: read at its first C_Initialize, then kept. Called under ModuleState's gate.</summary>
    public static ModuleConfig Settled(uint uid) => _settled ??= Load(uid);

    public const string SystemConfigPath = "/etc/p11proxy/p11proxy.conf";

    /// <summary>
    /// How long a call waits for the broker's reply. Long enough for a PIN pad or a slow HSM,
    /// short enough that a stalled broker cannot hang the host for ever. C_WaitForSlotEvent is
    /// exempt: waiting is its purpose.
    /// </summary>
    public const int DefaultTimeoutMilliseconds = 300_000;

    public static string UserConfigPath
    {
        get
        {
            string? configHome = Environment.GetEnvironmentVariable("XDG_CONFIG_HOME");
            if (string.IsNullOrEmpty(configHome))
                configHome = Path.Combine(Environment.GetEnvironmentVariable("HOME") ?? "/", ".config");
            return Path.Combine(configHome, "p11proxy", "p11proxy.conf");
        }
    }

    public static ModuleConfig Load(uint uid)
    {
        var user = ReadFile(UserConfigPath);
        var system = ReadFile(SystemConfigPath);
        int timeout = DefaultTimeoutMilliseconds;
        string? timeoutText = Environment.GetEnvironmentVariable("P11PROXY_TIMEOUT_MS") ?? Lookup(user, "timeout-ms") ?? Lookup(system, "timeout-ms");
        if (timeoutText is not null)
        {
            if (int.TryParse(timeoutText, out var t) && t >= 0)
                timeout = t == 0 ? -1 : t;
            else
                Log.Error($"ignoring timeout-ms '{timeoutText}': it must be a number of milliseconds (0: no limit)");
        }

        byte version = OfferedVersionFromEnvironment();
        string? fromEnvironment = Environment.GetEnvironmentVariable("P11_KIT_SERVER_ADDRESS");
        if (!string.IsNullOrEmpty(fromEnvironment))
            return new ModuleConfig(fromEnvironment, "P11_KIT_SERVER_ADDRESS", timeout, version);
        if (Lookup(user, "server-address") is { } userAddress)
            return new ModuleConfig(userAddress, UserConfigPath, timeout, version);
        if (Lookup(system, "server-address") is { } systemAddress)
            return new ModuleConfig(systemAddress, SystemConfigPath, timeout, version);
        return new ModuleConfig(ServerAddress.ForUnixPath(ServerAddress.DefaultSocketPath(uid)), "default socket", timeout, version);
    }

    /// <summary>
    /// The highest protocol version to offer: WireProfile.MaxVersion, or lower when
    /// P11PROXY_PROTOCOL_VERSION says so (to interoperate with a peer that mishandles newer ones,
    /// and to test every version against our own broker).
    /// </summary>
    private static byte OfferedVersionFromEnvironment()
    {
        string? text = Environment.GetEnvironmentVariable("P11PROXY_PROTOCOL_VERSION");
        if (string.IsNullOrEmpty(text))
            return P11Proxy.Wire.WireProfile.MaxVersion;
        if (byte.TryParse(text, out byte version) && version <= P11Proxy.Wire.WireProfile.MaxVersion)
            return version;
        Log.Error($"ignoring P11PROXY_PROTOCOL_VERSION={text}: it must be 0 to {P11Proxy.Wire.WireProfile.MaxVersion}");
        return P11Proxy.Wire.WireProfile.MaxVersion;
    }

    private static Dictionary<string, string> ReadFile(string path)
    {
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            if (!File.Exists(path))
                return values;
            foreach (var raw in File.ReadLines(path))
            {
                var line = raw.Trim();
                if (line.Length == 0 || line[0] == '#')
                    continue;
                int equals = line.IndexOf('=');
                if (equals <= 0)
                {
                    Log.Error($"{path}: ignoring line without 'key = value': {line}");
                    continue;
                }
                values[line[..equals].Trim()] = line[(equals + 1)..].Trim();
            }
        }
        catch (Exception e)
        {
            Log.Error($"cannot read {path}: {e.Message}");
        }
        return values;
    }

    private static string? Lookup(Dictionary<string, string> values, string key) =>
        values.TryGetValue(key, out var value) && value.Length > 0 ? value : null;
}
