namespace P11Proxy.Wire;

/// <summary>
/// How p11proxy names itself in C_GetInfo. A layer that answers with the backend's CK_INFO
/// unchanged looks like the backend itself: GnuTLS drops a module whose CK_INFO equals one it has
/// loaded already, so a host that loads the backend directly and through the proxy would lose one.
/// p11-kit's server answers with its own proxy's identity for the same reason; our broker does
/// too, and the module names itself (with the cryptoki version and flags of what it serves).
/// </summary>
public static class Identity
{
    public static ReadOnlySpan<byte> Manufacturer => "p11proxy"u8;
    public static ReadOnlySpan<byte> ModuleDescription => "p11proxy PKCS#11 remoting module"u8;
    public static ReadOnlySpan<byte> BrokerDescription => "p11proxy-broker"u8;
    public const byte VersionMajor = 0;
    public const byte VersionMinor = 1;

    /// <summary>Whether space-padded CK_INFO fields are our broker's (the module asks before relying on what only our broker accepts).</summary>
    public static bool IsOurBroker(ReadOnlySpan<byte> manufacturer, ReadOnlySpan<byte> description) =>
        manufacturer.TrimEnd((byte)' ').SequenceEqual(Manufacturer) && description.TrimEnd((byte)' ').SequenceEqual(BrokerDescription);
}

/// <summary>
/// C_Initialize's pReserved, when not NULL: hosts that use it (p11-kit's x-init-reserved, NSS's
/// module parameters) pass a NUL-terminated text string, and p11-kit's wire carries it with its
/// NUL. Anything else is garbage, refused with CKR_ARGUMENTS_BAD as a module loaded directly
/// refuses a pReserved it does not understand.
/// </summary>
public static class ReservedString
{
    /// <summary>Longest string accepted, NUL included: what is read of the caller's memory at most.</summary>
    public const int MaxLength = 4096;

    /// <summary>
    /// Whether <paramref name="bytes"/> is one string and its NUL: valid UTF-8, no other NUL, no
    /// control characters but tab, CR and LF.
    /// </summary>
    public static bool IsText(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length == 0 || bytes.Length > MaxLength || bytes[^1] != 0)
            return false;
        var text = bytes[..^1];
        foreach (byte b in text)
            if ((b < 0x20 && b is not ((byte)'\t' or (byte)'\n' or (byte)'\r')) || b == 0x7f)
                return false;
        return System.Text.Unicode.Utf8.IsValid(text);
    }
}
