using System.Text;

namespace P11Proxy.Module;

/// <summary>
/// Diagnostics on stderr, prefixed "p11proxy:". Errors always; call tracing with P11PROXY_DEBUG=1.
/// Callers never pass PINs or key material here: only call names, handles and return codes.
/// </summary>
internal static class Log
{
    private static readonly object Gate = new();

    public static bool Debug { get; } = Environment.GetEnvironmentVariable("P11PROXY_DEBUG") is { Length: > 0 } v && v != "0";

    public static void Error(string message) => Write(message);

    public static void Trace(string message)
    {
        if (Debug) Write(message);
    }

    private static void Write(string message)
    {
        var line = Encoding.UTF8.GetBytes($"p11proxy: {message}\n");
        lock (Gate)
        {
            try
            {
                using var stderr = Console.OpenStandardError();
                stderr.Write(line);
            }
            catch
            {
                // A host without stderr must not fail because of a log line.
            }
        }
    }

    /// <summary>Last line of defence at an export: an exception must never reach the C host.</summary>
    public static nuint Unexpected(string function, Exception exception)
    {
        Error($"{function}: internal error: {exception.GetType().Name}: {exception.Message}");
        return (nuint)P11Proxy.Pkcs11.Pkcs11Constants.CKR_GENERAL_ERROR;
    }
}
