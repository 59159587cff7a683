using System.Runtime.InteropServices;
using P11Proxy.Pkcs11;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

/// <summary>
/// CK_FUNCTION_LIST (2.40) and CK_FUNCTION_LIST_3_0, built once in native memory that never moves
/// or gets freed, so hosts may keep the pointers for the life of the process. Layout: a CK_VERSION
/// (padded to 8 bytes) followed by the function pointers in the standard's order, the one of
/// pkcs11f.h that FunctionTable.g.cs is generated from.
/// </summary>
internal static unsafe partial class FunctionTable
{
    private static readonly void* List240;
    private static readonly void* List300;
    private static readonly CK_INTERFACE* Interfaces;
    private const int InterfaceCount = 2;

    public static void* Version240 => List240;

    [DllImport("p11proxy_native", EntryPoint = "p11proxy_gate_wrap")]
    private static extern int p11proxy_gate_wrap(nint* managed, nint* table, int count);

    private static ReadOnlySpan<byte> InterfaceName => "PKCS 11\0"u8;

    static FunctionTable()
    {
        // The stubs' addresses (FunctionTable.g.cs, generated from pkcs11f.h and Exports.bindings).
        nint[] pointers = EntryPoints();
        if (pointers.Length != Pkcs11Abi.FunctionCount30 + Variant240Slots.Length)
            throw new InvalidOperationException($"function table has {pointers.Length} entries, expected {Pkcs11Abi.FunctionCount30 + Variant240Slots.Length}");

        // Every entry goes through the fork gate (native/forkgate.c).
        var gated = new nint[pointers.Length];
        fixed (nint* managed = pointers)
        fixed (nint* entries = gated)
        {
            if (p11proxy_gate_wrap(managed, entries, pointers.Length) != 0)
                throw new InvalidOperationException("the fork gate refused the function table");
        }
        var entries240 = gated.AsSpan(0, Pkcs11Abi.FunctionCount240).ToArray();
        for (int i = 0; i < Variant240Slots.Length; i++)
            entries240[Variant240Slots[i]] = gated[Pkcs11Abi.FunctionCount30 + i];
        List240 = Build(entries240, 2, 40);
        List300 = Build(gated.AsSpan(0, Pkcs11Abi.FunctionCount30), 3, 0);

        // "PKCS 11" 3.0 first (the default), then 2.40 for callers that ask for it by version.
        var name = (byte*)NativeMemory.Alloc((nuint)InterfaceName.Length);
        InterfaceName.CopyTo(new Span<byte>(name, InterfaceName.Length));
        Interfaces = (CK_INTERFACE*)NativeMemory.AllocZeroed((nuint)(InterfaceCount * sizeof(CK_INTERFACE)));
        Interfaces[0] = new CK_INTERFACE { pInterfaceName = name, pFunctionList = List300, flags = 0 };
        Interfaces[1] = new CK_INTERFACE { pInterfaceName = name, pFunctionList = List240, flags = 0 };
    }

    private static void* Build(ReadOnlySpan<nint> functions, byte major, byte minor)
    {
        var block = (byte*)NativeMemory.AllocZeroed((nuint)(8 + functions.Length * sizeof(nint)));
        block[0] = major;
        block[1] = minor;
        functions.CopyTo(new Span<nint>(block + 8, functions.Length));
        return block;
    }

    public static ulong GetInterfaceList(CK_INTERFACE* list, nuint* count)
    {
        if (count == null) return CKR_ARGUMENTS_BAD;
        if (list == null)
        {
            *count = InterfaceCount;
            return CKR_OK;
        }
        if (*count < InterfaceCount)
        {
            *count = InterfaceCount;
            return CKR_BUFFER_TOO_SMALL;
        }
        for (int i = 0; i < InterfaceCount; i++)
            list[i] = Interfaces[i];
        *count = InterfaceCount;
        return CKR_OK;
    }

    /// <summary>
    /// We do not claim CKF_INTERFACE_FORK_SAFE: like p11-kit, a forked child must call C_Initialize
    /// again. A request with flags we do not offer finds no interface (CKR_ARGUMENTS_BAD, per the spec).
    /// </summary>
    public static ulong GetInterface(byte* name, CK_VERSION* version, CK_INTERFACE** found, nuint flags)
    {
        if (found == null) return CKR_ARGUMENTS_BAD;
        for (int i = 0; i < InterfaceCount; i++)
        {
            var candidate = &Interfaces[i];
            if (name != null && !MemoryMarshal.CreateReadOnlySpanFromNullTerminated(name).SequenceEqual(InterfaceName[..^1]))
                continue;
            var listVersion = (CK_VERSION*)candidate->pFunctionList;
            if (version != null && (version->major != listVersion->major || version->minor != listVersion->minor))
                continue;
            if ((candidate->flags & flags) != flags)
                continue;
            *found = candidate;
            return CKR_OK;
        }
        return CKR_ARGUMENTS_BAD;
    }
}
