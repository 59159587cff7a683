using Net.Pkcs11Interop.Common;

namespace P11Proxy.HostileBroker;

/// <summary>
/// The calls of the module's CK_FUNCTION_LIST that write into caller memory, called through the
/// table itself with the pointers the test chooses (Pkcs11Interop hands the module managed arrays,
/// which have no guard page behind them). CK_ULONG is 64 bits (LP64).
/// </summary>
internal sealed unsafe class ModuleTable(IntPtr functionList)
{
    // Positions in CK_FUNCTION_LIST after its CK_VERSION (padded to a pointer): PKCS #11 order.
    private const int GetInfoIndex = 2, GetSlotListIndex = 4, GetSessionInfoIndex = 15, GetAttributeValueIndex = 24,
        SignIndex = 43, GenerateRandomIndex = 64;

    /// <summary>sizeof(CK_INFO) on LP64: version, 32 bytes, flags at 40, 32 bytes, version, padding to 88.</summary>
    public const int InfoSize = 88;

    /// <summary>sizeof(CK_SESSION_INFO): four CK_ULONGs.</summary>
    public const int SessionInfoSize = 32;

    /// <summary>sizeof(CK_ATTRIBUTE): type, pValue, ulValueLen.</summary>
    public const int AttributeSize = 24;

    private nint Entry(int index) => *(nint*)((byte*)functionList + sizeof(nint) + index * sizeof(nint));

    public CKR GetInfo(GuardedBuffer info) =>
        (CKR)((delegate* unmanaged<nint, ulong>)Entry(GetInfoIndex))(info.Pointer);

    public CKR GetSlotList(bool tokenPresent, GuardedBuffer? slots, ref ulong count)
    {
        fixed (ulong* countPointer = &count)
            return (CKR)((delegate* unmanaged<byte, nint, ulong*, ulong>)Entry(GetSlotListIndex))(
                tokenPresent ? (byte)1 : (byte)0, slots?.Pointer ?? 0, countPointer);
    }

    public CKR GetSessionInfo(ulong session, GuardedBuffer info) =>
        (CKR)((delegate* unmanaged<ulong, nint, ulong>)Entry(GetSessionInfoIndex))(session, info.Pointer);

    /// <summary>C_GetAttributeValue on a template built with <see cref="Template"/>.</summary>
    public CKR GetAttributeValue(ulong session, ulong handle, GuardedBuffer template) =>
        (CKR)((delegate* unmanaged<ulong, ulong, nint, ulong, ulong>)Entry(GetAttributeValueIndex))(
            session, handle, template.Pointer, (ulong)(template.Size / AttributeSize));

    public CKR Sign(ulong session, byte[] data, GuardedBuffer? signature, ref ulong length)
    {
        fixed (byte* dataPointer = data)
        fixed (ulong* lengthPointer = &length)
            return (CKR)((delegate* unmanaged<ulong, byte*, ulong, nint, ulong*, ulong>)Entry(SignIndex))(
                session, dataPointer, (ulong)data.Length, signature?.Pointer ?? 0, lengthPointer);
    }

    public CKR GenerateRandom(ulong session, GuardedBuffer random) =>
        (CKR)((delegate* unmanaged<ulong, nint, ulong, ulong>)Entry(GenerateRandomIndex))(session, random.Pointer, (ulong)random.Size);

    /// <summary>A CK_ATTRIBUTE array of exactly these entries in guarded memory.</summary>
    public static GuardedBuffer Template(params (ulong Type, nint Value, ulong Length)[] entries)
    {
        var template = new GuardedBuffer(entries.Length * AttributeSize);
        for (int i = 0; i < entries.Length; i++)
        {
            template.SetULong(i * 3, entries[i].Type);
            template.SetULong(i * 3 + 1, (ulong)entries[i].Value);
            template.SetULong(i * 3 + 2, entries[i].Length);
        }
        return template;
    }

    public static ulong TypeAt(GuardedBuffer template, int index) => template.ULong(index * 3);

    public static ulong LengthAt(GuardedBuffer template, int index) => template.ULong(index * 3 + 2);
}
