using P11Proxy.Platform;

namespace P11Proxy.Module;

/// <summary>
/// The module's handle on its <see cref="ProcessLog"/>: a C host gives a library no Main to pass a
/// log from, so the one instance lives here. Errors always; call tracing with P11PROXY_DEBUG=1.
/// Callers never pass PINs or key material here: only call names, handles and return codes.
/// </summary>
internal static class Log
{
    public static bool Debug { get; } = Environment.GetEnvironmentVariable("P11PROXY_DEBUG") is { Length: > 0 } v && v != "0";

    private static readonly ProcessLog Writer = new("p11proxy", Debug, levelWords: false);

    public static void Error(string message) => Writer.Error(message);

    public static void Trace(string message) => Writer.Trace(message);

    /// <summary>Last line of defence at an export: an exception must never reach the C host.</summary>
    public static nuint Unexpected(string function, Exception exception)
    {
        Error($"{function}: internal error: {exception.GetType().Name}: {exception.Message}");
        return (nuint)P11Proxy.Pkcs11.Pkcs11Constants.CKR_GENERAL_ERROR;
    }
}
