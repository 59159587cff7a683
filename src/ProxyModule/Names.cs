using P11Proxy.Pkcs11;

namespace P11Proxy.Module;

/// <summary>Readable names for log lines.</summary>
internal static class Names
{
    public static string Rv(ulong rv) => Pkcs11Names.ReturnValue(rv) ?? $"0x{rv:x}";
}
