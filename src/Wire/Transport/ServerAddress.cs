using System.Text;

namespace P11Proxy.Wire.Transport;

public enum AddressKind { UnixSocket, Command, VSock }

/// <summary>
/// A broker address in p11-kit's syntax: <c>unix:path=/abs/path</c> (path percent-encoded),
/// <c>|command args</c> (a process speaking the protocol on stdin/stdout), or <c>vsock:cid=N;port=M</c>.
/// </summary>
public sealed record ServerAddress(AddressKind Kind, string Path, string Command, uint Cid, uint Port)
{
    public string Original { get; init; } = "";

    /// <summary>For <see cref="AddressKind.Command"/>: the program and its arguments, split as p11-kit splits them.</summary>
    public IReadOnlyList<string> Arguments { get; init; } = [];

    public override string ToString() => Original;

    public static bool TryParse(string text, out ServerAddress address, out string error)
    {
        address = null!;
        error = "";
        if (string.IsNullOrEmpty(text))
        {
            error = "the address is empty";
            return false;
        }
        if (text[0] == '|')
        {
            string command = text[1..].Trim();
            if (command.Length == 0)
            {
                error = "'|' must be followed by a command, e.g. '|p11-kit remote /usr/lib/softhsm/libsofthsm2.so'";
                return false;
            }
            if (!CommandLine.TrySplit(command, out var arguments, out string splitError))
            {
                error = $"cannot split the command '{command}': {splitError}";
                return false;
            }
            address = new ServerAddress(AddressKind.Command, "", command, 0, 0) { Original = text, Arguments = arguments };
            return true;
        }
        if (text.StartsWith("unix:path=/", StringComparison.Ordinal))
        {
            if (!TryPercentDecode(text["unix:path=".Length..], out string path))
            {
                error = $"bad percent-encoding in '{text}'";
                return false;
            }
            address = new ServerAddress(AddressKind.UnixSocket, path, "", 0, 0) { Original = text };
            return true;
        }
        if (text.StartsWith("vsock:", StringComparison.Ordinal))
        {
            uint cid = uint.MaxValue, port = uint.MaxValue;
            foreach (var part in text["vsock:".Length..].Split(';', StringSplitOptions.RemoveEmptyEntries))
            {
                var pieces = part.Split('=', 2);
                if (pieces.Length == 2 && pieces[0] == "cid" && uint.TryParse(pieces[1], out var c)) cid = c;
                else if (pieces.Length == 2 && pieces[0] == "port" && uint.TryParse(pieces[1], out var p)) port = p;
                else
                {
                    error = $"unknown vsock address part '{part}' (expected cid=N;port=M)";
                    return false;
                }
            }
            if (port == uint.MaxValue)
            {
                error = "a vsock address needs port=M";
                return false;
            }
            address = new ServerAddress(AddressKind.VSock, "", "", cid, port) { Original = text };
            return true;
        }
        error = $"unsupported address '{text}': use unix:path=/absolute/path, |command args or vsock:cid=N;port=M";
        return false;
    }

    /// <summary>The unix address for a path, encoded as p11-kit's p11_path_encode does.</summary>
    public static string ForUnixPath(string path) => "unix:path=" + PercentEncodePath(path);

    private static bool TryPercentDecode(string encoded, out string decoded)
    {
        var bytes = new List<byte>(encoded.Length);
        var utf8 = Encoding.UTF8.GetBytes(encoded);
        for (int i = 0; i < utf8.Length; i++)
        {
            if (utf8[i] != '%')
            {
                bytes.Add(utf8[i]);
                continue;
            }
            if (i + 2 >= utf8.Length || !IsHex(utf8[i + 1]) || !IsHex(utf8[i + 2]))
            {
                decoded = "";
                return false;
            }
            bytes.Add((byte)(HexValue(utf8[i + 1]) << 4 | HexValue(utf8[i + 2])));
            i += 2;
        }
        decoded = Encoding.UTF8.GetString(bytes.ToArray());
        return true;
    }

    private static bool IsHex(byte c) => c is >= (byte)'0' and <= (byte)'9' or >= (byte)'a' and <= (byte)'f' or >= (byte)'A' and <= (byte)'F';

    private static int HexValue(byte c) => c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;

    /// <summary>Keeps letters, digits and ".-_/\" as they are (p11-kit's path-safe set), encodes the rest.</summary>
    public static string PercentEncodePath(string path)
    {
        var text = new StringBuilder();
        foreach (byte b in Encoding.UTF8.GetBytes(path))
        {
            if (b is >= (byte)'a' and <= (byte)'z' or >= (byte)'A' and <= (byte)'Z' or >= (byte)'0' and <= (byte)'9'
                || b == '/' || b == '-' || b == '_' || b == '.' || b == '\\')
                text.Append((char)b);
            else
                text.Append('%').Append(b.ToString("x2"));
        }
        return text.ToString();
    }

    /// <summary>p11-kit's default: $XDG_RUNTIME_DIR/p11-kit/pkcs11, else /run/user/UID, else the cache directory.</summary>
    public static string DefaultSocketPath(uint uid)
    {
        string? runtime = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        if (string.IsNullOrEmpty(runtime))
        {
            foreach (var candidate in new[] { $"/run/user/{uid}", $"/var/run/user/{uid}" })
                if (Directory.Exists(candidate)) { runtime = candidate; break; }
        }
        if (string.IsNullOrEmpty(runtime))
        {
            runtime = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            if (string.IsNullOrEmpty(runtime))
                runtime = System.IO.Path.Combine(Environment.GetEnvironmentVariable("HOME") ?? "/", ".cache");
        }
        return System.IO.Path.Combine(runtime, "p11-kit", "pkcs11");
    }
}
